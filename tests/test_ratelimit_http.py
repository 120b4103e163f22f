"""The shared limiter over real HTTP: the sandbox enforces the limit, real worker processes run."""

from __future__ import annotations

import pytest

from conftest import env_for, make_batch, run_cli

pytestmark = pytest.mark.slow


def generates(server) -> list[dict]:
    return [r for r in server.requests if r.get("kind") == "generate"]


def test_matching_limits_give_zero_429s_with_four_workers(tmp_path, sandbox):
    server = sandbox(rpm=60)  # the server refuses the 61st request in any 60 s window
    m = make_batch(tmp_path, 8, extra_settings="workers: 4\nrpm: 60")
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    gens = generates(server)
    assert len(gens) == 8 and all(g["status"] == 200 for g in gens)  # not one avoidable 429
    ts = sorted(g["ts"] for g in gens)
    # paced at 60/RPM = 1 s: four workers never fire together
    assert min(b - a for a, b in zip(ts, ts[1:])) >= 0.9


def test_a_429_with_retry_delay_holds_every_worker(tmp_path, sandbox):
    server = sandbox(latency=0.2)
    m = make_batch(tmp_path, 8, extra_settings="workers: 4")
    server.inject_429(1, retry_delay=3.0)  # the first generate call is refused with RetryInfo 3s
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    gens = generates(server)
    first_429 = min(g["ts"] for g in gens if g["status"] == 429)
    after = [g["ts"] for g in gens if g["ts"] > first_429]
    assert after, "nothing was sent after the 429"
    # No worker (four of them were busy) sent a generate request during the server's delay — except
    # one already on the wire when the 429 came back (admitted before anyone knew), within 0.1 s.
    held = [t - first_429 for t in after if 0.1 < t - first_429 < 3.0 - 0.05]
    assert not held, held
    assert max(after) - first_429 >= 3.0 - 0.05
    assert sum(g["status"] == 200 for g in gens) == 8
