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


def _outputs(folder) -> dict[str, str]:
    """Every file under ``folder`` except the state folder, with its sha256."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".gsvr" not in p.parts and "state" not in p.parts}


@pytest.mark.slow
def test_retry_reruns_exactly_the_chosen_task_of_exactly_that_batch_with_its_own_options(tmp_path, sandbox):
    """Issue 14.1: `retry` used the manifest's defaults (output/, md) instead of the options the batch
    was run with, re-ran every task of a batch run with other options, and overwrote another batch's
    files. Two batches of one manifest, run with different --output / --format / --journal."""
    server = sandbox()
    m = make_batch(tmp_path, 3)
    alt_a, alt_b, j_b = tmp_path / "alt", tmp_path / "alt2", tmp_path / "state" / "journal.jsonl"
    ra = run_cli(["run", m, "-o", alt_a, "--progress", "log"], env=env_for(server))
    rb = run_cli(["run", m, "--format", "html", "-o", alt_b, "--journal", j_b, "--progress", "log"],
                 env=env_for(server))
    assert ra.returncode == 0 and rb.returncode == 0, ra.stdout + ra.stderr + rb.stdout + rb.stderr
    j_a = alt_a / ".gsvr" / "journal.jsonl"
    before_a, before_b = _outputs(alt_a), _outputs(alt_b)
    assert len(before_a) == 3 and len(before_b) == 3 and all(k.endswith(".html") for k in before_b)
    calls = generate_calls(server)
    tid_a = next(x["task_id"] for x in records(j_a) if x["type"] == "task_added")
    tid_b = [x["task_id"] for x in records(j_b) if x["type"] == "task_added"][1]

    r = run_cli(["retry", j_a, "--ids", tid_a, "--progress", "log"], env=env_for(server), cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run_cli(["retry", j_b, "--ids", tid_b, "--progress", "log"], env=env_for(server), cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr

    after = generate_calls(server)
    assert after - calls == Counter({tid_a: 1, tid_b: 1})  # exactly the two tasks asked for, once each
    assert not (tmp_path / "out").exists()  # nothing went to the manifest's default output folder
    after_a, after_b = _outputs(alt_a), _outputs(alt_b)
    assert set(after_a) == set(before_a) and set(after_b) == set(before_b)  # same files, same formats
    changed_a = {k for k in after_a if after_a[k] != before_a[k]}
    changed_b = {k for k in after_b if after_b[k] != before_b[k]}
    # Each retry rewrote its own task's output only; the other batch's files did not change a byte.
    assert len(changed_a) == 1 and len(changed_b) == 1, (changed_a, changed_b)
    assert all(x["type"] != "task_dropped" for x in records(j_a) + records(j_b))
