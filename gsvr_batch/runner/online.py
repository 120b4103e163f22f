"""The online loop: dispatch tasks to a ``ProcessPoolExecutor`` and journal what comes back.

Single-threaded on purpose (journal appends are strictly sequential); the only other threads in
the manager are the optional in-process sandbox server and the upload janitor, neither of which
writes the journal. Results arrive twice — on the event channel and through the executor — and
are accepted once per attempt (the attempt nonce tells duplicates and stale attempts apart).

When a worker dies, CPython breaks the whole pool and fails every future. Only the task whose
worker died is charged (policy: crash budget); its siblings are *not*: workers ignore SIGTERM,
so CPython's ``terminate()`` leaves them running, they finish their task (already paid for at
the server), write the output and send the result on the event channel; we then end them. Idle
workers of the broken pool are killed at once, and a new pool takes over.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..channels import ControlWatcher, EventReceiver
from ..errors import GsvrError, JournalWriteFailed
from ..fsutil import pid_alive
from ..progress import Progress
from ..state import TaskStatus
from ..pipeline import internal_error, run_task
from ..tasks import EVENT_PARTIAL, EVENT_PLAN, EVENT_RESULT, EVENT_UPLOAD, TaskResult, TaskSpec
from ..timeutil import parse_iso_ts
from .options import RunResult
from .preflight import limits_line
from .session import Session

TICK = 0.2  # seconds: control commands, events, signals and progress are handled at least this often
# Pools in a row whose workers died before any task reached one: the workers cannot start (a
# missing library, a script that calls run_batch without an ``if __name__ == "__main__":`` guard,
# an initializer that fails). Rebuilding again would loop forever, writing requeue records.
STILLBORN_POOLS = 3
# The worker events the loop acts on at once: a result (a worker is free for the next task), an
# upload (tasks of the same video wait for it), a paid clip and its plan (journaled durably).
# A step, a worker's pid or a request count waits for the next turn (at most TICK): waking for
# each of those made five turns of the loop per task where two do.
WAKE_ON = frozenset({EVENT_RESULT, EVENT_UPLOAD, EVENT_PARTIAL, EVENT_PLAN})


@dataclass
class Running:
    tid: str
    attempt_id: str
    pool: int  # generation of the pool the task was submitted to
    pid: int | None = None  # the worker's pid, from its first event
    ppid: int | None = None  # its parent's (the forkserver it was forked from), from the same event
    orphan: bool = False  # its pool broke under it; the result comes on the event channel


# Imported once in the forkserver, then shared copy-on-write by every worker it forks (~30 % less
# memory for 8 workers, and a pool is ready sooner than with spawn, which imports them per worker).
FORKSERVER_PRELOAD = ["gsvr_batch.forkserver_init", "gsvr_batch.pipeline", "gsvr_batch.formats", "gsvr_batch.inputs", "gsvr_batch.context",
                      "google.genai", "google.genai.types", "av"]


def worker_context() -> Any:
    """Where pool workers come from: a forkserver, never a fork of the manager.

    The manager has threads (sandbox server, janitor, event reader, tqdm) whose locks a plain fork
    could copy in a held state. The forkserver is a clean process started once per run (itself
    spawned); workers are forked from it. It exits when the manager dies, and the workers' parent-
    death signal then ends them too. ``GSVR_WORKER_START=spawn`` falls back to spawned workers.
    """
    import tempfile

    if os.environ.get("GSVR_WORKER_START") == "spawn" or "forkserver" not in multiprocessing.get_all_start_methods() \
            or len(tempfile.gettempdir()) > 70:
        # (CPython's forkserver listens on a socket under TMPDIR/pymp-*/: with a long TMPDIR its name
        # would not fit the 108 bytes a socket name may have, and the pool could not start.)
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
    return ctx


def _died_with_its_forkserver(r: Running) -> bool:
    """The worker's own parent (the forkserver it reported at its start) is gone: the worker died
    with it (parent-death signal), which no task caused (the OOM killer picks large processes).

    Asked of each worker's own parent, not of "the" forkserver: when the forkserver is killed, a
    task submitted before the broken pool is noticed makes CPython start a new one
    (``ensure_running``), which is alive. (CPython offers no public way to ask after its
    forkserver anyway.) Under ``spawn`` the parent is the manager itself, alive.
    """
    return bool(r.ppid) and r.ppid != os.getpid() and not pid_alive(int(r.ppid))


_WITH_FORKSERVER = "the workers' forkserver process died (killed from outside)"


def _pool_processes(pool: cf.ProcessPoolExecutor) -> list[Any]:
    # CPython keeps the worker processes in a private dict and offers no public way to reach
    # them; we need them to end workers that ignore SIGTERM (see the module docstring).
    return list((getattr(pool, "_processes", None) or {}).values())


class OnlineRun:
    def __init__(self, session: Session) -> None:
        self.s = session
        self.running: dict[str, Running] = {}
        self.futures: dict[cf.Future, tuple[str, str]] = {}
        self.pool: cf.ProcessPoolExecutor | None = None
        self.generation = 0
        self.old_pools: list[cf.ProcessPoolExecutor] = []
        self.served = False  # a task of the current pool reached a worker (its result came back)
        self.stillborn = 0  # pools in a row that broke before any task reached a worker
        self.receiver: EventReceiver | None = None
        self.progress: Progress | None = None
        self.pending: deque[str] = deque()

    # -- set-up ----------------------------------------------------------------------------------
    def pending_queue(self) -> deque[str]:
        """Pending tasks in manifest order, grouped by video: tasks of one video go back to back,
        so one upload serves them all and their requests share a cacheable prefix."""
        s = self.s
        only = s.opts.only_ids
        ids = [tid for tid in s.order if s.state.tasks[tid].status is TaskStatus.PENDING
               and (only is None or tid in only)]
        first: dict[str, int] = {}
        for i, tid in enumerate(ids):
            first.setdefault(s.jobs[tid].source, i)
        order = sorted(enumerate(ids), key=lambda it: (first[s.jobs[it[1]].source], it[0]))
        return deque(tid for _i, tid in order)

    def _make_pool(self) -> cf.ProcessPoolExecutor:
        from ..pipeline import init_worker

        assert self.receiver is not None
        self.generation += 1
        self.served = False
        # The manager's environment goes along: forkserver children would otherwise see the
        # forkserver's, from whenever this process first started one (see init_worker).
        initargs = (self.s.worker_config, self.receiver.sender(), dict(os.environ))
        return cf.ProcessPoolExecutor(max_workers=int(self.s.settings.workers), mp_context=worker_context(),
                                      initializer=init_worker, initargs=initargs)

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> RunResult:
        s = self.s
        pending = self.pending = self.pending_queue()
        if not pending:
            if s.state.is_complete():
                return s.finish_idle()
            s.log.run_finished(0)
            return s.result(0, "Nothing to do for the tasks asked for.")
        self.receiver = EventReceiver(s.log.path, wake_on=WAKE_ON)
        self.receiver.start_reader()
        s.control = ControlWatcher(s.log.path)
        self.progress = Progress.create(str(s.settings.progress), s.state, s.order,
                                        summary_interval=float(s.settings.summary_interval), echo=s.echo)
        s.echo(f"Journal: {s.log.path}")
        s.echo(f"Outputs: {s.manifest.output_root}")
        if s.sandbox_server is not None:
            s.echo(f"Backend: offline sandbox at {s.sandbox_server.base_url} (no API key used, nothing billed)")
        s.echo(limits_line(s.prepared, len(pending)))
        s.install_signals()
        self.pool = self._make_pool()
        try:
            self._loop(pending)
            while self._wait_for_quota_reset():
                self._loop(pending)
        finally:
            s.restore_signals()
            # Each step on its own: a journal that cannot be written (disk full) must not stop
            # the workers from being ended or the services from being closed.
            for step in (self._end_workers, s.flush_requests, self._final_deletes, s.collect_deletions,
                         self.receiver.close, self.progress.close, s.close_services):
                try:
                    step()
                except JournalWriteFailed:
                    pass
        return s.conclude()

    def _final_deletes(self) -> None:
        if self.s.state.is_complete():
            self.s.delete_unneeded_uploads()

    def _loop(self, pending: deque[str]) -> None:
        """One turn: collect what came back, start what may start — both journaled under one
        fsync — hand the started tasks to the pool, then wait for the next event (≤ TICK)."""
        s = self.s
        while True:
            s.poll_control()
            s.handle_signals(len(self.running))
            if s.at_once and self.running:
                self._stop_now()
                break
            self._watch_orphans()
            with s.log.group_commit():
                # Nothing acts on this turn's records (dispatch, upload deletes) before the block
                # ends, when they are on disk: durable records share one fsync (invariant 2).
                broken = self._collect()
                starting = [] if broken else self._dispatch(pending)
            # Each task's task_started (with its attempt nonce) is on disk before the task reaches
            # a worker, so an output it writes is recognised — adopted, not paid again — after a crash.
            for tid, spec in starting:
                self._submit(tid, spec, pending)
            if broken:
                self._pool_broke(pending)
                continue
            if not self.running:
                if not pending and s.youtube_held is not None and s.stop_reason is None:
                    held = s.youtube_held  # nothing left but YouTube links held until midnight Pacific
                    s.stop(held.kind, held.message, resets_at=held.resets_at, model=held.model, budget=held.budget)
                if s.stop_reason is not None or not pending:
                    break
                time.sleep(TICK)  # paused, or every pending task waits for its retry time
                self._housekeeping()
                continue
            self._housekeeping()
            # Every result also arrives as an event, so the event channel is what wakes us.
            assert self.receiver is not None
            self.receiver.wait(TICK)

    def _collect(self) -> bool:
        """Journal every event and result that came back; True when the pool broke."""
        self._drain()  # a task's events come before its result
        broken = False
        done, _ = cf.wait(list(self.futures), timeout=0, return_when=cf.FIRST_COMPLETED)
        for fut in done:
            tid, attempt_id = self.futures.pop(fut)
            try:
                result = fut.result()
            except cf.process.BrokenProcessPool:
                broken = True
                continue
            except Exception as exc:  # a result that cannot be unpickled: fail the task, keep the batch
                result = TaskResult(task_id=tid, ok=False, attempt_id=attempt_id,
                                    error=internal_error(exc, " returning the result").to_dict())
            self._accept(tid, result)
        return broken

    def _dispatch(self, pending: deque[str]) -> list[tuple[str, TaskSpec]]:
        """Start (journal) the tasks that may start now: room, nothing stops us, due, within quota and cost."""
        s = self.s
        workers = int(s.settings.workers)
        starting: list[tuple[str, TaskSpec]] = []
        while s.stop_reason is None and not s.paused and len(self.running) + len(starting) < workers and pending:
            tid = self._next_due(pending, [t for t, _ in starting])
            if tid is None:
                break
            model = s.jobs[tid].model
            busy = list(self.running) + [t for t, _ in starting]
            block = s.quota_block(model, tid)
            if block is not None and block.model == "youtube" and s.jobs[tid].source_kind == "youtube":
                s.youtube_held = block  # only the YouTube hours are spent: the other videos go on
                continue
            if block is not None:
                s.stop(block.kind, block.message, resets_at=block.resets_at, model=block.model, budget=block.budget)
            if block is not None or not s.within_cost_limit(tid, busy) or not self._models_known():
                pending.appendleft(tid)  # peeked, not started
                break
            starting.append((tid, s.start(tid)))
        return starting

    def _models_known(self) -> bool:
        """Ask the API about the batch's models once, before the first task starts (so a run that
        has nothing it may send today sends nothing at all). An unknown model stops the batch
        before any upload (exit 2); a refused key stops it too (exit 3)."""
        if self._checked:
            return True
        self._checked = True
        try:
            self.s.check_models()
        except GsvrError as err:
            kind = "fatal" if err.exit_code == 3 else "usage"
            self.s.stop(kind, str(err))
            return False
        return True

    _checked = False

    def _housekeeping(self) -> None:
        s = self.s
        s.flush_steps()
        s.flush_requests(every=1.0)
        s.collect_deletions()
        assert self.progress is not None
        self.progress.tick([{"task_id": t, "step": s.state.tasks[t].step, "title": s.state.tasks[t].title}
                            for t in self.running])
        s.log.maybe_sync()
        s.log.maybe_snapshot()

    def _next_due(self, pending: deque[str], starting: list[str] = ()) -> str | None:
        s = self.s
        now = s.now()
        busy = list(self.running) + list(starting)
        later: list[str] = []  # due later (a retry's delay): to the back, as a queue does
        held: list[str] = []  # waiting for an upload that is on its way: they keep their place, so a
        found = None          # copy still runs next to its twin and shares its upload while it is alive
        while pending:
            tid = pending.popleft()
            t = s.state.tasks[tid]
            if t.status is not TaskStatus.PENDING:
                continue
            if t.not_before and t.not_before > now:
                later.append(tid)
            elif s.uploading_elsewhere(tid, busy):
                held.append(tid)
            else:
                found = tid
                break
        pending.extendleft(reversed(held))
        pending.extend(later)
        return found

    def _submit(self, tid: str, spec: TaskSpec, pending: deque[str]) -> None:
        s = self.s
        assert self.pool is not None
        try:
            fut = self.pool.submit(run_task, spec)
        except (cf.BrokenExecutor, RuntimeError, OSError, EOFError):
            # The pool broke between two turns: put the task back uncharged and rebuild. (EOFError /
            # OSError: submit starts a worker through a forkserver that was just killed; the item it
            # queued is cancelled with the old pool.)
            s.interrupted(tid, "the worker pool was being rebuilt")
            pending.appendleft(tid)
            self._pool_broke(pending)
            return
        self.running[tid] = Running(tid, spec.attempt_id, self.generation)
        self.futures[fut] = (tid, spec.attempt_id)

    # -- results -----------------------------------------------------------------------------------
    def _drain(self) -> None:
        assert self.receiver is not None
        for ev in self.receiver.take():
            result = self.s.on_event(ev, self.running)
            if result is not None:
                self._accept(result.task_id, result)

    def _accept(self, tid: str, result: TaskResult) -> None:
        r = self.running.get(tid)
        if r is None or (result.attempt_id and result.attempt_id != r.attempt_id):
            return  # the other copy of a result already accepted, or a stale attempt
        s = self.s
        self.running.pop(tid)
        if r.pool == self.generation:
            self.served = True
        s.accept_result(tid, result)
        if r.orphan and r.pid:
            self._kill(r.pid)  # it finished in a broken pool: nothing more will come from it
        t = s.state.tasks[tid]
        if t.status is TaskStatus.PENDING:
            self.pending.append(tid)  # a retry: due after its delay
        assert self.progress is not None
        self.progress.task_done(t)

    def _watch_orphans(self) -> None:
        for tid, r in list(self.running.items()):
            if r.orphan and r.pid and not pid_alive(r.pid):
                self._drain()
                if tid in self.running and _died_with_its_forkserver(r):  # no task caused that
                    self.running.pop(tid)
                    self.s.interrupted(tid, _WITH_FORKSERVER)
                    self.pending.append(tid)
                elif tid in self.running:  # died without sending a result: that worker's own death
                    self.running.pop(tid)
                    self.s.worker_died(tid, f" (pid {r.pid}, after its pool was rebuilt)")
                    if self.s.state.tasks[tid].status is TaskStatus.PENDING:
                        self.pending.append(tid)

    def _pool_broke(self, pending: deque[str]) -> None:
        s = self.s
        old, gen = self.pool, self.generation
        assert old is not None
        busy = {r.pid for r in self.running.values() if r.pool == gen and r.pid}
        self.stillborn = 0 if (self.served or busy) else self.stillborn + 1
        # CPython's terminate() cannot end our workers (they ignore SIGTERM): end the idle ones
        # now; the busy ones finish their paid-for task first.
        for p in _pool_processes(old):
            if p.pid not in busy:
                self._kill(p.pid)
        culprits = 0
        with_server = 0  # workers that died with their forkserver: no task caused that, none is charged
        for tid, r in list(self.running.items()):
            if r.pool != gen or r.orphan:
                continue
            if r.pid is None:
                self.running.pop(tid)
                s.interrupted(tid, "the worker pool was rebuilt before this task reached a worker")
                pending.appendleft(tid)
            elif pid_alive(r.pid):
                r.orphan = True
                # Finish this task, then exit: a worker of a broken pool must never take another
                # item from the old pool's queue (a task the manager has already put back and restarted).
                self._signal(r.pid, signal.SIGUSR1)
            elif _died_with_its_forkserver(r):
                with_server += 1
                self.running.pop(tid)
                s.interrupted(tid, _WITH_FORKSERVER)
                pending.appendleft(tid)
            else:
                self.running.pop(tid)
                culprits += 1
                s.worker_died(tid, f" (pid {r.pid})")
                if s.state.tasks[tid].status is TaskStatus.PENDING:
                    pending.appendleft(tid)
        for fut in [f for f, (tid, _a) in self.futures.items() if tid not in self.running]:
            self.futures.pop(fut, None)
        self.old_pools.append(old)
        try:
            old.shutdown(wait=False, cancel_futures=True)
        except Exception:  # noqa: BLE001 - shutting down a broken pool may raise; nothing to save
            pass
        orphans = sum(1 for r in self.running.values() if r.orphan)
        s.echo(("The workers' forkserver process died; no task charged for it" if with_server and not culprits else
                f"A worker process died; {culprits} task(s) charged for it")
               + (f", {orphans} running task(s) of the old pool are allowed to finish" if orphans else "")
               + "; the worker pool was rebuilt.")
        if self.stillborn >= STILLBORN_POOLS:
            s.stop("workers", f"the worker processes died before any task reached them, {self.stillborn} pools in "
                   "a row; nothing was charged. Workers import gsvr_batch and the main script: check that "
                   "`python -c \"import gsvr_batch.pipeline\"` works here, that the script still exists, and "
                   "that it calls run_batch under `if __name__ == \"__main__\":`")
        if s.stop_reason is None:
            self.pool = self._make_pool()

    # -- stopping ----------------------------------------------------------------------------------
    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except OSError:
            pass

    @staticmethod
    def _kill(pid: int) -> None:
        OnlineRun._signal(pid, signal.SIGKILL)

    def _all_worker_pids(self) -> set[int]:
        pids = {r.pid for r in self.running.values() if r.pid}
        for pool in [self.pool, *self.old_pools]:
            if pool is not None:
                pids.update(p.pid for p in _pool_processes(pool) if p.pid)
        return pids

    def _stop_now(self) -> None:
        """A second signal (or the grace period is over): end every worker now, put their tasks back."""
        s = self.s
        if s.interrupts < 2:
            s.echo("Grace period over: stopping the running tasks; they go back to pending.")
        self._drain()  # an answer that already arrived is kept
        for pid in self._all_worker_pids():
            self._kill(pid)
        time.sleep(0.05)
        self._drain()
        for tid in list(self.running):
            self.running.pop(tid)
            s.interrupted(tid, "stopped before it finished (an answer it wrote is adopted by the next run)")
        self.futures.clear()

    def _end_workers(self) -> None:
        """Leave no worker behind: graceful shutdown when idle, SIGKILL for anything still alive."""
        for tid in list(self.running):  # anything still running at the end goes back, uncharged
            self.running.pop(tid)
            self.s.interrupted(tid, "the run ended before this task finished")
        pools = [p for p in [self.pool, *self.old_pools] if p is not None]
        for pool in pools:
            try:
                pool.shutdown(wait=False, cancel_futures=True)
            except Exception:  # noqa: BLE001
                pass
        deadline = time.monotonic() + 2.0
        for pool in pools:
            for p in _pool_processes(pool):
                try:
                    p.join(max(0.0, deadline - time.monotonic()))
                except Exception:  # noqa: BLE001
                    pass
                if p.is_alive():
                    self._kill(p.pid)
        self._drain()

    def _wait_for_quota_reset(self) -> bool:
        """With --wait, sleep through a spent daily quota; True when the batch should go on."""
        s = self.s
        stop = s.stop_reason
        if not (s.settings.wait and stop is not None and stop.kind == "quota_day" and s.interrupts == 0):
            return False
        until = parse_iso_ts(stop.resets_at) or (s.now() + 3600)  # unknown reset time: look again in an hour
        s.echo(f"Daily quota spent; --wait: sleeping until {stop.resets_at} (Ctrl-C or `gsvr-batch cancel` to stop).")
        while s.now() < until + 5:  # a few seconds' margin for clock skew with Google
            time.sleep(1.0)
            s.poll_control()
            s.handle_signals(0)
            if s.interrupts or s.cancelled:
                return False
        s.stop_reason = None
        s.clear_passed_quota_blocks()
        s.log.resume("daily quota reset")
        s.echo("Daily quota reset: continuing.")
        return True
