"""YAML manifests: parse with line numbers, catch what PyYAML lets through.

``yaml.safe_load`` forgets where things were and silently keeps the last of two duplicate
keys, so we ``yaml.compose`` the document (nodes carry ``start_mark``) and build plain
values ourselves, remembering the line of every key and list item.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from pathlib import Path
from typing import Any

import yaml

from .manifest_types import Problem, RawJob, RawManifest
from .settings import MANIFEST_KEYS as MANIFEST_SETTINGS_KEYS

TOP_KEYS = ("defaults", "settings", "jobs", "sandbox", "templates_dir", "base_dir", "name", "description",
            "derived_from")
# ``context`` / ``clip_minutes``: how a long video is sent (context.py); per job or for every job.
DEFAULT_KEYS = ("template", "model", "output_dir", "output_pattern", "output_format", "params", "context",
                "clip_minutes")
JOB_KEYS = ("source", "list", "template", "output", "output_pattern", "output_format", "title", "model",
            "params", "max_duration", "context", "clip_minutes")
SETTINGS_KEYS = MANIFEST_SETTINGS_KEYS
_JOB_KEY_SET = frozenset(JOB_KEYS)

# Google API keys: "AIza" + 35 characters. Matched, never printed.
API_KEY_SHAPE = re.compile(r"AIza[0-9A-Za-z_\-]{35}")
SECRET_KEY_NAME = re.compile(r"(api[_-]?key|apikey|secret|token|password|credential)", re.I)
ENV_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
SECRET_HINT = ("delete it, put the key in an environment variable (e.g. GEMINI_API_KEY) "
               "and set settings.api_key_env to that variable's name")


class LMap(dict):
    """A mapping that remembers the line of each key (1-based)."""

    line: int | None = None
    key_lines: dict[Any, int]


class LSeq(list):
    """A list that remembers the line of each item (1-based)."""

    line: int | None = None
    item_lines: list[int]


def did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str | None:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def unknown_key_problems(mapping: LMap, allowed: tuple[str, ...], where: str, file: str) -> list[Problem]:
    problems = []
    for key in mapping:
        if key not in allowed:
            hint = did_you_mean(str(key), allowed) or f"allowed: {', '.join(allowed)}"
            problems.append(Problem(file, mapping.key_lines.get(key), f"unknown key '{key}' in {where}", hint))
    return problems


_STR_TAG = "tag:yaml.org,2002:str"


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's parser when present (~10x faster than PyYAML's own on a 10,000-job manifest, same
    nodes and marks), with a shortcut in the resolver, which it asks about every node.

    The resolver tries the implicit types (bool, int, float, null, timestamp, merge, value) whose
    table entry matches the scalar's first character; a plain scalar starting with any other
    character (``source``, ``videos/a.mp4``...) always ends as a string. Saying so at once gives
    exactly the tag ``resolve`` would, without its table look-ups (30,000 calls for 10,000 jobs);
    a mapping or a list without a path resolver gets its kind's default tag, as there.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        table = self.yaml_implicit_resolvers
        # the shortcut holds only without wildcard or path resolvers (SafeLoader has neither)
        self._typed_first: frozenset[str] | None = (
            frozenset(k for k in table if k) if None not in table and not self.yaml_path_resolvers else None)

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        typed = self._typed_first
        if typed is not None:
            if kind is yaml.MappingNode:
                return self.DEFAULT_MAPPING_TAG
            if kind is yaml.ScalarNode and implicit[0] and value and value[0] not in typed:
                return self.DEFAULT_SCALAR_TAG
        return super().resolve(kind, value, implicit)


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []
        self.constructor = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node) -> Any:
        # Plain string scalars are taken inline in the loops below: most nodes of a manifest are
        # those, and a call per node was most of this function's time.
        scalar = yaml.ScalarNode
        line = node.start_mark.line + 1
        if isinstance(node, scalar):
            if node.tag == _STR_TAG:
                return node.value  # what construct_yaml_str returns, without the constructor's bookkeeping
            return self.constructor.construct_object(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            seq = LSeq()
            item_lines = []
            for item in node.value:
                item_lines.append(item.start_mark.line + 1)
                seq.append(item.value if item.tag == _STR_TAG and isinstance(item, scalar) else self.build(item))
            seq.line = line
            seq.item_lines = item_lines
            return seq
        if isinstance(node, yaml.MappingNode):
            self.constructor.flatten_mapping(node)  # resolve "<<: *anchor" merges
            out = LMap()
            out.line = line
            key_lines: dict[Any, int] = {}
            out.key_lines = key_lines
            for key_node, value_node in node.value:
                key_line = key_node.start_mark.line + 1
                if not isinstance(key_node, scalar):
                    self.problems.append(Problem(self.file, key_line, "a mapping key must be a plain name",
                                                 "write 'key: value'"))
                    continue
                key = key_node.value if key_node.tag == _STR_TAG else \
                    self.constructor.construct_object(key_node, deep=True)
                if key in out:
                    self.problems.append(Problem(
                        self.file, key_line,
                        f"duplicate key '{key}' (first at line {key_lines[key]})",
                        "YAML keeps only the last one; remove or merge the duplicate"))
                out[key] = value_node.value if value_node.tag == _STR_TAG and isinstance(value_node, scalar) \
                    else self.build(value_node)
                key_lines[key] = key_line
            return out
        return None  # pragma: no cover - compose yields only the three node kinds


def _names_a_variable(name: str, value: str, in_env_map: bool) -> bool:
    """True when a secret-named key's value only NAMES where the secret is, which is the advice.

    ``password_env: SMTP_PASSWORD``, ``api_key_env: GEMINI_API_KEY``, the values of a
    ``headers_env:`` mapping, and ``${VAR}`` references (``token: ${HOOK_TOKEN}``) hold no secret.
    """
    text = value.strip()
    if ENV_REFERENCE.fullmatch(text):
        return True
    return (in_env_map or name.lower().endswith("_env")) and bool(ENV_VAR_NAME.match(text))


@functools.lru_cache(maxsize=1024)  # a manifest repeats a handful of key names thousands of times
def _secret_name(name: str) -> bool:
    """A key whose literal value would be a secret (``token``, ``api_key``...); ``api_key_env`` names one."""
    return bool(name) and name != "api_key_env" and SECRET_KEY_NAME.search(name) is not None


def scan_secrets(value: Any, file: str, line: int | None = None, key: Any = None, *,
                 in_env_map: bool = False) -> list[Problem]:
    """Warnings for anything that looks like an API key pasted into the manifest (value never echoed)."""
    found: list[Problem] = []
    if isinstance(value, LMap):
        # the values of `headers_env: {X-Api-Token: HOOK_TOKEN}` are variable names
        child_env = str(key or "").lower().endswith("_env")
        for k, v in value.items():
            # A string can only be warned about when it holds "AIza" (every key starts so) or sits
            # under a secret's name: the other 99.9% are passed over here, without a call each.
            if isinstance(v, str) and "AIza" not in v and not _secret_name(str(k) if k is not None else ""):
                continue
            found += scan_secrets(v, file, value.key_lines.get(k, line), k, in_env_map=child_env)
    elif isinstance(value, LSeq):
        secret_name = _secret_name(str(key) if key is not None else "")
        for i, v in enumerate(value):
            if isinstance(v, str) and "AIza" not in v and not secret_name:
                continue
            found += scan_secrets(v, file, value.item_lines[i], key, in_env_map=in_env_map)
    elif isinstance(value, str) and value.strip():
        name = str(key) if key is not None else ""
        if "AIza" in value and API_KEY_SHAPE.search(value):
            found.append(Problem(file, line, f"the value of '{name or 'this entry'}' looks like a Google API key; "
                                 "keys in manifests leak through git and backups", SECRET_HINT, "warning"))
        elif _secret_name(name) and not _names_a_variable(name, value, in_env_map):
            found.append(Problem(file, line, f"'{name}' holds a literal secret; a manifest is no place for keys",
                                 SECRET_HINT, "warning"))
    return found


def tab_problems(text: str, file: str) -> list[Problem]:
    if "\t" not in text:
        return []  # the usual case, without splitting the text into lines
    problems = []
    for number, raw in enumerate(text.splitlines(), start=1):
        indent = raw[: len(raw) - len(raw.lstrip(" \t"))]
        if "\t" in indent and raw.strip():
            problems.append(Problem(file, number, "tab character in indentation",
                                    "YAML indentation must use spaces; replace the tab with spaces"))
    return problems


def parse_yaml(text: str, file: str, base_dir: Path) -> tuple[RawManifest | None, list[Problem]]:
    """Parse a YAML manifest's text into a :class:`RawManifest`; every problem found, not just the first."""
    tabs = tab_problems(text, file)
    if tabs:
        # PyYAML's own message for a tab is cryptic ("found character '\t' that cannot start any
        # token") and points at one line only; ours names every line.
        return None, tabs
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = f" column {mark.column + 1}" if mark else ""
        what = exc.problem or exc.context or "syntax error"
        return None, [Problem(file, line, f"malformed YAML: {what}{col and ' at' + col}",
                              "check indentation, colons and quotes on this line and the one above")]
    except yaml.YAMLError as exc:
        return None, [Problem(file, None, f"malformed YAML: {exc}", "check the file is a YAML manifest")]
    if node is None:
        return None, [Problem(file, None, "manifest is empty: add a jobs: list",
                              "e.g. 'jobs:' then '  - source: videos/lecture.mp4'")]
    builder = _Builder(file)
    try:
        data = builder.build(node)
    except yaml.YAMLError as exc:  # bad scalar, e.g. an unknown !tag
        mark = getattr(exc, "problem_mark", None)
        return None, [Problem(file, mark.line + 1 if mark else None, f"malformed YAML: {getattr(exc, 'problem', exc)}",
                              "remove custom !tags; a manifest holds plain values")]
    problems = builder.problems
    problems += scan_secrets(data, file)
    if not isinstance(data, LMap):
        kind = "a list" if isinstance(data, LSeq) else "a single value"
        problems.append(Problem(file, node.start_mark.line + 1,
                                f"the manifest's top level is {kind}, not a mapping",
                                "start with 'jobs:' and indent the list of jobs under it"))
        return None, problems
    problems += unknown_key_problems(data, TOP_KEYS, "the manifest", file)

    raw = RawManifest(file=file, base_dir=base_dir)
    if "base_dir" in data:
        if isinstance(data["base_dir"], str) and data["base_dir"].strip():
            raw.base_dir = (base_dir / Path(data["base_dir"]).expanduser()).absolute()
        else:
            problems.append(Problem(file, data.key_lines["base_dir"], "base_dir must be a folder path", None))

    for section, allowed, target, lines in (("defaults", DEFAULT_KEYS, raw.defaults, raw.defaults_lines),
                                             ("settings", SETTINGS_KEYS, raw.settings, raw.settings_lines)):
        value = data.get(section)
        if value is None:
            continue
        if not isinstance(value, LMap):
            problems.append(Problem(file, data.key_lines[section], f"'{section}' must be a mapping of keys",
                                    f"indent 'key: value' lines under '{section}:'"))
            continue
        if section == "settings":
            from .settings import PER_RUN

            for key in [k for k in value if str(k).replace("-", "_") in PER_RUN]:
                name = str(key).replace("-", "_")
                problems.append(Problem(file, value.key_lines.get(key), f"'{key}' is not a setting: {PER_RUN[name]}",
                                        f"pass --{name.replace('_', '-')} on the command line when you mean it"))
            kept = LMap({k: v for k, v in value.items() if str(k).replace("-", "_") not in PER_RUN})
            kept.line, kept.key_lines = value.line, value.key_lines
            value = kept
        problems += unknown_key_problems(value, allowed, section, file)
        for key in value:
            if key in allowed:
                target[key] = value[key]
                lines[key] = value.key_lines.get(key)

    derived = data.get("derived_from")
    if isinstance(derived, LMap):
        raw.derived = {k: v for k, v in derived.items()}  # checked by the builder (manifest._derived_identity)
    elif derived is not None:
        problems.append(Problem(file, data.key_lines["derived_from"], "derived_from must be a mapping",
                                "gsvr-batch writes it in manifest.derived.yaml; delete the key in a manifest of yours"))

    # shortcuts: top-level sandbox / templates_dir mean the same as under settings
    for key in ("sandbox", "templates_dir"):
        if key in data:
            if key in raw.settings:
                problems.append(Problem(file, data.key_lines[key], f"'{key}' is set both at the top and in settings",
                                        "keep one of them"))
            else:
                raw.settings[key] = data[key]
                raw.settings_lines[key] = data.key_lines[key]

    if "jobs" not in data:
        problems.append(Problem(file, data.line, "no 'jobs' list in the manifest",
                                "add 'jobs:' with one '- source: ...' entry per video or folder"))
        return raw, problems
    jobs = data["jobs"]
    jobs_line = data.key_lines["jobs"]
    if jobs is None or (isinstance(jobs, LSeq) and not jobs):
        problems.append(Problem(file, jobs_line, "the jobs list is empty", "add '- source: path/to/video.mp4'"))
        return raw, problems
    if not isinstance(jobs, LSeq):
        problems.append(Problem(file, jobs_line, "'jobs' must be a list",
                                "start each job with '- ', e.g. '  - source: videos/a.mp4'"))
        return raw, problems
    for item, line in zip(jobs, jobs.item_lines):
        if isinstance(item, str):  # "- videos/a.mp4" shorthand
            raw.jobs.append(RawJob({"source": item}, file, line, raw.base_dir, {"source": line}))
            continue
        if not isinstance(item, LMap):
            problems.append(Problem(file, line, "a job must be a mapping with a 'source' (or 'list') key",
                                    "e.g. '- source: videos/a.mp4'"))
            continue
        if item.keys() <= _JOB_KEY_SET:  # the usual job: every key known, copied as it is
            fields, field_lines = dict(item), dict(item.key_lines)
        else:
            problems += unknown_key_problems(item, JOB_KEYS, "job", file)
            fields = {k: v for k, v in item.items() if k in JOB_KEYS}
            field_lines = {k: item.key_lines.get(k) for k in fields}
        if "source" not in fields and "list" not in fields:
            problems.append(Problem(file, line, "job has no 'source'",
                                    "add 'source: path/or/url' (or 'list: videos.txt')"))
            continue
        if "source" in fields and "list" in fields:
            problems.append(Problem(file, line, "job has both 'source' and 'list'", "split it into two jobs"))
            continue
        raw.jobs.append(RawJob(fields, file, line, raw.base_dir, field_lines))
    return raw, problems
