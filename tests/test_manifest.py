"""manifest.py: parsing YAML/CSV/folders/lists, stable ids, output names, and every validation problem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gsvr_batch import media
from gsvr_batch.errors import ManifestError
from gsvr_batch.manifest import (
    Settings,
    derive_manifest,
    load_manifest,
    validate_manifest,
    write_manifest_yaml,
)

REPO = Path(__file__).resolve().parent.parent
MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\x00" * 64


def video(path: Path, head: bytes = MP4_HEAD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def errors(problems):
    return [p for p in problems if p.is_error]


def only_error(problems):
    errs = errors(problems)
    assert len(errs) == 1, [str(p) for p in problems]
    return errs[0]


# --- example manifests ------------------------------------------------------------------


def test_example_manifests_validate_clean_and_agree():
    yaml_m, yaml_p = validate_manifest(REPO / "jobs" / "manifest.yaml")
    csv_m, csv_p = validate_manifest(REPO / "jobs" / "manifest.csv")
    assert yaml_p == [] and csv_p == [], [str(p) for p in yaml_p + csv_p]
    assert len(yaml_m.jobs) == 4 and yaml_m.settings.sandbox is True
    assert yaml_m.output_root == (REPO / "jobs" / "output").resolve()
    kinds = [j.source_kind for j in yaml_m.jobs]
    assert kinds == ["local", "local", "local", "youtube"]
    chinese = yaml_m.jobs[2]
    assert chinese.template == "chinese_transcript" and chinese.output_path.endswith("讲座-03-函数_chinese_transcript.md")
    # same sources, templates and outputs → same ids, whichever format wrote them
    assert [j.job_id for j in yaml_m.jobs] == [j.job_id for j in csv_m.jobs]
    assert csv_m.jobs[1].params["audience"] == "high school students, grade 10"


# --- CSV ---------------------------------------------------------------------------------


def test_csv_bom_crlf_quoted_fields_and_chinese_names(tmp_path):
    video(tmp_path / "视频" / "讲座 一.mp4")
    video(tmp_path / "b.mov")
    data = ('\ufeffsource,title,audience\r\n'
            '视频/讲座 一.mp4,"函数, 第一讲",大学生\r\n'
            'b.mov,"He said ""hi""","grade 10, advanced"\r\n').encode("utf-8")
    (tmp_path / "m.csv").write_bytes(data)
    m = load_manifest(tmp_path / "m.csv")
    assert [j.title for j in m.jobs] == ["函数, 第一讲", 'He said "hi"']
    assert m.jobs[0].source == str(tmp_path / "视频" / "讲座 一.mp4")
    assert m.jobs[0].params == {"audience": "大学生"}
    assert m.jobs[1].params == {"audience": "grade 10, advanced"}
    assert m.jobs[0].origin.endswith("m.csv:2") and m.jobs[1].origin.endswith("m.csv:3")


def test_csv_semicolon_separator_is_accepted(tmp_path):
    video(tmp_path / "a.mp4")
    write(tmp_path / "m.csv", "source;template;audience\na.mp4;summary_report;teachers, staff\n")
    m = load_manifest(tmp_path / "m.csv")
    assert m.jobs[0].template == "summary_report"
    assert m.jobs[0].params == {"audience": "teachers, staff"}


def test_csv_ragged_row_and_empty_source_reported_with_lines(tmp_path):
    video(tmp_path / "a.mp4")
    write(tmp_path / "m.csv", "source,title\na.mp4,A\na.mp4,B,extra\n,C\n")
    m, problems = validate_manifest(tmp_path / "m.csv")
    assert m is None
    msgs = {(p.line, p.message) for p in errors(problems)}
    assert (3, "row has 3 fields but the header has 2") in msgs
    assert (4, "empty 'source' in this row") in msgs
    assert len(msgs) == 2


def test_csv_missing_source_column(tmp_path):
    write(tmp_path / "m.csv", "path,title\na.mp4,A\n")
    p = only_error(validate_manifest(tmp_path / "m.csv")[1])
    assert (p.line, p.message) == (1, "missing 'source' column in the header row")


def test_csv_not_utf8_is_a_problem_not_a_traceback(tmp_path):
    (tmp_path / "m.csv").write_bytes("source,title\na.mp4,Caf\u00e9\n".encode("latin-1"))
    p = only_error(validate_manifest(tmp_path / "m.csv")[1])
    assert p.line == 2 and p.message.startswith("not UTF-8 text (byte 0xe9")
    assert "UTF-8" in p.hint


# --- YAML syntax and shape ---------------------------------------------------------------


def test_yaml_tabs_reported_per_line(tmp_path):
    write(tmp_path / "m.yaml", "jobs:\n\t- source: a.mp4\n  - source: b.mp4\n\t\t\n")
    p = only_error(validate_manifest(tmp_path / "m.yaml")[1])
    assert (p.line, p.message) == (2, "tab character in indentation")
    assert "spaces" in p.hint


def test_yaml_duplicate_keys_detected(tmp_path):
    video(tmp_path / "a.mp4")
    write(tmp_path / "m.yaml", "jobs:\n  - source: a.mp4\n    title: One\n    title: Two\n")
    p = only_error(validate_manifest(tmp_path / "m.yaml")[1])
    assert (p.line, p.message) == (4, "duplicate key 'title' (first at line 3)")


def test_yaml_top_level_list_and_scalar(tmp_path):
    write(tmp_path / "m.yaml", "- source: a.mp4\n")
    p = only_error(validate_manifest(tmp_path / "m.yaml")[1])
    assert (p.line, p.message) == (1, "the manifest's top level is a list, not a mapping")
    write(tmp_path / "s.yaml", "just text\n")
    p = only_error(validate_manifest(tmp_path / "s.yaml")[1])
    assert p.message == "the manifest's top level is a single value, not a mapping"


@pytest.mark.parametrize("name,text", [("m.yaml", ""), ("m.yaml", "# only a comment\n"), ("m.txt", "\n# x\n")])
def test_empty_manifest(tmp_path, name, text):
    write(tmp_path / name, text)
    p = only_error(validate_manifest(tmp_path / name)[1])
    assert p.message.startswith("manifest is empty")


def test_malformed_yaml_has_line_and_column(tmp_path):
    write(tmp_path / "m.yaml", 'jobs:\n  - source: "a.mp4\n  - source: b.mp4\n')
    p = only_error(validate_manifest(tmp_path / "m.yaml")[1])
    assert p.message.startswith("malformed YAML:") and "column" in p.message
    assert p.line is not None and p.line >= 2


def test_unknown_keys_with_did_you_mean_at_every_level(tmp_path):
    video(tmp_path / "a.mp4")
    write(tmp_path / "m.yaml", "defualts:\n  template: x\nsettings:\n  worker: 3\njobs:\n  - source: a.mp4\n"
                               "    tempalte: summary_report\n")
    problems = errors(validate_manifest(tmp_path / "m.yaml")[1])
    got = {(p.line, p.message, p.hint) for p in problems}
    assert (1, "unknown key 'defualts' in the manifest", "did you mean 'defaults'?") in got
    assert (4, "unknown key 'worker' in settings", "did you mean 'workers'?") in got
    assert (7, "unknown key 'tempalte' in job", "did you mean 'template'?") in got
    assert str([p for p in problems if p.line == 7][0]).endswith(
        "m.yaml:7: unknown key 'tempalte' in job (did you mean 'template'?)")


def test_missing_jobs_and_missing_source(tmp_path):
    write(tmp_path / "m.yaml", "settings:\n  workers: 2\n")
    assert only_error(validate_manifest(tmp_path / "m.yaml")[1]).message == "no 'jobs' list in the manifest"
    write(tmp_path / "n.yaml", "jobs:\n  - title: no source here\n")
    p = only_error(validate_manifest(tmp_path / "n.yaml")[1])
    assert (p.line, p.message) == (2, "job has no 'source'")


def test_manifest_path_missing_or_empty_directory(tmp_path):
    p = only_error(validate_manifest(tmp_path / "nope.yaml")[1])
    assert p.message == f"manifest not found: {tmp_path / 'nope.yaml'}"
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty" / "notes.txt", "x")
    p = only_error(validate_manifest(tmp_path / "empty")[1])
    assert p.message.endswith("has no video files") and ".mp4" in p.hint


def test_binary_file_as_manifest(tmp_path):
    (tmp_path / "m.bin").write_bytes(b"\x00\x01\x02garbage")
    p = only_error(validate_manifest(tmp_path / "m.bin")[1])
    assert p.message == "this is a binary file, not a manifest"


# --- sources and paths --------------------------------------------------------------------


def test_relative_paths_resolve_against_the_manifest_folder_not_cwd(tmp_path, monkeypatch):
    video(tmp_path / "course" / "videos" / "a.mp4")
    write(tmp_path / "course" / "m.yaml", "jobs:\n  - source: videos/a.mp4\n")
    monkeypatch.chdir("/")  # as under cron
    m = load_manifest(tmp_path / "course" / "m.yaml")
    assert m.jobs[0].source == str(tmp_path / "course" / "videos" / "a.mp4")
    assert m.output_root == (tmp_path / "course" / "output").resolve()
    assert m.jobs[0].output_path == str(m.output_root / "a_comprehensive_lesson.md")


def test_directory_manifest_scans_recursively_sorted(tmp_path):
    video(tmp_path / "lectures" / "week2" / "b.mkv", b"\x1a\x45\xdf\xa3" + b"\x00" * 40)
    video(tmp_path / "lectures" / "week1" / "z.mp4")
    video(tmp_path / "lectures" / "a.MP4")
    video(tmp_path / "lectures" / ".hidden" / "x.mp4")
    write(tmp_path / "lectures" / "notes.txt", "not a video")
    m = load_manifest(tmp_path / "lectures")
    rel = [Path(j.source).relative_to(tmp_path / "lectures").as_posix() for j in m.jobs]
    assert rel == ["a.MP4", "week1/z.mp4", "week2/b.mkv"]
    assert m.path is None and m.output_root == (tmp_path / "lectures" / "output").resolve()


def test_folder_job_and_list_file_job(tmp_path):
    video(tmp_path / "lectures" / "one.mp4")
    video(tmp_path / "lectures" / "two.webm", b"\x1a\x45\xdf\xa3" + b"\x00" * 40)
    video(tmp_path / "more" / "three.avi", b"RIFF\x00\x00\x00\x00AVI LIST" + b"\x00" * 40)
    write(tmp_path / "more" / "videos.txt", "# my list\n\nthree.avi\nhttps://youtu.be/dQw4w9WgXcQ?t=5\n")
    write(tmp_path / "m.yaml", "jobs:\n  - source: lectures/\n    template: summary_report\n"
                               "  - list: more/videos.txt\n")
    m = load_manifest(tmp_path / "m.yaml")
    assert [Path(j.source).name if j.source_kind == "local" else j.source for j in m.jobs] == [
        "one.mp4", "two.webm", "three.avi", "https://www.youtube.com/watch?v=dQw4w9WgXcQ"]
    assert [j.template for j in m.jobs[:2]] == ["summary_report", "summary_report"]
    assert m.jobs[2].origin.endswith("videos.txt:3") and m.jobs[3].origin.endswith("videos.txt:4")
    assert m.jobs[0].origin.endswith("m.yaml:2")


def test_list_file_as_manifest(tmp_path):
    video(tmp_path / "a.mp4")
    write(tmp_path / "list.txt", "a.mp4\n# comment\n\nhttps://example.org/talks/intro.mp4?x=1#frag\n")
    m = load_manifest(tmp_path / "list.txt")
    assert [j.source_kind for j in m.jobs] == ["local", "url"]
    assert m.jobs[1].source == "https://example.org/talks/intro.mp4?x=1"
    assert m.jobs[1].output_path.endswith("intro_comprehensive_lesson.md")


@pytest.mark.parametrize("url", [
    "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
    "https://www.youtube.com/watch?feature=share&v=dQw4w9WgXcQ&t=42s",
    "https://youtu.be/dQw4w9WgXcQ?si=abc",
    "https://www.youtube.com/shorts/dQw4w9WgXcQ",
    "https://www.youtube.com/embed/dQw4w9WgXcQ?start=3",
    "https://m.youtube.com/watch?v=dQw4w9WgXcQ&list=PL1",
    "youtu.be/dQw4w9WgXcQ",
])
def test_youtube_forms_normalise(url):
    assert media.classify_source(url) == ("youtube", "https://www.youtube.com/watch?v=dQw4w9WgXcQ")


def test_non_youtube_and_bad_youtube_urls_are_plain_urls():
    assert media.classify_source("https://www.youtube.com/watch?v=short")[0] == "url"
    assert media.classify_source("HTTP://Example.ORG/a.mp4") == ("url", "http://example.org/a.mp4")
    assert media.classify_source("videos/a.mp4") == ("local", "videos/a.mp4")


# --- stable ids ------------------------------------------------------------------------


def test_ids_stable_across_reload_and_adding_a_job(tmp_path):
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        video(tmp_path / name)
    write(tmp_path / "m.yaml", "jobs:\n  - source: a.mp4\n  - source: b.mp4\n")
    first = load_manifest(tmp_path / "m.yaml")
    again = load_manifest(tmp_path / "m.yaml")
    assert [j.job_id for j in first.jobs] == [j.job_id for j in again.jobs]
    assert all(len(j.job_id) == 16 and int(j.job_id, 16) >= 0 for j in first.jobs)
    write(tmp_path / "m.yaml", "jobs:\n  - source: c.mp4\n  - source: a.mp4\n  - source: b.mp4\n")
    edited = load_manifest(tmp_path / "m.yaml")
    old, new = {j.job_id for j in first.jobs}, {j.job_id for j in edited.jobs}
    assert old < new and len(new - old) == 1
    assert first.identity == edited.identity and first.content_hash != edited.content_hash
    # a different template is a different job
    write(tmp_path / "m.yaml", "jobs:\n  - source: a.mp4\n    template: summary_report\n  - source: b.mp4\n")
    changed = load_manifest(tmp_path / "m.yaml")
    assert changed.jobs[0].job_id != first.jobs[0].job_id and changed.jobs[1].job_id == first.jobs[1].job_id


def test_ids_do_not_depend_on_where_the_tree_lives(tmp_path):
    for root in ("x", "y"):
        video(tmp_path / root / "v" / "a.mp4")
        write(tmp_path / root / "m.yaml", "jobs:\n  - source: v/a.mp4\n")
    a = load_manifest(tmp_path / "x" / "m.yaml").jobs[0].job_id
    b = load_manifest(tmp_path / "y" / "m.yaml").jobs[0].job_id
    assert a == b


# --- outputs -----------------------------------------------------------------------------


def test_output_pattern_fields_are_sanitised_and_keep_unicode(tmp_path):
    video(tmp_path / "a.mp4")
    write(tmp_path / "m.yaml", 'defaults:\n  output_pattern: "{template}/{date} {title} {index:03d}.md"\n'
                               '  output_format: json\njobs:\n  - source: a.mp4\n'
                               '    title: "../函数 / 🎓\\u0007 A"\n')
    m = load_manifest(tmp_path / "m.yaml", date="2026-01-02")
    rel = Path(m.jobs[0].output_path).relative_to(m.output_root).as_posix()
    assert rel == "comprehensive_lesson/2026-01-02 _函数 _ 🎓_ A 001.json"  # leading dots stripped
    assert m.jobs[0].output_format == "json" and m.date == "2026-01-02"


def test_pattern_collisions_get_numbered_suffixes(tmp_path):
    video(tmp_path / "one" / "talk.mp4")
    video(tmp_path / "two" / "talk.mp4")
    video(tmp_path / "three" / "talk.mp4")
    write(tmp_path / "m.yaml", "jobs:\n  - source: one/talk.mp4\n  - source: two/talk.mp4\n"
                               "  - source: three/talk.mp4\n")
    names = [Path(j.output_path).name for j in load_manifest(tmp_path / "m.yaml").jobs]
    assert names == ["talk_comprehensive_lesson.md", "talk_comprehensive_lesson-2.md",
                     "talk_comprehensive_lesson-3.md"]


def test_duplicate_explicit_outputs_are_an_error(tmp_path):
    video(tmp_path / "a.mp4")
    video(tmp_path / "b.mp4")
    write(tmp_path / "m.yaml", "jobs:\n  - source: a.mp4\n    output: notes.md\n"
                               "  - source: b.mp4\n    output: notes.md\n")
    p = only_error(validate_manifest(tmp_path / "m.yaml")[1])
    assert p.line == 5 and p.message.startswith("duplicate output 'notes.md' (also the output of the job at ")


@pytest.mark.parametrize("output", ["../escape.md", "sub/../../escape.md", "/etc/escape.md"])
def test_output_outside_root_rejected(tmp_path, output):
    video(tmp_path / "a.mp4")
    write(tmp_path / "m.yaml", f"jobs:\n  - source: a.mp4\n    output: {output}\n")
    p = only_error(validate_manifest(tmp_path / "m.yaml")[1])
    assert p.line == 3
    assert p.message == f"output '{output}' resolves outside the output root {(tmp_path / 'output').resolve()}"


def test_output_through_symlink_outside_root_rejected(tmp_path):
    video(tmp_path / "a.mp4")
    (tmp_path / "output").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "output" / "link").symlink_to(tmp_path / "elsewhere")
    write(tmp_path / "m.yaml", "jobs:\n  - source: a.mp4\n    output: link/a.md\n")
    p = only_error(validate_manifest(tmp_path / "m.yaml")[1])
    assert p.line == 3 and p.message.endswith("(through a symlink)")
    # a pattern that climbs out is rejected as well
    write(tmp_path / "n.yaml", 'defaults:\n  output_pattern: "../{stem}.md"\njobs:\n  - source: a.mp4\n')
    p = only_error(validate_manifest(tmp_path / "n.yaml")[1])
    assert "resolves outside the output root" in p.message


# --- local file checks ---------------------------------------------------------------------


def test_missing_file_dangling_symlink_zero_bytes_and_bad_extension(tmp_path):
    (tmp_path / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    write(tmp_path / "notes.txt", "hello")
    write(tmp_path / "m.yaml", "jobs:\n  - source: missing.mp4\n  - source: gone.mp4\n"
                               "  - source: empty.mp4\n  - source: notes.txt\n")
    problems = errors(validate_manifest(tmp_path / "m.yaml")[1])
    got = {p.line: p.message for p in problems}
    assert got[2] == "file not found: missing.mp4"
    assert got[3].startswith("gone.mp4 is a dangling symlink")
    assert got[4] == "file is empty (0 bytes): empty.mp4"
    assert got[5] == "unsupported file type '.txt': notes.txt"
    assert len(problems) == 4


def test_sparse_3gb_file_rejected_without_reading(tmp_path):
    with open(tmp_path / "huge.mp4", "wb") as fh:
        fh.truncate(3 * 1024**3)  # sparse: instant, no disk used
    write(tmp_path / "m.yaml", "jobs:\n  - source: huge.mp4\n")
    p = only_error(validate_manifest(tmp_path / "m.yaml")[1])
    assert (p.line, p.message) == (2, "file is 3.0 GB, over the Files API's 2 GB limit: huge.mp4")


def test_renamed_text_file_is_not_a_video(tmp_path):
    write(tmp_path / "lecture.mp4", "<html>404 not found</html>\n")
    write(tmp_path / "m.yaml", "jobs:\n  - source: lecture.mp4\n")
    p = only_error(validate_manifest(tmp_path / "m.yaml")[1])
    assert p.message == "lecture.mp4 does not look like a video (no known container signature)"
    assert "renamed" in p.hint


def test_check_files_false_skips_content_checks(tmp_path):
    write(tmp_path / "m.yaml", "jobs:\n  - source: missing.mp4\n")
    m = load_manifest(tmp_path / "m.yaml", check_files=False)
    assert m.jobs[0].source == str(tmp_path / "missing.mp4")


def test_magic_bytes_of_each_container():
    assert media.sniff_container(MP4_HEAD) == "iso-bmff"
    assert media.sniff_container(b"\x1a\x45\xdf\xa3rest") == "ebml"
    assert media.sniff_container(b"RIFF\x10\x00\x00\x00AVI LIST") == "avi"
    assert media.sniff_container(b"FLV\x01\x05") == "flv"
    assert media.sniff_container(b"\x00\x00\x01\xba\x44") == "mpeg-ps"
    assert media.sniff_container(bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c") + b"x") == "asf"
    assert media.sniff_container(b"hello world, this is text") is None
    assert media.mime_type_for("A.MKV") == "video/x-matroska" and media.mime_type_for("a.txt") is None


# --- secrets, settings, templates, overrides -------------------------------------------------


def test_api_key_in_manifest_warns_without_echoing_it(tmp_path):
    video(tmp_path / "a.mp4")
    fake = "AIza" + "x" * 35  # key-shaped, not a key
    write(tmp_path / "m.yaml", f"defaults:\n  params:\n    note: {fake}\nsettings:\n  api_key_env: GEMINI_API_KEY\n"
                               f"jobs:\n  - source: a.mp4\n")
    m, problems = validate_manifest(tmp_path / "m.yaml", {"templates_dir": []})
    warnings = [p for p in problems if p.severity == "warning"]
    assert len(warnings) == 1 and warnings[0].line == 3
    assert "looks like a Google API key" in warnings[0].message and "api_key_env" in warnings[0].hint
    assert all(fake not in str(p) for p in problems)
    write(tmp_path / "n.yaml", "settings:\n  api_key: not-a-real-secret-value\njobs:\n  - source: a.mp4\n")
    problems = validate_manifest(tmp_path / "n.yaml")[1]
    assert {p.severity for p in problems} == {"error", "warning"}  # unknown key + secret warning
    assert all("not-a-real-secret-value" not in str(p) for p in problems)
    # api_key_env holding a key instead of a variable name: error, value not echoed
    write(tmp_path / "k.yaml", f"settings:\n  api_key_env: {fake}\njobs:\n  - source: a.mp4\n")
    problems = validate_manifest(tmp_path / "k.yaml")[1]
    assert any(p.is_error and "NAME of an environment variable" in p.message for p in problems)
    assert all(fake not in str(p) for p in problems)


def test_api_key_in_csv_cell_warns(tmp_path):
    video(tmp_path / "a.mp4")
    write(tmp_path / "m.csv", "source,api_key\na.mp4,AIza" + "y" * 35 + "\n")
    problems = validate_manifest(tmp_path / "m.csv")[1]
    assert any(p.severity == "warning" and p.line == 2 for p in problems)
    assert all("yyyyy" not in str(p) for p in problems)


def test_settings_types_checked(tmp_path):
    video(tmp_path / "a.mp4")
    write(tmp_path / "m.yaml", "settings:\n  workers: 0\n  rpm: -5\n  sandbox: yes please\n  tier: tier 1\n"
                               "  max_duration: 90m\njobs:\n  - a.mp4\n")
    m, problems = validate_manifest(tmp_path / "m.yaml")
    got = {(p.line, p.message) for p in errors(problems)}
    assert got == {(2, "settings.workers must be a whole number from 1 to 32"),
                   (3, "settings.rpm must be a positive number"),
                   (4, "settings.sandbox must be true or false")}


def test_settings_parsed_and_cli_overrides_win(tmp_path):
    video(tmp_path / "a.mp4")
    write(tmp_path / "m.yaml", "sandbox: true\nsettings:\n  workers: 3\n  max_duration: 1h30m\n  tier: 1\n"
                               "  journal: state/j.jsonl\ndefaults:\n  model: gemini-2.5-pro\njobs:\n"
                               "  - source: a.mp4\n    template: summary_report\n")
    m = load_manifest(tmp_path / "m.yaml")
    assert (m.settings.workers, m.settings.sandbox, m.settings.max_duration, m.settings.tier) == (3, True, 5400.0,
                                                                                                   "1")  # tier1 in a manifest is tier 1, spelled as on the command line
    assert m.settings.journal == str(tmp_path / "state" / "j.jsonl")
    assert m.jobs[0].model == "gemini-2.5-pro" and m.jobs[0].max_duration == 5400.0
    out = tmp_path / "elsewhere"
    m = load_manifest(tmp_path / "m.yaml", {"workers": 5, "model": "gemini-2.5-flash-lite",
                                            "template": "comprehensive_lesson", "output_dir": str(out)})
    assert m.settings.workers == 5 and m.jobs[0].model == "gemini-2.5-flash-lite"
    assert m.jobs[0].template == "comprehensive_lesson" and m.output_root == out.resolve()
    assert isinstance(m.settings, Settings)


def test_unknown_template_and_bad_params(tmp_path):
    video(tmp_path / "a.mp4")
    write(tmp_path / "m.yaml", "jobs:\n  - source: a.mp4\n    template: sumary_report\n"
                               "  - source: a.mp4\n    output: b.md\n    params:\n      detail_level: huge\n")
    problems = errors(validate_manifest(tmp_path / "m.yaml")[1])
    by_line = {p.line: p for p in problems}
    assert by_line[3].message == "unknown template 'sumary_report'"
    assert by_line[3].hint == "did you mean 'summary_report'?"
    assert "detail_level" in by_line[4].message and "huge" in by_line[4].message
    assert len(problems) == 2


def test_load_manifest_raises_with_every_problem(tmp_path):
    write(tmp_path / "m.yaml", "jobs:\n  - source: a.mp4\n  - source: b.mp4\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path / "m.yaml")
    assert len(info.value.problems) == 2
    assert "manifest has 2 errors" in str(info.value) and "file not found: b.mp4" in str(info.value)


# --- derived manifests ---------------------------------------------------------------------


def test_derive_manifest_and_write_yaml_round_trip(tmp_path, monkeypatch):
    video(tmp_path / "lectures" / "w1" / "a.mp4")
    video(tmp_path / "lectures" / "b.mp4")
    monkeypatch.chdir(tmp_path)
    m = derive_manifest("lectures", template="summary_report", output_dir="lessons", date="2026-03-01")
    assert [Path(j.source).name for j in m.jobs] == ["b.mp4", "a.mp4"]
    assert m.output_root == (tmp_path / "lessons").resolve()
    assert all(j.template == "summary_report" for j in m.jobs)
    target = tmp_path / "lessons" / ".gsvr" / "manifest.yaml"
    write_manifest_yaml(m, target)
    monkeypatch.chdir("/")
    again = load_manifest(target)
    assert [j.job_id for j in again.jobs] == [j.job_id for j in m.jobs]
    assert [j.output_path for j in again.jobs] == [j.output_path for j in m.jobs]
    assert again.output_root == m.output_root


def test_derive_manifest_empty_folder_raises(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ManifestError) as info:
        derive_manifest(tmp_path / "nothing")
    assert info.value.problems[0].message.endswith("has no video files")


def test_identity_is_hash_of_resolved_path(tmp_path):
    import hashlib

    video(tmp_path / "a.mp4")
    path = write(tmp_path / "m.yaml", "jobs:\n  - a.mp4\n")
    m = load_manifest(path)
    assert m.identity == hashlib.sha256(str(path.resolve()).encode()).hexdigest()
    assert m.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.path == path and os.path.isabs(m.jobs[0].output_path)


def test_a_journal_under_home_given_on_the_command_line_is_the_one_run_opens(tmp_path, monkeypatch):
    """--journal '~/j.jsonl' (quoted, or from a cron line): the manifest's owned paths and the run's
    journal are one file under $HOME, not a folder named "~" under the working directory."""
    from gsvr_batch.runner.preflight import resolve_journal

    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    video(tmp_path / "course" / "a.mp4")
    m = load_manifest(str(write(tmp_path / "course" / "m.yaml", "jobs:\n  - source: a.mp4\n")),
                      {"journal": "~/j.jsonl"})
    assert m.settings.journal == str(home / "j.jsonl")
    assert resolve_journal("~/j.jsonl", m) == (home / "j.jsonl").resolve()


# --- the fast paths of a big manifest (issue 12) give what the general ones give -------------------


def test_yaml_scalars_keep_their_types_and_lines_with_the_resolver_shortcut(tmp_path):
    """Plain scalars whose first character starts no implicit type are strings at once; the others
    still resolve (bool, int, float, null, timestamp), and every key keeps its line."""
    import datetime

    from gsvr_batch.manifest_yaml import parse_yaml

    text = ("jobs:\n"
            "  - source: videos/a.mp4\n"
            "    params: {yes_: yes, one: 1, half: .5, neg: -2, none: ~, day: 2024-01-02, word: sx, empty: '',"
            " quoted: '1', tilde: ~x, Off: Off}\n")  # the key Off is False too, as YAML 1.1 says
    raw, problems = parse_yaml(text, "m.yaml", tmp_path)
    assert problems == [] and raw is not None
    params = raw.jobs[0].fields["params"]
    assert params == {"yes_": True, "one": 1, "half": 0.5, "neg": -2, "none": None, "day": datetime.date(2024, 1, 2),
                      "word": "sx", "empty": "", "quoted": "1", "tilde": "~x", False: False}
    assert raw.jobs[0].line == 2 and raw.jobs[0].field_lines == {"source": 2, "params": 3}


def test_unknown_job_keys_and_duplicates_keep_their_lines(tmp_path):
    video(tmp_path / "a.mp4")
    path = write(tmp_path / "m.yaml", "jobs:\n  - source: a.mp4\n    tempalte: x\n  - source: a.mp4\n"
                                      "    title: t\n    title: u\n")
    _, problems = validate_manifest(path)
    got = [(p.line, p.message) for p in problems]
    assert (6, "duplicate key 'title' (first at line 5)") in got
    assert (3, "unknown key 'tempalte' in job") in got


def test_jobs_setting_only_their_source_each_get_their_own_params_and_context(tmp_path):
    """The defaults a plain job takes are worked out once; the dictionaries it holds are its own."""
    for name in ("a", "b"):
        video(tmp_path / f"{name}.mp4")
    path = write(tmp_path / "m.yaml", "defaults:\n  params: {audience: pupils}\n  context: clips\njobs:\n"
                                      "  - source: a.mp4\n  - source: b.mp4\n    title: B\n"
                                      "  - source: a.mp4\n    template: chinese_transcript\n")
    m = load_manifest(path)
    a, b, c = m.jobs
    assert a.params == b.params == c.params == {"audience": "pupils"}
    assert a.params is not b.params and a.context == b.context == c.context == {"strategy": "clips"}
    assert a.context is not b.context
    assert (a.template, b.template, c.template) == ("comprehensive_lesson", "comprehensive_lesson",
                                                   "chinese_transcript")
    assert b.title == "B" and a.title == "a"


def test_a_bad_template_override_is_blamed_on_each_plain_job(tmp_path):
    """Defaults that are wrong are not shared: each job still reports them at its own line."""
    for name in ("a", "b"):
        video(tmp_path / f"{name}.mp4")
    path = write(tmp_path / "m.yaml", "jobs:\n  - source: a.mp4\n  - source: b.mp4\n")
    _, problems = validate_manifest(path, {"template": 5})
    assert [(p.line, p.message) for p in errors(problems)] == [(2, "'template' must be a name"),
                                                               (3, "'template' must be a name")]


def test_output_symlinks_are_caught_in_a_folder_of_many_outputs(tmp_path):
    """Past the first outputs of a folder, a listing tells whether it holds symlinks at all; one
    there still makes each output an lstat, so a link out of the root is refused as before."""
    n = 40
    for i in range(n):
        video(tmp_path / "v" / f"v{i:02d}.mp4")
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "v37_summary_report.md").symlink_to(tmp_path / "elsewhere" / "x.md")
    jobs = "".join(f"  - v/v{i:02d}.mp4\n" for i in range(n))
    path = write(tmp_path / "m.yaml", f"defaults:\n  template: summary_report\n  output_dir: out\njobs:\n{jobs}")
    p = only_error(validate_manifest(path)[1])
    assert p.line == 5 + 37 and p.message.endswith("(through a symlink)") and "v37_summary_report.md" in p.message
    (out / "v37_summary_report.md").unlink()
    m = load_manifest(path)  # no symlink left: the listing lets every output through
    assert len(m.jobs) == n


def test_plain_relative_sources_resolve_as_normpath_join_would():
    from gsvr_batch.manifest import _under

    bases = [Path("/"), Path("/a/b"), Path("/a/../b"), Path("/x y/ü"), Path("//srv/x"), Path("rel")]
    paths = ["a", "a/b.mp4", "a//b", "./a", "a/./b", "../a", "a/..", "~/x", "/abs", "", ".", "a/b/", " a ", "..."]
    for base in bases:
        for path in paths:
            assert _under(base, path) == os.path.normpath(os.path.join(base, os.path.expanduser(path))), (base, path)


def test_plain_paths_are_classified_as_media_classify_source_would():
    from gsvr_batch.manifest import _classify_source

    for text in ["videos/a.mp4", " a.mp4 ", "youtu.be/dQw4w9WgXcQ", "YOUTUBE.com/watch?v=dQw4w9WgXcQ",
                 "www.youtube.com/watch?v=dQw4w9WgXcQ", "m.youtube.com/shorts/dQw4w9WgXcQ", "HTTPS://x.org/a.mp4",
                 "http://youtu.be/dQw4w9WgXcQ", "ftp://x/y.mp4", "www.example.org/a.mp4", "m.a.mp4", "wwwx.mp4",
                 "讲座.mp4", "C:\\videos\\a.mp4", "~/a.mp4"]:
        assert _classify_source(text) == media.classify_source(text), text


def test_sanitise_component_shortcut_agrees_with_its_steps():
    from gsvr_batch.manifest_outputs import _sanitise, sanitise_component

    for value in ["", ".", " ", "a", "a.", ".a", " a", "a ", "a/b", "a\\b", "x" * 120, "x" * 121, "é" * 61, "a\tb",
                  "a\x7fb", "~", "...", "lecture-01 (final)", "讲座 01", "v00001"]:
        assert sanitise_component(value) == _sanitise.__wrapped__(value), value


def test_a_broken_template_file_is_reported_in_pyyaml_words(tmp_path):
    """Templates are parsed by libyaml; a file it refuses is read again by PyYAML for the message."""
    from gsvr_batch.errors import TemplateError
    from gsvr_batch.templates import load_template_file

    bad = write(tmp_path / "t.yaml", "prompt: x\nname: a\n  bad: indent\n")
    with pytest.raises(TemplateError, match=r"t\.yaml:3: invalid YAML: mapping values are not allowed here$"):
        load_template_file(bad)
    good = write(tmp_path / "g.yaml", "name: g\nversion: '2'\nprompt: |\n  Summarise {{topic}}.\n"
                                      "parameters:\n  - {name: topic, required: yes}\n")
    (t,) = load_template_file(good)
    assert (t.name, t.version, t.prompt, t.parameters[0].required) == ("g", "2", "Summarise {{topic}}.\n", True)
    assert t.source.endswith("g.yaml:1")
