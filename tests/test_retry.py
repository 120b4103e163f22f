"""`gsvr-batch retry JOURNAL --failed / --ids`: re-queue and run; the journal keeps every attempt."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from conftest import SAMPLE, env_for, make_batch, records, run_cli


def generate_calls(server) -> Counter:
    return Counter(q.get("task_id") for q in server.requests if q.get("kind") == "generate" and q.get("status") == 200)


@pytest.mark.slow
def test_retry_failed_of_a_folder_batch_completes_and_keeps_history(tmp_path, sandbox):
    server = sandbox()
    src = tmp_path / "course"
    src.mkdir()
    for name in ("talk-0.mp4", "talk-1.mp4"):
        shutil.copyfile(SAMPLE, src / name)
    out = tmp_path / "lessons"
    # A folder where talk-1's output must go: writing it fails (a permanent, per-task error).
    blocker = out / "talk-1_summary_report.md"
    blocker.mkdir(parents=True)
    r = run_cli(["run", src, "--template", "summary_report", "--output", out, "--progress", "log", "--rpm", "1000"],
                env=env_for(server))
    assert r.returncode == 1, r.stdout + r.stderr
    journal = out / ".gsvr" / "journal.jsonl"
    failed = [x for x in records(journal) if x["type"] == "task_failed"]
    assert len(failed) == 1
    bad = failed[0]["task_id"]

    blocker.rmdir()
    r2 = run_cli(["retry", journal, "--failed", "--progress", "log"], env=env_for(server), cwd="/")
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert (out / "talk-1_summary_report.md").is_file()
    recs = records(journal)
    # history: the first attempt's failure is still there, followed by the retry and its success
    kinds = [x["type"] for x in recs if x.get("task_id") == bad]
    assert kinds.index("task_failed") < kinds.index("task_requeued") < kinds.index("task_completed")
    assert any(x["type"] == "task_requeued" and x["reason"] == "retry requested" for x in recs)
    assert not any(x["type"] == "task_dropped" for x in recs)  # same batch, same jobs
    assert sum(x["type"] == "batch_created" for x in recs) == 1
    calls = generate_calls(server)
    assert calls[bad] == 2 and sum(calls.values()) == 3  # the good task was not sent again


@pytest.mark.slow
def test_retry_ids_reruns_a_chosen_completed_task(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 2)
    assert run_cli(["run", m, "--progress", "log"], env=env_for(server)).returncode == 0
    journal = tmp_path / "out" / ".gsvr" / "journal.jsonl"
    tid = next(x["task_id"] for x in records(journal) if x["type"] == "task_added")
    r = run_cli(["retry", journal, "--ids", tid, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    done = Counter(x["task_id"] for x in records(journal) if x["type"] == "task_completed")
    assert done[tid] == 2 and sum(done.values()) == 3


@pytest.mark.slow
def test_retry_needs_a_choice_and_known_ids(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 1)
    assert run_cli(["run", m, "--progress", "log"], env=env_for(server)).returncode == 0
    journal = tmp_path / "out" / ".gsvr" / "journal.jsonl"
    r = run_cli(["retry", journal], env=env_for(server))
    assert r.returncode == 2 and "--failed" in r.stderr
    before = journal.read_bytes()
    r = run_cli(["retry", journal, "--ids", "nosuchid"], env=env_for(server))
    assert r.returncode == 2 and "nosuchid" in r.stderr
    assert journal.read_bytes() == before  # nothing journaled for a typo
