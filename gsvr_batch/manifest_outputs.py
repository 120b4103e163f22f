"""Output file names: patterns, sanitising, uniqueness (DESIGN invariant 10 starts here)."""

from __future__ import annotations

import functools
import re
import string

# ``{dir}``: the video's folder relative to the root of the folder job that found it ("" for a
# video named directly), so a folder run can mirror its subfolders (``a/x.mp4`` → ``a/x_….md``).
PATTERN_FIELDS = ("stem", "title", "template", "date", "id", "index", "ext", "dir")
# path separators and the C0/C1 control characters (exactly Unicode category Cc)
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f-\x9f]")
_MAX_FIELD_BYTES = 120  # a file name is at most 255 bytes; one Chinese character is 3


@functools.lru_cache(maxsize=256)
def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be used (unknown field, bad braces), or None (cached: asked once per job)."""
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        return f"output pattern {pattern!r} is malformed: {exc} (write a literal brace as {{{{ or }}}})"
    for _, name, _, _ in parsed:
        if name is None:
            continue
        if name not in PATTERN_FIELDS:
            return f"output pattern {pattern!r} uses unknown field {{{name}}}; fields: " + ", ".join(
                "{" + f + "}" for f in PATTERN_FIELDS)
    return None


def sanitise_component(value: str) -> str:
    """Make a manifest value safe as (part of) one file name.

    Path separators and control characters become '_' so a title like "A/B" cannot create
    a folder or climb out of the output root; Unicode (Chinese, emoji), spaces and
    punctuation are kept so names stay readable.
    """
    # Printable ASCII without a separator, a space or dot at either end and at most 120 bytes is
    # left as it is by every step below: most file stems, told in a few string tests (10,000
    # different stems would each miss the cache).
    if (value.isascii() and value.isprintable() and 0 < len(value) <= _MAX_FIELD_BYTES and "/" not in value
            and "\\" not in value and value[0] not in " ." and value[-1] not in " ."):
        return value
    return _sanitise(value)


@functools.lru_cache(maxsize=1024)  # the titles and folder names of 10,000 jobs repeat
def _sanitise(value: str) -> str:
    """:func:`sanitise_component`'s steps."""
    text = _UNSAFE.sub("_", value).strip().strip(".").strip()
    encoded = text.encode("utf-8")
    if len(encoded) > _MAX_FIELD_BYTES:
        text = encoded[:_MAX_FIELD_BYTES].decode("utf-8", errors="ignore").rstrip()
    return text or "_"


@functools.lru_cache(maxsize=256)
def _fields_of(pattern: str) -> tuple[tuple[str, ...], bool]:
    """(the fields ``pattern`` names other than ``{dir}``, whether it names ``{dir}``): asked per job."""
    names = frozenset(name for _, name, _, _ in string.Formatter().parse(pattern) if name)
    return tuple(n for n in names if n != "dir"), "dir" in names


@functools.lru_cache(maxsize=64)
def _without_dir(pattern: str) -> str:
    """``pattern`` for a video at the top of its folder: ``{dir}`` and the separator after it dropped."""
    return pattern.replace("{dir}/", "").replace("{dir}\\", "")


def sanitise_dir(value: str) -> str:
    """``{dir}``: each folder name sanitised on its own, joined by '/' (never '..', never absolute)."""
    if not value:
        return ""  # a video at the top: most of them
    parts = [p for p in value.replace("\\", "/").split("/") if p and p != "."]
    return "/".join(sanitise_component(p) for p in parts)


def render_pattern(pattern: str, values: dict[str, object]) -> str:
    """Fill a pattern; string values are sanitised, the pattern's own '/' makes subfolders.

    ``{dir}`` keeps its '/' (each folder name is sanitised); when it is empty, the separator
    written after it goes too, so ``{dir}/{stem}.md`` is ``x.md`` for a video at the top.
    """
    # Only the fields the pattern names are looked at and sanitised (one regex pass each, per job):
    # ``values`` may hold more (the manifest passes a job's whole set).
    names, has_dir = _fields_of(pattern)
    safe = {}
    for k in names:
        if k in values:  # a missing field: format_map's KeyError says which
            v = values[k]
            safe[k] = sanitise_component(v) if isinstance(v, str) else v
    if has_dir:
        folder = values.get("dir")
        folder = sanitise_dir(str(folder)) if folder else ""  # "" for a video at the top
        if not folder:
            pattern = _without_dir(pattern)
        safe["dir"] = folder
    return pattern.format_map(safe)


def with_suffix_number(rel: str, n: int) -> str:
    """'a/b.md', 2 → 'a/b-2.md' (the number goes before the extension)."""
    head, sep, name = rel.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext, dot = name, "", ""
    return f"{head}{sep}{stem}-{n}{dot}{ext}"
