"""Replay of a long journal on two cores (issue 12): the same result as the reference, sooner.

The reference replay is :func:`lifecycle._replay`: ``journal.iter_batches`` checks and decodes
every line, ``state.fold`` applies it. It decides everything, and nothing here changes what it
decides. This module reaches the same state for a long journal (a lost snapshot, ``replay
--verify``) in about half the time, by splitting the work the reference does in one process:

* **this process** reads the lines (up to the last newline the file had when replay began) in
  blocks and decodes each block with msgspec straight into small typed structs, one struct type
  per common record type (no split into lines, no dicts), and folds them with
  :func:`fold_structs`. It applies the writer's usual shape of the seven common record types
  itself; every other record, and every record off that shape, is handed to ``state.apply`` as
  the dict the reference would have made. A block the structs do not fit (another record type,
  a field the writer does not write, a ``seq`` that is not an integer) is decoded line by line
  into dicts and folded with ``state.fold``. Every block must decode to one value per line;
* **a second process** (``python -I -c``, :func:`journal.check_lines`) reads the same bytes and
  checks every line's checksum exactly as the reference reader checks it, and that the line
  begins a record as the writer begins one; it also computes the prefix digest the next snapshot
  will carry (invariant 14).

The result is taken only if both finish and the checker found good exactly the lines this
process folded, one record each, up to the same offset. Anything else — a damaged line (also one
whose damage still decodes), a torn tail before that point, a value msgspec refuses (NaN), a
sequence gap, an illegal transition, any exception, a checker that does not start or answer —
throws this state away, and the reference replays the journal from the start and decides, with
its own errors and messages. Records appended after that point (a live run's) and a torn tail
after it are read by the reference reader, which goes on from where this stopped exactly as it
goes on from a snapshot.

Why the struct fold may be trusted to equal ``state.apply``: for each record type it handles it
makes the checks of that type's handler in ``state.py`` and the same assignments, and it hands
over (to ``apply``, with the record as a dict) every record it does not fully check — so an
illegal record always meets ``apply``'s own check. ``tests/test_fastreplay.py`` compares the two
on random legal histories, on damaged journals and on lines with forged checksums.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Union

from . import journal as jr
from .state import (
    _ADDED_FIELDS,
    _COMPLETED,
    _PENDING,
    _RUNNING,
    BatchState,
    _fresh_task_dict,
    _task_with,
    apply,
    fold,
)

log = logging.getLogger("gsvr_batch.journal")

try:
    import msgspec
except ImportError:  # pragma: no cover - msgspec is an install requirement; the reference replays without it
    msgspec = None  # type: ignore[assignment]

# Below this many bytes to read, the reference alone is as quick (a second process costs ~0.1 s
# to start). 32 MiB is ~120,000 records.
MIN_BYTES = 32 << 20
ENV = "GSVR_BATCH_TWO_CORE_REPLAY"  # off: never; always: any length (tests, torture); else auto
CHECKER_GRACE = 10.0  # seconds the checker may take beyond this process's own time, at least
_CHUNK = 1 << 16  # 64 KiB: a block's structs stay in cache while they are folded (256 KiB: ~5 % slower, 1 MiB: ~50 %)


def usable(n_bytes: int) -> bool:
    """Whether to replay ``n_bytes`` of journal this way here."""
    mode = os.environ.get(ENV, "auto").strip().lower()
    if msgspec is None or mode == "off" or n_bytes <= 0:
        return False
    if mode == "always":
        return True
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    # On one core the checker would only take turns with the fold.
    return n_bytes >= MIN_BYTES and cpus >= 2


# -- the structs: the writer's record shapes (lifecycle.BatchLog) -------------------------------

if msgspec is not None:
    UNSET: Any = msgspec.UNSET

    # Each struct declares every field the writer writes for its type (and ``crc``), and any other
    # makes the block take the dict path (forbid_unknown_fields): a field is never skipped
    # unread, so every byte of a line is decoded and checked as the reference decodes it, and a
    # key a handler starts to read can never be dropped here unnoticed
    # (tests/test_fastreplay.py checks that the writer's own records fit the structs).
    # A field the handler reads with ``r.get(key)`` defaults to None (missing and null mean the
    # same to it); one it reads otherwise — subscript, ``get`` with a default, ``in`` — defaults
    # to UNSET, so that "missing" is still told apart.

    # gc=False: a struct lives for one block and holds no cycle (what JSON makes cannot have one),
    # so the collector need not track it (~10 % of the decoding).
    class _Rec(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, gc=False):
        seq: int  # typed: a record whose seq is missing or not an int makes its block take the dict path
        ts: Any = None
        crc: Any = None  # the checker's: decoded (and so checked as JSON) but not read

    class TaskAdded(_Rec, tag="task_added"):
        task_id: Any = UNSET
        source: Any = UNSET
        source_kind: Any = UNSET
        title: Any = UNSET
        template: Any = UNSET
        model: Any = UNSET
        output: Any = UNSET
        output_format: Any = UNSET
        origin: Any = UNSET

    class TaskStarted(_Rec, tag="task_started"):
        task_id: Optional[str] = None  # typed, as seq
        attempt: Any = UNSET
        attempt_id: Any = None
        model: Any = None
        fingerprint: Any = None
        output: Any = None
        worker: Any = None

    class TaskStep(_Rec, tag="task_step"):
        task_id: Optional[str] = None
        step: Any = None
        worker: Any = None

    class UploadFinished(_Rec, tag="upload_finished"):
        upload: Any = UNSET
        task_id: Any = None  # not read by the handler

    class UploadDeleted(_Rec, tag="upload_deleted"):
        name: Any = None
        reason: Any = None  # not read by the handler
        task_id: Any = None  # not written today; earlier versions (and bench_core) did

    class TaskCompleted(_Rec, tag="task_completed"):
        task_id: Optional[str] = None
        output: Any = UNSET
        sha256: Any = None
        bytes: Any = None
        usage: Any = None
        cost_usd: Any = None
        model_version: Any = None
        video_duration: Any = UNSET
        elapsed: Any = None
        calls: Any = None
        lost_calls: Any = None
        adopted: Any = None
        truncated: Any = None
        fingerprint: Any = None
        plan: Any = None

    class RequestsCharged(_Rec, tag="requests_charged"):
        model: Any = UNSET
        count: Any = UNSET
        day: Any = UNSET
        youtube_seconds: Any = None

    _KINDS = (TaskAdded, TaskStarted, TaskStep, UploadFinished, UploadDeleted, TaskCompleted, RequestsCharged)
    _STRUCTS = msgspec.json.Decoder(Union[_KINDS])  # type: ignore[valid-type]
    _TAGS = {kind: kind.__struct_config__.tag for kind in _KINDS}


_HEAD = frozenset({"seq", "ts", "crc"})


def as_dict(r: Any) -> dict[str, Any]:
    """The record as a dict for ``state.apply``: what the line said, in the terms its handler reads."""
    d: dict[str, Any] = {"seq": r.seq, "ts": r.ts}
    d["type"] = _TAGS[type(r)]
    for name in r.__struct_fields__:
        value = getattr(r, name)
        if value is not UNSET and name not in _HEAD:
            d[name] = value
    return d


_ADDED_OPTIONAL = tuple(sorted(_ADDED_FIELDS - {"task_id", "source"}))  # what a task_added may also set
_NUMBER = (int, float)


def fold_structs(records: list[Any], state: BatchState) -> BatchState:
    """``state.fold`` for the structs of a block: the same state, in place.

    Each branch is the handler of its record type in ``state.py`` for the record as the writer
    writes it: the handler's checks first, then its assignments. A record it does not check in
    full (an odd type of value, a dropped task, a re-added job, any status but the usual one)
    changes nothing here and goes to ``apply``, which applies it or raises.
    """
    tasks = state.tasks
    uploads = state.uploads
    unset = UNSET
    running, pending, completed = _RUNNING, _PENDING, _COMPLETED
    step_t, done_t, started_t = TaskStep, TaskCompleted, TaskStarted
    upload_t, deleted_t, added_t, requests_t = UploadFinished, UploadDeleted, TaskAdded, RequestsCharged
    last = state.last_seq
    created = state.batch_id is not None
    done: Any = None  # the last record applied here, whose ts is not recorded yet
    try:
        for r in records:
            seq = r.seq
            kind = type(r)
            if seq != last + 1 or not created:
                pass
            elif kind is step_t:
                t = tasks.get(r.task_id)
                if t is not None and t.status is running and not t.dropped:
                    t.step = r.step
                    if r.worker is not None:
                        t.worker = r.worker
                    last, done = seq, r
                    continue
            elif kind is done_t:
                if _completed(state, tasks, r):
                    last, done = seq, r
                    continue
            elif kind is started_t:
                t = tasks.get(r.task_id)
                attempt = r.attempt
                if t is not None and t.status is pending and not t.dropped:
                    if attempt is unset:
                        attempt = t.attempts + 1
                    if type(attempt) is int and attempt == t.attempts + 1:
                        t.status = running
                        t.attempts = attempt
                        t.attempt_id = r.attempt_id
                        if r.model:
                            t.model = r.model
                        if r.fingerprint:
                            t.fingerprint = r.fingerprint
                        if r.output:
                            t.output = r.output
                        t.worker = r.worker
                        t.step = "queued"
                        t.started_ts = r.ts
                        t.not_before = None
                        last, done = seq, r
                        continue
            elif kind is upload_t:
                up = r.upload
                if type(up) is dict and up.get("name"):
                    uploads[up["name"]] = up  # the decoder's own dict: nothing else holds it
                    src = up.get("source")
                    if src:
                        sha256 = up.get("source_sha256")
                        if sha256:
                            state.sources[src] = {"size": up.get("source_size"),
                                                  "mtime_ns": up.get("source_mtime_ns"), "sha256": sha256}
                    last, done = seq, r
                    continue
            elif kind is deleted_t:
                if r.name is None or type(r.name) is str:
                    uploads.pop(r.name, None)
                    last, done = seq, r
                    continue
            elif kind is added_t:
                tid = r.task_id
                if type(tid) is str and r.source is not unset and tid not in tasks:  # else re-added: apply
                    d = _fresh_task_dict()
                    d["task_id"] = tid
                    d["source"] = r.source
                    for name in _ADDED_OPTIONAL:
                        value = getattr(r, name)
                        if value is not unset:
                            d[name] = value
                    state.finished = False
                    tasks[tid] = _task_with(d)
                    last, done = seq, r
                    continue
            elif kind is requests_t:
                day, model, count = r.day, r.model, r.count
                if count is unset:
                    count = 1
                if type(day) is str and type(model) is str and type(count) is int and not r.youtube_seconds:
                    per_model = state.requests_by_day.setdefault(day, {})
                    per_model[model] = per_model.get(model, 0) + count
                    last, done = seq, r
                    continue
            # Not checked in full here: apply decides (it reads last_seq: bring it up to date first).
            if done is not None:
                state.last_seq, state.last_ts, done = last, done.ts, None
            apply(state, as_dict(r))
            last = state.last_seq
            created = state.batch_id is not None
    finally:
        if done is not None:
            state.last_seq = last
            state.last_ts = done.ts
    return state


def _completed(s: BatchState, tasks: dict[str, Any], r: Any) -> bool:
    """``state._task_completed`` (and ``_charge``) for the usual record; False, changing nothing,
    for any other."""
    t = tasks.get(r.task_id)
    if t is None or t.status is not _RUNNING or t.dropped or not r.sha256:
        return False
    usage, plan, cost, calls, lost = r.usage, r.plan, r.cost_usd, r.calls, r.lost_calls
    if (usage is not None and type(usage) is not dict) or (plan and type(plan) is not dict) \
            or (cost is not None and type(cost) not in _NUMBER) or (calls is not None and type(calls) is not int) \
            or (lost is not None and type(lost) is not int):
        return False
    t.status = _COMPLETED
    if r.output is not UNSET:
        t.output = r.output
    t.sha256 = r.sha256
    t.bytes = r.bytes
    t.usage = usage if usage is not None else {}  # the decoder's own dicts: nothing else holds them
    t.model_version = r.model_version
    if r.video_duration is not UNSET:
        t.video_duration = r.video_duration
    t.elapsed = r.elapsed
    t.finished_ts = r.ts
    t.adopted = bool(r.adopted)
    t.truncated = bool(r.truncated)
    t.done_fingerprint = r.fingerprint or t.fingerprint
    if plan and (t.plan or {}).get("strategy") != "clips":
        t.plan = plan
    t.step = None
    t.last_error = None
    cost = float(cost or 0.0)  # state._charge
    t.cost_usd += cost
    s.total_cost_usd += cost
    t.calls += int(calls or 0)
    t.lost_calls += int(lost or 0)
    return True


# -- the two processes ----------------------------------------------------------------------------


class _Abandon(Exception):
    """This way cannot vouch for the result: the reference replays."""


def replay_lines(path: Path, state: BatchState, start: int, end: int) -> int:
    """Decode and fold the lines of ``[start, end)`` (``end`` just after a newline) into
    ``state``; return how many. Raises on anything unusual.

    Each block must decode to exactly one value per line: msgspec reads values across newlines
    and several on a line, the reference one record per line. (With the checker's rule that every
    line starts a record, that also rules out a value spread over two lines.)
    """
    n = 0
    with open(path, "rb", buffering=0) as fh:
        fh.seek(start)
        left = end - start
        carry = b""
        while left > 0:
            block = fh.read(min(max(_CHUNK, len(carry)), left))  # a very long line: read more at a time
            if not block:
                raise _Abandon("the journal is shorter than it was")
            left -= len(block)
            buf = carry + block if carry else block
            cut = buf.rfind(b"\n") + 1
            carry = buf[cut:]
            if not cut:
                continue  # a line longer than a block: read on
            lines = buf.count(b"\n", 0, cut)
            try:
                records = _STRUCTS.decode_lines(memoryview(buf)[:cut])
            except msgspec.ValidationError:  # another record type, a field the writer does not write, a seq not an int
                records = _dicts(buf[:cut])
                if len(records) != lines:
                    raise _Abandon("not one record per line") from None
                fold(records, state)
            else:
                if len(records) != lines:
                    raise _Abandon("not one record per line")
                fold_structs(records, state)
            n += lines
        if carry:
            raise _Abandon("no newline at the end")
    return n


def _dicts(buf: bytes) -> list[dict[str, Any]]:
    """The records of a block as the reference reader makes them: its own common way
    (``journal._decode_group``). What it does not read that way (NaN, damage) raises: the
    reference decides."""
    records = jr._decode_group(buf.split(b"\n")[:-1], None)
    if records is None:
        raise _Abandon("not read the common way")
    return records


def start_checker(path: Path, start: int, end: int, crc: int) -> subprocess.Popen[bytes] | None:
    """``journal.check_lines`` over ``[start, end)`` in a second process, or None if it cannot start."""
    if not sys.executable:  # embedded without an interpreter to start
        return None
    # -I: no PYTHON* variables, no user site, and neither the cwd nor a script's folder on the path
    # (a json.py where replay runs must not run); this package's folder is put first by hand, so a
    # clone at another path checks with its own code. -B when this process writes no bytecode.
    root = str(Path(__file__).resolve().parent.parent)
    code = f"import sys; sys.path.insert(0, {root!r}); from gsvr_batch.journal import _check_lines_main; _check_lines_main()"
    argv = [sys.executable, "-I", *(["-B"] if sys.dont_write_bytecode else []), "-c", code,
            os.fspath(path), str(start), str(end), str(crc)]
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except (OSError, ValueError, TypeError) as exc:
        log.warning("replay on one core: its checksum process could not start (%s)", exc)
        return None


def checker_verdict(proc: subprocess.Popen[bytes], timeout: float = 600.0) -> tuple[int, int, int] | None:
    """The checker's ``(lines, good_end, crc)``, or None if it failed (which is said: replay is
    then the slower reference, and whoever wonders why should find out)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        log.warning("replay on one core: its checksum process did not answer within %.0f s", timeout)
        return None
    try:
        if proc.returncode != 0:
            raise ValueError(f"exit {proc.returncode}")
        lines, good_end, crc = json.loads(out)
        return int(lines), int(good_end), int(crc)
    except (ValueError, TypeError) as exc:
        log.warning("replay on one core: its checksum process failed (%s)", exc)
        return None


def replay(path: Path, state: BatchState, start: int, crc: int, size: int) -> tuple[int, int, int] | None:
    """Fold the complete lines of ``[start, size)`` into ``state`` on two cores.

    Returns ``(records, end, crc)`` — what was folded, the offset after it and the prefix digest
    up to it — or None, and then ``state`` is spoilt and the reference must replay from scratch.
    """
    with open(path, "rb") as fh:  # the last newline in [start, size): complete lines only
        pos = size
        end = start
        while pos > start:
            step = min(_CHUNK, pos - start)
            fh.seek(pos - step)
            nl = fh.read(step).rfind(b"\n")
            if nl >= 0:
                end = pos - step + nl + 1
                break
            pos -= step
    if end <= start:
        return None
    proc = start_checker(path, start, end, crc)
    if proc is None:
        return None
    began = time.monotonic()
    try:
        try:
            n = replay_lines(path, state, start, end)
        except Exception:  # noqa: BLE001 - any surprise: the reference decides (and raises its own error)
            return None
        # The checker does less than this process: by now it is done or nearly. One that is not
        # after as long again (a stalled disk, a python that is not one) is not waited for.
        verdict = checker_verdict(proc, timeout=max(CHECKER_GRACE, time.monotonic() - began))
    finally:
        if proc.poll() is None:  # also on Ctrl-C: no checker outlives its replay
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    if verdict is None or verdict[0] != n or verdict[1] != end:
        return None
    return n, end, verdict[2]
