from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest
import yaml

from gsvr_batch.errors import UsageError
from gsvr_batch.formats import (
    FORMATTERS,
    FRONT_MATTER_FIELDS,
    LessonMeta,
    extract_timestamps,
    get_formatter,
    link_timestamps,
    markdown_to_html,
    split_sections,
    youtube_id,
)

VID = "dQw4w9WgXcQ"
YT = f"https://youtu.be/{VID}"

LESSON = f"""# Cells: "the basics" <script>alert('x')</script>

Intro paragraph with **bold**, *italic*, `code <b>` and a [reference](https://example.org/page?a=1&b=2).

## Lesson Structure
1. **00:00** Welcome
2. [01:30] Membranes
   - detail at 1:02:03
   - already linked [02:05](https://www.youtube.com/watch?v={VID}&t=125s)
3. Summary

## Key Timestamps
| Time | Moment |
|---|---|
| 03:10 | Mitochondria |

```
# not a heading 04:00
```

### [05:00] 讲者
中文内容 🎓，比例 16:9，时间 10:30am 不是时间戳。
"""


def meta(**kw) -> LessonMeta:
    base = dict(
        title='Cells: "the basics" — 细胞 🎓',
        source=YT,
        source_url=YT,
        duration=754.4,
        template="comprehensive_lesson",
        template_version="2.0",
        model="gemini-2.5-flash",
        model_version="gemini-2.5-flash-001",
        tokens={"prompt_tokens": 1200, "candidates_tokens": 800, "total_tokens": 2000},
        created="2026-03-01T09:30:00Z",
        backend="sandbox",
        tags=["biology", "yes", "week: 1"],
        task_id="t-0001",
        cost_usd=0.0012,
    )
    base.update(kw)
    return LessonMeta(**base)


def split_front_matter(doc: str) -> tuple[dict, str]:
    assert doc.startswith("---\n")
    head, body = doc[4:].split("\n---\n\n", 1)
    return yaml.safe_load(head), body


# ---------------------------------------------------------------- helpers


@pytest.mark.parametrize("url", [
    f"https://www.youtube.com/watch?v={VID}", f"https://youtube.com/watch?feature=x&v={VID}&t=3",
    f"https://youtu.be/{VID}?t=10", f"https://m.youtube.com/shorts/{VID}", f"https://www.youtube.com/embed/{VID}",
    f"https://www.youtube.com/live/{VID}",
])
def test_youtube_id(url: str) -> None:
    assert youtube_id(url) == VID


@pytest.mark.parametrize("url", [None, "", "/videos/a.mp4", "https://example.org/watch?v=dQw4w9WgXcQ", "https://vimeo.com/123"])
def test_youtube_id_none(url) -> None:
    assert youtube_id(url) is None


def test_link_timestamps_forms_and_no_double_link() -> None:
    out = link_timestamps(LESSON, VID)
    link = f"https://www.youtube.com/watch?v={VID}&t="
    assert f"**[00:00]({link}0s)** Welcome" in out
    assert f"2. [01:30]({link}90s) Membranes" in out  # [MM:SS] → one link, not [[..]] (an Obsidian wikilink)
    assert f"[1:02:03]({link}3723s)" in out
    assert f"[02:05]({link}125s)" in out and "[[02:05]" not in out and out.count(f"{link}125s") == 1
    assert f"| [03:10]({link}190s) |" in out
    assert "# not a heading 04:00" in out  # code block untouched
    assert f"### [05:00]({link}300s) 讲者" in out
    assert "16:9" in out and "10:30am" in out and f"{link}630s" not in out
    assert "https://example.org/page?a=1&b=2" in out  # URLs untouched


def test_sections_and_timestamps() -> None:
    sections = split_sections(LESSON)
    assert [(s["heading"], s["level"]) for s in sections] == [
        ("Cells: \"the basics\" <script>alert('x')</script>", 1),
        ("Lesson Structure", 2),
        ("Key Timestamps", 2),
        ("[05:00] 讲者", 3),
    ]
    assert "# not a heading" in sections[2]["text"]
    ts = extract_timestamps(LESSON, VID)
    assert [t["seconds"] for t in ts] == [0, 90, 3723, 125, 190, 300]
    assert ts[2]["time"] == "01:02:03" and ts[2]["context"] == "detail at 1:02:03"
    assert ts[1]["url"].endswith("&t=90s")
    assert "url" not in extract_timestamps("at 01:00", None)[0]


# ---------------------------------------------------------------- Markdown


def test_markdown_front_matter_round_trips() -> None:
    m = meta()
    doc = get_formatter("md").render(LESSON, m).decode("utf-8")
    fm, body = split_front_matter(doc)
    for key in FRONT_MATTER_FIELDS:
        assert key in fm, key
    assert fm["title"] == m.title  # quotes, colon, dash, Chinese, emoji survive
    assert "细胞 🎓" in doc  # readable, not \u-escaped
    assert fm["tags"] == ["biology", "yes", "week: 1"]  # "yes" stays a string
    assert fm["created"] == "2026-03-01T09:30:00Z" and isinstance(fm["created"], str)
    assert fm["template_version"] == "2.0" and fm["duration"] == 754.4
    assert fm["tokens"] == m.tokens and fm["backend"] == "sandbox"
    assert fm["task_id"] == "t-0001" and fm["cost_usd"] == pytest.approx(0.0012)
    assert f"[01:30](https://www.youtube.com/watch?v={VID}&t=90s)" in body
    assert body.endswith("不是时间戳。\n")


def test_markdown_non_youtube_source_keeps_timestamps_plain() -> None:
    m = meta(source="/videos/lecture 1.mp4", source_url=None, backend="gemini", cost_usd=None, task_id=None)
    doc = get_formatter("md").render("## Part\nAt 01:30 we start.", m).decode()
    fm, body = split_front_matter(doc)
    assert fm["source_url"] is None and fm["backend"] == "gemini"
    assert "cost_usd" not in fm and "task_id" not in fm
    assert body == "## Part\nAt 01:30 we start.\n"


# ---------------------------------------------------------------- JSON


def test_json_round_trips() -> None:
    m = meta()
    data = json.loads(get_formatter("json").render(LESSON, m))
    assert set(data) == {"meta", "lesson_markdown", "sections", "timestamps"}
    assert data["meta"] == m.to_dict()
    assert data["meta"]["backend"] == "sandbox" and data["meta"]["title"] == m.title
    assert data["lesson_markdown"] == LESSON
    assert data["sections"][1] == {
        "heading": "Lesson Structure",
        "level": 2,
        "text": LESSON.split("## Lesson Structure\n", 1)[1].split("\n\n## Key")[0],
    }
    assert data["timestamps"][0] == {"time": "00:00", "seconds": 0, "context": "00:00 Welcome",
                                     "url": f"https://www.youtube.com/watch?v={VID}&t=0s"}


# ---------------------------------------------------------------- HTML


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k in ("href", "src", "action", "srcset", "poster", "data"):
                self.refs.append((tag, k, v or ""))


def test_html_standalone_escaped_and_offline() -> None:
    m = meta()
    page = get_formatter("html").render(LESSON, m).decode("utf-8")
    p = _Refs()
    p.feed(page)
    # No scripts, no external resources: nothing is loaded, only links a reader may click.
    assert "script" not in p.tags and "link" not in p.tags and "img" not in p.tags
    assert not re.search(r"url\(|@import", page)
    assert all(k == "href" and t == "a" for t, k, _ in p.refs)
    hrefs = [v for _, _, v in p.refs]
    allowed = (YT, f"https://www.youtube.com/watch?v={VID}&t=", "https://example.org/page?a=1&b=2")
    assert all(h.startswith(allowed) for h in hrefs), hrefs
    assert YT in hrefs  # the source link
    # Escaping: the model's <script> and the title's quotes are text, not markup.
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page or "&lt;script&gt;alert('x')&lt;/script&gt;" in page
    assert "<script" not in page
    assert "<title>Cells: &quot;the basics&quot; — 细胞 🎓</title>" in page
    assert '<meta name="gsvr:backend" content="sandbox">' in page and "Sandbox output" in page
    # Structure rendered from the Markdown.
    assert "<h2>Lesson Structure</h2>" in page
    assert "<strong>bold</strong>" in page and "<em>italic</em>" in page and "<code>code &lt;b&gt;</code>" in page
    assert f'<a class="ts" href="https://www.youtube.com/watch?v={VID}&amp;t=90s">01:30</a>' in page
    assert "<table>" in page and "<th>Time</th>" in page
    assert "<pre><code># not a heading 04:00</code></pre>" in page
    assert page.count("t=125s") == 1  # already-linked timestamp not linked again


def test_markdown_to_html_lists_and_unsafe_links() -> None:
    out = markdown_to_html("1. one\n2. two\n   - a\n   - b\n3. three\n\n- x\n\n- y\n\n5. five")
    assert out == (
        "<ol>\n<li>one</li>\n<li>two\n<ul>\n<li>a</li>\n<li>b</li>\n</ul>\n</li>\n<li>three</li>\n</ol>\n"
        "<ul>\n<li>x</li>\n<li>y</li>\n</ul>\n"
        '<ol start="5">\n<li>five</li>\n</ol>'
    )
    out = markdown_to_html('[x](javascript:alert(1)) <img src=x onerror="y"> > quote')
    assert "javascript" not in out and "<img" not in out and "&lt;img" in out
    assert markdown_to_html("> quoted **b**") == "<blockquote><p>quoted <strong>b</strong></p></blockquote>"
    assert markdown_to_html("At 01:30.") == '<p>At <span class="ts">01:30</span>.</p>'


def test_html_without_youtube_has_no_links_but_source() -> None:
    m = meta(source="/v/a.mp4", source_url=None, backend="gemini")
    page = get_formatter("html").render("## A\nAt 01:30.", m).decode()
    p = _Refs()
    p.feed(page)
    assert p.refs == []
    assert '<meta name="gsvr:backend" content="gemini">' in page and "Sandbox output" not in page


# ---------------------------------------------------------------- registry


def test_get_formatter() -> None:
    assert set(FORMATTERS) == {"md", "json", "html"}
    for name, f in FORMATTERS.items():
        assert f.name == name and f.extension == "." + name
        assert get_formatter(name.upper()) is f
    assert get_formatter("markdown") is FORMATTERS["md"]
    with pytest.raises(UsageError, match=r"unknown output format 'pdf'; available: md, json, html"):
        get_formatter("pdf")


def test_render_is_deterministic() -> None:
    m = meta()
    for f in FORMATTERS.values():
        assert f.render(LESSON, m) == f.render(LESSON, m)
