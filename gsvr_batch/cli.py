"""Command line interface: parses, calls one library function per command, prints.

No logic lives here beyond turning arguments into calls and results into text and exit codes.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from . import __version__
from .errors import GsvrError, LockHeld, ManifestError, UsageError
from .exitcodes import ExitCode



@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gsvr-batch")
def cli() -> None:
    """Turn many videos into lesson plans with Google Gemini, unattended and resumable.

    JOURNAL, where a command takes one, is the batch's journal, its output folder, or what was given
    to `run` (the manifest, folder, list file or video).
    """


def fail(exc: GsvrError) -> None:
    """Print ``Error: ...`` and exit with the error's documented code (never a traceback).

    Another run holding the journal is not an error (two cron firings overlapped): exit 75, no
    "Error:" for a log watcher to page anyone about."""
    if isinstance(exc, LockHeld):
        click.echo(f"Not started: {exc}", err=True)
    else:
        click.echo(f"Error: {exc}", err=True)
    sys.exit(int(exc.exit_code))


def _locate(journal: str) -> str:
    """A JOURNAL argument as given: the journal, its output folder, or what `run` was given
    (``locate.locate_journal``); anything else stops here with ``Error: ...``, exit 2."""
    from .locate import locate_journal

    try:
        return str(locate_journal(journal))
    except GsvrError as exc:
        fail(exc)
        raise  # not reached: fail() exits


def _run_settings(f):
    """The run options, generated from the one settings table (gsvr_batch/settings.py); `validate`
    takes them too, so it answers for the exact command about to be run."""
    from . import settings as settings_mod

    return settings_mod.click_options(f)


@cli.command("templates")
@click.option("--templates", "templates_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Extra template folder (repeatable; later folders override earlier ones and the built-ins).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def templates_cmd(templates_dirs: tuple[str, ...], as_json: bool) -> None:
    """List prompt templates: name, version, parameters (defaults, required) and where each comes from."""
    import json

    from .templates import METADATA_KEYS, load_templates

    try:
        found = load_templates(templates_dirs)
    except GsvrError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps([t.to_dict() for t in found.values()], ensure_ascii=False, indent=2))
        return
    for name in sorted(found):
        t = found[name]
        origin = "built-in" if t.builtin else t.source
        click.echo(f"{click.style(name, bold=True)}  v{t.version}  ({origin})")
        if t.description:
            click.echo(f"  {t.description}")
        if t.parameters:
            width = max(len(p.name) for p in t.parameters)
            for p in t.parameters:
                if p.required:
                    note = "required"
                elif p.default is not None:
                    note = f"default: {p.default!r}" if isinstance(p.default, str) else f"default: {p.default}"
                elif p.name in METADATA_KEYS:
                    note = "filled from the video / manifest title"
                else:
                    note = "optional, no default"
                if p.choices:
                    note += f"; one of {', '.join(map(str, p.choices))}"
                click.echo(f"    {p.name:<{width}}  {note}")
        else:
            click.echo("    (no parameters)")
        click.echo("")


@cli.command("validate")
@click.argument("sources", nargs=-1, required=True, metavar="MANIFEST|FOLDER|LIST|VIDEO...")
@_run_settings
@click.option("--force", is_flag=True, help="Check as for run --force (completed jobs' outputs are redone).")
def validate_cmd(sources: tuple[str, ...], force: bool, **kw) -> None:
    """Check what `run` would run, with the same arguments and options, without calling any API.

    Prints every problem as FILE:LINE: message (hint): the manifest, outputs onto files the batch
    owns, existing outputs the batch did not make, notification targets, and (when the journal
    exists) jobs that changed since they completed. Exit 2 if any is an error; nothing is written.

    \b
    Examples:
      gsvr-batch validate jobs/manifest.yaml
      gsvr-batch validate lecture.mp4 https://youtu.be/aircAruvnKk -t summary_report
    """
    from . import settings as settings_mod
    from .validation import validate_batch

    result = validate_batch(list(sources), force=force, **settings_mod.cli_values(kw))
    for problem in result.problems:
        click.echo(str(problem))
    for note in result.notes:
        click.echo(note)
    errors, warnings = len(result.errors), len(result.warnings)
    shown = sources[0] if len(sources) == 1 else f"{len(sources)} inputs"
    if not result.ok or result.manifest is None:
        fail(ManifestError(f"{shown}: {_count(errors, 'error')}, {_count(warnings, 'warning')}"))
    m = result.manifest
    outputs = len({j.output_path for j in m.jobs})
    suffix = f" ({_count(warnings, 'warning')})" if warnings else ""
    click.echo(f"Journal: {_short(str(result.journal))} ({result.journal_note})")
    click.echo(f"OK: {_count(len(m.jobs), 'job')}, {_count(outputs, 'output')} under {_short(str(m.output_root))}{suffix}")


def _short(path: str) -> str:
    """A path as the user would type it: relative to the cwd when it is inside it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return rel if not rel.startswith("..") else path


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ---------------------------------------------------------------------------------------------
# run / retry / replay / status / repair / pause / resume / cancel  (core commands)

EXIT_CODES_HELP = "\n".join(f"  {int(c):>3}  {d}" for c, d in __import__(
    "gsvr_batch.exitcodes", fromlist=["DESCRIPTIONS"]).DESCRIPTIONS.items())


def _retry_settings(f):
    from . import settings as settings_mod

    return settings_mod.click_options(f, exclude=("journal",))


@cli.command("run", epilog="\b\nExit codes:\n" + EXIT_CODES_HELP)
@click.argument("sources", nargs=-1, required=True, metavar="MANIFEST|FOLDER|LIST|VIDEO...")
@_run_settings
@click.option("--force", is_flag=True, help="Reprocess every job, even completed ones.")
@click.option("--dry-run", is_flag=True, help="Validate, probe videos and print the plan and cost estimate; "
                                                "send and journal nothing.")
def run_cmd(sources: tuple[str, ...], force: bool, dry_run: bool, **kw) -> None:
    """Run (or continue) a batch: a YAML/CSV manifest, a folder of videos, a text list, or videos and links.

    Rerunning the same command continues where the last run stopped; finished work is never redone.

    \b
    Examples:
      gsvr-batch run jobs/manifest.yaml
      gsvr-batch run ./course_videos --template comprehensive_lesson --output ./lessons --sandbox
      gsvr-batch run lecture.mp4 https://youtu.be/aircAruvnKk -t summary_report
      gsvr-batch run talks.csv --rpm 10 --rpd 250 --cost-limit 5
    """
    from . import settings as settings_mod
    from .runner import RunOptions

    try:
        manifest = sources[0] if len(sources) == 1 else list(sources)
        opts = RunOptions(manifest, force=force, dry_run=dry_run, **settings_mod.cli_values(kw))
        if dry_run:
            from .dryrun import dry_run as do_dry_run

            click.echo(do_dry_run(opts))
            sys.exit(0)
        from .runner import run_batch

        result = run_batch(opts, echo=_echo)
    except GsvrError as exc:
        _fail_with_problems(exc)
    except KeyboardInterrupt:
        click.echo("Error: interrupted before the batch started; nothing was changed", err=True)
        sys.exit(130)
    _finish(result)


def _echo(text: str) -> None:
    click.echo(text)


def _finish(result) -> None:
    """Print a run's last lines and exit with its code (a closed stdout is not an error)."""
    import signal

    from .console import Console

    # The run is over and its journal consistent: a late Ctrl-C must not print a traceback
    # from the interpreter's shutdown (threads being joined).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = Console(_echo, result.display)
    important = result.exit_code != 0
    out.say(result.message, important=important)
    out.say(f"Journal: {result.journal}")
    if not result.message.startswith("Nothing to do"):
        out.say(f"Outputs: {result.output_root}")
    try:
        sys.stdout.flush()
    except (BrokenPipeError, OSError):
        out.close_stdout()
    sys.exit(result.exit_code)


def _fail_with_problems(exc: GsvrError) -> None:
    """``Error: ...`` once: a manifest's errors are listed in the message itself; its warnings
    (a key pasted into it, say) are printed before it."""
    for p in getattr(exc, "problems", None) or []:
        if not getattr(p, "is_error", True):
            click.echo(str(p), err=True)
    fail(exc)


@cli.command("retry", epilog="\b\nExit codes:\n" + EXIT_CODES_HELP)
@click.argument("journal")
@click.option("--failed", "retry_failed", is_flag=True, help="Rerun every failed task.")
@click.option("--ids", "ids", multiple=True, metavar="ID", help="Rerun these task ids (repeatable or comma separated).")
@_retry_settings
def retry_cmd(journal: str, retry_failed: bool, ids: tuple[str, ...], **kw) -> None:
    """Rerun failed (or chosen) tasks of JOURNAL's batch, and only those, with the settings that batch was
    run with (any option given here overrides them); the journal keeps every attempt.

    \b
    Examples:
      gsvr-batch retry jobs/output/.gsvr/journal.jsonl --failed
      gsvr-batch retry jobs/output/.gsvr/journal.jsonl --ids 07f3c704a076cf28 --workers 1
    """
    journal = _locate(journal)
    from . import settings as settings_mod
    from .runner import retry_batch

    try:
        ids_list = tuple(i.strip() for part in ids for i in part.split(",") if i.strip())
        given = settings_mod.cli_values(kw)
        result = retry_batch(journal, failed=retry_failed, ids=ids_list, echo=_echo, **given)
    except GsvrError as exc:
        _fail_with_problems(exc)
    _finish(result)


@cli.command("replay")
@click.argument("journal")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (for scripts).")
@click.option("--verify", is_flag=True, help="Check every completed output exists with its recorded sha256 (exit 1 if not).")
def replay_cmd(journal: str, as_json: bool, verify: bool) -> None:
    """Rebuild the batch state from JOURNAL and print it (read-only; safe while a run is going).

    \b
    Examples:
      gsvr-batch replay jobs/output/.gsvr/journal.jsonl
      gsvr-batch replay jobs/output/.gsvr/journal.jsonl --json | jq .counts
      gsvr-batch replay jobs/output/.gsvr/journal.jsonl --verify
    """
    journal = _locate(journal)
    from .summary import batch_document, render_replay, to_json

    try:
        doc = batch_document(journal, verify=verify)
    except GsvrError as exc:
        fail(exc)
    click.echo(to_json(doc) if as_json else render_replay(doc))
    if verify and doc["verify_problems"]:
        sys.exit(int(ExitCode.TASKS_FAILED))


@cli.command("status")
@click.argument("journal")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def status_cmd(journal: str, as_json: bool) -> None:
    """Short live view of JOURNAL's batch: counts, rate, ETA, who holds the lock, running tasks and their step.

    \b
    Examples:
      gsvr-batch status jobs/output/.gsvr/journal.jsonl
      gsvr-batch status jobs/manifest.yaml
    """
    journal = _locate(journal)
    from .summary import render_status, status_document, to_json

    try:
        doc = status_document(journal)
    except GsvrError as exc:
        fail(exc)
    click.echo(to_json(doc) if as_json else render_status(doc))


@cli.command("report")
@click.argument("journal")
@click.option("--format", "fmt", type=click.Choice(["md", "json", "html"]), default="md", show_default=True,
              help="Markdown, JSON, or one self-contained HTML page with SVG charts.")
@click.option("--output", "-o", "out", type=click.Path(dir_okay=False),
              help="Write to this file, atomically (default: stdout).")
def report_cmd(journal: str, fmt: str, out: str | None) -> None:
    """Report on JOURNAL's batch: status and error totals, durations, tokens and cost, throughput, timeline.

    \b
    Examples:
      gsvr-batch report jobs/output/.gsvr/journal.jsonl
      gsvr-batch report jobs/output/.gsvr/journal.jsonl --format html -o report.html
      gsvr-batch report jobs/output/.gsvr/journal.jsonl --format json -o report.json
    """
    journal = _locate(journal)
    from .report import write_report

    try:
        path = write_report(journal, fmt, out)
    except GsvrError as exc:
        fail(exc)
    if path is not None:
        click.echo(str(path))


@cli.command("repair")
@click.argument("journal")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def repair_cmd(journal: str, yes: bool) -> None:
    """Cut JOURNAL at its first damaged record (the original is copied aside).

    Tasks whose records are lost are simply run again; outputs are never deleted.

    \b
    Example:
      gsvr-batch repair jobs/output/.gsvr/journal.jsonl --yes
    """
    journal = _locate(journal)
    from .channels import RunLock
    from .journal import check_repairable

    try:
        check_repairable(journal)  # before the question and the lock: nothing to keep, nothing to ask
    except GsvrError as exc:
        fail(exc)
    except OSError as exc:
        fail(UsageError(f"cannot read {journal}: {exc.strerror or exc}"))
    if not yes and not click.confirm(f"Cut {journal} at its first damaged record?", default=False):
        sys.exit(int(ExitCode.USAGE))
    from .journal import repair

    # Under the run lock: a run must not append while the file is being cut.
    lock = RunLock(journal)
    try:
        lock.acquire()
    except LockHeld as exc:
        fail(LockHeld(f"a run is using {journal}; stop it before repairing ({exc})"))
    try:
        kept, backup, dropped = repair(journal)
    except GsvrError as exc:
        fail(exc)
    finally:
        lock.release()
    if backup is None:
        click.echo(f"Nothing to repair: all {kept} records of {journal} are good; nothing changed")
    else:
        click.echo(f"Kept {kept} good records, dropped {dropped} bytes; the original is at {backup}")


def _control(journal: str, command: str) -> None:
    from .channels import send_command

    try:
        send_command(journal, command)
    except GsvrError as exc:
        fail(exc)
    click.echo(f"Sent {command} to the run on {journal} (takes effect within a second).")


@cli.command("pause")
@click.argument("journal")
def pause_cmd(journal: str) -> None:
    """Pause the run on JOURNAL: no new tasks start, running ones hold at their next API call.

    \b
    Example:
      gsvr-batch pause jobs/output/.gsvr/journal.jsonl
    """
    journal = _locate(journal)
    _control(journal, "pause")


@cli.command("resume")
@click.argument("journal")
def resume_cmd(journal: str) -> None:
    """Resume a paused run on JOURNAL.

    \b
    Example:
      gsvr-batch resume jobs/output/.gsvr/journal.jsonl
    """
    journal = _locate(journal)
    _control(journal, "resume")


@cli.command("cancel")
@click.argument("journal")
def cancel_cmd(journal: str) -> None:
    """Cancel the run on JOURNAL: stop dispatching, let running calls end, exit 4. Rerun to continue.

    \b
    Example:
      gsvr-batch cancel jobs/output/.gsvr/journal.jsonl

    In batch mode the remote Gemini batch jobs are cancelled too, even when no run is in
    progress (their tasks go back to pending).
    """
    journal = _locate(journal)
    import os

    from .channels import lock_is_held

    if os.path.isfile(journal) and not lock_is_held(journal):
        from .batchmode import cancel_batch_jobs

        try:
            if cancel_batch_jobs(journal, echo=click.echo) is not None:
                return
        except GsvrError as exc:
            fail(exc)
    _control(journal, "cancel")


@cli.command("sandbox")
@click.option("--port", type=int, default=0, show_default=True, help="Port on 127.0.0.1 (0: any free port).")
@click.option("--rpm", type=float, default=None, help="Generate requests per minute per model.")
@click.option("--rpd", type=int, default=None, help="Generate requests per day per model.")
@click.option("--tpm", type=float, default=None, help="Input tokens per minute per model.")
@click.option("--latency", type=float, default=0.0, show_default=True, help="Seconds added to each generate call.")
@click.option("--fail-rate", type=float, default=0.0, show_default=True,
              help="Probability that a generate call or upload fails (500, 503 or dropped connection).")
@click.option("--processing-delay", type=float, default=0.5, show_default=True,
              help="Seconds an uploaded file stays PROCESSING.")
@click.option("--batch-duration", type=float, default=2.0, show_default=True, help="Seconds a batch job runs.")
@click.option("--api-key", default=None, help="Accept only this key (default: any non-empty key).")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None, help="Request log (JSONL).")
@click.option("--seed", type=int, default=None, help="Seed for injected failures.")
@click.option("--input-token-limit", type=int, default=None,
              help="Input token limit of every model (default: each model's own, 1,048,576).")
@click.option("--extra-model", "extra_models", multiple=True, metavar="NAME=LIMIT",
              help="Also serve model NAME with this input token limit (repeatable).")
@click.option("--youtube-duration", "youtube_durations", multiple=True, metavar="ID=SECONDS",
              help="Length of a YouTube video by id (repeatable; other videos are assumed to last 600 s).")
@click.option("--youtube-seconds-per-day", type=float, default=None,
              help="Daily quota of YouTube video seconds (the free tier's is 28800).")
@click.option("--cache-ttl", type=float, default=300.0, show_default=True,
              help="Seconds a video stays in the implicit cache (0: no caching).")
@click.option("--upload-lost-answer-rate", type=float, default=0.0, show_default=True,
              help="Probability that an upload is stored but the answer to its last chunk is lost (503).")
def sandbox_cmd(port: int, rpm: float | None, rpd: int | None, tpm: float | None, latency: float,
                fail_rate: float, processing_delay: float, batch_duration: float, api_key: str | None,
                log_path: str | None, seed: int | None, input_token_limit: int | None,
                extra_models: tuple[str, ...], youtube_durations: tuple[str, ...],
                youtube_seconds_per_day: float | None, cache_ttl: float, upload_lost_answer_rate: float) -> None:
    """Run the offline Gemini-compatible sandbox server in the foreground (Ctrl-C stops it)."""
    import signal
    import threading

    from .sandbox import SandboxConfig, SandboxServer
    from .sandbox.config import parse_pairs

    try:
        models = parse_pairs(extra_models, int, "--extra-model")
        durations = parse_pairs(youtube_durations, float, "--youtube-duration")
    except ValueError as exc:
        fail(UsageError(str(exc)))
        return
    config = SandboxConfig(port=port, rpm=rpm, rpd=rpd, tpm=tpm, latency=latency, fail_rate=fail_rate,
                           processing_delay=processing_delay, batch_duration=batch_duration,
                           api_key=api_key, log_path=log_path, seed=seed, models=models,
                           input_token_limit=input_token_limit, youtube_durations=durations,
                           youtube_seconds_per_day=youtube_seconds_per_day, cache_ttl=cache_ttl,
                           upload_lost_answer_rate=upload_lost_answer_rate)
    server = SandboxServer(config)
    try:
        url = server.start()
    except OSError as exc:
        fail(UsageError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}"))
        return
    stop = threading.Event()
    # Ctrl-C and SIGTERM (systemd, a test harness) both stop it cleanly, whenever they come: as
    # handlers, not a KeyboardInterrupt that could land while the banner is printed ("Aborted!", exit 1).
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    click.echo(f"gsvr-batch sandbox listening on {url}")
    click.echo("Point the client at it with:")
    click.echo(f"  export GOOGLE_GEMINI_BASE_URL={url}")
    click.echo("  export GEMINI_API_KEY=sandbox-key" + ("" if api_key is None else "   # or the --api-key value"))
    click.echo(f"Stats: {url}/_sandbox/stats    Press Ctrl-C to stop.", err=False)
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        click.echo("sandbox stopped")


def main() -> None:
    try:
        cli(prog_name="gsvr-batch")
    except Exception as exc:  # noqa: BLE001 - a bug must not look like a user mistake, nor hide
        import tempfile
        import traceback

        from .secrets import redact

        # The traceback may quote a header or a URL: it is scrubbed like everything else we write.
        fd, path = tempfile.mkstemp(prefix="gsvr-batch-crash-", suffix=".txt")
        with os.fdopen(fd, "w") as fh:
            fh.write(redact(traceback.format_exc()))
        click.echo(redact(f"Error: internal error ({type(exc).__name__}: {exc}). This is a bug in gsvr-batch, not "
                          f"in your input; the journal is consistent and rerunning the same command continues. "
                          f"Details for a bug report: {path}"), err=True)
        sys.exit(int(ExitCode.INTERNAL))
