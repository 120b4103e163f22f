#!/usr/bin/env python3
"""A lecture of nearly 2 GB through gsvr-batch, offline: the figures in docs/RELIABILITY.md ("Real size").

    python scripts/big_file_demo.py                  # about a minute; prints a Markdown table
    python scripts/big_file_demo.py --gb 1.5 --keep /tmp/big

What it does, all real: makes a valid MP4 just under the Files API's 2 GB limit (a real short video
followed by an MP4 ``free`` box of zeros, sparse on disk, so it costs no disk space here), then
runs ``python -m gsvr_batch run`` on two manifests against the built-in sandbox (``sandbox: true``;
the sandbox really receives and stores every byte, in 8 MiB chunks):

* **one video, three templates** (3 workers): one upload serves all three tasks;
* **the video and a copy under another name** (2 workers, both would start at once): the copy
  waits for its twin's upload, hashes its own bytes and reuses it.

Reported per run, from the journal: uploads, bytes uploaded, tasks completed, cached input tokens
(the sandbox's implicit cache of a repeated video prefix) and the cost as the real API would bill
it; from ``/proc``: the peak resident memory of every process of the run (sampled every 0.1 s,
each process's own high-water mark), so reading a 2 GB file shows up if it is ever held in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from procfs import process_group  # noqa: E402

SAMPLE = REPO / "jobs" / "videos" / "lecture-01-introduction.mp4"


def make_big_mp4(path: Path, size: int) -> None:
    """A real MP4 grown to ``size`` bytes by a trailing ``free`` box (sparse: no disk space used)."""
    shutil.copyfile(SAMPLE, path)
    box = size - path.stat().st_size
    if not 8 <= box < 2**32:
        raise SystemExit(f"--gb gives a free box of {box} bytes; it must fit in 32 bits")
    with open(path, "ab") as fh:
        fh.write(box.to_bytes(4, "big") + b"free")
    os.truncate(path, size)


def high_water_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def run(folder: Path, manifest: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "gsvr_batch", "run", str(manifest), "--progress", "log"],
                         cwd=folder, env=env, start_new_session=True, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, int] = {}
    while p.poll() is None:
        for pid in process_group(p.pid):
            kb = high_water_kb(pid)
            if kb is not None:
                peaks[pid] = max(peaks.get(pid, 0), kb)
        time.sleep(0.1)
    out = p.stdout.read() if p.stdout else ""
    wall = time.monotonic() - t0
    journal = folder / "out" / manifest.stem / ".gsvr" / "journal.jsonl"
    recs = [json.loads(line) for line in journal.read_text(encoding="utf-8").splitlines()]
    ups = [r["upload"] for r in recs if r["type"] == "upload_finished"]
    done = [r for r in recs if r["type"] == "task_completed"]
    return {"exit": p.returncode, "wall_s": wall, "uploads": len(ups),
            "uploaded_gb": sum(int(u.get("size_bytes") or 0) for u in ups) / 1e9,
            "completed": len(done), "cached_tokens": sum(int(r["usage"].get("cached_tokens") or 0) for r in done),
            "cost_usd": sum(float(r.get("cost_usd") or 0) for r in done),
            "peak_mb_max": max(peaks.values(), default=0) / 1024, "peak_mb_sum": sum(peaks.values()) / 1024,
            "processes": len(peaks), "tail": out[-1500:]}


def manifest(folder: Path, name: str, workers: int, jobs: list[tuple[str, str]]) -> Path:
    lines = ["sandbox: true", "defaults:", f"  output_dir: out/{name}", "settings:", f"  workers: {workers}", "jobs:"]
    for source, template in jobs:
        lines += [f"  - source: videos/{source}", f"    template: {template}"]
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=1.95, help="size of the video in GB (10^9 bytes), below 2 (1.95)")
    ap.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it (default: a temp folder)")
    args = ap.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="gsvr-big-"))
    try:
        (folder / "videos").mkdir(parents=True, exist_ok=True)
        size = int(args.gb * 1e9)
        big = folder / "videos" / "lecture-big.mp4"
        make_big_mp4(big, size)
        make_big_mp4(folder / "videos" / "lecture-big-copy.mp4", size)  # the same bytes, sparse too
        runs = {
            "one video, three templates": manifest(folder, "three-templates", 3, [
                ("lecture-big.mp4", "comprehensive_lesson"), ("lecture-big.mp4", "summary_report"),
                ("lecture-big.mp4", "chinese_transcript")]),
            "the video and a copy under another name": manifest(folder, "copy", 2, [
                ("lecture-big.mp4", "summary_report"), ("lecture-big-copy.mp4", "summary_report")]),
        }
        print(f"video: {size:,} bytes (a real MP4 + a sparse free box), {sys.platform}, {os.cpu_count()} cores\n")
        print("| run | exit | tasks completed | uploads | GB uploaded | cached input tokens | cost as billed (USD) "
              "| wall (s) | peak RSS, largest process (MB) | peak RSS, all processes (MB) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        ok = True
        for label, path in runs.items():
            r = run(folder, path)
            ok &= r["exit"] == 0
            print(f"| {label} | {r['exit']} | {r['completed']} | {r['uploads']} | {r['uploaded_gb']:.2f} | "
                  f"{r['cached_tokens']:,} | {r['cost_usd']:.4f} | {r['wall_s']:.1f} | {r['peak_mb_max']:.0f} | "
                  f"{r['peak_mb_sum']:.0f} ({r['processes']} processes) |", flush=True)
            if r["exit"] != 0:
                print(r["tail"], file=sys.stderr)
        return 0 if ok else 1
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
