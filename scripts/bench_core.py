"""Core benchmarks (issue 2): runner overhead, journal replay, startup, manager memory.

    python scripts/bench_core.py                      # every section, about 2-3 minutes on 2 cores
    python scripts/bench_core.py --section overhead   # --n 200 --workers 2 --repeat 2
    python scripts/bench_core.py --section replay     # --records 1000000
    python scripts/bench_core.py --section startup    # --tasks 10000
    python scripts/bench_core.py --section memory     # --tasks 10000
    python scripts/bench_core.py --quick              # small sizes (40 tasks, 100k records, 2,000 tasks)

Sections (docs/BENCHMARKS.md explains each figure):

* ``overhead`` — N tasks through the full runner (``run_batch``: journal with fsync, events,
  progress in log mode, snapshots, in-process sandbox with ``processing_delay`` 0) against the
  same ``pipeline.run_task`` calls through a bare ``ProcessPoolExecutor.map`` (same
  ``init_worker``, same sandbox config, same shared rate limiter, no journal). Both variants
  run in this process, alternately, so the ratio is taken inside one noisy run.
* ``replay`` — a synthetic journal of ~1,000,000 records (batch_created, then per task:
  task_added, task_started, task_step x4, upload_finished, task_completed), written with
  ``journal.encode_record``; full replay without a snapshot.
* ``startup`` — a 10,000-task batch (10,000 hard-linked tiny videos, file checks on) whose
  journal has a snapshot, 9,000 tasks completed (outputs on disk), 20 in flight at a "crash"
  and the rest pending. A fresh child process times manifest load, ``BatchLog.open`` (snapshot
  + tail replay) and ``Runner.reconcile`` up to the point where the first task would be
  submitted.
* ``memory`` — peak RSS (``ru_maxrss`` of the child via ``os.wait4``) of (a) that startup child
  and (b) ``gsvr-batch run`` on the same batch with every task already completed (replay of a
  finished 10,000-task batch: load, replay, reconcile, 10,000 output stats, conclude).

Nothing here is a test; figures vary with the machine and its load.
"""

from __future__ import annotations

import argparse
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
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SAMPLE = REPO / "jobs" / "videos" / "lecture-01-introduction.mp4"
MODEL = "gemini-2.5-flash"


def header() -> None:
    print(f"# bench_core  {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}  Python {platform.python_version()}  "
          f"{platform.system()} {platform.machine()}  cpus={os.cpu_count()}", flush=True)


def write_video_manifest(root: Path, n: int, *, workers: int = 2, extra: str = "") -> Path:
    """n hard links of the tiny sample video and a YAML manifest for them (sandbox, huge limits)."""
    vids = root / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    src = vids / "sample.mp4"
    shutil.copyfile(SAMPLE, src)
    lines = []
    for i in range(n):
        p = vids / f"v{i:05d}.mp4"
        try:
            os.link(src, p)
        except OSError:
            shutil.copyfile(src, p)
        lines.append(f"  - source: videos/v{i:05d}.mp4")
    text = ("sandbox: true\n"
            "defaults:\n  template: summary_report\n  output_dir: out\n"
            # sandbox: true and no rpm/tpm/rpd: in sandbox mode only explicit limits apply, so the
            # shared limiter admits every call at once (it still runs: same code path as a real run)
            f"settings:\n  workers: {workers}\n  max_attempts: 3\n{extra}"
            "jobs:\n" + "\n".join(lines) + "\n")
    m = root / "manifest.yaml"
    m.write_text(text, encoding="utf-8")
    return m


# ------------------------------------------------------------------------------------------------
# 1. runner overhead


def _timed_journal() -> dict[str, float]:
    """Wrap JournalWriter.write / sync to add up the manager's time in journal I/O."""
    from gsvr_batch import journal as jr

    acc = {"write_s": 0.0, "sync_s": 0.0, "writes": 0, "fsyncs": 0}
    orig_write, orig_sync = jr.JournalWriter.write, jr.JournalWriter.sync

    def write(self, rec, *, durable=False):
        t0 = time.perf_counter()
        try:
            return orig_write(self, rec, durable=durable)
        finally:
            acc["write_s"] += time.perf_counter() - t0  # includes the fsync of durable records
            acc["writes"] += 1

    def sync(self):
        if self._dirty:
            acc["fsyncs"] += 1
        t0 = time.perf_counter()
        try:
            return orig_sync(self)
        finally:
            acc["sync_s"] += time.perf_counter() - t0

    jr.JournalWriter.write, jr.JournalWriter.sync = write, sync
    acc["_restore"] = lambda: (setattr(jr.JournalWriter, "write", orig_write),  # type: ignore[assignment]
                               setattr(jr.JournalWriter, "sync", orig_sync))
    return acc


def run_full(root: Path, n: int, workers: int) -> dict[str, float]:
    from gsvr_batch.journal import read_journal
    from gsvr_batch.runner import RunOptions, run_batch

    m = write_video_manifest(root, n, workers=workers)
    lines: list[str] = []
    acc = _timed_journal()
    t0 = time.perf_counter()
    try:
        res = run_batch(RunOptions(manifest=str(m), progress="quiet", sandbox=True, workers=workers, rpm=None,
                                  sandbox_options={"processing_delay": 0.0}),
                       echo=lines.append)
    finally:
        acc.pop("_restore")()
    wall = time.perf_counter() - t0
    recs = read_journal(res.journal).records
    done = [r for r in recs if r["type"] == "task_completed"]
    if res.exit_code != 0 or len(done) != n:
        raise SystemExit(f"full run failed: exit {res.exit_code}, {len(done)}/{n} completed: {res.message}")
    return {"wall": wall, "worker_sum": sum(float(r.get("elapsed") or 0) for r in done), "records": len(recs),
            **{k: v for k, v in acc.items()}}


def run_bare(root: Path, n: int, workers: int) -> dict[str, float]:
    """The same run_task calls through a bare pool: no journal, no events consumed, no progress."""
    import concurrent.futures as cf
    import multiprocessing

    from gsvr_batch.channels import EventReceiver
    from gsvr_batch.gemini import WorkerConfig
    from gsvr_batch.manifest import load_manifest
    from gsvr_batch.pipeline import init_worker, run_task
    from gsvr_batch.quota import Limits
    from gsvr_batch.ratelimit import RateLimiter
    from gsvr_batch.runner import SANDBOX_KEY_ENV
    from gsvr_batch.sandbox import SandboxConfig, SandboxServer
    from gsvr_batch.tasks import TaskSpec

    m = write_video_manifest(root, n, workers=workers)
    t0 = time.perf_counter()
    manifest = load_manifest(str(m))
    key = "sandbox-" + os.urandom(6).hex()
    os.environ[SANDBOX_KEY_ENV] = key
    server = SandboxServer(SandboxConfig(api_key=key, processing_delay=0.0))
    base_url = server.start()
    s = manifest.settings
    lim_path = str(root / "bare.ratelimit")  # the same shared limiter the runner gives its workers
    limiter = RateLimiter.create(lim_path, {MODEL: Limits(rpm=s.rpm, tpm=s.tpm, rpd=s.rpd, file_rpm=None)})
    wcfg = WorkerConfig(base_url=base_url, api_version=None, api_key_env=SANDBOX_KEY_ENV,
                        request_timeout=float(s.request_timeout), limiter_path=lim_path, backend="sandbox")
    # Workers send their events here. A unix datagram socket queues only net.unix.max_dgram_qlen
    # (often 10) datagrams and the workers' sends block when it is full, so even the bare
    # baseline must read them: a thread does, and throws them away.
    receiver = EventReceiver()
    stop_drain = threading.Event()

    def drain() -> None:
        while not stop_drain.is_set():
            select.select([receiver.fileno()], [], [], 0.05)
            receiver.drain()

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    specs = [TaskSpec(task_id=j.job_id, source=j.source, source_kind=j.source_kind, title=j.title,
                      template=j.template, params=dict(j.params), model=j.model, output_path=j.output_path,
                      output_root=str(manifest.output_root), output_format=j.output_format, attempt=1,
                      templates_dirs=tuple(str(p) for p in manifest.templates_dirs), reuse_upload=None,
                      keep_uploads=bool(s.keep_uploads), max_duration=s.max_duration, backend="sandbox")
             for j in manifest.jobs]
    try:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker,
                                    initargs=(wcfg, receiver.sender())) as pool:
            results = list(pool.map(run_task, specs))
    finally:
        stop_drain.set()
        drainer.join()
        receiver.close()
        limiter.close()
        server.stop()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r.ok]
    if len(ok) != n:
        raise SystemExit(f"bare run failed: {len(ok)}/{n} ok; first error: "
                         f"{next((r.error for r in results if not r.ok), None)}")
    return {"wall": wall, "worker_sum": sum(r.elapsed for r in results)}


def section_overhead(args) -> None:
    n, w = args.n, args.workers
    print(f"\n## overhead: {n} tasks, {w} workers, in-process sandbox (processing_delay 0), tiny local video",
          flush=True)
    full, bare = [], []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-bare-") as d:
            bare.append(run_bare(Path(d), n, w))
        with tempfile.TemporaryDirectory(prefix="bench-full-") as d:
            full.append(run_full(Path(d), n, w))
        b, f = bare[-1], full[-1]
        print(f"  round {i + 1}: bare {b['wall']:.2f} s ({b['wall'] / n * 1000:.1f} ms/task)  "
              f"full {f['wall']:.2f} s ({f['wall'] / n * 1000:.1f} ms/task)  ratio {f['wall'] / b['wall']:.2f}",
              flush=True)
    fb = min(bare, key=lambda r: r["wall"])
    ff = min(full, key=lambda r: r["wall"])
    # Manager overhead with worker time subtracted: wall time not explained by the workers'
    # own task time spread over the pool (pool start-up + dispatch + result handling).
    gap_b = fb["wall"] - fb["worker_sum"] / w
    gap_f = ff["wall"] - ff["worker_sum"] / w
    print(f"  best bare : {fb['wall']:.2f} s = {fb['wall'] / n * 1000:.1f} ms/task; worker time "
          f"{fb['worker_sum'] / n * 1000:.1f} ms/task; wall not covered by workers {gap_b / n * 1000:.1f} ms/task")
    print(f"  best full : {ff['wall']:.2f} s = {ff['wall'] / n * 1000:.1f} ms/task; worker time "
          f"{ff['worker_sum'] / n * 1000:.1f} ms/task; wall not covered by workers {gap_f / n * 1000:.1f} ms/task")
    print(f"  RATIO full/bare (best of {args.repeat}): {ff['wall'] / fb['wall']:.2f}; "
          f"extra wall {(ff['wall'] - fb['wall']) / n * 1000:.1f} ms/task; "
          f"manager overhead with worker time subtracted {(gap_f - gap_b) / n * 1000:.1f} ms/task")
    print(f"  journal (full run): {ff['records']} records ({ff['records'] / n:.1f}/task), {ff['fsyncs']} fsyncs, "
          f"append+fsync time {ff['write_s'] / n * 1000:.2f} ms/task, of which explicit syncs "
          f"{ff['sync_s'] / n * 1000:.2f} ms/task", flush=True)


# ------------------------------------------------------------------------------------------------
# 2a. replay of a synthetic 1M-record journal

STEPS = ("resolving", "uploading", "processing", "generating")


def write_synthetic_journal(path: Path, n_tasks: int, root: str = "/data/out") -> int:
    """batch_created + 8 records per task, in order per task. Returns the record count."""
    from gsvr_batch.journal import encode_record

    seq = 0
    ts = "2026-11-28T12:00:00.000Z"

    def rec(type_: str, **f) -> bytes:
        nonlocal seq
        seq += 1
        return encode_record({"seq": seq, "ts": ts, "type": type_, **f})

    with open(path, "wb") as fh:
        fh.write(rec("batch_created", batch_id="bench0000001", manifest="/data/manifest.yaml",
                     manifest_identity="bench-identity", manifest_hash="0" * 64,
                     settings={"workers": 2, "rpm": 10}, version="bench"))
        buf = []
        for i in range(n_tasks):
            tid = f"{i:016x}"
            out = f"{root}/lecture-{i:06d}_summary_report.md"
            buf.append(rec("task_added", task_id=tid, source=f"/data/videos/lecture-{i:06d}.mp4",
                           source_kind="local", title=f"Lecture {i}", template="summary_report", model=MODEL,
                           output=out, output_format="md", origin=f"/data/manifest.yaml:{i + 5}"))
            buf.append(rec("task_started", task_id=tid, attempt=1, worker=None))
            for st in STEPS:
                buf.append(rec("task_step", task_id=tid, step=st))
            buf.append(rec("upload_finished", task_id=tid, upload={
                "name": f"files/{i:012x}", "uri": f"https://generativelanguage.googleapis.com/v1beta/files/{i:012x}",
                "mime_type": "video/mp4", "expires_at": "2026-11-30T12:00:00Z", "size_bytes": 51237,
                "source_sha256": f"{i:064x}"}))
            buf.append(rec("task_completed", task_id=tid, output=out, sha256=f"{i:064x}", bytes=2048,
                           usage={"prompt_token_count": 180000, "candidates_token_count": 1500,
                                  "total_token_count": 181500},
                           cost_usd=0.0577, model_version="gemini-2.5-flash-001", video_duration=600.0,
                           elapsed=41.2))
            if len(buf) >= 8000:
                fh.write(b"".join(buf))
                buf.clear()
        fh.write(b"".join(buf))
    return seq


def section_replay(args) -> None:
    from gsvr_batch import journal as jr
    from gsvr_batch.lifecycle import replay
    from gsvr_batch.state import BatchState, apply

    n_tasks = max(1, (args.records - 1) // 8)
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as d:
        path = Path(d) / "journal.jsonl"
        t0 = time.perf_counter()
        count = write_synthetic_journal(path, n_tasks)
        t_write = time.perf_counter() - t0
        size = path.stat().st_size
        print(f"\n## replay: {count:,} records ({n_tasks:,} tasks), {size / 1e6:.0f} MB; "
              f"written in {t_write:.1f} s", flush=True)
        t0 = time.perf_counter()
        n = sum(1 for _ in jr.iter_records(path, expect_seq=1))
        t_decode = time.perf_counter() - t0
        t0 = time.perf_counter()
        rp = replay(path, use_snapshot=False)
        t_replay = time.perf_counter() - t0
        assert rp.records_read == count == n and rp.state.counts()["completed"] == n_tasks
        recs = [r for _, _, r in jr.iter_records(path)]
        t0 = time.perf_counter()
        st = BatchState()
        for r in recs:
            apply(st, r)
        t_fold = time.perf_counter() - t0
        del recs
        print(f"  full replay (no snapshot): {t_replay:.2f} s = {t_replay / count * 1e6:.2f} us/record "
              f"({count / t_replay / 1e6:.2f} M records/s)")
        print(f"    of which read+CRC+JSON decode ~{t_decode:.2f} s, fold (state.apply) ~{t_fold:.2f} s", flush=True)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            replay(path, use_snapshot=False)
            prof.disable()
            _print_profile(prof)


def _print_profile(prof: cProfile.Profile, n: int = 10, sort: str = "tottime") -> None:
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats(sort).print_stats(n)
    print("\n".join("    " + ln for ln in s.getvalue().splitlines() if ln.strip()))


# ------------------------------------------------------------------------------------------------
# 2b. startup of a 10,000-task batch with a snapshot; 3. peak RSS

COMPLETED_FRACTION = 0.5
IN_FLIGHT = 20


def build_startup_batch(root: Path, n: int, *, all_done: bool = False) -> Path:
    """A 10k-task batch with a realistic journal (written through BatchLog, fsync off for speed)."""
    from gsvr_batch.manifest import load_manifest
    from gsvr_batch.runner import resolve_journal

    m = write_video_manifest(root, n)
    manifest = load_manifest(str(m))
    jpath = resolve_journal(None, manifest)
    real_fsync = os.fsync
    os.fsync = lambda fd: None  # setup only (restored below): durability is not what is measured here
    try:
        return _build_journal(m, manifest, jpath, n, all_done)
    finally:
        os.fsync = real_fsync


def _build_journal(m: Path, manifest, jpath: Path, n: int, all_done: bool) -> Path:
    from gsvr_batch.lifecycle import BatchLog
    from gsvr_batch.runner import RunOptions, Runner

    blog, _ = BatchLog.open(jpath)
    runner = Runner(RunOptions(manifest=str(m)), manifest, blog, echo=lambda s: None)
    runner.reconcile()
    n_done = n if all_done else int(n * COMPLETED_FRACTION)
    out_root = Path(manifest.output_root)
    out_root.mkdir(parents=True, exist_ok=True)
    body = b"# lesson\n" * 200
    for i, tid in enumerate(runner.order[:n_done]):
        blog.start_task(tid)
        for stp in STEPS:
            blog.step(tid, stp)
        blog.upload_finished(tid, {"name": f"files/{i:012x}", "uri": f"http://127.0.0.1/v1beta/files/{i:012x}",
                                   "mime_type": "video/mp4", "expires_at": "2099-01-01T00:00:00Z",
                                   "size_bytes": 51237, "source_sha256": "ab" * 32})
        out = runner.jobs[tid].output_path
        Path(out).write_bytes(body)
        blog.complete_task(tid, output=out, sha256="cd" * 32, bytes_=len(body),
                           usage={"prompt_token_count": 1000, "candidates_token_count": 100}, cost_usd=0.001,
                           model_version=MODEL, video_duration=3.0, elapsed=1.0)
        # no maybe_snapshot() here: one snapshot every 10 completions is quadratic in setup time
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
    return m


CHILD_STARTUP = r"""
import json, os, sys, time
t_start = time.perf_counter()
sys.path.insert(0, sys.argv[2])
from collections import deque
from gsvr_batch.lifecycle import BatchLog
from gsvr_batch.manifest import load_manifest
from gsvr_batch.runner import RunOptions, Runner, resolve_journal
from gsvr_batch.state import TaskStatus
t_imp = time.perf_counter()
m = sys.argv[1]
opts = RunOptions(manifest=m)
manifest = load_manifest(m, opts.overrides())
t_man = time.perf_counter()
blog, rp = BatchLog.open(resolve_journal(None, manifest))
t_open = time.perf_counter()
runner = Runner(opts, manifest, blog, echo=lambda s: None)
prof = None
if len(sys.argv) > 3:
    import cProfile
    prof = cProfile.Profile(); prof.enable()
runner.reconcile()
pending = deque(t for t in runner.order if runner.state.tasks[t].status is TaskStatus.PENDING)
t_rec = time.perf_counter()
if prof:
    prof.disable(); prof.dump_stats(sys.argv[3])
t0 = time.perf_counter()
blog.maybe_snapshot(force=True)  # what a running manager pays every 10 completions at this size
t_snap = time.perf_counter() - t0
blog.close()
hwm = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) / 1024.0
print(json.dumps({"vmhwm_mb": hwm, "snapshot": t_snap, "imports": t_imp - t_start, "manifest": t_man - t_imp, "open": t_open - t_man,
                  "reconcile": t_rec - t_open, "total_after_imports": t_rec - t_imp,
                  "used_snapshot": rp.used_snapshot, "tail_records": rp.records_read, "pending": len(pending),
                  "tasks": len(runner.state.tasks)}))
"""


# Peak RSS is read inside the child from /proc/self/status VmHWM. Not ru_maxrss from wait4:
# Linux folds the pre-exec address space (a copy of this big benchmark process) into the child's
# ru_maxrss, which reported 257 MB for a process that only imports the package.
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
    assert argv[0] == sys.executable
    rest = argv[1:]
    if rest[0] == "-m":
        rest = rest[1:]
    p = subprocess.run([sys.executable, "-c", HWM_WRAPPER, *rest], capture_output=True, text=True, env=env,
                       stdin=subprocess.DEVNULL)
    if p.returncode not in (0, 1):
        print(p.stderr[-3000:], file=sys.stderr)
    kb = [ln.split()[1] for ln in p.stderr.splitlines() if ln.startswith("BENCH_VMHWM_KB ")]
    return p.returncode, p.stdout, (int(kb[-1]) / 1024.0 if kb else float("nan"))


def section_startup(args, *, rss_only: bool = False) -> None:
    n = args.tasks
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as d:
        root = Path(d)
        t0 = time.perf_counter()
        m = build_startup_batch(root, n)
        jpath = root / "out" / ".gsvr" / "journal.jsonl"
        size = jpath.stat().st_size
        print(f"\n## startup: {n:,} tasks ({int(n * COMPLETED_FRACTION):,} completed with outputs on disk, "
              f"{IN_FLIGHT} in flight at a crash, rest pending); journal {size / 1e6:.1f} MB with snapshot; "
              f"built in {time.perf_counter() - t0:.1f} s", flush=True)
        saved = root / "saved"
        shutil.copytree(jpath.parent, saved)
        runs = []
        for _ in range(1 if rss_only else args.repeat):
            shutil.rmtree(jpath.parent)
            shutil.copytree(saved, jpath.parent)  # every measurement recovers the same crash
            code, out, rss = run_child_rss([sys.executable, "-c", CHILD_STARTUP, str(m), str(REPO)])
            if code != 0:
                raise SystemExit(f"startup child failed ({code})")
            runs.append((json.loads(out.strip().splitlines()[-1]), rss))
        if not rss_only:
            best = min(runs, key=lambda r: r[0]["total_after_imports"])[0]
            print(f"  manifest load ({n:,} jobs, file checks on): {best['manifest']:.3f} s")
            print(f"  BatchLog.open (snapshot + {best['tail_records']} tail records): {best['open']:.3f} s "
                  f"(snapshot used: {best['used_snapshot']})")
            print(f"  reconcile (run_started, requeue {IN_FLIGHT}, {int(n * COMPLETED_FRACTION):,} output stats) "
                  f"+ pending queue: {best['reconcile']:.3f} s  -> {best['pending']:,} pending")
            print(f"  STARTUP (load + replay + reconcile, best of {len(runs)}): {best['total_after_imports']:.3f} s; "
                  f"imports before that {best['imports']:.3f} s", flush=True)
            print(f"  (not startup: one forced snapshot of this {n:,}-task state took {best['snapshot']:.3f} s; "
                  f"the manager writes one every 10 completions)", flush=True)
            from gsvr_batch.manifest import load_manifest

            t0 = time.perf_counter()
            load_manifest(str(m), check_files=False)
            print(f"  (manifest load with check_files=False, in this process: {time.perf_counter() - t0:.3f} s)")
            if args.profile:
                shutil.rmtree(jpath.parent)
                shutil.copytree(saved, jpath.parent)
                pf = root / "reconcile.prof"
                run_child_rss([sys.executable, "-c", CHILD_STARTUP, str(m), str(REPO), str(pf)])
                s = io.StringIO()
                pstats.Stats(str(pf), stream=s).sort_stats("cumulative").print_stats(12)
                print("  reconcile profile:\n" + "\n".join("    " + ln for ln in s.getvalue().splitlines()
                                                            if ln.strip()))
                prof = cProfile.Profile()
                prof.enable()
                load_manifest(str(m))
                prof.disable()
                print("  manifest load profile (top 10 by own time):")
                _print_profile(prof)
                print("  manifest load profile (top 10 by cumulative time):")
                _print_profile(prof, sort="cumulative")
                from gsvr_batch.lifecycle import BatchLog
                from gsvr_batch.runner import resolve_journal

                blog, _ = BatchLog.open(resolve_journal(None, load_manifest(str(m))))
                try:
                    blog._records_since_snapshot = 1  # force=True skips a state with nothing new
                    prof = cProfile.Profile()
                    prof.enable()
                    blog.maybe_snapshot(force=True)
                    prof.disable()
                finally:
                    blog.close()
                print(f"  snapshot profile ({n:,} tasks, top 10 by own time):")
                _print_profile(prof)
        print(f"  peak RSS of the startup child (load + replay + reconcile of {n:,} tasks): {runs[0][1]:.0f} MB",
              flush=True)


def section_rss(args, *, startup_done: bool = False) -> None:
    n = args.tasks
    if not startup_done:  # --section all printed the startup child's peak RSS already
        section_startup(args, rss_only=True)
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as d:
        root = Path(d)
        m = build_startup_batch(root, n, all_done=True)
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        argv = [sys.executable, "-m", "gsvr_batch", "run", str(m), "--progress", "log"]
        t0 = time.perf_counter()
        code, out, rss = run_child_rss(argv, env)
        wall = time.perf_counter() - t0
        print(f"\n## memory: `gsvr-batch run` of a finished {n:,}-task batch (all completed in the journal, outputs "
              f"on disk): exit {code}, {wall:.2f} s wall, manager peak RSS {rss:.0f} MB", flush=True)
        code, out, rss0 = run_child_rss([sys.executable, "-c", "import gsvr_batch.runner, gsvr_batch.manifest"], env)
        print(f"  (baseline: a Python process that only imports the runner + manifest modules: {rss0:.0f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--section", choices=("all", "overhead", "replay", "startup", "memory", "rss"), default="all")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every section")
    ap.add_argument("--n", type=int, default=None, help="tasks for the overhead section (200)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=None, help="rounds of overhead / startup (2)")
    ap.add_argument("--records", type=int, default=None, help="records of the replay journal (1,000,001)")
    ap.add_argument("--tasks", type=int, default=None, help="tasks of the startup / memory batch (10,000)")
    ap.add_argument("--profile", action="store_true", help="print cProfile output for replay/startup")
    args = ap.parse_args()
    if args.section == "rss":
        args.section = "memory"  # old name
    quick = {"n": 40, "repeat": 1, "records": 100_001, "tasks": 2_000}
    full = {"n": 200, "repeat": 2, "records": 1_000_001, "tasks": 10_000}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    header()
    print(f"# command: {' '.join([Path(sys.executable).name] + sys.argv)}", flush=True)
    if args.section in ("all", "overhead"):
        section_overhead(args)
    if args.section in ("all", "replay"):
        section_replay(args)
    if args.section in ("all", "startup"):
        section_startup(args)
    if args.section in ("all", "memory"):
        section_rss(args, startup_done=args.section == "all")


if __name__ == "__main__":
    main()
