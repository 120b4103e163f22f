"""One small function per state transition (after rq's ``job_lifecycle`` and saq's ``Queue.finish``).

:class:`BatchLog` owns the journal writer and the folded state together: every transition
builds its record, has :func:`state.apply` accept it (an illegal transition raises before
anything is written), appends it, and only then returns. Nothing else writes the journal.

If an append fails (disk full, I/O error) the state is rebuilt from what the file holds and
:class:`~gsvr_batch.errors.JournalWriteFailed` propagates (exit 75): memory never stays ahead of
the disk, and no further record is attempted.

:func:`replay` is the read-only side: snapshot + tail, or the full journal.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from . import fastreplay
from . import journal as jr
from .errors import ErrorRecord, JournalError, JournalWriteFailed
from .state import TERMINAL, BatchState, TaskStatus, apply, fold

log = logging.getLogger("gsvr_batch.journal")

SNAPSHOT_EVERY_COMPLETIONS = 100  # a tail of a few hundred records replays in milliseconds
SNAPSHOT_EVERY_SECONDS = 300.0


@dataclass
class Replay:
    state: BatchState
    end_offset: int  # byte offset after the last good record
    torn_bytes: int  # bytes after it that do not form a good record (0 = clean)
    used_snapshot: bool
    records_read: int  # records folded (excluding those covered by the snapshot)
    last_crc: str | None
    prefix_crc: int = 0  # CRC-32 of bytes [0, end_offset)


def replay(path: str | os.PathLike[str], *, use_snapshot: bool = True) -> Replay:
    """Rebuild the state from the journal at ``path`` without changing anything on disk.

    A snapshot is used only when the CRC of the journal prefix it covers still matches
    (journal.load_snapshot): damage anywhere makes replay read every record and stop at it.
    """
    path = Path(path)
    if not path.exists():
        raise JournalError(f"journal not found: {path}")
    if path.is_dir():
        raise JournalError(f"journal path is a directory: {path}")
    # The fold makes no reference cycles, but it makes millions of objects, most of them kept:
    # the cyclic collector would walk the growing state again and again (~30 % of a 1M-record
    # replay). Reference counting still frees everything; the collector is back on afterwards.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _replay(path, use_snapshot)
    finally:
        if gc_was_enabled:
            gc.enable()


def _replay(path: Path, use_snapshot: bool) -> Replay:
    state, start, first_line, expect, used, last_crc, crc = _replay_start(path, use_snapshot)
    size = path.stat().st_size
    n = 0
    # (A snapshot whose state does not end where it says it does is the reference's to report.)
    if fastreplay.usable(size - start) and (expect is None or expect == state.last_seq + 1):
        # A long journal: the same state on two cores (fastreplay), or — if that cannot vouch
        # for its result — from scratch below, by the reference, which then decides.
        fast = fastreplay.replay(path, state, start, crc, size)
        if fast is None:
            # Loaded again, not reused: the state built from it shares its dicts (uploads,
            # sources, a task's usage...), which the attempt has changed.
            state, start, first_line, expect, used, last_crc, crc = _replay_start(path, use_snapshot)
        else:
            n, start, crc = fast
            first_line += n
            if expect is not None:  # the reference checks seq from a snapshot on, else the fold does
                expect = state.last_seq + 1
    digest = {"crc": crc}
    end = start
    # In batches: one fold call per ~1,000 records, not a generator resume + apply per record.
    # After a fast replay this reads what was appended since it began (a live run's records).
    for records, ends in jr.iter_batches(path, start_offset=start, first_line=first_line, expect_seq=expect,
                                         digest=digest):
        fold(records, state)
        end = ends[-1]
        n += len(records)
    if n:
        with open(path, "rb") as fh:
            fh.seek(end - 11)
            last_crc = fh.read(8).decode("ascii", "replace")
    size = path.stat().st_size
    return Replay(state=state, end_offset=end, torn_bytes=size - end, used_snapshot=used, records_read=n,
                  last_crc=last_crc, prefix_crc=digest["crc"])


def _replay_start(path: Path, use_snapshot: bool
                  ) -> tuple[BatchState, int, int, int | None, bool, str | None, int]:
    """Where replay begins: the snapshot's state and offset if it is usable, else an empty state
    at the start. ``(state, offset, first line, expected seq, snapshot used, last crc, digest)``."""
    if use_snapshot:
        snap = jr.load_snapshot(path)
        if snap is not None:
            try:
                state = BatchState.from_dict(snap["state"])
                return (state, snap["offset"], snap["seq"] + 1, snap["seq"] + 1, True, snap["last_crc"],
                        int(snap["prefix_crc"]))
            except (KeyError, TypeError, ValueError):
                pass
    return BatchState(), 0, 1, None, False, None, 0


def new_attempt_id() -> str:
    return uuid.uuid4().hex[:16]


class BatchLog:
    """The manager's handle on one batch: journal writer + current state, always in step."""

    def __init__(self, path: str | os.PathLike[str], state: BatchState, writer: jr.JournalWriter) -> None:
        self.path = Path(path)
        self.state = state
        self.writer = writer
        self._completions_since_snapshot = 0
        self._last_snapshot = time.monotonic()
        self._records_since_snapshot = 0
        self._snapshot_cost = 0.0
        self._group_depth = 0  # inside group_commit(): durable records wait for one fsync on the way out
        self._group_dirty = False

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, warn=log.warning) -> tuple[BatchLog, Replay | None]:
        """Open (or create) the journal for writing. The caller must hold the run lock.

        A torn tail is cut off here — the copy is kept next to the journal — and reported.
        """
        path = Path(path)
        if path.exists() and path.stat().st_size > 0:
            rp = replay(path)
            if rp.torn_bytes:
                backup = jr.cut_torn_tail(path, rp.end_offset)
                warn(f"journal {path}: cut off a torn last record ({rp.torn_bytes} bytes, "
                     f"from a crash mid-write); the original is kept as {backup.name}")
            writer = jr.JournalWriter(path, next_seq=rp.state.last_seq + 1, prefix_crc=rp.prefix_crc)
            writer.last_crc = rp.last_crc
            return cls(path, rp.state, writer), rp
        writer = jr.JournalWriter(path, next_seq=1, prefix_crc=0)
        return cls(path, BatchState(), writer), None

    def close(self) -> None:
        self.writer.close()

    @property
    def broken(self) -> bool:
        return bool(self.writer.broken)

    # -- the one place records are made --------------------------------------------------------
    def _record(self, type_: str, *, durable: bool = False, **fields: Any) -> dict[str, Any]:
        rec = self.writer.make(type_, fields)
        apply(self.state, rec)  # refuses an illegal transition before anything reaches the disk
        try:
            if durable and self._group_depth:
                self._group_dirty = True
                durable = False
            self.writer.write(rec, durable=durable)
        except JournalWriteFailed:
            # The state took the record but the disk did not: rebuild it from the file so memory
            # and disk agree again (a short write leaves a torn tail, which replay ignores).
            try:
                self.state = replay(self.path).state
            except JournalError:  # pragma: no cover - the file we just failed to append to is gone
                pass
            raise
        self._records_since_snapshot += 1
        return rec

    def sync(self) -> None:
        self.writer.sync()

    @contextlib.contextmanager
    def group_commit(self) -> Iterator[None]:
        """Durable records written inside the block share one fsync, made when the block ends.

        For a manager turn that journals several events at once (a drain of the event socket):
        each durable record would otherwise cost its own fsync (~0.5-2 ms here). The caller must
        not act on those records (dispatch, delete an upload, tell anyone) until the block has
        ended — that is when they are on disk, exactly as ``durable=True`` promises outside it.
        An exception inside the block still syncs what was written. Blocks nest (the outermost syncs).
        """
        self._group_depth += 1
        try:
            yield
        finally:
            self._group_depth -= 1
            if not self._group_depth and self._group_dirty:
                self._group_dirty = False
                self.writer.sync()

    def maybe_sync(self) -> None:
        self.writer.maybe_sync()

    # -- batch ---------------------------------------------------------------------------------
    def create_batch(self, *, manifest: str, manifest_identity: str, manifest_hash: str,
                     settings: dict[str, Any], version: str) -> dict[str, Any]:
        return self._record("batch_created", durable=True, batch_id=uuid.uuid4().hex[:12], manifest=manifest,
                            manifest_identity=manifest_identity, manifest_hash=manifest_hash, settings=settings,
                            version=version)

    def manifest_changed(self, manifest_hash: str, settings: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._record("manifest_changed", manifest_hash=manifest_hash, settings=settings)

    def run_started(self, **info: Any) -> dict[str, Any]:
        return self._record("run_started", durable=True, pid=os.getpid(), **info)

    def run_finished(self, exit_code: int) -> dict[str, Any]:
        return self._record("run_finished", durable=True, exit_code=int(exit_code), counts=self.state.counts())

    def pause(self, reason: str) -> dict[str, Any]:
        return self._record("batch_paused", durable=True, reason=reason)

    def resume(self, reason: str = "resumed") -> dict[str, Any]:
        return self._record("batch_resumed", durable=True, reason=reason)

    def cancel(self, reason: str) -> dict[str, Any]:
        return self._record("batch_cancelled", durable=True, reason=reason)

    def stop(self, kind: str, reason: str, **extra: Any) -> dict[str, Any]:
        return self._record("batch_stopped", durable=True, kind=kind, reason=reason,
                            **{k: v for k, v in extra.items() if v is not None})

    def quota_cleared(self, models: list[str], reason: str) -> dict[str, Any]:
        return self._record("quota_cleared", durable=True, models=models, reason=reason)

    def finish(self) -> dict[str, Any]:
        return self._record("batch_finished", durable=True, counts=self.state.counts(),
                            cost_usd=round(self.state.total_cost_usd, 6))

    def charge_requests(self, model: str, count: int, day: str, youtube_seconds: float = 0.0) -> dict[str, Any]:
        fields: dict[str, Any] = {"model": model, "count": int(count), "day": day}
        if youtube_seconds:
            fields["youtube_seconds"] = round(float(youtube_seconds), 3)
        return self._record("requests_charged", **fields)

    def notification(self, **fields: Any) -> dict[str, Any]:
        return self._record("notification", **fields)

    # -- tasks ---------------------------------------------------------------------------------
    def add_task(self, **fields: Any) -> dict[str, Any]:
        return self._record("task_added", **fields)

    def drop_task(self, task_id: str, reason: str) -> dict[str, Any]:
        return self._record("task_dropped", task_id=task_id, reason=reason)

    def start_task(self, task_id: str, *, attempt_id: str, model: str, fingerprint: str | None = None,
                   output: str | None = None) -> dict[str, Any]:
        attempt = self.state.tasks[task_id].attempts + 1
        fields: dict[str, Any] = {"task_id": task_id, "attempt": attempt, "attempt_id": attempt_id, "model": model}
        if fingerprint:
            fields["fingerprint"] = fingerprint
        if output and output != self.state.tasks[task_id].output:
            fields["output"] = output
        return self._record("task_started", **fields)

    def step(self, task_id: str, step: str, worker: int | None = None) -> dict[str, Any] | None:
        t = self.state.tasks.get(task_id)
        if t is None or t.status is not TaskStatus.RUNNING:
            return None  # a late event from a task that has already ended: nothing to record
        fields: dict[str, Any] = {"task_id": task_id, "step": step}
        if worker is not None and worker != t.worker:
            fields["worker"] = int(worker)
        return self._record("task_step", **fields)

    def plan(self, task_id: str, plan: dict[str, Any], video_duration: float | None = None) -> dict[str, Any]:
        # Durable: the clip boundaries must survive a crash, or the partials already paid for
        # would not fit the plan the next attempt makes.
        return self._record("task_plan", durable=True, task_id=task_id, plan=plan, video_duration=video_duration)

    def clip_completed(self, task_id: str, *, clip: int, start: float, end: float, path: str, sha256: str,
                       usage: dict[str, int], cost_usd: float, adopted: bool = False) -> dict[str, Any]:
        # Durable: the partial is written and fsynced under its final name (invariant 2); it is paid.
        return self._record("clip_completed", durable=True, task_id=task_id, clip=int(clip), start=start, end=end,
                            path=path, sha256=sha256, usage=usage, cost_usd=round(cost_usd, 8),
                            calls=0 if adopted else 1, adopted=adopted)

    def upload_finished(self, upload: dict[str, Any], task_id: str | None = None) -> dict[str, Any]:
        # Group-committed, not fsynced at once: a killed manager loses nothing written (the page
        # cache survives a process); only a power cut within the commit interval can lose it, and
        # then the video is uploaded again (free) — not worth an fsync per task (invariant 4).
        fields: dict[str, Any] = {"upload": upload}
        if task_id:
            fields["task_id"] = task_id
        return self._record("upload_finished", **fields)

    def upload_deleted(self, name: str, reason: str = "") -> dict[str, Any]:
        return self._record("upload_deleted", name=name, reason=reason)

    def complete_task(self, task_id: str, *, output: str, sha256: str, bytes_: int | None, usage: dict[str, int],
                      cost_usd: float, model_version: str | None, video_duration: float | None,
                      elapsed: float | None, calls: int = 1, lost_calls: int = 0, adopted: bool = False,
                      truncated: bool = False, fingerprint: str | None = None,
                      plan: dict[str, Any] | None = None) -> dict[str, Any]:
        # The output is already fsynced under its final name (pipeline); now the record, fsynced.
        fields: dict[str, Any] = {
            "task_id": task_id, "output": output, "sha256": sha256, "bytes": bytes_, "usage": usage,
            "cost_usd": round(cost_usd, 8), "model_version": model_version, "video_duration": video_duration,
            "elapsed": elapsed, "calls": int(calls)}
        for key, value in (("lost_calls", lost_calls), ("adopted", adopted), ("truncated", truncated),
                           ("fingerprint", fingerprint), ("plan", plan)):
            if value:
                fields[key] = value
        rec = self._record("task_completed", durable=True, **fields)
        self._completions_since_snapshot += 1
        return rec

    def fail_task(self, task_id: str, error: ErrorRecord, *, message: str | None = None, charge: str | None = "attempt",
                  cost_usd: float = 0.0, calls: int = 0, lost_calls: int = 0) -> dict[str, Any]:
        t = self.state.tasks[task_id]
        return self._record("task_failed", durable=True, task_id=task_id, attempt=t.attempts,
                            **_error_fields(error, message), charge=charge, cost_usd=round(cost_usd, 8),
                            calls=calls, lost_calls=lost_calls)

    def schedule_retry(self, task_id: str, error: ErrorRecord, delay: float, *, now: float,
                       message: str | None = None, charge: str | None = "attempt", cost_usd: float = 0.0,
                       calls: int = 0, lost_calls: int = 0) -> dict[str, Any]:
        t = self.state.tasks[task_id]
        # Durable: the charge it carries must not be forgotten by a crash (attempts would be free).
        return self._record("retry_scheduled", durable=True, task_id=task_id, attempt=t.attempts + 1,
                            delay=round(delay, 3), not_before=round(now + delay, 3), **_error_fields(error, message),
                            charge=charge, cost_usd=round(cost_usd, 8), calls=calls, lost_calls=lost_calls)

    def requeue(self, task_id: str, reason: str, *, interrupted: bool = False, reset: bool = False,
                cost_usd: float = 0.0, calls: int = 0, lost_calls: int = 0) -> dict[str, Any]:
        fields: dict[str, Any] = {"task_id": task_id, "reason": reason, "interrupted": interrupted}
        if reset:
            fields["reset"] = True
        if cost_usd or calls or lost_calls:
            fields.update(cost_usd=round(cost_usd, 8), calls=calls, lost_calls=lost_calls)
        return self._record("task_requeued", **fields)

    def skip_task(self, task_id: str, reason: str, video_duration: float | None = None) -> dict[str, Any]:
        return self._record("task_skipped", durable=True, task_id=task_id, reason=reason,
                            video_duration=video_duration)

    # -- Gemini Batch Mode ---------------------------------------------------------------------
    def batch_job_submitted(self, name: str, task_ids: list[str], model: str, **extra: Any) -> dict[str, Any]:
        return self._record("batch_job_submitted", durable=True, name=name, task_ids=task_ids, model=model, **extra)

    def batch_job_updated(self, name: str, state: str, done: bool = False, **extra: Any) -> dict[str, Any]:
        return self._record("batch_job_updated", durable=True, name=name, state=state, done=done, **extra)

    # -- snapshots -----------------------------------------------------------------------------
    def maybe_snapshot(self, *, force: bool = False, now: float | None = None) -> bool:
        """Write a snapshot after 10 completions or 5 minutes with new records (or when forced)."""
        if self.writer.broken:
            return False
        now = time.monotonic() if now is None else now
        # Never spend more than ~5 % of the manager's time on snapshots: a big batch's snapshot
        # costs O(tasks), so its interval grows with what the last one cost.
        if not force and now - self._last_snapshot < 20 * self._snapshot_cost:
            return False
        due = self._completions_since_snapshot >= SNAPSHOT_EVERY_COMPLETIONS or (
            self._records_since_snapshot and now - self._last_snapshot >= SNAPSHOT_EVERY_SECONDS)
        if not (due or (force and self._records_since_snapshot)):
            return False
        # The snapshot must never describe records that are not yet on disk.
        self.writer.sync()
        t0 = time.monotonic()
        try:
            jr.write_snapshot(self.path, self.state.to_dict(), self.state.last_seq, self.writer.offset,
                              self.writer.last_crc, self.writer.prefix_crc)
        except Exception as exc:  # noqa: BLE001 - a snapshot is a cache: failing to write one loses nothing
            log.warning("snapshot of %s not written: %s", self.path, exc)
            return False
        self._snapshot_cost = time.monotonic() - t0
        self._completions_since_snapshot = 0
        self._records_since_snapshot = 0
        self._last_snapshot = now
        return True


def _error_fields(error: ErrorRecord, message: str | None) -> dict[str, Any]:
    return {"error_class": error.error_class, "message": message if message is not None else error.message,
            "disposition": error.disposition.value}


__all__ = ["BatchLog", "Replay", "replay", "fold", "TERMINAL", "new_attempt_id"]
