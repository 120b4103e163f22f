"""`gsvr-batch run --dry-run` end to end: the table, the totals, and that nothing is sent or written."""

from __future__ import annotations

import re
import shutil

import pytest

from conftest import REPO, env_for, make_batch, records, run_cli


def row_of(text: str, task_id: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(task_id[:10]))


def test_dry_run_prints_table_and_touches_nothing(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 2, names=["a.mp4", "b.mp4"])
    r = run_cli(["run", m, "--dry-run"], env=env_for(server), cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "Nothing is uploaded, sent or journaled" in out
    for col in ("Duration", "In tokens", "Out tokens", "Online cost"):
        assert col in out
    assert out.count("0:06") == 2  # both probed (6 s sample)
    total = next(line for line in out.splitlines() if line.startswith("Total"))
    assert "2 to run" in total and "0:12" in total and "$" in total
    assert not server.requests  # nothing reached the API
    assert not (tmp_path / "out").exists()  # no journal, no lock file, no folder


@pytest.mark.slow
def test_dry_run_input_tokens_match_what_the_server_counts(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 1)
    dry = run_cli(["run", m, "--dry-run"], env=env_for(server))
    assert dry.returncode == 0, dry.stderr
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    done = next(x for x in records(tmp_path / "out" / ".gsvr" / "journal.jsonl") if x["type"] == "task_completed")
    row = row_of(dry.stdout, done["task_id"])
    # The sandbox counts like the API (258 a frame + 32 audio a second + text); our estimate also
    # counts a few timestamp tokens a frame (Google's "about 300 a second"): never below the
    # server's count, and within 5 % of it.
    estimate = int(re.findall(r"\d{1,3}(?:,\d{3})+", row)[0].replace(",", ""))  # the In tokens column
    counted = done["usage"]["prompt_tokens"]
    assert counted <= estimate <= counted * 1.05, (estimate, counted)
    # after the run, the dry run uses the journal: that job is done, output size comes from the past run
    again = run_cli(["run", m, "--dry-run"], env=env_for(server))
    row2 = row_of(again.stdout, done["task_id"])
    assert "already completed" in row2
    assert f"{done['usage']['candidates_tokens']:,}" in row2
    assert "0 to run" in next(line for line in again.stdout.splitlines() if line.startswith("Total"))


def test_dry_run_batch_mode_shows_half_price_and_youtube_is_unknown(tmp_path):
    src = tmp_path / "jobs"
    shutil.copytree(REPO / "jobs", src, ignore=shutil.ignore_patterns("output"))
    r = run_cli(["run", src / "manifest.yaml", "--dry-run", "--mode", "batch"], env=env_for())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Batch cost" in r.stdout and "mode batch" in r.stdout
    yt = next(line for line in r.stdout.splitlines() if "neural network" in line)
    assert "unknown until the model answers" in yt
    total = next(line for line in r.stdout.splitlines() if line.startswith("Total"))
    online, batch = [float(x) for x in re.findall(r"\$([0-9.]+)", total)]
    assert 0 < batch < online
    assert not (src / "output").exists()


def test_dry_run_does_not_block_and_is_not_blocked_by_a_run_lock(tmp_path):
    from gsvr_batch.channels import RunLock

    m = make_batch(tmp_path, 1)
    journal = tmp_path / "out" / ".gsvr" / "journal.jsonl"
    journal.parent.mkdir(parents=True)
    lock = RunLock(journal)
    lock.acquire()  # a real run holds the batch
    try:
        r = run_cli(["run", m, "--dry-run"], env=env_for())
    finally:
        lock.release()
    assert r.returncode == 0, r.stdout + r.stderr
    assert not journal.exists()


def test_dry_run_reports_manifest_problems_with_exit_2(tmp_path):
    m = make_batch(tmp_path, 1)
    m.write_text(m.read_text(encoding="utf-8").replace("summary_report", "no_such_template"), encoding="utf-8")
    r = run_cli(["run", m, "--dry-run"], env=env_for())
    assert r.returncode == 2 and "no_such_template" in (r.stdout + r.stderr)
