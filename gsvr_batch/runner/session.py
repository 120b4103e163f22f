"""One run of one batch: the journal, the services and the policy, behind one public face.

The online loop (online.py) and Gemini Batch Mode (batchmode.py) both drive a :class:`Session`
and neither reaches into the other's privates. The session owns:

* the journal (``self.log``, a :class:`~gsvr_batch.lifecycle.BatchLog`) — every transition of a
  task goes through one method here, which applies the retry policy (policy.py) and journals the
  outcome together: :meth:`start`, :meth:`accept_result`, :meth:`fail_attempt`, :meth:`worker_died`,
  :meth:`interrupted`;
* the services: the in-process sandbox, the shared rate limiter, the manager's own API client, the
  upload janitor;
* why the run stops (:meth:`stop`, ``stop_reason``), signals (first: graceful, second: at once),
  pause / resume / cancel from another terminal, the cost limit and the daily quota;
* the ending: notifications, the report file they point to, ``run_finished`` (:meth:`conclude`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import time
from collections import Counter
from typing import Any, Callable, Iterable, Sequence

from ..channels import ControlWatcher
from ..console import Console
from ..errors import ErrorRecord, FatalAPIError, ModelNotFound, RequestRejected, WorkerDied
from ..exitcodes import ExitCode
from ..lifecycle import BatchLog, new_attempt_id
from ..policy import Decision, RetryPolicy, Stop
from ..ratelimit import LOCAL_RPD_QUOTA
from ..state import BatchState, TaskStatus
from ..tasks import (
    EVENT_PARTIAL,
    EVENT_PLAN,
    EVENT_REQUEST,
    EVENT_RESULT,
    EVENT_STARTED,
    EVENT_STEP,
    EVENT_UPLOAD,
    TaskResult,
    TaskSpec,
    UploadRef,
)
from ..timeutil import iso_utc, next_pacific_midnight, pacific_day, parse_iso_ts
from .options import RunResult
from .preflight import Prepared

log = logging.getLogger("gsvr_batch.runner")

NOTIFY_EVENTS = {"fatal": "batch_aborted", "quota_day": "quota_exhausted", "cost_limit": "cost_limit_reached",
                 "cancelled": "batch_cancelled"}
# Free tier: "you can't upload more than 8 hours of YouTube video per day" (Gemini API docs,
# video understanding, limitations; the paid tiers have no such limit).
FREE_TIER_YOUTUBE_SECONDS = 8 * 3600.0
_SAME_SIZE_CANDIDATES = 8  # live uploads of a video's exact size offered to its worker (by sha256)
# A running task's steps up to its upload (pipeline: queued, resolving, uploading; then processing).
_UPLOAD_NOT_DONE = frozenset({None, "queued", "resolving", "uploading"})


def youtube_limit(settings: Any) -> float | None:
    """Seconds of YouTube video a Pacific day the run holds itself to: the free tier's 8 hours, none
    in the offline sandbox or on a paid tier. What the run stops at and what --dry-run shows."""
    if settings.sandbox or str(settings.tier) != "free":
        return None
    return FREE_TIER_YOUTUBE_SECONDS


def _plan_summary(plan: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a completed task records of a one-call plan (a clips plan has its own record)."""
    if not plan:
        return None
    return {k: plan.get(k) for k in ("strategy", "media_resolution", "tokens_per_request", "requests", "reason")
            if plan.get(k) is not None}


def lost_in_flight(step: str | None) -> int:
    """1 when a task was stopped while a generate request was out: the model may have answered
    (and billed) into a process that no longer exists. Counted, so the money is accounted for."""
    return 1 if step in ("generating", "merging") else 0


def fingerprint(job: Any, template: Any | None) -> str:
    """What a job's output is made from: a change here means the output is out of date."""
    doc = [job.model, job.template, getattr(template, "version", None), job.params, job.output_format,
           getattr(template, "context", None)]
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprints(jobs: Iterable[Any], templates: dict[str, Any]) -> dict[str, str]:
    """``fingerprint`` of every job, by job id. Most jobs of a batch share their model, template,
    parameters and format: the JSON dump and hash run once per distinct combination (10,000 jobs
    cost ~40 ms of a rerun's start-up one by one)."""
    out: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for job in jobs:
        params = job.params
        # Most jobs have no parameters: no JSON text needed to tell theirs apart ({} from None).
        key = (job.model, job.template, job.output_format,
               type(params).__name__ if not params else json.dumps(params, sort_keys=True, default=str))
        fp = seen.get(key)
        if fp is None:
            fp = seen[key] = fingerprint(job, templates.get(job.template))
        out[job.job_id] = fp
    return out


class Session:
    """See the module docstring."""

    def __init__(self, prepared: Prepared, blog: BatchLog, *, echo: Callable[[str], None]) -> None:
        self.prepared = prepared
        self.opts = prepared.opts
        self.manifest = prepared.manifest
        self.settings = prepared.manifest.settings
        self.log = blog
        self.echo = echo if isinstance(echo, Console) else Console(echo)
        self.jobs = {j.job_id: j for j in self.manifest.jobs}
        self.order = [j.job_id for j in self.manifest.jobs]
        self.by_source: dict[str, list[str]] = {}  # one video, its tasks (one upload serves them all)
        for j in self.manifest.jobs:
            self.by_source.setdefault(j.source, []).append(j.job_id)
        # Local videos by size, built on first use (one stat per video, once a run): only files of
        # equal size can have equal bytes, so only they may share an upload under different names.
        self._by_size: tuple[dict[str, int], dict[int, list[str]]] | None = None
        # Uploads offered to each task's worker (its own, or same-size ones it may match by sha256):
        # while the task runs, none of them is deleted — the worker may be using it (it does not
        # say which until its result), and a deleted file fails its request with 403.
        self._offered: dict[str, set[str]] = {}
        self.now = self.opts.now
        self.mode = str(self.settings.mode or "online")
        self.policy = RetryPolicy(max_attempts=int(self.settings.max_attempts),
                                  crash_budget=int(self.settings.crash_budget),
                                  base_delay=float(self.settings.retry_base_delay),
                                  max_call_retries=int(self.settings.max_call_retries))
        self.rng = random.Random()
        self.stop_reason: Stop | None = None
        self.interrupts = 0
        self._signal_name: str | None = None
        self.deadline: float | None = None  # monotonic time the running tasks must end by
        self.paused = False
        self.cancelled = False
        self.sandbox_server: Any = None
        self.limiter: Any = None
        self.worker_config: Any = None
        self._client: Any = None  # built on first use (the client property)
        self.janitor: Any = None
        self.control: ControlWatcher | None = None
        self.models: dict[str, dict[str, int]] = {}  # model → {"input": …, "output": …} (models.get)
        self.fingerprints: dict[str, str] = {}
        self._estimates: dict[str, float] = {}
        self._requests: Counter[str] = Counter()  # generate requests seen, not yet journaled
        self._steps: dict[str, tuple[str, int | None]] = {}  # latest step per running task, not yet journaled
        self._steps_flushed = 0.0
        self._requests_flushed = 0.0
        self._plans: dict[str, dict[str, Any]] = {}  # one-call plans, journaled with the outcome
        self._to_delete: list[str] = []  # uploads to delete once this turn's records are on disk
        self._youtube_seconds = 0.0
        self._old_handlers: dict[int, Any] = {}
        self.report_path: str | None = None
        self.youtube_held: Stop | None = None  # YouTube links held for the day; other videos go on
        self.cost_at_start = blog.state.total_cost_usd
        self.fingerprints.update(fingerprints(self.jobs.values(), prepared.templates))

    @property
    def state(self) -> BatchState:
        return self.log.state

    @property
    def pricing(self) -> Any:
        return self.prepared.pricing

    # -- services ------------------------------------------------------------------------------
    def start_services(self) -> None:
        """Sandbox (if asked), the shared rate limiter, the manager's client, the worker config."""
        from ..gemini import WorkerConfig, make_client

        base_url = None
        api_key_env = self.settings.api_key_env
        backend = "gemini"
        if self.settings.sandbox:
            from ..sandbox import SandboxConfig, SandboxServer

            # Any key goes: the clients send a placeholder (gemini.make_client), never the user's key.
            self.sandbox_server = SandboxServer(SandboxConfig(api_key=None, **self.opts.sandbox_options))
            base_url = self.sandbox_server.start()
            api_key_env = None
            backend = "sandbox"
        limiter_path = self._start_limiter()
        s = self.settings
        self.worker_config = WorkerConfig(base_url=base_url, api_version=None, api_key_env=api_key_env,
                                          request_timeout=float(s.request_timeout), limiter_path=limiter_path,
                                          backend=backend, active_timeout=float(s.active_timeout),
                                          max_call_retries=int(s.max_call_retries), manager_pid=os.getpid())
        from .janitor import Janitor

        model = sorted(self.prepared.limits)[0] if self.prepared.limits else "gemini-2.5-flash"
        self.janitor = Janitor(lambda: make_client(self.worker_config), self.limiter, model)

    @property
    def client(self) -> Any:
        """The manager's own API client, built when first needed: importing the SDK takes ~0.4 s,
        which a cron firing that finds nothing to do should not pay."""
        if self._client is None:
            from ..gemini import make_client

            self._client = make_client(self.worker_config)
        return self._client

    def _start_limiter(self) -> str:
        from ..ratelimit import RateLimiter

        # One clock: the limiter's day is the manager's day (opts.now), and it starts from the
        # journal's count of today's requests — the journal is the one source of truth.
        now = self.now()
        today = pacific_day(now)
        used = dict(self.state.requests_by_day.get(today, {}))
        from datetime import datetime, timezone

        path = str(self.log.path.with_name(self.log.path.name + ".ratelimit"))
        self.limiter = RateLimiter.create(path, self.prepared.limits, rpd_used=used,
                                          wall=datetime.fromtimestamp(now, tz=timezone.utc))
        return path

    def check_models(self) -> None:
        """Ask the API about every model once: an unknown model stops the batch before the first
        upload (exit 2), a refused key before any work (exit 3); its input window sizes the plans."""
        from ..gemini import classify

        for model in sorted({j.model for j in self.manifest.jobs}):
            try:
                info = self.client.models.get(model=model)
            except Exception as exc:  # noqa: BLE001 - translated right here
                err = classify(exc)
                if isinstance(err, (ModelNotFound, FatalAPIError)):
                    raise err from exc
                if isinstance(err, RequestRejected) and "404" in str(err):
                    raise ModelNotFound(f"unknown model {model!r}: {err}") from exc
                # Transient or unexpected: the built-in table will do; the first call tells the truth.
                log.info("models.get(%s) failed (%s); using the built-in limits", model, err)
                continue
            entry = {}
            if getattr(info, "input_token_limit", None):
                entry["input"] = int(info.input_token_limit)
            if getattr(info, "output_token_limit", None):
                entry["output"] = int(info.output_token_limit)
            self.models[model] = entry

    def close_services(self, *, wait_janitor: float = 10.0) -> None:
        """Idempotent: the online loop closes them, and run_batch again whatever happened."""
        janitor, self.janitor = self.janitor, None
        if janitor is not None:
            for name, ok, why in janitor.close(timeout=wait_janitor):
                self._journal_deleted(name, ok, why)
        limiter, self.limiter = self.limiter, None
        if limiter is not None:
            limiter.close()
        server, self.sandbox_server = self.sandbox_server, None
        if server is not None:
            server.stop()

    # -- signals and control -------------------------------------------------------------------
    def install_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old_handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread (library use): leave signals alone
                pass

    def restore_signals(self) -> None:
        for sig, h in self._old_handlers.items():
            signal.signal(sig, h)
        self._old_handlers = {}

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # No journal write here (we may be inside one): the loop notices at its next turn (≤ 0.2 s).
        self.interrupts += 1
        self._signal_name = signal.Signals(signum).name

    @property
    def at_once(self) -> bool:
        """Stop now: a second Ctrl-C / SIGTERM, or the grace period after the first one is over."""
        return self.interrupts >= 2 or (self.deadline is not None and time.monotonic() > self.deadline)

    def handle_signals(self, running: int) -> None:
        """Turn a signal the handler noted into journal records and messages (main loop only)."""
        name = self._signal_name
        if not name:
            return
        self._signal_name = None
        if self.interrupts == 1 or self.stop_reason is None or self.stop_reason.kind != "interrupted":
            if self.stop_reason is None or self.stop_reason.kind != "interrupted":
                self.stop("interrupted", f"interrupted by {name}; rerun the same command to continue")
            self.deadline = time.monotonic() + self.opts.grace
            self._unpause()  # running tasks must be able to finish, even while paused
            if running and self.interrupts == 1:
                self.echo(f"{name}: no new tasks will start; waiting up to {self.opts.grace:.0f} s for {running} "
                          f"running task(s). Send it again to stop at once.")
        if self.interrupts >= 2:
            self.echo(f"{name} again: stopping now; running tasks go back to pending (an answer that arrives "
                      f"anyway is adopted by the next run, not paid again).")

    def poll_control(self) -> None:
        if self.control is None:
            return
        cmd = self.control.poll()
        if cmd is None:
            return
        if cmd.command == "pause" and not self.paused and self.stop_reason is None:
            self.paused = True
            self.log.pause("gsvr-batch pause")
            if self.limiter is not None:
                self.limiter.set_paused(True)
            self.echo("Paused: no new tasks start; running tasks hold at their next API call. "
                      "`gsvr-batch resume` continues.")
        elif cmd.command == "resume" and self.paused:
            self._unpause()
            self.echo("Resumed.")
        elif cmd.command == "cancel" and not self.cancelled:
            self.cancelled = True
            self._unpause()
            self.log.cancel("gsvr-batch cancel")
            self.stop("cancelled", "cancelled by `gsvr-batch cancel`; running tasks were allowed to end; "
                                   "rerun the same command to continue")
            self.deadline = time.monotonic() + self.opts.grace

    def _unpause(self) -> None:
        if self.paused:
            self.paused = False
            self.log.resume("resumed" if self.interrupts == 0 else "stopping: running tasks may finish")
        if self.limiter is not None:
            self.limiter.set_paused(False)

    def stop(self, kind: str, message: str, *, resets_at: str | None = None, model: str | None = None,
             budget: bool = False, **extra: Any) -> None:
        """Stop dispatching; the first fatal reason wins. Journaled at once (batch_stopped).

        ``budget``: a daily budget of our own settings is spent, not the API's quota (policy.Stop)."""
        if self.stop_reason is not None and self.stop_reason.kind in ("fatal", "journal"):
            return
        if self.stop_reason is not None and self.stop_reason.kind == kind and kind != "quota_day":
            return
        self.stop_reason = Stop(kind, message, resets_at)
        if self.log.broken:
            return
        self.log.stop(kind, message, resets_at=resets_at, model=model, budget=True if budget else None, **extra)
        if self.limiter is not None and kind in ("fatal", "cancelled"):
            self.limiter.set_cancelled()  # running workers stop at their next API call

    # -- money and quota -----------------------------------------------------------------------
    def price(self, model: str, usage: dict[str, Any], mode: str | None = None) -> float:
        if self.pricing is None or not usage:
            return 0.0
        try:
            return float(self.pricing.cost(model, usage, mode=mode or self.mode))
        except Exception:  # noqa: BLE001 - an unknown model in an override file: no cost rather than no result
            return 0.0

    def estimate(self, tid: str) -> float:
        """Estimated $ of one task (the whole task: clips and merge included), cached per run."""
        if tid not in self._estimates:
            from ..costs import estimate_job

            est = estimate_job(self.jobs[tid], templates_dirs=self.manifest.templates_dirs, pricing=self.pricing,
                               state=self.state, limits=self.prepared.limits,
                               settings_context={"strategy": self.settings.context,
                                                 "clip_minutes": self.settings.clip_minutes, "mode": self.mode})
            self._estimates[tid] = est.cost(self.mode)
        return self._estimates[tid]

    def within_cost_limit(self, tid: str, running: list[str]) -> bool:
        limit = self.settings.cost_limit
        if limit is None or self.pricing is None:
            return True
        spent = self.state.total_cost_usd
        in_flight = sum(self.estimate(t) for t in running)
        nxt = self.estimate(tid)
        if spent + in_flight + nxt <= float(limit):
            return True
        self.stop("cost_limit", f"cost limit ${float(limit):.2f} reached: spent ${spent:.4f}, "
                                f"${max(0.0, float(limit) - spent):.4f} left, next task estimated at ${nxt:.4f}",
                  spent_usd=round(spent, 6), limit_usd=float(limit))
        return False

    def quota_block(self, model: str, tid: str | None = None) -> Stop | None:
        """Why ``tid`` (of ``model``) may not start today, or None (journaled counts; no side effect).

        ``tid``: the task about to start. The YouTube budget (free tier) then applies only to YouTube
        tasks, and a task whose length is already known (a plan journaled by an earlier attempt) is
        held when it would pass the day's budget, not only once the budget is spent."""
        now = self.now()
        job = self.jobs.get(tid) if tid is not None else None
        youtube = job is not None and job.source_kind == "youtube"
        blocks = self.state.quota_blocks
        for name in (model, "*", "youtube") if youtube or job is None else (model, "*"):
            until = blocks.get(name)
            if until and (parse_iso_ts(until) or 0) > now:
                what = "the free tier's YouTube hours" if name == "youtube" else f"daily quota for {model}"
                return Stop("quota_day", f"{what} spent (the API said so earlier today, Pacific time); it resets "
                                         f"at {until}", until, "youtube" if name == "youtube" else model)
        lim = self.prepared.limits.get(model)
        if lim is not None and lim.rpd is not None:
            used = self.state.requests_by_day.get(pacific_day(now), {}).get(model, 0) + self._requests[model]
            if used >= lim.rpd:
                resets = iso_utc(next_pacific_midnight(now))
                return Stop("quota_day", f"daily request budget for {model} is spent ({used} of {lim.rpd} today, "
                                         f"Pacific time); it resets at {resets}", resets, model, budget=True)
        limit_s = youtube_limit(self.settings)
        if limit_s is not None and (job is None or youtube):
            # Counted per Pacific day from the journal (requests_charged.youtube_seconds) plus what
            # workers reported since the last flush: the same one source of truth as the RPD.
            used_s = self.state.youtube_seconds_by_day.get(pacific_day(now), 0.0) + self._youtube_seconds
            need = self._youtube_seconds_left(tid) if job is not None else 0.0
            if used_s >= limit_s or (need and used_s + need > limit_s):
                resets = iso_utc(next_pacific_midnight(now))
                what = (f"{used_s / 3600:.2f} h used today, this link needs {need / 3600:.2f} h more"
                        if need and used_s < limit_s else f"{used_s / 3600:.2f} h used today")
                return Stop("quota_day", f"the free tier's {limit_s / 3600:g} hours of YouTube video a day are spent "
                                         f"({what}, Pacific time); it resets at {resets}", resets, "youtube",
                            budget=True)
        return None

    def _youtube_seconds_left(self, tid: str) -> float:
        """Seconds of YouTube video ``tid`` still has to send, when its plan is journaled (else 0: unknown
        until its count_tokens, and the API's own 429 then stops the batch at the limit)."""
        t = self.state.tasks.get(tid)
        plan = (t.plan if t is not None else None) or {}
        clips = plan.get("clips") or []
        if clips:
            done = t.partials if t is not None else {}
            return float(sum(float(c["end"]) - float(c["start"]) for c in clips if str(c.get("index")) not in done))
        return float(plan.get("duration") or 0.0)

    def flush_steps(self, *, every: float = 1.0) -> None:
        """Journal the latest step of each running task, at most once a second (status and
        progress refresh every second; more would only make the journal longer)."""
        now = time.monotonic()
        if now - self._steps_flushed < every:
            return
        self._steps_flushed = now
        steps, self._steps = self._steps, {}
        for tid, (step, pid) in steps.items():
            self.log.step(tid, step, worker=pid)  # (nothing if the task has ended meanwhile)

    def flush_requests(self, *, every: float = 0.0) -> None:
        """Journal the generate requests counted since the last flush (one record per model).

        ``every``: at most that often (the loop flushes once a second; the quota checks read the
        in-memory count as well, so a late record never lets a request through)."""
        if not self._requests and not self._youtube_seconds:
            return
        now = time.monotonic()
        if every and now - self._requests_flushed < every:
            return
        self._requests_flushed = now
        day = pacific_day(self.now())
        yt = self._youtube_seconds
        for model, n in sorted(self._requests.items()):
            self.log.charge_requests(model, n, day, youtube_seconds=yt)
            yt = 0.0
        if yt:
            self.log.charge_requests("youtube", 0, day, youtube_seconds=yt)
        self._requests.clear()
        self._youtube_seconds = 0.0

    def clear_passed_quota_blocks(self) -> None:
        now = self.now()
        passed = [m for m, until in self.state.quota_blocks.items()
                  if (parse_iso_ts(until) or 0) <= now]
        if passed:
            self.log.quota_cleared(passed, "the Pacific day of the spent quota is over")

    # -- tasks ---------------------------------------------------------------------------------
    def context_of(self, tid: str) -> dict[str, Any]:
        """How ``tid``'s video is sent: job > --context / --clip-minutes > template (context.effective_options,
        the one rule the estimate and batch mode use too)."""
        from ..context import effective_options

        job = self.jobs[tid]
        template = self.prepared.templates.get(job.template)
        opts = effective_options(getattr(template, "context", None), getattr(job, "context", None),
                                 strategy=self.settings.context, clip_minutes=self.settings.clip_minutes)
        return {"context": opts["strategy"], "clip_minutes": opts["clip_minutes"],
                "allow_low": bool(opts["allow_low_resolution"]), "fps": opts["fps"]}

    def spec_for(self, tid: str) -> TaskSpec:
        job = self.jobs[tid]
        t = self.state.tasks[tid]
        model_info = self.models.get(job.model, {})
        lim = self.prepared.limits.get(job.model)
        ctx = self.context_of(tid)
        reuse = self.reusable_upload(tid)
        same_size = self.same_size_uploads(tid) if reuse is None else ()
        self._offered[tid] = {r.name for r in (reuse, *same_size) if r is not None}
        return TaskSpec(
            task_id=tid, source=job.source, source_kind=job.source_kind, title=job.title, template=job.template,
            params=dict(job.params), model=job.model, output_path=job.output_path,
            output_root=str(self.manifest.output_root), output_format=job.output_format, attempt=t.attempts,
            attempt_id=t.attempt_id or "", fingerprint=self.fingerprints.get(tid, ""),
            templates_dirs=tuple(str(p) for p in self.manifest.templates_dirs),
            reuse_upload=reuse, same_size_uploads=same_size,
            max_duration=job.max_duration if job.max_duration is not None else self.settings.max_duration,
            backend=self.worker_config.backend if self.worker_config else "gemini",
            download_dir=str(self.prepared.state_dir / "downloads"),
            plan=t.plan, partials=dict(t.partials), partials_dir=str(self.prepared.state_dir / "partials"),
            context=ctx["context"], clip_minutes=ctx["clip_minutes"], allow_low=bool(ctx["allow_low"]),
            fps=ctx.get("fps"),
            input_limit=model_info.get("input"), output_limit=model_info.get("output"),
            tpm=lim.tpm if lim is not None else None,
        )

    def reusable_upload(self, tid: str) -> UploadRef | None:
        """A live upload of this task's video, if the journal knows one (one upload per video)."""
        job = self.jobs[tid]
        if job.source_kind != "local":
            return None
        known = self.state.sources.get(job.source)
        if not known:
            return None
        try:
            st = os.stat(job.source)
        except OSError:
            return None
        if known.get("size") != st.st_size or known.get("mtime_ns") != st.st_mtime_ns:
            return None  # the file changed since: the worker uploads it again
        return UploadRef.from_dict(self.state.upload_for(known.get("sha256")))

    def same_size_uploads(self, tid: str) -> tuple[UploadRef, ...]:
        """Live uploads of other files as large as this task's video (asked when the journal knows
        none of its own): the worker hashes its file and reuses the one with the same sha256 (a copy
        of a lecture under another name is uploaded once). Not hashed here: the manager never reads videos."""
        job = self.jobs[tid]
        if job.source_kind != "local":
            return ()
        size = self._size_of(job.source)
        if size is None or len(self._sizes()[1].get(size, ())) < 2:
            return ()  # no other video of this batch is as large: none can be a copy
        ups = [up for up in self.state.uploads.values()
               if up.get("source_size") == size and up.get("source_sha256") and up.get("source") != job.source]
        # The newest few: many live uploads of one exact size are distinct videos, not copies, and
        # the list travels with every task of that size.
        refs = (UploadRef.from_dict(up) for up in ups[-_SAME_SIZE_CANDIDATES:])
        return tuple(r for r in refs if r is not None)

    def uploading_elsewhere(self, tid: str, running: list[str]) -> bool:
        """Another running task is uploading this task's video right now, or may be: wait for its
        upload instead of sending the same bytes twice (and so the requests share a cacheable prefix).

        The same path always waits. A video of the same size under another path may be a copy (the
        manager never reads videos, so it cannot tell): it waits only while that task has not yet
        uploaded or found its upload, and only in a small group of equal sizes (as
        :meth:`_wanted_elsewhere` decides): many videos of one exact size are distinct recordings,
        and waiting on each other would serialise their uploads. When the other upload is journaled
        this task starts, its worker hashes its file and reuses that upload if the bytes match
        (``same_size_uploads``), else uploads its own."""
        job = self.jobs[tid]
        if job.source_kind != "local" or self.reusable_upload(tid) is not None:
            return False
        others = [self.jobs[r] for r in running if r in self.jobs and r != tid]
        if any(o.source == job.source for o in others):
            return True
        size = self._size_of(job.source)
        if size is None or not 2 <= len(self._sizes()[1].get(size, ())) <= _SAME_SIZE_CANDIDATES:
            return False
        return any(o.source_kind == "local" and self._size_of(o.source) == size and self._before_upload(o.job_id)
                   for o in others)

    def _before_upload(self, tid: str) -> bool:
        """The running task will upload its video and has not yet: it was offered no live upload to
        match (else copies would start one by one, each behind the last one's hash), its latest step
        (the one reported, else the journaled one) is at most ``uploading``, and the journal knows no
        live upload of its file (an upload is journaled the moment it is made)."""
        if self._offered.get(tid):
            return False  # offered a live upload of its size: it may well not upload; do not queue behind it
        return self._latest_step(tid) in _UPLOAD_NOT_DONE and self.reusable_upload(tid) is None

    def _size_of(self, source: str) -> int | None:
        return self._sizes()[0].get(source)

    def _sizes(self) -> tuple[dict[str, int], dict[int, list[str]]]:
        """``(size of each local video, videos of each size)``, from one stat per video per run."""
        if self._by_size is None:
            size_of: dict[str, int] = {}
            by_size: dict[int, list[str]] = {}
            for source, tids in self.by_source.items():
                if self.jobs[tids[0]].source_kind != "local":
                    continue
                try:
                    size = os.stat(source).st_size
                except OSError:
                    continue  # missing now: its task fails with its own message
                size_of[source] = size
                by_size.setdefault(size, []).append(source)
            self._by_size = (size_of, by_size)
        return self._by_size

    def start(self, tid: str) -> TaskSpec:
        """PENDING → RUNNING: journal the attempt (its nonce, the model it is sent to) and build its spec."""
        job = self.jobs[tid]
        self.log.start_task(tid, attempt_id=new_attempt_id(), model=job.model, fingerprint=self.fingerprints[tid],
                            output=job.output_path)
        return self.spec_for(tid)

    def on_event(self, ev: tuple[str, str, dict[str, Any]], running: dict[str, Any]) -> TaskResult | None:
        """Journal one worker event; a result event is returned for the loop to accept."""
        kind, tid, payload = ev
        t = self.state.tasks.get(tid)
        if t is None:
            return None
        current = t.status is TaskStatus.RUNNING and payload.get("attempt_id") == t.attempt_id
        if kind == EVENT_REQUEST:
            # Counted even from a stale attempt: the request was made, the daily quota spent.
            self._requests[str(payload["model"])] += 1
            self._youtube_seconds += float(payload.get("youtube_seconds") or 0.0)
            return None
        if kind == EVENT_UPLOAD:
            up = UploadRef.from_dict(payload)
            if up is not None:
                d = up.to_dict()
                d["uploaded_by"] = tid
                self.log.upload_finished(d, task_id=tid)
            return None
        if not current:
            return None
        if kind == EVENT_STARTED:
            info = running.get(tid)
            if info is not None:
                info.pid = int(payload["pid"])
                info.ppid = payload.get("ppid")
            return None
        if kind == EVENT_STEP:
            # Kept in memory and journaled at the next tick, latest step only: a task that finishes
            # within the tick needs no step record at all (fewer records, cheaper replay).
            info = running.get(tid)
            self._steps[tid] = (str(payload["step"]), getattr(info, "pid", None))
        elif kind == EVENT_PLAN:
            plan = dict(payload["plan"])
            if plan.get("strategy") == "clips" or t.plan is not None or tid in self._plans:
                # Journaled at once (durable): partials already paid only fit these clip boundaries;
                # and a second plan in one attempt was learnt from a refusal (400 with N and L), which
                # a crash must not make us pay for again with another refused request.
                self._plans.pop(tid, None)
                self.log.plan(tid, plan, payload.get("duration"))
            else:
                self._plans[tid] = plan  # one call: recorded with the task's outcome
        elif kind == EVENT_PARTIAL:
            if str(payload["clip"]) not in t.partials:
                self.log.clip_completed(tid, clip=int(payload["clip"]), start=float(payload["start"]),
                                        end=float(payload["end"]), path=str(payload["path"]),
                                        sha256=str(payload["sha256"]), usage=dict(payload["usage"]),
                                        cost_usd=self.price(t.model, payload["usage"]))
        elif kind == EVENT_RESULT:
            try:
                return TaskResult.from_dict(payload)
            except (TypeError, ValueError):
                return None
        return None

    def accept_result(self, tid: str, r: TaskResult) -> Decision | None:
        """Journal one attempt's outcome (the policy decides retries). Returns the decision for a failure."""
        t = self.state.tasks[tid]
        if t.status is not TaskStatus.RUNNING or (r.attempt_id and r.attempt_id != t.attempt_id):
            return None  # a duplicate (event and executor both delivered it) or a stale attempt
        if r.upload is not None and r.upload.name not in self.state.uploads:
            d = r.upload.to_dict()
            d["uploaded_by"] = tid
            self.log.upload_finished(d, task_id=tid)  # its upload event was lost: the result has the facts
        billed = sum(self.price(t.model, u) for u in r.billed)
        self._steps.pop(tid, None)
        plan = self._plans.pop(tid, None) or r.plan
        if plan and plan.get("strategy") == "clips" and plan != t.plan:
            self.log.plan(tid, plan, r.video_duration)
        if r.skipped_reason and not r.error:
            self.log.skip_task(tid, r.skipped_reason, video_duration=r.video_duration)
            self.release_uploads(tid)
            return None
        if r.ok:
            cost = self.price(t.model, r.usage) + billed
            self.log.complete_task(tid, output=r.output_path or t.output, sha256=r.sha256 or "",
                                   bytes_=r.bytes_written, usage=r.usage, cost_usd=cost,
                                   model_version=r.model_version, video_duration=r.video_duration,
                                   elapsed=round(r.elapsed, 3), calls=1 + len(r.billed), lost_calls=r.lost_calls,
                                   truncated=r.truncated, fingerprint=self.fingerprints.get(tid),
                                   plan=_plan_summary(plan) if (plan or {}).get("strategy") != "clips" else None)
            self.release_uploads(tid)
            self.drop_partials(tid)
            return None
        err = ErrorRecord.from_dict(r.error or {"error_class": "Error", "message": "unknown error"})
        return self.fail_attempt(tid, err, cost_usd=billed, calls=len(r.billed), lost_calls=r.lost_calls)

    def fail_attempt(self, tid: str, err: ErrorRecord, *, cost_usd: float = 0.0, calls: int = 0,
                     lost_calls: int = 0) -> Decision:
        """The one place a failed attempt is decided (policy) and journaled."""
        t = self.state.tasks[tid]
        d = self.policy.decide(err, failures=t.failures, crashes=t.crashes, rng=self.rng)
        money = {"cost_usd": cost_usd, "calls": calls, "lost_calls": lost_calls}
        if d.action == "retry":
            self.log.schedule_retry(tid, err, d.delay, now=self.now(), message=d.message, charge=d.charge, **money)
        elif d.action == "fail":
            self.log.fail_task(tid, err, message=d.message, charge=d.charge, **money)
            self.release_uploads(tid)
        else:
            self.log.requeue(tid, f"put back: {d.message}", **money)
        if d.stop is not None:
            if err.model == "youtube" and self.jobs.get(tid) is not None and self.jobs[tid].source_kind == "youtube":
                # The YouTube hours of the day are spent, not the model's quota: journaled (so the next
                # run holds YouTube links until midnight Pacific) while local videos go on.
                self.log.stop("quota_day", d.stop.message, resets_at=d.stop.resets_at, model="youtube")
                self.youtube_held = d.stop
            else:
                self.stop(d.stop.kind, d.stop.message, resets_at=d.stop.resets_at, model=err.model,
                          budget=err.quota_id == LOCAL_RPD_QUOTA)
        return d

    def worker_died(self, tid: str, detail: str = "") -> Decision | None:
        """The worker running ``tid`` died (kill, OOM, segfault): charged to this task only."""
        t = self.state.tasks[tid]
        if t.status is not TaskStatus.RUNNING:
            return None
        err = WorkerDied(f"the worker process died while running this task{detail} (killed or out of memory)")
        return self.fail_attempt(tid, err.to_record(), lost_calls=lost_in_flight(self._latest_step(tid, ended=True)))

    def interrupted(self, tid: str, reason: str) -> None:
        """Put a running task back, charging nobody (pool teardown, signal, cancel, manager crash)."""
        t = self.state.tasks[tid]
        step = self._latest_step(tid, ended=True)
        if t.status is TaskStatus.RUNNING:
            self.log.requeue(tid, reason, interrupted=True, lost_calls=lost_in_flight(step))

    def _latest_step(self, tid: str, *, ended: bool = False) -> str | None:
        """The task's latest step: the one its worker reported (journaled at most a second later, so
        possibly not yet), else the journaled one. ``ended``: its attempt has ended, so the reported
        step is taken out of the steps to journal (it is not the next attempt's; a request out at
        that step may have been billed)."""
        reported = self._steps.pop(tid, None) if ended else self._steps.get(tid)
        return reported[0] if reported is not None else self.state.tasks[tid].step

    def release_uploads(self, tid: str) -> None:
        """Delete the uploads of ``tid``'s video once no pending or running task needs them."""
        if self.settings.keep_uploads or self.janitor is None:
            return
        job = self.jobs.get(tid)
        t = self.state.tasks[tid]
        source = job.source if job else t.source
        tasks = self.state.tasks
        offered = self._offered.pop(tid, set())
        if any(tasks[o].live for o in self.by_source.get(source, ()) if o in tasks):
            return  # another task of the same video still needs its upload
        for name, up in list(self.state.uploads.items()):
            if up.get("source") == source or up.get("uploaded_by") == tid or name in offered:
                if not self._wanted_elsewhere(up, source):
                    self._to_delete.append(name)  # handed over after this turn's fsync (collect_deletions)

    def _wanted_elsewhere(self, up: dict[str, Any], source: str | None) -> bool:
        """Upload ``up`` stays: a running task's worker was offered it (and may be using it), or a
        live task's video other than ``source`` has, or may have, its bytes (a copy under another
        name) and would reuse it.

        "Has": its hash is journaled and equal. "May have": it is as large and not hashed yet (its
        worker hashes it when it runs) — but only in a small group of equal sizes: many videos of
        one exact size are distinct recordings, and keeping every upload for them would pile up
        a batch's worth of files at the Files API (20 GB a project)."""
        tasks = self.state.tasks
        name = up.get("name")
        if any(name in names for t, names in self._offered.items()
               if t in tasks and tasks[t].status is TaskStatus.RUNNING):
            return True  # a running task's worker may be using it right now
        sha = up.get("source_sha256")
        if not sha:
            return False
        size = up.get("source_size")
        if size is not None:
            group: Sequence[str] = self._sizes()[1].get(size, ())
        else:  # an upload journaled without its size: only known hashes can tell
            group = [o for o, info in self.state.sources.items() if info.get("sha256") == sha]
        may_be_copies = len(group) <= _SAME_SIZE_CANDIDATES
        for other in group:
            if other == source:
                continue
            known = self.state.sources.get(other, {}).get("sha256")
            if known == sha or (known is None and may_be_copies):
                if any(tasks[t].live for t in self.by_source.get(other, ()) if t in tasks):
                    return True
        return False

    def drop_partials(self, tid: str) -> None:
        """A completed task's clip partials served their purpose (the merged lesson is durable)."""
        import shutil

        folder = self.prepared.state_dir / "partials" / tid
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)

    def collect_deletions(self) -> None:
        if self.janitor is not None:
            todo, self._to_delete = self._to_delete, []
            for name in todo:
                self.janitor.delete(name)
            for name, ok, why in self.janitor.results():
                self._journal_deleted(name, ok, why)

    def _journal_deleted(self, name: str, ok: bool, why: str) -> None:
        if ok and name in self.state.uploads and not self.log.broken:
            self.log.upload_deleted(name, why)

    def delete_unneeded_uploads(self) -> None:
        """At the end of a run: every upload no live task needs (a finished batch keeps none)."""
        if self.settings.keep_uploads or self.janitor is None:
            return
        live_sources = {t.source for t in self.state.live_tasks() if t.live}
        for name, up in list(self.state.uploads.items()):
            if up.get("source") in live_sources or self._wanted_elsewhere(up, up.get("source")):
                continue
            owner = self.state.tasks.get(str(up.get("uploaded_by")))
            if not up.get("source") and owner is not None and owner.live:
                continue  # a downloaded link's upload: its task still needs it
            self._to_delete.append(name)

    # -- the end -------------------------------------------------------------------------------
    def result(self, code: int, message: str) -> RunResult:
        return RunResult(int(code), message, str(self.log.path), str(self.manifest.output_root), self.state.counts(),
                         self.state.total_cost_usd, self.state.total_cost_usd - self.cost_at_start,
                         display=getattr(self.echo, "display", "log"))

    def cost_text(self) -> str:
        """``cost $0.0013 this run ($0.0026 for the batch in all)``: a rerun after --force or a retry
        pays again, and both numbers are true; shown together so neither misleads."""
        run = self.state.total_cost_usd - self.cost_at_start
        total = self.state.total_cost_usd
        text = f"cost ${run:.4f} this run" + (f" (${total:.4f} for the batch in all)" if abs(total - run) > 5e-7 else "")
        if self.settings.sandbox:
            text += " — priced as the real API would bill it; the sandbox bills nothing"
        return text

    def finish_idle(self) -> RunResult:
        counts = self.state.counts()
        code = ExitCode.TASKS_FAILED if counts["failed"] else ExitCode.OK
        msg = (f"Nothing to do: all {counts['total']} tasks already finished "
               f"({counts['completed']} completed, {counts['skipped']} skipped, {counts['failed']} failed).")
        if not self.state.finished:
            self.log.finish()
        self.log.run_finished(code)
        return self.result(code, msg)

    def conclude(self) -> RunResult:
        counts = self.state.counts()
        stop = self.stop_reason
        only = self.opts.only_ids
        if only is not None:  # `retry`: the tasks asked for decide the outcome, not the rest of the batch
            asked = [self.state.tasks[t] for t in only if t in self.state.tasks]
            counts = {k: sum(1 for t in asked if t.status.value == k) for k in counts if k != "total"}
            counts["total"] = len(asked)
        if stop is not None:
            code, msg = stop.exit_code, stop.message
        elif counts["pending"] or counts["running"]:
            code, msg = ExitCode.TEMPFAIL, "stopped with tasks still pending; rerun to continue"
        elif counts["failed"]:
            code, msg = ExitCode.TASKS_FAILED, f"{counts['failed']} task(s) failed (see `gsvr-batch replay`)"
        else:
            code, msg = ExitCode.OK, "all tasks done"
        if self.log.broken:
            return self.result(ExitCode.TEMPFAIL, msg)
        if code in (ExitCode.OK, ExitCode.TASKS_FAILED) and self.state.is_complete() and not self.state.finished:
            self.log.finish()
        all_counts = self.state.counts()
        self.notify(int(code), msg)
        self.log.run_finished(code)
        self.log.maybe_snapshot(force=True)
        counts = all_counts if only is None else counts
        what = "" if only is None else " of the tasks asked for"
        summary = (f"{counts['completed']} completed, {counts['skipped']} skipped, {counts['failed']} failed, "
                   f"{counts['pending']} pending of {counts['total']}{what}; {self.cost_text()}")
        return self.result(code, f"{msg}. {summary}")

    def notify_event(self, code: int) -> str | None:
        kind = self.stop_reason.kind if self.stop_reason is not None else None
        if kind in NOTIFY_EVENTS:
            return NOTIFY_EVENTS[kind]
        if kind is None and code in (ExitCode.OK, ExitCode.TASKS_FAILED) and self.state.is_complete():
            return "batch_finished"
        return None  # interrupted, disk full, pending retries: the next run will tell

    def notify(self, code: int, message: str) -> None:
        """Tell the configured targets how the batch ended; a failing target never changes the exit code."""
        targets = list(self.settings.notify or [])
        event = self.notify_event(code)
        if not targets or event is None:
            return
        from .. import notify

        report = self._write_report()
        payload = {"event": event, "batch_id": self.state.batch_id, "manifest": self.state.manifest,
                   "exit_code": int(code), "message": message, "counts": self.state.counts(),
                   "cost_usd": round(self.state.total_cost_usd, 6), "journal": str(self.log.path),
                   "output_root": str(self.manifest.output_root), "report": report, "report_path": report}
        try:
            results = notify.send(event, payload, targets)
        except Exception as exc:  # noqa: BLE001 - notifications are best effort by contract
            self.echo(f"Warning: notification '{event}' not sent: {exc}")
            return
        for r in results:
            ok = bool(getattr(r, "ok", False))
            error = getattr(r, "error", None)
            self.log.notification(event=event, target=str(getattr(r, "target", "")), ok=ok,
                                  attempts=int(getattr(r, "attempts", 1) or 1), error=error)
            if not ok:
                self.echo(f"Warning: notification '{event}' to {getattr(r, 'target', '?')} failed: {error}")

    def _write_report(self) -> str | None:
        """The report a notification points to: ``<state folder>/report.html`` (best effort)."""
        try:
            from ..report import write_report

            self.log.sync()
            path = self.prepared.state_dir / "report.html"
            write_report(self.log.path, "html", path)
            self.report_path = str(path)
            return self.report_path
        except Exception as exc:  # noqa: BLE001 - a report must never fail the batch
            log.info("report not written: %s", exc)
            return None


__all__ = ["Session", "fingerprint"]
