#!/usr/bin/env python3
"""Benchmark the shared rate limiter with real worker processes (no API traffic).

    python scripts/bench_ratelimit.py --workers 8 --rpm 120 --seconds 65

Spawns ``--workers`` processes (spawn start method, as the runner does) that call
``acquire("generate", model)`` as fast as they are allowed for ``--seconds`` and prints:
admissions per worker, the achieved rate against the configured one (target ≥ 0.97),
the largest count in any 60 s and any 1 s window (bounds: rpm, ceil(rpm/60)+1), the
smallest gap between admissions, and how long ``acquire`` calls took.

The lead will add a ``--sandbox`` mode that sends each admitted request to the sandbox
server and counts 429s there; this skeleton measures the limiter alone.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gsvr_batch.ratelimit import Limits, RateLimiter  # noqa: E402

MODEL = "gemini-2.5-flash"


def hammer(path: str, seconds: float, start_at: float) -> list[tuple[float, float]]:
    """(time admitted, seconds spent in acquire) for each admission of one worker."""
    rl = RateLimiter.attach(path)
    out = []
    while time.monotonic() < start_at:
        time.sleep(0.01)
    end = start_at + seconds
    while True:
        t0 = time.monotonic()
        if t0 >= end:
            break
        rl.acquire("generate", MODEL)
        t1 = time.monotonic()
        out.append((t1, t1 - t0))
    rl.close()
    return out


def max_in_window(times: list[float], length: float) -> int:
    best, j = 0, 0
    for i in range(len(times)):
        while times[i] - times[j] >= length:
            j += 1
        best = max(best, i - j + 1)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--rpm", type=float, default=120)
    ap.add_argument("--seconds", type=float, default=65)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "bench.ratelimit")
        rl = RateLimiter.create(path, {MODEL: Limits(rpm=args.rpm, tpm=None, rpd=None)})
        start_at = time.monotonic() + 1.0 + 0.2 * args.workers  # let every worker start
        with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(hammer, path, args.seconds, start_at) for _ in range(args.workers)]
            results = [f.result() for f in futures]
        ring = rl.admission_times(MODEL)
        rl.close()

    logged = sorted(t for r in results for t, _ in r)
    waits = sorted(w for r in results for _, w in r)
    total = len(logged)
    achieved = total / args.seconds * 60
    print(f"workers={args.workers} rpm={args.rpm:g} seconds={args.seconds:g}")
    print(f"admissions: {total} ({', '.join(str(len(r)) for r in results)} per worker)")
    print(f"achieved rate: {achieved:.1f}/min = {achieved / args.rpm:.3f} of configured")
    if args.seconds >= 60:
        # Workers' clocks (read after acquire returns, so a little noisy).
        print(f"max in any 60 s window: {max_in_window(logged, 60.0)} (bound {args.rpm:g})")
    # The ring keeps the limiter's own decision times, but only for the last window.
    print(f"max in any 1 s window (last window): {max_in_window(ring, 1.0)} (bound {math.ceil(args.rpm / 60) + 1})")
    gaps = [b - a for a, b in zip(ring, ring[1:])]
    if gaps:
        print(f"min gap: {min(gaps) * 1000:.1f} ms (pacing {60_000 / args.rpm:.1f} ms)")
    if waits:
        print(f"acquire: median {waits[len(waits) // 2] * 1000:.1f} ms, max {waits[-1] * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
