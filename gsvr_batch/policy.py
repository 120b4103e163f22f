"""What happens after a failure: the one place that decides (after rq's ``Retry`` and
``handle_job_failure``).

Two loops retry, at two levels, and both ask this module:

* **A call** (one HTTP request inside a task) is retried by :func:`gsvr_batch.calls.call_api`
  only when the request provably cost nothing: a 429 (after the server's ``retryDelay``), a
  5xx answer, a connection that never carried the request. :meth:`RetryPolicy.call_delay`
  gives the wait; ``max_call_retries`` and ``max_call_wait`` bound them. A generate request
  whose answer was lost after it may have reached the model (read timeout, connection dropped
  mid-answer) is *not* retried inside the task: it may have been billed, so it ends the attempt
  and is counted (``maybe_paid``).
* **A task attempt** that ends in an error is decided by :meth:`RetryPolicy.decide` from the
  error's :class:`~gsvr_batch.errors.Disposition` and the task's counters:

  ==============  ==============================================================  ==========
  disposition     decision                                                        charged
  ==============  ==============================================================  ==========
  RETRY           retry after ``base_delay × 2^(n-1)`` (±20 %, ≤ ``max_delay``)   attempt
                  while ``failures < max_attempts``, else fail ("gave up …")
  RETRY (crash)   worker death: retry at once while ``crashes < crash_budget``   crash
  FAIL_TASK       fail the task with the error's message                          attempt
  STOP_BATCH      put the task back; stop the batch, exit 3                       nobody
  PAUSE_UNTIL     put the task back; stop, exit 75 until ``resets_at``            nobody
  PAUSE           put the task back; stop, exit 75 (disk full)                    nobody
  REQUEUE         put the task back (cancel, signal, manager or pool teardown)    nobody
  ==============  ==============================================================  ==========

A manager crash, a whole-pool teardown or a signal is REQUEUE: it is never the task's fault.
A worker death is charged to the task that worker was running, against ``crash_budget`` (larger
than ``max_attempts``), so one poison video cannot crash-loop forever.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import Disposition, ErrorRecord
from .exitcodes import ExitCode

# Stop kinds (journaled in batch_stopped.kind) and their exit codes.
STOP_EXIT = {
    "fatal": ExitCode.FATAL_API,
    "quota_day": ExitCode.TEMPFAIL,
    "disk_full": ExitCode.TEMPFAIL,
    "journal": ExitCode.TEMPFAIL,
    "cost_limit": ExitCode.TEMPFAIL,
    "cancelled": ExitCode.CANCELLED,
    "interrupted": ExitCode.INTERRUPTED,
    "batch_waiting": ExitCode.TEMPFAIL,
    "transient": ExitCode.TEMPFAIL,
    "usage": ExitCode.USAGE,
    "workers": ExitCode.INTERNAL,  # worker processes cannot start here (online.STILLBORN_POOLS)
}
_DISPOSITION_STOP = {Disposition.STOP_BATCH: "fatal", Disposition.PAUSE_UNTIL: "quota_day",
                     Disposition.PAUSE: "disk_full"}


@dataclass(frozen=True)
class Stop:
    """Why the batch stops dispatching: journaled as ``batch_stopped`` and turned into the exit code."""

    kind: str
    message: str
    resets_at: str | None = None
    model: str | None = None  # a daily quota of one model ("youtube": the free tier's YouTube hours)
    # Our own daily budget (settings.rpd, the free tier's YouTube hours as counted here) rather than
    # the API's word: recounted from the journal by every run, with the settings of that run, so it
    # is not journaled as a block that outlives the run (a rerun with a raised --rpd goes on).
    budget: bool = False

    @property
    def exit_code(self) -> int:
        return int(STOP_EXIT.get(self.kind, ExitCode.TEMPFAIL))


@dataclass(frozen=True)
class Decision:
    """What to do with one failed attempt."""

    action: str  # "retry" | "fail" | "requeue"
    charge: str | None = None  # "attempt" | "crash" | None (nobody)
    delay: float = 0.0  # seconds before a retry may start
    message: str = ""  # the message to journal (with "gave up after …" when attempts are spent)
    stop: Stop | None = None  # the batch must stop as well


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    crash_budget: int = 6
    base_delay: float = 5.0
    max_delay: float = 300.0
    max_call_retries: int = 5
    max_call_wait: float = 120.0  # seconds one call may spend waiting between its retries
    jitter: float = 0.2

    # -- task level ---------------------------------------------------------------------------
    def decide(self, err: ErrorRecord, *, failures: int, crashes: int, rng: random.Random | None = None) -> Decision:
        """``failures`` / ``crashes``: what the task has been charged *before* this failure."""
        d = err.disposition
        if d in _DISPOSITION_STOP:
            kind = _DISPOSITION_STOP[d]
            if d is Disposition.STOP_BATCH:
                message = f"stopped by a fatal API error: {err.message}"
            elif d is Disposition.PAUSE_UNTIL:
                message = (f"daily quota exhausted ({err.message})"
                           + (f"; it resets at {err.resets_at}" if err.resets_at and err.resets_at not in err.message
                              else ""))
            else:
                message = f"paused: {err.message}. Free some space and run the same command again"
            return Decision("requeue", None, 0.0, err.message, Stop(kind, message, err.resets_at))
        if d is Disposition.REQUEUE:
            return Decision("requeue", None, 0.0, err.message)
        if d is Disposition.FAIL_TASK:
            return Decision("fail", "attempt", 0.0, err.message)
        # RETRY
        if err.budget == "crash":
            n = crashes + 1
            if n < self.crash_budget:
                return Decision("retry", "crash", 0.0, err.message)
            return Decision("fail", "crash", 0.0, f"{err.message} ({n} times: crash budget {self.crash_budget} spent)")
        n = failures + 1
        if n < self.max_attempts:
            return Decision("retry", "attempt", self.retry_delay(n, err.retry_delay, rng), err.message)
        return Decision("fail", "attempt", 0.0, f"{err.message} (gave up after {n} attempt{'s' if n != 1 else ''})")

    def retry_delay(self, n: int, server_delay: float | None = None, rng: random.Random | None = None) -> float:
        """Delay before retry ``n`` (1-based) of a task: exponential with jitter, at least the server's."""
        base = min(self.max_delay, self.base_delay * 2 ** (n - 1))
        r = rng.uniform(1 - self.jitter, 1 + self.jitter) if rng else random.uniform(1 - self.jitter, 1 + self.jitter)
        return max(base * r, server_delay or 0.0)

    # -- call level ---------------------------------------------------------------------------
    def call_delay(self, n: int, server_delay: float | None = None, rng: random.Random | None = None) -> float:
        """Wait before call retry ``n`` (1-based): 1, 2, 4 … s (≤ 30 s) with jitter, or the
        server's ``retryDelay`` plus a little jitter (so the workers a 429 held do not all
        fire in the same instant)."""
        u = rng.uniform if rng else random.uniform
        if server_delay is not None:
            return server_delay + u(0.0, 0.25)
        return min(30.0, 2.0 ** (n - 1)) * u(1 - self.jitter, 1 + self.jitter)
