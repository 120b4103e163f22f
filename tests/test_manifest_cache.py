"""manifest_cache.py: a cached build is the build, or is not used.

Every test compares a load through the cache with a load without it (``GSVR_BATCH_CACHE_DIR=off``)
of the same world, after changing one thing the cached build depended on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gsvr_batch import manifest as manifest_mod
from gsvr_batch import manifest_cache
from gsvr_batch.manifest import validate_manifest

from test_manifest import video, write

REPO = Path(__file__).resolve().parent.parent

MANIFEST = """\
defaults:
  template: summary_report
  output_dir: out
  output_pattern: "{date}/{stem}_{template}_{index}.md"
  params:
    audience: teachers
settings:
  workers: 3
  max_duration: 2h
jobs:
  - source: videos/a.mp4
    title: "Lecture A"
  - source: videos/b.mp4
    template: comprehensive_lesson
    output: named/b-lesson.md
  - source: videos/a.mp4
    params:
      language: German
  - source: https://youtu.be/dQw4w9WgXcQ
  - source: https://example.org/talks/c.mp4?x=1
    output_format: json
"""


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("GSVR_BATCH_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def batch(tmp_path):
    root = tmp_path / "b"
    video(root / "videos" / "a.mp4")
    video(root / "videos" / "b.mp4")
    return write(root / "m.yaml", MANIFEST)


def uncached(path, overrides=None, **kw):
    old = os.environ.get("GSVR_BATCH_CACHE_DIR")
    os.environ["GSVR_BATCH_CACHE_DIR"] = "off"
    try:
        return validate_manifest(path, overrides, **kw)
    finally:
        os.environ["GSVR_BATCH_CACHE_DIR"] = old if old is not None else ""
        if old is None:
            del os.environ["GSVR_BATCH_CACHE_DIR"]


def from_cache_only(monkeypatch, path, overrides=None, **kw):
    """A load that must come from the cache: parsing is made impossible for its duration."""
    def no_parse(*a, **k):
        raise AssertionError("the manifest was parsed: the cache was not used")

    with monkeypatch.context() as m:
        m.setattr(manifest_mod, "_read", no_parse)
        return validate_manifest(path, overrides, **kw)


def assert_same(got, want):
    (gm, gp), (wm, wp) = got, want
    assert [str(p) for p in gp] == [str(p) for p in wp]
    assert gm == wm


def test_a_second_load_comes_from_the_cache_and_equals_the_full_build(cache, batch, monkeypatch):
    first = validate_manifest(batch)
    assert first[0] is not None and len(first[0].jobs) == 5
    assert len(list(cache.glob("*.pickle"))) == 1
    warned = [str(p) for p in first[1]]
    assert any("the same source and template" in w for w in warned), warned  # a warning survives the cache
    assert_same(from_cache_only(monkeypatch, batch), first)
    assert_same(from_cache_only(monkeypatch, batch), uncached(batch))
    # a CSV manifest too
    csv = write(batch.parent / "m.csv", "source,title,template\nvideos/a.mp4,A,summary_report\n"
                                        "videos/b.mp4,B,comprehensive_lesson\n")
    validate_manifest(csv)
    assert_same(from_cache_only(monkeypatch, csv), uncached(csv))


def test_the_cache_file_is_private_and_off_means_off(cache, batch, monkeypatch):
    validate_manifest(batch)
    (entry,) = cache.glob("*.pickle")
    assert entry.stat().st_mode & 0o777 == 0o600
    shutil.rmtree(cache)
    monkeypatch.setenv("GSVR_BATCH_CACHE_DIR", "off")
    assert validate_manifest(batch)[0] is not None
    assert not cache.exists()


@pytest.mark.parametrize("change", ["edit", "overrides", "date", "check_files", "code"])
def test_what_the_key_holds_makes_a_new_build(cache, batch, monkeypatch, change):
    validate_manifest(batch)
    overrides, kw = None, {}
    if change == "edit":
        batch.write_text(MANIFEST.replace("workers: 3", "workers: 4"), encoding="utf-8")
    elif change == "overrides":
        overrides = {"model": "gemini-2.5-pro"}
    elif change == "date":
        kw = {"date": "2030-01-02"}
    elif change == "check_files":
        kw = {"check_files": False}
    else:
        monkeypatch.setattr(manifest_cache, "_CODE", "another version of gsvr-batch")
    with pytest.raises(AssertionError, match="the cache was not used"):
        from_cache_only(monkeypatch, batch, overrides, **kw)
    got = validate_manifest(batch, overrides, **kw)
    assert_same(got, uncached(batch, overrides, **kw))
    assert_same(from_cache_only(monkeypatch, batch, overrides, **kw), got)  # and that is cached in turn


def _delete_video(root: Path) -> None:
    (root / "videos" / "b.mp4").unlink()


def _not_a_video(root: Path) -> None:
    (root / "videos" / "a.mp4").write_bytes(b"<html>not found</html>")


def _video_is_a_folder(root: Path) -> None:
    (root / "videos" / "b.mp4").unlink()
    (root / "videos" / "b.mp4").mkdir()


def _output_folder_leads_outside(root: Path) -> None:
    outside = root.parent / "elsewhere"
    outside.mkdir()
    (root / "out").mkdir(exist_ok=True)
    (root / "out" / "named").symlink_to(outside, target_is_directory=True)


def _output_is_a_link_outside(root: Path) -> None:
    (root / "out" / "named").mkdir(parents=True)
    (root / "out" / "named" / "b-lesson.md").symlink_to(root.parent / "stolen.md")


def _output_root_moved(root: Path) -> None:
    real = root.parent / "real-out"
    real.mkdir()
    (root / "out").symlink_to(real, target_is_directory=True)


def _state_folder_is_an_output_folder(root: Path) -> None:
    (root / "out").mkdir(exist_ok=True)
    (root / "out" / "named").symlink_to(root / "out" / ".gsvr", target_is_directory=True)


def _journal_of_another_day(root: Path) -> None:
    journal = root / "out" / ".gsvr" / "journal.jsonl"
    journal.parent.mkdir(parents=True)
    journal.write_text('{"seq":1,"ts":"2020-06-15T12:00:00.000Z","type":"batch_created"}\n', encoding="utf-8")


FS_CHANGES = [_delete_video, _not_a_video, _video_is_a_folder, _output_folder_leads_outside, _output_is_a_link_outside,
              _output_root_moved, _state_folder_is_an_output_folder, _journal_of_another_day]


@pytest.mark.parametrize("change", FS_CHANGES, ids=lambda f: f.__name__.strip("_"))
def test_a_change_on_disk_gives_what_the_full_build_gives(cache, batch, monkeypatch, change):
    first = validate_manifest(batch)
    assert first[0] is not None
    change(batch.parent)
    with monkeypatch.context() as m:  # the key did not change: only the checks on load see it
        m.setattr(manifest_mod, "_cache_still_holds", lambda *a, **k: True)
        assert_same(from_cache_only(monkeypatch, batch), first)
    got = validate_manifest(batch)
    want = uncached(batch)
    assert_same(got, want)
    assert got != first  # each change matters: an error, or other output names


def test_templates_are_checked_again(cache, tmp_path, monkeypatch):
    root = tmp_path / "t"
    video(root / "v.mp4")
    tdir = root / "my_templates"
    tdir.mkdir(parents=True)
    source = (REPO / "templates" / "summary_report.yaml").read_text(encoding="utf-8")
    (tdir / "mine.yaml").write_text(source.replace("summary_report", "mine"), encoding="utf-8")
    m = write(root / "m.yaml", "settings:\n  templates_dir: my_templates\njobs:\n"
                               "  - source: v.mp4\n    template: mine\n    params:\n      audience: kids\n")
    assert validate_manifest(m)[0] is not None
    assert_same(from_cache_only(monkeypatch, m), uncached(m))
    # the parameter the job sets no longer takes its value
    (tdir / "mine.yaml").write_text(source.replace("summary_report", "mine").replace(
        "name: audience\n", "name: audience\n        choices: [adults]\n"), encoding="utf-8")
    got = validate_manifest(m)
    assert got[0] is None and "'audience' is 'kids'" in " ".join(str(p) for p in got[1])
    assert_same(got, uncached(m))
    # the template renamed
    (tdir / "mine.yaml").write_text(source.replace("summary_report", "yours"), encoding="utf-8")
    got = validate_manifest(m)
    assert got[0] is None and "unknown template 'mine'" in " ".join(str(p) for p in got[1])
    assert_same(got, uncached(m))
    # and the folder gone
    shutil.rmtree(tdir)
    got = validate_manifest(m)
    assert got[0] is None and "templates folder not found" in " ".join(str(p) for p in got[1])
    assert_same(got, uncached(m))


def test_relative_command_line_paths_and_home_are_part_of_the_key(cache, batch, monkeypatch, tmp_path):
    a, b = tmp_path / "cwd-a", tmp_path / "cwd-b"
    a.mkdir()
    b.mkdir()
    monkeypatch.chdir(a)
    first = validate_manifest(batch, {"output_dir": "lessons"})
    assert first[0].output_root == (a / "lessons").resolve()
    monkeypatch.chdir(b)
    got = validate_manifest(batch, {"output_dir": "lessons"})
    assert got[0].output_root == (b / "lessons").resolve()
    assert_same(got, uncached(batch, {"output_dir": "lessons"}))
    monkeypatch.setenv("HOME", str(a))
    first = validate_manifest(batch, {"output_dir": "~/lessons"})
    monkeypatch.setenv("HOME", str(b))
    got = validate_manifest(batch, {"output_dir": "~/lessons"})
    assert got[0].output_root == (b / "lessons").resolve() != first[0].output_root


def test_a_manifest_holding_what_looks_like_a_key_is_not_copied_into_the_cache(cache, tmp_path):
    root = tmp_path / "s"
    video(root / "a.mp4")
    fake = "AIza" + "x" * 35  # key-shaped, not a key
    m = write(root / "m.yaml", f"jobs:\n  - source: a.mp4\n    title: {fake}\n")
    got = validate_manifest(m)
    assert got[0] is not None and any("looks like a Google API key" in str(p) for p in got[1])
    assert not cache.exists() or not list(cache.iterdir())


def test_folders_list_files_and_derived_manifests_are_not_cached(cache, tmp_path):
    root = tmp_path / "f"
    video(root / "videos" / "a.mp4")
    write(root / "list.txt", "videos/a.mp4\n")
    for text in ("jobs:\n  - source: videos\n", "jobs:\n  - list: list.txt\n"):
        m = write(root / "m.yaml", text)
        assert validate_manifest(m)[0] is not None
    # a folder job's videos are whatever the folder holds now
    video(root / "videos" / "new.mp4")
    m = write(root / "m.yaml", "jobs:\n  - source: videos\n")
    assert len(validate_manifest(m)[0].jobs) == 2
    assert not list(cache.glob("*.pickle"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "other_manifest", "garbage", "empty"])
def test_a_damaged_or_foreign_cache_file_is_ignored_and_rewritten(cache, batch, tmp_path, monkeypatch, damage):
    first = validate_manifest(batch)
    (entry,) = cache.glob("*.pickle")
    blob = entry.read_bytes()
    if damage == "flip":
        i = len(blob) - 100
        entry.write_bytes(blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1:])
    elif damage == "truncate":
        entry.write_bytes(blob[: len(blob) // 2])
    elif damage == "other_manifest":
        # another manifest's intact entry under this one's name (a copied cache folder, say)
        other = write(tmp_path / "o" / "m.yaml", MANIFEST.replace("workers: 3", "workers: 5"))
        video(other.parent / "videos" / "a.mp4")
        video(other.parent / "videos" / "b.mp4")
        validate_manifest(other)
        (other_entry,) = [p for p in cache.glob("*.pickle") if p != entry]
        shutil.copyfile(other_entry, entry)
    elif damage == "garbage":
        entry.write_bytes(b"\x80\x04not a pickle at all")
    else:
        entry.write_bytes(b"")
    got = validate_manifest(batch)
    assert_same(got, first)
    assert got[0].settings.workers == 3
    assert_same(from_cache_only(monkeypatch, batch), first)  # rewritten, and used again


def test_a_cache_that_cannot_be_written_is_no_cache(tmp_path, batch, monkeypatch):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("GSVR_BATCH_CACHE_DIR", str(blocked / "cache"))
    got = validate_manifest(batch)
    assert_same(got, uncached(batch))
    assert_same(validate_manifest(batch), got)


def test_only_its_own_files_are_pruned_old_ones_and_beyond_the_cap(cache, batch, monkeypatch):
    validate_manifest(batch)
    (entry,) = cache.glob("*.pickle")
    ancient = entry.stat().st_mtime - 40 * 86400
    old, tmp = cache / ("0" * 32 + ".pickle"), cache / ".gsvr-cache-tmp-killed"
    foreign = [cache / "embeddings.pickle", cache / ".tmp-upload-in-progress"]  # a shared folder's others
    for p in [old, tmp, *foreign]:
        p.write_bytes(b"x")
        os.utime(p, (ancient, ancient))
    manifest_cache.prune(cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted([entry.name] + [p.name for p in foreign])
    # at most MAX_ENTRIES, the least recently used go first
    monkeypatch.setattr(manifest_cache, "MAX_ENTRIES", 3)
    for i in range(5):
        validate_manifest(batch, {"workers": i + 1})
    assert len([p for p in cache.glob("*.pickle") if len(p.stem) == 32]) == 3
    assert_same(from_cache_only(monkeypatch, batch, {"workers": 5}), uncached(batch, {"workers": 5}))


def test_a_folder_others_can_write_to_is_not_used(cache, batch, monkeypatch):
    cache.mkdir(mode=0o700)
    os.chmod(cache, 0o777)  # anyone could plant an entry (a pickle runs code when loaded)
    assert_same(validate_manifest(batch), uncached(batch))
    assert not list(cache.iterdir())
    os.chmod(cache, 0o700)
    validate_manifest(batch)
    (entry,) = cache.glob("*.pickle")
    os.chmod(entry, 0o666)
    with pytest.raises(AssertionError, match="the cache was not used"):
        from_cache_only(monkeypatch, batch)
    # an entry that is not a regular file (a FIFO would block the read) is skipped, never waited on
    entry.unlink()
    os.mkfifo(entry)
    assert_same(validate_manifest(batch), uncached(batch))


def test_without_file_checks_a_source_that_became_a_folder_is_a_folder_job(cache, tmp_path):
    root = tmp_path / "nf"
    video(root / "lectures.mp4")
    m = write(root / "m.yaml", "jobs:\n  - source: lectures.mp4\n")
    assert len(validate_manifest(m, check_files=False)[0].jobs) == 1
    (root / "lectures.mp4").unlink()
    video(root / "lectures.mp4" / "week1.mp4")
    video(root / "lectures.mp4" / "week2.mp4")
    got = validate_manifest(m, check_files=False)
    assert len(got[0].jobs) == 2
    assert_same(got, uncached(m, check_files=False))


def test_command_line_values_are_keyed_by_type_and_odd_ones_mean_no_cache(cache, batch, monkeypatch):
    import datetime

    a = validate_manifest(batch, {"output": Path("lessons")})
    b = validate_manifest(batch, {"output": "PosixPath('lessons')"})
    assert a[0].output_root != b[0].output_root
    assert_same(b, uncached(batch, {"output": "PosixPath('lessons')"}))
    # a date object (library use) is keyed by its value; an unkeyable value builds in full, no traceback
    got = validate_manifest(batch, date=datetime.date(2024, 3, 1))
    assert_same(got, uncached(batch, date=datetime.date(2024, 3, 1)))
    assert_same(from_cache_only(monkeypatch, batch, date=datetime.date(2024, 3, 1)), got)
    assert_same(validate_manifest(batch, {"model": object()}), uncached(batch, {"model": object()}))


def test_the_run_says_the_same_with_and_without_the_cache(tmp_path, batch):
    """Real processes: `validate` twice (the second from the cache), then a video goes missing."""
    env = dict(os.environ, GSVR_BATCH_CACHE_DIR=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "gsvr_batch", "validate", str(batch)]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert first.returncode == again.returncode == 0, first.stderr
    assert again.stdout == first.stdout
    assert list((tmp_path / "cache").glob("*.pickle"))
    _delete_video(batch.parent)
    cached = subprocess.run(cmd, env=env, capture_output=True, text=True)
    off = subprocess.run(cmd, env=dict(env, GSVR_BATCH_CACHE_DIR="off"), capture_output=True, text=True)
    assert cached.returncode == off.returncode == 2
    assert "file not found: videos/b.mp4" in cached.stderr + cached.stdout
    assert (cached.stdout, cached.stderr) == (off.stdout, off.stderr)


def test_without_file_checks_a_deleted_video_gives_what_the_full_build_gives(cache, batch):
    """A build made without file checks (what `status m.yaml` and the deleted-video rule load), a
    video deleted since: the load gives the full build's answer (which needs no video there)."""
    first = validate_manifest(batch, check_files=False)
    assert first[0] is not None and validate_manifest(batch, check_files=False)[0] is not None  # stored, loaded
    _delete_video(batch.parent)
    got = validate_manifest(batch, check_files=False)
    assert got[0] is not None
    assert_same(got, uncached(batch, check_files=False))
