"""`gsvr-batch validate`: exit codes, exact problem text, nothing written, no tracebacks — and it says
what `run` would refuse (notify targets, outputs onto owned or foreign files, changed jobs)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SAMPLE, env_for, make_batch, records, run_cli
from gsvr_batch.cli import cli
from gsvr_batch.manifest import OWNED_HINT

REPO = Path(__file__).resolve().parent.parent
MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64
# No key in the environment: validate must not depend on the machine it runs on.
NO_KEY = {"GEMINI_API_KEY": None, "GOOGLE_API_KEY": None, "GOOGLE_GEMINI_BASE_URL": None}


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, ["validate", *args], env={**NO_KEY, **(env or {})})


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture
def jobs_copy(tmp_path):
    """The example batch, copied: the repository's jobs/output (if a quick start made one) is not ours."""
    shutil.copytree(REPO / "jobs", tmp_path / "jobs", ignore=shutil.ignore_patterns("output"))
    return tmp_path / "jobs"


def test_example_manifests_are_clean(jobs_copy):
    for name, extra in (("manifest.yaml", ()), ("manifest.csv", ("--sandbox",))):
        result = run(str(jobs_copy / name), *extra)
        assert result.exit_code == 0, result.output
        journal = (jobs_copy / "output" / ".gsvr" / "journal.jsonl").resolve()
        assert result.stdout.splitlines() == [
            f"Journal: {journal} (a new batch)",
            f"OK: 4 jobs, 4 outputs under {(jobs_copy / 'output').resolve()}",
        ]
        assert result.stderr == ""
    assert not (jobs_copy / "output").exists()


def test_missing_key_is_a_note_that_names_the_variables(jobs_copy):
    # jobs/manifest.csv has no `sandbox: true`: run would stop at once without a key (exit 2). That is
    # this machine's state, not the manifest's: a note, not a warning about the batch.
    result = run(str(jobs_copy / "manifest.csv"))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].startswith(
        "Note: in this environment `run` would stop before any work (exit 2): no API key: set GEMINI_API_KEY or "
        "GOOGLE_API_KEY")
    assert result.stdout.splitlines()[-1].endswith("jobs/output")  # no "(1 warning)": the batch is fine
    assert run(str(jobs_copy / "manifest.csv"), env={"GEMINI_API_KEY": "test-key-not-real"}).stdout.startswith(
        "Journal: ")


def test_errors_listed_with_lines_exit_2_and_nothing_written(tmp_path):
    (tmp_path / "a.mp4").write_bytes(MP4_HEAD)
    manifest = tmp_path / "m.yaml"
    manifest.write_text("jobs:\n  - source: a.mp4\n    tempalte: summary_report\n  - source: missing.mp4\n"
                        "  - source: a.mp4\n    output: ../out.md\n", encoding="utf-8")
    before = tree(tmp_path)
    result = run(str(manifest))
    assert result.exit_code == 2
    lines = result.stdout.splitlines()
    assert lines == [
        f"{manifest}:3: unknown key 'tempalte' in job (did you mean 'template'?)",
        f"{manifest}:4: file not found: missing.mp4 (paths are relative to the manifest's folder {tmp_path})",
        f"{manifest}:6: output '../out.md' resolves outside the output root {(tmp_path / 'output').resolve()} "
        "(outputs must stay inside output_dir; use a relative name without '..')",
    ]
    assert result.stderr == f"Error: {manifest}: 3 errors, 0 warnings\n"
    assert tree(tmp_path) == before  # no output folder, no journal


def test_warnings_alone_exit_0(tmp_path):
    (tmp_path / "a.mp4").write_bytes(MP4_HEAD)
    manifest = tmp_path / "m.yaml"
    manifest.write_text("sandbox: true\njobs:\n  - source: a.mp4\n  - source: a.mp4\n    output: again.md\n",
                        encoding="utf-8")
    result = run(str(manifest))
    assert result.exit_code == 0, result.output
    assert f"{manifest}:4: warning: the same source and template as the job at {manifest}:3" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("OK: 2 jobs, 2 outputs under ")
    assert result.stdout.rstrip().endswith("(1 warning)")


def test_notify_targets_run_would_refuse_are_errors_with_their_line(tmp_path):
    """Before: validate said OK and `run` then stopped at its notification check (exit 2)."""
    (tmp_path / "a.mp4").write_bytes(MP4_HEAD)
    manifest = tmp_path / "m.yaml"
    manifest.write_text("sandbox: true\nsettings:\n  notify:\n    - type: email\n      password: hunter2-not-real\n"
                        "    - url: ${GSVR_TEST_UNSET_HOOK}\njobs:\n  - source: a.mp4\n", encoding="utf-8")
    result = run(str(manifest), env={"GSVR_TEST_UNSET_HOOK": None})
    assert result.exit_code == 2, result.output
    assert f"{manifest}:5: warning: 'password' holds a literal secret" in result.stdout
    refused = [line for line in result.stdout.splitlines() if line.startswith(f"{manifest}:3: notify target")]
    assert any("password written in the manifest is not accepted" in line for line in refused), result.stdout
    assert any("GSVR_TEST_UNSET_HOOK" in line and "not set" in line for line in refused), result.stdout
    assert all(line.endswith("(`run` checks notifications before any work and stops here, exit 2)")
               for line in refused)
    assert "hunter2" not in result.output
    # the command line's own --notify is blamed on the command line
    ok = tmp_path / "ok.yaml"
    ok.write_text("sandbox: true\njobs:\n  - source: a.mp4\n", encoding="utf-8")
    result = run(str(ok), "--notify", "ftp://hooks.example.org/x")
    assert result.exit_code == 2
    assert result.stdout.startswith("<command line>: notify target 1 (webhook): url must be an http(s) URL")


def test_outputs_onto_files_the_batch_owns_are_refused_with_their_line(tmp_path):
    (tmp_path / "a.mp4").write_bytes(MP4_HEAD)
    manifest = tmp_path / "m.yaml"
    manifest.write_text("sandbox: true\ndefaults:\n  output_dir: out\njobs:\n  - source: a.mp4\n"
                        "    output: .gsvr/journal.jsonl\n", encoding="utf-8")
    result = run(str(manifest))
    assert result.exit_code == 2
    journal = (tmp_path / "out" / ".gsvr" / "journal.jsonl").resolve()
    assert result.stdout.splitlines() == [
        f"{manifest}:6: output '.gsvr/journal.jsonl' is the batch's journal ({journal}) ({OWNED_HINT})"]
    assert result.stderr == f"Error: {manifest}: 1 error, 0 warnings\n"


def test_existing_outputs_not_made_by_the_batch_unless_skip_existing_or_overwrite(tmp_path):
    (tmp_path / "a.mp4").write_bytes(MP4_HEAD)
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "a_summary_report.md").write_text("by hand\n", encoding="utf-8")
    manifest = tmp_path / "m.yaml"
    manifest.write_text("sandbox: true\ndefaults:\n  template: summary_report\njobs:\n  - source: a.mp4\n",
                        encoding="utf-8")
    result = run(str(manifest))
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [
        f"{manifest}:5: output 'a_summary_report.md' already exists and was not made by this batch (run refuses to "
        "overwrite it: --skip-existing keeps it (the job is skipped), --overwrite replaces it)"]
    for flag in ("--skip-existing", "--overwrite"):
        assert run(str(manifest), flag).exit_code == 0
    assert (tmp_path / "output" / "a_summary_report.md").read_text(encoding="utf-8") == "by hand\n"


@pytest.mark.slow
def test_changed_jobs_and_another_manifests_journal_are_reported(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 2)
    assert run_cli(["run", m, "--progress", "quiet"], env=env_for(server)).returncode == 0
    journal = tmp_path / "out" / ".gsvr" / "journal.jsonl"
    r = run_cli(["validate", m], env=env_for(server))
    assert r.returncode == 0 and r.stdout.splitlines() == [
        f"Journal: {journal} (2 tasks so far: 2 completed, 0 failed, 0 pending)",
        f"OK: 2 jobs, 2 outputs under {tmp_path / 'out'}"], r.stdout + r.stderr
    # one job now asks for another model: its completed output is out of date
    m.write_text(m.read_text().replace("  - source: videos/lecture-001.mp4",
                                       "  - source: videos/lecture-001.mp4\n    model: gemini-2.5-pro"))
    tid = next(x["task_id"] for x in records(journal) if x["type"] == "task_added" and
               x["source"].endswith("lecture-001.mp4"))
    r = run_cli(["validate", m], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (f"{journal}: warning: 1 job changed since it completed (model, template version or parameters): {tid} "
            "(use --force to redo them; without it they are kept as they are)") in r.stdout.splitlines()
    # the same journal named by another manifest: run refuses it (exit 2), and validate says so first
    other = make_batch(tmp_path / "b", 1, names=["other.mp4"])
    r = run_cli(["validate", other, "--journal", journal], env=env_for(server))
    assert r.returncode == 2
    assert f"{journal}: this journal belongs to another manifest ({m}); run would refuse it" in r.stdout


def test_bad_inputs_never_traceback(tmp_path):
    (tmp_path / "m.csv").write_bytes(b"source\n\xff\xfe.mp4\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02\x03")
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "m.csv"): "m.csv:2: not UTF-8 text (byte 0xff at offset 7)",
        str(tmp_path / "blob.bin"): "blob.bin: this is a binary file, not a manifest",
        str(tmp_path / "empty"): "has no video files",
        str(tmp_path / "nope.yaml"): "nope.yaml: manifest not found: ",
    }
    for path, expected in cases.items():
        result = run(path)
        assert result.exit_code == 2, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert expected in result.stdout
        assert result.stderr.startswith("Error: ") and "Traceback" not in result.output


def test_templates_option_adds_a_folder(tmp_path):
    (tmp_path / "a.mp4").write_bytes(MP4_HEAD)
    manifest = tmp_path / "m.yaml"
    manifest.write_text("jobs:\n  - source: a.mp4\n", encoding="utf-8")
    result = run(str(manifest), "--templates", str(tmp_path / "no-such-dir"))
    assert result.exit_code == 2
    assert f"templates folder not found: {tmp_path / 'no-such-dir'}" in result.stdout


def test_videos_and_links_are_validated_as_run_would_take_them(tmp_path, monkeypatch):
    shutil.copyfile(SAMPLE, tmp_path / "a.mp4")
    shutil.copyfile(SAMPLE, tmp_path / "b.mp4")
    monkeypatch.chdir(tmp_path)
    result = run("a.mp4", "b.mp4", "https://youtu.be/aircAruvnKk", "-t", "summary_report", "--sandbox")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"Journal: {Path('output/.gsvr/journal.jsonl')} (a new batch)",
                                          "OK: 3 jobs, 3 outputs under output"]
    assert not (tmp_path / "output").exists()
