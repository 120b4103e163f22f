"""Manifests: what to process, read from YAML, CSV, a folder or a list file, and checked.

``load_manifest`` turns any of those into a :class:`Manifest` of :class:`Job` items with
stable ids, or raises :class:`ManifestError` holding every problem found (file, line, fix
hint). ``validate_manifest`` does the same without raising. Nothing here calls an API.

Relative paths resolve against the manifest's folder, never the caller's cwd: cron runs
jobs from ``/``. Values given on the command line (``overrides``) win over the manifest;
relative paths among them resolve against the cwd, as any command-line path does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import functools
import gc
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from . import manifest_cache, media
from .errors import GsvrError, ManifestError
from .fsutil import TMP_PREFIX, atomic_write_bytes, is_inside
from .journal import RECORD_START, batch_record
from .manifest_csv import decode_text, parse_csv, parse_source_list
from .manifest_outputs import pattern_problem, render_pattern, with_suffix_number
from .manifest_types import (
    DEFAULT_MODEL,
    DEFAULT_OUTPUT_DIR,
    DEFAULT_OUTPUT_PATTERN,
    DEFAULT_TEMPLATE,
    DERIVED_MANIFEST,
    FLAT_OUTPUT_PATTERN,
    MANIFEST_NAMES,
    OUTPUT_FORMATS,
    STATE_DIR,
    Job,
    Manifest,
    Problem,
    RawJob,
    RawManifest,
    Settings,
    new_job,
    origin_of,
)
from .manifest_yaml import API_KEY_SHAPE, SECRET_HINT, did_you_mean, parse_yaml
from . import settings as settings_mod
from .timeutil import parse_duration

__all__ = [
    "DEFAULT_MODEL", "DEFAULT_OUTPUT_DIR", "DEFAULT_OUTPUT_PATTERN", "DEFAULT_TEMPLATE", "Job", "Manifest",
    "Problem", "Settings", "derive_manifest", "load_manifest", "validate_manifest", "write_manifest_yaml",
    "OVERRIDE_KEYS",
]

SETTINGS_FIELDS = tuple(f.name for f in dataclasses.fields(Settings))
OVERRIDE_KEYS = settings_mod.MANIFEST_KEYS + ("output_dir", "output_format", "date")
CLI = "<command line>"
# Job ids hash json.dumps([source id, template, output], ensure_ascii=False). That text is built
# from the encoder's own string quoting (what JSONEncoder(ensure_ascii=False) uses for each string,
# joined by its ", " separator): the same characters, so the ids stay exactly what they were,
# without setting up an encoder per job (~5 us each).
_json_string = json.encoder.encode_basestring
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --- public API ---------------------------------------------------------------------------


def load_manifest(path: str | os.PathLike[str], overrides: dict | None = None, *, date: str | None = None,
                  check_files: bool = True) -> Manifest:
    """Read and check a manifest; raise :class:`ManifestError` (with ``problems``) if anything is wrong.

    ``path``: .yaml/.yml, .csv, a folder of videos, or a text file listing sources.
    ``date``: the YYYY-MM-DD used for ``{date}`` in output names (pass the date the journal's
    batch was created, so names do not change from one day's run to the next).
    ``check_files=False`` skips per-file content checks (existence, size, magic bytes); the
    pipeline then reports those as task failures instead of refusing the whole batch.
    """
    manifest, problems = validate_manifest(path, overrides, date=date, check_files=check_files)
    if manifest is None:
        raise ManifestError(_summary(problems), problems)
    return manifest


def validate_manifest(path: str | os.PathLike[str], overrides: dict | None = None, *, date: str | None = None,
                      check_files: bool = True) -> tuple[Manifest | None, list[Problem]]:
    """Check everything without calling any API. Returns the manifest (None if any error) and every problem."""
    display = str(path)
    overrides = overrides or {}
    facts: dict[str, Any] = {}
    try:
        with _gc_paused():
            cached, cache_key, read = _from_cache(Path(path), display, overrides, date, check_files)
            if cached is not None:
                return cached, list(cached.warnings)
            raw, problems, identity, content_hash = _read(Path(path), display, read)
            if raw is None:
                return None, problems
            manifest, more = _build(raw, overrides, date=date, check_files=check_files,
                                    path=Path(path).absolute() if not Path(path).is_dir() else None,
                                    identity=identity, content_hash=content_hash, facts=facts)
    except (OSError, UnicodeError) as exc:  # never a traceback for bad input
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        hint = "check its permissions" if isinstance(exc, PermissionError) else None
        return None, [Problem(display, None, f"cannot read the manifest: {why}", hint)]
    problems += more
    if any(p.is_error for p in problems):
        return None, problems
    assert manifest is not None
    manifest.warnings = [p for p in problems if not p.is_error]
    # Not a manifest holding what looks like a secret (a warning): the cache would be one more copy
    # of it on disk (invariant 9), in a folder backups take along.
    if cache_key is not None and facts.get("cacheable") and not any(p.hint == SECRET_HINT for p in problems):
        manifest_cache.store(cache_key, manifest, facts)
    return manifest, problems


def _from_cache(path: Path, display: str, overrides: dict, date: str | None, check_files: bool
                ) -> tuple[Manifest | None, str | None, tuple[bytes, str] | None]:
    """(the cached build of the manifest file ``path`` if it still holds, else None; the cache key to
    store a build under, or None; the file's bytes and resolved path as read for the key, which the
    build must use: a file changed in between must not be built into the other text's entry)."""
    if manifest_cache.cache_dir() is None:
        return None, None, None
    try:
        resolved = path.resolve()
        if not stat.S_ISREG(os.stat(resolved).st_mode):
            return None, None, None  # a folder, or a FIFO _read refuses rather than block on
        data = resolved.read_bytes()
        resolved = str(resolved)
        cache_key = manifest_cache.key(resolved, path, display, data, overrides, date, check_files)
    except Exception:  # noqa: BLE001 - unreadable, odd name, odd value, no cwd...: _read says what is wrong, if anything
        return None, None, None
    got = manifest_cache.load(cache_key)
    if got is not None:
        manifest, facts = got
        try:
            if _cache_still_holds(manifest, facts, date=date, check_files=check_files):
                return manifest, cache_key, None
        except Exception:  # noqa: BLE001 - whatever it is, the full build finds it and says it properly
            pass
    return None, cache_key, (data, resolved)


def _cache_still_holds(manifest: Manifest, facts: dict[str, Any], *, date: str | None, check_files: bool) -> bool:
    """Whether what a cached build found on the file system is still so (see manifest_cache): the
    same checks as :func:`_build`, with the same functions; any of them with something to say
    means the full build runs and says it."""
    root = manifest.output_root
    if Path(facts["output_root"]).resolve() != root:
        return False
    if not all(d.is_dir() for d in manifest.templates_dirs):
        return False
    journal = _journal_of(manifest.settings, root)
    if journal != manifest.journal or _journal_unusable(journal):
        return False
    if _names_date(date or facts["date"], journal) != manifest.date:
        return False
    jobs = manifest.jobs
    base = manifest.base_dir
    stats: dict[str, os.stat_result] = {}  # one stat per video, for every check below
    for job in jobs:
        if job.source_kind != "local":
            continue
        try:
            st = os.stat(job.source)
        except (OSError, ValueError):
            return False  # gone or unreadable: the full build says what, if anything
        if check_files:
            if _check_local(_Entry({}, "local", job.source, "", None, RawJob({}, "", None, base), stat=st), base):
                return False
        elif stat.S_ISDIR(st.st_mode):  # _expand's own question: a source that became a folder is a folder job now
            return False
        stats[job.source] = st
    inside = _InsideRoot(root)
    owned = _Owned(root, journal)
    prefix = inside.prefix
    for job in jobs:
        rel = job.output_path[len(prefix):]
        checked, why = inside.check(rel)
        if why or checked != rel or owned.problem(rel):
            return False
    if _outputs_onto_inputs(jobs, _input_files(manifest.path, [], manifest.templates_dirs), stats):
        return False
    return not _check_templates(jobs, [], manifest.templates_dirs, cli_template=facts["cli_template"])


def load_sources(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], overrides: dict | None = None,
                 *, date: str | None = None, check_files: bool = True) -> Manifest:
    """What ``gsvr-batch run`` names: one manifest (YAML / CSV / a list file / a folder), or one or
    more videos and links (``run lecture.mp4``, ``run a.mp4 https://youtu.be/x``), which get a
    derived manifest as a folder does. Raises :class:`ManifestError` with every problem."""
    manifest, problems = validate_sources(sources, overrides, date=date, check_files=check_files)
    if manifest is None:
        raise ManifestError(_summary(problems), problems)
    return manifest


def validate_sources(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                     overrides: dict | None = None, *, date: str | None = None,
                     check_files: bool = True) -> tuple[Manifest | None, list[Problem]]:
    """:func:`load_sources` without raising: (the manifest or None, every problem found)."""
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not items or any(not os.fspath(i).strip() for i in items):
        # `run "$VIDEO"` with the variable unset would otherwise mean "the current folder"
        return None, [Problem(CLI, None, "an input is empty" if items else "no inputs given",
                              "name a manifest, a folder, a list file, or videos and links")]
    if len(items) == 1 and is_manifest_path(os.fspath(items[0])):
        return validate_manifest(items[0], overrides, date=date, check_files=check_files)
    for item in items:
        text = os.fspath(item)
        if is_manifest_path(text) and not os.path.isdir(text) and _suffix(text).lower() in (".yaml", ".yml", ".csv"):
            return None, [Problem(CLI, None, f"{text} is a manifest and cannot be mixed with other inputs",
                                  "gsvr-batch run MANIFEST, or gsvr-batch run VIDEO|URL|FOLDER|LIST ...")]
    try:
        manifest = derive_manifest(items, overrides=overrides, date=date, check_files=check_files)
    except ManifestError as exc:
        return None, list(exc.problems)
    return manifest, list(manifest.warnings)


def is_manifest_path(text: str) -> bool:
    """A YAML/CSV manifest, a folder or a list file (not a video, not a URL)."""
    kind, _ = media.classify_source(text)
    if kind != "local":
        return False
    if os.path.isdir(text):
        return True
    return not media.is_video_name(text)


def derive_manifest(inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], template: str | None = None,
                    output_dir: str | os.PathLike[str] | None = None, *, output_pattern: str | None = None,
                    output_format: str | None = None, model: str | None = None, overrides: dict | None = None,
                    date: str | None = None, check_files: bool = True) -> Manifest:
    """A manifest for ``gsvr-batch run ./folder --template X --output ./lessons`` (no manifest file).

    ``inputs``: folders, video files, URLs or list files. Relative paths (inputs and
    ``output_dir``) are command-line paths, so they resolve against the cwd.
    """
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise ManifestError("no inputs given", [Problem(CLI, None, "no inputs given", "name a folder or a list file")])
    raw_jobs: list[tuple[dict, str]] = []
    local_dirs: list[str] = []
    for item in items:
        text = os.fspath(item)
        kind, _ = media.classify_source(text)
        if kind != "local":
            raw_jobs.append(({"source": text}, text))
            continue
        abs_path = os.path.abspath(os.path.expanduser(text))
        if os.path.isdir(abs_path):
            held = _held_manifest_problem(abs_path, text)
            if held is not None:
                raise ManifestError(_summary([held]), [held])
        is_list = os.path.isfile(abs_path) and not media.is_video_name(abs_path)
        raw_jobs.append(({"list" if is_list else "source": abs_path}, text))
        local_dirs.append(abs_path if os.path.isdir(abs_path) else os.path.dirname(abs_path))
    # identities are relative to this folder, so moving the whole tree keeps the ids
    base = Path(os.path.commonpath(local_dirs)) if local_dirs else Path.cwd()
    raw = RawManifest(file=CLI, base_dir=base)
    raw.jobs = [RawJob(fields, shown, None, base) for fields, shown in raw_jobs]
    ov = dict(overrides or {})
    for key, value in (("template", template), ("output_dir", output_dir), ("output_pattern", output_pattern),
                       ("output_format", output_format), ("model", model)):
        if value is not None:
            ov[key] = os.fspath(value)
    identity = _sha256("\n".join(str(Path(os.fspath(i)).absolute()) for i in items).encode())
    with _gc_paused():
        manifest, problems = _build(raw, ov, date=date, check_files=check_files, path=None, identity=identity,
                                    content_hash=None)
    if manifest is None or any(p.is_error for p in problems):
        raise ManifestError(_summary(problems), problems)
    if all(f.get("source") and not os.path.isdir(f["source"]) for f, _shown in raw_jobs):
        # Videos and links named one by one (`run a.mp4`, later `run b.mp4`) are one batch per output
        # folder, whatever was named this time: the second run continues the same journal (b added,
        # a dropped from this run with its history and output kept) instead of being refused as
        # "another manifest". Folder and list batches keep the identity of what they name.
        manifest.identity = _sha256(f"videos\n{manifest.output_root}".encode())
    manifest.warnings = [p for p in problems if not p.is_error]
    return manifest


def write_manifest_yaml(manifest: Manifest, path: str | os.PathLike[str], *, journal: str | os.PathLike[str] | None = None,
                        sources: Sequence[str] | None = None) -> None:
    """Write ``manifest`` as a YAML manifest that loads back to the same jobs and ids (durably).

    ``derived_from`` records the batch (its identity and journal, and what the command line
    named), so ``gsvr-batch run`` on this file where it was written continues that batch
    (:func:`_derived_identity`); a copy elsewhere is a manifest of its own.
    """
    base = manifest.base_dir
    jobs = []
    for job in manifest.jobs:
        entry: dict[str, Any] = {"source": _identity_path(job.source, base) if job.source_kind == "local"
                                 else job.source}
        entry["title"] = job.title
        entry["template"] = job.template
        entry["model"] = job.model
        entry["output"] = Path(job.output_path).relative_to(manifest.output_root).as_posix()
        entry["output_format"] = job.output_format
        if job.params:
            entry["params"] = dict(job.params)
        if job.max_duration is not None:
            entry["max_duration"] = job.max_duration
        if getattr(job, "context", None):
            entry["context"] = dict(job.context)  # a derived manifest must plan long videos the same way
        jobs.append(entry)
    # Only what differs from the defaults (the file stays readable, and a default that changes in a
    # later version is not frozen in), and not how this terminal showed progress.
    settings = {k: v for k, v in dataclasses.asdict(manifest.settings).items()
                if v not in (None, [], {}) and k not in ("templates_dir", "progress", "summary_interval")
                and not (k in settings_mod.BY_NAME and v == settings_mod.BY_NAME[k].default)}
    if manifest.templates_dirs:
        settings["templates_dir"] = [str(p) for p in manifest.templates_dirs]
    if settings.get("notify"):
        from .notify import storable

        # a webhook URL is a credential (`--notify https://hooks.slack.com/services/T/B/SECRET`):
        # ${VAR} references are kept, literal secrets written redacted (validation refuses those)
        settings["notify"] = [storable(t) for t in settings["notify"]]
    batch_journal = journal if journal is not None else manifest.journal
    derived: dict[str, Any] = {"identity": manifest.identity}
    if batch_journal is not None:
        derived["journal"] = str(Path(batch_journal).resolve())
    if sources:
        derived["sources"] = [os.fspath(s) for s in sources]
    doc = {
        "derived_from": derived,
        "base_dir": str(base),
        "defaults": {"output_dir": str(manifest.output_root)},
        "settings": settings,
        "jobs": jobs,
    }
    header = ("# Written by gsvr-batch so this batch can be re-run exactly: every job is explicit.\n"
              f"# Output names were rendered on {manifest.date}.\n")
    text = header + yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, default_flow_style=False)
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused while a manifest is read and built.

    Loading allocates some twenty containers per job that all stay alive and form no cycles; the
    collector, started every 700 allocations, kept walking the growing heap for nothing to free:
    a fifth of loading a 10,000-job manifest. Reference counting still frees what is dropped.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --- reading -----------------------------------------------------------------------------


def held_manifests(folder: str) -> list[str]:
    """The manifest files a folder holds (``jobs/`` → ``manifest.yaml``, ``manifest.csv``): such a
    folder is that manifest's folder, not a folder of videos."""
    return [name for name in MANIFEST_NAMES if os.path.isfile(os.path.join(folder, name))]


def _identity_of(resolved: str | os.PathLike[str]) -> str:
    """The batch identity of a manifest file or folder named by its resolved path (``_read``)."""
    return _sha256(os.fspath(resolved).encode("utf-8"))


def folder_batch(folder: str | os.PathLike[str]) -> tuple[Path, str]:
    """(journal, identity) of ``gsvr-batch run FOLDER`` with no options, without walking the folder:
    where its journal goes does not depend on what is in it (``_read``'s identity, ``_build``'s
    default output root)."""
    path = Path(folder)
    identity = _identity_of(path.resolve())
    return (path.absolute() / DEFAULT_OUTPUT_DIR).resolve() / STATE_DIR / "journal.jsonl", identity


def _held_manifest_problem(folder: str, display: str) -> Problem | None:
    """`run jobs/` for `run jobs/manifest.yaml`: running the folder would run every video under it
    with the defaults, as a batch of its own (and pay for it) in the same output folder."""
    held = held_manifests(folder)
    if not held:
        return None
    shown = os.path.join(display, held[0])
    return Problem(display, None, f"a folder holding a manifest ({shown}), not a folder of videos",
                   f"to run that manifest: gsvr-batch run {shown}; to run the videos under it with the "
                   f"defaults instead, name them or their own folder")


def journal_of_manifest(path: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """(journal, identity) of the batch a manifest file names, even when it has errors (an unknown
    template given by ``--templates`` at run time, a missing video): where the journal is depends
    only on the output root and settings. None when the file cannot be read as a manifest at all.
    Read only; opens no video."""
    try:
        with _gc_paused():
            raw, _problems, identity, content_hash = _read(Path(path), os.fspath(path))
            if raw is None:
                return None
            manifest, _more = _build(raw, {}, date=None, check_files=False, path=Path(path).absolute(),
                                     identity=identity, content_hash=content_hash)
    except (OSError, UnicodeError, ValueError):
        return None
    if manifest is None or manifest.journal is None:
        return None
    return manifest.journal, manifest.identity


def _read(path: Path, display: str, read: tuple[bytes, str] | None = None
          ) -> tuple[RawManifest | None, list[Problem], str, str | None]:
    """Parse ``path`` by what it is; returns (raw, problems, identity, content_hash or None for folders).

    ``read``: the file's bytes and resolved path, already read (by :func:`_from_cache`)."""
    if read is not None:
        data, resolved = read
        return _parse(path, display, data, _identity_of(resolved))
    if not path.exists():
        hint = "check the path; relative paths are relative to the current folder"
        if path.is_symlink():
            return None, [Problem(display, None, "manifest is a dangling symlink", hint)], "", None
        return None, [Problem(display, None, f"manifest not found: {display}", hint)], "", None
    identity = _identity_of(path.resolve())
    if path.is_dir():
        held = _held_manifest_problem(str(path), display)
        if held is not None:
            return None, [held], identity, None
        base = path.absolute()
        raw = RawManifest(file=display, base_dir=base)
        raw.jobs = [RawJob({"source": str(base)}, display, None, base)]
        return raw, [], identity, None
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        # A FIFO would block the read forever (cron would hang); a device may never end.
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        return None, [Problem(display, None, f"the manifest is {kind}, not a file",
                              "give a .yaml, .csv or .txt manifest file, a folder of videos, or videos")], identity, None
    return _parse(path, display, path.read_bytes(), identity)


def _parse(path: Path, display: str, data: bytes, identity: str
           ) -> tuple[RawManifest | None, list[Problem], str, str | None]:
    if data.startswith(RECORD_START):  # `run journal.jsonl`: read as a list file, every record was a "missing file"
        first = batch_record(data[:data.find(b"\n")] if b"\n" in data else data) or {}
        ran = f" ({first['manifest']})" if first.get("manifest") else ""
        return None, [Problem(display, None, f"this is a gsvr-batch journal, not a manifest: run the manifest the "
                              f"batch was run with{ran}", "status, replay, report and retry take the journal")
                      ], identity, None
    content_hash = _sha256(data)
    text, problems = decode_text(data, display)
    if text is None:
        return None, problems, identity, content_hash
    base = path.absolute().parent
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        raw, problems = parse_yaml(text, display, base)
    elif suffix == ".csv":
        raw, problems = parse_csv(text, display, base)
    else:
        entries, problems = parse_source_list(text, display, base)
        if not entries:
            problems.append(Problem(display, None, "manifest is empty: add one video path or URL per line",
                                    "lines starting with # are comments"))
            return None, problems, identity, content_hash
        raw = RawManifest(file=display, base_dir=base)
        raw.jobs = [RawJob({"source": s}, display, n, base) for n, s in entries]
    return raw, problems, identity, content_hash


# --- building ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Entry:
    """One video after expansion of folders and list files."""

    fields: dict[str, Any]
    kind: str
    source: str  # absolute path or normalised URL
    file: str
    line: int | None
    origin_job: RawJob
    explicit_output: str | None = None
    folder: str = ""  # {dir}: its folder relative to the folder job's root ("" at the top / named directly)
    # os.stat of a local source, taken by _expand to tell a folder from a file; _check_local reuses
    # it (one stat per video, not two). None: not taken, or it failed (_check_local says why).
    stat: os.stat_result | None = None


def _build(raw: RawManifest, overrides: dict, *, date: str | None, check_files: bool, path: Path | None,
           identity: str, content_hash: str | None, facts: dict[str, Any] | None = None
           ) -> tuple[Manifest | None, list[Problem]]:
    """The manifest ``raw`` describes, and every problem. ``facts`` (when given) receives what
    :func:`_cache_still_holds` checks again when the build is loaded from the cache, and
    ``cacheable``: whether every job names one video or link (no folder, list file or derived
    manifest, whose jobs depend on more than the manifest's own bytes)."""
    problems: list[Problem] = []
    for key in overrides:
        if key not in OVERRIDE_KEYS:
            problems.append(Problem(CLI, None, f"unknown option '{key}'", did_you_mean(key, OVERRIDE_KEYS)))
    overrides = _internal_names(overrides)
    day = date or overrides.get("date")  # else: the day the batch was created (below, once the journal is known)

    settings, more = _settings(raw, overrides)
    problems += more
    defaults, more = _defaults(raw, overrides)
    problems += more

    out_dir = overrides.get("output_dir")
    if out_dir is not None:
        output_root = Path(os.path.abspath(os.path.expanduser(os.fspath(out_dir))))
    else:
        output_root = raw.base_dir / Path(str(defaults.get("output_dir", DEFAULT_OUTPUT_DIR))).expanduser()
    unresolved_root = output_root
    output_root = output_root.resolve()  # a symlinked root is fine; what matters is what's inside it

    templates_dirs = []
    cli_dirs = overrides.get("templates_dir") or []
    for d in ([cli_dirs] if isinstance(cli_dirs, (str, os.PathLike)) else cli_dirs):
        templates_dirs.append(Path(os.path.abspath(os.path.expanduser(os.fspath(d)))))
    for d in settings.templates_dir:
        templates_dirs.append((raw.base_dir / Path(d).expanduser()).absolute())
    n_cli = len(templates_dirs)
    for i, d in enumerate(templates_dirs):
        if not d.is_dir():
            problems.append(Problem(CLI if i < n_cli else raw.file,
                                    None if i < n_cli else raw.settings_lines.get("templates_dir"),
                                    f"templates folder not found: {d}", "templates_dir names a folder of *.yaml templates"))
    settings.templates_dir = [str(d) for d in templates_dirs]
    if settings.journal:
        settings.journal = str((raw.base_dir / Path(settings.journal).expanduser()).absolute())

    # The journal a run will use (runner.preflight.resolve_journal says the same): outputs may not
    # land on it nor on anything else the batch owns.
    journal = _journal_of(settings, output_root)
    why = _journal_unusable(journal)
    if why:
        from_cli = overrides.get("journal") is not None
        problems.append(Problem(CLI if from_cli else raw.file, None if from_cli else raw.settings_lines.get("journal"),
                                f"the journal {journal} {why}", "name a new file, or the journal of this batch"))
    owned = _Owned(output_root, journal)
    # {date} is the day the batch was created, not today: names (and so job ids) must not change when
    # the next cron firing falls on another day, or the whole batch would be dropped and paid again.
    day = _names_date(day, journal)

    entries: list[_Entry] = []
    list_files: list[tuple[str, str]] = []  # (path, what it is) of each list file read
    for rj in raw.jobs:
        got, more = _expand(rj, raw, check_files, list_files)
        entries += got
        problems += more

    jobs, more = _make_jobs(entries, raw, overrides, defaults, settings, output_root, day, check_files, owned=owned)
    if any(e.folder for e in entries):
        kept = _keep_flat_layout(journal, jobs, lambda: _make_jobs(
            entries, raw, overrides, defaults, settings, output_root, day, check_files, owned=owned,
            default_pattern=FLAT_OUTPUT_PATTERN))
        if kept is not None:
            jobs, more = kept
            more.append(Problem(raw.file, None, "this batch was started when folder runs did not mirror subfolders: "
                                "it keeps its flat output names", "a new batch (another output folder) mirrors "
                                "them; --output-pattern '{dir}/{stem}_{template}.{ext}' switches this one and "
                                "redoes those videos", "warning"))
    problems += more
    problems += _onto_input_problems(jobs, _input_files(path, list_files, templates_dirs), output_root,
                                     {e.source: e.stat for e in entries if e.stat is not None})
    problems += _check_templates(jobs, entries, templates_dirs, cli_template=overrides.get("template"))

    if raw.derived is not None:
        identity, content_hash, note = _derived_identity(raw, path, journal, identity, content_hash)
        if note is not None:
            problems.append(note)
    if facts is not None:
        facts.update(output_root=str(unresolved_root), date=overrides.get("date"),
                     cli_template=overrides.get("template"),
                     cacheable=raw.derived is None and all(
                         e.file == raw.file and (e.kind != "local" or e.stat is not None) for e in entries))
    if content_hash is None:  # folder / derived manifests: what they expand to is their content
        content_hash = _sha256("\n".join(f"{j.job_id} {j.source}" for j in jobs).encode("utf-8"))
    manifest = Manifest(path=path, base_dir=raw.base_dir, output_root=output_root, jobs=jobs, settings=settings,
                        templates_dirs=templates_dirs, identity=identity, content_hash=content_hash,
                        defaults=defaults, date=day, journal=journal, settings_lines=dict(raw.settings_lines))
    return manifest, problems


def _journal_of(settings: Settings, output_root: Path) -> Path:
    """The journal a run of the manifest uses (``settings.journal`` is absolute by now)."""
    return Path(settings.journal).resolve() if settings.journal else output_root / STATE_DIR / "journal.jsonl"


def _journal_unusable(journal: Path) -> str | None:
    """Why ``journal`` cannot be a journal (a folder, a FIFO, a device), or None. Checked before
    anything opens it: a FIFO would block the first read for ever (a cron run would hang)."""
    try:
        mode = os.stat(journal).st_mode
    except OSError:
        return None  # not there yet (the run creates it), or a problem the run reports itself
    if stat.S_ISDIR(mode):
        return "is a folder"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    return None


def _names_date(day: Any, journal: Path) -> str:
    """``{date}`` in output names: the one asked for, else the day the batch was created, else today."""
    return str(day or _batch_date(journal) or _dt.date.today().isoformat())


def _batch_date(journal: Path) -> str | None:
    """The local date of the journal's first record (``batch_created``), or None without a journal."""
    if _journal_unusable(journal):
        return None  # reported by _build
    try:
        with open(journal, "rb") as fh:
            first = fh.readline(1 << 16)
        ts = json.loads(first).get("ts")
        when = _dt.datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except (OSError, ValueError, AttributeError, TypeError):
        return None  # no journal yet, or one the run will report on with its own message
    return when.astimezone().date().isoformat()


def _derived_identity(raw: RawManifest, path: Path | None, journal: Path, identity: str, content_hash: str | None
                      ) -> tuple[str, str | None, Problem | None]:
    """A ``manifest.derived.yaml`` run where it was written continues its batch: same identity.

    Honoured only for the file next to its own journal (``derived_from.journal``), so that
    ``run OUTPUT/.gsvr/manifest.derived.yaml`` continues the batch, while a copy elsewhere (or the
    file pointed at another journal) is a manifest of its own and cannot take over a batch.
    """
    rec = raw.derived or {}
    recorded, their_journal = rec.get("identity"), rec.get("journal")
    if not isinstance(recorded, str) or not isinstance(their_journal, str) or path is None:
        return identity, content_hash, Problem(raw.file, None, "derived_from has no batch identity or journal; "
                                               "run as a manifest of its own", None, "warning")
    same_place = path.resolve() == journal.parent / DERIVED_MANIFEST
    if same_place and Path(their_journal).resolve() == journal:
        # its content is its jobs, as for the folder / videos run that wrote it
        return recorded, None, None
    return identity, content_hash, Problem(
        raw.file, None, f"a copy of the derived manifest of the batch in {their_journal}: it runs as a batch of its "
        f"own", "run the file next to that journal to continue that batch", "warning")


def _keep_flat_layout(journal: Path, jobs: list[Job], flat: Any) -> tuple[list[Job], list[Problem]] | None:
    """Stable job ids for batches started before ``{dir}``: their folder jobs wrote flat names.

    Job ids hash the output name, so mirroring subfolders would give every video in a subfolder a
    new id: a rerun would drop the old tasks and pay for them again. When the batch's journal knows
    the flat ids and none of the mirrored ones, the flat names are kept (the jobs ``flat()`` makes).
    Read-only (``lifecycle.replay``); costs nothing unless a folder job found subfolders.
    """
    if not journal.is_file():
        return None
    flat_jobs, flat_problems = flat()
    mirrored, flattened = {j.job_id for j in jobs}, {j.job_id for j in flat_jobs}
    if mirrored == flattened:
        return None
    try:
        from .lifecycle import replay

        known = {tid for tid, t in replay(journal).state.tasks.items() if not t.dropped}
    except (GsvrError, OSError, ValueError):
        return None  # a damaged journal is the run's to report, with its repair command
    if (flattened - mirrored) & known and not (mirrored - flattened) & known:
        return flat_jobs, flat_problems
    return None


def _expand(rj: RawJob, raw: RawManifest, check_files: bool, list_files: list[tuple[str, str]] | None = None
            ) -> tuple[list[_Entry], list[Problem]]:
    """Folder and list-file jobs become one entry per video (each list file read is added to ``list_files``)."""
    problems: list[Problem] = []
    fields = rj.fields  # copied below before anything is taken out of it (list, folder jobs)
    if "list" in fields:
        fields = dict(fields)
        value = fields.pop("list")
        line = rj.line_of("list")
        if not isinstance(value, str) or not value.strip():
            return [], [Problem(rj.file, line, "'list' must name a text file of sources", "e.g. list: videos.txt")]
        list_path = Path(os.path.normpath(rj.base_dir / Path(value.strip()).expanduser()))
        shown = _shown(list_path)
        try:
            data = list_path.read_bytes()
        except OSError as exc:
            return [], [Problem(rj.file, line, f"cannot read list file {shown}: {exc.strerror or exc}",
                                "paths are relative to the manifest's folder")]
        if list_files is not None:
            list_files.append((str(list_path), f"the list file {shown}"))
        if data.startswith(RECORD_START):  # a journal named as a list: one "file not found" per record
            return [], [Problem(rj.file, line, f"{shown} is a gsvr-batch journal, not a list of videos",
                                "run the manifest the batch was run with; status, replay, report and retry take "
                                "the journal")]
        text, problems = decode_text(data, shown)
        if text is None:
            return [], problems
        lines, more = parse_source_list(text, shown, list_path.parent)
        problems += more
        if not lines:
            problems.append(Problem(rj.file, line, f"list file {shown} has no sources",
                                    "one path or URL per line; # starts a comment"))
        out: list[_Entry] = []
        for number, src in lines:
            sub = RawJob({**fields, "source": src}, shown, number, list_path.parent)
            got, more = _expand(sub, raw, check_files, list_files)
            out += got
            problems += more
        return out, problems

    source = fields.get("source")
    if not isinstance(source, str) or not source.strip():
        return [], [Problem(rj.file, rj.line_of("source"), "'source' must be a file path, folder or URL",
                            "e.g. source: videos/a.mp4")]
    kind, normalised = _classify_source(source)
    if kind != "local":
        return [_Entry(fields, kind, normalised, rj.file, rj.line, rj)], []
    abs_path = _under(rj.base_dir, normalised)
    try:
        st: os.stat_result | None = os.stat(abs_path)
    except (OSError, ValueError):  # what os.path.isdir catches
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        fields = dict(fields)
        line = rj.line_of("source")
        videos = _scan_folder(abs_path)
        if not videos:
            exts = " ".join(media.VIDEO_EXTENSIONS)
            if _suffix(abs_path).lower() in (".yaml", ".yml", ".csv", ".txt"):
                # `run lessons.yaml` where lessons.yaml is a folder: say so, not just "no videos"
                return [], [Problem(rj.file, line, f"{_shown(Path(abs_path))} is a folder, not a manifest file, "
                                                   "and has no video files",
                                    "name the manifest file itself, or a folder of videos")]
            return [], [Problem(rj.file, line, f"folder {_shown(Path(abs_path))} has no video files",
                                f"looked recursively for {exts}")]
        if "output" in fields:
            problems.append(Problem(rj.file, rj.line_of("output"),
                                    f"'output' names one file but this folder job has {len(videos)} videos",
                                    "use output_pattern, e.g. '{stem}_{template}.md'"))
            fields.pop("output")
        if "title" in fields and len(videos) > 1:
            fields.pop("title")  # one title for many videos would make every name the same
            problems.append(Problem(rj.file, rj.line_of("title"), "'title' ignored for a folder job",
                                    "titles come from the file names", "warning"))
        return [_Entry(fields, "local", v, rj.file, rj.line, rj, folder=_rel_folder(v, abs_path))
                for v in videos], problems
    return [_Entry(fields, "local", abs_path, rj.file, rj.line, rj, stat=st)], []


def _under(base: Path, path: str) -> str:
    """``os.path.normpath(os.path.join(base, os.path.expanduser(path)))``; a plain relative path (no
    "~", no empty, "." or ".." part) under a normalised base is that base, "/" and the path as they
    are, so those (nearly every source of a manifest) skip the three calls."""
    prefix = _normal_prefix(str(base))
    if prefix is not None and not path.startswith("~"):
        parts = path.split("/")
        if "" not in parts and "." not in parts and ".." not in parts:
            return prefix + path
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


@functools.lru_cache(maxsize=64)  # a manifest has one base folder, or one per list file
def _normal_prefix(base: str) -> str | None:
    """``base`` with a trailing "/" if it is absolute and ``normpath`` leaves it as it is, else None."""
    if not base.startswith("/") or os.path.normpath(base) != base:
        return None
    return base if base.endswith("/") else base + "/"


def _classify_source(text: str) -> tuple[str, str]:
    """``media.classify_source``, with a plain path decided without its three regular expressions.

    A link has "://" (``is_url``) or starts with a YouTube host (``youtu.be/ID``, matched without
    regard to case); a text with neither is a local path there too. The hosts hold no letter
    that matches a non-ASCII one under ``re.I``, so ``lower()`` sees every spelling it matches.
    """
    s = text.strip()
    if "://" not in s and not s[:12].lower().startswith(("www.", "m.", "youtube.com", "youtu.be")):
        return "local", s
    return media.classify_source(text)


def _rel_folder(video: str, root: str) -> str:
    """``{dir}`` of a video found under ``root``: 'a/b' for root/a/b/x.mp4, '' for root/x.mp4."""
    rel = os.path.relpath(os.path.dirname(video), root)
    return "" if rel == "." else rel.replace(os.sep, "/")


def _scan_folder(folder: str) -> list[str]:
    """Video files under ``folder``, recursively, sorted by relative path; hidden entries skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and media.is_video_name(name):
                found.append(os.path.join(dirpath, name))
    return sorted(found, key=lambda p: Path(os.path.relpath(p, folder)).as_posix())


class _JobDefaults:
    """What a job takes from the command line (``overrides``) and ``defaults:`` unless it sets it
    itself, looked up once: 10,000 jobs ask the same questions.

    :meth:`settings` and :meth:`pattern` work out one job's values and append its problems. A job
    that sets nothing but its source (and title) gets exactly what a job setting nothing gets:
    :meth:`plain` works that out once, for the loop to share (when it has no problem to report).
    """

    def __init__(self, raw: RawManifest, overrides: dict, defaults: dict, settings: Settings,
                 default_pattern: str) -> None:
        self.raw = raw
        self.defaults = defaults
        self.max_duration = settings.max_duration
        self.ov_template, self.ov_model = overrides.get("template"), overrides.get("model")
        self.template = defaults.get("template") or DEFAULT_TEMPLATE
        self.model = defaults.get("model") or DEFAULT_MODEL
        self.ov_format = overrides.get("output_format")
        self.format = defaults.get("output_format") or "md"
        self.params = defaults.get("params") or {}
        self.ov_pattern = overrides.get("output_pattern")
        self.pattern_default = defaults.get("output_pattern") or default_pattern

    def settings(self, f: dict[str, Any], e: _Entry, problems: list[Problem]) -> tuple[dict[str, Any], bool]:
        """(template, model, explicit output, format, params, max_duration and context of the job with
        fields ``f``; whether one of them is wrong). Problems are appended, in this order."""
        rj = e.origin_job
        bad = False
        template = self.ov_template or f.get("template") or self.template
        if not isinstance(template, str) or not template.strip():
            problems.append(Problem(e.file, rj.line_of("template"), "'template' must be a name", None))
            bad = True
        model = self.ov_model or f.get("model") or self.model
        if not isinstance(model, str) or not model.strip():
            problems.append(Problem(e.file, rj.line_of("model"), "'model' must be a name", None))
            bad = True
        explicit = f.get("output")
        if explicit is not None and (not isinstance(explicit, str) or not explicit.strip()):
            problems.append(Problem(e.file, rj.line_of("output"), "'output' must be a file name", None))
            bad, explicit = True, None
        fmt = self.ov_format or f.get("output_format")
        if not fmt and explicit and Path(explicit).suffix.lower().lstrip(".") in OUTPUT_FORMATS:
            fmt = Path(explicit).suffix.lower().lstrip(".")
        fmt = fmt or self.format
        if fmt not in OUTPUT_FORMATS and fmt == self.ov_format:
            bad = True  # a bad --format is reported once, on the command line (_defaults), not per job
        elif fmt not in OUTPUT_FORMATS:
            problems.append(Problem(e.file, rj.line_of("output_format"), f"unknown output_format '{fmt}'",
                                    did_you_mean(str(fmt), OUTPUT_FORMATS) or "use md, json or html"))
            bad = True
        params = dict(self.params)
        job_params = f.get("params")
        if job_params is not None and not isinstance(job_params, dict):
            problems.append(Problem(e.file, rj.line_of("params"), "'params' must be a mapping",
                                    "indent 'name: value' lines under 'params:'"))
            bad = True
        elif job_params:
            params.update(job_params)
        max_duration = self.max_duration
        if f.get("max_duration") is not None:
            max_duration = _duration(f["max_duration"])
            if max_duration is None:
                problems.append(Problem(e.file, rj.line_of("max_duration"), "max_duration must be a positive duration",
                                        "seconds, or e.g. '90m', '1h30m', '1:30:00'"))
                bad = True
        job_context, why, key = _job_context(f, self.defaults)
        if why:
            problems.append(Problem(e.file, rj.line_of(key or "context"), why,
                                    "e.g. 'context: clips' and 'clip_minutes: 40' (see docs/LONG_VIDEOS.md)"))
            bad = True
        return {"template": str(template).strip(), "model": str(model).strip(), "explicit": explicit, "fmt": fmt,
                "params": params, "max_duration": max_duration, "context": job_context}, bad

    def pattern(self, f: dict[str, Any], e: _Entry, problems: list[Problem]) -> tuple[str | None, bool]:
        """(the output pattern of a job without an explicit output, with its extension, or None when it
        cannot be used; whether it is --output-pattern's). A problem is appended."""
        pattern = self.ov_pattern or f.get("output_pattern") or self.pattern_default
        why = pattern_problem(str(pattern)) if isinstance(pattern, str) else "output_pattern must be text"
        cli_pattern = pattern == self.ov_pattern
        if why and cli_pattern:
            return None, True  # a bad --output-pattern is blamed once on <command line> (_defaults), not on each job
        if why:
            problems.append(Problem(e.file, e.origin_job.line_of("output_pattern") if "output_pattern" in f
                                    else self.raw.defaults_lines.get("output_pattern"), why, None))
            return None, False
        return _pattern_with_ext(pattern), cli_pattern

    def plain(self) -> tuple[dict[str, Any], str, bool] | None:
        """(settings, pattern, whether --output-pattern's) of a job setting nothing of its own, or None
        when those would be reported (each job then reports them at its own line)."""
        nothing = _Entry({}, "local", "", self.raw.file, None, RawJob({}, self.raw.file, None, self.raw.base_dir))
        found: list[Problem] = []
        settings, bad = self.settings({}, nothing, found)
        pattern, cli_pattern = self.pattern({}, nothing, found)
        if bad or found or pattern is None:
            return None
        return settings, pattern, cli_pattern


# Fields that do not change what a job takes from the defaults (see _JobDefaults.plain).
_SOURCE_AND_TITLE = frozenset({"source", "title"})


def _make_jobs(entries: list[_Entry], raw: RawManifest, overrides: dict, defaults: dict, settings: Settings,
               output_root: Path, day: str, check_files: bool, *, owned: _Owned | None = None,
               default_pattern: str = DEFAULT_OUTPUT_PATTERN) -> tuple[list[Job], list[Problem]]:
    problems: list[Problem] = []
    planned = []  # (entry, values dict, rel output or None, explicit?)
    explicit_at: list[int] = []  # where in ``planned`` the explicit outputs are (claimed first, below)
    job_defaults = _JobDefaults(raw, overrides, defaults, settings, default_pattern)
    plain = job_defaults.plain()
    base = raw.base_dir
    # A clean source under the base folder is named by the rest of its path (_identity_path's
    # first case, without its str(base) and checks per job); anything else asks _identity_path.
    base_s = str(base)
    base_prefix = base_s + "/" if base_s != "/" else None
    for index, e in enumerate(entries, start=1):
        f = e.fields
        if plain is not None and f.keys() <= _SOURCE_AND_TITLE:
            s, pattern, cli_pattern = plain
            bad = False
            # as settings() would give them: dictionaries of the job's own
            params = dict(s["params"])
            context = dict(s["context"]) if s["context"] is not None else None
        else:
            s, bad = job_defaults.settings(f, e, problems)
            params, context = s["params"], s["context"]
            pattern, cli_pattern = None, False
        if e.kind == "local":
            stem = _stem(e.source)
            if check_files:
                problems += _check_local(e, base)
            src = e.source
            if base_prefix is not None and src.startswith(base_prefix) and _clean_path(src):
                source_id = src[len(base_prefix):]
            else:
                source_id = _identity_path(src, base)
        elif e.kind == "youtube":
            stem = source_id = e.source.rsplit("v=", 1)[-1]
        else:
            tail = [part for part in e.source.split("?")[0].split("/") if part]
            stem = Path(tail[-1]).stem if len(tail) > 2 else (tail[-1] if tail else "video")
            source_id = e.source
        title = f.get("title")
        title = str(title).strip() if title is not None and str(title).strip() else stem
        fmt = s["fmt"]
        values: dict[str, Any] = {
            "template": s["template"], "model": s["model"], "stem": stem, "title": title, "date": day,
            "index": index, "ext": fmt, "dir": e.folder, "source_id": source_id, "params": params,
            "output_format": fmt, "max_duration": s["max_duration"], "context": context}
        if bad:
            continue
        explicit = s["explicit"]
        if explicit:
            rel = explicit.strip()
            if not Path(rel).suffix:
                rel += f".{fmt}"
            explicit_at.append(len(planned))
            planned.append((e, values, rel, True))
            continue
        if pattern is None:
            pattern, cli_pattern = job_defaults.pattern(f, e, problems)
            if pattern is None:
                continue
        values["cli_pattern"] = cli_pattern
        # {id} cannot be the final id (that hashes the output name); use the id of source + template
        # (hashed only when the pattern uses it: a JSON dump and a sha256 per job otherwise wasted)
        values["id"] = _sha256(json.dumps([source_id, values["template"], pattern]).encode())[:16] \
            if "{id" in pattern else ""
        try:
            rel = render_pattern(pattern, values)  # it takes only the pattern's fields
        except (ValueError, KeyError, IndexError) as exc:
            problems.append(Problem(e.file, e.origin_job.line, f"output pattern {pattern!r} cannot be filled: {exc}",
                                    None))
            continue
        planned.append((e, values, rel, False))

    # explicit outputs first: two jobs naming the same file is the user's error to fix
    taken: dict[str, _Entry] = {}
    inside = _InsideRoot(output_root)
    resolved: list[str | None] = [None] * len(planned)  # the output name each planned job gets
    for i in explicit_at:
        e, values, rel, _explicit = planned[i]
        checked, why = inside.check(rel)
        if why:
            problems.append(Problem(e.file, e.origin_job.line_of("output"), why,
                                    "outputs must stay inside output_dir; use a relative name without '..'"))
            continue
        key = checked.casefold()  # case-insensitive file systems (macOS, Windows) would clash too
        if key in taken:
            first = taken[key]
            problems.append(Problem(e.file, e.origin_job.line_of("output"),
                                    f"duplicate output '{checked}' (also the output of the job at {first.file}:{first.line})",
                                    "give each job its own output name"))
            continue
        why = owned.problem(checked) if owned is not None else None
        if why:
            problems.append(Problem(e.file, e.origin_job.line_of("output"), why, OWNED_HINT))
            continue
        taken[key] = e
        resolved[i] = checked
    # pattern outputs: a clash gets -2, -3 ... in job order, so adding a job at the end renames nothing
    for i, (e, values, rel, explicit) in enumerate(planned):
        if explicit:
            continue
        checked, why = inside.check(rel)
        if why:
            line = e.origin_job.line_of("output_pattern") if "output_pattern" in e.fields else e.line
            problems.append(Problem(e.file, line, why, "the output pattern must produce a name inside output_dir"))
            continue
        candidate, n = checked, 1
        key = candidate.casefold()
        while key in taken:
            n += 1
            candidate = with_suffix_number(checked, n)
            key = candidate.casefold()
        why = owned.problem(candidate) if owned is not None else None
        if why:
            if values.get("cli_pattern"):  # --output-pattern: the command line's fault, said once
                if not any(p.file == CLI and p.message.startswith("--output-pattern: ") for p in problems):
                    problems.append(Problem(CLI, None, f"--output-pattern: {why}", OWNED_HINT))
            else:
                line = e.origin_job.line_of("output_pattern") if "output_pattern" in e.fields else \
                    raw.defaults_lines.get("output_pattern") or e.line
                problems.append(Problem(e.file, line, why, OWNED_HINT))
            continue
        taken[key] = e
        resolved[i] = candidate

    jobs = []
    # ``rel`` is a normalised relative name inside the root (_InsideRoot.check): the prefix plus it
    # is what os.path.join(root, rel) gives
    prefix = inside.prefix
    seen_sources: dict[tuple[str, str], _Entry] = {}
    for (e, v, _planned, _explicit), rel in zip(planned, resolved):
        if rel is None:
            continue  # its output was refused above
        job_text = f"[{_json_string(v['source_id'])}, {_json_string(v['template'])}, {_json_string(rel)}]"
        job_id = _sha256(job_text.encode("utf-8"))[:16]
        key = (v["source_id"], v["template"])
        if key in seen_sources:
            first = seen_sources[key]
            problems.append(Problem(e.file, e.line, f"the same source and template as the job at {first.file}:{first.line}",
                                    "the video will be processed twice; remove one if that is not intended",
                                    "warning"))
        seen_sources.setdefault(key, e)
        jobs.append(new_job(job_id=job_id, source=e.source, source_kind=e.kind, title=v["title"],
                            template=v["template"], params=v["params"], model=v["model"], output_path=prefix + rel,
                            output_format=v["output_format"], max_duration=v["max_duration"],
                            origin=f"{e.file}:{e.line}" if e.line else e.file, context=v.get("context")))
    return jobs, problems


def _input_files(manifest_path: Path | None, list_files: list[tuple[str, str]], templates_dirs: list[Path]
                 ) -> list[tuple[str, str]]:
    """(path, what it is) of the batch's own files besides its videos: the manifest, its list files,
    the templates of its template folders."""
    files = [(str(manifest_path), "the manifest")] if manifest_path is not None else []
    files += list_files
    for d in templates_dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue  # reported by the templates check
        files += [(os.path.join(d, n), f"the template {os.path.join(d, n)}") for n in names
                  if n.endswith((".yaml", ".yml"))]
    return files


def _outputs_onto_inputs(jobs: list[Job], inputs: list[tuple[str, str]],
                         source_stats: dict[str, os.stat_result]) -> list[tuple[Job, str]]:
    """(job, what its output would be written over) for outputs that are a file of the batch: a
    video of a job, or one of ``inputs`` (``--overwrite`` replaced a lecture, or the manifest, with a
    lesson). Only an output that exists can replace anything, and what it would replace is the
    entry at its name (a symlink there is replaced, never written through): its ``lstat`` is
    compared with each input's ``stat`` (links followed) by device and inode, so symlinks, hard
    links and letter case cannot hide a match. ``source_stats``: the ``stat`` of each local video
    the caller already took (the build's ``_expand``, the cache's re-check), not taken again."""
    existing: dict[tuple[int, int], list[Job]] = {}
    for job in jobs:
        try:
            st = os.lstat(job.output_path)
        except (OSError, ValueError):
            continue
        existing.setdefault((st.st_dev, st.st_ino), []).append(job)
    if not existing:
        return []  # a first run: nothing there to be written over
    candidates: list[tuple[str, Job | str]] = [(v.source, v) for v in jobs if v.source_kind == "local"]
    candidates += inputs
    hits = []
    for source, who in candidates:
        st = source_stats.get(source) if not isinstance(who, str) else None
        if st is None:
            try:
                st = os.stat(source)
            except (OSError, ValueError):
                continue
        for job in existing.get((st.st_dev, st.st_ino), ()):
            what = (who if isinstance(who, str) else "the job's own video" if who is job
                    else f"the video of the job at {who.origin}")
            hits.append((job, what))
    return hits


def _onto_input_problems(jobs: list[Job], inputs: list[tuple[str, str]], root: Path,
                         source_stats: dict[str, os.stat_result]) -> list[Problem]:
    problems = []
    for job, what in _outputs_onto_inputs(jobs, inputs, source_stats):
        file, line = origin_of(job)
        problems.append(Problem(file, line, f"output '{os.path.relpath(job.output_path, root)}' is {what}: the "
                                f"lesson would be written over it", "give the output another name"))
    return problems


@functools.lru_cache(maxsize=64)  # one or two patterns for a whole manifest
def _pattern_with_ext(pattern: str) -> str:
    """The extension follows output_format: "{stem}.md" with format json writes "{stem}.json"."""
    if "{ext}" in pattern:
        return pattern
    suffix = Path(pattern).suffix
    if suffix.lower().lstrip(".") in OUTPUT_FORMATS:
        pattern = pattern[: -len(suffix)]
    return pattern + ".{ext}"


OWNED_HINT = ("the journal, its lock, snapshot and the other files of the state folder belong to the batch: "
              "writing over one would lose its history or let a second run in; choose another output name")


class _Owned:
    """The files and folders a batch owns, which no output may be written onto (DESIGN invariant 10).

    ``journal``: the journal the run would use (``--journal`` / ``settings.journal`` / the default
    ``OUTPUT_ROOT/.gsvr/journal.jsonl``). Owned: ``OUTPUT_ROOT/.gsvr/`` always (the default state
    folder), the journal's own folder when it is a separate state folder, and in any case the journal
    and every ``<journal>.*`` file next to it (``.lock``, ``.owner``, ``.control``, ``.snapshot``,
    ``.ratelimit``, ``.run/``, ``.torn-*``, ``.corrupt-*``), ``manifest.derived.yaml``, ``report.html``,
    ``partials/`` and ``downloads/`` there; and any temp name (``.gsvr-tmp-*``), which a later run's
    clean-up deletes. Folders are compared resolved, so a symlinked folder that leads into the state
    folder is caught.
    """

    FILES = {"manifest.derived.yaml": "the derived manifest", "report.html": "the batch's report"}
    FOLDERS = {"partials": "the clip partials folder", "downloads": "the downloads folder"}
    SUFFIXES = {".lock": "the run lock", ".owner": "the run lock's owner file", ".control": "the control file",
                ".snapshot": "the journal's snapshot", ".ratelimit": "the shared rate-limit file",
                ".run": "the run's private folder"}

    def __init__(self, output_root: Path, journal: Path) -> None:
        self.root = str(output_root)
        self.state_dir = os.path.realpath(os.path.dirname(str(journal)))
        self.journal = os.path.join(self.state_dir, os.path.basename(str(journal)))
        self.dirs = {os.path.realpath(os.path.join(self.root, STATE_DIR))}
        # A journal kept in the output root itself (or above it): only its own files are owned,
        # not the whole folder (every output lives there).
        if not (self.root + "/").startswith(self.state_dir.rstrip("/") + "/"):
            self.dirs.add(self.state_dir)
        self._real: dict[str, tuple[str, bool]] = {}

    def _parent(self, head: str) -> tuple[str, bool]:
        """(the folder ``head`` of the root really is, whether anything owned can be in it), cached:
        10,000 outputs in one folder cost one ``realpath``, and most folders are not near the state."""
        got = self._real.get(head)
        if got is None:
            real = os.path.realpath(os.path.join(self.root, head) if head else self.root)
            hot = any(real == d or real.startswith(d.rstrip("/") + "/") for d in (self.state_dir, *self.dirs))
            got = self._real[head] = (real, hot)
        return got

    def problem(self, rel: str) -> str | None:
        """Why the output ``rel`` (a normalised name relative to the root) may not be written, or None.

        A folder on the way may be a symlink (followed: writing through it lands where it points);
        the file itself may not matter: an output replaces a symlink by an atomic rename, never
        writing through it.
        """
        head, _, name = rel.rpartition("/")
        if name.startswith(TMP_PREFIX):
            return f"output '{rel}' has a temporary file's name ({TMP_PREFIX}…), which a later run deletes"
        real, hot = self._parent(head)
        if not hot:
            return None
        path = os.path.join(real, name)
        if path == self.journal:
            return f"output '{rel}' is the batch's journal ({self.journal})"
        if path.startswith(self.journal + "."):  # <journal>.lock, .snapshot, .run/…, .torn-…
            tail = "." + path[len(self.journal) + 1:].split("/", 1)[0]
            what = self.SUFFIXES.get(tail) or (
                "a copy of the journal kept by a repair" if tail.startswith((".torn-", ".corrupt-")) else None)
            if what is None:
                return (f"output '{rel}' is in the journal's namespace ({self.journal}.*, where the batch keeps its "
                        f"lock, snapshot and other files)")
            return f"output '{rel}' is {what} ({self.journal}{tail})"
        if os.path.dirname(path) == self.state_dir and name in self.FILES:
            return f"output '{rel}' is {self.FILES[name]} ({path})"
        for folder, what in self.FOLDERS.items():
            d = os.path.join(self.state_dir, folder)
            if path == d or path.startswith(d + "/"):
                return f"output '{rel}' is inside {what} ({d})"
        for d in self.dirs:
            if path == d or path.startswith(d.rstrip("/") + "/"):
                return f"output '{rel}' is inside the state folder {d}"
        return None


class _InsideRoot:
    """Whether output names stay inside the output root; ``check(rel)`` for each.

    ``root`` is already resolved. Strings and ``os.path`` only: pathlib objects made this a third
    of loading a 10,000-job manifest. Both sides are normalised (``normpath``, a resolved root), so
    "strictly inside" is a string-prefix test on ``root + "/"``, exactly ``root in
    Path(candidate).parents``. Per folder, remembered: whether it resolves inside the root (10,000
    outputs in one folder cost one ``resolve()``, not 10,000), and whether it holds any symlink.
    """

    # Outputs of a folder checked one lstat each before the folder is listed once instead: a few
    # outputs in a big existing folder should not pay for listing it.
    LIST_AFTER = 32

    def __init__(self, root: Path) -> None:
        self.root = root
        root_s = str(root)
        self.root_s = root_s
        self.prefix = root_s if root_s.endswith("/") else root_s + "/"
        self._folder_ok: dict[str, bool] = {}
        self._seen: dict[str, int] = {}
        self._link_free: dict[str, bool] = {}

    def check(self, rel: str) -> tuple[str, str | None]:
        """(relative POSIX name, None) if ``rel`` stays inside the root; else ("", why)."""
        parts = rel.split("/")
        if rel.startswith("~") or "" in parts or "." in parts or ".." in parts:
            p = os.path.expanduser(rel)
            candidate = os.path.normpath(p if os.path.isabs(p) else os.path.join(self.root_s, p))
            if not candidate.startswith(self.prefix) or candidate == self.prefix:
                return "", f"output '{rel}' resolves outside the output root {self.root}"
            parent = os.path.dirname(candidate)
            checked = candidate[len(self.prefix):]
        else:
            # a plain relative name (no "", "." or ".." part, no "~"): what normpath would give,
            # and its folder as os.path.dirname would
            candidate = self.prefix + rel
            parent = self.prefix + rel[:rel.rfind("/")] if len(parts) > 1 else self.root_s
            checked = rel
        # existing parts may be symlinks pointing elsewhere: follow them
        ok = self._folder_ok.get(parent)
        if ok is None:
            ok = self._folder_ok[parent] = is_inside(self.root, parent)
        if ok and self._may_be_link(parent) and os.path.islink(candidate):
            ok = is_inside(self.root, candidate)
        if not ok:
            return "", f"output '{rel}' resolves outside the output root {self.root} (through a symlink)"
        return checked, None

    def _may_be_link(self, folder: str) -> bool:
        """False when ``folder`` holds no symlink at all, so no name in it is one (in any spelling a
        case-insensitive file system would match): one listing instead of an lstat per output."""
        n = self._seen[folder] = self._seen.get(folder, 0) + 1
        if n <= self.LIST_AFTER:
            return True
        free = self._link_free.get(folder)
        if free is None:
            try:
                with os.scandir(folder) as it:
                    free = not any(entry.is_symlink() for entry in it)
            except (FileNotFoundError, NotADirectoryError):
                free = True  # no folder: nothing in it, symlinks neither
            except OSError:
                free = False  # cannot tell: ask about each output
            self._link_free[folder] = free
        return not free


def _check_local(e: _Entry, base: Path) -> list[Problem]:
    """Per-file checks that need no API: exists, type, size (stat only), magic bytes (first bytes only)."""
    st = e.stat
    if st is None:
        try:
            st = os.stat(e.source)
        except FileNotFoundError:
            shown, line = _where_local(e, base)
            if os.path.islink(e.source):
                return [Problem(e.file, line,
                                f"{shown} is a dangling symlink (its target {os.readlink(e.source)} is gone)",
                                "fix or remove the link", gone=e.source)]
            return [Problem(e.file, line, f"file not found: {shown}",
                            "paths are relative to the manifest's folder " + str(base), gone=e.source)]
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
            shown, line = _where_local(e, base)
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return [Problem(e.file, line, f"cannot read {shown}: {why}", None)]
    ext = _suffix(e.source).lower()
    if ext not in media.VIDEO_MIME_TYPES:
        shown, line = _where_local(e, base)
        return [Problem(e.file, line, f"unsupported file type '{ext or os.path.basename(e.source)}': {shown}",
                        "supported: " + " ".join(media.VIDEO_EXTENSIONS))]
    if not stat.S_ISREG(st.st_mode):  # the stat follows symlinks, as os.path.isfile would
        shown, line = _where_local(e, base)
        return [Problem(e.file, line, f"{shown} is not a regular file", None)]
    if st.st_size == 0:
        shown, line = _where_local(e, base)
        return [Problem(e.file, line, f"file is empty (0 bytes): {shown}", "re-export or re-download it")]
    if st.st_size > media.MAX_VIDEO_BYTES:
        shown, line = _where_local(e, base)
        return [Problem(e.file, line, f"file is {st.st_size / 1024**3:.1f} GB, over the Files API's 2 GB limit: {shown}",
                        "compress or split it, e.g. with ffmpeg")]
    try:
        # os.open/os.read: a Python file object per video was half of this check's time
        fd = os.open(e.source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            head = os.read(fd, 192)  # media.read_head's size
        finally:
            os.close(fd)
    except OSError as exc:
        shown, line = _where_local(e, base)
        return [Problem(e.file, line, f"cannot read {shown}: {exc.strerror or exc}", "check its permissions")]
    if media.sniff_container(head) is None:
        shown, line = _where_local(e, base)
        return [Problem(e.file, line, f"{shown} does not look like a video (no known container signature)",
                        "it may be a renamed text or HTML file; re-download or re-export it")]
    return []


def _where_local(e: _Entry, base: Path) -> tuple[str, int | None]:
    """How a problem of a local source names it, and its line (worked out only when there is one)."""
    line = e.origin_job.line_of("source") if e.file == e.origin_job.file else e.line
    return _identity_path(e.source, base), line


def _check_templates(jobs: list[Job], entries: list[_Entry], templates_dirs: list[Path], *,
                     cli_template: str | None = None) -> list[Problem]:
    try:
        from . import templates as templates_mod  # lazy: validation works before templates exist
    except ImportError:
        return []
    try:
        # missing folders are already reported by _build
        available = templates_mod.load_templates([d for d in templates_dirs if d.is_dir()])
    except GsvrError as exc:
        return [Problem(str(templates_dirs[0]) if templates_dirs else "templates", None,
                        f"cannot load templates: {exc}", None)]
    by_origin: dict[str, _Entry] | None = None  # built for the first problem: most manifests have none

    def origin_of(job: Job) -> tuple[_Entry | None, str, int | None]:
        """The entry a job came from, its file and the line of its template."""
        nonlocal by_origin
        if by_origin is None:
            by_origin = {f"{e.file}:{e.line}" if e.line else e.file: e for e in entries}
        e = by_origin.get(job.origin)
        file = e.file if e else job.origin
        line = (e.origin_job.line_of("template") if e and e.file == e.origin_job.file else (e.line if e else None))
        return e, file, line

    problems: list[Problem] = []
    reported: set[tuple[str, str]] = set()
    checked: dict[Any, list[str]] = {}
    for job in jobs:
        template = available.get(job.template)
        if template is None:
            e, file, line = origin_of(job)
            # `-t nosuch` is the command line's mistake: said once, not blamed on every job's line
            where = (CLI, None, CLI) if cli_template and job.template == str(cli_template).strip() else \
                (file, line, job.origin)
            if (where[2], "t") not in reported:
                reported.add((where[2], "t"))
                hint = did_you_mean(job.template, sorted(available)) or "available: " + ", ".join(sorted(available))
                shown = "--template" if where[0] == CLI else "template"
                problems.append(Problem(where[0], where[1], f"unknown {shown} '{job.template}'", hint))
            continue
        # Jobs of one manifest mostly share template and params: check each pair once, not per job.
        try:
            key: Any = (job.template, tuple(sorted(job.params.items())) if job.params else ())
            hash(key)
        except TypeError:  # unhashable or unorderable params: check this job on its own
            key = None
        messages = checked.get(key) if key is not None else None
        if messages is None:
            messages = templates_mod.check_params(template, job.params)
            if key is not None:
                checked[key] = messages
        if not messages:
            continue
        e, file, _line = origin_of(job)
        for message in messages:
            if (job.origin, message) not in reported:
                reported.add((job.origin, message))
                problems.append(Problem(file, e.line if e else None, message,
                                        "params must match the parameters the template declares"))
    return problems


# --- sections ----------------------------------------------------------------------------


def _internal_names(overrides: dict) -> dict:
    """Settings-table names (``output``, ``format``, ``templates``) → the builder's (``output_dir``…)."""
    out = {}
    for key, value in overrides.items():
        name = settings_mod.canonical(key) or key
        setting = settings_mod.BY_NAME.get(name)
        if setting is not None and setting.target == "defaults":
            out[setting.defaults_key] = value
        else:
            out[name] = value
    return out


def _defaults(raw: RawManifest, overrides: dict) -> tuple[dict, list[Problem]]:
    problems = []
    d = dict(raw.defaults)
    lines = dict(raw.defaults_lines)
    # `settings: {template: x, model: y, output: z, format: md}` means the same as `defaults:`
    for key, value in raw.settings.items():
        name = settings_mod.canonical(key)
        setting = settings_mod.BY_NAME.get(name) if name else None
        if setting is None or setting.target != "defaults":
            continue
        if setting.defaults_key in d:
            problems.append(Problem(raw.file, raw.settings_lines.get(key),
                                    f"'{key}' is set both in settings and in defaults ({setting.defaults_key})",
                                    "keep one of them"))
            continue
        d[setting.defaults_key] = value
        lines[setting.defaults_key] = raw.settings_lines.get(key)
    raw.defaults_lines = lines
    for key in ("template", "model", "output_dir", "output_pattern", "output_format"):
        if key in d and (not isinstance(d[key], str) or not d[key].strip()):
            problems.append(Problem(raw.file, raw.defaults_lines.get(key), f"defaults.{key} must be text", None))
            d.pop(key)
    if "params" in d and not isinstance(d["params"], dict):
        problems.append(Problem(raw.file, raw.defaults_lines.get("params"), "defaults.params must be a mapping",
                                "indent 'name: value' lines under 'params:'"))
        d.pop("params")
    if d.get("output_format") and d["output_format"] not in OUTPUT_FORMATS:
        problems.append(Problem(raw.file, raw.defaults_lines.get("output_format"),
                                f"unknown output_format '{d['output_format']}'",
                                did_you_mean(d["output_format"], OUTPUT_FORMATS) or "use md, json or html"))
        d.pop("output_format")
    if d.get("output_pattern"):
        why = pattern_problem(d["output_pattern"])
        if why:
            problems.append(Problem(raw.file, raw.defaults_lines.get("output_pattern"), why, None))
            d.pop("output_pattern")
    for key in ("output_format", "output_pattern"):
        v = overrides.get(key)
        if v is not None:
            why = (pattern_problem(v) if key == "output_pattern" else
                   (None if v in OUTPUT_FORMATS else f"unknown output format '{v}' (use md, json or html)"))
            if why:
                problems.append(Problem(CLI, None, why, None))
    d["template"] = d.get("template") or DEFAULT_TEMPLATE
    d["model"] = d.get("model") or DEFAULT_MODEL
    return d, problems


def _settings(raw: RawManifest, overrides: dict) -> tuple[Settings, list[Problem]]:
    """``settings:`` plus command-line values, each checked by its entry in ``settings.SETTINGS``.

    A job default named under ``settings:`` (``template``, ``model``, ``output``…) is moved to
    the defaults by :func:`_defaults`; here it is only validated.
    """
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    lines: dict[str, int | None] = {}
    for key, value in raw.settings.items():
        name = settings_mod.canonical(key)
        if name is None or settings_mod.BY_NAME[name].target != "settings":
            continue
        values[name] = value
        lines[name] = raw.settings_lines.get(key)
    for key, value in overrides.items():
        name = settings_mod.canonical(key)
        if name is None or name == "templates_dir" or settings_mod.BY_NAME[name].target != "settings":
            continue  # CLI template folders resolve against the cwd: see _build
        if value is not None:
            values[name] = value
            lines[name] = None
    s = Settings()
    for name, value in values.items():
        if value is None:
            continue
        try:
            parsed = settings_mod.parse(name, value)
        except settings_mod.SettingError as exc:
            from_file = lines.get(name) is not None
            shown = f"settings.{name}" if from_file else "--" + name.replace("_", "-")
            # never echo api_key_env's value: people paste the key itself there
            problems.append(Problem(raw.file if from_file else CLI, lines.get(name), f"{shown} {exc}", exc.hint))
            continue
        if name == "templates_dir" and lines.get(name) is None:
            continue
        if name == "journal" and lines.get(name) is None:
            # as runner.preflight.resolve_journal reads --journal: "~" is the home folder
            parsed = os.path.abspath(os.path.expanduser(parsed))
        setattr(s, name, parsed)
    return s, problems


# --- helpers -----------------------------------------------------------------------------


def _duration(value: Any) -> float | None:
    """Seconds from 5400, '5400', '90m', '1h30m', '45s', '1:30:00' or '90:00'; None if not a positive duration."""
    return parse_duration(value)


def _job_context(f: dict[str, Any], defaults: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """``(options, problem, key)``: the ``context:`` / ``clip_minutes:`` a job (else ``defaults:``) sets.

    ``context: clips`` is short for ``context: {strategy: clips}``; ``clip_minutes: 40`` next to it is
    short for ``context: {clip_minutes: 40}``. Only the keys given are kept (validated by
    context.parse_context_options), so what the job leaves unset stays the template's choice.
    """
    raw = f.get("context", defaults.get("context"))
    clip = f.get("clip_minutes", defaults.get("clip_minutes"))
    if raw is None and clip is None:
        return None, None, None
    from .context import ContextOptionError, parse_context_options  # after the usual way out: asked per job

    given: dict[str, Any] = {}
    if isinstance(raw, str):
        given["strategy"] = raw
    elif isinstance(raw, dict):
        given.update(raw)
    elif raw is not None:
        return None, ("context must be a strategy name (auto, full, low, clips) or a mapping "
                      "with strategy, clip_minutes, allow_low_resolution, fps"), "context"
    if clip is not None:
        if given.get("clip_minutes") is not None and given["clip_minutes"] != clip:
            return None, "clip_minutes is given twice (in context: and next to it) with different values", \
                "clip_minutes"
        given["clip_minutes"] = clip
    try:
        parsed = parse_context_options(given)
    except ContextOptionError as exc:
        return None, str(exc), "clip_minutes" if exc.key == "clip_minutes" and "clip_minutes" in f else "context"
    return {k: parsed[k] for k in given}, None, None


def _identity_path(source: str, base: Path) -> str:
    """A local source as the manifest names it: relative POSIX path inside the base folder, else absolute.

    Sources are normalised absolute paths (``_expand``), so a string-prefix test gives what
    ``Path(source).relative_to(base)`` gives, without two pathlib objects per call (a 10,000-job
    manifest made 20,000 of these calls); anything not in that clean shape takes the pathlib way.
    """
    b = str(base)  # pathlib's own spelling: no "//", "/./" or trailing "/"
    if _clean_path(source):
        if b == "/":
            return source[1:] if source != "/" else "."
        if source.startswith(b) and source[len(b):len(b) + 1] == "/":
            return source[len(b) + 1:]
        if not source.startswith(b):
            return source
    p = Path(source)
    try:
        return p.relative_to(base).as_posix()
    except ValueError:
        return p.as_posix()


def _clean_path(path: str) -> bool:
    """Absolute and spelled as pathlib would spell it (so string tests agree with pathlib's)."""
    return (path.startswith("/") and not path.startswith("//") and "//" not in path and "/./" not in path
            and not path.endswith(("/", "/.")))


def _suffix(path: str) -> str:
    """``Path(path).suffix`` without a Path: the last dot of the name, not leading, not trailing."""
    name = path.rpartition("/")[2]
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""


def _stem(path: str) -> str:
    """``Path(path).stem`` without a Path (for a path without a trailing slash)."""
    name = path.rstrip("/").rpartition("/")[2]
    i = name.rfind(".")
    return name[:i] if 0 < i < len(name) - 1 else name


def _shown(path: Path) -> str:
    """How to name ``path`` in a message: relative to the cwd when that is shorter and inside it."""
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _summary(problems: Iterable[Problem]) -> str:
    problems = list(problems)
    errors = [p for p in problems if p.is_error]
    if not errors:
        return "manifest has problems"
    lines = "\n".join(f"  {p}" for p in errors)
    return f"manifest has {len(errors)} error{'s' if len(errors) != 1 else ''}:\n{lines}"
