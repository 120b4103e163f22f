"""The shared limiter over real HTTP: the sandbox enforces the limit, real worker processes run.

Two kinds of evidence, on purpose: the server's own view (its request log and its 429s — the
judge a user cares about) and the limiter's admission ring (the times the workers' limiter decided
under its lock, read back from ``<journal>.ratelimit``). Exact properties are checked on the ring;
the server's wall-clock times are only used with margins of a second, noted where they are.
"""

from __future__ import annotations

import pytest

from conftest import env_for, journal_of, make_batch, run_cli

pytestmark = pytest.mark.slow

M = "gemini-2.5-flash"


def generates(server) -> list[dict]:
    return [r for r in server.requests if r.get("kind") == "generate"]


def max_in_window(times: list[float], length: float) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i in range(len(times)):
        while times[i] - times[j] >= length:
            j += 1
        best = max(best, i - j + 1)
    return best


def ring(tmp_path):
    from gsvr_batch.ratelimit import RateLimiter

    rl = RateLimiter.attach(str(journal_of(tmp_path)) + ".ratelimit")
    try:
        return rl, rl.admission_times(M)
    except Exception:
        rl.close()
        raise


def test_matching_limits_give_zero_429s_with_more_requests_than_the_limit(tmp_path, sandbox):
    """35 generate requests through 4 workers against a server that refuses the 31st request in any
    60 s window. Without a working shared limiter (none at all, or one per process) the server
    answers 429 within seconds; with it, the run takes just over a minute and gets none. (A test
    cannot show this with fewer requests than the limit: that is why it takes a minute.)

    The limit is low on purpose: at 30 a minute each worker has 8 s per task to keep the limiter
    the binding constraint, so a loaded CI host cannot turn the workers into the bottleneck (at 120
    a minute it once did: 69 requests in the busiest minute, and the test then proves nothing)."""
    rpm, n = 30, 35
    server = sandbox(rpm=rpm)
    m = make_batch(tmp_path, n, extra_settings=f"workers: 4\nrpm: {rpm}")
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server), timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    gens = generates(server)
    assert len(gens) == n > rpm
    assert [g for g in gens if g["status"] != 200] == []  # not one 429
    arrivals = [g["ts"] for g in gens]
    # The server's view: no 60 s window over the limit, and the limit was really approached (the
    # limiter's window is 61.2 s, so 29 fit in 60 s): the test ran against the limit, not below it.
    assert rpm - 5 <= max_in_window(arrivals, 60.0) <= rpm
    # The limiter's own decisions: paced 60/rpm s apart (exact: clock readings under its lock).
    rl, admitted = ring(tmp_path)
    rl.close()
    assert len(admitted) >= rpm  # the ring holds (at least) the last window's admissions
    gaps = [b - a for a, b in zip(admitted, admitted[1:])]
    assert min(gaps) >= 60 / rpm - 1e-9


def test_a_429_with_retry_delay_holds_every_worker(tmp_path, sandbox):
    server = sandbox(latency=0.2)
    m = make_batch(tmp_path, 8, extra_settings="workers: 4")
    server.inject_429(1, retry_delay=3.0)  # the first generate call is refused with RetryInfo 3 s
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    gens = generates(server)
    assert sum(g["status"] == 200 for g in gens) == 8
    # The limiter's view (exact): no admission at all while the hold lasted. The hold's end is the
    # monotonic time the worker that got the 429 wrote (snapshot(now=0) reports it as "remaining").
    rl, admitted = ring(tmp_path)
    try:
        bucket = next(b for b in rl.snapshot(now=0.0)["buckets"] if b["model"] == M and b["kind"] == "rpm")
    finally:
        rl.close()
    hold_end = bucket["hold_remaining"]
    assert bucket["rate_limited"] == 1 and hold_end > 0
    assert [t for t in admitted if hold_end - 3.0 <= t < hold_end] == []
    assert [t for t in admitted if t >= hold_end], "nothing was admitted after the hold"
    # The server's view (wall clock): nothing arrived in the middle of the hold. A request admitted
    # before the 429 was known may still arrive just after it; one second of margin on either side
    # covers that on a loaded machine and still leaves a second in which any arrival is a bug.
    first_429 = min(g["ts"] for g in gens if g["status"] == 429)
    assert [g for g in gens if first_429 + 1.0 <= g["ts"] <= first_429 + 2.0] == []
    assert max(g["ts"] for g in gens) > first_429 + 2.0
