#!/usr/bin/env python3
"""Torture test: kill -9 the manager (or one of its workers) at random moments until the batch ends.

    python scripts/torture.py --tasks 100 --kills 24 --latency 0.4 --workers 4 --seed 1

What it does (DESIGN invariants 2, 3 and 4 under fire):

1. builds a batch of N copies of a sample video and a YAML manifest in a scratch folder;
2. starts the sandbox as a separate process (``gsvr-batch sandbox --latency L --log FILE``) so
   its request log survives every kill;
3. starts ``gsvr-batch run MANIFEST`` and, after a random 0.3–2.5 s, ``kill -9``s either the
   manager or a random worker (a child whose ``/proc/PID/cmdline`` holds ``spawn_main``);
   restarts the same command after each kill of the manager; repeats until the kill budget
   is spent, then lets the last run end; it must exit 0;
4. checks: one output per job, byte-identical to its ``task_completed`` sha256; no
   ``.gsvr-tmp-*`` files; ``gsvr-batch replay --verify`` clean; successful generate calls per
   job ≤ 1 + the kills that hit while the job was in flight (the total excess is reported);
   no run ever refused the journal (exit 2); torn tails repaired are counted.

The figures are printed (``--json`` for a machine-readable line) and quoted in docs/RELIABILITY.md.
tests/test_torture.py runs the same code with ~12 tasks and ~4 kills.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "jobs" / "videos" / "lecture-01-introduction.mp4"
GSVR = [sys.executable, "-m", "gsvr_batch"]
KEY = "test-key-not-real-torture"
END_TYPES = {"task_completed", "task_failed", "task_requeued", "retry_scheduled", "task_skipped"}


@dataclass
class TortureReport:
    tasks: int
    kills_manager: int = 0
    kills_worker: int = 0
    runs: int = 0
    exit_codes: list[int] = field(default_factory=list)  # of runs that ended by themselves
    generate_calls: int = 0
    extra_calls: int = 0  # calls beyond one per job (all explained by kills when excess == 0)
    excess_calls: int = 0  # calls beyond 1 + kills-in-flight for that job (must be 0)
    torn_warnings: int = 0
    torn_copies: int = 0
    outputs: int = 0
    temp_files: int = 0
    verify_rc: int | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def kills(self) -> int:
        return self.kills_manager + self.kills_worker

    @property
    def ok(self) -> bool:
        return not self.problems


def make_batch(root: Path, n: int, workers: int) -> Path:
    vids = root / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shutil.copyfile(SAMPLE, vids / f"lecture-{i:03d}.mp4")
    jobs = "\n".join(f"  - source: videos/lecture-{i:03d}.mp4" for i in range(n))
    text = (f"defaults:\n  template: summary_report\n  output_dir: out\n"
            f"settings:\n  workers: {workers}\n  max_attempts: 100\n  rpm: 100000\n  rpd: 10000000\n"
            f"  retry_base_delay: 0.05\n"
            f"jobs:\n{jobs}\n")
    m = root / "manifest.yaml"
    m.write_text(text, encoding="utf-8")
    return m


def read_records(journal: Path) -> list[dict]:
    """Every parseable line (a torn last line is just skipped here; the runner repairs it)."""
    if not journal.exists():
        return []
    out = []
    for line in journal.read_bytes().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def running_tasks(records: list[dict]) -> set[str]:
    running: set[str] = set()
    for r in records:
        tid = r.get("task_id")
        if r.get("type") == "task_started":
            running.add(tid)
        elif r.get("type") in END_TYPES:
            running.discard(tid)
    return running


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sandbox(log: Path, latency: float, *, fail_rate: float = 0.0, seed: int | None = None,
                  processing_delay: float = 0.05) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = GSVR + ["sandbox", "--port", str(port), "--latency", str(latency), "--log", str(log),
                  "--processing-delay", str(processing_delay), "--fail-rate", str(fail_rate)]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, env=base_env())
    line = proc.stdout.readline()  # "gsvr-batch sandbox listening on http://127.0.0.1:N"
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"sandbox did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[-1].strip()


def base_env(url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if url:
        env["GOOGLE_GEMINI_BASE_URL"] = url
        env["GEMINI_API_KEY"] = KEY
    return env


def workers_of(pid: int) -> list[int]:
    """Pool workers of the manager: spawn children (the resource tracker is a child too, but not spawn_main)."""
    kids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                kids += [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                pass
    except OSError:
        return []
    out = []
    for k in kids:
        try:
            if "spawn_main" in Path(f"/proc/{k}/cmdline").read_text(errors="ignore"):
                out.append(k)
        except OSError:
            pass
    return out


def generate_calls(log: Path) -> Counter:
    calls: Counter = Counter()
    if not log.exists():
        return calls
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("kind") == "generate" and r.get("status") == 200:
            calls[r.get("task_id")] += 1
    return calls


def torture(root: Path, *, tasks: int = 100, kills: int = 20, latency: float = 0.4, workers: int = 4,
            seed: int | None = None, worker_share: float = 0.4, max_seconds: float = 900,
            echo=print) -> TortureReport:
    rng = random.Random(seed)
    t0 = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    manifest = make_batch(root, tasks, workers)
    journal = root / "out" / ".gsvr" / "journal.jsonl"
    log = root / "sandbox.jsonl"
    rep = TortureReport(tasks=tasks)
    in_flight_kills: Counter = Counter()
    sandbox, url = start_sandbox(log, latency, seed=seed)
    outputs_text: list[str] = []
    try:
        while True:
            if time.monotonic() - t0 > max_seconds:
                rep.problems.append(f"gave up after {max_seconds:.0f} s")
                break
            rep.runs += 1
            # Output to a file, not a pipe: nobody reads a pipe during the kill phase (a full pipe
            # would stall the manager), and a pipe would tie us to any straggling child.
            run_log = root / f"run-{rep.runs:03d}.log"
            with open(run_log, "wb") as fh:
                proc = subprocess.Popen(GSVR + ["run", str(manifest), "--progress", "log"], env=base_env(url),
                                        stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            if rep.kills >= kills:
                proc.wait(timeout=max(60.0, max_seconds))
                out = run_log.read_text(errors="replace")
                outputs_text.append(out)
                rep.exit_codes.append(proc.returncode)
                if proc.returncode == 0:
                    break
                if proc.returncode == 2:
                    rep.problems.append(f"run refused the journal (exit 2): {out[-500:]}")
                    break
                if len(rep.exit_codes) >= 3 and len(set(rep.exit_codes[-3:])) == 1:
                    rep.problems.append(f"three runs in a row exited {proc.returncode}: {out[-500:]}")
                    break
                continue  # e.g. 75 with retries still pending: run again
            # Kill phase: the manager keeps running across worker kills; a manager kill ends it.
            while proc.poll() is None and rep.kills < kills:
                time.sleep(rng.uniform(0.3, 2.5))
                if proc.poll() is not None:
                    break
                target_worker = rng.random() < worker_share
                victims = workers_of(proc.pid) if target_worker else []
                before = running_tasks(read_records(journal))
                if target_worker and victims:
                    try:
                        os.kill(rng.choice(victims), signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    rep.kills_worker += 1
                    time.sleep(0.05)
                    hit = before | running_tasks(read_records(journal))
                else:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
                    rep.kills_manager += 1
                    hit = before | running_tasks(read_records(journal))
                for tid in hit:
                    in_flight_kills[tid] += 1
            if proc.poll() is None and rep.kills >= kills:
                # budget spent on worker kills: let this run end by itself
                proc.wait(timeout=max(60.0, max_seconds))
                out = run_log.read_text(errors="replace")
                outputs_text.append(out)
                rep.exit_codes.append(proc.returncode)
                if proc.returncode == 0:
                    break
                continue
            proc.wait(timeout=60)
            out = run_log.read_text(errors="replace")
            outputs_text.append(out)
            if proc.returncode not in (-signal.SIGKILL,):
                rep.exit_codes.append(proc.returncode)
                if proc.returncode == 0:
                    break
                if proc.returncode == 2:
                    rep.problems.append(f"run refused the journal (exit 2): {out[-500:]}")
                    break
            time.sleep(0.2)  # workers die with their manager (PR_SET_PDEATHSIG)
    finally:
        sandbox.send_signal(signal.SIGTERM)
        try:
            sandbox.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sandbox.kill()
    check(root, journal, log, rep, in_flight_kills, outputs_text)
    rep.seconds = round(time.monotonic() - t0, 1)
    return rep


def check(root: Path, journal: Path, log: Path, rep: TortureReport, in_flight_kills: Counter,
          outputs_text: list[str]) -> None:
    recs = read_records(journal)
    added = {r["task_id"] for r in recs if r.get("type") == "task_added"}
    last_done: dict[str, dict] = {}
    for r in recs:
        if r.get("type") == "task_completed":
            last_done[r["task_id"]] = r
    if len(added) != rep.tasks:
        rep.problems.append(f"{len(added)} tasks in the journal, expected {rep.tasks}")
    missing = added - set(last_done)
    if missing:
        rep.problems.append(f"{len(missing)} task(s) never completed")
    out_dir = root / "out"
    outs = sorted(p for p in out_dir.glob("*.md"))
    rep.outputs = len(outs)
    if rep.outputs != rep.tasks:
        rep.problems.append(f"{rep.outputs} output files for {rep.tasks} jobs")
    for tid, r in last_done.items():
        p = Path(r["output"])
        if not p.exists():
            rep.problems.append(f"{tid}: output {p} missing")
        elif hashlib.sha256(p.read_bytes()).hexdigest() != r["sha256"]:
            rep.problems.append(f"{tid}: output {p} differs from its completed record")
    temps = [p for p in root.rglob(".gsvr-tmp-*")]
    rep.temp_files = len(temps)
    if temps:
        rep.problems.append(f"temp files left: {[str(t) for t in temps[:5]]}")
    v = subprocess.run(GSVR + ["replay", str(journal), "--verify"], env=base_env(), capture_output=True,
                       text=True, stdin=subprocess.DEVNULL, timeout=120)
    rep.verify_rc = v.returncode
    if v.returncode != 0:
        rep.problems.append(f"replay --verify exit {v.returncode}: {v.stdout[-400:]} {v.stderr[-400:]}")
    calls = generate_calls(log)
    rep.generate_calls = sum(calls[t] for t in added)
    rep.extra_calls = sum(max(0, calls[t] - 1) for t in added)
    rep.excess_calls = sum(max(0, calls[t] - 1 - in_flight_kills[t]) for t in added)
    if rep.excess_calls:
        rep.problems.append(f"{rep.excess_calls} generate call(s) not explained by a kill in flight")
    rep.torn_warnings = sum(t.lower().count("torn") for t in outputs_text)
    rep.torn_copies = len(list(journal.parent.glob(journal.name + ".torn-*")))
    if any(c == 2 for c in rep.exit_codes):
        rep.problems.append("a run exited 2 (journal refused)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--kills", type=int, default=24)
    ap.add_argument("--latency", type=float, default=0.4, help="seconds the sandbox adds to each generate call")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--worker-share", type=float, default=0.4, help="fraction of kills aimed at a worker")
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir, removed)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    root = a.dir or Path(tempfile.mkdtemp(prefix="gsvr-torture-"))
    try:
        rep = torture(root, tasks=a.tasks, kills=a.kills, latency=a.latency, workers=a.workers, seed=a.seed,
                      worker_share=a.worker_share)
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    d = asdict(rep) | {"kills": rep.kills, "ok": rep.ok}
    if a.json:
        print(json.dumps(d))
    else:
        print(f"tasks {rep.tasks}, runs {rep.runs}, kills {rep.kills} (manager {rep.kills_manager}, "
              f"worker {rep.kills_worker}), generate calls {rep.generate_calls} (extra {rep.extra_calls}, "
              f"excess over 1 + kills in flight: {rep.excess_calls}), torn tails repaired "
              f"{rep.torn_copies} (warnings {rep.torn_warnings}), outputs {rep.outputs}, temp files "
              f"{rep.temp_files}, replay --verify exit {rep.verify_rc}, final exit codes {rep.exit_codes}, "
              f"{rep.seconds} s")
        for p in rep.problems:
            print("PROBLEM:", p)
        print("OK" if rep.ok else "FAILED")
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
