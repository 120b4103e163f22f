"""Output control end to end through the CLI against the sandbox:
--skip-existing, --force, --output-pattern, per-job output / output_format, --format.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter

import pytest

from conftest import env_for, make_batch, records, run_cli


def generate_calls(server) -> int:
    return sum(1 for q in server.requests if q.get("kind") == "generate" and q.get("status") == 200)


def test_run_batch_refuses_a_foreign_output_before_writing_anything(tmp_path, sandbox, monkeypatch):
    """The library call (what the CLI calls) refuses, for a new batch and for one already started:
    exit 2 as a UsageError, the file untouched, no task journaled, nothing sent."""
    from gsvr_batch.errors import UsageError
    from gsvr_batch.runner import RunOptions, run_batch

    server = sandbox()
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
    monkeypatch.setenv("GEMINI_API_KEY", "test-key-not-real")
    m = make_batch(tmp_path, 2)
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "lecture-001_summary_report.md"
    mine.write_text("written by hand\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"^1 output file\(s\) already exist and were not made by this batch: "
                                         r"lecture-001_summary_report.md\. Nothing was started\.") as exc:
        run_batch(RunOptions(manifest=str(m), progress="quiet"), echo=lambda s: None)
    assert exc.value.exit_code == 2
    assert mine.read_text(encoding="utf-8") == "written by hand\n"
    journal = out / ".gsvr" / "journal.jsonl"
    assert not journal.exists() or not [x for x in records(journal) if x["type"].startswith("task_")]
    assert generate_calls(server) == 0

    # A batch already under way (its journal has the task, pending): still refused, still untouched.
    mine.rename(tmp_path / "aside.md")
    res = run_batch(RunOptions(manifest=str(m), progress="quiet"), echo=lambda s: None)
    assert res.exit_code == 0 and generate_calls(server) == 2
    (tmp_path / "aside.md").replace(mine)
    with pytest.raises(UsageError, match="not made by this batch"):
        run_batch(RunOptions(manifest=str(m), progress="quiet", force=True), echo=lambda s: None)
    assert mine.read_text(encoding="utf-8") == "written by hand\n" and generate_calls(server) == 2
    # Without --force the completed task is not redone, so its path is not this run's business.
    res = run_batch(RunOptions(manifest=str(m), progress="quiet"), echo=lambda s: None)
    assert res.exit_code == 0 and generate_calls(server) == 2


@pytest.mark.slow
def test_skip_existing_journals_skip_and_sends_nothing_for_that_job(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 2)
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "lecture-000_summary_report.md"
    mine.write_text("written by hand\n", encoding="utf-8")
    r = run_cli(["run", m, "--skip-existing", "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert mine.read_text(encoding="utf-8") == "written by hand\n"  # untouched
    recs = records(out / ".gsvr" / "journal.jsonl")
    skipped = [x for x in recs if x["type"] == "task_skipped"]
    assert len(skipped) == 1 and "output already exists" in skipped[0]["reason"]
    assert str(mine) in skipped[0]["reason"]
    assert sum(x["type"] == "task_completed" for x in recs) == 1
    assert generate_calls(server) == 1
    assert "1 completed, 1 skipped" in r.stdout


@pytest.mark.slow
def test_force_reprocesses_completed_jobs_and_keeps_history(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 2)
    assert run_cli(["run", m, "--progress", "log"], env=env_for(server)).returncode == 0
    assert generate_calls(server) == 2
    r = run_cli(["run", m, "--force", "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert generate_calls(server) == 4
    recs = records(tmp_path / "out" / ".gsvr" / "journal.jsonl")
    done = Counter(x["task_id"] for x in recs if x["type"] == "task_completed")
    assert sorted(done.values()) == [2, 2]  # both attempts are in the journal
    assert sum(x["type"] == "task_requeued" and "--force" in x["reason"] for x in recs) == 2
    # without --force the next run does nothing again
    assert "Nothing to do" in run_cli(["run", m], env=env_for(server)).stdout


@pytest.mark.slow
def test_output_pattern_and_format_from_the_command_line(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 1)
    r = run_cli(["run", m, "--output-pattern", "{title}_{date}_{template}.html", "--format", "html",
                 "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    files = list((tmp_path / "out").glob("*.html"))
    assert len(files) == 1
    name = files[0].name
    assert name.startswith("lecture-000_") and name.endswith("_summary_report.html")
    date = name[len("lecture-000_"):-len("_summary_report.html")]
    assert len(date) == 10 and date[4] == "-" and date[7] == "-"  # YYYY-MM-DD
    text = files[0].read_text(encoding="utf-8")
    assert text.lstrip().lower().startswith("<!doctype html") or "<html" in text.lower()


@pytest.mark.slow
def test_per_job_output_format_and_template(tmp_path, sandbox):
    server = sandbox()
    make_batch(tmp_path, 2)
    m = tmp_path / "m2.yaml"
    m.write_text(textwrap.dedent("""\
        defaults:
          template: summary_report
          output_dir: out
        settings:
          rpm: 1000
        jobs:
          - source: videos/lecture-000.mp4
            output: reports/first.json
            output_format: json
          - source: videos/lecture-001.mp4
            template: comprehensive_lesson
            title: Second
            params:
              audience: teachers
        """), encoding="utf-8")
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads((tmp_path / "out" / "reports" / "first.json").read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and doc  # a real JSON document, not markdown
    assert (tmp_path / "out" / "lecture-001_comprehensive_lesson.md").exists()
    added = {x["task_id"]: x for x in records(tmp_path / "out" / ".gsvr" / "journal.jsonl")
             if x["type"] == "task_added"}
    assert sorted(a["output_format"] for a in added.values()) == ["json", "md"]
    assert sorted(a["template"] for a in added.values()) == ["comprehensive_lesson", "summary_report"]
