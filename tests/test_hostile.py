"""Hostile and broken input, all through `gsvr-batch run` (validate-only cases live in test_manifest.py /
test_validate_cli.py): each case asserts the exit code, the message, and that nothing else was harmed.

The count of cases is quoted in docs/RELIABILITY.md (keep CASES in step with the tests below).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import GSVR, SAMPLE, env_for, journal_of, make_batch, records, run_cli

pytestmark = pytest.mark.slow

HEAD = "defaults:\n  template: summary_report\n  output_dir: out\nsettings:\n  rpm: 1000\njobs:\n"


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root with its sha256 (symlinks by target): 'nothing else was harmed'."""
    snap = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            snap[rel] = "-> " + os.readlink(p)
        elif p.is_file() and p.stat().st_size > 64 * 1024**2:  # the sparse 3 GB file: size + mtime
            st = p.stat()
            snap[rel] = f"{st.st_size}:{st.st_mtime_ns}"
        elif p.is_file():
            snap[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            snap[rel] = "dir"
    return snap


def _setup_sources(root: Path) -> None:
    shutil.copyfile(SAMPLE, root / "ok.mp4")
    (root / "adir.mp4").mkdir()
    (root / "empty.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("just some notes, not a video\n")
    with open(root / "sparse.mp4", "wb") as fh:  # 3 GB, sparse: costs no disk
        fh.truncate(3 * 1024**3)
    (root / "dangling.mp4").symlink_to(root / "nowhere.mp4")
    (root / "elsewhere").mkdir()


# (name, manifest file name, manifest text, message fragment); every one: exit 2, nothing written.
REJECTED = [
    ("source is a folder", "m.yaml", HEAD + "  - source: adir.mp4\n", "has no video files"),
    ("zero-byte file", "m.yaml", HEAD + "  - source: empty.mp4\n", "file is empty (0 bytes)"),
    ("text renamed .mp4", "m.yaml", HEAD + "  - source: text.mp4\n", "does not look like a video"),
    ("3 GB sparse file", "m.yaml", HEAD + "  - source: sparse.mp4\n", "over the Files API's 2 GB limit"),
    ("dangling symlink", "m.yaml", HEAD + "  - source: dangling.mp4\n", "dangling symlink"),
    ("output with ..", "m.yaml", HEAD + "  - source: ok.mp4\n    output: ../escape.md\n",
     "resolves outside the output root"),
    ("output .. in the middle", "m.yaml", HEAD + "  - source: ok.mp4\n    output: sub/../../x.md\n",
     "resolves outside the output root"),
    # {ABS}: an absolute path outside the output root, filled in per test (no machine path here)
    ("absolute output", "m.yaml", HEAD + "  - source: ok.mp4\n    output: {ABS}\n",
     "resolves outside the output root"),
    ("symlinked folder outside", "m.yaml", HEAD + "  - source: ok.mp4\n    output: link/x.md\n", "through a symlink"),
    ("two jobs, one output", "m.yaml",
     HEAD + "  - source: ok.mp4\n    output: same.md\n  - source: ok.mp4\n    template: comprehensive_lesson\n"
            "    output: same.md\n", "duplicate output 'same.md'"),
    ("empty manifest", "m.yaml", "", "manifest is empty"),
    ("YAML with tabs", "m.yaml", "jobs:\n\t- source: ok.mp4\n", "tab character in indentation"),
    ("YAML duplicate keys", "m.yaml", "jobs:\n  - source: ok.mp4\n    source: ok.mp4\n", "duplicate key 'source'"),
    ("YAML list at top level", "m.yaml", "- source: ok.mp4\n", "top level is a list"),
    ("CSV ragged row", "m.csv", "source,template\nok.mp4,summary_report,extra\n", "row has 3 fields"),
    ("CSV empty source", "m.csv", "source,template\n,summary_report\n", "empty 'source'"),
    ("manifest is a folder", "mdir.yaml", None, "has no video files"),
]


@pytest.mark.parametrize("name,fname,text,fragment", REJECTED, ids=[c[0] for c in REJECTED])
def test_bad_input_through_run_exits_2_with_message_and_writes_nothing(tmp_path, name, fname, text, fragment):
    _setup_sources(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere")
    m = tmp_path / fname
    escape = tmp_path / "elsewhere" / "abs-escape.md"  # absolute, outside the output root
    if text is None:
        m.mkdir()
    else:
        m.write_text(text.replace("{ABS}", str(escape)), encoding="utf-8")
    before = snapshot(tmp_path)
    # In-process (the real `run` command through click) to keep 17 cases fast: each is refused
    # before any worker, socket or journal exists, so there is nothing a subprocess would add.
    from click.testing import CliRunner

    from gsvr_batch.cli import cli

    r = CliRunner().invoke(cli, ["run", str(m), "--progress", "log", "--sandbox"])
    assert r.exit_code == 2, r.output
    assert fragment in r.stderr, r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit)  # no traceback
    assert snapshot(tmp_path) == before  # no journal, no output, nothing outside touched
    assert not escape.exists()


def test_api_key_in_manifest_is_flagged_and_never_echoed(tmp_path, sandbox):
    shutil.copyfile(SAMPLE, tmp_path / "ok.mp4")
    secret = "test-key-not-real-ABCDEFGHIJKLMNOPQRSTUVWX"
    m = tmp_path / "m.yaml"
    m.write_text(HEAD.replace("  rpm: 1000\n", f"  rpm: 1000\n  api_key: {secret}\n") + "  - source: ok.mp4\n")
    r = run_cli(["run", m, "--progress", "log"], env=env_for(sandbox()))
    assert r.returncode == 2
    assert "literal secret" in r.stdout + r.stderr
    assert secret not in r.stdout + r.stderr and secret[18:] not in r.stdout + r.stderr
    assert not (tmp_path / "out").exists()


def test_csv_with_bom_and_semicolons_is_accepted_and_runs(tmp_path, sandbox):
    """Spreadsheet exports: a UTF-8 BOM and ';' separators are read as such (not an error)."""
    shutil.copyfile(SAMPLE, tmp_path / "ok.mp4")
    m = tmp_path / "m.csv"
    m.write_bytes("\ufeffsource;template;output\nok.mp4;summary_report;a.md\n".encode("utf-8"))
    r = run_cli(["run", m, "--progress", "log"], env=env_for(sandbox()), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    outs = list(tmp_path.rglob("a.md"))
    assert len(outs) == 1


def test_unicode_emoji_and_spaces_in_names_run_end_to_end(tmp_path, sandbox):
    names = ["讲座 一 函数.mp4", "talk 🎓 emoji.mp4", "with  two spaces.mp4"]
    m = make_batch(tmp_path, 3, names=names)
    r = run_cli(["run", m, "--progress", "log"], env=env_for(sandbox()))
    assert r.returncode == 0, r.stdout + r.stderr
    outs = sorted(p.name for p in (tmp_path / "out").glob("*.md"))
    assert len(outs) == 3
    assert any("讲座" in o for o in outs) and any("🎓" in o for o in outs)
    v = run_cli(["replay", journal_of(tmp_path), "--verify"])
    assert v.returncode == 0, v.stdout + v.stderr


def test_file_deleted_after_validation_fails_its_task_others_complete(tmp_path, sandbox):
    server = sandbox(latency=0.7)
    m = make_batch(tmp_path, 4, extra_settings="workers: 1".replace("workers: 1", ""))
    text = m.read_text().replace("workers: 2", "workers: 1")
    m.write_text(text)
    victim = tmp_path / "videos" / "lecture-003.mp4"
    p = subprocess.Popen(GSVR + ["run", str(m), "--progress", "log"], env=env_for(server), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    j = journal_of(tmp_path)
    end = time.monotonic() + 60
    while time.monotonic() < end and not (j.exists() and any(x["type"] == "task_started" for x in records(j))):
        time.sleep(0.05)
    victim.unlink()  # validated, queued, then gone before its turn
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1, out + err
    recs = records(j)
    failed = [x for x in recs if x["type"] == "task_failed"]
    assert len(failed) == 1 and failed[0]["error_class"] == "InputError"
    assert "lecture-003.mp4" in failed[0]["message"]
    assert sum(x["type"] == "task_completed" for x in recs) == 3


def _two_manifests(tmp_path: Path) -> tuple[Path, Path]:
    a = make_batch(tmp_path / "a", 2)
    b = make_batch(tmp_path / "b", 2, names=["other-1.mp4", "other-2.mp4"])
    return a, b


def test_journal_of_another_manifest_is_refused_untouched(tmp_path, sandbox):
    server = sandbox()
    a, b = _two_manifests(tmp_path)
    assert run_cli(["run", a, "--progress", "log"], env=env_for(server)).returncode == 0
    j = journal_of(tmp_path / "a")
    before = j.read_bytes()
    r = run_cli(["run", b, "--journal", j, "--progress", "log"], env=env_for(server))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "belongs to another manifest" in r.stderr and "--journal NEW_PATH" in r.stderr
    assert j.read_bytes() == before  # byte for byte
    assert not (tmp_path / "b" / "out").exists() or not list((tmp_path / "b" / "out").glob("*.md"))


def test_flipped_byte_mid_journal_exits_2_with_line_and_repair_hint(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 3)
    assert run_cli(["run", m], env=env_for(server)).returncode == 0
    j = journal_of(tmp_path)
    lines = j.read_bytes().splitlines(keepends=True)
    k = len(lines) // 2
    bad = bytearray(lines[k])
    i = bad.index(b'"type"') + 2
    bad[i] ^= 0x01  # "type" -> "uype": still JSON-ish, wrong checksum
    lines[k] = bytes(bad)
    j.write_bytes(b"".join(lines))
    # Without a snapshot (an older journal): every record is read. With one covering the damaged
    # line, the snapshot's prefix digest must catch it: tests/test_journal_faults.py.
    for snap in j.parent.glob("journal.jsonl.snapshot"):
        snap.unlink()
    before = j.read_bytes()
    r = run_cli(["run", m], env=env_for(server))
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"line {k + 1}" in r.stderr and "gsvr-batch repair" in r.stderr
    assert j.read_bytes() == before


def test_journal_truncated_mid_record_is_repaired_with_warning_and_run_completes(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 3)
    assert run_cli(["run", m], env=env_for(server)).returncode == 0
    j = journal_of(tmp_path)
    data = j.read_bytes()
    lines = data.splitlines(keepends=True)
    # cut the journal in the middle of the last task_completed record (as a crash mid-append would)
    last_done = max(i for i, ln in enumerate(lines) if b'"task_completed"' in ln)
    j.write_bytes(b"".join(lines[:last_done]) + lines[last_done][: len(lines[last_done]) // 2])
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "torn" in (r.stdout + r.stderr).lower()
    assert list(j.parent.glob("journal.jsonl.torn-*"))
    v = run_cli(["replay", j, "--verify"])
    assert v.returncode == 0, v.stdout + v.stderr


def _mount_tmpfs(path: Path, opts: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(name: str, opts: str) -> Path:
        p = tmp_path / name
        if not _mount_tmpfs(p, opts):
            pytest.skip("needs root and tmpfs to simulate a full / read-only disk")
        mounted.append(p)
        return p

    yield mount
    for p in mounted:
        subprocess.run(["umount", "-l", str(p)], capture_output=True)


def test_full_output_disk_pauses_batch_with_exit_75_and_journal_stays_consistent(tmp_path, sandbox, tmpfs):
    server = sandbox()
    out = tmpfs("out", "size=1m")  # less free than the 10 MB margin the writer keeps
    m = make_batch(tmp_path, 2)
    j = tmp_path / "journal.jsonl"
    r = run_cli(["run", m, "--journal", j, "--progress", "log"], env=env_for(server))
    assert r.returncode == 75, r.stdout + r.stderr
    assert "Free some space" in r.stdout
    recs = records(j)
    assert any(x["type"] == "batch_stopped" and x["kind"] == "disk_full" for x in recs)
    assert not [x for x in recs if x["type"] in ("task_failed", "task_completed")]
    assert not list(out.glob("*.md")) and not list(out.glob(".gsvr-tmp-*"))
    st = run_cli(["replay", j])
    assert st.returncode in (0, 1) and "Traceback" not in st.stderr  # journal replays cleanly


def test_read_only_output_folder_fails_tasks_with_the_os_error(tmp_path, sandbox, tmpfs):
    server = sandbox()
    out = tmpfs("out", "size=64m,ro")
    m = make_batch(tmp_path, 2)
    j = tmp_path / "journal.jsonl"
    r = run_cli(["run", m, "--journal", j, "--progress", "log"], env=env_for(server))
    assert r.returncode == 1, r.stdout + r.stderr
    recs = records(j)
    failed = [x for x in recs if x["type"] == "task_failed"]
    assert len(failed) == 2 and all(x["error_class"] == "OutputError" for x in failed)
    assert all("Read-only file system" in x["message"] for x in failed), failed
    assert not list(out.iterdir())


CASES = len(REJECTED) + 9  # 26: rows 1-26 of the table in docs/RELIABILITY.md
