"""Daily quota over real HTTP with real worker processes; the day is injected (RunOptions.now)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

import pytest

from conftest import TEST_KEY, Clock, journal_of, make_batch, records
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
    clock = Clock(DAY1)  # noon in Los Angeles, running (a retry a few seconds ahead comes due)

    def run():
        return run_batch(RunOptions(manifest=str(m), progress="quiet", now=clock), echo=lines.append)

    r1 = run()
    assert r1.exit_code == ExitCode.TEMPFAIL, (r1.message, lines, records(journal_of(tmp_path)))
    assert "2026-11-29T08:00:00Z" in r1.message  # midnight America/Los_Angeles
    assert r1.counts["completed"] == 3 and generate_calls(server) == 3, records(journal_of(tmp_path))
    sent = len(server.requests)

    clock.jump(3600)
    r2 = run()  # same Pacific day: nothing at all is sent
    assert r2.exit_code == ExitCode.TEMPFAIL and "spent" in r2.message
    assert len(server.requests) == sent

    clock.jump(DAY2 - clock())
    r3 = run()  # after the reset: the batch continues and finishes
    assert r3.exit_code == ExitCode.OK, r3.message
    assert r3.counts["completed"] == 5
    per_task = Counter(r.get("task_id") for r in server.requests if r.get("kind") == "generate")
    assert set(per_task.values()) == {1}  # nothing sent twice
