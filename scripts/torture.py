#!/usr/bin/env python3
"""Torture test: kill the manager, its workers and the whole process group until the batch ends.

    python scripts/torture.py --tasks 100 --kills 44 --latency 0.8 --workers 4 --seed 1

What it does (DESIGN invariants 2, 4, 11 and 12 under fire):

1. builds a batch of N copies of a sample video and a YAML manifest in a scratch folder;
2. starts the sandbox as a separate process (``gsvr-batch sandbox --latency L --log FILE``) so
   its request log (one line per HTTP request, written before the answer goes out) survives
   every kill;
3. runs ``gsvr-batch run MANIFEST`` in its own process group, again and again, and hits each
   run with a shuffled mix of four kinds of kill (about a quarter each):

   * ``manager`` — ``kill -9`` of the manager *in its first seconds*: as soon as the journal shows
     this run's first tasks started (+ 0–0.8 s), so the same tasks are in flight every time;
   * ``worker`` — ``kill -9`` of the pool worker (``spawn_main``) whose pid the journal's
     ``task_step.worker`` names, while its task is generating; the run goes on;
   * ``sigterm`` — SIGTERM to the whole process group (systemd stop, ``timeout``): a graceful
     stop, exit 130 expected, running tasks finish;
   * ``stop-kill`` — between answer and journal: SIGSTOP the manager while a task is generating,
     let the worker write its output, then SIGKILL the manager (the next run must adopt it);

   then lets the last run end by itself (it must exit 0);
4. checks from outside: every task completed once, zero failed, every output byte-identical to
   its ``task_completed`` sha256, ``replay --verify`` clean, no ``.gsvr-tmp-*`` left, no process of a
   run outliving it, no manager crash or signal charged to a task (only worker kills charge a
   crash, to the task that worker ran), and the money:

   *paid beyond one per task* (successful generate calls at the server beyond one per task) must be
   ≤ *answers the manager provably could not have received*: successful generate calls of an
   attempt that never completed (neither journaled nor adopted), sent before a kill that ended
   that attempt's process (the manager, or that task's own worker) while it ran. The count of
   adopted outputs (answers that survived a kill and were not paid again) is printed too.

The figures are printed (``--json`` for one machine-readable line) and quoted in docs/RELIABILITY.md.
tests/test_torture.py runs the same code with ~12 tasks and ~8 kills.
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
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from procfs import gone, process_group, worker_pids  # scripts/ (this script's folder) is on sys.path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "jobs" / "videos" / "lecture-01-introduction.mp4"
GSVR = [sys.executable, "-m", "gsvr_batch"]
KEY = "test-key-not-real-torture"
END_TYPES = {"task_completed", "task_failed", "task_requeued", "retry_scheduled", "task_skipped"}
KINDS = ("manager", "worker", "sigterm", "stop-kill")
MANAGER_KINDS = {"manager", "stop-kill"}  # kills that end every attempt running at that moment


@dataclass
class Kill:
    kind: str
    t: float  # wall time (time.time()) the signalled process (and its group) was gone
    pid: int  # the process signalled (manager, worker, or group leader)
    signalled: float  # wall time just before the ending signal (SIGKILL / SIGTERM) was sent
    run: int
    tasks: list[str] = field(default_factory=list)  # what the journal showed running then
    stopped_at: float | None = None  # stop-kill: when the manager was SIGSTOPped


@dataclass
class TortureReport:
    tasks: int
    kills_by_kind: dict[str, int] = field(default_factory=dict)
    runs: int = 0
    exit_codes: list[int] = field(default_factory=list)  # of runs not ended by SIGKILL
    generate_calls: int = 0  # successful (200) generate calls at the server: what is billed
    paid_beyond_one: int = 0  # generate_calls beyond one per task
    provably_unreceived: int = 0  # answers of attempts a kill ended before they could complete
    unexplained: int = 0  # paid beyond one that no kill explains (must be 0)
    adopted: int = 0  # outputs written before a kill and adopted by the next run (paid once)
    completed: int = 0
    failed: int = 0
    charged_crash: int = 0  # retry_scheduled / task_failed with charge "crash" (worker kills)
    charged_other: int = 0  # any other charge (must be 0: no fault was injected)
    max_interruptions: int = 0  # the most times one task was in flight when its run ended abruptly
    outputs: int = 0
    temp_files: int = 0
    stragglers: int = 0  # processes of a run still alive after it ended
    torn_copies: int = 0
    verify_rc: int | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    kill_log: list[dict] = field(default_factory=list)

    @property
    def kills(self) -> int:
        return sum(self.kills_by_kind.values())

    @property
    def ok(self) -> bool:
        return not self.problems

    # compatibility with the older fast test
    @property
    def excess_calls(self) -> int:
        return self.unexplained

    @property
    def temp(self) -> int:
        return self.temp_files


def make_batch(root: Path, n: int, workers: int) -> Path:
    vids = root / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        shutil.copyfile(SAMPLE, vids / f"lecture-{i:03d}.mp4")
    jobs = "\n".join(f"  - source: videos/lecture-{i:03d}.mp4" for i in range(n))
    # max_attempts 3 and the default crash budget: a manager crash charged to a task would fail it.
    text = (f"defaults:\n  template: summary_report\n  output_dir: out\n"
            f"settings:\n  workers: {workers}\n  max_attempts: 3\n  rpm: 100000\n  rpd: 10000000\n"
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


def base_env(url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if url:
        env["GOOGLE_GEMINI_BASE_URL"] = url
        env["GEMINI_API_KEY"] = KEY
    return env


def start_sandbox(log: Path, latency: float, *, fail_rate: float = 0.0, seed: int | None = None,
                  processing_delay: float = 0.05, cache_ttl: float | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = GSVR + ["sandbox", "--port", str(port), "--latency", str(latency), "--log", str(log),
                  "--processing-delay", str(processing_delay), "--fail-rate", str(fail_rate)]
    if cache_ttl is not None:
        cmd += ["--cache-ttl", str(cache_ttl)]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, env=base_env())
    line = proc.stdout.readline()  # "gsvr-batch sandbox listening on http://127.0.0.1:N"
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"sandbox did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[-1].strip()


def read_log(log: Path) -> list[dict]:
    out = []
    if log.exists():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def generate_calls(log: Path) -> Counter:
    calls: Counter = Counter()
    for r in read_log(log):
        if r.get("kind") == "generate" and r.get("status") == 200:
            calls[r.get("task_id")] += 1
    return calls


def unix(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def wait_until(cond, timeout: float, step: float = 0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(step)
    return None


# ------------------------------------------------------------------------------------------ the run


class Torturer:
    def __init__(self, root: Path, *, tasks: int, kills: int, latency: float, workers: int, seed: int | None,
                 max_seconds: float, mix: dict[str, float] | None, echo, cache_ttl: float | None = None) -> None:
        self.cache_ttl = cache_ttl
        self.root = root
        self.n = tasks
        self.kill_budget = kills
        self.latency = latency
        self.workers = workers
        self.rng = random.Random(seed)
        self.max_seconds = max_seconds
        self.echo = echo
        self.t0 = time.monotonic()
        self.journal = root / "out" / ".gsvr" / "journal.jsonl"
        self.log = root / "sandbox.jsonl"
        self.rep = TortureReport(tasks=tasks, kills_by_kind={k: 0 for k in KINDS})
        self.kills: list[Kill] = []
        mix = mix or {k: 1.0 for k in KINDS}
        # The plan: a shuffled list with the asked share of each kind (largest remainders).
        total = sum(mix.values())
        plan = []
        for k in KINDS:
            plan += [k] * int(kills * mix.get(k, 0) / total)
        rest = sorted(KINDS, key=lambda k: -((kills * mix.get(k, 0) / total) % 1))
        for k in rest[: kills - len(plan)]:
            plan.append(k)
        self.rng.shuffle(plan)
        self.plan = plan

    def over_time(self) -> bool:
        return time.monotonic() - self.t0 > self.max_seconds

    def seq(self) -> int:
        recs = read_records(self.journal)
        return recs[-1]["seq"] if recs else 0

    def since(self, seq: int) -> list[dict]:
        return [r for r in read_records(self.journal) if r.get("seq", 0) > seq]

    def start(self) -> tuple[subprocess.Popen, int]:
        self.rep.runs += 1
        seq = self.seq()
        out = self.root / f"run-{self.rep.runs:03d}.log"
        with open(out, "wb") as fh:
            # Own process group (like a service): a group SIGTERM reaches it and nothing else.
            proc = subprocess.Popen(GSVR + ["run", str(self.manifest), "--progress", "log"],
                                    env=base_env(self.url), stdout=fh, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        return proc, seq

    def record(self, kind: str, pid: int, t: float, signalled: float, **kw) -> None:
        """``t``: when the signalled process (and, for the manager, its whole group) was gone, so every
        request it sent was sent before ``t``; ``signalled``: just before the signal went out."""
        k = Kill(kind, t, pid, signalled, self.rep.runs, sorted(running_tasks(read_records(self.journal))), **kw)
        self.kills.append(k)
        self.rep.kills_by_kind[kind] += 1

    def ended(self, proc: subprocess.Popen, killed: bool) -> None:
        """Reap a run; note its exit code (unless SIGKILLed); check that nothing of it lives on."""
        rc = proc.wait(timeout=max(120.0, 4 * self.latency + 60))
        if not killed:
            self.rep.exit_codes.append(rc)
            if rc == 2:
                self.rep.problems.append(f"run {self.rep.runs} refused the journal (exit 2)")
        left = wait_until(lambda: not process_group(proc.pid), timeout=10)
        if left is None:
            self.rep.stragglers += len(process_group(proc.pid))
            self.rep.problems.append(f"processes of run {self.rep.runs} outlived it: {process_group(proc.pid)}")

    def generating(self, seq: int) -> dict[str, int]:
        """Tasks generating in this run: task id → worker pid (from the journal)."""
        pid: dict[str, int] = {}
        gen: set[str] = set()
        for r in self.since(seq):
            tid = r.get("task_id")
            if r["type"] == "task_started":
                pid.pop(tid, None)
                gen.discard(tid)
            elif r["type"] == "task_step":
                if r.get("worker"):
                    pid[tid] = r["worker"]
                if r["step"] == "generating":
                    gen.add(tid)
            elif r["type"] in END_TYPES:
                gen.discard(tid)
        return {t: pid[t] for t in gen if t in pid}

    def run(self) -> None:
        self.manifest = make_batch(self.root, self.n, self.workers)
        self.sandbox, self.url = start_sandbox(self.log, self.latency, seed=None, cache_ttl=self.cache_ttl)
        try:
            while self.plan and not self.over_time():
                self.one_run()
            self.final_runs()
        finally:
            self.sandbox.send_signal(signal.SIGTERM)
            try:
                self.sandbox.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.sandbox.kill()

    def one_run(self) -> None:
        proc, seq = self.start()
        try:
            while self.plan:
                kind = self.plan[0]
                if proc.poll() is not None:  # the batch finished by itself: the plan must go on
                    self.ended(proc, killed=False)
                    self.plan_unspent()
                    return
                if kind == "manager":
                    # In the first seconds of the run: as soon as its first tasks have started.
                    first = wait_until(lambda: sum(r["type"] == "task_started" for r in self.since(seq))
                                       >= min(self.workers, self.pending()), timeout=60)
                    if first is None:
                        self.rep.problems.append(f"run {self.rep.runs} started no task within 60 s")
                        os.kill(proc.pid, signal.SIGKILL)
                        self.ended(proc, killed=True)
                        self.plan.clear()
                        return
                    time.sleep(self.rng.uniform(0.0, 0.8))
                    self.plan.pop(0)
                    at = time.time()
                    os.kill(proc.pid, signal.SIGKILL)
                    self.ended(proc, killed=True)
                    self.record("manager", proc.pid, time.time(), at)
                    return
                if self.over_time():
                    return
                busy = wait_until(lambda: self.generating(seq), timeout=60)
                if not busy or proc.poll() is not None:
                    continue
                if kind == "worker":
                    tid, pid = self.rng.choice(sorted(busy.items()))
                    if pid not in worker_pids(proc.pid):
                        time.sleep(0.05)
                        continue
                    self.plan.pop(0)
                    at = time.time()
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        self.plan.insert(0, kind)
                        continue
                    wait_until(lambda: gone(pid), timeout=5)
                    self.record("worker", pid, time.time(), at)
                    time.sleep(self.rng.uniform(0.2, 1.5))  # the run goes on: let it
                    continue
                if kind == "sigterm":
                    self.plan.pop(0)
                    at = time.time()
                    os.killpg(proc.pid, signal.SIGTERM)
                    self.ended(proc, killed=False)
                    self.record("sigterm", proc.pid, time.time(), at)
                    if self.rep.exit_codes[-1] not in (130, 0):
                        self.rep.problems.append(f"a group SIGTERM ended run {self.rep.runs} with exit "
                                                 f"{self.rep.exit_codes[-1]}, not 130")
                    return
                if kind == "stop-kill":
                    out = self.root / "out"
                    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.md")}
                    stopped = time.time()
                    os.kill(proc.pid, signal.SIGSTOP)
                    # The workers are not stopped: they get their answers and write the outputs.
                    wait_until(lambda: any(before.get(p.name) != p.stat().st_mtime_ns for p in out.glob("*.md")),
                               timeout=self.latency + 5)
                    time.sleep(0.1)
                    self.plan.pop(0)
                    at = time.time()
                    os.kill(proc.pid, signal.SIGKILL)
                    self.ended(proc, killed=True)
                    self.record("stop-kill", proc.pid, time.time(), at, stopped_at=stopped)
                    return
        finally:
            if proc.poll() is None and not self.plan:
                pass  # the last run of the plan: let it end by itself (final_runs waits for it)
            self._last = proc

    def pending(self) -> int:
        recs = read_records(self.journal)
        done = {r["task_id"] for r in recs if r["type"] == "task_completed"}
        return max(1, self.n - len(done))

    def plan_unspent(self) -> None:
        """The batch completed before the plan was spent: a problem (too few tasks for the kills)."""
        self.rep.problems.append(f"the batch finished with {len(self.plan)} kill(s) of the plan unspent; "
                                 f"use more tasks or a higher --latency")
        self.plan.clear()

    def final_runs(self) -> None:
        last = getattr(self, "_last", None)
        if last is not None and last.poll() is None:
            self.ended(last, killed=False)
            if self.rep.exit_codes and self.rep.exit_codes[-1] == 0:
                return
        for _ in range(5):
            if self.over_time():
                self.rep.problems.append(f"gave up after {self.max_seconds:.0f} s")
                return
            proc, _seq = self.start()
            self.ended(proc, killed=False)
            if self.rep.exit_codes[-1] == 0:
                return
            if self.rep.exit_codes[-1] == 2:
                return
        self.rep.problems.append(f"five final runs did not finish the batch: exits {self.rep.exit_codes[-5:]}")

    # -------------------------------------------------------------------------------- checks
    def check(self) -> None:
        rep = self.rep
        recs = read_records(self.journal)
        added = [r["task_id"] for r in recs if r.get("type") == "task_added"]
        done = [r for r in recs if r.get("type") == "task_completed"]
        rep.completed = len({r["task_id"] for r in done})
        rep.failed = sum(r["type"] == "task_failed" for r in recs)
        rep.adopted = sum(bool(r.get("adopted")) for r in done)
        if len(added) != self.n:
            rep.problems.append(f"{len(added)} tasks in the journal, expected {self.n}")
        if rep.completed != self.n or len(done) != self.n:
            rep.problems.append(f"{rep.completed} tasks completed ({len(done)} completion records) of {self.n}")
        if rep.failed:
            rep.problems.append(f"{rep.failed} task(s) failed")
        for r in recs:
            ch = r.get("charge")
            if ch == "crash":
                rep.charged_crash += 1
            elif ch:
                rep.charged_other += 1
        worker_kills = rep.kills_by_kind.get("worker", 0)
        if rep.charged_crash > worker_kills:
            rep.problems.append(f"{rep.charged_crash} crash charges for {worker_kills} worker kills: a manager "
                                f"crash or a signal was charged to a task")
        if rep.charged_other:
            rep.problems.append(f"{rep.charged_other} attempt charge(s) although no fault was injected")
        from_state = self._interruptions(recs)
        rep.max_interruptions = max(from_state.values(), default=0)
        # outputs
        outs = sorted((self.root / "out").glob("*.md"))
        rep.outputs = len(outs)
        if rep.outputs != self.n:
            rep.problems.append(f"{rep.outputs} output files for {self.n} jobs")
        last_done = {r["task_id"]: r for r in done}
        for tid, r in last_done.items():
            p = Path(r["output"])
            if not p.exists():
                rep.problems.append(f"{tid}: output {p} missing")
            elif hashlib.sha256(p.read_bytes()).hexdigest() != r["sha256"]:
                rep.problems.append(f"{tid}: output {p} differs from its completed record")
        temps = list(self.root.rglob(".gsvr-tmp-*"))
        rep.temp_files = len(temps)
        if temps:
            rep.problems.append(f"temp files left: {[str(t) for t in temps[:5]]}")
        rep.torn_copies = len(list(self.journal.parent.glob(self.journal.name + ".torn-*")))
        v = subprocess.run(GSVR + ["replay", str(self.journal), "--verify"], env=base_env(), capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=120)
        rep.verify_rc = v.returncode
        if v.returncode != 0:
            rep.problems.append(f"replay --verify exit {v.returncode}: {v.stdout[-400:]} {v.stderr[-400:]}")
        self._money(recs, added)
        rep.kill_log = [asdict(k) for k in self.kills]

    def _interruptions(self, recs: list[dict]) -> Counter:
        c: Counter = Counter()
        for r in recs:
            if r.get("type") == "task_requeued" and r.get("interrupted"):
                c[r["task_id"]] += 1
        return c

    def _money(self, recs: list[dict], added: list[str]) -> None:
        """Paid beyond one per task vs answers the manager provably could not have received."""
        rep = self.rep
        # Attempts per task: start time, worker pids, end time, completed?
        attempts: dict[str, list[dict]] = defaultdict(list)
        for r in recs:
            tid = r.get("task_id")
            typ = r.get("type")
            if typ == "task_started":
                attempts[tid].append({"start": unix(r["ts"]), "end": None, "pids": set(), "done": False})
            elif tid in attempts and attempts[tid]:
                a = attempts[tid][-1]
                if typ == "task_step" and r.get("worker"):
                    a["pids"].add(r["worker"])
                elif typ == "task_completed":
                    a["done"] = True  # an adopted output belongs to the latest attempt, too
                    a["end"] = a["end"] or unix(r["ts"])
                elif typ in END_TYPES and a["end"] is None:
                    a["end"] = unix(r["ts"])
        gens = [g for g in read_log(self.log) if g.get("kind") == "generate" and g.get("status") == 200]
        per_task = Counter(g.get("task_id") for g in gens)
        rep.generate_calls = sum(per_task[t] for t in added)
        rep.paid_beyond_one = sum(max(0, per_task[t] - 1) for t in added)
        unreceived = explained = 0
        for g in gens:
            tid = g.get("task_id")
            sent = float(g["ts"])
            mine = [a for a in attempts.get(tid, []) if a["start"] <= sent + 0.002]
            if not mine:
                rep.problems.append(f"a generate for {tid} at {sent} matches no journaled attempt")
                continue
            a = mine[-1]
            if a["done"]:
                continue  # this answer became the task's output (journaled or adopted)
            unreceived += 1
            end = a["end"] if a["end"] is not None else float("inf")
            for k in self.kills:
                # Sent before the killed process was gone, to an attempt still running when the signal
                # went out (a worker's death is journaled a moment before we see its pid vanish).
                if not (sent <= k.t and k.signalled <= end):
                    continue
                if k.kind in MANAGER_KINDS or (k.kind == "worker" and k.pid in a["pids"]):
                    explained += 1
                    break
        rep.provably_unreceived = explained
        rep.unexplained = rep.paid_beyond_one - explained if rep.paid_beyond_one > explained else 0
        if unreceived != rep.paid_beyond_one:
            # More paid calls than attempts that did not complete: some generate was sent after a newer
            # attempt of its task had started — a put-back attempt still running somewhere (a duplicate).
            rep.problems.append(f"{rep.paid_beyond_one - unreceived} generate call(s) overlapped a newer attempt of "
                                f"the same task (an attempt the manager had put back was still running)")
        if rep.paid_beyond_one > explained:
            rep.problems.append(f"{rep.paid_beyond_one} generate calls paid beyond one per task, only {explained} "
                                f"provably unreceivable (a kill ended their attempt while they were out)")


def torture(root: Path, *, tasks: int = 100, kills: int = 44, latency: float = 0.8, workers: int = 4,
            seed: int | None = None, max_seconds: float = 1800, mix: dict[str, float] | None = None,
            echo=print, cache_ttl: float | None = None) -> TortureReport:
    root.mkdir(parents=True, exist_ok=True)
    t = Torturer(root, tasks=tasks, kills=kills, latency=latency, workers=workers, seed=seed,
                 max_seconds=max_seconds, mix=mix, echo=echo, cache_ttl=cache_ttl)
    t.run()
    t.check()
    t.rep.seconds = round(time.monotonic() - t.t0, 1)
    return t.rep


def summary(rep: TortureReport) -> str:
    k = rep.kills_by_kind
    return (f"tasks {rep.tasks}, runs {rep.runs}, kills {rep.kills} (manager in its first seconds {k.get('manager', 0)}, "
            f"worker {k.get('worker', 0)}, group SIGTERM {k.get('sigterm', 0)}, between answer and journal "
            f"{k.get('stop-kill', 0)}); completed {rep.completed}, failed {rep.failed}; generate calls paid "
            f"{rep.generate_calls}, beyond one per task {rep.paid_beyond_one} <= provably unreceived "
            f"{rep.provably_unreceived} (unexplained {rep.unexplained}); adopted outputs {rep.adopted}; crash "
            f"charges {rep.charged_crash} (other charges {rep.charged_other}); most interruptions of one task "
            f"{rep.max_interruptions}; outputs {rep.outputs}, temp files {rep.temp_files}, stragglers "
            f"{rep.stragglers}, torn tails {rep.torn_copies}, replay --verify exit {rep.verify_rc}; exit codes of "
            f"runs not killed {rep.exit_codes}; {rep.seconds} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--kills", type=int, default=44)
    ap.add_argument("--latency", type=float, default=0.8, help="seconds the sandbox adds to each generate call")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--mix", default="manager=1,worker=1,sigterm=1,stop-kill=1",
                    help="relative share of each kind of kill")
    ap.add_argument("--max-seconds", type=float, default=1800)
    ap.add_argument("--cache-ttl", type=float, default=None,
                    help="the sandbox's implicit-cache TTL (default: its own, 300 s; 0 turns the cache off)")
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir, removed)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    mix = {k: float(v) for k, v in (p.split("=") for p in a.mix.split(","))}
    root = a.dir or Path(tempfile.mkdtemp(prefix="gsvr-torture-"))
    try:
        rep = torture(root, tasks=a.tasks, kills=a.kills, latency=a.latency, workers=a.workers, seed=a.seed,
                      max_seconds=a.max_seconds, mix=mix, cache_ttl=a.cache_ttl)
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    if a.json:
        d = asdict(rep) | {"kills": rep.kills, "ok": rep.ok}
        d.pop("kill_log")
        print(json.dumps(d))
    else:
        print(summary(rep))
        for p in rep.problems:
            print("PROBLEM:", p)
        print("OK" if rep.ok else "FAILED")
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
