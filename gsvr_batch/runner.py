"""The manager: one process that owns the journal and dispatches tasks to worker processes.

``run_batch(options)`` is what ``gsvr-batch run`` calls. In order:

1. load and validate the manifest (exit 2 on problems, nothing touched);
2. check credentials (or start the sandbox) before any work;
3. take the run lock (exit 75 at once if another run holds it);
4. replay the journal (cutting a torn tail), refuse a journal of another manifest, add / drop
   tasks for an edited manifest, put tasks that were in flight at a crash back to pending;
5. dispatch every runnable task to a ``ProcessPoolExecutor`` (spawn) and journal each result
   as it arrives; workers never write the journal (invariant 1);
6. on the way out — done, failed, fatal error, daily quota, cost limit, disk full, pause,
   cancel or a signal — leave the journal consistent so the same command continues.

Concurrency notes: the manager is single-threaded except for the optional in-process sandbox
server. Events from workers arrive on a datagram socket (see channels.py) and results through
the executor's futures; both are handled in the one loop below, so journal appends are strictly
sequential.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import random
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .channels import ControlWatcher, EventReceiver, RunLock
from .errors import JournalMismatch, UsageError
from .exitcodes import ExitCode
from .lifecycle import BatchLog
from .progress import Progress
from .state import TERMINAL, BatchState, TaskStatus
from .tasks import EVENT_STEP, EVENT_UPLOAD, EVENT_USAGE, TaskResult, TaskSpec, UploadRef

log = logging.getLogger("gsvr_batch.runner")

SANDBOX_KEY_ENV = "GSVR_SANDBOX_API_KEY"
LOOP_TICK = 0.2  # seconds: control commands, events and progress are handled at least this often


@dataclass
class RunOptions:
    """Everything ``gsvr-batch run`` can be told. ``None`` means: the manifest (or default) decides."""

    manifest: str
    journal: str | None = None
    workers: int | None = None
    sandbox: bool | None = None
    template: str | None = None
    output_dir: str | None = None
    output_pattern: str | None = None
    output_format: str | None = None
    model: str | None = None
    templates_dir: tuple[str, ...] = ()
    tier: str | None = None
    rpm: float | None = None
    tpm: float | None = None
    rpd: int | None = None
    keep_uploads: bool | None = None
    max_attempts: int | None = None
    request_timeout: float | None = None
    cost_limit: float | None = None
    max_duration: float | None = None
    summary_interval: float | None = None
    api_key_env: str | None = None
    mode: str | None = None
    notify: tuple[str, ...] = ()
    pricing: str | None = None
    force: bool = False
    skip_existing: bool = False
    retry_failed: bool = False
    retry_ids: tuple[str, ...] = ()
    wait: bool = False  # sleep through a daily-quota pause instead of exiting 75
    progress: str = "auto"  # auto | bar | log | quiet
    grace: float = 120.0  # seconds running tasks get after the first Ctrl-C / cancel
    retry_base_delay: float = 5.0  # first task-level retry delay (doubles each attempt)
    retry_max_delay: float = 300.0
    sandbox_options: dict[str, Any] = field(default_factory=dict)  # SandboxConfig fields for --sandbox
    # `retry` of a folder/list batch runs its manifest.derived.yaml under the original batch's identity
    accept_identity: str | None = None
    now: Callable[[], float] = time.time  # wall clock (injectable for quota-day tests)

    def overrides(self) -> dict[str, Any]:
        keys = ("workers", "sandbox", "template", "output_dir", "output_pattern", "output_format", "model",
                "tier", "rpm", "tpm", "rpd", "keep_uploads", "max_attempts", "request_timeout", "cost_limit",
                "max_duration", "summary_interval", "api_key_env", "mode")
        out = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        if self.templates_dir:
            out["templates_dir"] = list(self.templates_dir)
        if self.notify:
            # --notify URL is a webhook target; the manifest's settings.notify holds mappings
            out["notify"] = [{"type": "webhook", "url": u} for u in self.notify]
        # --pricing is not a manifest setting: the runner reads it from the options (_load_pricing)
        return out


@dataclass
class RunResult:
    exit_code: int
    message: str
    journal: str
    output_root: str
    counts: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0


def default_journal_path(output_root: Path) -> Path:
    """``<output root>/.gsvr/journal.jsonl``: outputs and their history travel together."""
    return output_root / ".gsvr" / "journal.jsonl"


def resolve_journal(opts_journal: str | None, manifest: Any) -> Path:
    if opts_journal:
        return Path(opts_journal).expanduser().resolve()
    if manifest.settings.journal:
        p = Path(manifest.settings.journal).expanduser()
        return (p if p.is_absolute() else manifest.base_dir / p).resolve()
    return default_journal_path(manifest.output_root)


# ---------------------------------------------------------------------------------------------


def run_batch(opts: RunOptions, *, echo: Callable[[str], None] | None = None) -> RunResult:
    """Run (or continue) the batch described by ``opts``. Raises GsvrError for usage problems."""
    from .manifest import load_manifest

    echo = echo or (lambda s: print(s, flush=True))
    manifest = load_manifest(opts.manifest, opts.overrides())
    for w in manifest.warnings:
        echo(f"Warning: {w}")
    journal_path = resolve_journal(opts.journal, manifest)
    settings = manifest.settings
    sandbox = bool(settings.sandbox)

    from .gemini import resolve_credentials

    resolve_credentials(settings.api_key_env, sandbox=sandbox)  # CredentialsError (exit 2) before any work

    check_notify_targets(settings.notify)  # exit 2 before any work, like any manifest problem
    check_model_prices(manifest, opts.pricing, echo)
    if opts.accept_identity:
        manifest.identity = opts.accept_identity
    lock = RunLock(journal_path)
    lock.acquire()  # LockHeld → exit 75, nothing touched
    try:
        blog, _rp = BatchLog.open(journal_path, warn=lambda m: echo(f"Warning: {m}"))
        try:
            if blog.state.batch_id is None or blog.state.manifest_identity == manifest.identity:
                write_derived_manifest(opts.manifest, manifest, journal_path)  # never over another batch's
            runner = Runner(opts, manifest, blog, echo=echo)
            return runner.run()
        finally:
            blog.close()
    finally:
        lock.release()


DERIVED_MANIFEST = "manifest.derived.yaml"


def check_model_prices(manifest: Any, pricing_file: str | None, echo: Callable[[str], None]) -> None:
    """A model without a price is found before any work: a warning (costs show as 0), or an error
    (exit 2) when a --cost-limit could not be enforced without it."""
    from .pricing import load_pricing

    table = load_pricing(pricing_file)  # a broken --pricing file is a usage error (exit 2)
    try:
        table.check_models(sorted({j.model for j in manifest.jobs}))
    except UsageError as exc:
        if manifest.settings.cost_limit is not None:
            raise UsageError(f"--cost-limit cannot be enforced: {exc}") from exc
        echo(f"Warning: {exc}. Costs of those jobs are reported as $0.")


def check_notify_targets(targets: list[Any]) -> None:
    """Raise UsageError listing every problem of the notify targets (bad URL, missing field...)."""
    if not targets:
        return
    try:
        from .notify import validate_targets
    except ImportError:  # pragma: no cover - during bring-up only
        return
    problems = validate_targets(targets)
    if problems:
        raise UsageError("notify targets have problems:\n" + "\n".join(f"  {p}" for p in problems))


def write_derived_manifest(source: str, manifest: Any, journal_path: Path) -> Path | None:
    """A folder or list-file batch gets its expanded manifest written next to the journal.

    Every job is explicit there (source, template, output...), so the batch can be re-run
    exactly even after the folder changes, and `retry` knows the batch's templates and outputs.
    """
    p = Path(source)
    if not p.is_dir() and p.suffix.lower() in (".yaml", ".yml", ".csv"):
        return None
    from .manifest import write_manifest_yaml

    target = journal_path.parent / DERIVED_MANIFEST
    target.parent.mkdir(parents=True, exist_ok=True)
    write_manifest_yaml(manifest, target)
    return target


def settings_record(settings: Any) -> dict[str, Any]:
    """Settings as journaled: plain values only, never a secret (notify passwords live in env vars)."""
    out = {}
    for k, v in vars(settings).items():
        if k == "notify":
            from .notify import public_view

            out[k] = [public_view(t) for t in v]  # webhook URLs can be secrets (Slack): host only
        elif isinstance(v, (str, int, float, bool, type(None))):
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = [str(x) for x in v]
    return out


def task_fields(job: Any, output_root: Path) -> dict[str, Any]:
    return {
        "task_id": job.job_id, "source": job.source, "source_kind": job.source_kind, "title": job.title,
        "template": job.template, "model": job.model, "output": job.output_path, "output_format": job.output_format,
        "origin": job.origin,
    }


class Runner:
    def __init__(self, opts: RunOptions, manifest: Any, blog: BatchLog, *, echo: Callable[[str], None]) -> None:
        self.opts = opts
        self.manifest = manifest
        self.settings = manifest.settings
        self.blog = blog
        self.echo = echo
        self.jobs = {j.job_id: j for j in manifest.jobs}
        self.order = [j.job_id for j in manifest.jobs]
        self.now = opts.now
        self.stop_reason: tuple[int, str] | None = None  # (exit code, message) once dispatching must end
        self.interrupts = 0
        self.paused = False
        self.cancelled = False
        self.running: dict[cf.Future, str] = {}
        self.retry_counts: dict[str, int] = {}
        self.sandbox_server = None
        self.limiter = None
        self.pricing = None

    @property
    def state(self) -> BatchState:
        return self.blog.state

    # -- preparation ---------------------------------------------------------------------------
    def reconcile(self) -> None:
        """Bring the journal in line with the manifest and with what happened before this run."""
        m, s = self.manifest, self.state
        unknown = set(self.opts.retry_ids) - set(s.tasks) - set(self.jobs)
        if unknown:  # before anything is journaled: a typo must not leave a half-started run behind
            raise UsageError(f"unknown task id(s): {', '.join(sorted(unknown))} "
                             f"(see `gsvr-batch replay {self.blog.path}`)")
        if s.batch_id is None:
            self.blog.create_batch(manifest=str(m.path or m.base_dir), manifest_identity=m.identity,
                                   manifest_hash=m.content_hash, settings=settings_record(self.settings),
                                   version=__version__)
        elif s.manifest_identity != m.identity:
            raise JournalMismatch(
                f"journal {self.blog.path} belongs to another manifest ({s.manifest}); refusing to mix "
                f"two batches in one journal. To start fresh, move that journal away or pass "
                f"--journal NEW_PATH")
        elif s.manifest_hash != m.content_hash:
            self.blog.manifest_changed(m.content_hash, settings_record(self.settings))
            self.echo("Manifest changed since the last run: adding and dropping only the jobs that changed.")
        self.blog.run_started(workers=self.settings.workers, sandbox=bool(self.settings.sandbox),
                              argv_free=True)
        # Tasks the manifest no longer has are dropped (history kept); new ones are added.
        for tid, t in list(s.tasks.items()):
            if tid not in self.jobs and not t.dropped:
                if t.status is TaskStatus.RUNNING:
                    self.blog.requeue(tid, "was in flight when the previous run ended")
                self.blog.drop_task(tid, "job no longer in the manifest")
        for tid in self.order:
            t = s.tasks.get(tid)
            if t is None or t.dropped:
                self.blog.add_task(**task_fields(self.jobs[tid], m.output_root))
        # In flight at a crash / kill: back to pending. Its finished upload stays reusable.
        # Batch mode: a task inside an unfinished Gemini batch job is not lost, it waits at Google.
        held = set()
        if self.settings.mode == "batch":
            from .batchmode import held_task_ids

            held = held_task_ids(s)
        for tid in self.order:
            t = s.tasks[tid]
            if t.status is TaskStatus.RUNNING and tid not in held:
                self.blog.requeue(tid, "was in flight when the previous run ended (crash or kill)")
        self._apply_output_checks()
        if self.opts.force:
            for tid in self.order:
                if s.tasks[tid].status in TERMINAL:
                    self.blog.requeue(tid, "--force: reprocess", in_flight=False, reset_attempts=True)
        if self.opts.retry_failed or self.opts.retry_ids:
            wanted = set(self.opts.retry_ids)
            unknown = wanted - set(s.tasks)
            if unknown:
                raise UsageError(f"unknown task id(s): {', '.join(sorted(unknown))} "
                                 f"(see `gsvr-batch replay {self.blog.path}`)")
            for tid in self.order:
                t = s.tasks[tid]
                if t.status in TERMINAL and ((self.opts.retry_failed and t.status is TaskStatus.FAILED)
                                              or tid in wanted):
                    self.blog.requeue(tid, "retry requested", in_flight=False, reset_attempts=True)
        if self.opts.skip_existing:
            for tid in self.order:
                t = s.tasks[tid]
                if t.status is TaskStatus.PENDING and t.attempts == 0 and Path(self.jobs[tid].output_path).exists():
                    self.blog.skip_task(tid, f"output already exists (made outside this journal): "
                                             f"{self.jobs[tid].output_path}")
        self.blog.sync()

    def _apply_output_checks(self) -> None:
        """A completed task whose output vanished is redone; one edited by hand is kept (warned)."""
        for tid in self.order:
            t = self.state.tasks[tid]
            if t.status is not TaskStatus.COMPLETED:
                continue
            try:
                st = os.stat(t.output)
            except OSError:
                self.blog.requeue(tid, f"output {t.output} is missing; regenerating", in_flight=False)
                continue
            if t.bytes is not None and st.st_size != t.bytes:
                self.echo(f"Warning: {t.output} changed since it was written (kept as is; "
                          f"--force regenerates it)")

    # -- workers -------------------------------------------------------------------------------
    def _start_services(self) -> Any:
        from .gemini import WorkerConfig

        base_url = None
        api_key_env = self.settings.api_key_env
        backend = "gemini"
        if self.settings.sandbox:
            from .sandbox import SandboxConfig, SandboxServer

            key = "sandbox-" + os.urandom(6).hex()
            os.environ[SANDBOX_KEY_ENV] = key  # inherited by spawned workers; not a real secret
            cfg = SandboxConfig(api_key=key, **self.opts.sandbox_options)
            self.sandbox_server = SandboxServer(cfg)
            base_url = self.sandbox_server.start()
            api_key_env = SANDBOX_KEY_ENV
            backend = "sandbox"
        limiter_path = self._start_limiter()
        return WorkerConfig(base_url=base_url, api_version=None, api_key_env=api_key_env,
                            request_timeout=float(self.settings.request_timeout), limiter_path=limiter_path,
                            backend=backend, **self._worker_extra())

    def _worker_extra(self) -> dict[str, Any]:
        """Optional WorkerConfig fields the manifest may set (tests lower the ACTIVE wait)."""
        out: dict[str, Any] = {}
        timeout = getattr(self.settings, "active_timeout", None)
        if timeout is not None:
            out["active_timeout"] = float(timeout)
        retries = getattr(self.settings, "max_call_retries", None)
        if retries is not None:
            out["max_call_retries"] = int(retries)
        return out

    def _start_limiter(self) -> str | None:
        try:
            from .quota import pacific_day, resolve_limits
            from .ratelimit import RateLimiter
        except ImportError:  # pragma: no cover - during bring-up only
            return None
        models = sorted({j.model for j in self.manifest.jobs}) or ["gemini-2.5-flash"]
        if self.settings.sandbox:
            # The sandbox has no quota unless told to enforce one, so only explicit limits apply:
            # the offline demo should not crawl at free-tier speed or stop at 20 requests a day.
            from .quota import Limits

            s = self.settings
            limits = {m: Limits(rpm=s.rpm, tpm=s.tpm, rpd=s.rpd, file_rpm=None) for m in models}
        else:
            limits = {m: resolve_limits(m, str(self.settings.tier), rpm=self.settings.rpm,
                                        tpm=self.settings.tpm, rpd=self.settings.rpd) for m in models}
        from datetime import datetime, timezone

        self.limits = limits
        today = pacific_day(datetime.fromtimestamp(self.now(), tz=timezone.utc))
        used = dict(self.state.requests_by_day.get(today, {}))
        path = str(self.blog.path.with_name(self.blog.path.name + ".ratelimit"))
        self.limiter = RateLimiter.create(path, limits, rpd_used=used)
        return path

    def _make_pool(self, wcfg: Any, sender: Any) -> cf.ProcessPoolExecutor:
        from .pipeline import init_worker

        # spawn, not fork: the manager has threads (sandbox server, tqdm) whose locks a fork
        # could copy in a held state; spawn also gives the workers no inherited file locks.
        ctx = multiprocessing.get_context("spawn")
        return cf.ProcessPoolExecutor(max_workers=int(self.settings.workers), mp_context=ctx,
                                      initializer=init_worker, initargs=(wcfg, sender))

    def spec_for(self, tid: str, wcfg: Any) -> TaskSpec:
        j = self.jobs[tid]
        t = self.state.tasks[tid]
        return TaskSpec(
            task_id=tid, source=j.source, source_kind=j.source_kind, title=j.title, template=j.template,
            params=dict(j.params), model=j.model, output_path=j.output_path,
            output_root=str(self.manifest.output_root), output_format=j.output_format, attempt=t.attempts,
            templates_dirs=tuple(str(p) for p in self.manifest.templates_dirs),
            reuse_upload=UploadRef.from_dict(t.upload), keep_uploads=bool(self.settings.keep_uploads),
            max_duration=j.max_duration if j.max_duration is not None else self.settings.max_duration,
            backend=wcfg.backend,
        )

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> RunResult:
        if self.settings.mode == "batch":
            from .batchmode import run_batch_mode

            return run_batch_mode(self)  # Gemini Batch Mode: the manager submits and polls jobs
        self.reconcile()
        pending = deque(tid for tid in self.order if self.state.tasks[tid].status is TaskStatus.PENDING)
        if not pending:
            return self._finish_idle()
        self._load_pricing()
        receiver = EventReceiver()
        wcfg = self._start_services()
        control = ControlWatcher(self.blog.path)
        progress = Progress.create(self.opts.progress, self.state, self.order,
                                   summary_interval=float(self.settings.summary_interval), echo=self.echo)
        self.echo(f"Journal: {self.blog.path}")
        self.echo(f"Outputs: {self.manifest.output_root}")
        if self.sandbox_server is not None:
            self.echo(f"Backend: offline sandbox at {self.sandbox_server.base_url} (no API key used, nothing billed)")
        old_handlers = self._install_signals()
        self.pool = self._make_pool(wcfg, receiver.sender())
        try:
            self._loop(pending, wcfg, receiver, control, progress)
            while self._wait_for_quota_reset(control):
                self._loop(pending, wcfg, receiver, control, progress)
        finally:
            self._restore_signals(old_handlers)
            self._shutdown_pool(self.pool)
            for ev in receiver.drain():
                self._on_event(ev)
            receiver.close()
            progress.close()
            if self.limiter is not None:
                self.limiter.close()
            if self.sandbox_server is not None:
                self.sandbox_server.stop()
        return self._conclude()

    def _loop(self, pending, wcfg, receiver, control, progress) -> None:
        workers = int(self.settings.workers)
        while True:
            cmd = control.poll()
            if cmd is not None:
                self._on_command(cmd.command)
            for ev in receiver.drain():
                self._on_event(ev)
            # Dispatch while there is room, nothing stops us, and the next task is due.
            while (self.stop_reason is None and not self.paused and len(self.running) < workers and pending):
                tid = self._next_due(pending)
                if tid is None:
                    break
                if not self._daily_quota_left(tid) or not self._within_cost_limit(tid):
                    pending.appendleft(tid)  # peeked, not started
                    break
                self.blog.start_task(tid, worker=None)
                try:
                    fut = self.pool.submit(_run_in_worker, self.spec_for(tid, wcfg))
                except (cf.BrokenExecutor, RuntimeError):
                    self.blog.requeue(tid, "worker pool was broken; retrying", refund_attempt=True)
                    pending.appendleft(tid)
                    self.pool = self._rebuild_pool(self.pool, wcfg, receiver)
                    break
                self.running[fut] = tid
            if not self.running:
                if self.stop_reason is not None or not pending:
                    break
                # paused, or every pending task waits for its retry time
                time.sleep(LOOP_TICK)
                self._check_interrupt_deadline(self.pool)
                progress.tick(self._running_view())
                continue
            done, _ = cf.wait(list(self.running), timeout=LOOP_TICK, return_when=cf.FIRST_COMPLETED)
            broken = False
            for fut in done:
                tid = self.running.pop(fut)
                for ev in receiver.drain():  # events of this task come before its result
                    self._on_event(ev)
                try:
                    result = fut.result()
                except cf.process.BrokenProcessPool:
                    broken = True
                    self._on_worker_died(tid, pending)
                    continue
                except Exception as exc:  # a bug in the worker code: fail the task, keep the batch
                    result = TaskResult(task_id=tid, ok=False, error={
                        "error_class": type(exc).__name__, "message": f"internal error: {exc}",
                        "retryable": False, "kind": "task"})
                self._on_result(tid, result, pending)
                progress.task_done(self.state.tasks[tid])
            if broken:
                for fut, tid in list(self.running.items()):
                    self.running.pop(fut)
                    self._on_worker_died(tid, pending)
                self.pool = self._rebuild_pool(self.pool, wcfg, receiver)
            self._check_interrupt_deadline(self.pool)
            progress.tick(self._running_view())
            self.blog.writer.maybe_sync()
            self.blog.maybe_snapshot()
            if self.stop_reason is not None and self.interrupts >= 2:
                break

    def _next_due(self, pending: deque) -> str | None:
        now = self.now()
        for _ in range(len(pending)):
            tid = pending.popleft()
            t = self.state.tasks[tid]
            if t.status is not TaskStatus.PENDING:
                continue
            if t.not_before and t.not_before > now:
                pending.append(tid)  # not yet due: look at the next one
                continue
            return tid
        return None

    def _rebuild_pool(self, pool, wcfg, receiver):
        self._shutdown_pool(pool)
        self.echo("A worker process died; the worker pool was rebuilt and its tasks will be retried.")
        return self._make_pool(wcfg, receiver.sender())

    def _shutdown_pool(self, pool) -> None:
        try:
            pool.shutdown(wait=False, cancel_futures=True)
        except Exception:  # noqa: BLE001 - shutting down a broken pool may raise; nothing to save
            pass
        # Stop stragglers of a broken or abandoned pool; their tasks are requeued by the journal.
        procs = getattr(pool, "_processes", None) or {}
        for p in list(procs.values()):
            try:
                if p.is_alive():
                    p.kill()
            except Exception:  # noqa: BLE001
                pass

    # -- results -------------------------------------------------------------------------------
    def _on_event(self, ev: tuple[str, str, dict[str, Any]]) -> None:
        kind, tid, payload = ev
        if tid not in self.state.tasks:
            return
        if kind == EVENT_STEP:
            self.blog.step(tid, str(payload.get("step")))
        elif kind == EVENT_UPLOAD:
            self.blog.upload_finished(tid, payload)
        elif kind == EVENT_USAGE:
            from datetime import datetime, timezone

            from .quota import pacific_day

            day = pacific_day(datetime.fromtimestamp(self.now(), tz=timezone.utc))
            self.blog.charge_requests(str(payload.get("model")), int(payload.get("requests", 1)), day)

    def _cost(self, model: str, usage: dict[str, Any]) -> float:
        if self.pricing is None or not usage:
            return 0.0
        try:
            return float(self.pricing.cost(model, usage, mode="online"))
        except Exception:  # noqa: BLE001 - unknown model in an override file: no cost rather than no result
            return 0.0

    def _on_result(self, tid: str, r: TaskResult, pending: deque) -> None:
        t = self.state.tasks[tid]
        if r.upload is not None and (t.upload or {}).get("name") != r.upload.name:
            # its upload event was lost (or came late): the result carries the same facts
            self.blog.upload_finished(tid, r.upload.to_dict())
        if r.upload_deleted and t.upload:
            self.blog.upload_deleted(tid, t.upload.get("name", ""))
        cost = self._cost(t.model, r.usage)
        if r.skipped_reason and not r.error:  # the worker returns ok=False with a reason: not a failure
            self.blog.skip_task(tid, r.skipped_reason, video_duration=r.video_duration)
            return
        if r.ok:
            self.blog.complete_task(tid, output=r.output_path or t.output, sha256=r.sha256 or "", bytes_=r.bytes_written,
                                    usage=r.usage, cost_usd=cost, model_version=r.model_version,
                                    video_duration=r.video_duration, elapsed=round(r.elapsed, 3))
            return
        err = dict(r.error or {"error_class": "Error", "message": "unknown error", "kind": "task"})
        kind = err.get("kind", "task")
        if kind == "transient":
            if t.attempts < int(self.settings.max_attempts):
                base = getattr(self.settings, "retry_base_delay", None)
                base = self.opts.retry_base_delay if base is None else float(base)
                delay = min(self.opts.retry_max_delay, base * 2 ** (t.attempts - 1))
                delay *= random.uniform(0.8, 1.2)
                self.blog.schedule_retry(tid, err, delay, now=self.now(), cost_usd=cost)
                pending.append(tid)
            else:
                err["message"] = f"{err.get('message')} (gave up after {t.attempts} attempts)"
                self.blog.fail_task(tid, err, cost_usd=cost)
        elif kind == "fatal":
            self.blog.requeue(tid, f"batch stopped: {err.get('message')}", in_flight=False, refund_attempt=True)
            pending.appendleft(tid)
            self._stop(ExitCode.FATAL_API, "fatal", f"stopped by a fatal API error: {err.get('message')}")
        elif kind == "quota_day":
            self.blog.requeue(tid, "daily quota exhausted", in_flight=False, refund_attempt=True)
            pending.appendleft(tid)
            resets = err.get("resets_at")
            self._stop(ExitCode.TEMPFAIL, "quota_day",
                       f"daily request quota exhausted ({err.get('message')}); it resets at {resets}",
                       resets_at=resets)
        elif kind == "disk_full":
            self.blog.requeue(tid, "disk full", in_flight=False, refund_attempt=True)
            pending.appendleft(tid)
            self._stop(ExitCode.TEMPFAIL, "disk_full",
                       f"paused: {err.get('message')}. Free some space and run the same command again")
        elif kind == "cancelled":
            self.blog.requeue(tid, "batch stopped before this task finished", in_flight=False, refund_attempt=True)
            pending.appendleft(tid)
        else:
            self.blog.fail_task(tid, err, cost_usd=cost)

    def _on_worker_died(self, tid: str, pending: deque) -> None:
        t = self.state.tasks[tid]
        if t.status is not TaskStatus.RUNNING:
            return
        err = {"error_class": "WorkerDied", "message": "the worker process died (killed or out of memory)",
               "retryable": True, "kind": "transient"}
        if t.attempts < int(self.settings.max_attempts):
            self.blog.schedule_retry(tid, err, 0.0, now=self.now())
            pending.appendleft(tid)
        else:
            err["message"] += f" on each of {t.attempts} attempts"
            self.blog.fail_task(tid, err)

    def _stop(self, code: int, kind: str, message: str, **extra: Any) -> None:
        if self.stop_reason is not None and self.stop_reason[0] in (ExitCode.FATAL_API,):
            return  # the first fatal reason wins
        self.stop_reason = (int(code), message)
        self.stop_kind = kind
        self.stop_extra = dict(extra)
        self.blog.stop(kind, message, **extra)
        if self.limiter is not None and kind in ("fatal", "cancelled"):
            self.limiter.set_cancelled()  # running workers stop at their next API call

    def _daily_quota_left(self, tid: str) -> bool:
        """Do not even upload for a task whose model has no requests left today (journaled count)."""
        from datetime import datetime, timezone

        from .quota import iso_utc, next_pacific_midnight, pacific_day

        model = self.jobs[tid].model
        lim = getattr(self, "limits", {}).get(model)
        if lim is None or lim.rpd is None:
            return True
        now = datetime.fromtimestamp(self.now(), tz=timezone.utc)
        used = self.state.requests_by_day.get(pacific_day(now), {}).get(model, 0)
        if used < lim.rpd:
            return True
        resets = iso_utc(next_pacific_midnight(now))
        self._stop(ExitCode.TEMPFAIL, "quota_day",
                   f"daily request budget for {model} is spent ({used} of {lim.rpd} today, Pacific time); "
                   f"it resets at {resets}", resets_at=resets)
        return False

    def _wait_for_quota_reset(self, control: ControlWatcher) -> bool:
        """With --wait, sleep through a spent daily quota; True when the batch should go on."""
        if not (self.opts.wait and getattr(self, "stop_kind", None) == "quota_day" and self.interrupts == 0):
            return False
        from datetime import datetime

        resets = self.stop_extra.get("resets_at")
        try:
            until = datetime.fromisoformat(str(resets).replace("Z", "+00:00")).timestamp()
        except ValueError:
            until = self.now() + 3600  # unknown reset time: look again in an hour
        self.echo(f"Daily quota spent; --wait: sleeping until {resets} (Ctrl-C or `gsvr-batch cancel` to stop).")
        while self.now() < until + 5:  # a few seconds' margin for clock skew with Google
            time.sleep(1.0)
            cmd = control.poll()
            if cmd is not None and cmd.command == "cancel":
                self._on_command("cancel")
            name = getattr(self, "_pending_interrupt", None)
            if name or self.cancelled:
                self._check_interrupt_deadline(self.pool)
                return False
        self.stop_reason = None
        self.stop_kind = None
        self.blog.resume("daily quota reset")
        self.echo("Daily quota reset: continuing.")
        return True

    # -- control -------------------------------------------------------------------------------
    def _on_command(self, command: str) -> None:
        if command == "pause" and not self.paused:
            self.paused = True
            self.blog.pause("gsvr-batch pause")
            if self.limiter is not None:
                self.limiter.set_paused(True)
            self.echo("Paused: no new tasks start; running tasks hold at their next API call. "
                      "`gsvr-batch resume` continues.")
        elif command == "resume" and self.paused:
            self.paused = False
            self.blog.resume("gsvr-batch resume")
            if self.limiter is not None:
                self.limiter.set_paused(False)
            self.echo("Resumed.")
        elif command == "cancel" and not self.cancelled:
            self.cancelled = True
            self.paused = False
            if self.limiter is not None:
                self.limiter.set_paused(False)
            self.blog.cancel("gsvr-batch cancel")
            self._stop(ExitCode.CANCELLED, "cancelled", "cancelled by `gsvr-batch cancel`; "
                       "running tasks were allowed to end; rerun the same command to continue")
            self._interrupt_deadline = time.monotonic() + self.opts.grace

    def _install_signals(self) -> dict[int, Any]:
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread (library use): leave signals alone
                pass
        return old

    def _restore_signals(self, old: dict[int, Any]) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.interrupts += 1
        name = signal.Signals(signum).name
        if self.interrupts == 1:
            # No journal write here (we may be inside one): the loop notices stop_reason.
            self._pending_interrupt = name
        else:
            self.echo(f"{name} again: stopping now; running tasks go back to pending.")

    def _check_interrupt_deadline(self, pool) -> None:
        name = getattr(self, "_pending_interrupt", None)
        if name:
            self._pending_interrupt = None
            self.echo(f"{name}: no new tasks will start; waiting up to {self.opts.grace:.0f} s for "
                      f"{len(self.running)} running task(s). Press Ctrl-C again to stop at once.")
            self._stop(ExitCode.INTERRUPTED, "interrupted", f"interrupted by {name}")
            self._interrupt_deadline = time.monotonic() + self.opts.grace
        deadline = getattr(self, "_interrupt_deadline", None)
        if deadline is not None and self.running and time.monotonic() > deadline:
            self.echo("Grace period over: stopping the running tasks; they go back to pending.")
            self.interrupts = max(self.interrupts, 2)
        if self.interrupts >= 2 and self.running:
            for fut, tid in list(self.running.items()):
                self.running.pop(fut)
                if self.state.tasks[tid].status is TaskStatus.RUNNING:
                    self.blog.requeue(tid, "interrupted before it finished")
            self._shutdown_pool(pool)

    # -- cost ----------------------------------------------------------------------------------
    def _load_pricing(self) -> None:
        try:
            from .pricing import load_pricing
        except ImportError:  # pragma: no cover
            return
        try:
            self.pricing = load_pricing(getattr(self.settings, "pricing", None) or self.opts.pricing)
        except Exception as exc:  # noqa: BLE001 - a broken override must not lose the batch; say so
            self.echo(f"Warning: pricing table not loaded ({exc}); costs are reported as 0")
            self.pricing = None

    def _estimate(self, tid: str) -> float:
        from .costs import estimate_task_cost

        return estimate_task_cost(self, tid)

    def _within_cost_limit(self, tid: str) -> bool:
        limit = self.settings.cost_limit
        if limit is None or self.pricing is None:
            return True
        spent = self.state.total_cost_usd
        in_flight = sum(self._estimate(t) for t in self.running.values())
        nxt = self._estimate(tid)
        if spent + in_flight + nxt <= float(limit):
            return True
        self._stop(ExitCode.TEMPFAIL, "cost_limit",
                   f"cost limit ${float(limit):.2f} reached: spent ${spent:.4f}, "
                   f"${max(0.0, float(limit) - spent):.4f} left, next task estimated at ${nxt:.4f}",
                   spent_usd=round(spent, 6), limit_usd=float(limit))
        # put it back: it was peeked, not started
        return False

    # -- ending --------------------------------------------------------------------------------
    def _running_view(self) -> list[dict[str, Any]]:
        return [{"task_id": tid, "step": self.state.tasks[tid].step, "title": self.state.tasks[tid].title}
                for tid in self.running.values()]

    def _finish_idle(self) -> RunResult:
        counts = self.state.counts()
        code = ExitCode.TASKS_FAILED if counts["failed"] else ExitCode.OK
        msg = (f"Nothing to do: all {counts['total']} tasks already finished "
               f"({counts['completed']} completed, {counts['skipped']} skipped, {counts['failed']} failed).")
        if not self.state.finished:
            self.blog.finish()
        self.blog.run_finished(code)
        return RunResult(int(code), msg, str(self.blog.path), str(self.manifest.output_root), counts,
                         self.state.total_cost_usd)

    def _conclude(self) -> RunResult:
        counts = self.state.counts()
        if self.stop_reason is not None:
            code, msg = self.stop_reason
        elif counts["pending"] or counts["running"]:
            code, msg = ExitCode.TEMPFAIL, "stopped with tasks still pending; rerun to continue"
        elif counts["failed"]:
            code, msg = ExitCode.TASKS_FAILED, f"{counts['failed']} task(s) failed (see `gsvr-batch replay`)"
        else:
            code, msg = ExitCode.OK, "all tasks done"
        if code in (ExitCode.OK, ExitCode.TASKS_FAILED) and self.state.is_complete():
            self.blog.finish()
        self._notify(code, msg)
        self.blog.run_finished(code)
        self.blog.maybe_snapshot(force=True)
        summary = (f"{counts['completed']} completed, {counts['skipped']} skipped, {counts['failed']} failed, "
                   f"{counts['pending']} pending of {counts['total']}; cost ${self.state.total_cost_usd:.4f}"
                   + (" (priced as the real API would bill it; the sandbox bills nothing)"
                      if self.settings.sandbox else ""))
        return RunResult(int(code), f"{msg}. {summary}", str(self.blog.path), str(self.manifest.output_root),
                         counts, self.state.total_cost_usd)


    # -- notifications -------------------------------------------------------------------------
    NOTIFY_EVENTS = {"fatal": "batch_aborted", "quota_day": "quota_exhausted", "cost_limit": "cost_limit_reached",
                     "cancelled": "batch_cancelled"}

    def _notify_event(self, code: int) -> str | None:
        kind = getattr(self, "stop_kind", None) if self.stop_reason is not None else None
        if kind in self.NOTIFY_EVENTS:
            return self.NOTIFY_EVENTS[kind]
        if kind is None and code in (ExitCode.OK, ExitCode.TASKS_FAILED) and self.state.is_complete():
            return "batch_finished"
        return None  # interrupted, disk full, pending retries: the next run will tell

    def _notify(self, code: int, message: str) -> None:
        """Tell the configured targets how the batch ended; a failing target never changes the exit code."""
        targets = list(self.settings.notify or [])
        event = self._notify_event(code)
        if not targets or event is None:
            return
        try:
            from . import notify
        except ImportError:  # pragma: no cover - during bring-up only
            return
        payload = {"event": event, "batch_id": self.state.batch_id, "manifest": self.state.manifest,
                   "exit_code": int(code), "message": message, "counts": self.state.counts(),
                   "cost_usd": round(self.state.total_cost_usd, 6), "journal": str(self.blog.path),
                   "output_root": str(self.manifest.output_root),
                   "report": getattr(self, "report_path", None)}
        try:
            results = notify.send(event, payload, targets)
        except Exception as exc:  # noqa: BLE001 - notifications are best effort by contract
            self.echo(f"Warning: notification '{event}' not sent: {exc}")
            return
        for r in results:
            ok = bool(getattr(r, "ok", False))
            error = getattr(r, "error", None)
            self.blog.notification(event=event, target=str(getattr(r, "target", "")), ok=ok,
                                   attempts=int(getattr(r, "attempts", 1) or 1), error=error)
            if not ok:
                self.echo(f"Warning: notification '{event}' to {getattr(r, 'target', '?')} failed: {error}")


def _run_in_worker(spec: TaskSpec) -> TaskResult:
    from .pipeline import run_task

    return run_task(spec)
