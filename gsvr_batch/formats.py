"""Output formats: the model's Markdown plus metadata → the bytes written to disk.

A format is one class with ``name``, ``extension`` and ``render(text, meta) -> bytes``;
register it in :data:`FORMATTERS`. Formatting is pure (no I/O, no clock: ``meta.created`` is
given), so the same inputs always give the same bytes and the output's sha256 is reproducible.

- ``md``: YAML front matter (Obsidian / static-site readable) + the text; YouTube timestamps linked.
- ``json``: ``{"meta", "lesson_markdown", "sections", "timestamps"}`` for machines.
- ``html``: one standalone page (inline CSS, no scripts, no external resources), from a small
  Markdown converter that handles what the templates ask for.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

import yaml

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
    tokens: dict[str, int] = field(default_factory=dict)  # prompt_tokens, candidates_tokens, total_tokens
    created: str = ""  # ISO-8601 UTC, e.g. "2026-11-28T15:00:00Z"
    backend: str = "gemini"  # "gemini" | "sandbox"
    tags: list[str] = field(default_factory=list)
    task_id: str | None = None
    cost_usd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["duration"] = _round_duration(self.duration)
        d["tags"] = [str(t) for t in self.tags]
        d["tokens"] = {str(k): int(v) for k, v in (self.tokens or {}).items() if isinstance(v, (int, float))}
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

FRONT_MATTER_FIELDS = (
    "title", "source", "source_url", "duration", "template", "template_version", "model",
    "model_version", "tokens", "created", "backend", "tags",
)


class MarkdownFormatter:
    name = "md"
    extension = ".md"

    def front_matter(self, meta: LessonMeta) -> dict[str, Any]:
        d = meta.to_dict()
        fm = {k: d[k] for k in FRONT_MATTER_FIELDS}
        if meta.task_id:
            fm["task_id"] = meta.task_id
        if meta.cost_usd is not None:
            fm["cost_usd"] = round(float(meta.cost_usd), 6)
        return fm

    def render(self, text: str, meta: LessonMeta) -> bytes:
        # safe_dump quotes whatever YAML would misread (colons, leading quotes, dates, "yes"),
        # and allow_unicode keeps Chinese and emoji readable instead of \u escapes.
        header = yaml.safe_dump(
            self.front_matter(meta), allow_unicode=True, sort_keys=False, default_flow_style=False, width=10_000
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


_SAFE_URL_RE = re.compile(r"^(https?://|mailto:|#)", re.IGNORECASE)
_LIST_RE = re.compile(r"^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$")
_TABLE_SEP_RE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_HR_RE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")


class _Inline:
    """Inline Markdown → HTML. Everything not produced by a rule is HTML-escaped."""

    def __init__(self, video_id: str | None) -> None:
        self.video_id = video_id

    def __call__(self, text: str) -> str:
        slots: list[str] = []

        def keep(fragment: str) -> str:
            slots.append(fragment)
            return f"\x00{len(slots) - 1}\x00"

        def link(label_html: str, url: str, cls: str = "") -> str:
            if not _SAFE_URL_RE.match(url):
                return label_html  # javascript:, data: and relative paths: text only
            c = f' class="{cls}"' if cls else ""
            return f'<a{c} href="{html.escape(url, quote=True)}">{label_html}</a>'

        text = text.replace("\x00", "")
        text = re.sub(r"`([^`]+)`", lambda m: keep(f"<code>{html.escape(m.group(1))}</code>"), text)
        text = re.sub(
            r"!?\[([^\]]*)\]\(\s*(" + _URL_IN_PARENS + r")(?:\s+\"[^\"]*\")?\s*\)",
            lambda m: keep(link(self._emphasis(html.escape(m.group(1))), m.group(2))),
            text,
        )
        text = re.sub(r"<(https?://[^>\s]+)>", lambda m: keep(link(html.escape(m.group(1)), m.group(1))), text)
        text = re.sub(r"https?://[^\s<>)\]]+", lambda m: keep(link(html.escape(m.group(0)), m.group(0))), text)

        def ts(m: re.Match[str]) -> str:
            label = html.escape(_ts_text(m))
            if self.video_id:
                return keep(link(label, youtube_link(self.video_id, _ts_seconds(m)), "ts"))
            return keep(f'<span class="ts">{label}</span>')

        text = TIMESTAMP_RE.sub(ts, text)
        text = self._emphasis(html.escape(text, quote=False))
        return re.sub(r"\x00(\d+)\x00", lambda m: slots[int(m.group(1))], text)

    @staticmethod
    def _emphasis(s: str) -> str:
        s = re.sub(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", r"<strong>\1</strong>", s)
        s = re.sub(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)", r"<strong>\1</strong>", s)
        s = re.sub(r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])", r"<em>\1</em>", s)
        s = re.sub(r"(?<![\w_])_(?=[^\s_])(.+?)(?<=[^\s_])_(?![\w_])", r"<em>\1</em>", s)
        return s


def markdown_to_html(text: str, video_id: str | None = None) -> str:
    """A small Markdown → HTML converter for what the templates produce.

    Handles ATX headings, paragraphs, bullet and numbered lists (nested by indentation),
    blockquotes, fenced code, horizontal rules, simple pipe tables, and inline bold, italic,
    code, links and timestamps. Raw HTML in the text is escaped, never passed through.
    """
    inline = _Inline(video_id)
    lines = text.replace("\r\n", "\n").split("\n")
    out: list[str] = []
    para: list[str] = []
    i = 0

    def flush_para() -> None:
        if para:
            out.append("<p>" + "<br>\n".join(inline(p.strip()) for p in para) + "</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if _FENCE_RE.match(line):
            flush_para()
            fence = stripped[:3]
            code: list[str] = []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence):
                code.append(lines[i])
                i += 1
            out.append("<pre><code>" + html.escape("\n".join(code)) + "</code></pre>")
            i += 1
            continue
        if not stripped:
            flush_para()
            i += 1
            continue
        m = _HEADING_RE.match(line)
        if m:
            flush_para()
            level = len(m.group(1))
            out.append(f"<h{level}>{inline(m.group(2))}</h{level}>")
            i += 1
            continue
        if _HR_RE.match(line):
            flush_para()
            out.append("<hr>")
            i += 1
            continue
        if "|" in stripped and i + 1 < len(lines) and _TABLE_SEP_RE.match(lines[i + 1]) and "-" in lines[i + 1]:
            flush_para()
            rows = [lines[i]]
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                rows.append(lines[i])
                i += 1
            out.append(_table(rows, inline))
            continue
        if stripped.startswith(">"):
            flush_para()
            quote: list[str] = []
            while i < len(lines) and lines[i].strip().startswith(">"):
                quote.append(re.sub(r"^\s*>\s?", "", lines[i]))
                i += 1
            out.append("<blockquote>" + markdown_to_html("\n".join(quote), video_id) + "</blockquote>")
            continue
        if _LIST_RE.match(line) and not para:
            block: list[str] = []
            while i < len(lines):
                cur = lines[i]
                if _LIST_RE.match(cur) or (cur.strip() and cur[:1] in (" ", "\t") and block):
                    block.append(cur)
                    i += 1
                elif not cur.strip() and i + 1 < len(lines) and (
                    _LIST_RE.match(lines[i + 1]) or lines[i + 1][:1] in (" ", "\t")
                ) and lines[i + 1].strip():
                    i += 1  # a blank line between items keeps the list going
                else:
                    break
            out.append(_list(block, inline))
            continue
        para.append(line)
        i += 1
    flush_para()
    return "\n".join(out)


def _indent(s: str) -> int:
    return len(s.expandtabs(4)) - len(s.expandtabs(4).lstrip())


def _list(block: list[str], inline: _Inline) -> str:
    """Nested list from lines; deeper indentation opens a sub-list, continuation lines join the item."""
    out: list[str] = []
    stack: list[tuple[int, str]] = []  # open lists: (indent, "ul" | "ol")

    def open_list(ind: int, kind: str, marker: str) -> None:
        start = ""
        if kind == "ol" and int(marker[:-1]) != 1:
            start = f' start="{int(marker[:-1])}"'
        out.append(f"<{kind}{start}>")
        stack.append((ind, kind))

    for line in block:
        m = _LIST_RE.match(line)
        if not m:
            # A continuation line belongs to the item before it.
            if out and out[-1].endswith("</li>"):
                out[-1] = out[-1][: -len("</li>")] + " " + inline(line.strip()) + "</li>"
            continue
        ind, marker = _indent(m.group(1)), m.group(2)
        kind = "ol" if marker[0].isdigit() else "ul"
        if stack and ind > stack[-1][0] and out and out[-1].endswith("</li>"):
            out[-1] = out[-1][: -len("</li>")]  # the sub-list goes inside the previous item
            open_list(ind, kind, marker)
        else:
            while len(stack) > 1 and ind < stack[-1][0]:
                out.append(f"</{stack.pop()[1]}>")
                out.append("</li>")  # closes the item the sub-list was nested in
            if stack and stack[-1][1] != kind:
                out.append(f"</{stack.pop()[1]}>")
            if not stack or stack[-1][1] != kind:
                open_list(ind, kind, marker)
        out.append(f"<li>{inline(m.group(3))}</li>")
    while stack:
        out.append(f"</{stack.pop()[1]}>")
        if stack:
            out.append("</li>")
    return "\n".join(out)


def _table(rows: list[str], inline: _Inline) -> str:
    def cells(row: str) -> list[str]:
        row = row.strip()
        if row.startswith("|"):
            row = row[1:]
        if row.endswith("|"):
            row = row[:-1]
        return [c.strip() for c in row.split("|")]

    head = "".join(f"<th>{inline(c)}</th>" for c in cells(rows[0]))
    body = "\n".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in cells(r)) + "</tr>" for r in rows[1:])
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


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
            f'<meta name="gsvr:{k}" content="{e("" if v is None else (json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else str(v)), quote=True)}">'
            for k, v in d.items()
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
