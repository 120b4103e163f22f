"""A JOURNAL argument names a batch the way people name it (gsvr_batch/locate.py).

The journal, its output folder or state folder, or what `run` was given all lead to the same
journal; anything else is refused before a command acts on it. `repair` once took a manifest
for a journal whose first record was damaged and cut it to 0 bytes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SAMPLE
from gsvr_batch import journal as jr
from gsvr_batch.cli import cli
from gsvr_batch.errors import JournalError
from gsvr_batch.lifecycle import BatchLog
from gsvr_batch.locate import locate_journal, looks_like_journal, starts_like_journal

MANIFEST = ("sandbox: true\ndefaults:\n  template: summary_report\n  output_dir: out\n"
            "jobs:\n  - source: a.mp4\n")


def batch(root: Path, *, run: bool = True, name: str = "m.yaml", text: str = MANIFEST) -> tuple[Path, Path]:
    """A manifest and the journal a run of it uses (begun by the real BatchLog, as `run` begins it,
    when ``run``)."""
    from gsvr_batch.manifest import journal_of_manifest

    shutil.copyfile(SAMPLE, root / "a.mp4")
    m = root / name
    m.write_text(text, encoding="utf-8")
    j = root / "out" / ".gsvr" / "journal.jsonl"
    if run:
        journal, identity = journal_of_manifest(m)
        assert journal == j.resolve()
        bl, _ = BatchLog.open(j)
        bl.create_batch(manifest=str(m), manifest_identity=identity, manifest_hash="h", settings={}, version="t")
        bl.close()
    return m, j


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_every_way_of_naming_a_batch_leads_to_its_journal(tmp_path, monkeypatch):
    m, j = batch(tmp_path)
    for named in (j, tmp_path / "out", tmp_path / "out" / ".gsvr", m):
        assert locate_journal(named).resolve() == j.resolve(), named
    monkeypatch.chdir(tmp_path)
    assert locate_journal("m.yaml").resolve() == j.resolve()  # relative, as typed
    assert locate_journal("out").resolve() == j.resolve()


def test_a_video_names_the_batch_run_on_it_alone(tmp_path):
    batch(tmp_path, run=False)
    with pytest.raises(JournalError) as ei:
        locate_journal(tmp_path / "a.mp4")
    assert str(ei.value).startswith(f"{tmp_path / 'a.mp4'} is a video whose batch has not run yet: its journal would be ")


def test_a_manifest_that_has_not_run_says_where_its_journal_would_be(tmp_path):
    m, j = batch(tmp_path, run=False)
    with pytest.raises(JournalError) as ei:
        locate_journal(m)
    assert str(ei.value) == (f"{m} is a manifest whose batch has not run yet: its journal would be {j}. Run it first "
                             f"(gsvr-batch run {m}), or, if it ran with --journal or --output, name that journal")
    assert not j.parent.exists()  # nothing written on the way


def test_a_manifest_that_cannot_be_read_is_named_as_such(tmp_path):
    m = tmp_path / "m.yaml"
    m.write_text("jobs: [\n", encoding="utf-8")
    with pytest.raises(JournalError) as ei:
        locate_journal(m)
    assert str(ei.value).startswith(f"{m} is a manifest, not a journal, and its journal cannot be worked out: it has errors (")
    assert f"See `gsvr-batch validate {m}`" in str(ei.value)


def test_a_manifest_with_errors_still_names_the_batch_it_ran(tmp_path):
    """Run with `--templates mine/`, a manifest's template is unknown without it: where its journal
    is does not depend on that."""
    m, j = batch(tmp_path, text=MANIFEST.replace("summary_report", "my_own_template"))
    assert locate_journal(m).resolve() == j.resolve()


def test_a_journal_of_another_manifest_is_not_this_ones(tmp_path):
    """Two manifests with one output folder: the journal there is the batch of the one that ran."""
    m, j = batch(tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text(MANIFEST, encoding="utf-8")
    with pytest.raises(JournalError) as ei:
        locate_journal(other)
    assert str(ei.value) == (f"{other} is a manifest whose batch has not run yet: the journal its run would use, "
                             f"{j.resolve()}, belongs to another manifest ({m}). If it ran with --journal or "
                             f"--output, name that journal")
    assert locate_journal(m).resolve() == j.resolve()


def test_what_is_no_journal_and_nothing_run_accepts_is_refused(tmp_path):
    with pytest.raises(JournalError, match=r"^journal not found: .*nope\.jsonl$"):
        locate_journal(tmp_path / "nope.jsonl")
    with pytest.raises(JournalError, match="^no journal given"):
        locate_journal(" ")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(JournalError) as ei:
        locate_journal(empty)
    assert str(ei.value).startswith(f"{empty} is a folder whose batch has not run yet: its journal would be "
                                    f"{empty / 'output' / '.gsvr' / 'journal.jsonl'}.")


def test_what_looks_like_a_journal(tmp_path):
    m, j = batch(tmp_path)
    assert looks_like_journal(j) and not looks_like_journal(m)
    empty = tmp_path / "new.log"
    empty.write_bytes(b"")
    assert not looks_like_journal(empty) and starts_like_journal(empty)  # `run --journal new.log` may fill it
    empty_journal = tmp_path / "journal.jsonl"
    empty_journal.write_bytes(b"")
    assert looks_like_journal(empty_journal)  # created by a run that died before its first record
    damaged = tmp_path / "j.jsonl"
    damaged.write_bytes(b"\x00garbage\n")
    assert looks_like_journal(damaged)  # a .jsonl reaches repair, which tells what it found


def test_status_and_replay_take_the_manifest(tmp_path):
    m, j = batch(tmp_path)
    r = invoke("replay", m, "--json")
    assert r.exit_code == 0, r.output
    assert str(j.resolve()) in r.output or str(j) in r.output
    r = invoke("status", tmp_path / "out")
    assert r.exit_code == 0 and "0/0 done" in r.output, r.output


def test_repair_given_a_manifest_by_mistake_changes_nothing(tmp_path):
    """The mistake that emptied a manifest: `repair m.yaml` before the batch ever ran."""
    m, j = batch(tmp_path, run=False)
    before = m.read_bytes()
    r = invoke("repair", m, "--yes")
    assert r.exit_code == 2
    assert r.stderr == (f"Error: {m} is a manifest whose batch has not run yet: its journal would be {j}. Run it first "
                        f"(gsvr-batch run {m}), or, if it ran with --journal or --output, name that journal\n")
    assert m.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "m.yaml"]  # no copy, no lock file


def test_repair_of_a_sound_journal_changes_nothing(tmp_path):
    m, j = batch(tmp_path)
    before = j.read_bytes()
    r = invoke("repair", m, "--yes")
    assert r.exit_code == 0, r.output
    assert r.stdout == f"Nothing to repair: all 1 records of {j} are good; nothing changed\n"
    assert j.read_bytes() == before and not list(j.parent.glob("*.corrupt-*"))


def test_repair_refuses_to_keep_nothing(tmp_path):
    """A journal whose first record is damaged (or a file that is no journal at all) is not cut to
    nothing: the user decides, with the file as it was."""
    _m, j = batch(tmp_path)
    data = bytearray(j.read_bytes())
    data[20] ^= 0x01
    j.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="would keep nothing; nothing changed"):
        jr.repair(j)
    r = invoke("repair", j, "--yes")
    assert r.exit_code == 2
    assert r.stderr == (f"Error: {j}: its first record is damaged or it is not a gsvr-batch journal, so a repair "
                        f"would keep nothing; nothing changed. If it is your batch's journal, move it aside to "
                        f"start the batch again\n")
    assert j.read_bytes() == bytes(data) and not list(j.parent.glob("*.corrupt-*"))


def test_the_folder_holding_the_manifest_names_its_batch(tmp_path):
    m, j = batch(tmp_path, name="manifest.yaml")
    assert locate_journal(tmp_path).resolve() == j.resolve()
    assert locate_journal(f"{tmp_path}/").resolve() == j.resolve()


def test_running_the_folder_that_holds_a_manifest_is_refused(tmp_path):
    """`run jobs/` for `run jobs/manifest.yaml` would run every video under jobs/ with the defaults, as
    a batch of its own, into the same output folder: refused, with both ways on."""
    from gsvr_batch.manifest import validate_sources

    m, j = batch(tmp_path, run=False)
    m.rename(tmp_path / "manifest.yaml")
    manifest, problems = validate_sources(tmp_path)
    assert manifest is None
    held = tmp_path / "manifest.yaml"
    assert [str(p) for p in problems] == [
        f"{tmp_path}: a folder holding a manifest ({held}), not a folder of videos (to run that manifest: "
        f"gsvr-batch run {held}; to run the videos under it with the defaults instead, name them or their own folder)"]
    r = invoke("run", tmp_path, "--sandbox")
    assert r.exit_code == 2
    assert r.stderr == f"Error: manifest has 1 error:\n  {problems[0]}\n"
    assert not j.parent.exists()  # nothing started
    # without the manifest it is a folder of videos, run as before
    held.unlink()
    assert validate_sources(tmp_path, check_files=False)[0] is not None


def test_run_with_journal_onto_a_file_that_is_no_journal_is_refused_untouched(tmp_path):
    m, j = batch(tmp_path, run=False)
    other = tmp_path / "notes.csv"
    other.write_text("source,title\na.mp4,A\n", encoding="utf-8")
    r = invoke("run", m, "--journal", other, "--sandbox")
    assert r.exit_code == 2
    assert r.stderr == (f"Error: {other} is not a gsvr-batch journal (it does not start with a journal record); "
                        f"give --journal a new file, or the journal of this batch\n")
    assert other.read_text(encoding="utf-8") == "source,title\na.mp4,A\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "m.yaml", "notes.csv"]  # no lock, no state


def test_a_journal_damaged_at_its_first_record_is_not_sent_to_repair(tmp_path):
    """`repair` keeps the good records before the damage: none here, and it refuses. The message says
    what can be done instead."""
    from gsvr_batch.lifecycle import replay

    j = tmp_path / "j.jsonl"
    j.write_bytes(b"not a record\n" + jr.encode_record({"seq": 2, "ts": "2026-01-01T00:00:00.000Z", "type": "x"}))
    with pytest.raises(JournalError) as ei:
        replay(j)
    assert str(ei.value) == (f"{j}: its first record is damaged (bad checksum or malformed JSON) and is followed by "
                             f"more records, or it is not a gsvr-batch journal; refusing to guess. If it is your "
                             f"batch's journal, move it aside to start the batch again")


@pytest.mark.timeout(60)
def test_a_journal_that_is_a_fifo_or_a_folder_is_a_problem_not_a_hang(tmp_path):
    """A FIFO where the journal goes blocked the first read of it for ever (`--dry-run`, `validate`,
    and a cron run, which would hang). Every load of the manifest says so instead, exit 2."""
    from gsvr_batch.manifest import validate_sources

    m, _j = batch(tmp_path, run=False)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for journal, why in ((fifo, "is not a regular file"), (tmp_path, "is a folder")):
        manifest, problems = validate_sources(m, {"journal": str(journal)})
        assert manifest is None
        assert [str(p) for p in problems] == [f"<command line>: the journal {journal} {why} "
                                              f"(name a new file, or the journal of this batch)"]
        for args in (("run", m), ("run", m, "--dry-run"), ("validate", m)):
            r = invoke(*args, "--journal", journal, "--sandbox")
            assert r.exit_code == 2, (args, r.output)
            assert f"the journal {journal} {why}" in r.stderr + r.stdout
    m.write_text(MANIFEST.replace("jobs:", f"settings:\n  journal: {fifo}\njobs:"), encoding="utf-8")
    manifest, problems = validate_sources(m)
    assert [str(p) for p in problems] == [f"{m}:6: the journal {fifo} is not a regular file "
                                          f"(name a new file, or the journal of this batch)"]
    r = invoke("status", fifo)
    assert r.exit_code == 2
    assert r.stderr == f"Error: {fifo} is not a regular file: name a journal, an output folder or the manifest you ran\n"


def test_run_with_journal_onto_a_jsonl_that_is_no_journal_is_refused_untouched(tmp_path):
    """A `.jsonl` of somebody else's (one line: it was taken for a torn tail and moved aside; several:
    refused after a lock file was left) is refused like any other file that is no journal."""
    m, _j = batch(tmp_path, run=False)
    for content in (b'{"a": 1}\n', b'{"a": 1}\n{"b": 2}\n'):
        data = tmp_path / "data.jsonl"
        data.write_bytes(content)
        r = invoke("run", m, "--journal", data, "--sandbox")
        assert r.exit_code == 2
        assert r.stderr == (f"Error: {data} is not a gsvr-batch journal (it does not start with a journal record); "
                            f"give --journal a new file, or the journal of this batch\n")
        assert data.read_bytes() == content
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "data.jsonl", "m.yaml"]


def test_odd_journal_arguments_get_an_error_not_a_traceback(tmp_path, monkeypatch):
    long = tmp_path / ("a" * 5000)
    r = invoke("status", long)
    assert r.exit_code == 2 and r.stderr == f"Error: cannot read {long}: File name too long\n"
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    r = invoke("repair", empty, "--yes")
    assert r.exit_code == 2 and r.stderr.startswith(f"Error: {empty} is not a journal")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]  # no lock file beside it
    m, j = batch(tmp_path, name="manifest.yaml")
    monkeypatch.setenv("HOME", str(tmp_path.parent))
    for quoted in (f"~/{tmp_path.name}", f"~/{tmp_path.name}/manifest.yaml", f"~/{tmp_path.name}/out"):
        assert locate_journal(quoted).resolve() == j.resolve(), quoted


def test_a_folder_holding_a_manifest_among_other_inputs_is_refused(tmp_path):
    from gsvr_batch.manifest import validate_sources

    batch(tmp_path, run=False, name="manifest.yaml")
    manifest, problems = validate_sources([str(tmp_path), str(tmp_path / "a.mp4")], check_files=False)
    assert manifest is None
    assert [p.message for p in problems] == [f"a folder holding a manifest ({tmp_path / 'manifest.yaml'}), "
                                             f"not a folder of videos"]


def test_run_given_the_journal_names_the_manifest_to_run(tmp_path):
    """`run journal.jsonl` read the journal as a list of videos: one "file not found" per record."""
    from gsvr_batch.manifest import validate_sources

    m, j = batch(tmp_path)
    manifest, problems = validate_sources(j)
    assert manifest is None
    assert [str(p) for p in problems] == [
        f"{j}: this is a gsvr-batch journal, not a manifest: run the manifest the batch was run with ({m}) "
        f"(status, replay, report and retry take the journal)"]


def test_a_folder_of_videos_names_its_batch_without_reading_the_folder(tmp_path, monkeypatch):
    """`status /` listed every file on the disk to find videos it did not need."""
    from gsvr_batch import manifest as manifest_mod
    from gsvr_batch.manifest import folder_batch, validate_sources

    videos = tmp_path / "lectures"
    videos.mkdir()
    shutil.copyfile(SAMPLE, videos / "a.mp4")
    built, _ = validate_sources(videos, check_files=False)
    assert folder_batch(videos) == (built.journal, built.identity)  # the run's own answer
    bl, _ = BatchLog.open(built.journal)
    bl.create_batch(manifest=str(videos), manifest_identity=built.identity, manifest_hash="h", settings={}, version="t")
    bl.close()
    monkeypatch.setattr(manifest_mod, "_expand", None)  # reading the folder would fail now
    assert locate_journal(videos) == built.journal


def test_the_folder_holding_two_manifests_names_the_batch_of_the_one_that_ran(tmp_path):
    """jobs/ ships manifest.yaml and manifest.csv, one output folder: the batch there is the one that ran."""
    from gsvr_batch.manifest import journal_of_manifest

    shutil.copyfile(SAMPLE, tmp_path / "a.mp4")
    (tmp_path / "manifest.yaml").write_text("sandbox: true\ndefaults:\n  template: summary_report\n"
                                            "jobs:\n  - source: a.mp4\n", encoding="utf-8")
    csv = tmp_path / "manifest.csv"
    csv.write_text("source,template\na.mp4,summary_report\n", encoding="utf-8")
    journal, identity = journal_of_manifest(csv)
    assert journal == journal_of_manifest(tmp_path / "manifest.yaml")[0]  # one output folder
    bl, _ = BatchLog.open(journal)
    bl.create_batch(manifest=str(csv), manifest_identity=identity, manifest_hash="h", settings={}, version="t")
    bl.close()
    assert locate_journal(tmp_path) == journal


def test_repair_of_what_it_cannot_repair_asks_nothing_and_leaves_no_lock(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b'{"a": 1}\n{"b": 2}\n')
    r = CliRunner().invoke(cli, ["repair", str(data)], input="y\n")
    assert r.exit_code == 2
    assert "Cut " not in r.output  # not asked
    assert r.stderr.startswith(f"Error: {data}: its first record is damaged or it is not a gsvr-batch journal")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]


def test_a_journal_among_other_inputs_is_named_as_such(tmp_path):
    from gsvr_batch.manifest import validate_sources

    m, j = batch(tmp_path)
    manifest, problems = validate_sources([str(j), str(tmp_path / "a.mp4")], check_files=False)
    assert manifest is None
    assert [p.message for p in problems if p.is_error] == [f"{j} is a gsvr-batch journal, not a list of videos"]
