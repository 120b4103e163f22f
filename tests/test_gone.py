"""Videos deleted after their work was done do not hold the next run hostage (gsvr_batch/gone.py).

Real runs (subprocesses against the sandbox server): a batch completes, its videos are deleted to
free the disk, a new lecture is added, and the next `run`, `run --dry-run` and `validate` go on with
one warning per deleted video. Whatever still needs a deleted video keeps the error it always had.
"""

from __future__ import annotations

import os
import shutil

import pytest

from conftest import SAMPLE, env_for, journal_of, make_batch, records, run_cli

pytestmark = pytest.mark.slow

WARNING = ("manifest.yaml:{line}: warning: file not found: videos/{name}: its work is done (output kept), so it is "
           "not needed (remove it from the manifest or the command line to silence this)")


def generate_calls(server) -> int:
    return sum(1 for q in server.requests if q.get("kind") == "generate" and q.get("status") == 200)


def finished_batch(tmp_path, sandbox, n: int = 2):
    server = sandbox()
    m = make_batch(tmp_path, n)
    r = run_cli(["run", m, "--progress", "quiet"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    return server, m


def add_job(m, tmp_path, name: str) -> None:
    shutil.copyfile(SAMPLE, tmp_path / "videos" / name)
    m.write_text(m.read_text(encoding="utf-8") + f"  - source: videos/{name}\n", encoding="utf-8")


def line_of(m, name: str) -> int:
    return next(i for i, line in enumerate(m.read_text(encoding="utf-8").splitlines(), 1) if name in line)


def test_a_deleted_video_whose_work_is_done_is_a_warning_and_the_new_one_runs(tmp_path, sandbox):
    server, m = finished_batch(tmp_path, sandbox)
    os.unlink(tmp_path / "videos" / "lecture-000.mp4")
    add_job(m, tmp_path, "lecture-new.mp4")
    calls = generate_calls(server)
    warning = WARNING.format(line=line_of(m, "lecture-000.mp4"), name="lecture-000.mp4")

    v = run_cli(["validate", m], env=env_for(server))
    assert v.returncode == 0 and warning in v.stdout + v.stderr, v.stdout + v.stderr
    d = run_cli(["run", m, "--dry-run"], env=env_for(server))
    assert d.returncode == 0 and warning in d.stdout + d.stderr, d.stdout + d.stderr
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert warning in r.stdout + r.stderr
    assert generate_calls(server) == calls + 1  # the new lecture only
    recs = records(journal_of(tmp_path))
    gone_id = next(x["task_id"] for x in recs if x["type"] == "task_added" and x["source"].endswith("lecture-000.mp4"))
    assert [x["type"] for x in recs if x.get("task_id") == gone_id].count("task_started") == 1  # the first run's
    assert (tmp_path / "out" / "lecture-000_summary_report.md").is_file()


def test_what_still_needs_a_deleted_video_keeps_its_error(tmp_path, sandbox):
    server, m = finished_batch(tmp_path, sandbox)
    os.unlink(tmp_path / "videos" / "lecture-000.mp4")
    error = (f"Error: manifest has 1 error:\n  manifest.yaml:{line_of(m, 'lecture-000.mp4')}: file not found: "
             f"videos/lecture-000.mp4 (paths are relative to the manifest's folder {tmp_path})\n")

    # --force redoes every job: the video is needed again
    r = run_cli(["run", m, "--force"], env=env_for(server), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == error.replace("manifest.yaml", str(m)), r.stderr

    # its output is gone too: the job must be redone, from the video
    os.unlink(tmp_path / "out" / "lecture-000_summary_report.md")
    r = run_cli(["run", "manifest.yaml"], env=env_for(server), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == error, r.stderr
    v = run_cli(["validate", "manifest.yaml"], env=env_for(server), cwd=tmp_path)
    assert v.returncode == 2 and "file not found: videos/lecture-000.mp4" in v.stdout + v.stderr


def test_a_deleted_video_never_hides_another_error(tmp_path, sandbox):
    server, m = finished_batch(tmp_path, sandbox)
    os.unlink(tmp_path / "videos" / "lecture-000.mp4")
    m.write_text(m.read_text(encoding="utf-8") + "  - source: videos/lecture-001.mp4\n    template: no_such_template\n",
                 encoding="utf-8")
    r = run_cli(["run", "manifest.yaml"], env=env_for(server), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "file not found: videos/lecture-000.mp4" in r.stderr and "no_such_template" in r.stderr, r.stderr


def test_a_new_job_on_a_deleted_video_is_an_error(tmp_path, sandbox):
    """Another template for the deleted lecture is new work: it needs the video."""
    server, m = finished_batch(tmp_path, sandbox)
    os.unlink(tmp_path / "videos" / "lecture-000.mp4")
    m.write_text(m.read_text(encoding="utf-8") + "  - source: videos/lecture-000.mp4\n"
                 "    template: comprehensive_lesson\n", encoding="utf-8")
    r = run_cli(["run", "manifest.yaml"], env=env_for(server), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    # both jobs are named, the finished one too: the file is needed all the same
    assert r.stderr.startswith("Error: manifest has 2 errors:\n"), r.stderr
    assert r.stderr.count("file not found: videos/lecture-000.mp4") == 2, r.stderr


def test_a_dangling_link_to_finished_work_is_forgiven_too(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 1)
    store = tmp_path / "store"
    store.mkdir()
    video = tmp_path / "videos" / "lecture-000.mp4"
    shutil.move(video, store / "lecture-000.mp4")
    os.symlink(store / "lecture-000.mp4", video)
    assert run_cli(["run", m, "--progress", "quiet"], env=env_for(server)).returncode == 0
    shutil.rmtree(store)
    r = run_cli(["run", m], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is a dangling symlink" in r.stderr + r.stdout and "its work is done (output kept)" in r.stderr + r.stdout


def test_a_video_named_on_the_command_line_and_deleted_after(tmp_path, sandbox):
    server = sandbox()
    shutil.copyfile(SAMPLE, tmp_path / "a.mp4")
    assert run_cli(["run", "a.mp4", "--template", "summary_report"], env=env_for(server), cwd=tmp_path).returncode == 0
    os.unlink(tmp_path / "a.mp4")
    r = run_cli(["run", "a.mp4", "--template", "summary_report"], env=env_for(server), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ("a.mp4: warning: file not found: a.mp4: its work is done (output kept), so it is not needed "
            "(remove it from the manifest or the command line to silence this)") in r.stdout + r.stderr
    s = run_cli(["status", "a.mp4"], env=env_for(server), cwd=tmp_path)  # named as it was run
    assert s.returncode == 0 and "1/1 done" in s.stdout, s.stdout + s.stderr


def test_retry_of_a_task_whose_video_is_gone_is_refused_and_changes_nothing(tmp_path, sandbox):
    """`retry --ids` redoes the tasks it names: their videos are needed, finished or not. (Forgiven,
    the task ran, failed for the missing file, and its completed output left the batch.)"""
    server, m = finished_batch(tmp_path, sandbox)
    j = journal_of(tmp_path)
    gone_id = next(x["task_id"] for x in records(j) if x["type"] == "task_added" and x["source"].endswith("lecture-000.mp4"))
    other_id = next(x["task_id"] for x in records(j) if x["type"] == "task_added" and x["source"].endswith("lecture-001.mp4"))
    os.unlink(tmp_path / "videos" / "lecture-000.mp4")
    before = j.read_bytes()
    r = run_cli(["retry", j, "--ids", gone_id], env=env_for(server))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "file not found: videos/lecture-000.mp4" in r.stderr, r.stderr
    assert j.read_bytes() == before
    # another task's retry goes on: the gone video's finished work is not in it
    r = run_cli(["retry", j, "--ids", other_id, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "its work is done (output kept)" in r.stdout + r.stderr


def test_another_manifests_finished_work_forgives_nothing(tmp_path, sandbox):
    server, m = finished_batch(tmp_path, sandbox)
    m2 = tmp_path / "second.yaml"
    m2.write_text(m.read_text(encoding="utf-8"), encoding="utf-8")  # same jobs, same output folder: another batch
    os.unlink(tmp_path / "videos" / "lecture-000.mp4")
    v = run_cli(["validate", m2], env=env_for(server))
    assert v.returncode == 2
    assert "file not found: videos/lecture-000.mp4" in v.stdout + v.stderr
    assert "its work is done" not in v.stdout + v.stderr
