"""What a full rewrite of replay would buy (docs/BENCHMARKS.md, "Replay"): a measurement, not a design.

    pip install msgspec && python scripts/bench_replay_prototype.py [--records 1000001] [--repeat 3]

Writes bench_core's synthetic journal (the one the replay target is measured on), then times:

* today's reader and fold (``lifecycle.replay``, every check);
* msgspec decoding each 256 KiB block of lines into typed structs at once (no split into lines,
  no dicts), then a fold written for those structs covering only the record types of this journal
  and fewer checks than ``state.apply``. **No checksum is verified** in this path: it is the floor
  of a typed decoder plus a struct fold, to which per-line CRCs (~0.4 s per million records, and
  the split back) or block checksums (~0.1 s) would be added.

msgspec is not a dependency of gsvr-batch; this script only tells whether adopting it would reach
the 2-second target.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Union

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_decoder() -> tuple[Any, dict[str, type]]:
    import msgspec

    unset = msgspec.UNSET

    class Rec(msgspec.Struct, tag_field="type"):
        pass

    class TaskAdded(Rec, tag="task_added"):
        seq: int
        ts: str
        task_id: str
        source: str
        source_kind: Any = "local"
        title: Any = ""
        template: Any = ""
        model: Any = ""
        output: Any = ""
        output_format: Any = "md"
        origin: Any = ""

    class TaskStarted(Rec, tag="task_started"):
        seq: int
        ts: str
        task_id: str
        attempt: Any = None
        attempt_id: Any = None
        model: Any = None
        fingerprint: Any = None
        output: Any = None
        worker: Any = None

    class TaskStep(Rec, tag="task_step"):
        seq: int
        ts: str
        task_id: str
        step: Any = None
        worker: Any = None

    class UploadFinished(Rec, tag="upload_finished"):
        seq: int
        ts: str
        upload: Any = None

    class UploadDeleted(Rec, tag="upload_deleted"):
        seq: int
        ts: str
        name: Any = None

    class TaskCompleted(Rec, tag="task_completed"):
        seq: int
        ts: str
        task_id: str
        output: Any = unset
        sha256: Any = None
        bytes: Any = None
        usage: Any = None
        model_version: Any = None
        video_duration: Any = unset
        elapsed: Any = None
        adopted: Any = None
        truncated: Any = None
        fingerprint: Any = None
        plan: Any = None
        cost_usd: Any = None
        calls: Any = None
        lost_calls: Any = None

    class BatchCreated(Rec, tag="batch_created"):
        seq: int
        ts: str
        batch_id: Any = None

    kinds = {c.__name__: c for c in (TaskAdded, TaskStarted, TaskStep, UploadFinished, UploadDeleted, TaskCompleted,
                                     BatchCreated)}
    decoder = msgspec.json.Decoder(Union[tuple(kinds.values())])  # type: ignore[arg-type]
    return decoder, kinds


def struct_fold(blocks: list[list[Any]], kinds: dict[str, type]) -> Any:
    import msgspec

    from gsvr_batch.state import BatchState, TaskStatus, _fresh_task_dict, _task_with

    unset = msgspec.UNSET
    running, completed = TaskStatus.RUNNING, TaskStatus.COMPLETED
    step_t, added_t, started_t = kinds["TaskStep"], kinds["TaskAdded"], kinds["TaskStarted"]
    upload_t, deleted_t, done_t = kinds["UploadFinished"], kinds["UploadDeleted"], kinds["TaskCompleted"]
    s = BatchState()
    tasks = s.tasks
    last = 0
    for records in blocks:
        for r in records:
            c = type(r)
            if r.seq != last + 1:
                raise ValueError(f"seq {r.seq} after {last}")
            last = r.seq
            if c is step_t:
                t = tasks[r.task_id]
                if t.status is not running:
                    raise ValueError("step of a task not running")
                t.step = r.step
                if r.worker is not None:
                    t.worker = r.worker
            elif c is added_t:
                d = _fresh_task_dict()
                d.update(task_id=r.task_id, source=r.source, source_kind=r.source_kind, title=r.title,
                         template=r.template, model=r.model, output=r.output, output_format=r.output_format,
                         origin=r.origin)
                tasks[r.task_id] = _task_with(d)
            elif c is started_t:
                t = tasks[r.task_id]
                t.status, t.attempts, t.attempt_id = running, r.attempt, r.attempt_id
                if r.model:
                    t.model = r.model
                if r.fingerprint:
                    t.fingerprint = r.fingerprint
                if r.output:
                    t.output = r.output
                t.worker, t.step, t.started_ts, t.not_before = r.worker, "queued", r.ts, None
            elif c is upload_t:
                up = dict(r.upload)
                s.uploads[up["name"]] = up
                if up.get("source") and up.get("source_sha256"):
                    s.sources[up["source"]] = {"size": up.get("source_size"), "mtime_ns": up.get("source_mtime_ns"),
                                               "sha256": up["source_sha256"]}
            elif c is deleted_t:
                s.uploads.pop(r.name, None)
            elif c is done_t:
                t = tasks[r.task_id]
                t.status = completed
                if r.output is not unset:
                    t.output = r.output
                t.sha256, t.bytes, t.usage, t.model_version = r.sha256, r.bytes, dict(r.usage or {}), r.model_version
                if r.video_duration is not unset:
                    t.video_duration = r.video_duration
                t.elapsed, t.finished_ts, t.adopted, t.truncated = r.elapsed, r.ts, bool(r.adopted), bool(r.truncated)
                t.done_fingerprint = r.fingerprint or t.fingerprint
                t.step = t.last_error = None
                cost = float(r.cost_usd or 0.0)
                t.cost_usd += cost
                s.total_cost_usd += cost
                t.calls += int(r.calls or 0)
                t.lost_calls += int(r.lost_calls or 0)
            else:
                s.batch_id = r.batch_id
    s.last_seq = last
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=1_000_001)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    try:
        import msgspec  # noqa: F401
    except ImportError:
        raise SystemExit("this measurement needs msgspec: pip install msgspec")
    import bench_core

    from gsvr_batch.lifecycle import replay

    decoder, kinds = build_decoder()
    with tempfile.TemporaryDirectory(prefix="bench-replay-proto-") as d:
        path = Path(d) / "journal.jsonl"
        n = bench_core.write_synthetic_journal(path, (args.records - 1) // 8)
        print(f"synthetic journal: {n:,} records, {path.stat().st_size / 1e6:.0f} MB")
        for i in range(args.repeat):
            t0 = time.perf_counter()
            rp = replay(path, use_snapshot=False)
            today = time.perf_counter() - t0
            tasks_today = len(rp.state.tasks)
            del rp
            gc.disable()
            try:
                t0 = time.perf_counter()
                blocks = []
                with open(path, "rb") as fh:
                    carry = b""
                    while block := fh.read(1 << 18):
                        buf = carry + block
                        cut = buf.rfind(b"\n") + 1
                        blocks.append(decoder.decode_lines(buf[:cut]))
                        carry = buf[cut:]
                t1 = time.perf_counter()
                state = struct_fold(blocks, kinds)
                t2 = time.perf_counter()
            finally:
                gc.enable()
            assert len(state.tasks) == tasks_today and state.last_seq == n
            del blocks, state
            print(f"round {i + 1}: today's replay {today:.2f} s | prototype, no checksum: read + typed decode "
                  f"{t1 - t0:.2f} s + struct fold {t2 - t1:.2f} s = {t2 - t0:.2f} s", flush=True)


if __name__ == "__main__":
    main()
