"""`gsvr-batch run` on a folder, a list file and a CSV, end to end against the sandbox (real processes).

Also --max-duration: longer videos are journaled task_skipped with the reason and shown.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import SAMPLE, env_for, records, run_cli

REPO = Path(__file__).resolve().parent.parent
VIDEOS = REPO / "jobs" / "videos"


def types(journal: Path) -> list[str]:
    return [r["type"] for r in records(journal)]


def copy_videos(dest: Path, n: int = 2) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = dest / f"talk-{i}.mp4"
        shutil.copyfile(SAMPLE, p)
        out.append(p)
    return out


@pytest.mark.slow
def test_folder_run_writes_derived_manifest_and_rerun_continues_same_batch(tmp_path, sandbox):
    server = sandbox()
    copy_videos(tmp_path / "course_videos", 2)
    args = ["run", tmp_path / "course_videos", "--template", "summary_report", "--output", tmp_path / "lessons",
            "--progress", "log", "--rpm", "1000"]
    r = run_cli(args, env=env_for(server), cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in (tmp_path / "lessons").glob("*.md")) == [
        "talk-0_summary_report.md", "talk-1_summary_report.md"]
    journal = tmp_path / "lessons" / ".gsvr" / "journal.jsonl"
    derived = journal.parent / "manifest.derived.yaml"
    doc = yaml.safe_load(derived.read_text(encoding="utf-8"))
    assert [j["source"] for j in doc["jobs"]] == ["talk-0.mp4", "talk-1.mp4"]
    assert {j["template"] for j in doc["jobs"]} == {"summary_report"}
    # the derived manifest validates on its own and names the same outputs
    v = run_cli(["validate", derived])
    assert v.returncode == 0 and "2 jobs" in v.stdout, v.stdout + v.stderr

    # a new video in the folder: the same command continues the same batch and only does the new one
    shutil.copyfile(SAMPLE, tmp_path / "course_videos" / "talk-2.mp4")
    r2 = run_cli(args, env=env_for(server), cwd=tmp_path)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    recs = records(journal)
    assert sum(r["type"] == "batch_created" for r in recs) == 1
    assert sum(r["type"] == "task_completed" for r in recs) == 3
    gen = [q for q in server.requests if q.get("kind") == "generate" and q.get("status") == 200]
    assert len(gen) == 3  # the first two were not sent again
    assert len(yaml.safe_load(derived.read_text(encoding="utf-8"))["jobs"]) == 3


@pytest.mark.slow
def test_list_file_with_comments_and_mixed_local_and_url(tmp_path, sandbox):
    server = sandbox()
    vids = copy_videos(tmp_path / "v", 1)
    lst = tmp_path / "talks.txt"
    lst.write_text(f"# my talks\n{vids[0]}\n\n  # indented comment\nhttps://www.youtube.com/watch?v=aircAruvnKk\n",
                   encoding="utf-8")
    r = run_cli(["run", lst, "--template", "summary_report", "--output", tmp_path / "out", "--progress", "log",
                 "--rpm", "1000"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    journal = tmp_path / "out" / ".gsvr" / "journal.jsonl"
    added = [r for r in records(journal) if r["type"] == "task_added"]
    assert sorted(a["source_kind"] for a in added) == ["local", "youtube"]
    assert len(list((tmp_path / "out").glob("*.md"))) == 2
    assert (journal.parent / "manifest.derived.yaml").exists()


@pytest.mark.slow
def test_csv_rows_choose_template_and_params(tmp_path, sandbox):
    server = sandbox()
    copy_videos(tmp_path / "videos", 2)
    csv = tmp_path / "talks.csv"
    csv.write_text("source,title,template,audience\n"
                   "videos/talk-0.mp4,First talk,summary_report,teachers\n"
                   "videos/talk-1.mp4,Second talk,comprehensive_lesson,grade 10\n", encoding="utf-8")
    r = run_cli(["run", csv, "--output", tmp_path / "out", "--progress", "log", "--rpm", "1000"],
                env=env_for(server), cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    journal = tmp_path / "out" / ".gsvr" / "journal.jsonl"
    added = {a["title"]: a for a in records(journal) if a["type"] == "task_added"}
    assert added["First talk"]["template"] == "summary_report"
    assert added["Second talk"]["template"] == "comprehensive_lesson"
    assert sorted(p.name for p in (tmp_path / "out").glob("*.md")) == [
        "talk-0_summary_report.md", "talk-1_comprehensive_lesson.md"]
    assert not (journal.parent / "manifest.derived.yaml").exists()  # a CSV is already a manifest


@pytest.mark.slow
def test_max_duration_skips_longer_videos_with_reason(tmp_path, sandbox):
    server = sandbox()
    src = tmp_path / "v"
    src.mkdir()
    for name in ("lecture-01-introduction.mp4", "lecture-02-photosynthesis.mp4"):  # 6 s and 8 s
        shutil.copyfile(VIDEOS / name, src / name)
    r = run_cli(["run", src, "--template", "summary_report", "--output", tmp_path / "out", "--progress", "log",
                 "--max-duration", "7", "--rpm", "1000"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    journal = tmp_path / "out" / ".gsvr" / "journal.jsonl"
    skipped = [x for x in records(journal) if x["type"] == "task_skipped"]
    assert len(skipped) == 1
    assert "8 s long" in skipped[0]["reason"] and "max_duration 7" in skipped[0]["reason"]
    assert "skipped" in r.stdout and "max_duration 7" in r.stdout  # shown, not silent
    assert "1 completed, 1 skipped" in r.stdout
    gen = [q for q in server.requests if q.get("kind") == "generate" and q.get("status") == 200]
    assert len(gen) == 1  # the long one was never sent to the model
