"""Daily quota over real HTTP with real worker processes; the day is injected (RunOptions.now)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

import pytest

from conftest import TEST_KEY, make_batch
from gsvr_batch.exitcodes import ExitCode
from gsvr_batch.runner import RunOptions, run_batch

pytestmark = pytest.mark.slow

# 20:00 UTC = 12:00 in Los Angeles (PST) on 2026-11-28; the next Pacific midnight is 08:00 UTC.
DAY1 = datetime(2026, 11, 28, 20, 0, tzinfo=timezone.utc).timestamp()
DAY2 = datetime(2026, 11, 29, 9, 0, tzinfo=timezone.utc).timestamp()


def generate_calls(server) -> int:
    return sum(1 for r in server.requests if r.get("kind") == "generate")


def test_rpd_exhaustion_exits_75_and_waits_for_the_pacific_reset(tmp_path, sandbox, monkeypatch):
    server = sandbox()
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
    monkeypatch.setenv("GEMINI_API_KEY", TEST_KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    m = make_batch(tmp_path, 5, extra_settings="rpd: 3")
    lines: list[str] = []

    def run(now):
        return run_batch(RunOptions(manifest=str(m), progress="quiet", now=lambda: now), echo=lines.append)

    r1 = run(DAY1)
    assert r1.exit_code == ExitCode.TEMPFAIL
    assert "2026-11-29T08:00:00Z" in r1.message  # midnight America/Los_Angeles
    assert r1.counts["completed"] == 3 and generate_calls(server) == 3
    sent = len(server.requests)

    r2 = run(DAY1 + 3600)  # same Pacific day: nothing at all is sent
    assert r2.exit_code == ExitCode.TEMPFAIL and "spent" in r2.message
    assert len(server.requests) == sent

    r3 = run(DAY2)  # after the reset: the batch continues and finishes
    assert r3.exit_code == ExitCode.OK, r3.message
    assert r3.counts["completed"] == 5
    per_task = Counter(r.get("task_id") for r in server.requests if r.get("kind") == "generate")
    assert set(per_task.values()) == {1}  # nothing sent twice
