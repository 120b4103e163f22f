"""What the CLI promises, each through the real command (issues 13 and 14):

* outputs never land on a file the batch owns (state folder, journal, lock, snapshot, …);
* every `run` option is a `settings:` key (or the README says why not), tier is free|1|2|3 everywhere;
* the derived manifest continues its batch; a copy of it does not;
* a hand-made output is refused, kept or replaced as asked; a folder run mirrors its subfolders;
* single videos, links and several of them; messages said once, blamed on the right place, never a
  traceback; the limits line and the dry run's warning about the daily quota.

Runs are real processes against the in-process sandbox server (conftest); pure checks of what
`validate` answers go through click in-process, which is the same command.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import REPO, SAMPLE, env_for, make_batch, records, run_cli
from gsvr_batch import settings as settings_mod
from gsvr_batch.cli import cli, run_cmd
from gsvr_batch.manifest import OWNED_HINT, validate_manifest

NO_KEY = {"GEMINI_API_KEY": None, "GOOGLE_API_KEY": None, "GOOGLE_GEMINI_BASE_URL": None}


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], env={**NO_KEY, **(env or {})})


def line_of(path: Path, text: str) -> int:
    """The line of ``path`` that contains ``text`` (1-based): messages must point at it."""
    return next(i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if text in line)


def generate_calls(server) -> int:
    return sum(1 for q in server.requests if q.get("kind") == "generate" and q.get("status") == 200)


def one_video_manifest(root: Path, job: str = "", settings: str = "") -> Path:
    shutil.copyfile(SAMPLE, root / "a.mp4")
    m = root / "m.yaml"
    m.write_text("sandbox: true\ndefaults:\n  template: summary_report\n  output_dir: out\n"
                 f"settings:\n  rpm: 1000\n{settings}jobs:\n  - source: a.mp4\n{job}", encoding="utf-8")
    return m


# -- 1. confinement: nothing the batch owns can be an output (issue 13) ---------------------------

OWNED = [
    # (output as written, message after "output '<it>' ")
    (".gsvr/journal.jsonl", "is the batch's journal ({j})"),
    (".gsvr/journal.jsonl.lock", "is the run lock ({j}.lock)"),
    (".gsvr/journal.jsonl.owner", "is the run lock's owner file ({j}.owner)"),
    (".gsvr/journal.jsonl.control", "is the control file ({j}.control)"),
    (".gsvr/journal.jsonl.snapshot", "is the journal's snapshot ({j}.snapshot)"),
    (".gsvr/journal.jsonl.ratelimit", "is the shared rate-limit file ({j}.ratelimit)"),
    (".gsvr/journal.jsonl.run/x.md", "is the run's private folder ({j}.run)"),
    (".gsvr/journal.jsonl.torn-20260101T000000", "is a copy of the journal kept by a repair "
                                                 "({j}.torn-20260101T000000)"),
    (".gsvr/journal.jsonl.md", "is in the journal's namespace ({j}.*, where the batch keeps its lock, snapshot "
                               "and other files)"),
    (".gsvr/manifest.derived.yaml", "is the derived manifest ({s}/manifest.derived.yaml)"),
    (".gsvr/report.html", "is the batch's report ({s}/report.html)"),
    (".gsvr/partials/x/clip-1.md", "is inside the clip partials folder ({s}/partials)"),
    (".gsvr/notes.md", "is inside the state folder {s}"),
    (".gsvr-tmp-123-abc.md", "has a temporary file's name (.gsvr-tmp-…), which a later run deletes"),
]


@pytest.mark.parametrize("output,message", OWNED, ids=[o for o, _ in OWNED])
def test_validate_refuses_every_output_the_batch_owns(tmp_path, output, message):
    m = one_video_manifest(tmp_path, f"    output: {output}\n")
    state = (tmp_path / "out" / ".gsvr").resolve()
    r = invoke("validate", m)
    assert r.exit_code == 2, r.output
    expected = message.format(j=state / "journal.jsonl", s=state)
    assert r.stdout.splitlines() == [f"{m}:{line_of(m, 'output:')}: output '{output}' {expected} ({OWNED_HINT})"]
    assert r.stderr == f"Error: {m}: 1 error, 0 warnings\n"
    assert not (tmp_path / "out").exists()


def test_owned_files_follow_the_journal_wherever_it_is(tmp_path):
    # --journal inside the output root itself: its own files are owned, not the whole folder
    m = one_video_manifest(tmp_path, "    output: lessons.jsonl.lock\n")
    journal = (tmp_path / "out" / "lessons.jsonl").resolve()
    r = invoke("validate", m, "--journal", journal)
    assert r.exit_code == 2 and f"output 'lessons.jsonl.lock' is the run lock ({journal}.lock)" in r.stdout
    # the job's own output wins over a pattern: still refused
    assert invoke("validate", m, "--journal", journal, "--output-pattern", "{stem}.md").exit_code == 2
    # a separate state folder inside the output root (settings.journal): all of it is owned
    m.write_text(m.read_text().replace("    output: lessons.jsonl.lock\n", "    output: state/x.md\n")
                 .replace("  rpm: 1000\n", "  rpm: 1000\n  journal: out/state/j.jsonl\n"), encoding="utf-8")
    r = invoke("validate", m)
    assert r.exit_code == 2 and f"output 'state/x.md' is inside the state folder {tmp_path / 'out' / 'state'}" \
        in r.stdout
    # a symlink that leads into the state folder is followed
    m.write_text(m.read_text().replace("state/x.md", "link/journal.jsonl").replace("  journal: out/state/j.jsonl\n",
                                                                                  ""), encoding="utf-8")
    (tmp_path / "out" / ".gsvr").mkdir(parents=True)
    (tmp_path / "out" / "link").symlink_to(tmp_path / "out" / ".gsvr")
    r = invoke("validate", m)
    assert r.exit_code == 2 and "output 'link/journal.jsonl' is the batch's journal" in r.stdout
    # a pattern given on the command line is the command line's fault, said once
    (tmp_path / "p").mkdir()
    m2 = one_video_manifest(tmp_path / "p")
    r = invoke("validate", m2, "--output-pattern", ".gsvr/{stem}.md")
    assert r.exit_code == 2
    assert r.stdout.splitlines() == [f"<command line>: --output-pattern: output '.gsvr/a.md' is inside the state "
                                     f"folder {(m2.parent / 'out' / '.gsvr').resolve()} ({OWNED_HINT})"]


def test_no_output_is_written_over_a_video_of_the_batch(tmp_path):
    """`run --overwrite` replaced a lecture with its own lesson when a job's output named the video
    (the output root around it): refused whatever --overwrite says, also through a symlinked folder
    and for another job's video, in the cached load too."""
    shutil.copyfile(SAMPLE, tmp_path / "a.mp4")
    shutil.copyfile(SAMPLE, tmp_path / "b.mp4")
    m = tmp_path / "m.yaml"
    m.write_text("sandbox: true\ndefaults:\n  template: summary_report\n  output_dir: .\njobs:\n"
                 "  - source: a.mp4\n    output: a.mp4\n  - source: b.mp4\n    output: via/a.mp4\n",
                 encoding="utf-8")
    (tmp_path / "via").symlink_to(tmp_path)
    before = (tmp_path / "a.mp4").read_bytes()
    manifest, problems = validate_manifest(m)
    assert manifest is None
    assert [str(p) for p in problems] == [
        f"{m}:6: output 'a.mp4' is the job's own video: the lesson would be written over it (give the output "
        f"another name)",
        f"{m}:8: output 'via/a.mp4' is the video of the job at {m}:6: the lesson would be written over it "
        f"(give the output another name)"]
    r = invoke("run", m, "--overwrite")
    assert r.exit_code == 2 and "is the job's own video" in r.stderr
    assert (tmp_path / "a.mp4").read_bytes() == before
    # nor the manifest itself
    text = m.read_text(encoding="utf-8")
    m.write_text(text.replace("output: a.mp4", "output: m.yaml"), encoding="utf-8")
    r = invoke("run", m, "--overwrite")
    assert r.exit_code == 2 and (f"{m}:6: output 'm.yaml' is the manifest: the lesson would be written over it "
                                 f"(give the output another name)") in r.stderr, r.stderr
    m.write_text(text, encoding="utf-8")
    # a cached build whose folder became a symlink onto the videos: the re-check sees it
    (tmp_path / "via").unlink()
    (tmp_path / "via").mkdir()
    m.write_text(m.read_text(encoding="utf-8").replace("    output: a.mp4\n", ""), encoding="utf-8")
    assert validate_manifest(m)[0] is not None and validate_manifest(m)[0] is not None  # stored, then loaded
    (tmp_path / "via").rmdir()
    (tmp_path / "via").symlink_to(tmp_path)
    manifest, problems = validate_manifest(m)
    assert manifest is None and [p.message for p in problems] == [
        f"output 'via/a.mp4' is the video of the job at {m}:6: the lesson would be written over it"]
    # the video or the manifest reached through a symlink of another name; a list file; a template
    (tmp_path / "via").unlink()
    (tmp_path / "link.mp4").symlink_to(tmp_path / "a.mp4")
    (tmp_path / "link.yaml").symlink_to(m)
    (tmp_path / "videos.txt").write_text("b.mp4\n", encoding="utf-8")
    (tmp_path / "tpl").mkdir()
    shutil.copyfile(REPO / "templates" / "summary_report.yaml", tmp_path / "tpl" / "mine.yaml")
    m.write_text("sandbox: true\ndefaults:\n  template: summary_report\n  output_dir: .\njobs:\n"
                 "  - source: link.mp4\n    output: a.mp4\n  - source: b.mp4\n    output: m.yaml\n"
                 "  - list: videos.txt\n    output: videos.txt\n"
                 "  - source: b.mp4\n    output: tpl/mine.yaml\n    template: comprehensive_lesson\n",
                 encoding="utf-8")
    manifest, problems = validate_manifest(tmp_path / "link.yaml", {"templates_dir": [str(tmp_path / "tpl")]})
    assert manifest is None
    assert [p.message.split(":")[0] for p in problems if p.is_error] == [
        "output 'a.mp4' is the job's own video", "output 'm.yaml' is the manifest",
        f"output 'videos.txt' is the list file {tmp_path / 'videos.txt'}",
        f"output 'tpl/mine.yaml' is the template {tmp_path / 'tpl' / 'mine.yaml'}"], [str(p) for p in problems]


@pytest.mark.slow
def test_run_refuses_outputs_onto_the_journal_and_the_lock_of_a_live_batch(tmp_path, sandbox):
    """Before: the run replaced the journal with a lesson and exited 0; an output onto the lock file
    swapped its inode (a second run could then take the lock)."""
    server = sandbox()
    m = make_batch(tmp_path, 1)
    assert run_cli(["run", m, "--progress", "quiet"], env=env_for(server)).returncode == 0
    state = tmp_path / "out" / ".gsvr"
    journal, lock = state / "journal.jsonl", state / "journal.jsonl.lock"
    before, inode = journal.read_bytes(), lock.stat().st_ino
    text = m.read_text()
    for target, what in ((".gsvr/journal.jsonl", "is the batch's journal"),
                         (".gsvr/journal.jsonl.lock", "is the run lock")):
        m.write_text(text + f"  - source: videos/lecture-000.mp4\n    template: comprehensive_lesson\n"
                            f"    output: {target}\n", encoding="utf-8")
        r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"{m}:{line_of(m, 'output: ' + target)}: output '{target}' {what}" in r.stderr
        assert r.stderr.count(f"output '{target}'") == 1  # said once
        assert journal.read_bytes() == before and lock.stat().st_ino == inode
    assert generate_calls(server) == 1


# -- 2. settings everywhere (issue 14.4) ----------------------------------------------------------


def _manifest_value(s: settings_mod.Setting) -> object:
    """The README example of a setting, as a manifest value (`--rpm 8` → 8, `--keep-uploads` → true)."""
    if not s.flags:
        return yaml.safe_load(s.example)[s.name]
    tokens = shlex.split(s.example)
    if len(tokens) == 1:
        return not tokens[0].startswith("--no-")
    value = yaml.safe_load(tokens[1]) if not tokens[1].startswith(("{", "/", ".")) else tokens[1]
    return [value] if s.multiple else value


def test_every_run_option_is_a_settings_key_or_documented_as_per_run():
    run_options = {p.name for p in run_cmd.params if p.param_type_name == "option"}
    assert run_options - {"help"} == {s.name for s in settings_mod.SETTINGS if s.flags} | set(settings_mod.PER_RUN)
    assert set(settings_mod.MANIFEST_KEYS) >= {s.name for s in settings_mod.SETTINGS}
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name, why in settings_mod.PER_RUN.items():
        assert f"`--{name.replace('_', '-')}`" in readme and why in readme


def test_every_setting_is_accepted_under_settings(tmp_path):
    """Before: 12 of the 29 options of `run` were "unknown key" under settings:."""
    (tmp_path / "my_templates").mkdir()
    (tmp_path / "prices.json").write_text('{"models": {}}', encoding="utf-8")
    shutil.copyfile(SAMPLE, tmp_path / "a.mp4")
    values = {s.name: _manifest_value(s) for s in settings_mod.SETTINGS}
    values["templates_dir"] = ["my_templates"]
    values["pricing"] = "prices.json"
    m = tmp_path / "m.yaml"
    m.write_text(yaml.safe_dump({"settings": values, "jobs": ["a.mp4"]}, sort_keys=False), encoding="utf-8")
    manifest, problems = validate_manifest(m)
    assert [str(p) for p in problems if p.is_error] == []
    assert manifest.jobs[0].template == "summary_report" and manifest.jobs[0].model == "gemini-2.5-pro"
    assert manifest.jobs[0].output_format == "html" and manifest.settings.max_duration == 5400.0
    assert manifest.settings.tier == "1" and manifest.settings.workers == 4
    assert manifest.output_root == (tmp_path / "lessons").resolve()
    # the actions of one invocation are refused there, with the reason
    m.write_text("settings:\n  force: true\njobs:\n  - a.mp4\n", encoding="utf-8")
    problems = validate_manifest(m)[1]
    assert [str(p) for p in problems] == [
        f"{m}:2: 'force' is not a setting: {settings_mod.PER_RUN['force']} "
        "(pass --force on the command line when you mean it)"]


def test_tier_is_free_1_2_3_everywhere(tmp_path):
    example = (REPO / "jobs" / "manifest.yaml").read_text(encoding="utf-8")
    assert "tier1" not in example and "free, 1, 2 or 3" in example
    m = one_video_manifest(tmp_path, settings="  tier: tier9\n")
    r = invoke("validate", m)
    assert r.exit_code == 2
    assert f"{m}:{line_of(m, 'tier9')}: settings.tier unknown value 'tier9' (use one of: free, 1, 2, 3)" in r.stdout
    m = one_video_manifest(tmp_path)
    for spelled in ("1", "tier1", "Tier 1", "tier-1"):  # the manifest's spellings work on the command line too
        r = invoke("run", m, "--dry-run", "--tier", spelled, "--no-sandbox")
        assert r.exit_code == 0, (spelled, r.output)
        assert "1,000,000 TPM (--tier 1), 10,000 RPD (--tier 1)" in r.stdout
    r = invoke("run", m, "--dry-run", "--tier", "7")
    assert r.exit_code == 2 and "'7' is not one of 'free', '1', '2', '3'" in r.stderr


def test_max_duration_90m_works_on_the_command_line(tmp_path):
    """Before: `--max-duration 90m` was refused by the command line though the manifest took it."""
    m = one_video_manifest(tmp_path)
    r = invoke("run", m, "--dry-run", "--max-duration", "90m")
    assert r.exit_code == 0, r.output
    r = invoke("run", m, "--dry-run", "--max-duration", "3")  # the sample lasts 6 s: skipped, said why
    assert r.exit_code == 0 and "max_duration 3" in r.stdout
    r = invoke("run", m, "--dry-run", "--max-duration", "soon")
    assert r.exit_code == 2 and "<command line>: --max-duration must be a positive duration" in r.stderr


# -- 3. the derived manifest reproduces the batch (issue 14.6) -------------------------------------


@pytest.mark.slow
def test_derived_manifest_continues_its_batch_and_a_copy_does_not(tmp_path, sandbox):
    server = sandbox()
    src = tmp_path / "course"
    src.mkdir()
    for name in ("t0.mp4", "t1.mp4"):
        shutil.copyfile(SAMPLE, src / name)
    out = tmp_path / "lessons"
    r = run_cli(["run", src, "-t", "summary_report", "-o", out, "--progress", "log", "--rpm", "1000"],
                env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    journal = out / ".gsvr" / "journal.jsonl"
    derived = journal.parent / "manifest.derived.yaml"
    doc = yaml.safe_load(derived.read_text(encoding="utf-8"))
    assert doc["derived_from"]["journal"] == str(journal) and doc["derived_from"]["sources"] == [str(src)]
    ids = sorted(x["task_id"] for x in records(journal) if x["type"] == "task_added")
    before = len(records(journal))

    r = run_cli(["run", derived, "--progress", "log"], env=env_for(server), cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Nothing to do: all 2 tasks already finished" in r.stdout and f"Journal: {journal}" in r.stdout
    recs = records(journal)
    assert sum(x["type"] == "batch_created" for x in recs) == 1
    assert not [x for x in recs[before:] if x["type"] in ("task_added", "task_dropped", "manifest_changed")]
    assert sorted(x["task_id"] for x in recs if x["type"] == "task_added") == ids
    assert generate_calls(server) == 2
    # a retry of one task through the derived manifest's batch works the same way
    r = run_cli(["retry", journal, "--ids", ids[0], "--progress", "log"], env=env_for(server))
    assert r.returncode == 0 and generate_calls(server) == 3, r.stdout + r.stderr

    # a copy elsewhere is a manifest of its own: it cannot take over the batch's journal
    copy = tmp_path / "copy.yaml"
    shutil.copyfile(derived, copy)
    snapshot = journal.read_bytes()
    r = run_cli(["run", copy, "--progress", "log"], env=env_for(server))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "belongs to another manifest" in r.stderr
    assert f"{copy}: warning: a copy of the derived manifest of the batch in {journal}" in r.stdout + r.stderr
    assert journal.read_bytes() == snapshot


# -- 4. hand-made files and folders (issue 14.7) ---------------------------------------------------


@pytest.mark.slow
def test_hand_made_output_is_refused_then_kept_or_replaced_as_asked(tmp_path, sandbox):
    """Before: an existing file at an output path that no journal wrote was replaced without a word."""
    server = sandbox()
    m = make_batch(tmp_path, 2)
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "lecture-000_summary_report.md"
    mine.write_text("written by hand\n", encoding="utf-8")
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr == ("Error: 1 output file(s) already exist and were not made by this batch: "
                        "lecture-000_summary_report.md. Nothing was started. Pass --skip-existing to keep them "
                        "(those jobs are skipped) or --overwrite to replace them\n")
    assert mine.read_text(encoding="utf-8") == "written by hand\n"
    assert not [x for x in records(out / ".gsvr" / "journal.jsonl") if x["type"].startswith("task_")]
    assert generate_calls(server) == 0

    r = run_cli(["run", m, "--skip-existing", "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert mine.read_text(encoding="utf-8") == "written by hand\n" and "1 completed, 1 skipped" in r.stdout

    m2 = make_batch(tmp_path / "again", 1)
    (tmp_path / "again" / "out").mkdir()
    theirs = tmp_path / "again" / "out" / "lecture-000_summary_report.md"
    theirs.write_text("someone else's\n", encoding="utf-8")
    r = run_cli(["run", m2, "--overwrite", "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert theirs.read_text(encoding="utf-8").startswith("---")  # a lesson with its front matter now


@pytest.mark.slow
def test_folder_run_mirrors_subfolders(tmp_path, sandbox):
    """Before: a/x.mp4 and b/x.mp4 became x_….md and x_…-2.md."""
    server = sandbox()
    src = tmp_path / "course"
    for sub in ("a", "b", "a/deeper"):
        (src / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLE, src / sub / "x.mp4")
    shutil.copyfile(SAMPLE, src / "top.mp4")
    out = tmp_path / "lessons"
    r = run_cli(["run", src, "-t", "summary_report", "-o", out, "--progress", "log", "--rpm", "1000"],
                env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.md")) == [
        "a/deeper/x_summary_report.md", "a/x_summary_report.md", "b/x_summary_report.md", "top_summary_report.md"]
    v = run_cli(["replay", out / ".gsvr" / "journal.jsonl", "--verify"])
    assert v.returncode == 0, v.stdout + v.stderr


def test_dir_field_in_patterns(tmp_path, monkeypatch):
    from gsvr_batch.manifest import derive_manifest

    for rel in ("w1/a.mp4", "w1/x y/b.mp4", "c.mp4"):
        (tmp_path / "v" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLE, tmp_path / "v" / rel)
    monkeypatch.chdir(tmp_path)
    m = derive_manifest("v", template="summary_report", output_dir="o", output_pattern="{dir}/{title}.md")
    assert sorted(os.path.relpath(j.output_path, m.output_root) for j in m.jobs) == ["c.md", "w1/a.md",
                                                                                       "w1/x y/b.md"]
    m = derive_manifest("v", template="summary_report", output_dir="o", output_pattern="by-{dir}-{stem}.md")
    assert "by--c.md" in [os.path.basename(j.output_path) for j in m.jobs]
    m = derive_manifest(["v/c.mp4", "v/w1/a.mp4"], template="summary_report", output_dir="o")
    assert sorted(os.path.basename(j.output_path) for j in m.jobs) == ["a_summary_report.md", "c_summary_report.md"]


@pytest.mark.slow
def test_a_batch_started_with_flat_names_keeps_them_and_its_task_ids(tmp_path, sandbox):
    """Job ids hash the output name: a batch whose journal knows the flat names (the default before
    {dir}) keeps them, so mirroring never re-pays for its videos in subfolders."""
    server = sandbox()
    src = tmp_path / "course"
    (src / "a").mkdir(parents=True)
    shutil.copyfile(SAMPLE, src / "a" / "x.mp4")
    out = tmp_path / "lessons"
    args = ["run", src, "-t", "summary_report", "-o", out, "--progress", "log", "--rpm", "1000"]
    r = run_cli(args + ["--output-pattern", "{stem}_{template}.{ext}"], env=env_for(server))
    assert r.returncode == 0 and (out / "x_summary_report.md").exists(), r.stdout + r.stderr
    r = run_cli(args, env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Nothing to do" in r.stdout and "keeps its flat output names" in r.stdout + r.stderr
    assert generate_calls(server) == 1 and not (out / "a").exists()


# -- 5. single videos, links, several of them (issue 14.10) ---------------------------------------


@pytest.mark.slow
def test_single_video_link_and_several_run_and_say_where_things_go(tmp_path, sandbox):
    """Before: `run lecture.mp4` was "binary file, not a manifest", `run https://youtu.be/…` "not found"."""
    server = sandbox()
    shutil.copyfile(SAMPLE, tmp_path / "lecture.mp4")
    shutil.copyfile(SAMPLE, tmp_path / "talk.mp4")
    env = env_for(server)
    fast = ["--rpm", "1000"]  # the free tier's 10 RPM would pace these calls 6 s apart
    r = run_cli(["run", "lecture.mp4", "--progress", "log", *fast], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    journal = tmp_path / "output" / ".gsvr" / "journal.jsonl"
    assert f"Journal: {journal}" in r.stdout and f"Outputs: {tmp_path / 'output'}" in r.stdout
    assert (tmp_path / "output" / "lecture_comprehensive_lesson.md").is_file()
    # the next video named into the same folder continues the same batch (not "another manifest")
    r = run_cli(["run", "talk.mp4", "--progress", "log", *fast], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sum(x["type"] == "batch_created" for x in records(journal)) == 1
    # several at once, with a link and a template
    r = run_cli(["run", "lecture.mp4", "talk.mp4", "https://youtu.be/aircAruvnKk", "-t", "summary_report",
                 "--progress", "log", *fast], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(p.name for p in (tmp_path / "output").glob("*_summary_report.md")) == [
        "aircAruvnKk_summary_report.md", "lecture_summary_report.md", "talk_summary_report.md"]
    # a link alone, with its own output folder
    r = run_cli(["run", "https://youtu.be/aircAruvnKk", "-o", tmp_path / "yt", "--progress", "log", *fast], env=env,
                cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "yt" / "aircAruvnKk_comprehensive_lesson.md").is_file()
    # a manifest cannot be mixed with videos
    (tmp_path / "m.yaml").write_text("jobs:\n  - lecture.mp4\n", encoding="utf-8")
    r = run_cli(["run", "m.yaml", "talk.mp4"], env=env, cwd=tmp_path)
    assert r.returncode == 2 and "m.yaml is a manifest and cannot be mixed with other inputs" in r.stderr


# -- 7. messages (issue 14.9) ----------------------------------------------------------------------


def _odd_manifests(root: Path) -> dict[str, tuple[Path, str]]:
    os.mkfifo(root / "fifo.yaml")
    (root / "x.yaml").mkdir()
    (root / "manifest.yaml").write_bytes(bytes(range(256)) * 8)
    shutil.copyfile(SAMPLE, root / "a.mp4")
    (root / "m16.csv").write_bytes("source,template\na.mp4,summary_report\n".encode("utf-16"))
    return {
        "fifo": (root / "fifo.yaml", "fifo.yaml: the manifest is a named pipe (FIFO), not a file"),
        "folder named x.yaml": (root / "x.yaml", "x.yaml is a folder, not a manifest file, and has no video files"),
        "binary manifest.yaml": (root / "manifest.yaml", "manifest.yaml: this is a binary file, not a manifest"),
    }


@pytest.mark.slow
def test_odd_manifests_exit_2_with_one_clear_message_and_no_traceback(tmp_path):
    for name, (path, message) in _odd_manifests(tmp_path).items():
        for command in ("run", "validate"):
            r = run_cli([command, path, "--sandbox"], timeout=60)  # a FIFO used to block the read for ever
            out = r.stdout + r.stderr
            assert r.returncode == 2, (name, command, out)
            assert message in out and out.count(message) == 1, (name, command, out)
            assert "Traceback" not in out and "internal error" not in out
    # UTF-16 (Excel's "Unicode Text") is read, not called binary
    r = run_cli(["validate", tmp_path / "m16.csv", "--sandbox"])
    assert r.returncode == 0 and "OK: 1 job" in r.stdout, r.stdout + r.stderr


def test_unreadable_manifest_is_an_error_not_a_traceback(tmp_path, monkeypatch):
    m = one_video_manifest(tmp_path)
    if os.geteuid() != 0:
        m.chmod(0)
    else:  # root reads anything: make the read fail as it does for everyone else
        real = Path.read_bytes

        def denied(self):
            if self == m:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", denied)
    for command in ("validate", "run"):
        r = invoke(command, m)
        assert r.exit_code == 2, r.output
        assert f"{m}: cannot read the manifest: Permission denied (check its permissions)" in r.output
        assert r.exception is None or isinstance(r.exception, SystemExit)


@pytest.mark.slow
def test_a_refused_manifest_prints_its_error_once(tmp_path):
    m = one_video_manifest(tmp_path, "    tempalte: x\n")
    r = run_cli(["run", m])
    assert r.returncode == 2
    line = f"{m}:{line_of(m, 'tempalte')}: unknown key 'tempalte' in job (did you mean 'template'?)"
    assert (r.stdout + r.stderr).count(line) == 1 and r.stderr.startswith("Error: manifest has 1 error:")


def test_bad_output_pattern_and_template_are_blamed_on_the_command_line_once(tmp_path):
    m = one_video_manifest(tmp_path)
    shutil.copyfile(SAMPLE, tmp_path / "b.mp4")
    m.write_text(m.read_text() + "  - source: b.mp4\n    template: comprehensive_lesson\n", encoding="utf-8")
    r = invoke("run", m, "--output-pattern", "{nope}.md")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        "Error: manifest has 1 error:",
        "  <command line>: output pattern '{nope}.md' uses unknown field {nope}; fields: {stem}, {title}, "
        "{template}, {date}, {id}, {index}, {ext}, {dir}"]
    r = invoke("validate", m, "-t", "sumary_report")
    assert r.exit_code == 2
    assert r.stdout.splitlines() == ["<command line>: unknown --template 'sumary_report' (did you mean "
                                     "'summary_report'?)"]


@pytest.mark.slow
def test_repair_hint_includes_yes(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 2)
    assert run_cli(["run", m, "--progress", "quiet"], env=env_for(server)).returncode == 0
    j = tmp_path / "out" / ".gsvr" / "journal.jsonl"
    lines = j.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"type"', b'"typ3"')
    j.write_bytes(b"".join(lines))
    for snap in j.parent.glob("journal.jsonl.snapshot"):
        snap.unlink()
    r = run_cli(["run", m], env=env_for(server))
    assert r.returncode == 2 and f"gsvr-batch repair {j} --yes" in r.stderr, r.stderr
    # the hint works where it will be used: without a terminal to answer a question
    r = run_cli(["repair", j, "--yes"])
    assert r.returncode == 0 and "Kept 2 good records" in r.stdout, r.stdout + r.stderr


def test_user_mistakes_are_exit_2_not_internal_errors(tmp_path):
    m = one_video_manifest(tmp_path)
    r = invoke("run", m, "--journal", "/proc/gsvr-no-such/j.jsonl")
    assert r.exit_code == 2, r.output
    assert r.stderr == ("Error: cannot create the state folder /proc/gsvr-no-such: No such file or directory "
                        "(check --output / --journal)\n")
    r = invoke("run", "")
    assert r.exit_code == 2 and "<command line>: an input is empty" in r.stderr


# -- 8. limits (issue 14.11) -----------------------------------------------------------------------


@pytest.mark.slow
def test_limits_line_says_what_is_in_force_and_why_and_the_daily_limit_stops_the_batch(tmp_path, sandbox):
    """Before: `--no-sandbox --rpm 60` on a long batch stopped at the free tier's 20 RPD with exit 75,
    and nothing said which limits were in force."""
    server = sandbox()
    m = make_batch(tmp_path, 3, extra_settings="rpd: 2\nrpm: 60")
    r = run_cli(["run", m, "--progress", "log", "--rpd", "2", "--rpm", "60"], env=env_for(server))
    assert r.returncode == 75, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if "limits for" in x)
    assert line.split(" ", 2)[2] == (
        "limits for gemini-2.5-flash: 60 RPM (--rpm), 250,000 TPM (free tier), 2 RPD (--rpd) — this batch needs "
        "about 3 requests, more than 2 a day. Warning: the daily limit will stop it before the end (exit 75; the "
        "next run after midnight Pacific continues, or --wait sleeps until then; about 2 days in all); set --tier "
        "or --rpd if your project allows more")
    assert generate_calls(server) == 2
    # the defaults say where they come from; the dry run warns before anything is sent
    r = invoke("run", m, "--dry-run", "--no-sandbox")
    assert r.exit_code == 0, r.output
    assert ("limits for gemini-2.5-flash: 60 RPM (settings.rpm), 250,000 TPM (free tier), 2 RPD (settings.rpd)"
            in r.stdout)
    m2 = make_batch(tmp_path / "two", 21, extra_settings="rpm: 60\nrpd: null")
    m2.write_text(m2.read_text().replace("  rpd: null\n", ""), encoding="utf-8")
    r = invoke("run", m2, "--dry-run", "--tier", "free")
    assert r.exit_code == 0, r.output
    assert ("20 RPD (--tier free) — this batch needs about 21 requests, more than 20 a day. Warning: the daily "
            "limit will stop it before the end") in r.stdout


# -- 9. what the README says about costs and names, checked where the code is -------------------


def test_replay_shows_lost_calls_next_to_the_cost(tmp_path):
    """A generate call whose answer was lost (the worker was killed mid-call) may be billed but has no
    usage to price: `replay` shows it next to the cost, as the README says."""
    from gsvr_batch.lifecycle import BatchLog

    journal = tmp_path / "journal.jsonl"
    blog, _ = BatchLog.open(journal)
    blog.create_batch(manifest="m.yaml", manifest_identity="x", manifest_hash="y", settings={}, version="test")
    blog.add_task(task_id="t1", source="/v/a.mp4", source_kind="local", title="a", template="summary_report",
                  model="gemini-2.5-flash", output="/o/a.md", output_format="md", origin="m.yaml:3")
    blog.start_task("t1", attempt_id="n1", model="gemini-2.5-flash")
    blog.requeue("t1", "was in flight when the previous run ended (crash or kill)", interrupted=True, lost_calls=1)
    blog.close()
    r = invoke("replay", journal)
    assert r.exit_code == 0, r.output
    assert "Cost:     $0.0000 (+ 1 generate call whose answer was lost and may have been billed)" in r.stdout
    r = invoke("replay", journal, "--json")
    assert '"lost_calls": 1' in r.stdout


def test_date_in_output_names_is_the_day_the_batch_was_created(tmp_path):
    """`{date}` must not change when the next cron firing falls on another day: the names (and so the
    task ids) would change and the whole batch would be dropped and paid for again."""
    import datetime as dt

    m = one_video_manifest(tmp_path, settings="")
    m.write_text(m.read_text().replace("  output_dir: out\n",
                                       "  output_dir: out\n  output_pattern: '{date}_{stem}.md'\n"), encoding="utf-8")
    today = dt.date.today().isoformat()
    first, _ = validate_manifest(m)
    assert os.path.basename(first.jobs[0].output_path) == f"{today}_a.md"
    journal = tmp_path / "out" / ".gsvr" / "journal.jsonl"
    journal.parent.mkdir(parents=True)
    created = "2026-01-15T12:00:00.000Z"  # midday UTC: the same calendar day in every time zone up to ±11 h
    journal.write_text('{"seq":1,"ts":"%s","type":"batch_created"}\n' % created, encoding="utf-8")
    later, _ = validate_manifest(m)
    day = dt.datetime.fromisoformat(created.replace("Z", "+00:00")).astimezone().date().isoformat()
    assert os.path.basename(later.jobs[0].output_path) == f"{day}_a.md"
