"""The limiter across real processes: shared limits, kill -9 inside the lock, shared hold.

Admission times are checked on the limiter's own ring (the clock readings taken under the
lock, the times the decision was made), which every process writes into; the worker
processes also log what they were admitted, to show the ring holds all of them.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone

import pytest

from gsvr_batch.ratelimit import TEST_HOLD_ENV, Limits, RateLimiter

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

M = "gemini-2.5-flash"

WORKER = textwrap.dedent("""
    import sys, time
    from gsvr_batch.ratelimit import RateLimiter

    path, out, mode, arg = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    rl = RateLimiter.attach(path)
    with open(out, "a", buffering=1) as fh:
        fh.write("ready\\n")
        if mode == "hammer":          # acquire as fast as allowed for `arg` seconds
            end = time.monotonic() + arg
            while time.monotonic() < end:
                rl.acquire("generate", "%s")
                fh.write(f"A {time.monotonic()!r}\\n")
        elif mode == "rate_limited":  # after `arg` seconds report a 429 with retryDelay 2 s
            time.sleep(arg)
            now = time.monotonic()
            rl.record_rate_limited("generate", "%s", 2.0, now=now)
            fh.write(f"R {now!r}\\n")
    rl.close()
""" % (M, M))


@pytest.fixture
def worker_script(tmp_path):
    script = tmp_path / "rl_worker.py"
    script.write_text(WORKER)
    return script


def spawn(script, path, out, mode, arg, env_extra=None):
    env = dict(os.environ)
    env.pop(TEST_HOLD_ENV, None)
    env.update(env_extra or {})
    return subprocess.Popen([sys.executable, str(script), str(path), str(out), mode, str(arg)], env=env)


def logged(out, tag="A"):
    if not out.exists():
        return []
    return [float(line.split()[1]) for line in out.read_text().splitlines() if line.startswith(tag + " ")]


def wait_for(predicate, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def create(tmp_path, rpm):
    path = tmp_path / "journal.jsonl.ratelimit"
    rl = RateLimiter.create(path, {M: Limits(rpm=rpm, tpm=None, rpd=None)}, {M: 0},
                            wall=datetime.now(timezone.utc), now=time.monotonic())
    return path, rl


def max_in_window(times, length):
    best, j = 0, 0
    for i in range(len(times)):
        while times[i] - times[j] >= length:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_four_processes_share_one_limit(tmp_path, worker_script):
    rpm = 120  # 2 per second
    path, rl = create(tmp_path, rpm)
    outs = [tmp_path / f"w{i}.log" for i in range(4)]
    procs = [spawn(worker_script, path, out, "hammer", 2.5) for out in outs]
    for p in procs:
        assert p.wait(timeout=30) == 0
    ring = rl.admission_times(M)
    per_process = [logged(out) for out in outs]
    total = sum(len(x) for x in per_process)
    # Every admission of every process went into the one shared ring.
    assert total == len(ring) == rl.snapshot()["rpd"][M]["used"]
    assert total >= 2
    assert len(ring) <= rpm  # the run is shorter than a window: its total is the bound
    # Pacing across processes: 60/rpm s apart, so at most ceil(rpm/60)+1 in any second.
    gaps = [b - a for a, b in zip(ring, ring[1:])]
    assert min(gaps) >= 60 / rpm - 1e-9
    assert max_in_window(ring, 1.0) <= math.ceil(rpm / 60) + 1
    rl.close()


def test_kill_9_inside_the_lock_does_not_stop_the_others(tmp_path, worker_script):
    path, rl = create(tmp_path, 600)
    outs = [tmp_path / f"w{i}.log" for i in range(3)]
    procs = [spawn(worker_script, path, out, "hammer", 3.0) for out in outs]
    try:
        assert wait_for(lambda: sum(len(logged(o)) for o in outs) >= 3, 10), "workers never admitted"
        marker = tmp_path / "holding"
        holder = spawn(worker_script, path, tmp_path / "holder.log", "hammer", 4.0,
                       {TEST_HOLD_ENV: str(marker)})
        assert wait_for(marker.exists, 10), "holder never took the lock"
        held_from = time.monotonic()
        time.sleep(0.5)
        held_to = time.monotonic()
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=10) == -signal.SIGKILL
        killed_at = time.monotonic()
        assert wait_for(lambda: any(t > killed_at for t in rl.admission_times(M)), 5), \
            "no admission after the lock holder was killed"
        for p in procs:
            assert p.wait(timeout=30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    ring = rl.admission_times(M)
    # While the killed process sat in the critical section nobody was admitted...
    assert not [t for t in ring if held_from <= t <= held_to]
    # ...and afterwards the others carried on.
    after = [t for t in ring if t > killed_at]
    assert after and after[0] - killed_at < 3.0
    assert logged(tmp_path / "holder.log") == []
    rl.close()


def test_rate_limited_in_one_process_holds_all(tmp_path, worker_script):
    path, rl = create(tmp_path, 600)
    outs = [tmp_path / f"w{i}.log" for i in range(3)]
    # hammer well past the 2 s hold: on a loaded machine the processes start late
    procs = [spawn(worker_script, path, out, "hammer", 4.5) for out in outs]
    reporter_out = tmp_path / "reporter.log"
    procs.append(spawn(worker_script, path, reporter_out, "rate_limited", 0.8))
    for p in procs:
        assert p.wait(timeout=30) == 0
    (t429,) = logged(reporter_out, "R")
    ring = rl.admission_times(M)
    assert [t for t in ring if t < t429], "nobody was admitted before the 429"
    assert not [t for t in ring if t429 <= t < t429 + 2.0]
    assert [t for t in ring if t >= t429 + 2.0], "nobody was admitted after the hold"
    snap = rl.snapshot()
    bucket = next(b for b in snap["buckets"] if b["model"] == M and b["kind"] == "rpm")
    assert bucket["factor"] == pytest.approx(0.7) and bucket["rate_limited"] == 1
    rl.close()
