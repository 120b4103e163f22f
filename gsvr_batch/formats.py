"""Output formats: the model's Markdown plus metadata → the bytes written to disk.

A format is one class with ``name``, ``extension`` and ``render(text, meta) -> bytes``;
register it in :data:`FORMATTERS`. Formatting is pure (no I/O, no clock: ``meta.created`` is
given), so the same inputs always give the same bytes and the output's sha256 is reproducible.

- ``md``: YAML front matter (Obsidian / static-site readable) + the text; YouTube timestamps linked.
- ``json``: ``{"meta", "lesson_markdown", "sections", "timestamps"}`` for machines.
- ``html``: one standalone page (inline CSS, no scripts, no external resources), the Markdown
  rendered by markdown-it-py (CommonMark + GFM tables/strikethrough) and sanitised (see
  :func:`markdown_to_html`); the metadata sits in ``<meta name="gsvr:…">`` tags in ``<head>``.

Every format carries the task's metadata (task id, attempt nonce, tokens, …) so that an output found
on disk after a crash can be identified and adopted: :func:`read_output_meta` reads it back from any
of the three, cheaply (a bounded read) and without raising on foreign or damaged files.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import json
import math
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlparse

import yaml

if TYPE_CHECKING:
    from markdown_it import MarkdownIt
    from markdown_it.rules_core import StateCore
    from markdown_it.token import Token

from .errors import UsageError


@dataclass
class LessonMeta:
    title: str
    source: str
    source_url: str | None = None  # for YouTube / http(s) sources
    duration: float | None = None  # seconds
    template: str = ""
    template_version: str = ""
    model: str = ""
    model_version: str | None = None
    # prompt_tokens, candidates_tokens, total_tokens; also cached_tokens / thoughts_tokens when the
    # API reports them (non-numeric entries such as per-modality details are dropped by to_dict).
    tokens: dict[str, int] = field(default_factory=dict)
    created: str = ""  # ISO-8601 UTC, e.g. "2026-11-28T15:00:00Z"
    backend: str = "gemini"  # "gemini" | "sandbox"
    tags: list[str] = field(default_factory=list)
    task_id: str | None = None
    cost_usd: float | None = None
    # The nonce of the attempt that paid for this answer: after a crash the manager adopts an output
    # on disk only if it carries the task id *and* the attempt it journaled (never an older file).
    attempt_id: str | None = None
    truncated: bool = False  # the answer was cut at max_output_tokens (finishReason MAX_TOKENS)
    media_resolution: str | None = None  # as sent, e.g. "MEDIA_RESOLUTION_LOW"; None = API default
    strategy: str | None = None  # context strategy: "full" | "low" | "clips"
    clips: int | None = None  # how many clips were merged (strategy "clips")
    # What the job asked for when this was made (the manager's fingerprint: model, template version,
    # parameters, format, context): a run whose journal has no record of the output adopts it only
    # if this still matches (reconcile.adopt_earlier_output).
    fingerprint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["duration"] = _round_duration(self.duration)
        d["tags"] = [str(t) for t in self.tags]
        d["tokens"] = {
            str(k): int(v) for k, v in (self.tokens or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        d["truncated"] = bool(self.truncated)
        d["clips"] = None if self.clips is None else int(self.clips)
        return d


class Formatter(Protocol):
    name: str
    extension: str  # with the dot: ".md"

    def render(self, text: str, meta: LessonMeta) -> bytes: ...


# ---------------------------------------------------------------- timestamps and YouTube

_YT_ID = r"([A-Za-z0-9_-]{11})"
_YT_PATTERNS = [
    re.compile(r"(?:^|[/.])youtu\.be/" + _YT_ID),
    re.compile(r"youtube(?:-nocookie)?\.com/(?:embed|shorts|live|v)/" + _YT_ID),
]

#: ``[MM:SS]``, ``MM:SS``, ``H:MM:SS`` / ``HH:MM:SS`` not glued to other digits, colons or letters.
#: Group 1 is the opening bracket (if any) and the conditional ``(?(1)\])`` then requires its partner.
TIMESTAMP_RE = re.compile(
    r"(?<![\w:])(\[)?(?:(\d{1,2}):([0-5]\d):([0-5]\d)|(\d{1,3}):([0-5]\d))(?(1)\])(?![\w:])"
)
# Spans in a line that must not be touched: inline code, Markdown links/images, autolinks, bare URLs.
# A link target may hold one level of parentheses: [x](https://en.wikipedia.org/wiki/A_(b)).
_URL_IN_PARENS = r"(?:[^()\s]|\([^()\s]*\))+"
_PROTECTED_RE = re.compile(
    r"`[^`]*`|!?\[[^\]]*\]\(\s*" + _URL_IN_PARENS + r"(?:\s+\"[^\"]*\")?\s*\)|<https?://[^>]*>|https?://[^\s<>)\]]+"
)
_FENCE_RE = re.compile(r"^\s{0,3}(```|~~~)")


def youtube_id(url: str | None) -> str | None:
    """The 11-character video id of a YouTube URL, or None."""
    if not url:
        return None
    parsed = urlparse(url if "://" in url else "https://" + url)
    host = (parsed.hostname or "").lower()
    if host.endswith("youtube.com") or host.endswith("youtube-nocookie.com"):
        v = parse_qs(parsed.query).get("v")
        if v and re.fullmatch(_YT_ID, v[0]):
            return v[0]
    if host.endswith("youtube.com") or host.endswith("youtube-nocookie.com") or host == "youtu.be":
        for pat in _YT_PATTERNS:
            m = pat.search(host + parsed.path)
            if m:
                return m.group(1)
    return None


def youtube_link(video_id: str, seconds: int) -> str:
    return f"https://www.youtube.com/watch?v={video_id}&t={seconds}s"


def _ts_seconds(m: re.Match[str]) -> int:
    if m.group(2) is not None:
        return int(m.group(2)) * 3600 + int(m.group(3)) * 60 + int(m.group(4))
    return int(m.group(5)) * 60 + int(m.group(6))


def _ts_text(m: re.Match[str]) -> str:
    """The timestamp as written, without brackets."""
    return m.group(0).strip("[]")


def format_time(seconds: int) -> str:
    h, rem = divmod(int(seconds), 3600)
    mm, ss = divmod(rem, 60)
    return f"{h:02d}:{mm:02d}:{ss:02d}" if h else f"{mm:02d}:{ss:02d}"


def _meta_video_id(meta: LessonMeta) -> str | None:
    return youtube_id(meta.source_url) or youtube_id(meta.source)


def _iter_lines_outside_code(text: str):
    """Yield (line, in_code_block) so callers leave fenced code alone."""
    in_code = False
    for line in text.split("\n"):
        if _FENCE_RE.match(line):
            yield line, True
            in_code = not in_code
            continue
        yield line, in_code


def _map_unprotected(line: str, fn) -> str:
    """Apply ``fn`` to the parts of ``line`` that are not code, links or URLs."""
    out: list[str] = []
    pos = 0
    for m in _PROTECTED_RE.finditer(line):
        out.append(fn(line[pos:m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(fn(line[pos:]))
    return "".join(out)


def link_timestamps(text: str, video_id: str) -> str:
    """Turn ``MM:SS`` / ``HH:MM:SS`` / ``[MM:SS]`` into YouTube links at that second.

    ``[01:23]`` becomes ``[01:23](url)`` (not ``[[01:23]](url)``, which Obsidian reads as a
    wiki link). Timestamps already inside a Markdown link, inline code or a code block stay as they are.
    """

    def repl(m: re.Match[str]) -> str:
        return f"[{_ts_text(m)}]({youtube_link(video_id, _ts_seconds(m))})"

    def fix(segment: str) -> str:
        return TIMESTAMP_RE.sub(repl, segment)

    lines = []
    for line, in_code in _iter_lines_outside_code(text):
        lines.append(line if in_code else _map_unprotected(line, fix))
    return "\n".join(lines)


def extract_timestamps(text: str, video_id: str | None = None) -> list[dict[str, Any]]:
    """Every timestamp in the text (outside code) with the line it appears on as context."""
    found: list[dict[str, Any]] = []
    for line, in_code in _iter_lines_outside_code(text):
        if in_code:
            continue
        context = _plain_context(line)
        # Timestamps inside links count too (a model may already link them), but not inside code/URLs.
        scan = re.sub(r"`[^`]*`|https?://[^\s<>)\]]+", lambda m: " " * len(m.group(0)), line)
        for m in TIMESTAMP_RE.finditer(scan):
            secs = _ts_seconds(m)
            item: dict[str, Any] = {"time": format_time(secs), "seconds": secs, "context": context}
            if video_id:
                item["url"] = youtube_link(video_id, secs)
            found.append(item)
    return found


def _plain_context(line: str, limit: int = 240) -> str:
    s = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", line)  # links → their text
    s = re.sub(r"^\s*(#{1,6}\s+|[-*+]\s+|\d+[.)]\s+|>\s*)", "", s)
    s = s.replace("**", "").replace("__", "").replace("`", "").strip().strip("|").strip()
    return s if len(s) <= limit else s[: limit - 1] + "…"


_HEADING_RE = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def split_sections(text: str) -> list[dict[str, Any]]:
    """Sections by Markdown heading: ``[{"heading", "level", "text"}]``.

    Text before the first heading (if any) is a section with heading "" and level 0.
    Headings inside fenced code are not headings.
    """
    sections: list[dict[str, Any]] = []
    heading, level, body = "", 0, []
    for line, in_code in _iter_lines_outside_code(text):
        m = None if in_code else _HEADING_RE.match(line)
        if m:
            if heading or "\n".join(body).strip():
                sections.append({"heading": heading, "level": level, "text": "\n".join(body).strip()})
            heading, level, body = m.group(2), len(m.group(1)), []
        else:
            body.append(line)
    if heading or "\n".join(body).strip():
        sections.append({"heading": heading, "level": level, "text": "\n".join(body).strip()})
    return sections


def _round_duration(d: float | None) -> float | int | None:
    if d is None:
        return None
    r = round(float(d), 1)
    return int(r) if r == int(r) else r


# ---------------------------------------------------------------- Markdown

#: Keys every Markdown front matter has (also what read_output_meta requires to call a file ours).
FRONT_MATTER_FIELDS = (
    "title", "source", "source_url", "duration", "template", "template_version", "model",
    "model_version", "tokens", "created", "backend", "tags",
)


class _FrontMatterDumper(yaml.SafeDumper):
    """safe_dump, except that a string with a line break is written double-quoted with ``\\n``
    escapes: every key stays on one line, so no title can put a ``---`` line (the end of the front
    matter) or a fake key into the header, and line-based readers see one line per key."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if any(c in value for c in "\r\n\x85\u2028\u2029"):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')
    return dumper.represent_str(value)


_FrontMatterDumper.add_representer(str, _represent_str)


class MarkdownFormatter:
    name = "md"
    extension = ".md"

    def front_matter(self, meta: LessonMeta) -> dict[str, Any]:
        d = meta.to_dict()
        fm = {k: d[k] for k in FRONT_MATTER_FIELDS}
        # Optional keys appear only when they say something, so a plain lesson's header stays short.
        if meta.task_id:
            fm["task_id"] = meta.task_id
        if meta.attempt_id:
            fm["attempt_id"] = meta.attempt_id
        if meta.cost_usd is not None:
            fm["cost_usd"] = round(float(meta.cost_usd), 6)
        if meta.truncated:
            fm["truncated"] = True
        for key in ("media_resolution", "strategy", "clips", "fingerprint"):
            if d[key] is not None:
                fm[key] = d[key]
        return fm

    def render(self, text: str, meta: LessonMeta) -> bytes:
        # The safe dumper quotes whatever YAML would misread (colons, leading quotes, dates, "yes"),
        # _FrontMatterDumper keeps line breaks escaped, and allow_unicode keeps Chinese and emoji
        # readable instead of \u escapes.
        header = yaml.dump(
            self.front_matter(meta), Dumper=_FrontMatterDumper, allow_unicode=True, sort_keys=False,
            default_flow_style=False, width=10_000,
        )
        body = text.strip("\n")
        vid = _meta_video_id(meta)
        if vid:
            body = link_timestamps(body, vid)
        return f"---\n{header}---\n\n{body}\n".encode("utf-8")


# ---------------------------------------------------------------- JSON


class JsonFormatter:
    name = "json"
    extension = ".json"

    def render(self, text: str, meta: LessonMeta) -> bytes:
        doc = {
            "meta": meta.to_dict(),
            "lesson_markdown": text,
            "sections": split_sections(text),
            "timestamps": extract_timestamps(text, _meta_video_id(meta)),
        }
        return (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


# ---------------------------------------------------------------- HTML

#: Links the HTML page may carry. Everything else (javascript:, data:, vbscript:, file:, relative
#: paths that would resolve next to the output file) is rendered as its label only.
_SAFE_URL_RE = re.compile(r"^(https?://|mailto:|#)", re.IGNORECASE)
#: Bare URLs in text become links, as the old converter did (same pattern as ``link_timestamps``'s
#: protected spans); trailing sentence punctuation is left outside the link, as GFM's autolinks do.
_BARE_URL_RE = re.compile(r"https?://[^\s<>)\]]+")
_URL_TRAILING_PUNCT = ".,:;!?'\"*_~"


def _text_token(content: str) -> Token:
    from markdown_it.token import Token

    tok = Token("text", "", 0)
    tok.content = content
    return tok


def _link_tokens(href: str, label: str, cls: str = "") -> list[Token]:
    from markdown_it.token import Token

    opening = Token("link_open", "a", 1)
    # class before href: the attribute order is part of the markup users (and tests) see.
    opening.attrs = {"class": cls, "href": href} if cls else {"href": href}
    return [opening, _text_token(label), Token("link_close", "a", -1)]


def _timestamp_tokens(m: re.Match[str], video_id: str | None) -> list[Token]:
    label = _ts_text(m)
    if video_id:
        return _link_tokens(youtube_link(video_id, _ts_seconds(m)), label, "ts")
    from markdown_it.token import Token

    # Not a link (nothing to seek in a local file), but still marked up so it reads as a time.
    opening = Token("ts_open", "span", 1)
    opening.attrs = {"class": "ts"}
    return [opening, _text_token(label), Token("ts_close", "span", -1)]


def _plain_text_tokens(text: str, video_id: str | None) -> list[Token]:
    """Bare URLs → links; timestamps outside them → YouTube links (or marked spans)."""
    out: list[Token] = []
    urls: list[tuple[int, int]] = []
    for m in _BARE_URL_RE.finditer(text):
        end = m.end()
        while end > m.start() and text[end - 1] in _URL_TRAILING_PUNCT:
            end -= 1
        urls.append((m.start(), end))
    pieces: list[tuple[int, int, list[Token]]] = [
        (s, e, _link_tokens(text[s:e], text[s:e])) for s, e in urls if e > s + len("https://")
    ]
    # Timestamps are matched on the whole text (not per piece) so their look-around sees the real
    # neighbours, then dropped where they fall inside a URL ("…/watch?t=01:30" stays part of the URL).
    for m in TIMESTAMP_RE.finditer(text):
        if not any(s < m.end() and m.start() < e for s, e in urls):
            pieces.append((m.start(), m.end(), _timestamp_tokens(m, video_id)))
    if not pieces:
        return [_text_token(text)]
    pieces.sort(key=lambda p: p[0])
    pos = 0
    for start, end, toks in pieces:
        if start > pos:
            out.append(_text_token(text[pos:start]))
        out.extend(toks)
        pos = end
    if pos < len(text):
        out.append(_text_token(text[pos:]))
    return out


def _sanitise_inline(children: list[Token], video_id: str | None) -> list[Token]:
    """One inline run: unsafe links lose their <a>, images become links, text gets timestamps."""
    out: list[Token] = []
    kept: list[bool] = []  # per open link: was its <a> kept?
    for tok in children:
        if tok.type == "link_open":
            ok = bool(_SAFE_URL_RE.match(str(tok.attrGet("href") or "")))
            kept.append(ok)
            if ok:
                out.append(tok)
        elif tok.type == "link_close":
            if kept.pop() if kept else False:
                out.append(tok)
        elif tok.type == "image":
            # Images are never loaded (a page that fetches a tracker pixel when opened is not
            # "offline"): a safe image becomes a link labelled with its alt text, others just the alt.
            src = str(tok.attrGet("src") or "")
            alt = tok.content or ""
            if _SAFE_URL_RE.match(src) and not kept:
                out.extend(_link_tokens(src, alt or src))
            elif alt:
                out.append(_text_token(alt))
        elif tok.type == "text" and not kept:
            # Inside a link (kept or not) the label stays as written: an already-linked timestamp
            # is not linked again, exactly as link_timestamps leaves [02:05](url) alone.
            out.extend(_plain_text_tokens(tok.content, video_id))
        else:
            out.append(tok)  # code spans, emphasis, breaks: unchanged
    return out


def _gsvr_core_rule(state: StateCore) -> None:
    video_id = state.env.get("gsvr_video_id") if isinstance(state.env, dict) else None
    for tok in state.tokens:
        if tok.type == "inline" and tok.children:
            tok.children = _sanitise_inline(tok.children, video_id)


def _escaped_content(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    # Defence in depth: with html=False the parser never makes raw-HTML tokens; should one ever
    # appear (a plugin, a future option), it is shown as text instead of passed through.
    return html.escape(tokens[idx].content, quote=False)


def _image_as_text(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    # Also defence in depth: _sanitise_inline already replaced every image token.
    return html.escape(tokens[idx].content, quote=False)


def _make_markdown_it() -> MarkdownIt:
    # Imported here: reading an output's front matter (adoption, the foreign-output check at
    # every start) must not pay for the HTML renderer (~20 ms of a 10,000-task rerun's start-up).
    from markdown_it import MarkdownIt

    md = MarkdownIt(
        "commonmark",
        {
            "html": False,  # raw HTML in the model's answer is text, never markup
            "linkify": False,  # bare URLs are linked by _plain_text_tokens (no extra dependency)
            "typographer": False,  # keep the model's quotes and dashes as written
            "xhtmlOut": False,  # <br>, not <br />: the page is HTML5
            # A model writes "**Goal:** …\n**Time:** …" meaning separate lines; the old converter
            # kept them apart with <br>, and so do we (GFM comments do the same).
            "breaks": True,
        },
    ).enable(["table", "strikethrough"])
    # Let every URL parse as a link so an unsafe one can be reduced to its label; markdown-it's
    # own check would instead leave the raw "[x](javascript:…)" source visible on the page.
    md.validateLink = lambda url: True  # type: ignore[method-assign]
    md.core.ruler.push("gsvr_sanitise", _gsvr_core_rule)
    for rule in ("html_inline", "html_block"):
        md.add_render_rule(rule, _escaped_content)
    md.add_render_rule("image", _image_as_text)
    return md


_MD: MarkdownIt | None = None  # built on the first HTML rendering (see _make_markdown_it)


def markdown_to_html(text: str, video_id: str | None = None) -> str:
    """The model's Markdown → an HTML fragment, via markdown-it-py (CommonMark + GFM tables and
    strikethrough), sanitised:

    - raw HTML in the text is escaped, never passed through (so no scripts, iframes, styles);
    - links only to http(s), mailto: and ``#``; any other link (javascript:, data:, relative) is
      rendered as its label alone;
    - images are never loaded: ``![alt](https://…)`` becomes a link labelled *alt* (the URL when
      there is no alt text); an image with an unsafe URL becomes its alt text;
    - bare http(s) URLs become links;
    - ``MM:SS`` / ``H:MM:SS`` / ``[MM:SS]`` become ``<a class="ts">`` links to that second of a
      YouTube video (``video_id``), or ``<span class="ts">`` without one; timestamps in code, in
      URLs and inside existing links are left as written;
    - a single newline inside a paragraph is a line break (``<br>``).
    """
    global _MD
    if _MD is None:
        _MD = _make_markdown_it()
    return _MD.render(text, {"gsvr_video_id": video_id}).rstrip("\n")


_CSS = """
:root { color-scheme: light dark; }
body { font: 16px/1.6 system-ui, -apple-system, "Segoe UI", "Noto Sans", "PingFang SC", "Microsoft YaHei", sans-serif;
       max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #1d1d1f; background: #fff; }
h1, h2, h3, h4 { line-height: 1.25; margin: 1.6em 0 .5em; }
h1 { font-size: 1.9rem; } h2 { font-size: 1.4rem; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
a { color: #0b57d0; } a.ts { font-variant-numeric: tabular-nums; text-decoration: none;
  background: #e8f0fe; padding: 0 .3em; border-radius: 4px; }
span.ts { font-variant-numeric: tabular-nums; background: #eee; padding: 0 .3em; border-radius: 4px; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; font-size: .92em; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; border-radius: 6px; }
pre code { background: none; padding: 0; }
table { border-collapse: collapse; margin: 1em 0; width: 100%; }
th, td { border: 1px solid #ccc; padding: .35em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
blockquote { margin: 1em 0; padding: 0 1em; border-left: 4px solid #ccc; color: #555; }
.meta { font-size: .9rem; color: #555; border: 1px solid #e3e3e3; border-radius: 8px; padding: .6em 1em; }
.meta dl { display: grid; grid-template-columns: max-content 1fr; gap: .15em 1em; margin: 0; }
.meta dt { font-weight: 600; } .meta dd { margin: 0; overflow-wrap: anywhere; }
.banner { background: #fff4ce; border: 1px solid #e0c060; border-radius: 8px; padding: .5em 1em; margin-bottom: 1em; }
.tags span { display: inline-block; background: #eee; border-radius: 10px; padding: 0 .6em; margin-right: .3em; }
@media (prefers-color-scheme: dark) {
  body { color: #e6e6e6; background: #161616; } a { color: #8ab4f8; } a.ts { background: #1f2a3c; }
  code, pre, th, span.ts { background: #242424; } .meta { color: #bbb; border-color: #333; }
  th, td { border-color: #444; } .banner { background: #3a3320; border-color: #6b5a22; }
}
"""


class HtmlFormatter:
    name = "html"
    extension = ".html"

    def render(self, text: str, meta: LessonMeta) -> bytes:
        vid = _meta_video_id(meta)
        e = html.escape
        d = meta.to_dict()
        rows: list[tuple[str, str]] = []
        source_url = meta.source_url or ""
        if source_url and _SAFE_URL_RE.match(source_url):
            rows.append(("Source", f'<a href="{e(source_url, quote=True)}">{e(meta.source)}</a>'))
        else:
            rows.append(("Source", e(meta.source)))
        if meta.duration is not None:
            rows.append(("Duration", e(format_time(int(round(meta.duration))))))
        rows.append(("Template", e(f"{meta.template} {meta.template_version}".strip())))
        rows.append(("Model", e(meta.model + (f" ({meta.model_version})" if meta.model_version else ""))))
        if meta.tokens:
            rows.append(("Tokens", e(", ".join(f"{k}: {v}" for k, v in d["tokens"].items()))))
        if meta.cost_usd is not None:
            rows.append(("Cost", e(f"${meta.cost_usd:.4f}")))
        rows.append(("Backend", e(meta.backend)))
        rows.append(("Created", e(meta.created)))
        meta_tags = "\n".join(
            f'<meta name="gsvr:{k}" content="{_html_meta_content(v)}">' for k, v in d.items()
        )
        banner = (
            '<div class="banner">Sandbox output: produced by the offline test server, not by Gemini.</div>\n'
            if meta.backend == "sandbox" else ""
        )
        tags = ""
        if meta.tags:
            tags = '<p class="tags">' + "".join(f"<span>{e(t)}</span>" for t in d["tags"]) + "</p>\n"
        dl = "\n".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
        page = f"""<!DOCTYPE html>
<html lang="{_lang(text)}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="gsvr-batch">
{meta_tags}
<title>{e(meta.title)}</title>
<style>{_CSS}</style>
</head>
<body>
{banner}<header class="meta">
<dl>
{dl}
</dl>
{tags}</header>
<main>
{markdown_to_html(text, vid)}
</main>
</body>
</html>
"""
        return page.encode("utf-8")


def _html_meta_content(value: Any) -> str:
    """One metadata value as an escaped ``content`` attribute (read back by read_output_meta):
    None → "", bool → true/false, dict/list → JSON, anything else → str. Line breaks become
    character references so every tag stays on one line."""
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = str(value)
    return html.escape(text, quote=True).replace("\r", "&#13;").replace("\n", "&#10;")


def _lang(text: str) -> str:
    cjk = len(re.findall(r"[\u4e00-\u9fff]", text))
    return "zh-Hans" if cjk > len(text) * 0.1 else "en"


# ---------------------------------------------------------------- registry

FORMATTERS: dict[str, Formatter] = {
    "md": MarkdownFormatter(),
    "json": JsonFormatter(),
    "html": HtmlFormatter(),
}


def get_formatter(name: str) -> Formatter:
    """The formatter for ``name`` ("md", "json", "html"); :class:`UsageError` listing them if unknown."""
    key = (name or "").lower().lstrip(".")
    if key == "markdown":
        key = "md"
    try:
        return FORMATTERS[key]
    except KeyError:
        raise UsageError(f"unknown output format {name!r}; available: {', '.join(FORMATTERS)}") from None


# ---------------------------------------------------------------- reading an output's metadata back

#: How much of an md / html output is read to find its metadata: the front matter / <head> is a few
#: KiB; a huge (or hostile, or not-ours) file is never read whole.
META_READ_LIMIT = 64 * 1024
#: A JSON output holds the lesson two or three times over (markdown, sections, timestamp contexts):
#: even a 65k-token answer stays well under this. Anything larger is not one of ours.
JSON_READ_LIMIT = 8 * 1024 * 1024

#: Keys an output of ours always carried (every version): a file without them is someone else's.
_REQUIRED_META = ("title", "source", "template", "model", "created", "backend")
_META_FIELDS = {f.name: f for f in dataclasses.fields(LessonMeta)}
_STR_FIELDS = ("title", "source", "template", "template_version", "model", "created", "backend")
_OPT_STR_FIELDS = ("source_url", "model_version", "task_id", "attempt_id", "media_resolution", "strategy",
                   "fingerprint")
_OPT_NUM_FIELDS = ("duration", "cost_usd")


class _Malformed(Exception):
    """A metadata value of the wrong type: the file is not a readable output of ours."""


def read_output_meta(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The metadata an output file of ours carries, or None.

    Works on all three formats (the format is recognised from the content, not the file name):
    Markdown front matter, the JSON ``meta`` object, the HTML ``<meta name="gsvr:…">`` tags. The
    result has every :class:`LessonMeta` field (``task_id``, ``attempt_id``, ``tokens``, ``model``,
    ``model_version``, ``duration``, ``template``, ``template_version``, ``truncated``, ``strategy``,
    ``clips``, ``created``, ``backend``, …; a field an older output lacks has its default) plus
    ``"format"``: ``"md"`` | ``"json"`` | ``"html"``. Values are normalised as ``LessonMeta.to_dict``
    gives them (``tokens`` a ``{str: int}`` dict, ``truncated`` a bool, ``clips`` an int or None).

    None when the file is missing, unreadable, not a regular file, not ours (no front matter / meta
    tags of ours) or malformed; it never raises for what a file contains. At most
    :data:`META_READ_LIMIT` bytes of an md / html file are read and at most :data:`JSON_READ_LIMIT`
    of a JSON one, so a multi-GB file costs one small read.
    """
    try:
        # O_NONBLOCK: a FIFO planted at an output path must not hang the manager in open().
        fd = os.open(os.fspath(path), os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError, TypeError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = _read_up_to(fd, META_READ_LIMIT)
        if data.startswith((b"---\n", b"---\r\n")):
            raw, fmt = _md_meta(data), "md"
        elif data[:64].lstrip().lower().startswith((b"<!doctype html", b"<html")):
            raw, fmt = _html_meta(data), "html"
        elif data[:64].lstrip().startswith(b"{"):
            # Only a JSON output is read past the first 64 KiB, and only up to its own cap.
            data += _read_up_to(fd, JSON_READ_LIMIT + 1 - len(data))
            raw, fmt = _json_meta(data), "json"
        else:
            return None
        if raw is None:
            return None
        meta = _normalise_meta(raw, from_html=fmt == "html")
        if meta is None:
            return None
        meta["format"] = fmt
        return meta
    except (OSError, _Malformed, ValueError, TypeError, UnicodeError, yaml.YAMLError, RecursionError, MemoryError):
        return None
    finally:
        os.close(fd)


def _read_up_to(fd: int, limit: int) -> bytes:
    """Up to ``limit`` more bytes (fewer only at the end of the file)."""
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1024 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


_FM_END_RE = re.compile(rb"\r?\n---[ \t]*\r?\n")


def _md_meta(data: bytes) -> dict[str, Any] | None:
    first = data.index(b"\n")
    m = _FM_END_RE.search(data, first)
    if m is None:
        return None  # no end of front matter within the read limit
    loaded = yaml.safe_load(data[first + 1:m.start()].decode("utf-8"))
    return loaded if isinstance(loaded, dict) else None


class _HeadMeta(HTMLParser):
    """Collects ``<meta name=… content=…>`` until the head ends."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.meta: dict[str, str] = {}
        self.done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.done:
            return
        if tag == "body":
            self.done = True
        elif tag == "meta":
            a = dict(attrs)
            name, content = a.get("name"), a.get("content")
            if name and content is not None and name not in self.meta:  # first one wins
                self.meta[name] = content

    def handle_endtag(self, tag: str) -> None:
        if tag == "head":
            self.done = True


def _html_meta(data: bytes) -> dict[str, Any] | None:
    end = data.lower().find(b"</head>")
    if end < 0:
        return None  # no complete <head> within the read limit
    parser = _HeadMeta()
    parser.feed(data[:end + len(b"</head>")].decode("utf-8"))
    parser.close()
    if parser.meta.get("generator") != "gsvr-batch":
        return None
    return {k[len("gsvr:"):]: v for k, v in parser.meta.items() if k.startswith("gsvr:")}


def _json_meta(data: bytes) -> dict[str, Any] | None:
    if len(data) > JSON_READ_LIMIT:
        return None
    doc = json.loads(data.decode("utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get("meta"), dict) or "lesson_markdown" not in doc:
        return None
    return doc["meta"]


def _as_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # a hand-edited front matter may have lost its quotes
    if isinstance(value, _dt.datetime):  # ditto, for "created"
        if value.tzinfo is not None and value.utcoffset() == _dt.timedelta(0):
            return value.replace(tzinfo=None).isoformat() + "Z"
        return value.isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    raise _Malformed(f"expected a string, got {type(value).__name__}")


def _as_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Malformed(f"expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise _Malformed("not a finite number")
    return float(value)


def _from_html(key: str, text: str) -> Any:
    """Undo _html_meta_content for one field, by the field's type."""
    if key in _STR_FIELDS:
        return text
    if key in _OPT_STR_FIELDS:
        return text or None
    if key in _OPT_NUM_FIELDS:
        return float(text) if text else None
    if key == "clips":
        return int(text) if text else None
    if key == "truncated":
        if text.lower() not in ("true", "false"):
            raise _Malformed("truncated must be true or false")
        return text.lower() == "true"
    if key in ("tokens", "tags"):
        return json.loads(text) if text else None
    return text


def _normalise_meta(raw: dict[Any, Any], *, from_html: bool) -> dict[str, Any] | None:
    if not all(k in raw for k in _REQUIRED_META):
        return None
    if from_html:
        raw = {k: _from_html(k, v) for k, v in raw.items() if k in _META_FIELDS}
    out: dict[str, Any] = {}
    for name in _META_FIELDS:
        value = raw.get(name)
        if name in _STR_FIELDS:
            out[name] = "" if value is None and name not in _REQUIRED_META else _as_str(value)
        elif name in _OPT_STR_FIELDS:
            out[name] = None if value is None else _as_str(value)
        elif name == "duration":
            out[name] = None if value is None else _round_duration(_as_number(value))
        elif name == "cost_usd":
            out[name] = None if value is None else _as_number(value)
        elif name == "tokens":
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise _Malformed("tokens must be a mapping")
            # Same rule as to_dict: numeric entries only.
            out[name] = {str(k): int(_as_number(v)) for k, v in value.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)}
        elif name == "tags":
            if value is None:
                value = []
            if not isinstance(value, list):
                raise _Malformed("tags must be a list")
            out[name] = [_as_str(t) for t in value]
        elif name == "truncated":
            if value is None:
                value = False
            if not isinstance(value, bool):
                raise _Malformed("truncated must be a boolean")
            out[name] = value
        elif name == "clips":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise _Malformed("clips must be a non-negative integer")
            out[name] = value
        else:  # a field added to LessonMeta later: passed through as stored
            out[name] = value
    return out
