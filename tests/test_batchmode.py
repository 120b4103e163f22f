"""Gemini Batch Mode against the real sandbox over HTTP, the CLI in real processes (kill -9 included)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import GSVR, env_for, journal_of, make_batch, records, run_cli, wait_for

BATCH_DURATION = 1.0


def kinds(server) -> Counter:
    return Counter(r.get("kind") for r in server.requests if r.get("status") == 200)


def run(manifest: Path, server, *extra):
    return run_cli(["run", manifest, "--progress", "log", *extra], env=env_for(server), timeout=90)


@pytest.fixture
def server(sandbox):
    return sandbox(batch_duration=BATCH_DURATION)


@pytest.mark.slow
def test_pending_exits_75_then_wait_completes_and_verifies(tmp_path, server):
    m = make_batch(tmp_path, 3, extra_settings="mode: batch")
    r1 = run(m, server)
    assert r1.returncode == 75, r1.stdout + r1.stderr
    assert "3 tasks waiting in 1 batch job" in r1.stdout
    assert not list((tmp_path / "out").glob("*.md"))
    r2 = run(m, server, "--wait")
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "all tasks done" in r2.stdout
    assert len(list((tmp_path / "out").glob("*.md"))) == 3
    k = kinds(server)
    assert k["batch_create"] == 1 and k["generate"] == 0  # nothing went through the online API
    # Three copies of one video under three names: one upload (shared by content), deleted once
    # the job finished.
    assert k["upload_finalize"] == 1 and k["files_delete"] == 1, k
    recs = records(journal_of(tmp_path))
    done = [r for r in recs if r["type"] == "task_completed"]
    assert len(done) == 3 and all(r["usage"]["total_tokens"] > 0 for r in done)
    sub = [r for r in recs if r["type"] == "batch_job_submitted"]
    assert len(sub) == 1 and sub[0]["state"] == "SUBMITTING" and len(sub[0]["task_ids"]) == 3
    v = run_cli(["replay", journal_of(tmp_path), "--verify"])
    assert v.returncode == 0 and "all 3 outputs match" in v.stdout, v.stdout + v.stderr
    again = run(m, server)
    assert again.returncode == 0 and "Nothing to do" in again.stdout
    assert kinds(server)["batch_create"] == 1


@pytest.mark.slow
def test_kill_9_after_submission_never_submits_twice(tmp_path, sandbox):
    server = sandbox(batch_duration=3.0)
    m = make_batch(tmp_path, 2, extra_settings="mode: batch")
    j = journal_of(tmp_path)
    p = subprocess.Popen(GSVR + ["run", str(m), "--progress", "log", "--wait"], env=env_for(server),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: any(r["type"] == "batch_job_updated" and r.get("remote")
                                    for r in records(j))), "no batch job journaled"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert kinds(server)["batch_create"] == 1
    r = run(m, server, "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    assert kinds(server)["batch_create"] == 1  # the journaled job was polled, not resubmitted
    assert len(list((tmp_path / "out").glob("*.md"))) == 2
    # the killed run's tasks were never requeued as "in flight at a crash"
    assert not [x for x in records(j) if x["type"] == "task_requeued"]


@pytest.mark.slow
def test_crash_between_create_and_journal_adopts_remote_job(tmp_path, server, monkeypatch):
    """The create call succeeded but its answer never reached the journal: adopt by display name."""
    from gsvr_batch import lifecycle
    from gsvr_batch.runner import RunOptions, run_batch

    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
    monkeypatch.setenv("GEMINI_API_KEY", "test-key-not-real")
    m = make_batch(tmp_path, 2, extra_settings="mode: batch")
    real = lifecycle.BatchLog.batch_job_updated

    class Crash(BaseException):
        pass

    def crash_on_remote(self, name, state, done=False, **extra):
        if "remote" in extra:
            raise Crash()
        return real(self, name, state, done, **extra)

    monkeypatch.setattr(lifecycle.BatchLog, "batch_job_updated", crash_on_remote)
    with pytest.raises(Crash):
        run_batch(RunOptions(manifest=str(m), progress="quiet"), echo=lambda s: None)
    assert kinds(server)["batch_create"] == 1
    monkeypatch.setattr(lifecycle.BatchLog, "batch_job_updated", real)
    out: list[str] = []
    res = run_batch(RunOptions(manifest=str(m), progress="quiet", wait=True), echo=out.append)
    assert res.exit_code == 0, res.message
    assert any("Adopted batch job" in line for line in out)
    assert kinds(server)["batch_create"] == 1 and kinds(server)["batch_list"] == 1
    assert len(list((tmp_path / "out").glob("*.md"))) == 2


@pytest.mark.slow
def test_expired_job_tasks_complete_on_next_run(tmp_path, server):
    m = make_batch(tmp_path, 1, extra_settings="mode: batch", names=["talk.mp4"])
    text = m.read_text()
    m.write_text(text.replace("  - source: videos/talk.mp4", "  - source: videos/talk.mp4\n    title: sandbox-batch-expire"))
    r1 = run(m, server)
    assert r1.returncode == 75, r1.stdout + r1.stderr
    time.sleep(BATCH_DURATION + 0.2)
    m.write_text(text)  # same job id (title is not part of it); the next request no longer expires
    r2 = run(m, server, "--wait")
    assert r2.returncode == 0, r2.stdout + r2.stderr
    recs = records(journal_of(tmp_path))
    assert any(r["type"] == "task_requeued" and "EXPIRED" in r["reason"] for r in recs)
    assert any(r["type"] == "batch_job_updated" and r["state"] == "JOB_STATE_EXPIRED" for r in recs)
    assert kinds(server)["batch_create"] == 2
    assert kinds(server)["upload_finalize"] == 1  # the upload was reused for the resubmission
    assert len(list((tmp_path / "out").glob("*.md"))) == 1


@pytest.mark.slow
def test_per_request_errors_fail_only_their_tasks(tmp_path, server):
    m = make_batch(tmp_path, 3, extra_settings="mode: batch",
                   names=["a.mp4", "b-sandbox-block.mp4", "c.mp4"])
    r = run(m, server, "--wait")
    assert r.returncode == 1, r.stdout + r.stderr
    recs = records(journal_of(tmp_path))
    failed = [x for x in recs if x["type"] == "task_failed"]
    assert len(failed) == 1 and "sandbox-block" in failed[0]["message"]
    assert len([x for x in recs if x["type"] == "task_completed"]) == 2
    assert sorted(p.name for p in (tmp_path / "out").glob("*.md")) == ["a_summary_report.md", "c_summary_report.md"]


@pytest.mark.slow
def test_file_input_split_into_several_jobs(tmp_path, server, monkeypatch):
    from gsvr_batch import batchmode
    from gsvr_batch.runner import RunOptions, run_batch

    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
    monkeypatch.setenv("GEMINI_API_KEY", "test-key-not-real")
    real = batchmode.JobLimits
    monkeypatch.setattr(batchmode, "JobLimits", lambda: real(max_requests=2, inline_max_requests=0))
    m = make_batch(tmp_path, 3, extra_settings="mode: batch")
    res = run_batch(RunOptions(manifest=str(m), progress="quiet", wait=True), echo=lambda s: None)
    assert res.exit_code == 0, res.message
    creates = [r for r in server.requests if r.get("kind") == "batch_create" and r.get("status") == 200]
    assert len(creates) == 2 and all(c.get("file") for c in creates)  # JSONL input, split 2 + 1
    assert kinds(server)["files_download"] == 2
    assert len(list((tmp_path / "out").glob("*.md"))) == 3


@pytest.mark.slow
def test_cancel_without_a_run_cancels_remote_jobs(tmp_path, sandbox):
    server = sandbox(batch_duration=30.0)
    m = make_batch(tmp_path, 2, extra_settings="mode: batch")
    r1 = run(m, server)
    assert r1.returncode == 75, r1.stdout + r1.stderr
    c = run_cli(["cancel", journal_of(tmp_path)], env=env_for(server))
    assert c.returncode == 0, c.stdout + c.stderr
    assert "Cancelled 1 batch job" in c.stdout
    assert kinds(server)["batch_cancel"] == 1
    from gsvr_batch.lifecycle import replay

    st = replay(journal_of(tmp_path)).state
    assert all(t.status.value == "pending" for t in st.tasks.values())
    assert all(j.get("done") for j in st.batch_jobs.values())


def test_plan_jobs_splits_on_count_and_size():
    from gsvr_batch.batchmode import JobLimits, _Item, is_inline, plan_jobs

    items = [_Item(f"t{i}", "m", {}, None, 100, None) for i in range(5)]
    lim = JobLimits(max_requests=2, inline_max_requests=2, inline_max_bytes=150, file_max_bytes=10_000)
    assert [len(c) for c in plan_jobs(items, lim)] == [2, 2, 1]
    assert [len(c) for c in plan_jobs(items, JobLimits(max_requests=10, file_max_bytes=250))] == [2, 2, 1]
    assert not is_inline(items[:2], lim) and is_inline(items[:1], lim)
