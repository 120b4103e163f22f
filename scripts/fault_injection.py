#!/usr/bin/env python3
"""Fault injection: a 100-task batch against a sandbox that fails 20 % of calls and sends 429 bursts.

    python scripts/fault_injection.py --tasks 100 --fail-rate 0.2 --bursts 5 --seed 1
    python scripts/fault_injection.py --tasks 100 --fail-rate 0.2 --bursts 5 --seed 1 \
        --upload-lost-rate 0.2 --distinct

``--upload-lost-rate P``: a fraction P of upload finalizes take effect at the server but lose their
answer (503 without an upload status; the SDK re-sends the chunk and gets 400 "Upload session is
already finalized"), as issue 11 (10) reproduced against an independent server. ``--distinct`` makes
every video a different file (tests/videos.py), so each task uploads its own (the same copies share
one upload).

The sandbox (in this process, real HTTP) answers 20 % of generate calls and upload starts with
500, 503 or a dropped connection; every few seconds the next N generate calls answer 429 with a
RetryInfo delay (``inject_429``). ``gsvr-batch run`` runs once, unattended, in a subprocess.
Reported: tasks completed (target ≥ 99 % without manual action), exit code, retries per task
(task-level ``retry_scheduled`` records in the journal) and call-level faults the sandbox injected.
The figures are quoted in docs/RELIABILITY.md; tests/test_faults.py holds the fast version.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

from torture import GSVR, base_env, read_records  # noqa: E402

SAMPLE = REPO / "jobs" / "videos" / "lecture-01-introduction.mp4"


def make_batch(root: Path, n: int, workers: int, max_attempts: int, distinct: bool = False) -> Path:
    vids = root / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    if distinct:
        sys.path.insert(0, str(REPO / "tests"))
        from videos import make_video
    for i in range(n):
        if distinct:
            make_video(vids / f"talk-{i:03d}.mp4", 6 + i / 1000, audio=False)
        else:
            shutil.copyfile(SAMPLE, vids / f"talk-{i:03d}.mp4")
    jobs = "\n".join(f"  - source: videos/talk-{i:03d}.mp4" for i in range(n))
    m = root / "manifest.yaml"
    m.write_text(f"defaults:\n  template: summary_report\n  output_dir: out\n"
                 f"settings:\n  workers: {workers}\n  max_attempts: {max_attempts}\n  rpm: 100000\n  rpd: 10000000\n"
                 f"  retry_base_delay: 0.5\njobs:\n{jobs}\n", encoding="utf-8")
    return m


def fault_injection(root: Path, *, tasks: int = 100, fail_rate: float = 0.2, bursts: int = 5, burst_size: int = 3,
                    latency: float = 0.1, workers: int = 4, max_attempts: int = 6, seed: int | None = 1,
                    upload_lost_rate: float = 0.0, distinct: bool = False) -> dict:
    from gsvr_batch.sandbox import SandboxConfig, SandboxServer

    m = make_batch(root, tasks, workers, max_attempts, distinct)
    server = SandboxServer(SandboxConfig(fail_rate=fail_rate, seed=seed, latency=latency, processing_delay=0.05,
                                         retry_delay=1.0, upload_lost_answer_rate=upload_lost_rate))
    url = server.start()
    stop = threading.Event()

    def burster() -> None:  # 429 bursts while the batch runs
        for _ in range(bursts):
            if stop.wait(2.0):
                return
            server.inject_429(count=burst_size, retry_delay=1.0)

    t = threading.Thread(target=burster, daemon=True)
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(GSVR + ["run", str(m), "--progress", "log"], env=base_env(url),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)
        t.start()
        out, _ = proc.communicate(timeout=1800)
        stop.set()
        requests = list(server.requests)
    finally:
        stop.set()
        server.stop()
    recs = read_records(root / "out" / ".gsvr" / "journal.jsonl")
    completed = {r["task_id"] for r in recs if r["type"] == "task_completed"}
    failed = [r for r in recs if r["type"] == "task_failed"]
    retries = Counter(r["task_id"] for r in recs if r["type"] == "retry_scheduled")
    per_task = [retries.get(r["task_id"], 0) for r in recs if r["type"] == "task_added"]
    injected = Counter(str(q.get("injected")) for q in requests if q.get("injected"))
    gen = [q for q in requests if q.get("kind") == "generate"]
    paid = Counter(q.get("task_id") for q in gen if q.get("status") == 200)
    # call-level retries: failed requests a task made (each one was retried inside the task)
    call_fail = Counter(q.get("task_id") for q in requests
                        if q.get("task_id") and q.get("kind") in ("generate", "upload_start") and q.get("status") != 200)
    added = [r["task_id"] for r in recs if r["type"] == "task_added"]
    per_call = [call_fail.get(t, 0) for t in added]
    return {
        "tasks": tasks, "exit_code": proc.returncode, "completed": len(completed), "failed": len(failed),
        "recovery_rate": round(100.0 * len(completed) / tasks, 1),
        "task_retries_total": sum(per_task), "task_retries_max": max(per_task, default=0),
        "task_retries_mean": round(sum(per_task) / max(1, len(per_task)), 2),
        "tasks_with_retries": sum(1 for x in per_task if x),
        "call_retries_total": sum(per_call), "call_retries_max": max(per_call, default=0),
        "tasks_with_call_retries": sum(1 for x in per_call if x),
        "generate_requests": len(gen), "generate_429": sum(1 for q in gen if q.get("status") == 429),
        "generate_paid": sum(paid.values()), "paid_beyond_one": sum(max(0, n - 1) for n in paid.values()),
        "lost_calls": sum(int(r.get("lost_calls") or 0) for r in recs),
        "uploads_finalized": sum(1 for q in requests if q.get("kind") == "upload_finalize"),
        "faults_injected": dict(injected), "seconds": round(time.monotonic() - t0, 1),
        "failed_messages": [f["message"] for f in failed][:5], "tail": out[-600:] if proc.returncode else "",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--fail-rate", type=float, default=0.2)
    ap.add_argument("--bursts", type=int, default=5)
    ap.add_argument("--burst-size", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--max-attempts", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--upload-lost-rate", type=float, default=0.0)
    ap.add_argument("--distinct", action="store_true", help="a different video file per task (one upload each)")
    a = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="gsvr-faults-"))
    try:
        res = fault_injection(root, tasks=a.tasks, fail_rate=a.fail_rate, bursts=a.bursts, burst_size=a.burst_size,
                              workers=a.workers, max_attempts=a.max_attempts, seed=a.seed,
                              upload_lost_rate=a.upload_lost_rate, distinct=a.distinct)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(res, indent=1))
    return 0 if res["recovery_rate"] >= 99.0 else 1


if __name__ == "__main__":
    sys.exit(main())
