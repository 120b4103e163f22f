"""Prompt templates: loading (gs_videoReport-compatible YAML), rendering, and model settings.

File format (the one gs_videoReport users already have, kept working unchanged)::

    templates:
      comprehensive_lesson:
        name: comprehensive_lesson          # optional; the mapping key wins, as in gs_videoReport
        version: "1.0"
        description: "..."
        parameters:                         # names (gs_videoReport) or mappings (gsvr-batch)
          - subject_area
          - name: audience
            default: university students
            description: who the lesson is for
            required: false
            choices: [...]
        model_config: {temperature: 0.7, max_tokens: 8192, top_p: 0.95, media_resolution: low}
        context:                            # optional (gsvr-batch): how a long video is sent
          strategy: auto                    # auto | full | low | clips     (default auto)
          clip_minutes: 40                  # segment length for clips, minutes > 0 (default: automatic)
          allow_low_resolution: true        # may auto fall back to MEDIA_RESOLUTION_LOW (default true)
          fps: 1                            # frames a second sent, (0, 24] (default: the API's 1)
        prompt: |
          ... {{video_title}} ... {{ audience }} ...

A file may also hold one template at its top level (``name:`` ... ``prompt:``, no ``templates:``
key; the name defaults to the file stem), as gs_videoReport's loader allowed.

``context:`` (new, optional; gs_videoReport never had it, so its files load unchanged) chooses how
a video too long for one request is sent: see :mod:`gsvr_batch.context`. ``context: clips`` is
short for ``context: {strategy: clips}``. It is validated at load (an unknown option or a bad value
is a :class:`TemplateError` with the file and line) and exposed as ``Template.context``, always a
full dict: ``{"strategy": "auto", "clip_minutes": None, "allow_low_resolution": True, "fps": None}``
for a template without it. Unknown keys
(``author``, ``tags``, ``output_format``, ...) are tolerated and kept in ``Template.extra``.

Where templates come from: the built-in folder (top-level ``templates/`` next to the package,
or ``<prefix>/share/gsvr-batch/templates`` in a non-editable install), then each extra folder in
order. **A later folder overrides an earlier one** for a template of the same name, so a user's
folder can replace a built-in. Two files in the *same* folder defining one name is an error.

Values for ``{{var}}`` come from, lowest priority first: the template's parameter defaults,
then video metadata (:data:`METADATA_KEYS`), then the manifest's ``params``.
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import yaml

from .context import ContextOptionError, parse_context_options
from .errors import TemplateError

#: Top-level ``templates/`` folder of the source tree (editable installs, checkouts).
SOURCE_TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
#: Where setup.cfg's ``data_files`` puts the built-ins in a regular (wheel) install.
INSTALLED_TEMPLATES_DIR = Path(sys.prefix) / "share" / "gsvr-batch" / "templates"

#: ``{{name}}`` or ``{{ name }}``; dotted/hyphenated names are matched so they are reported, not ignored.
PLACEHOLDER_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*\}\}")

#: Names the pipeline fills from the video itself (see :func:`metadata_values`). A template may use
#: them without declaring them, and a required parameter with one of these names counts as given.
METADATA_KEYS = (
    "title",
    "video_title",
    "duration",
    "video_duration",
    "duration_seconds",
    "video_duration_seconds",
    "source",
    "date",
    "current_timestamp",
)

#: Defaults that gs_videoReport's renderer applied to its parameters (its TemplateManager.render_prompt),
#: used for parameters listed by bare name, so its files render as they did there.
LEGACY_DEFAULTS: dict[str, str] = {
    "video_duration": "unknown",
    "subject_area": "general",
    "detail_level": "comprehensive",
    "max_length": "500",
    "focus_areas": "key concepts and learning points",
}

#: model_config keys → google-genai ``GenerateContentConfig`` fields, with the converter for each.
_GEN_FIELDS: dict[str, tuple[str, type]] = {
    "temperature": ("temperature", float),
    "max_tokens": ("max_output_tokens", int),
    "max_output_tokens": ("max_output_tokens", int),
    "top_p": ("top_p", float),
    "top_k": ("top_k", float),  # the SDK types top_k as a float
    "seed": ("seed", int),
}
_MEDIA_RESOLUTION = {
    "low": "MEDIA_RESOLUTION_LOW",
    "medium": "MEDIA_RESOLUTION_MEDIUM",
    "high": "MEDIA_RESOLUTION_HIGH",
}
#: model_config keys we know and deliberately do not send:
#: - ``response_format``: gs_videoReport's "structured" marker; it never reached the API, the
#:   templates ask for Markdown in the prompt instead.
#: - ``model``: the model comes from the manifest / CLI, not from the template.
#: - ``response_mime_type``, ``response_schema``: we always want Markdown text back.
#: Any other unknown key is ignored too (see :func:`ignored_model_config_keys`) so that a newer
#: template file never breaks an older gsvr-batch.
KNOWN_IGNORED_MODEL_KEYS = ("response_format", "model", "response_mime_type", "response_schema")

_PARAM_FIELDS = {"name", "required", "default", "description", "choices"}


@dataclass
class TemplateParam:
    name: str
    required: bool = False
    default: Any = None
    description: str = ""
    choices: list[Any] | None = None


@dataclass
class Template:
    name: str
    version: str
    description: str
    parameters: list[TemplateParam]
    model_config: dict
    prompt: str
    source: str  # "/abs/path/file.yaml:12" — file and line where the template starts
    builtin: bool = False
    extra: dict = field(default_factory=dict)  # tolerated keys we don't use: author, tags, output_format ...
    context: dict = field(default_factory=parse_context_options)  # validated ``context:`` (see module doc)

    def param(self, name: str) -> TemplateParam | None:
        for p in self.parameters:
            if p.name == name:
                return p
        return None

    def placeholders(self) -> list[str]:
        """Names used as ``{{name}}`` in the prompt, in order of first use."""
        seen: dict[str, None] = {}
        for m in PLACEHOLDER_RE.finditer(self.prompt):
            seen.setdefault(m.group(1), None)
        return list(seen)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "parameters": [
                {
                    "name": p.name,
                    "required": p.required,
                    "default": p.default,
                    "description": p.description,
                    "choices": p.choices,
                }
                for p in self.parameters
            ],
            "model_config": dict(self.model_config),
            "context": dict(self.context),
            "source": self.source,
            "builtin": self.builtin,
        }


# ---------------------------------------------------------------- loading


def builtin_templates_dir() -> Path:
    """The folder holding the built-in templates (source tree first, then the installed copy)."""
    if SOURCE_TEMPLATES_DIR.is_dir():
        return SOURCE_TEMPLATES_DIR
    return INSTALLED_TEMPLATES_DIR


def load_templates(extra_dirs: Iterable[str | Path] = ()) -> dict[str, Template]:
    """Built-in templates plus every ``*.yaml`` / ``*.yml`` in ``extra_dirs``.

    Later folders override earlier ones (built-ins first). A missing extra folder, unreadable
    file or broken template raises :class:`TemplateError` naming the file (and line when known).
    """
    templates: dict[str, Template] = {}
    builtin = builtin_templates_dir()
    if builtin.is_dir():
        templates.update(_load_dir(builtin, builtin=True))
    for d in extra_dirs:
        path = Path(d).expanduser()
        if not path.is_dir():
            raise TemplateError(f"templates folder not found: {path}")
        templates.update(_load_dir(path, builtin=False))
    return templates


def get_template(name: str, extra_dirs: Iterable[str | Path] = ()) -> Template:
    """One template by name; :class:`TemplateError` listing the known names if absent."""
    templates = load_templates(extra_dirs)
    try:
        return templates[name]
    except KeyError:
        raise TemplateError(_unknown_template_message(name, templates)) from None


def _unknown_template_message(name: str, templates: dict[str, Template]) -> str:
    msg = f"unknown template '{name}'"
    close = difflib.get_close_matches(name, list(templates), n=1)
    if close:
        msg += f" (did you mean '{close[0]}'?)"
    return msg + f"; available: {', '.join(sorted(templates)) or '(none)'}"


def _load_dir(directory: Path, *, builtin: bool) -> dict[str, Template]:
    found: dict[str, Template] = {}
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    for path in files:
        for t in load_template_file(path, builtin=builtin):
            if t.name in found:
                raise TemplateError(
                    f"{t.source}: template '{t.name}' is also defined at {found[t.name].source}; "
                    "rename one of them"
                )
            found[t.name] = t
    return found


def load_template_file(path: str | Path, *, builtin: bool = False) -> list[Template]:
    """Parse one template file (multi-template ``templates:`` form or single-template form)."""
    path = Path(path).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{path}: cannot read template file: {exc}") from exc
    node, data = _parse_yaml(path, text)
    if data is None:
        raise TemplateError(f"{path}:1: template file is empty")
    if not isinstance(data, dict):
        raise TemplateError(f"{path}:1: expected a mapping with 'templates:' (or a single template)")

    if "templates" in data:
        entries = data["templates"]
        if not isinstance(entries, dict) or not entries:
            line = _line_of(node, "templates")
            raise TemplateError(f"{path}:{line}: 'templates:' must map template names to templates")
        out = []
        for name, body in entries.items():
            tnode = _child(_child(node, "templates"), str(name))
            out.append(_build(path, str(name), body, tnode, builtin))
        return out
    if "prompt" in data:
        name = str(data.get("name") or path.stem)
        return [_build(path, name, data, node, builtin)]
    raise TemplateError(f"{path}:1: no 'templates:' mapping and no 'prompt:' — not a template file")


# libyaml's parser (~10x faster than PyYAML's own; every run loads the templates twice) gives the
# same nodes, marks and data; only its error messages are worded differently, so a file it refuses
# is read again by PyYAML's parser, whose message (or, should it accept the file, result) stands.
_FAST_LOADER = getattr(yaml, "CSafeLoader", None)


def _parse_yaml(path: Path, text: str) -> tuple[Any, Any]:
    """(node tree, Python data); the node tree is kept to report line numbers."""
    if _FAST_LOADER is not None:
        loader = _FAST_LOADER(text)
        try:
            node = loader.get_single_node()
            return node, (loader.construct_document(node) if node is not None else None)
        except yaml.YAMLError:
            pass  # said below, in PyYAML's words
        finally:
            loader.dispose()
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise TemplateError(f"{path}{line}: invalid YAML: {problem}") from exc
    finally:
        loader.dispose()
    return node, data


def _child(node: Any, key: str) -> Any:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if getattr(k, "value", None) == key:
                return v
    return None


def _line_of(node: Any, *keys: str) -> int:
    """1-based line of the value at ``keys`` below ``node`` (or of the deepest node found)."""
    best = node
    for key in keys:
        nxt = _child(best, key)
        if nxt is None:
            break
        best = nxt
    return best.start_mark.line + 1 if best is not None else 1


def _build(path: Path, name: str, body: Any, node: Any, builtin: bool) -> Template:
    where = f"{path}:{_line_of(node)}"
    if not isinstance(body, dict):
        raise TemplateError(f"{where}: template '{name}' must be a mapping")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise TemplateError(f"{where}: template '{name}' has no 'prompt:' text")
    params = _build_params(path, name, body.get("parameters"), _child(node, "parameters"))
    model_config = body.get("model_config") or {}
    if not isinstance(model_config, dict):
        raise TemplateError(f"{path}:{_line_of(node, 'model_config')}: template '{name}': model_config must be a mapping")
    try:
        context = parse_context_options(body.get("context"))
    except ContextOptionError as exc:
        keys = ("context", exc.key) if exc.key and isinstance(body.get("context"), dict) else ("context",)
        raise TemplateError(f"{path}:{_line_of(node, *keys)}: template '{name}': {exc}") from exc
    t = Template(
        name=name,
        version=str(body.get("version", "1.0")),
        description=str(body.get("description") or "").strip(),
        parameters=params,
        model_config=dict(model_config),
        prompt=prompt,
        source=where,
        builtin=builtin,
        extra={k: v for k, v in body.items() if k not in
               {"name", "version", "description", "parameters", "model_config", "prompt", "context"}},
        context=context,
    )
    try:
        generation_config(t)  # validate model_config now so a bad value names the file
    except TemplateError as exc:
        raise TemplateError(f"{path}:{_line_of(node, 'model_config')}: {exc}") from exc
    return t


def _build_params(path: Path, tname: str, raw: Any, node: Any) -> list[TemplateParam]:
    if raw is None:
        return []
    items: list[tuple[Any, Any]]  # (raw item, its node)
    if isinstance(raw, dict):
        # Tolerated shorthand: {name: default} or {name: {default: ..., required: ...}}
        items = [({"name": k, **v} if isinstance(v, dict) else {"name": k, "default": v}, _child(node, k))
                 for k, v in raw.items()]
    elif isinstance(raw, list):
        nodes = node.value if isinstance(node, yaml.SequenceNode) else [None] * len(raw)
        items = list(zip(raw, nodes))
    else:
        raise TemplateError(f"{path}:{_line_of(node)}: template '{tname}': parameters must be a list")

    out: list[TemplateParam] = []
    for item, inode in items:
        line = inode.start_mark.line + 1 if inode is not None else _line_of(node)
        if isinstance(item, str):
            # gs_videoReport style: a bare name. Its renderer never enforced these, so optional.
            out.append(TemplateParam(name=item, default=LEGACY_DEFAULTS.get(item)))
            continue
        if isinstance(item, dict):
            if "name" not in item and len(item) == 1:
                ((k, v),) = item.items()  # "- audience: university students"
                item = {"name": k, "default": v}
            pname = item.get("name")
            if not isinstance(pname, str) or not pname:
                raise TemplateError(f"{path}:{line}: template '{tname}': parameter without a 'name'")
            choices = item.get("choices")
            if choices is not None and not isinstance(choices, list):
                raise TemplateError(f"{path}:{line}: template '{tname}': choices of '{pname}' must be a list")
            default = item.get("default")
            if default is None and pname in LEGACY_DEFAULTS:
                default = LEGACY_DEFAULTS[pname]
            out.append(
                TemplateParam(
                    name=pname,
                    required=bool(item.get("required", False)),
                    default=default,
                    description=str(item.get("description") or ""),
                    choices=choices,
                )
            )
            continue
        raise TemplateError(f"{path}:{line}: template '{tname}': a parameter must be a name or a mapping")
    names = [p.name for p in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TemplateError(f"{path}:{_line_of(node)}: template '{tname}': parameter listed twice: {', '.join(dupes)}")
    return out


# ---------------------------------------------------------------- parameters and rendering


def check_params(t: Template, params: dict | None) -> list[str]:
    """Problems with the manifest's ``params`` for ``t`` (empty list: fine). Never raises.

    Unknown names (not declared, not used in the prompt, not metadata), missing required ones
    (metadata names count as given: the pipeline supplies them), values outside ``choices``.
    """
    params = params or {}
    problems: list[str] = []
    known = {p.name for p in t.parameters} | set(t.placeholders()) | set(METADATA_KEYS)
    for key in params:
        if key not in known:
            msg = f"template '{t.name}': unknown parameter '{key}'"
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            if close:
                msg += f" (did you mean '{close[0]}'?)"
            declared = sorted(p.name for p in t.parameters)
            msg += f"; its parameters are: {', '.join(declared) or '(none)'}"
            problems.append(msg)
    for p in t.parameters:
        given = params.get(p.name)
        if p.required and given is None and p.name not in METADATA_KEYS:
            problems.append(f"template '{t.name}': missing required parameter '{p.name}'"
                            + (f" ({p.description})" if p.description else ""))
        if given is not None and p.choices and str(given) not in {str(c) for c in p.choices}:
            problems.append(
                f"template '{t.name}': parameter '{p.name}' is {given!r}; "
                f"allowed: {', '.join(map(str, p.choices))}"
            )
        if isinstance(given, dict):
            problems.append(f"template '{t.name}': parameter '{p.name}' must be text, a number or a list")
    return problems


def format_duration(seconds: float | None) -> str | None:
    """``754.2`` → ``"12:34"``; an hour or more → ``"1:02:03"``."""
    if seconds is None:
        return None
    total = int(round(float(seconds)))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def metadata_values(metadata: dict | None, *, now: datetime | None = None) -> dict[str, str]:
    """Prompt values derived from video metadata.

    Accepts ``title`` / ``video_title``, ``duration`` (seconds, number) / ``video_duration``,
    ``source``, ``date``. Absent or ``None`` values are left out so template defaults apply.
    """
    md = dict(metadata or {})
    now = now or datetime.now(timezone.utc)
    out: dict[str, str] = {}
    title = md.get("title") or md.get("video_title")
    if title:
        out["title"] = out["video_title"] = str(title)
    dur = next((md[k] for k in ("duration", "duration_seconds", "video_duration") if md.get(k) is not None), None)
    if isinstance(dur, (int, float)) and not isinstance(dur, bool):
        out["duration"] = out["video_duration"] = format_duration(dur) or ""
        out["duration_seconds"] = out["video_duration_seconds"] = str(int(round(dur)))
    elif isinstance(dur, str) and dur:
        out["duration"] = out["video_duration"] = dur
    if md.get("source"):
        out["source"] = str(md["source"])
    out["date"] = str(md.get("date") or now.date().isoformat())
    out["current_timestamp"] = str(md.get("current_timestamp") or now.strftime("%Y-%m-%d %H:%M UTC"))
    return out


def _as_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render_prompt(t: Template, params: dict | None, metadata: dict | None, *, now: datetime | None = None) -> str:
    """The prompt text with every ``{{var}}`` filled; :class:`TemplateError` on any problem.

    Priority (lowest first): template defaults < metadata < manifest params.
    Substitution is one pass, so a value containing ``{{x}}`` is not expanded again.
    """
    problems = check_params(t, params)
    if problems:
        raise TemplateError("; ".join(problems))
    values: dict[str, str] = {p.name: _as_text(p.default) for p in t.parameters if p.default is not None}
    values.update(metadata_values(metadata, now=now))
    values.update({k: _as_text(v) for k, v in (params or {}).items() if v is not None})

    missing: list[str] = []

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in values:
            return values[name]
        if name not in missing:
            missing.append(name)
        return m.group(0)

    text = PLACEHOLDER_RE.sub(fill, t.prompt)
    if missing:
        raise TemplateError(
            f"template '{t.name}' ({t.source}): no value for "
            + ", ".join(f"parameter '{n}'" for n in missing)
            + " — give it under params: in the manifest, or a default in the template"
        )
    return text


# ---------------------------------------------------------------- model settings


def generation_config(t: Template) -> dict:
    """``model_config`` as keyword arguments for ``google.genai.types.GenerateContentConfig``.

    Maps temperature, max_tokens / max_output_tokens → max_output_tokens, top_p, top_k, seed,
    stop_sequences, and media_resolution ("low"/"medium"/"high" → "MEDIA_RESOLUTION_LOW" ...).
    Other keys are ignored (:data:`KNOWN_IGNORED_MODEL_KEYS`, :func:`ignored_model_config_keys`).
    """
    out: dict[str, Any] = {}
    for key, value in t.model_config.items():
        if value is None:
            continue
        if key in _GEN_FIELDS:
            target, conv = _GEN_FIELDS[key]
            try:
                if isinstance(value, bool):
                    raise ValueError
                out[target] = conv(value)
            except (TypeError, ValueError) as exc:
                raise TemplateError(f"template '{t.name}': model_config {key} must be a number, got {value!r}") from exc
        elif key == "media_resolution":
            v = str(value).strip()
            mapped = _MEDIA_RESOLUTION.get(v.lower()) or (v.upper() if v.upper() in _MEDIA_RESOLUTION.values() else None)
            if mapped is None:
                raise TemplateError(
                    f"template '{t.name}': media_resolution must be low, medium or high, got {value!r}"
                )
            out["media_resolution"] = mapped
        elif key == "stop_sequences":
            seqs = [value] if isinstance(value, str) else value
            if not isinstance(seqs, list):
                raise TemplateError(f"template '{t.name}': stop_sequences must be a list of strings")
            out["stop_sequences"] = [str(s) for s in seqs]
    if "temperature" in out and not 0.0 <= out["temperature"] <= 2.0:
        raise TemplateError(f"template '{t.name}': temperature must be between 0 and 2")
    if "max_output_tokens" in out and out["max_output_tokens"] < 1:
        raise TemplateError(f"template '{t.name}': max_tokens must be at least 1")
    return out


def ignored_model_config_keys(t: Template) -> list[str]:
    """model_config keys :func:`generation_config` does not send (for a warning, not an error)."""
    used = set(_GEN_FIELDS) | {"media_resolution", "stop_sequences"}
    return [k for k in t.model_config if k not in used]
