"""`gsvr-batch validate`: exit codes, exact problem text, nothing written, no tracebacks."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from gsvr_batch.cli import cli

REPO = Path(__file__).resolve().parent.parent
MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64


def run(*args: str):
    return CliRunner().invoke(cli, ["validate", *args])


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_example_manifests_are_clean():
    for name in ("manifest.yaml", "manifest.csv"):
        result = run(str(REPO / "jobs" / name))
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("OK: 4 jobs, 4 outputs under ")
        assert result.stdout.rstrip().endswith(str((REPO / "jobs" / "output").resolve())) or \
            result.stdout.rstrip().endswith("jobs/output")
        assert result.stderr == ""


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
    manifest.write_text("settings:\n  notify:\n    - type: email\n      password: hunter2-not-real\n"
                        "jobs:\n  - source: a.mp4\n", encoding="utf-8")
    result = run(str(manifest))
    assert result.exit_code == 0
    assert f"{manifest}:4: warning: 'password' holds a literal secret" in result.stdout
    assert "hunter2" not in result.output
    assert result.stdout.splitlines()[-1].startswith("OK: 1 job, 1 output under ")
    assert result.stdout.rstrip().endswith("(1 warning)")


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
