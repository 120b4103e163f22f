"""Fault injection through `run`: 5xx / dropped connections / 429 bursts are recovered; files that
never turn ACTIVE, FAILED processing and a hung request fail only their own task.

Real processes, real HTTP against the sandbox; no mocks.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from conftest import env_for, journal_of, make_batch, records, run_cli

pytestmark = pytest.mark.slow


def retry_stats(recs: list[dict]) -> Counter:
    return Counter(r["task_id"] for r in recs if r["type"] == "retry_scheduled")


def test_fail_rate_and_429_bursts_are_all_recovered_with_bounded_retries(tmp_path, sandbox):
    server = sandbox(fail_rate=0.2, seed=11, retry_delay=0.2)
    server.inject_429(count=4, retry_delay=0.2)
    m = make_batch(tmp_path, 12, extra_settings="retry_base_delay: 0.05\nmax_call_retries: 1\nrpd: 100000")
    r = run_cli(["run", m, "--progress", "log", "--max-attempts", "8"], env=env_for(server), timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    recs = records(journal_of(tmp_path))
    done = {x["task_id"] for x in recs if x["type"] == "task_completed"}
    assert len(done) == 12 and not [x for x in recs if x["type"] == "task_failed"]
    faults = [q for q in server.requests if q.get("injected")]
    assert faults, "the sandbox injected nothing; the test would prove nothing"
    retries = retry_stats(recs)
    assert max(retries.values(), default=0) <= 7  # bounded by max_attempts - 1
    assert sum(1 for q in server.requests if q.get("kind") == "generate" and q.get("status") == 429) >= 4


def _batch_with(tmp_path: Path, names: list[str], extra: str = "") -> Path:
    # Distinct bytes: the sandbox's faults follow a file's name, and a byte-identical copy under
    # another name rightly shares the first one's upload (so it would never meet its fault).
    return make_batch(tmp_path, len(names), names=names, distinct=True,
                      extra_settings="retry_base_delay: 0.05\nmax_call_retries: 1\n" + extra)


def _by_source(recs: list[dict]) -> dict[str, str]:
    return {x["task_id"]: Path(x["source"]).name for x in recs if x["type"] == "task_added"}


def test_file_that_never_becomes_active_fails_its_task_only(tmp_path, sandbox):
    server = sandbox()
    m = _batch_with(tmp_path, ["ok-1.mp4", "sandbox-never-active.mp4", "ok-2.mp4"], "active_timeout: 1")
    r = run_cli(["run", m, "--progress", "log", "--max-attempts", "2"], env=env_for(server))
    assert r.returncode == 1, r.stdout + r.stderr
    recs = records(journal_of(tmp_path))
    names = _by_source(recs)
    failed = {names[x["task_id"]]: x for x in recs if x["type"] == "task_failed"}
    assert set(failed) == {"sandbox-never-active.mp4"}
    assert failed["sandbox-never-active.mp4"]["error_class"] == "FileProcessingFailed"
    assert "PROCESSING" in failed["sandbox-never-active.mp4"]["message"]
    assert {names[x["task_id"]] for x in recs if x["type"] == "task_completed"} == {"ok-1.mp4", "ok-2.mp4"}


def test_file_processing_failed_fails_its_task_with_the_reason(tmp_path, sandbox):
    server = sandbox()
    m = _batch_with(tmp_path, ["ok-1.mp4", "sandbox-fail-processing.mp4"])
    r = run_cli(["run", m, "--progress", "log", "--max-attempts", "2"], env=env_for(server))
    assert r.returncode == 1, r.stdout + r.stderr
    recs = records(journal_of(tmp_path))
    names = _by_source(recs)
    failed = [x for x in recs if x["type"] == "task_failed"]
    assert [names[x["task_id"]] for x in failed] == ["sandbox-fail-processing.mp4"]
    assert failed[0]["error_class"] == "FileProcessingFailed" and "could not process the video" in failed[0]["message"]
    assert failed[0]["disposition"] == "fail_task" and failed[0]["charge"] == "attempt"  # not retried
    assert "1 task(s) failed" in r.stdout
    assert len(list((tmp_path / "out").glob("*.md"))) == 1


def test_hung_request_times_out_is_retried_then_fails_and_others_complete(tmp_path, sandbox):
    server = sandbox()
    m = _batch_with(tmp_path, ["ok-1.mp4", "sandbox-hang.mp4", "ok-2.mp4"])
    r = run_cli(["run", m, "--progress", "log", "--request-timeout", "1", "--max-attempts", "2"], env=env_for(server), timeout=200)
    assert r.returncode == 1, r.stdout + r.stderr
    recs = records(journal_of(tmp_path))
    names = _by_source(recs)
    failed = [x for x in recs if x["type"] == "task_failed"]
    assert [names[x["task_id"]] for x in failed] == ["sandbox-hang.mp4"]
    # Each hung call reached the model and may have been billed: never retried inside the attempt,
    # counted as a lost call, charged one attempt; two attempts, two lost calls, then it fails.
    assert failed[0]["error_class"] == "CallLost", failed[0]
    assert "gave up after 2 attempts" in failed[0]["message"]
    hang = next(t for t, n in names.items() if n == "sandbox-hang.mp4")
    assert sum(x.get("lost_calls", 0) for x in recs if x.get("task_id") == hang) == 2
    assert sum(1 for e in server.requests if e["kind"] == "generate" and e.get("task_id") == hang) == 2
    assert any(x["type"] == "retry_scheduled" and names[x["task_id"]] == "sandbox-hang.mp4" for x in recs)
    assert {names[x["task_id"]] for x in recs if x["type"] == "task_completed"} == {"ok-1.mp4", "ok-2.mp4"}
