"""The README keeps its promises: every command in its code blocks that can run offline is run here,
in README order, in a temporary copy of jobs/, and must exit with the code the README implies.

Runs go against the sandbox: the example manifest's own `sandbox: true`, or the suite's sandbox server
through `GOOGLE_GEMINI_BASE_URL` and a fake key for everything the README runs "with the real API".
The files the README's examples name (lecture.mp4, course_videos/, talks.csv, my_templates/…) are made
from the README's own blocks where it shows them (the CSV, the template, the pricing file).

Commands that cannot run here are listed in SKIPPED with the reason; a README command that is neither
run nor listed fails `test_every_readme_command_is_run_or_skipped_with_a_reason`. A few commands need
a situation first (a run going on for `pause`, a failed task for `retry --failed`); SETUPS makes it,
and says so.

The README's run-options table is generated from gsvr_batch/settings.py (scripts/readme_options.py);
`test_options_table_is_the_generated_one` keeps it so.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import GSVR, REPO, SAMPLE, env_for, records, wait_for

README = REPO / "README.md"
TEXT = README.read_text(encoding="utf-8")
JOURNAL = "jobs/output/.gsvr/journal.jsonl"

# Commands (or parts of a `a && b` line) that are not run, and why.
SKIPPED = {
    "pip install -e .": "installs the package from the network; the suite runs from this checkout",
    "pip install -e '.[test]'": "installs the test extras from the network",
    "pytest": "the suite itself",
    "export GEMINI_API_KEY=...": "a real key; the suite uses a fake one and its sandbox server instead",
    "*/15 * * * * cd / && /opt/venv/bin/gsvr-batch run /srv/lessons/manifest.yaml >> /srv/lessons/run.log 2>&1":
        "a crontab line for a server's paths; a cron-like run (no TTY, cwd /, log appended) is tests/test_cron.py",
    "python scripts/make_sample_videos.py": "rewrites jobs/videos/ (a tool for maintainers)",
    "python scripts/bench_core.py": "a benchmark: minutes; its figures are the ones in docs/BENCHMARKS.md",
    "python scripts/bench_ratelimit.py": "a benchmark: minutes; its figures are the ones in docs/RATELIMIT.md",
    "python scripts/torture.py": "minutes of kill -9 torture; its quick version is tests/test_torture.py",
    "python scripts/fault_injection.py": "minutes of fault injection; its quick version is tests/test_faults.py",
    "python scripts/big_file_demo.py": "sends 4 GB to the sandbox, a minute; its one-upload rule at small size is "
                                       "tests/test_long_lectures.py::test_copies_that_start_together_upload_once",
    "python scripts/screenshot_report.py": "needs chromium; the report's rendering is tests/test_report.py",
}

# The exit code each command must give when the README implies one other than 0.
EXPECTED: dict[str, int] = {}


@dataclass(frozen=True)
class Command:
    block: int  # index of the code block in the README
    line: int  # line in README.md
    text: str  # the command as the README writes it (a part of an `&&` line)


def readme_commands(text: str = TEXT) -> list[Command]:
    """Commands in ```bash, ```console ($ lines) and ```cron blocks, in order; `a && b` gives two."""
    out: list[Command] = []
    for n, m in enumerate(re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)):
        lang, body = m.group(1), m.group(2)
        first = text.count("\n", 0, m.start(2)) + 1
        for i, raw in enumerate(body.splitlines()):
            line = raw.strip()
            if lang == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            elif lang == "cron":
                if line and not line.startswith("#"):
                    out.append(Command(n, first + i, line))
                continue
            elif lang != "bash":
                continue
            line = re.split(r"\s{2,}#", line)[0].strip()  # "cmd   # comment"
            if not line or line.startswith("#"):
                continue
            for part in line.split(" && "):
                out.append(Command(n, first + i, part.strip()))
    return out


COMMANDS = readme_commands()


def skip_reason(cmd: Command) -> str | None:
    return SKIPPED.get(cmd.text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def block_text(lang: str, contains: str) -> str:
    """The body of the first ```lang block that contains ``contains``."""
    for m in re.finditer(rf"^```{lang}\n(.*?)^```", TEXT, re.M | re.S):
        if contains in m.group(1):
            return m.group(1)
    raise AssertionError(f"README has no ```{lang} block with {contains!r}")


class World:
    """The folder the README's commands run in, its sandbox servers, and what earlier commands left."""

    def __init__(self, root: Path) -> None:
        from gsvr_batch.sandbox import SandboxConfig, SandboxServer

        self.root = root
        shutil.copytree(REPO / "jobs", root / "jobs", ignore=shutil.ignore_patterns("output", "*.derived.yaml"))
        for name in ("lecture.mp4", "talk.mp4"):
            shutil.copyfile(SAMPLE, root / name)
        for rel in ("course_videos/week-1/intro.mp4", "course_videos/week-2/intro.mp4", "course_videos/outro.mp4"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SAMPLE, root / rel)
        (root / "talks.txt").write_text("# my talks\nlecture.mp4\nhttps://www.youtube.com/watch?v=aircAruvnKk\n",
                                        encoding="utf-8")
        # the README's own CSV, pricing file and template are what its commands use
        (root / "videos").mkdir()
        shutil.copyfile(REPO / "jobs" / "videos" / "lecture-01-introduction.mp4",
                        root / "videos" / "lecture-01-introduction.mp4")
        (root / "talks.csv").write_text(block_text("csv", "source,"), encoding="utf-8")
        (root / "prices.json").write_text(block_text("json", '"models"'), encoding="utf-8")
        (root / "my_templates").mkdir()
        (root / "my_templates" / "my_lesson.yaml").write_text(block_text("yaml", "templates:"), encoding="utf-8")
        self.server = SandboxServer(SandboxConfig(processing_delay=0.05))
        self.server.start()
        self.slow = SandboxServer(SandboxConfig(processing_delay=0.05, latency=1.5))
        self.slow.start()
        self.env = env_for(self.server)
        self.block: int | None = None
        self.background: subprocess.Popen | None = None  # `gsvr-batch sandbox` of the README's block
        self.live: subprocess.Popen | None = None  # a run going on, for pause / resume / cancel
        self.port: int | None = None
        self.background_block = -1

    def close(self) -> None:
        for p in (self.background, self.live):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
        self.server.stop()
        self.slow.stop()

    # -- running ---------------------------------------------------------------------------------
    def argv(self, text: str) -> list[str]:
        argv = shlex.split(text)
        if self.port is not None:
            argv = [a.replace("8765", str(self.port)) for a in argv]
        if argv[0] == "gsvr-batch":
            return GSVR + argv[1:]
        if argv[0] == "python":
            return [sys.executable, str(REPO / argv[1])] + argv[2:]
        raise AssertionError(f"README command the test cannot run: {text}")

    def run(self, text: str, *, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(text), cwd=self.root, env=env or self.env, capture_output=True, text=True,
                               timeout=timeout, stdin=subprocess.DEVNULL)

    def enter_block(self, block: int) -> None:
        """The README's sandbox runs in one terminal while the next block uses it "in another terminal";
        after that block it is stopped with Ctrl-C, which must end it cleanly (exit 0)."""
        if self.background is not None and block > self.background_block + 1:
            self.background.send_signal(signal.SIGINT)
            out, _ = self.background.communicate(timeout=30)
            assert self.background.returncode == 0 and "sandbox stopped" in out, out
            self.background, self.port = None, None
            self.env = env_for(self.server)
        self.block = block

    def start_sandbox(self, text: str) -> None:
        """`gsvr-batch sandbox --port 8765 …` runs in the foreground until Ctrl-C: here, in the background
        on a free port (8765 may be taken on this machine), which the README's `export` then names."""
        self.port = free_port()
        self.background_block = self.block if self.block is not None else -1
        self.background = subprocess.Popen(self.argv(text), cwd=self.root, env=env_for(), stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
        first = self.background.stdout.readline()
        assert f"listening on http://127.0.0.1:{self.port}" in first, first

    def export(self, text: str) -> None:
        for assignment in self.argv_of_export(text):
            name, _, value = assignment.partition("=")
            self.env[name] = value

    def argv_of_export(self, text: str) -> list[str]:
        parts = shlex.split(text)[1:]
        return [p.replace("8765", str(self.port)) if self.port else p for p in parts]

    def ensure_batch(self) -> None:
        """Commands on jobs/output/.gsvr/journal.jsonl need the quick start's batch (when run alone)."""
        if not (self.root / JOURNAL).exists():
            assert self.run("gsvr-batch run jobs/manifest.yaml").returncode == 0


# -- situations some commands need ---------------------------------------------------------------


def live_run(world: World) -> None:
    """`pause` acts on a run in progress: start one (the quick start's batch, --force, against a sandbox
    that answers in 1.5 s) and wait until it has started a task."""
    world.ensure_batch()
    journal = world.root / JOURNAL
    seen = sum(r["type"] == "task_started" for r in records(journal))
    env = env_for(world.slow)
    world.live = subprocess.Popen(world.argv("gsvr-batch run jobs/manifest.yaml --force --no-sandbox --progress log"),
                                  cwd=world.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, stdin=subprocess.DEVNULL)
    assert wait_for(lambda: sum(r["type"] == "task_started" for r in records(journal)) > seen, timeout=60)


def end_live_run(world: World) -> None:
    """After `cancel`: the run exits 4, and rerunning the same command continues to the end (exit 0)."""
    out, _ = world.live.communicate(timeout=120)
    assert world.live.returncode == 4, out
    world.live = None
    again = world.run("gsvr-batch run jobs/manifest.yaml --no-sandbox --progress log", env=env_for(world.slow))
    assert again.returncode == 0, again.stdout + again.stderr


def one_failed_task(world: World) -> None:
    """`retry --failed` needs a failed task: a folder where one lesson must be written makes that task
    fail for good (exit 1); the folder is then removed, as a user would fix the cause."""
    world.ensure_batch()
    blocker = world.root / "jobs" / "output" / "lecture-02-photosynthesis_comprehensive_lesson.md"
    blocker.unlink()
    blocker.mkdir()
    r = world.run("gsvr-batch run jobs/manifest.yaml --force --progress log")
    assert r.returncode == 1, r.stdout + r.stderr
    blocker.rmdir()


# Commands whose JOURNAL argument may name the batch another way (its manifest, its output folder).
JOURNAL_COMMANDS = ("status", "replay", "report", "retry", "repair", "pause", "resume", "cancel")

SETUPS = {
    f"gsvr-batch pause  {JOURNAL}": live_run,
    f"gsvr-batch retry  {JOURNAL} --failed": one_failed_task,
}
AFTER = {f"gsvr-batch cancel {JOURNAL}": end_live_run}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("readme"))
    yield w
    w.close()


# -- the tests -------------------------------------------------------------------------------------


def test_every_readme_command_is_run_or_skipped_with_a_reason():
    assert len(COMMANDS) > 30  # the parser found the README's blocks
    runnable = [c for c in COMMANDS if skip_reason(c) is None]
    for c in runnable:
        head = shlex.split(c.text)[0]
        assert head in ("gsvr-batch", "python", "export"), f"README line {c.line}: cannot run {c.text!r}"
    for text in SKIPPED:
        assert any(c.text == text for c in COMMANDS), f"SKIPPED lists {text!r}, which the README no longer has"
    # every subcommand of the CLI is shown at least once, and run here
    from gsvr_batch.cli import cli

    shown = {shlex.split(c.text)[1] for c in runnable if c.text.startswith("gsvr-batch ")}
    assert shown == set(cli.commands), set(cli.commands) ^ shown


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_commands_in_order(world):
    """Every runnable command of the README, in the README's order, in one world. They depend on
    each other as a reader's commands do — `pause` starts the live run that `resume` and `cancel` act
    on, an `export` is for the next command, the sandbox block serves the next block — so they are
    one test: no way of sharing tests out between workers can part them (one test per command did,
    under pytest -n 2, whenever the suite's make-up changed). A failure names the README line."""
    ran = 0
    for cmd in COMMANDS:
        if skip_reason(cmd) is None:  # the skipped ones and their reasons: the test above
            _run_readme_command(world, cmd)
            ran += 1
    assert ran > 25


def _run_readme_command(world, cmd) -> None:
    world.enter_block(cmd.block)
    if cmd.text.startswith("export "):
        world.export(cmd.text)  # the next command of the block runs with it
        return
    if cmd.text.startswith("gsvr-batch sandbox"):
        world.start_sandbox(cmd.text)
        return
    words = cmd.text.split()
    if JOURNAL in cmd.text or (words[0] == "gsvr-batch" and words[1:2] and words[1] in JOURNAL_COMMANDS):
        world.ensure_batch()  # the batch these commands look at (named by its journal or its manifest)
    setup = SETUPS.get(cmd.text)
    if setup is not None:
        setup(world)
    r = world.run(cmd.text)
    out = r.stdout + r.stderr
    assert r.returncode == EXPECTED.get(cmd.text, 0), f"README line {cmd.line}: {cmd.text}\n{out}"
    assert "Traceback" not in out and "internal error" not in out
    after = AFTER.get(cmd.text)
    if after is not None:
        after(world)


def test_options_table_is_the_generated_one():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import readme_options
    finally:
        sys.path.pop(0)
    assert readme_options.readme_block(TEXT) == readme_options.generate(), \
        "README's run-options table is out of date: python scripts/readme_options.py --write"


def test_every_run_option_has_a_row_with_an_example():
    from click.testing import CliRunner

    from gsvr_batch.cli import cli

    help_text = CliRunner().invoke(cli, ["run", "--help"]).output
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", help_text.split("Exit codes:")[0])) - {"--help"}
    rows = [line for line in TEXT.splitlines() if line.startswith("| `--")]
    for opt in options:
        row = next((r for r in rows if f"`{opt} " in r or f"`{opt}`" in r), None)
        assert row is not None, f"{opt} has no row in README's options table"
        assert row.rstrip(" |").endswith("`") and row.count("|") >= 5, row  # ends with its example


def test_readme_manifest_and_notify_examples_are_valid(tmp_path, monkeypatch):
    from gsvr_batch.manifest import validate_manifest
    from gsvr_batch.notify import validate_targets

    shutil.copytree(REPO / "jobs" / "videos", tmp_path / "videos")
    (tmp_path / "lectures").mkdir()
    shutil.copyfile(SAMPLE, tmp_path / "lectures" / "week-1.mp4")
    (tmp_path / "more_videos.txt").write_text("videos/lecture-02-photosynthesis.mp4\n", encoding="utf-8")
    m = tmp_path / "manifest.yaml"
    m.write_text(block_text("yaml", "jobs:"), encoding="utf-8")
    manifest, problems = validate_manifest(m)
    assert [str(p) for p in problems] == [] and len(manifest.jobs) == 5
    notify = yaml.safe_load(block_text("yaml", "notify:"))["settings"]["notify"]
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T000/B000/not-a-secret")
    monkeypatch.setenv("SMTP_PASSWORD", "not-a-secret")
    assert validate_targets(notify) == []
    monkeypatch.delenv("SMTP_PASSWORD")
    assert any("SMTP_PASSWORD" in p for p in validate_targets(notify))  # "checked before any work"


def test_readme_limits_line_is_what_a_run_prints():
    from gsvr_batch.quota import Limits
    from gsvr_batch.runner.preflight import limits_line_of

    shown = block_text("text", "limits for").strip()
    line = limits_line_of({"gemini-2.5-flash": Limits(rpm=60, tpm=250_000, rpd=20)},
                          {"rpm": "--rpm", "tpm": "free tier", "rpd": "free tier"}, 100)
    assert shown == line


def test_exit_code_table_says_what_the_code_says():
    from gsvr_batch.exitcodes import DESCRIPTIONS

    for code, desc in DESCRIPTIONS.items():
        assert f"| `{int(code)}` | {desc} |" in TEXT


def test_readme_json_blocks_parse():
    for m in re.finditer(r"^```json\n(.*?)^```", TEXT, re.M | re.S):
        json.loads(m.group(1))
