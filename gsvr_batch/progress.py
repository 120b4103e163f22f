"""Progress display: a tqdm bar on a terminal, plain log lines everywhere else (cron).

On a TTY the bar shows done / failed / running / cost and tqdm's ETA, refreshed every second.
Without a TTY there are no carriage returns or escape codes: one line per finished task and a
summary line every ``summary_interval`` seconds, so a cron mail or a log file reads cleanly.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Iterable

from .state import TERMINAL, BatchState, TaskState, TaskStatus


def _short(t: TaskState) -> str:
    # One line per task in a log: a title with a newline must not start a line of its own.
    return " ".join((t.title or t.source.rsplit("/", 1)[-1]).split())


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(max(0, seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Base: counts and rate; subclasses decide how to show them."""

    def __init__(self, state: BatchState, order: Iterable[str], *, summary_interval: float = 30.0,
                 echo: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = state
        self.order = list(order)
        self.summary_interval = summary_interval
        self.echo = echo
        self.clock = clock
        self.started = clock()
        self.done_at_start = sum(1 for t in state.live_tasks() if t.status in TERMINAL)
        self.finished_this_run = 0
        self.cost_at_start = state.total_cost_usd  # shown: what this run spends (a rerun pays anew)

    @staticmethod
    def create(kind: str, state: BatchState, order: Iterable[str], *, summary_interval: float = 30.0,
               echo: Callable[[str], None] = print) -> Progress:
        if kind == "auto":
            kind = "bar" if sys.stderr.isatty() and sys.stdout.isatty() else "log"
        cls = {"bar": BarProgress, "log": LogProgress, "quiet": QuietProgress}.get(kind, LogProgress)
        return cls(state, order, summary_interval=summary_interval, echo=echo)

    def eta(self) -> float | None:
        counts = self.state.counts()
        left = counts["pending"] + counts["running"]
        elapsed = self.clock() - self.started
        if not self.finished_this_run or elapsed <= 0:
            return None
        return left * elapsed / self.finished_this_run

    def summary(self, running: list[dict[str, Any]] | None = None) -> str:
        c = self.state.counts()
        done = c["completed"] + c["skipped"]
        return (f"{done}/{c['total']} done, {c['failed']} failed, {c['running']} running, "
                f"{c['pending']} pending, ETA {fmt_duration(self.eta())}, "
                f"cost ${self.state.total_cost_usd - self.cost_at_start:.4f} this run")

    def task_done(self, t: TaskState) -> None:
        if t.status in TERMINAL:
            self.finished_this_run += 1

    def tick(self, running: list[dict[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass


class QuietProgress(Progress):
    pass


class LogProgress(Progress):
    """One line per finished task, a summary every ``summary_interval`` seconds. No ``\\r``."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._last_summary = self.clock()

    def task_done(self, t: TaskState) -> None:
        # No timestamp here: the run's console stamps every line it prints in log mode.
        super().task_done(t)
        if t.status is TaskStatus.COMPLETED:
            tokens = (t.usage or {}).get("total_tokens")
            extra = f" ({t.elapsed:.1f} s" if t.elapsed is not None else " ("
            extra += f", {tokens} tokens" if tokens else ""
            extra += f", ${t.cost_usd:.4f})"
            self.echo(f"completed {t.task_id} {_short(t)} -> {t.output}{extra}")
        elif t.status is TaskStatus.FAILED:
            err = t.last_error or {}
            self.echo(f"FAILED    {t.task_id} {_short(t)}: {err.get('error_class')}: {err.get('message')}")
        elif t.status is TaskStatus.SKIPPED:
            self.echo(f"skipped   {t.task_id} {_short(t)}: {t.skipped_reason}")
        elif t.status is TaskStatus.PENDING and t.last_error:
            err = t.last_error
            self.echo(f"retrying  {t.task_id} {_short(t)} (attempt {t.attempts} failed: "
                      f"{err.get('error_class')}: {err.get('message')})")

    def tick(self, running: list[dict[str, Any]]) -> None:
        now = self.clock()
        if now - self._last_summary >= self.summary_interval:
            self._last_summary = now
            self.echo(f"progress: {self.summary(running)}")

    def close(self) -> None:
        pass


class BarProgress(Progress):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        from tqdm import tqdm

        total = self.state.counts()["total"]
        self.bar = tqdm(total=total, initial=self.done_at_start, unit="video", dynamic_ncols=True,
                        mininterval=1.0, file=sys.stderr)
        self._last = 0.0

    def task_done(self, t: TaskState) -> None:
        super().task_done(t)
        if t.status in TERMINAL:
            self.bar.update(1)
        if t.status is TaskStatus.FAILED:
            err = t.last_error or {}
            self.bar.write(f"FAILED {_short(t)}: {err.get('error_class')}: {err.get('message')}")

    def tick(self, running: list[dict[str, Any]]) -> None:
        now = self.clock()
        if now - self._last < 1.0:
            return
        self._last = now
        c = self.state.counts()
        self.bar.set_postfix_str(f"failed={c['failed']} running={c['running']} "
                                 f"${self.state.total_cost_usd - self.cost_at_start:.4f}",
                                 refresh=True)

    def close(self) -> None:
        self.bar.close()
