"""Core benchmarks (issues 2 and 12): startup, journal replay, manager overhead, memory — before and after.

    python scripts/bench_core.py                      # every section, before (31b53ba) and after, ~10 min on 2 cores
    python scripts/bench_core.py --no-before          # the working tree only
    python scripts/bench_core.py --section startup    # or replay | overhead | memory (comma-separated list ok)
    python scripts/bench_core.py --quick              # small sizes (40 tasks, 100k records, 2,000 tasks): a smoke run
    python scripts/bench_core.py --section startup --profile   # + cProfile output of the measured steps

"Before" is the code at commit ``--before`` (default 31b53ba, the last landing before issue 12):
the script extracts that commit with ``git archive`` into a temporary folder (no git state is
changed), runs the *same* section code against it in a child process (``PYTHONPATH`` = that
folder), then against this working tree, alternately, and removes the folder at the end. Ratios
are taken inside one run: never compare figures from two runs of a shared 2-core machine.

Sections (docs/BENCHMARKS.md explains each figure):

* ``startup`` — a 10,000-task batch (10,000 hard-linked tiny videos, file checks on) whose journal has
  a snapshot, 5,000 tasks completed (outputs on disk), 20 in flight at a "crash" (the new code also
  finds 2 of their outputs on disk to adopt and 2 temp files of a dead writer to clean) and the rest
  pending. A fresh child process times what a rerun pays before its first task is submitted:
  manifest load and the other pre-flight checks, ``BatchLog.open`` (snapshot + prefix digest + tail
  replay), the session / runner set-up and ``reconcile`` (each of its steps timed separately in
  the new code), and the pending queue. Services (sandbox, limiter, SDK client) are not included.
* ``replay`` — one synthetic journal of 1,000,001 records (``batch_created`` then per task
  ``task_added``, ``task_started``, ``task_step`` x3, ``upload_finished``, ``task_completed``,
  ``upload_deleted``: the shapes today's manager writes), written once by this script and replayed
  by both trees without a snapshot (the after tree on two cores: ``fastreplay``; each of its two
  halves is also timed alone).
* ``overhead`` — N tasks through the full runner (``run_batch``: journal with fsync, events,
  progress quiet, snapshots) against the same ``pipeline.run_task`` calls through a bare
  ``ProcessPoolExecutor.map`` (same ``init_worker``, same shared rate limiter, no journal),
  alternately, all against one sandbox in its own process (``processing_delay`` 0) reached through
  ``GOOGLE_GEMINI_BASE_URL``, as the API is. The full run is measured twice: with
  ``--keep-uploads`` (the same API work as the bare pool: the overhead figure) and as users run it
  (the janitor deletes each upload: one more request per task, reported apart). The full
  run's manager thread is instrumented (timers around the journal, the fold, the session's
  transitions, the event drain, progress, housekeeping) for the per-task breakdown.
* ``memory`` — total PSS (sum of ``/proc/PID/smaps_rollup`` Pss) of ``gsvr-batch run`` with 8
  workers on the sandbox (manager + workers, sampled while every worker has run tasks; peak), and
  the manager's peak RSS on the finished 10,000-task batch. The after tree also measures a pool of
  8 workers started by ``forkserver`` with the heavy imports preloaded against the same pool
  started by ``spawn`` (the runner uses the forkserver since issue 12; the spawn pool is what
  ``GSVR_WORKER_START=spawn`` gives).

Nothing here is a test; figures vary with the machine and its load.
"""

from __future__ import annotations

import argparse
import atexit
import cProfile
import io
import json
import os
import platform
import pstats
import select
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "jobs" / "videos" / "lecture-01-introduction.mp4"
MODEL = "gemini-2.5-flash"
BEFORE_REV = "31b53ba"
RESULT_TAG = "BENCH_RESULT "
SECTIONS = ("startup", "replay", "overhead", "memory")

# The targets of issue 12 (DESIGN "Numbers the design answers to").
TARGETS = {"startup": 0.5, "replay": 2.0, "overhead": 1.0}


def header() -> None:
    print(f"# bench_core  {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  Python {platform.python_version()}  "
          f"{platform.system()} {platform.machine()}  cpus={os.cpu_count()}", flush=True)


# ================================================================================================
# The tree under test (child processes only)


def use_tree(tree: str) -> bool:
    """Import gsvr_batch from ``tree``; True when it has the new runner package (issue 12's API)."""
    sys.path.insert(0, tree)
    import gsvr_batch

    where = Path(gsvr_batch.__file__).resolve()
    if Path(tree).resolve() not in where.parents:
        raise SystemExit(f"gsvr_batch imported from {where}, not from {tree}")
    return (Path(tree) / "gsvr_batch" / "runner" / "session.py").is_file()


def emit(result: dict[str, Any]) -> None:
    print(RESULT_TAG + json.dumps(result), flush=True)


def write_video_manifest(root: Path, n: int, *, workers: int = 2, extra: str = "", distinct: bool = False,
                         external: bool = False) -> Path:
    """n tiny videos (hard links of one sample, or distinct copies) and a YAML manifest for them.

    ``distinct``: each copy gets a unique MP4 ``free`` box appended, so no two files have the same
    bytes (a manager that shares uploads by content hash must not make the full run cheaper than
    the bare one, which uploads every task's video).
    """
    vids = root / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    src = vids / "sample.mp4"
    shutil.copyfile(SAMPLE, src)
    body = src.read_bytes()
    lines = []
    for i in range(n):
        p = vids / f"v{i:05d}.mp4"
        if distinct:
            pad = b"gsvr-bench-%08d" % i
            p.write_bytes(body + (8 + len(pad)).to_bytes(4, "big") + b"free" + pad)
        else:
            try:
                os.link(src, p)
            except OSError:
                shutil.copyfile(src, p)
        lines.append(f"  - source: videos/v{i:05d}.mp4")
    if external:
        # A sandbox in its own process, reached through GOOGLE_GEMINI_BASE_URL as the real API is:
        # limits high enough that the shared limiter admits every call at once (it still runs).
        extra = "  rpm: 1000000\n  tpm: 1000000000000\n  rpd: 100000000\n" + extra
    text = (("" if external else "sandbox: true\n") +
            "defaults:\n  template: summary_report\n  output_dir: out\n"
            # sandbox: true and no rpm/tpm/rpd: in sandbox mode only explicit limits apply, so the
            # shared limiter admits every call at once (it still runs: same code path as a real run)
            f"settings:\n  workers: {workers}\n  max_attempts: 3\n{extra}"
            "jobs:\n" + "\n".join(lines) + "\n")
    m = root / "manifest.yaml"
    m.write_text(text, encoding="utf-8")
    return m


class Timers:
    """Wrap functions and methods with accumulating timers (wall clock in the main thread, or a thread's CPU)."""

    def __init__(self) -> None:
        self.acc: dict[str, list[float]] = {}
        self._undo: list[Callable[[], None]] = []
        self._main = threading.get_ident()

    def wrap(self, owner: Any, attr: str, label: str | None = None, *, clock: Callable[[], float] = time.perf_counter,
             main_only: bool = True) -> None:
        """Add up the time spent inside ``owner.attr`` under ``label``: wall time (``perf_counter``)
        in the main thread by default; ``clock=time.thread_time`` adds up the calling thread's CPU."""
        orig = getattr(owner, attr)
        slot = self.acc.setdefault(label or attr, [0.0, 0])
        main = self._main

        def timed(*a: Any, **kw: Any) -> Any:
            if main_only and threading.get_ident() != main:
                return orig(*a, **kw)
            t0 = clock()
            try:
                return orig(*a, **kw)
            finally:
                slot[0] += clock() - t0
                slot[1] += 1

        # staticmethod / plain function on a class or a module: setattr the wrapper as it is
        setattr(owner, attr, timed)
        self._undo.append(lambda: setattr(owner, attr, orig))

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def seconds(self, label: str) -> float:
        return self.acc.get(label, [0.0, 0])[0]

    def calls(self, label: str) -> int:
        return int(self.acc.get(label, [0.0, 0])[1])


# ================================================================================================
# startup


COMPLETED_FRACTION = 0.5
IN_FLIGHT = 20
ADOPTABLE = 2  # of the in-flight tasks, outputs a worker wrote before the "crash" (new code adopts them)
LEFTOVERS = 2  # temp files of a dead writer in the output folder (new code cleans them)
STEPS = ("resolving", "uploading", "generating")


def build_startup_batch(root: Path, n: int, new_api: bool, *, all_done: bool = False) -> Path:
    """A batch with a realistic journal, written through the tree's own BatchLog (fsync off: setup only)."""
    m = write_video_manifest(root, n)
    real_fsync = os.fsync
    os.fsync = lambda fd: None  # setup only (restored below): durability is not what is measured here
    try:
        if new_api:
            _build_new(m, n, all_done)
        else:
            _build_old(m, n, all_done)
    finally:
        os.fsync = real_fsync
    return m


def _upload(i: int) -> dict[str, Any]:
    return {"name": f"files/{i:012x}", "uri": f"http://127.0.0.1/v1beta/files/{i:012x}", "mime_type": "video/mp4",
            "expires_at": "2099-01-01T00:00:00Z", "size_bytes": 51237, "source_sha256": "ab" * 32}


def _build_old(m: Path, n: int, all_done: bool) -> None:
    from gsvr_batch.lifecycle import BatchLog
    from gsvr_batch.manifest import load_manifest
    from gsvr_batch.runner import RunOptions, Runner, resolve_journal

    manifest = load_manifest(str(m))
    blog, _ = BatchLog.open(resolve_journal(None, manifest))
    runner = Runner(RunOptions(manifest=str(m)), manifest, blog, echo=lambda s: None)
    runner.reconcile()
    n_done = n if all_done else int(n * COMPLETED_FRACTION)
    Path(manifest.output_root).mkdir(parents=True, exist_ok=True)
    body = b"# lesson\n" * 200
    for i, tid in enumerate(runner.order[:n_done]):
        blog.start_task(tid)
        for stp in STEPS:
            blog.step(tid, stp)
        blog.upload_finished(tid, _upload(i))
        out = runner.jobs[tid].output_path
        Path(out).write_bytes(body)
        blog.complete_task(tid, output=out, sha256="cd" * 32, bytes_=len(body),
                           usage={"prompt_tokens": 1000, "candidates_tokens": 100}, cost_usd=0.001,
                           model_version=MODEL, video_duration=3.0, elapsed=1.0)
    if all_done:
        blog.finish()
        blog.run_finished(0)
        blog.maybe_snapshot(force=True)
    else:
        blog.maybe_snapshot(force=True)
        for tid in runner.order[n_done:n_done + IN_FLIGHT]:  # a tail after the snapshot: a crash mid-run
            blog.start_task(tid)
            blog.step(tid, "resolving")
    blog.close()


def _build_new(m: Path, n: int, all_done: bool) -> None:
    from gsvr_batch.formats import LessonMeta, MarkdownFormatter
    from gsvr_batch.fsutil import TMP_PREFIX
    from gsvr_batch.lifecycle import BatchLog, new_attempt_id
    from gsvr_batch.runner import RunOptions, prepare
    from gsvr_batch.runner.reconcile import reconcile
    from gsvr_batch.runner.session import Session

    prepared = prepare(RunOptions(str(m)), echo=lambda s: None)
    blog, _ = BatchLog.open(prepared.journal)
    s = Session(prepared, blog, echo=lambda s: None)
    reconcile(s)
    n_done = n if all_done else int(n * COMPLETED_FRACTION)
    out_root = Path(prepared.manifest.output_root)
    out_root.mkdir(parents=True, exist_ok=True)
    # One rendered lesson (front matter with task id and attempt nonce, as the pipeline writes it);
    # the ids are substituted per task, which is faster than rendering 10,000 of them.
    meta = LessonMeta(title="T", source="v.mp4", template="summary_report", model=MODEL, task_id="T" * 16,
                      attempt_id="A" * 16, tokens={"prompt_tokens": 1000, "candidates_tokens": 100},
                      backend="sandbox", duration=3.0)
    proto = MarkdownFormatter().render("# lesson\n" + "Some text.\n" * 200, meta)

    def body(tid: str, aid: str) -> bytes:
        return proto.replace(b"T" * 16, tid.encode()).replace(b"A" * 16, aid.encode())

    for i, tid in enumerate(s.order[:n_done]):
        job = s.jobs[tid]
        aid = new_attempt_id()
        blog.start_task(tid, attempt_id=aid, model=job.model, fingerprint=s.fingerprints[tid], output=job.output_path)
        for stp in STEPS:
            blog.step(tid, stp, worker=4242)
        blog.upload_finished(dict(_upload(i), source=job.source, uploaded_by=tid), task_id=tid)
        data = body(tid, aid)
        Path(job.output_path).write_bytes(data)
        blog.complete_task(tid, output=job.output_path, sha256="cd" * 32, bytes_=len(data),
                           usage={"prompt_tokens": 1000, "candidates_tokens": 100}, cost_usd=0.001,
                           model_version=MODEL, video_duration=3.0, elapsed=1.0, fingerprint=s.fingerprints[tid])
        blog.upload_deleted(f"files/{i:012x}", "no pending task needs it")
    if all_done:
        blog.finish()
        blog.run_finished(0)
        blog.maybe_snapshot(force=True)
    else:
        blog.maybe_snapshot(force=True)
        for k, tid in enumerate(s.order[n_done:n_done + IN_FLIGHT]):  # a tail after the snapshot: a crash
            job = s.jobs[tid]
            aid = new_attempt_id()
            blog.start_task(tid, attempt_id=aid, model=job.model, fingerprint=s.fingerprints[tid],
                            output=job.output_path)
            blog.step(tid, "resolving", worker=4242)
            if k < ADOPTABLE:  # the worker wrote its output, the manager died before journaling it
                Path(job.output_path).write_bytes(body(tid, aid))
        for k in range(LEFTOVERS):  # a dead writer's temp files (pid 2**22 + k is above pid_max's default)
            (out_root / f"{TMP_PREFIX}{2 ** 22 + k}-abcdef").write_bytes(b"partial")
    blog.close()


CHILD_STARTUP = r"""
import json, os, sys, time
t_start = time.perf_counter()
sys.path.insert(0, sys.argv[2])
from collections import deque
m, prof_path = sys.argv[1], (sys.argv[3] if len(sys.argv) > 3 else None)
out = {}
NEW = os.path.isdir(os.path.join(sys.argv[2], "gsvr_batch", "runner"))
if NEW:
    from gsvr_batch.lifecycle import BatchLog
    from gsvr_batch.runner import RunOptions, prepare
    from gsvr_batch.runner import reconcile as rc
    from gsvr_batch.runner.session import Session
    from gsvr_batch.runner.online import OnlineRun
    from gsvr_batch import journal as jr
else:
    from gsvr_batch.lifecycle import BatchLog
    from gsvr_batch.manifest import load_manifest
    from gsvr_batch.runner import RunOptions, Runner, resolve_journal, check_model_prices, check_notify_targets
    from gsvr_batch.gemini import resolve_credentials
    from gsvr_batch import journal as jr
from gsvr_batch.state import TaskStatus
t_imp = time.perf_counter()
prof = None
if prof_path:
    import cProfile
    prof = cProfile.Profile(); prof.enable()
# the snapshot's prefix digest, on its own (load_snapshot runs it inside BatchLog.open too)
_crc_time = [0.0]
for _name in ("file_crc", "prefix_crc_matches"):
    if hasattr(jr, _name):
        def _wrap(orig):
            def f(*a, **kw):
                t0 = time.perf_counter()
                try:
                    return orig(*a, **kw)
                finally:
                    _crc_time[0] += time.perf_counter() - t0
            return f
        setattr(jr, _name, _wrap(getattr(jr, _name)))
steps = {}
if NEW:
    def timed(name):
        orig = getattr(rc, name)
        def f(*a, **kw):
            t0 = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                steps[name] = steps.get(name, 0.0) + time.perf_counter() - t0
        setattr(rc, name, f)
    for name in ("clean_leftovers", "adopt_output", "adopt_partials",
                 "_check_completed_outputs", "_report_changed"):
        timed(name)
    prepared = prepare(RunOptions(m), echo=lambda s: None)
    manifest = prepared.manifest
    journal = prepared.journal
else:
    opts = RunOptions(manifest=m)
    manifest = load_manifest(m, opts.overrides())
    resolve_credentials(manifest.settings.api_key_env, sandbox=bool(manifest.settings.sandbox))
    check_notify_targets(manifest.settings.notify)
    check_model_prices(manifest, opts.pricing, lambda s: None)
    journal = resolve_journal(None, manifest)
t_man = time.perf_counter()
blog, rp = BatchLog.open(journal)
t_open = time.perf_counter()
if NEW:
    from gsvr_batch.runner.preflight import refuse_foreign_outputs

    refuse_foreign_outputs(manifest, blog.state)  # run_batch does this right after opening the journal
    s = Session(prepared, blog, echo=lambda s: None)
    t_sess = time.perf_counter()
    rc.reconcile(s)
    t_rec = time.perf_counter()
    pending = OnlineRun(s).pending_queue()
    order, state = s.order, s.state
else:
    runner = Runner(opts, manifest, blog, echo=lambda s: None)
    t_sess = time.perf_counter()
    runner.reconcile()
    t_rec = time.perf_counter()
    pending = deque(t for t in runner.order if runner.state.tasks[t].status is TaskStatus.PENDING)
    order, state = runner.order, runner.state
t_end = time.perf_counter()
if prof:
    prof.disable(); prof.dump_stats(prof_path)
t0 = time.perf_counter()
blog._records_since_snapshot = max(1, blog._records_since_snapshot)
blog.maybe_snapshot(force=True)  # what a running manager pays for one snapshot at this size
t_snap = time.perf_counter() - t0
blog.close()
adopted = sum(1 for t in state.tasks.values() if getattr(t, "adopted", False))
hwm = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) / 1024.0
print(json.dumps({"vmhwm_mb": hwm, "snapshot": t_snap, "imports": t_imp - t_start, "manifest": t_man - t_imp,
                  "open": t_open - t_man, "prefix_crc": _crc_time[0], "session": t_sess - t_open,
                  "reconcile": t_rec - t_sess, "queue": t_end - t_rec, "total": t_end - t_imp, "steps": steps,
                  "used_snapshot": rp.used_snapshot, "tail_records": rp.records_read, "pending": len(pending),
                  "adopted": adopted, "tasks": len(state.tasks), "journal_bytes": os.path.getsize(journal)}))
"""


def child_startup(args: argparse.Namespace, new_api: bool) -> dict[str, Any]:
    n = args.tasks
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as d:
        root = Path(d)
        # The manifest cache of this run (the children inherit it): warm after the set-up's run,
        # as for every cron firing after the first.
        cache = root / "manifest-cache"
        os.environ["GSVR_BATCH_CACHE_DIR"] = str(cache)
        t0 = time.perf_counter()
        m = build_startup_batch(root, n, new_api)
        state_dir = root / "out" / ".gsvr"
        built = time.perf_counter() - t0
        saved = root / "saved"
        shutil.copytree(state_dir, saved, symlinks=True)
        # the dead writer's temp files: cleaning them is part of what is measured, so every round
        # gets them back (and recovers the same crash from the same journal)
        leftovers = {p: p.read_bytes() for p in (root / "out").iterdir() if p.name.startswith(".gsvr-tmp-")}
        def rounds(before_each: Callable[[], None] = lambda: None) -> list[dict[str, Any]]:
            runs = []
            for _ in range(args.repeat):
                before_each()
                _reset(state_dir, saved, leftovers)
                code, out = _python(["-c", CHILD_STARTUP, str(m), args.tree])
                if code != 0:
                    raise SystemExit(f"startup child failed ({code}): {out[-2000:]}")
                runs.append(json.loads(out.strip().splitlines()[-1]))
            return runs

        runs = rounds()
        best = min(runs, key=lambda r: r["total"])
        cold = None
        if new_api and cache.is_dir():
            # The first run after the manifest (or gsvr-batch) changed builds the manifest in full.
            cold = min(rounds(lambda: shutil.rmtree(cache, ignore_errors=True)), key=lambda r: r["total"])
        print(f"  batch: {n:,} tasks ({int(n * COMPLETED_FRACTION):,} completed with outputs on disk, {IN_FLIGHT} in "
              f"flight at a crash, rest pending); journal {best['journal_bytes'] / 1e6:.1f} MB with snapshot; built "
              f"in {built:.1f} s")
        print(f"  pre-flight (manifest load, file checks on, key, prices{', templates, limits' if new_api else ''}): "
              f"{best['manifest']:.3f} s")
        print(f"  BatchLog.open (snapshot + prefix digest {best['prefix_crc'] * 1000:.0f} ms + {best['tail_records']} "
              f"tail records): {best['open']:.3f} s (snapshot used: {best['used_snapshot']})")
        print(f"  {'Session()' if new_api else 'Runner()'}: {best['session']:.3f} s; reconcile: {best['reconcile']:.3f} s"
              f"; pending queue: {best['queue']:.3f} s -> {best['pending']:,} pending"
              + (f", {best['adopted']} adopted" if new_api else ""))
        if best["steps"]:
            print("    reconcile steps: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in best["steps"].items()))
        print(f"  STARTUP (best of {len(runs)}{', manifest cache warm' if cold else ''}): {best['total']:.3f} s "
              f"(imports before that {best['imports']:.3f} s); peak RSS {best['vmhwm_mb']:.0f} MB; one forced snapshot "
              f"of this state {best['snapshot']:.3f} s", flush=True)
        if cold:
            print(f"  startup with no manifest cache (the first run after the manifest changed), best of "
                  f"{args.repeat}: {cold['total']:.3f} s (pre-flight {cold['manifest']:.3f} s)", flush=True)
        if args.profile:
            _reset(state_dir, saved, leftovers)
            pf = root / "startup.prof"
            _python(["-c", CHILD_STARTUP, str(m), args.tree, str(pf)])
            s = io.StringIO()
            pstats.Stats(str(pf), stream=s).sort_stats("tottime").print_stats(25)
            print("  startup profile (top 25 by own time):\n" + "\n".join(
                "    " + ln for ln in s.getvalue().splitlines() if ln.strip()))
            s = io.StringIO()
            pstats.Stats(str(pf), stream=s).sort_stats("cumulative").print_stats(30)
            print("  startup profile (top 30 cumulative):\n" + "\n".join(
                "    " + ln for ln in s.getvalue().splitlines() if ln.strip()))
        return {"startup_s": best["total"], "detail": best, "rounds": [r["total"] for r in runs],
                "startup_cold_s": cold["total"] if cold else None}


def _reset(state_dir: Path, saved: Path, leftovers: dict[Path, bytes]) -> None:
    shutil.rmtree(state_dir)
    shutil.copytree(saved, state_dir, symlinks=True)
    for p, data in leftovers.items():
        p.write_bytes(data)


def _python(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    p = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-3000:])
    return p.returncode, p.stdout


# ================================================================================================
# replay


def encode(rec: dict[str, Any]) -> bytes:
    """journal.encode_record, self-contained: both trees read the very same bytes."""
    body = json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return body[:-1] + b',"crc":"%08x"}\n' % (zlib.crc32(body) & 0xFFFFFFFF)


def write_synthetic_journal(path: Path, n_tasks: int, root: str = "/data/out", shape: str = "before") -> int:
    """batch_created + the records of n_tasks one-call tasks, in order per task. Returns the count.

    ``shape="before"``: 8 records per task, as 31b53ba wrote them (``task_step`` x3 among them).
    ``shape="now"``: the same history as the runner writes it today, 5 records per task (steps of
    instant work are not recorded; the one-call plan and request count ride on ``task_completed``).
    """
    seq = 0
    ts = "2026-11-28T12:00:00.000Z"

    def rec(type_: str, **f: Any) -> bytes:
        nonlocal seq
        seq += 1
        return encode({"seq": seq, "ts": ts, "type": type_, **f})

    with open(path, "wb") as fh:
        fh.write(rec("batch_created", batch_id="bench0000001", manifest="/data/manifest.yaml",
                     manifest_identity="bench-identity", manifest_hash="0" * 64,
                     settings={"workers": 2, "rpm": 10}, version="bench"))
        buf = []
        for i in range(n_tasks):
            tid = f"{i:016x}"
            src = f"/data/videos/lecture-{i:06d}.mp4"
            out = f"{root}/lecture-{i:06d}_summary_report.md"
            name = f"files/{i:012x}"
            buf.append(rec("task_added", task_id=tid, source=src, source_kind="local", title=f"Lecture {i}",
                           template="summary_report", model=MODEL, output=out, output_format="md",
                           origin=f"/data/manifest.yaml:{i + 5}"))
            buf.append(rec("task_started", task_id=tid, attempt=1, attempt_id=f"{i:016x}", model=MODEL,
                           fingerprint=f"{i:016x}"))
            if shape == "before":
                for k, st in enumerate(STEPS):
                    buf.append(rec("task_step", task_id=tid, step=st, **({"worker": 4242} if k == 0 else {})))
            buf.append(rec("upload_finished", task_id=tid, upload={
                "name": name, "uri": f"https://generativelanguage.googleapis.com/v1beta/{name}",
                "mime_type": "video/mp4", "expires_at": "2026-11-30T12:00:00Z", "size_bytes": 51237,
                "source_sha256": f"{i:064x}", "source": src, "source_size": 51237,
                "source_mtime_ns": 1764331200000000000, "uploaded_by": tid}))
            buf.append(rec("task_completed", task_id=tid, output=out, sha256=f"{i:064x}", bytes=2048,
                           usage={"prompt_tokens": 180000, "candidates_tokens": 1500, "total_tokens": 181500},
                           cost_usd=0.0577, model_version="gemini-2.5-flash-001", video_duration=600.0,
                           elapsed=41.2, calls=1, fingerprint=f"{i:016x}",
                           **({"plan": {"strategy": "full", "media_resolution": "default",
                                        "tokens_per_request": 181500, "requests": 1}} if shape == "now" else {})))
            buf.append(rec("upload_deleted", task_id=tid, name=name, reason="no pending task needs it"))
            if len(buf) >= 8000:
                fh.write(b"".join(buf))
                buf.clear()
        fh.write(b"".join(buf))
    return seq


def child_replay(args: argparse.Namespace, new_api: bool) -> dict[str, Any]:
    from gsvr_batch import journal as jr
    from gsvr_batch.lifecycle import replay
    from gsvr_batch.state import BatchState

    path = Path(args.journal)
    count = args.records
    rounds = []
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        rp = replay(path, use_snapshot=False)
        rounds.append(time.perf_counter() - t0)
        assert rp.records_read == count, (rp.records_read, count)
        del rp
    t_replay = min(rounds)
    now: dict[str, Any] = {}
    if new_api and args.journal_now:
        # The same task history as the runner writes it today (fewer records per task).
        now_rounds = []
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            rp = replay(Path(args.journal_now), use_snapshot=False)
            now_rounds.append(time.perf_counter() - t0)
            now_records = rp.records_read
            del rp
        now = {"replay_now_s": min(now_rounds), "records_now": now_records}
        print(f"  the same {(count - 1) // 8:,}-task history as written today ({now_records:,} records), best of "
              f"{len(now_rounds)}: {min(now_rounds):.2f} s", flush=True)
    # The split is diagnostic: decode = the tree's own reader with nothing folded; fold = the
    # tree's state.fold over the decoded records held in memory, with the cyclic GC paused in both
    # trees (so the split shows code, not collector, cost; the replay figure above is as shipped).
    t0 = time.perf_counter()
    n = 0
    if hasattr(jr, "iter_batches"):
        for records, _ends in jr.iter_batches(path, expect_seq=1):
            n += len(records)
    else:
        for _ in jr.iter_records(path, expect_seq=1):
            n += 1
    t_decode = time.perf_counter() - t0
    recs = [r for _, _, r in jr.iter_records(path)]
    import gc

    from gsvr_batch.state import fold

    gc.disable()
    try:
        t0 = time.perf_counter()
        st = fold(recs, BatchState())
        t_fold = time.perf_counter() - t0
    finally:
        gc.enable()
    del recs, st
    print(f"  full replay (no snapshot), best of {len(rounds)}: {t_replay:.2f} s = {t_replay / count * 1e6:.2f} us/record"
          f" ({count / t_replay / 1e6:.2f} M records/s); the reference reader alone (read+CRC+decode) "
          f"{t_decode:.2f} s, its fold alone {t_fold:.2f} s", flush=True)
    two_cores: dict[str, Any] = {}
    try:
        from gsvr_batch import fastreplay
    except ImportError:
        fastreplay = None
    if fastreplay is not None and fastreplay.msgspec is not None:
        # The two halves of the two-core replay, each alone: this process's decode + struct fold,
        # and the checker process (start-up included) with nothing else running.
        size = path.stat().st_size
        gc.disable()
        try:
            t0 = time.perf_counter()
            st = BatchState()
            fastreplay.replay_lines(path, st, 0, size)
            t_lines = time.perf_counter() - t0
        finally:
            gc.enable()
        del st
        t0 = time.perf_counter()
        verdict = fastreplay.checker_verdict(fastreplay.start_checker(path, 0, size, 0))
        t_check = time.perf_counter() - t0
        assert verdict is not None and verdict[0] == count, verdict
        print(f"  two cores (used: {fastreplay.usable(size)}): decode + struct fold alone {t_lines:.2f} s, "
              f"checksum process alone {t_check:.2f} s", flush=True)
        two_cores = {"lines_s": t_lines, "checker_s": t_check}
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        replay(path, use_snapshot=False)
        prof.disable()
        _print_profile(prof, 15)
    return {"replay_s": t_replay, "decode_s": t_decode, "fold_s": t_fold, "rounds": rounds, **now, **two_cores}


def _print_profile(prof: cProfile.Profile, n: int = 10, sort: str = "tottime") -> None:
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats(sort).print_stats(n)
    print("\n".join("    " + ln for ln in s.getvalue().splitlines() if ln.strip()))


# ================================================================================================
# overhead


def instrument_manager(new_api: bool) -> Timers:
    """Timers around what the manager thread does per task (inclusive wall times)."""
    from gsvr_batch import journal as jr
    from gsvr_batch import lifecycle, state

    tm = Timers()
    tm.wrap(jr, "encode_record", "journal.encode_record")
    tm.wrap(jr.JournalWriter, "write", "JournalWriter.write (encode+write+fsync)")
    tm.wrap(jr.JournalWriter, "sync", "JournalWriter.sync (fsync)")
    tm.wrap(lifecycle, "apply", "state.apply (fold)")
    tm.wrap(lifecycle.BatchLog, "maybe_snapshot", "BatchLog.maybe_snapshot")
    if new_api:
        from gsvr_batch.runner import online, session

        for name in ("start", "spec_for", "on_event", "accept_result", "release_uploads", "flush_requests",
                     "collect_deletions", "poll_control", "quota_block", "within_cost_limit", "reusable_upload",
                     "uploading_elsewhere"):
            tm.wrap(session.Session, name, f"Session.{name}")
        for name in ("_drain", "_housekeeping", "_next_due", "_submit", "_accept", "_watch_orphans"):
            tm.wrap(online.OnlineRun, name, f"OnlineRun.{name}")
        tm.wrap(online.cf, "wait", "cf.wait (idle + wake-up)")
        tm.wrap(online.OnlineRun, "_loop", LOOP_CPU, clock=time.thread_time, main_only=False)
        tm.wrap(online.OnlineRun, "_loop", LOOP_WALL)
        tm.wrap(online.OnlineRun, "_loop", LOOP_PROC, clock=time.process_time)
    else:
        from gsvr_batch import runner

        for name in ("_on_event", "_on_result", "spec_for", "_next_due", "_daily_quota_left", "_within_cost_limit"):
            if hasattr(runner.Runner, name):
                tm.wrap(runner.Runner, name, f"Runner.{name}")
        if hasattr(runner, "cf"):
            tm.wrap(runner.cf, "wait", "cf.wait (idle + wake-up)")
        tm.wrap(runner.Runner, "_loop", LOOP_CPU, clock=time.thread_time, main_only=False)
        tm.wrap(runner.Runner, "_loop", LOOP_WALL)
        tm.wrap(runner.Runner, "_loop", LOOP_PROC, clock=time.process_time)
    return tm


LOOP_CPU = "dispatch loop, manager thread CPU"
LOOP_WALL = "dispatch loop, wall (first submit to last result)"
LOOP_PROC = "dispatch loop, manager process CPU (every thread)"


def run_full(root: Path, n: int, workers: int, new_api: bool, profile: bool = False, *, base_url: str,
             keep_uploads: bool = False) -> dict[str, Any]:
    """N tasks through ``run_batch`` against the sandbox process at ``base_url``. ``keep_uploads``:
    no upload is deleted, so the API work is exactly the bare pool's (the janitor's deletes, one
    more request per task, are then measured apart)."""
    from gsvr_batch.journal import read_journal
    from gsvr_batch.runner import RunOptions, run_batch

    m = write_video_manifest(root, n, workers=workers, distinct=True, external=True)
    lines: list[str] = []
    os.environ["GOOGLE_GEMINI_BASE_URL"] = base_url
    os.environ["GEMINI_API_KEY"] = "sandbox-" + os.urandom(6).hex()
    os.environ.pop("GOOGLE_API_KEY", None)
    if new_api:
        opts = RunOptions(str(m), progress="quiet", workers=workers, keep_uploads=keep_uploads)
    else:
        opts = RunOptions(manifest=str(m), progress="quiet", workers=workers, keep_uploads=keep_uploads)
    # Outside sandbox mode the Files API calls are paced at the built-in guess of its limit (600 a
    # minute: 100 ms a call), which would be all this measures; the bare pool has no such bucket.
    from gsvr_batch import quota

    file_rpm, quota.DEFAULT_FILE_RPM = quota.DEFAULT_FILE_RPM, None
    tm = instrument_manager(new_api)
    prof = cProfile.Profile() if profile else None
    cpu0 = time.thread_time()
    proc0 = time.process_time()
    t0 = time.perf_counter()
    try:
        if prof:
            prof.enable()
        res = run_batch(opts, echo=lines.append)
    finally:
        if prof:
            prof.disable()
        tm.restore()
        quota.DEFAULT_FILE_RPM = file_rpm
    wall = time.perf_counter() - t0
    cpu = time.thread_time() - cpu0
    proc_cpu = time.process_time() - proc0
    recs = read_journal(res.journal).records
    done = [r for r in recs if r["type"] == "task_completed"]
    if res.exit_code != 0 or len(done) != n:
        raise SystemExit(f"full run failed: exit {res.exit_code}, {len(done)}/{n} completed: {res.message}")
    types: dict[str, int] = {}
    for r in recs:
        types[r["type"]] = types.get(r["type"], 0) + 1
    if prof:
        print("  manager profile (full run, top 25 by own time):")
        _print_profile(prof, 25)
    return {"wall": wall, "main_cpu": cpu, "proc_cpu": proc_cpu, "loop_cpu": tm.seconds(LOOP_CPU),
            "loop_wall": tm.seconds(LOOP_WALL), "loop_proc": tm.seconds(LOOP_PROC),
            "worker_sum": sum(float(r.get("elapsed") or 0) for r in done),
            "records": len(recs), "types": types, "timers": {k: v for k, v in tm.acc.items()}}


def discard_events(receiver: Any) -> Callable[[], None]:
    """Read the workers' events and throw them away, in a thread; returns the function that stops it.

    A unix datagram socket queues only net.unix.max_dgram_qlen (often 10) datagrams and the workers'
    sends block when it is full, so even a bare pool must read them."""
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            select.select([receiver.fileno()], [], [], 0.05)
            receiver.drain()

    th = threading.Thread(target=drain, daemon=True)
    th.start()

    def halt() -> None:
        stop.set()
        th.join()

    return halt


def run_bare(root: Path, n: int, workers: int, new_api: bool, *, base_url: str, window: bool = False) -> dict[str, Any]:
    """The same run_task calls through a bare pool: no journal, no events consumed, no progress.

    ``window``: never more than ``workers`` tasks submitted, the next one only once one has come
    back (what the runner does, so that every task a worker holds was journaled as started)
    instead of ``pool.map``, which keeps one more call queued than there are workers."""
    import concurrent.futures as cf
    import dataclasses
    import multiprocessing

    from gsvr_batch.channels import EventReceiver
    from gsvr_batch.gemini import WorkerConfig
    from gsvr_batch.manifest import load_manifest
    from gsvr_batch.pipeline import init_worker, run_task
    from gsvr_batch.quota import Limits
    from gsvr_batch.ratelimit import RateLimiter
    from gsvr_batch.tasks import TaskSpec

    key_env = "GSVR_SANDBOX_API_KEY"
    m = write_video_manifest(root, n, workers=workers, distinct=True, external=True)
    t0 = time.perf_counter()
    proc0 = time.process_time()
    manifest = load_manifest(str(m))
    key = "sandbox-" + os.urandom(6).hex()
    os.environ[key_env] = key
    s = manifest.settings
    lim_path = str(root / "bare.ratelimit")  # the same shared limiter the runner gives its workers
    limiter = RateLimiter.create(lim_path, {MODEL: Limits(rpm=s.rpm, tpm=s.tpm, rpd=s.rpd, file_rpm=None)})
    wcfg = WorkerConfig(base_url=base_url, api_version=None, api_key_env=key_env,
                        request_timeout=float(s.request_timeout), limiter_path=lim_path, backend="sandbox")
    receiver = EventReceiver()
    stop_drain = discard_events(receiver)
    names = {f.name for f in dataclasses.fields(TaskSpec)}
    specs = []
    for i, j in enumerate(manifest.jobs):
        kw = dict(task_id=j.job_id, source=j.source, source_kind=j.source_kind, title=j.title, template=j.template,
                  params=dict(j.params), model=j.model, output_path=j.output_path,
                  output_root=str(manifest.output_root), output_format=j.output_format, attempt=1,
                  attempt_id=f"{i:016x}", templates_dirs=tuple(str(p) for p in manifest.templates_dirs),
                  reuse_upload=None, keep_uploads=bool(s.keep_uploads), max_duration=s.max_duration,
                  backend="sandbox")
        specs.append(TaskSpec(**{k: v for k, v in kw.items() if k in names}))
    try:
        # The same worker start method as the runner (forkserver + preload after; spawn before), so
        # the difference is the manager's work and not how workers come into being.
        try:
            from gsvr_batch.runner.online import worker_context
            ctx = worker_context()
        except ImportError:
            ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker,
                                    initargs=(wcfg, receiver.sender())) as pool:
            t_loop = time.perf_counter()  # what the runner's dispatch loop spans: first submit to last result
            p_loop = time.process_time()
            if not window:
                results = list(pool.map(run_task, specs))
            else:
                results, todo, inflight = [], list(reversed(specs)), set()
                while todo or inflight:
                    while todo and len(inflight) < workers:
                        inflight.add(pool.submit(run_task, todo.pop()))
                    done, inflight = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
                    results += [f.result() for f in done]
            loop_wall = time.perf_counter() - t_loop
            loop_proc = time.process_time() - p_loop
    finally:
        stop_drain()
        receiver.close()
        limiter.close()
    wall = time.perf_counter() - t0
    proc_cpu = time.process_time() - proc0
    ok = [r for r in results if r.ok]
    if len(ok) != n:
        raise SystemExit(f"bare run failed: {len(ok)}/{n} ok; first error: "
                         f"{next((r.error for r in results if not r.ok), None)}")
    return {"wall": wall, "loop_wall": loop_wall, "loop_proc": loop_proc, "proc_cpu": proc_cpu, "worker_sum": sum(r.elapsed for r in results)}


def child_overhead(args: argparse.Namespace, new_api: bool) -> dict[str, Any]:
    """Bare pool, full run with --keep-uploads (the same API work) and the full run as users run it
    (the janitor deletes each upload), round after round, all against one sandbox in its own process
    (as the API is: the manager's threads do not share a GIL with the server answering its workers)."""
    from torture import start_sandbox  # scripts/: the same helper the torture run starts its sandbox with

    n, w = args.n, args.workers
    full, keep, bare, windowed = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as sd:
        proc, url = start_sandbox(Path(sd) / "requests.jsonl", 0.0, processing_delay=0.0)
        try:
            for i in range(args.repeat):
                with tempfile.TemporaryDirectory(prefix="bench-bare-") as d:
                    bare.append(run_bare(Path(d), n, w, new_api, base_url=url))
                if new_api and not args.no_experiments:
                    with tempfile.TemporaryDirectory(prefix="bench-bare-") as d:
                        windowed.append(run_bare(Path(d), n, w, new_api, base_url=url, window=True))
                        print(f"  round {i + 1}: bare pool, at most {w} tasks submitted at once: "
                              f"{windowed[-1]['wall']:.2f} s ({windowed[-1]['wall'] / n * 1000:.1f} ms/task)", flush=True)
                with tempfile.TemporaryDirectory(prefix="bench-keep-") as d:
                    keep.append(run_full(Path(d), n, w, new_api, base_url=url, keep_uploads=True))
                with tempfile.TemporaryDirectory(prefix="bench-full-") as d:
                    full.append(run_full(Path(d), n, w, new_api, profile=args.profile and i == args.repeat - 1,
                                         base_url=url))
                b, k, f = bare[-1], keep[-1], full[-1]
                print(f"  round {i + 1}: bare {b['wall']:.2f} s ({b['wall'] / n * 1000:.1f} ms/task)  "
                      f"full, uploads kept {k['wall']:.2f} s ({k['wall'] / n * 1000:.1f} ms/task)  "
                      f"full {f['wall']:.2f} s ({f['wall'] / n * 1000:.1f} ms/task)", flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    # Best of the rounds by the dispatch loop's wall time: a run's set-up and wind-down (pre-flight,
    # journal, SDK client, the models check, the final snapshot) are paid once per run, not per task,
    # and are reported apart; the per-task overhead is what the loop adds while the workers run.
    fb = min(bare, key=lambda r: r["loop_wall"])
    fk = min(keep, key=lambda r: r["loop_wall"])
    ff = min(full, key=lambda r: r["loop_wall"])
    per = (fk["loop_wall"] - fb["loop_wall"]) / n * 1000
    per_total = (min(r["wall"] for r in keep) - min(r["wall"] for r in bare)) / n * 1000
    janitor = (ff["loop_wall"] - fk["loop_wall"]) / n * 1000
    fixed = fk["wall"] - fk["loop_wall"]
    fixed_bare = fb["wall"] - fb["loop_wall"]
    gap_b = fb["loop_wall"] - fb["worker_sum"] / w
    gap_k = fk["loop_wall"] - fk["worker_sum"] / w
    print(f"  dispatch loop, first submit to last result (best of {args.repeat}): bare {fb['loop_wall']:.2f} s, full with "
          f"uploads kept {fk['loop_wall']:.2f} s, full {ff['loop_wall']:.2f} s")
    print(f"  manager overhead per task, same API work: (full with uploads kept - bare) / N = {per:.2f} ms/task "
          f"(with the workers' own time subtracted {(gap_k - gap_b) / n * 1000:.2f} ms/task)")
    print(f"  once per run: set-up and wind-down {fixed:.2f} s (bare pool: {fixed_bare:.2f} s); whole runs, "
          f"(full with uploads kept - bare) / N = {per_total:.2f} ms/task at N = {n}")
    print(f"  the janitor's deletes (one more request per task): (full - full with uploads kept) / N = "
          f"{janitor:.2f} ms/task")
    print(f"  manager process CPU, every thread, during the dispatch loop: full {ff['loop_proc'] / n * 1000:.2f} "
          f"ms/task, with uploads kept {fk['loop_proc'] / n * 1000:.2f}, the bare pool's process "
          f"{fb['loop_proc'] / n * 1000:.2f} (whole runs: {ff['proc_cpu'] / n * 1000:.2f} / "
          f"{fk['proc_cpu'] / n * 1000:.2f} / {fb['proc_cpu'] / n * 1000:.2f})")
    print(f"  manager thread CPU in the full run: {ff['main_cpu'] / n * 1000:.2f} ms/task (set-up included), "
          f"{ff['loop_cpu'] / n * 1000:.2f} ms/task in the dispatch loop; journal "
          f"{ff['records']} records ({ff['records'] / n:.1f}/task): "
          + ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(ff["types"].items(), key=lambda kv: -kv[1])))
    print("  manager thread, inclusive wall time per task (best full run):")
    for label, (sec, calls) in sorted(ff["timers"].items(), key=lambda kv: -kv[1][0]):
        if calls:
            print(f"    {label:<44} {sec / n * 1000:7.3f} ms/task  ({calls / n:5.1f} calls/task, "
                  f"{sec / calls * 1e6:7.1f} us/call)")
    syncs = next((calls for label, (_sec, calls) in ff["timers"].items() if label.startswith("JournalWriter.sync")), None)
    fw = min(windowed, key=lambda r: r["wall"]) if windowed else None
    return {"overhead_ms": per, "overhead_total_ms": per_total, "fixed_s": fixed, "bare_fixed_s": fixed_bare,
            "full_ms": min(r["wall"] for r in full) / n * 1000, "keep_ms": min(r["wall"] for r in keep) / n * 1000,
            "janitor_ms": janitor, "bare_ms": min(r["wall"] for r in bare) / n * 1000, "bare_window_ms": fw["wall"] / n * 1000 if fw else None,
            "fsyncs_per_task": None if syncs is None else syncs / n, "ratio": ff["wall"] / fb["wall"], "bare_s": fb["wall"], "full_s": ff["wall"],
            "main_cpu_ms": ff["main_cpu"] / n * 1000, "loop_cpu_ms": ff["loop_cpu"] / n * 1000,
            "loop_proc_ms": ff["loop_proc"] / n * 1000, "keep_loop_proc_ms": fk["loop_proc"] / n * 1000,
            "bare_loop_proc_ms": fb["loop_proc"] / n * 1000,
            "records_per_task": ff["records"] / n,
            "types": ff["types"], "timers": ff["timers"], "gap_ms": (gap_k - gap_b) / n * 1000}


# ================================================================================================
# memory


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """pid and every process below it (from /proc/*/stat's ppid)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def sample_pss(pid: int, stop: Callable[[], bool], interval: float = 0.25) -> tuple[float, int]:
    """Peak total PSS (MB) of ``pid`` and its descendants, and the process count at that peak."""
    best, procs = 0.0, 0
    while not stop():
        pids = descendants(pid)
        total = sum(pss_kb(p) for p in pids) / 1024.0
        if total > best:
            best, procs = total, len(pids)
        time.sleep(interval)
    return best, procs


def child_memory(args: argparse.Namespace, new_api: bool) -> dict[str, Any]:
    res: dict[str, Any] = {}
    w = args.memory_workers
    env = dict(os.environ, PYTHONPATH=args.tree)
    # (a) total PSS of a real run: manager + w workers on the sandbox, every worker busy for a while
    with tempfile.TemporaryDirectory(prefix="bench-pss-") as d:
        root = Path(d)
        m = write_video_manifest(root, w * 4, workers=w, distinct=True)
        argv = [sys.executable, "-m", "gsvr_batch", "run", str(m), "--progress", "quiet", "--workers", str(w)]
        # the sandbox's default processing_delay (0.5 s per upload) keeps every worker alive long
        # enough to be sampled after its first tasks
        p = subprocess.Popen(argv, cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak, procs = sample_pss(p.pid, lambda: p.poll() is not None)
        err = p.stderr.read() if p.stderr else ""
        if p.returncode != 0:
            print(f"  (run exited {p.returncode}: {err[-500:]})")
        res["run_pss_mb"], res["run_procs"] = peak, procs
        print(f"  `gsvr-batch run` with {w} workers ({w * 4} tasks, sandbox): peak total PSS {peak:.0f} MB over "
              f"{procs} processes (manager + workers{' + resource tracker' if procs > w + 1 else ''})", flush=True)
    # (b) the manager's peak RSS on a finished 10,000-task batch (replay, reconcile, stats, conclude)
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as d:
        root = Path(d)
        m = build_startup_batch(root, args.tasks, new_api, all_done=True)
        code, _out, rss = run_child_rss([sys.executable, "-m", "gsvr_batch", "run", str(m), "--progress", "log"], env)
        res["finished_rss_mb"] = rss
        print(f"  manager peak RSS, `gsvr-batch run` of a finished {args.tasks:,}-task batch: {rss:.0f} MB (exit {code})")
        code, _out, rss0 = run_child_rss([sys.executable, "-c", "import gsvr_batch.runner, gsvr_batch.manifest"], env)
        res["import_rss_mb"] = rss0
        print(f"  (a process that only imports the runner and manifest modules: {rss0:.0f} MB)", flush=True)
    if new_api and not args.no_experiments:
        res.update(forkserver_experiment(w))
    return res


# Peak RSS is read inside the child from /proc/self/status VmHWM. Not ru_maxrss from wait4:
# Linux folds the pre-exec address space (a copy of the benchmark process) into the child's ru_maxrss.
HWM_WRAPPER = r"""
import atexit, runpy, sys
def _hwm():
    kb = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
    sys.stderr.write(f"\nBENCH_VMHWM_KB {kb}\n"); sys.stderr.flush()
atexit.register(_hwm)
sys.argv = sys.argv[1:]
if sys.argv[0] == "-c":
    code = sys.argv.pop(1); exec(compile(code, "<bench>", "exec"), {"__name__": "__main__"})
else:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_child_rss(argv: list[str], env: dict | None = None) -> tuple[int, str, float]:
    """Run ``[python, *rest]`` under HWM_WRAPPER; return (exit code, stdout, peak RSS in MB)."""
    rest = argv[1:]
    if rest[0] == "-m":
        rest = rest[1:]
    p = subprocess.run([sys.executable, "-c", HWM_WRAPPER, *rest], capture_output=True, text=True, env=env,
                       stdin=subprocess.DEVNULL)
    if p.returncode not in (0, 1):
        print(p.stderr[-3000:], file=sys.stderr)
    kb = [ln.split()[1] for ln in p.stderr.splitlines() if ln.startswith("BENCH_VMHWM_KB ")]
    return p.returncode, p.stdout, (int(kb[-1]) / 1024.0 if kb else float("nan"))


PRELOAD = ["gsvr_batch.pipeline", "gsvr_batch.gemini", "gsvr_batch.formats", "gsvr_batch.context",
           "gsvr_batch.ratelimit", "google.genai", "google.genai.types", "httpx", "pydantic", "yaml", "av"]


def _fs_init(cfg: Any, sender: Any) -> None:
    """init_worker for the pool experiments: the real one (it handles forkserver workers itself)."""
    from gsvr_batch import pipeline

    pipeline.init_worker(cfg, sender)


def forkserver_experiment(w: int) -> dict[str, Any]:
    """Total PSS of manager + w workers (+ the forkserver) after 3 tasks each: spawn vs forkserver+preload."""
    import concurrent.futures as cf
    import multiprocessing

    from gsvr_batch.channels import EventReceiver
    from gsvr_batch.gemini import WorkerConfig
    from gsvr_batch.pipeline import run_task
    from gsvr_batch.quota import Limits
    from gsvr_batch.ratelimit import RateLimiter
    from gsvr_batch.sandbox import SandboxConfig, SandboxServer
    from gsvr_batch.tasks import TaskSpec

    out: dict[str, Any] = {}
    key_env = "GSVR_SANDBOX_API_KEY"
    for kind in ("spawn", "forkserver"):
        with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as d:
            root = Path(d)
            vids = root / "videos"
            vids.mkdir()
            key = "sandbox-" + os.urandom(6).hex()
            os.environ[key_env] = key
            server = SandboxServer(SandboxConfig(api_key=None, processing_delay=0.0))
            base_url = server.start()
            lim_path = str(root / "x.ratelimit")
            limiter = RateLimiter.create(lim_path, {MODEL: Limits(rpm=None, tpm=None, rpd=None, file_rpm=None)})
            wcfg = WorkerConfig(base_url=base_url, api_version=None, api_key_env=key_env, request_timeout=60.0,
                                limiter_path=lim_path, backend="sandbox", manager_pid=os.getpid())
            receiver = EventReceiver()
            stop_drain = discard_events(receiver)
            body = SAMPLE.read_bytes()
            specs = []
            for i in range(w * 3):
                p = vids / f"v{i}.mp4"
                pad = b"gsvr-bench-%08d" % i
                p.write_bytes(body + (8 + len(pad)).to_bytes(4, "big") + b"free" + pad)
                specs.append(TaskSpec(task_id=f"{i:016x}", source=str(p), source_kind="local", title=f"v{i}",
                                      template="summary_report", params={}, model=MODEL,
                                      output_path=str(root / "out" / f"v{i}.md"), output_root=str(root / "out"),
                                      attempt_id=f"{i:016x}", backend="sandbox"))
            (root / "out").mkdir()
            ctx = multiprocessing.get_context(kind)
            if kind == "forkserver":
                ctx.set_forkserver_preload(PRELOAD)
            t0 = time.perf_counter()
            try:
                with cf.ProcessPoolExecutor(max_workers=w, mp_context=ctx, initializer=_fs_init,
                                            initargs=(wcfg, receiver.sender())) as pool:
                    results = list(pool.map(run_task, specs))
                    ok = sum(1 for r in results if r.ok)
                    time.sleep(0.3)
                    pids = descendants(os.getpid())
                    total = sum(pss_kb(p) for p in pids) / 1024.0
                    me = pss_kb(os.getpid()) / 1024.0
                    workers = [p for p in pids if p != os.getpid()]
                    per = sorted(pss_kb(p) / 1024.0 for p in workers)
            finally:
                stop_drain()
                receiver.close()
                limiter.close()
                server.stop()
            out[f"{kind}_pss_mb"] = total
            print(f"  {kind:<10} pool of {w}: {ok}/{len(specs)} tasks ok in {time.perf_counter() - t0:.1f} s; total PSS "
                  f"{total:.0f} MB = this process {me:.0f} MB + {len(workers)} others "
                  f"(each {per[0]:.0f}-{per[-1]:.0f} MB{', incl. the forkserver' if kind == 'forkserver' else ''})",
                  flush=True)
    return out


# ================================================================================================
# driver


def extract_tree(rev: str) -> Path:
    """``git archive REV`` into a temporary folder (read-only git use: no worktree, no index change)."""
    d = Path(tempfile.mkdtemp(prefix=f"bench-before-{rev}-"))
    p = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev], capture_output=True)
    if p.returncode != 0:
        shutil.rmtree(d, ignore_errors=True)
        raise SystemExit(f"git archive {rev} failed: {p.stderr.decode(errors='replace')}")
    with tarfile.open(fileobj=io.BytesIO(p.stdout)) as tar:
        tar.extractall(d, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(d)
    return d


_PYCACHE: list[str] = []


def _pycache_dir() -> str:
    if not _PYCACHE:
        _PYCACHE.append(tempfile.mkdtemp(prefix="bench-pycache-"))
        atexit.register(shutil.rmtree, _PYCACHE[0], True)
    return _PYCACHE[0]


def run_section(label: str, tree: Path, section: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", section, "--tree", str(tree),
            "--n", str(args.n), "--workers", str(args.workers), "--repeat", str(args.repeat),
            "--records", str(args.records), "--tasks", str(args.tasks),
            "--memory-workers", str(args.memory_workers), *extra]
    if args.profile:
        argv.append("--profile")
    if args.no_experiments:
        argv.append("--no-experiments")
    # Bytecode is cached (in a folder of this run, not in the trees), as an installed package has
    # it: with PYTHONDONTWRITEBYTECODE every start-up would time the compiling of the modules it
    # imports lazily (~50-70 ms here). The first round compiles; best-of-N rounds read the cache.
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONPYCACHEPREFIX=_pycache_dir())
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    print(f"### {section} — {label} ({tree if label != 'after' else 'working tree'})", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-cwd-") as cwd:
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)
        result = None
        assert p.stdout is not None
        for line in p.stdout:
            if line.startswith(RESULT_TAG):
                result = json.loads(line[len(RESULT_TAG):])
            else:
                sys.stdout.write(line)
                sys.stdout.flush()
        p.wait()
    if p.returncode != 0 or result is None:
        print(f"  !! {section} ({label}) failed: exit {p.returncode}", flush=True)
        return {}
    return result


def fmt_ratio(before: float | None, after: float | None) -> str:
    if not before or not after or before < 0 or after < 0:
        return ""  # (a negative overhead is noise: no ratio means anything)
    return f"{before / after:.1f}x"


def summary(results: dict[str, dict[str, dict[str, Any]]], sections: list[str], args: argparse.Namespace) -> None:
    b, a = results.get("before", {}), results.get("after", {})

    def get(d: dict, sec: str, key: str) -> float | None:
        v = d.get(sec, {}).get(key)
        return float(v) if isinstance(v, (int, float)) else None

    rows = []
    if "startup" in sections:
        rows.append((f"startup, {args.tasks:,} tasks with snapshot + crash tail (s)", get(b, "startup", "startup_s"),
                     get(a, "startup", "startup_s"), "<= 0.5 s", TARGETS["startup"]))
        if get(a, "startup", "startup_cold_s") is not None:
            rows.append(("  the same, first run after the manifest changed (no manifest cache) (s)", None,
                         get(a, "startup", "startup_cold_s"), "", None))
    if "replay" in sections:
        rows.append((f"full replay, {args.records:,} records, no snapshot (s)", get(b, "replay", "replay_s"),
                     get(a, "replay", "replay_s"), "<= 2 s", TARGETS["replay"]))
        if get(a, "replay", "replay_now_s") is not None:
            rows.append((f"  the same task history as written today ({int(get(a, 'replay', 'records_now')):,} records) (s)",
                         None, get(a, "replay", "replay_now_s"), "", None))
    if "overhead" in sections:
        def ov(label: str, key: str, target: str = "", limit: float | None = None) -> None:
            rows.append((label, get(b, "overhead", key), get(a, "overhead", key), target, limit))

        ov(f"manager overhead per task, dispatch loops, (full with uploads kept - bare) / N, N = {args.n} (ms/task)",
           "overhead_ms", "<= 1 ms", TARGETS["overhead"])
        ov("  whole runs, set-up and wind-down included (ms/task)", "overhead_total_ms")
        ov("  a run's set-up and wind-down, once (s)", "fixed_s")
        ov("  the janitor's upload deletes, (full - full with uploads kept) / N (ms/task)", "janitor_ms")
        ov(f"full run, wall per task, N = {args.n}, {args.workers} workers (ms/task)", "full_ms")
        ov("  full run with uploads kept (ms/task)", "keep_ms")
        ov("  bare pool, `pool.map` (ms/task)", "bare_ms")
        if get(a, "overhead", "bare_window_ms") is not None:
            ov(f"  experiment: bare pool, at most {args.workers} tasks submitted, as the runner (ms/task)",
               "bare_window_ms")
        ov("manager thread CPU in the dispatch loop (ms/task)", "loop_cpu_ms")
        ov("manager thread CPU, whole run incl. set-up (ms/task)", "main_cpu_ms")
        ov("manager process CPU, every thread, in the dispatch loop, full run (ms/task)", "loop_proc_ms")
        ov("  the same, full run with uploads kept (ms/task)", "keep_loop_proc_ms")
        ov("  the same, the bare pool's process (ms/task)", "bare_loop_proc_ms")
        ov("journal records per task", "records_per_task")
        ov("fsyncs per task", "fsyncs_per_task")
    if "memory" in sections:
        rows.append((f"total PSS, manager + {args.memory_workers} workers, `run` on the sandbox (MB)", get(b, "memory", "run_pss_mb"),
                     get(a, "memory", "run_pss_mb"), "measured", None))
        rows.append((f"manager peak RSS, finished {args.tasks:,}-task batch (MB)", get(b, "memory", "finished_rss_mb"),
                     get(a, "memory", "finished_rss_mb"), "< 300 MB", 300.0))
        if get(a, "memory", "forkserver_pss_mb") is not None:
            rows.append((f"  experiment: pool of {args.memory_workers}, spawn (MB, after only)", None, get(a, "memory", "spawn_pss_mb"),
                         "", None))
            rows.append((f"  experiment: pool of {args.memory_workers}, forkserver + preload (MB)", None,
                         get(a, "memory", "forkserver_pss_mb"), "", None))
    print("\n## before / after (one run)\n")
    print(f"| figure | before ({BEFORE_REV}) | after | before/after | target | met |")
    print("|---|---|---|---|---|---|")
    for name, bv, av, target, limit in rows:
        met = "" if limit is None or av is None else ("yes" if av <= limit else "**no**")
        print(f"| {name} | {'' if bv is None else f'{bv:.3g}'} | {'' if av is None else f'{av:.3g}'} | "
              f"{fmt_ratio(bv, av)} | {target} | {met} |")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--section", default="all", help="all, or a comma-separated list of " + ", ".join(SECTIONS))
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every section")
    ap.add_argument("--n", type=int, default=None, help="tasks for the overhead section (200)")
    ap.add_argument("--workers", type=int, default=2, help="workers of the overhead section (2)")
    ap.add_argument("--memory-workers", type=int, default=8, help="workers of the memory section (8)")
    ap.add_argument("--repeat", type=int, default=None, help="rounds of overhead / startup / replay (2)")
    ap.add_argument("--records", type=int, default=None, help="records of the replay journal (1,000,001)")
    ap.add_argument("--tasks", type=int, default=None, help="tasks of the startup / memory batch (10,000)")
    ap.add_argument("--profile", action="store_true", help="print cProfile output")
    ap.add_argument("--before", default=BEFORE_REV, help=f"the 'before' commit ({BEFORE_REV})")
    ap.add_argument("--no-before", action="store_true", help="measure the working tree only")
    ap.add_argument("--no-experiments", action="store_true",
                    help="skip the experiments (a pool of spawned vs forkserver workers; a bare pool with the runner's in-flight window)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tree", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--journal", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--journal-now", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    quick = {"n": 40, "repeat": 1, "records": 100_001, "tasks": 2_000}
    full = {"n": 200, "repeat": 2, "records": 1_000_001, "tasks": 10_000}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.child:
        new_api = use_tree(args.tree)
        fn = {"startup": child_startup, "replay": child_replay, "overhead": child_overhead,
              "memory": child_memory}[args.child]
        emit(fn(args, new_api))
        return
    sections = list(SECTIONS) if args.section == "all" else [s.strip() for s in args.section.split(",")]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise SystemExit(f"unknown section(s) {bad}; choose from {SECTIONS}")
    header()
    print(f"# command: {' '.join([Path(sys.executable).name] + sys.argv)}", flush=True)
    t_all = time.perf_counter()
    trees: list[tuple[str, Path]] = [("after", REPO)]
    before = None
    results: dict[str, dict[str, dict[str, Any]]] = {"before": {}, "after": {}}
    try:
        if not args.no_before:
            before = extract_tree(args.before)
            trees.insert(0, ("before", before))
            print(f"# before: {args.before} extracted to {before} (git archive)", flush=True)
        for section in sections:
            print(f"\n## {section}", flush=True)
            extra: list[str] = []
            tmp = None
            if section == "replay":
                tmp = tempfile.mkdtemp(prefix="bench-replay-")
                path = Path(tmp) / "journal.jsonl"
                t0 = time.perf_counter()
                count = write_synthetic_journal(path, max(1, (args.records - 1) // 8))
                print(f"  synthetic journal: {count:,} records, {path.stat().st_size / 1e6:.0f} MB, written in "
                      f"{time.perf_counter() - t0:.1f} s", flush=True)
                now_path = Path(tmp) / "journal-now.jsonl"
                now_count = write_synthetic_journal(now_path, max(1, (args.records - 1) // 8), shape="now")
                print(f"  the same tasks as today's runner writes them: {now_count:,} records, "
                      f"{now_path.stat().st_size / 1e6:.0f} MB", flush=True)
                extra = ["--journal", str(path), "--journal-now", str(now_path)]
                args_records = args.records
                args.records = count
            try:
                for label, tree in trees:
                    results[label][section] = run_section(label, tree, section, args, extra)
            finally:
                if tmp:
                    args.records = args_records
                    shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if before is not None:
            shutil.rmtree(before, ignore_errors=True)
    summary(results, sections, args)
    print(f"\n# whole run {time.perf_counter() - t_all:.0f} s", flush=True)


if __name__ == "__main__":
    main()
