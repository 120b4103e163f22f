"""Every setting of a batch, defined once (after sqlite-utils, which keeps its defaults in one place).

:data:`SETTINGS` is the one table. From it come:

* the :class:`Settings` type (a dataclass generated from the table);
* validation of a manifest's ``settings:`` section and of command-line values (:func:`parse`);
* the ``gsvr-batch run`` / ``retry`` click options (:func:`click_options`);
* the manifest keys accepted under ``settings:`` (:data:`MANIFEST_KEYS`);
* the README's option table, which ``tests/test_docs.py`` checks against it.

A setting whose ``target`` is ``"defaults"`` (template, model, output, output pattern, format) is
a job default: in ``settings:`` it means the same as under ``defaults:``. A few options are
actions of one invocation and are refused in ``settings:`` on purpose (:data:`PER_RUN`): a
manifest that said ``force: true`` would redo the whole batch at every cron firing.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from .timeutil import parse_duration


class SettingError(ValueError):
    """A value a setting refuses; ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


# -- value parsers (each returns the normalised value or raises SettingError) --------------------


def _int(lo: int, hi: int, hint: str | None = None) -> Callable[[Any], int]:
    def parse(v: Any) -> int:
        if isinstance(v, str) and re.fullmatch(r"\s*\d+\s*", v):
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise SettingError(f"must be a whole number from {lo} to {hi:,}".replace(",", ","), hint)
        return v
    return parse


def _number(*, minimum: float = 0.0, open_min: bool = True, what: str = "a positive number") -> Callable[[Any], float]:
    def parse(v: Any) -> float:
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise SettingError(f"must be {what}") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < minimum or (open_min and v == minimum):
            raise SettingError(f"must be {what}")
        return float(v)
    return parse


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return v.strip().lower() in ("true", "yes", "on", "1")
    raise SettingError("must be true or false")


def _choice(*values: str, aliases: dict[str, str] | None = None) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        text = str(v).strip().lower() if v is not None else ""
        text = (aliases or {}).get(text, text)
        if text not in values:
            raise SettingError(f"unknown value {v!r}", "use one of: " + ", ".join(values))
        return text
    return parse


_TIER_ALIASES = {f"tier{n}": str(n) for n in (1, 2, 3)} | {f"tier {n}": str(n) for n in (1, 2, 3)} | {
    f"tier-{n}": str(n) for n in (1, 2, 3)} | {f"tier_{n}": str(n) for n in (1, 2, 3)}


def _duration(v: Any) -> float:
    seconds = parse_duration(v)
    if seconds is None:
        raise SettingError("must be a positive duration", "seconds, or e.g. '90m', '1h30m', '1:30:00'")
    return seconds


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEY_SHAPE = re.compile(r"AIza[0-9A-Za-z_\-]{20,}")


def _env_name(v: Any) -> str:
    # Never echo the value: people paste the key itself here.
    if not isinstance(v, str) or not _ENV_NAME.match(v) or _KEY_SHAPE.search(v):
        raise SettingError("must be the NAME of an environment variable",
                           "e.g. api_key_env: GEMINI_API_KEY, and export GEMINI_API_KEY=... in the shell")
    return v


def _text(v: Any) -> str:
    if not isinstance(v, (str, os.PathLike)) or not os.fspath(v).strip():
        raise SettingError("must be text")
    return os.fspath(v).strip()


def _paths(v: Any) -> list[str]:
    items = v if isinstance(v, (list, tuple)) else [v]
    if not items or not all(isinstance(i, (str, os.PathLike)) and os.fspath(i).strip() for i in items):
        raise SettingError("must be a folder path or a list of them")
    return [os.fspath(i) for i in items]


def _notify(v: Any) -> list[dict[str, Any]]:
    items = v if isinstance(v, (list, tuple)) else [v]
    out = []
    for item in items:
        if isinstance(item, str) and item.strip():
            out.append({"type": "webhook", "url": item.strip()})  # --notify URL
        elif isinstance(item, dict):
            out.append(dict(item))
        else:
            raise SettingError("must be a webhook URL or a list of targets",
                               "e.g. notify: [{type: email, to: me@example.org}]")
    return out


# -- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    name: str  # attribute of Settings; key under settings:
    parse: Callable[[Any], Any]
    default: Any
    help: str  # one line: --help text and the README table
    example: str  # how the README shows it (command line, or manifest for manifest-only settings)
    flags: tuple[str, ...] = ()  # click declarations; () = manifest only
    metavar: str | None = None
    choices: tuple[str, ...] | None = None  # shown by click
    flag_pair: bool = False  # "--x/--no-x"
    multiple: bool = False
    target: str = "settings"  # or "defaults": a job default (defaults.<defaults_key>)
    defaults_key: str | None = None
    aliases: tuple[str, ...] = ()  # other accepted keys under settings:


def _s(*a: Any, **kw: Any) -> Setting:
    return Setting(*a, **kw)


SETTINGS: tuple[Setting, ...] = (
    # -- what to make ------------------------------------------------------------------------
    _s("template", _text, None, "Template for every job (over the manifest's; default comprehensive_lesson).",
       "-t summary_report", ("--template", "-t"), "NAME", target="defaults", defaults_key="template"),
    _s("output", _text, None, "Output root folder (default: output/ next to the manifest, in the folder named, or next to the videos named).",
       "-o ./lessons", ("--output", "-o"), "DIR", target="defaults", defaults_key="output_dir",
       aliases=("output_dir",)),
    _s("output_pattern", _text, None, 'Output file names: {stem} {title} {template} {date} {id} {index} {dir} {ext}.',
       '--output-pattern "{title}_{date}_{template}.md"', ("--output-pattern",), "PATTERN", target="defaults",
       defaults_key="output_pattern"),
    _s("format", _choice("md", "json", "html"), None, "Output format: md, json or html.", "--format html",
       ("--format",), None, ("md", "json", "html"), target="defaults", defaults_key="output_format",
       aliases=("output_format",)),
    _s("model", _text, None, "Gemini model for every job (default gemini-2.5-flash).", "-m gemini-2.5-pro",
       ("--model", "-m"),
       "NAME", target="defaults", defaults_key="model"),
    _s("templates_dir", _paths, (), "Extra template folder (repeatable).", "--templates ./my_templates",
       ("--templates",), "DIR", multiple=True, aliases=("templates",)),
    _s("context", _choice("auto", "full", "low", "clips"), "auto",
       "Long videos: auto picks one call, low resolution, or clips + merge to fit the model's input.",
       "--context clips", ("--context",), None, ("auto", "full", "low", "clips")),
    _s("clip_minutes", _number(what="a positive number of minutes"), None,
       "Clip length in minutes when a video is sent in clips (default: the largest that fits).",
       "--clip-minutes 40", ("--clip-minutes",), "MIN"),
    _s("max_duration", _duration, None, "Skip videos longer than this (seconds, or 90m, 1h30m).",
       "--max-duration 90m", ("--max-duration",), "DURATION"),
    _s("skip_existing", _bool, False, "Skip jobs whose output already exists and was not made by this batch.",
       "--skip-existing", ("--skip-existing",), flag_pair=True),
    _s("overwrite", _bool, False, "Replace outputs that exist but were not made by this batch (default: refuse).",
       "--overwrite", ("--overwrite",), flag_pair=True),
    # -- how it runs -------------------------------------------------------------------------
    _s("journal", _text, None, "Journal file (default: OUTPUT_ROOT/.gsvr/journal.jsonl).",
       "--journal /var/lib/lessons/journal.jsonl", ("--journal",), "PATH"),
    _s("workers", _int(1, 32, "2-8 suits the free and tier-1 quotas"), 2, "Worker processes (1-32).", "-j 4",
       ("--workers", "-j"), "N"),
    _s("sandbox", _bool, None, "Run against the built-in offline sandbox (no key, nothing billed), or not.",
       "--no-sandbox", ("--sandbox",), flag_pair=True),
    _s("api_key_env", _env_name, None, "Name of the environment variable holding the API key.",
       "--api-key-env MY_PROJECT_KEY", ("--api-key-env",), "NAME"),
    _s("mode", _choice("online", "batch"), "online", "online, or Gemini Batch Mode (half price, up to 24 h).",
       "--mode batch", ("--mode",), None, ("online", "batch")),
    _s("progress", _choice("auto", "bar", "log", "quiet"), "auto",
       "Progress display: auto (bar on a terminal, log lines otherwise), bar, log or quiet.", "--progress log",
       ("--progress",), None, ("auto", "bar", "log", "quiet")),
    _s("summary_interval", _number(minimum=1, open_min=False, what="a number of seconds (1 or more)"), 30.0,
       "Seconds between progress summary lines without a terminal.", "--summary-interval 60",
       ("--summary-interval",), "SECONDS"),
    _s("wait", _bool, False, "Sleep through a spent daily quota (or pending batch jobs) instead of exiting 75.",
       "--wait", ("--wait",), flag_pair=True),
    # -- quotas, money -----------------------------------------------------------------------
    _s("tier", _choice("free", "1", "2", "3", aliases=_TIER_ALIASES), "free",
       "Your quota tier, for the built-in rate limits: free, 1, 2 or 3.", "--tier 1", ("--tier",), None,
       ("free", "1", "2", "3")),
    _s("rpm", _number(), None, "Generate requests per minute, all workers together.", "--rpm 8", ("--rpm",), "N"),
    _s("tpm", _number(), None, "Input tokens per minute.", "--tpm 200000", ("--tpm",), "N"),
    _s("rpd", _int(1, 10**9), None, "Generate requests per Pacific day.", "--rpd 250", ("--rpd",), "N"),
    _s("cost_limit", _number(minimum=0, open_min=False, what="an amount in USD (0 or more)"), None,
       "Stop dispatching before the spend would pass USD (exit 75).", "--cost-limit 5", ("--cost-limit",), "USD"),
    _s("pricing", _text, None, "Your own pricing table (JSON), over the built-in one.", "--pricing prices.json",
       ("--pricing",), "FILE"),
    _s("keep_uploads", _bool, False, "Keep uploaded videos in the Files API after the batch (else deleted).",
       "--keep-uploads", ("--keep-uploads",), flag_pair=True),
    _s("notify", _notify, (), "Webhook to notify on finish / abort / quota / cost limit (repeatable).",
       "--notify https://hooks.example.org/lessons", ("--notify",), "URL", multiple=True),
    # -- retries ------------------------------------------------------------------------------
    _s("max_attempts", _int(1, 100), 4, "Attempts per task for transient errors.", "--max-attempts 6",
       ("--max-attempts",), "N"),
    _s("crash_budget", _int(1, 100), 6, "Worker deaths a task may cause before it fails (a poison video).",
       "--crash-budget 3", ("--crash-budget",), "N"),
    _s("request_timeout", _number(minimum=1, open_min=False, what="a number of seconds (1 or more)"), 600.0,
       "Seconds per HTTP request.", "--request-timeout 300", ("--request-timeout",), "SECONDS"),
    _s("retry_base_delay", _number(minimum=0, open_min=False, what="a number of seconds (0 or more)"), 5.0,
       "First task-level retry delay in seconds (doubles each attempt, at most 300).", "retry_base_delay: 10"),
    _s("max_call_retries", _int(0, 20), 5, "Quick retries of one API call inside a task (free errors only).",
       "max_call_retries: 3"),
    _s("active_timeout", _number(minimum=0, open_min=False, what="a number of seconds (0 or more)"), 600.0,
       "Seconds an upload may stay PROCESSING before the task fails.", "active_timeout: 900"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
ALIASES: dict[str, str] = {a: s.name for s in SETTINGS for a in s.aliases}
MANIFEST_KEYS: tuple[str, ...] = tuple(s.name for s in SETTINGS) + tuple(ALIASES)
JOB_DEFAULTS: tuple[Setting, ...] = tuple(s for s in SETTINGS if s.target == "defaults")

#: Options of ``gsvr-batch run`` that are actions of one invocation, not settings, and why.
PER_RUN: dict[str, str] = {
    "force": "in a manifest it would redo the whole batch (and pay for it again) at every run",
    "dry_run": "what one invocation does (look, send nothing), not a property of the batch",
}


def _make_settings_type() -> type:
    spec = []
    for s in SETTINGS:
        if s.target != "settings":
            continue
        default = s.default
        if isinstance(default, (list, tuple)):
            spec.append((s.name, Any, field(default_factory=lambda d=default: list(d))))
        else:
            spec.append((s.name, Any, field(default=default)))
    cls = dataclasses.make_dataclass("Settings", spec)
    cls.__doc__ = "A batch's settings (generated from gsvr_batch.settings.SETTINGS; see that table)."
    cls.__module__ = __name__
    return cls


Settings = _make_settings_type()


def canonical(key: str) -> str | None:
    """The setting name for a manifest or option key (``output_dir`` → ``output``), or None."""
    if key in BY_NAME:
        return key
    return ALIASES.get(key)


def parse(name: str, value: Any) -> Any:
    """Validate and normalise one value (raises SettingError)."""
    return BY_NAME[name].parse(value)


def click_options(func: Callable | None = None, *, exclude: tuple[str, ...] = ()) -> Callable:
    """Decorate a click command with one option per command-line setting (values default to None:
    "not given", so the manifest decides). ``exclude``: settings this command takes otherwise
    (``retry`` names its journal as an argument)."""
    if func is None:
        return lambda f: click_options(f, exclude=exclude)
    import click

    for s in reversed([s for s in SETTINGS if s.flags and s.name not in exclude]):
        decls = list(s.flags)
        kwargs: dict[str, Any] = {"default": None, "help": s.help}
        if s.flag_pair:
            long = decls[0]
            decls = [f"{long}/--no-{long[2:]}"] + decls[1:]
        elif s.choices:
            kwargs["type"] = _choice_type(click, s)
        if s.metavar:
            kwargs["metavar"] = s.metavar
        if s.multiple:
            kwargs["multiple"] = True
            kwargs["default"] = ()
        func = click.option(*decls, s.name, **kwargs)(func)
    return func


def _choice_type(click: Any, s: Setting) -> Any:
    """click.Choice that also takes the spellings the manifest takes (``--tier tier1`` is ``--tier 1``):
    one setting, one set of accepted values, on the command line and in ``settings:``."""

    class AliasChoice(click.Choice):
        def convert(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                value = s.parse(value)
            except SettingError:
                pass  # click's own message names the choices
            return super().convert(value, param, ctx)

    return AliasChoice(list(s.choices or ()))


def cli_values(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The settings given on the command line (None / empty = not given), parsed."""
    out = {}
    for s in SETTINGS:
        if not s.flags or s.name not in kwargs:
            continue
        v = kwargs[s.name]
        if v is None or (s.multiple and not v):
            continue
        out[s.name] = v
    return out
