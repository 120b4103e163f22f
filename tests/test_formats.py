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
    # CommonMark keeps a code block's last line break inside <code> (the old converter dropped it).
    assert "<pre><code># not a heading 04:00\n</code></pre>" in page
    assert page.count("t=125s") == 1  # already-linked timestamp not linked again


def test_markdown_to_html_lists_and_unsafe_links() -> None:
    out = markdown_to_html("1. one\n2. two\n   - a\n   - b\n3. three\n\n- x\n\n- y\n\n5. five")
    # CommonMark: a list whose items are separated by blank lines is "loose" and its items hold
    # paragraphs (the old converter rendered it tight; that part of the expected markup changed).
    assert out == (
        "<ol>\n<li>one</li>\n<li>two\n<ul>\n<li>a</li>\n<li>b</li>\n</ul>\n</li>\n<li>three</li>\n</ol>\n"
        "<ul>\n<li>\n<p>x</p>\n</li>\n<li>\n<p>y</p>\n</li>\n</ul>\n"
        '<ol start="5">\n<li>five</li>\n</ol>'
    )
    out = markdown_to_html('[x](javascript:alert(1)) <img src=x onerror="y"> > quote')
    assert "javascript" not in out and "<img" not in out and "&lt;img" in out
    # markdown-it puts line breaks between block tags; the old converter did not.
    assert markdown_to_html("> quoted **b**") == "<blockquote>\n<p>quoted <strong>b</strong></p>\n</blockquote>"
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


# ---------------------------------------------------------------- HTML from realistic model Markdown


class _Node:
    def __init__(self, tag: str, attrs: dict, parent: _Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[_Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find_all(self, tag: str) -> list[_Node]:
        found = []
        for c in self.children:
            if isinstance(c, _Node):
                if c.tag == tag:
                    found.append(c)
                found.extend(c.find_all(tag))
        return found

    def kids(self, tag: str) -> list[_Node]:
        return [c for c in self.children if isinstance(c, _Node) and c.tag == tag]


class _Tree(HTMLParser):
    """The element tree of an HTML fragment; fails on unbalanced tags (broken nesting)."""

    VOID = {"br", "hr", "meta", "img", "input", "link"}

    def __init__(self) -> None:
        super().__init__()
        self.root = _Node("root", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        node = _Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in self.VOID:
            self.cur = node

    def handle_endtag(self, tag):
        assert self.cur.tag == tag, f"</{tag}> closes <{self.cur.tag}>"
        self.cur = self.cur.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def tree(fragment: str) -> _Node:
    t = _Tree()
    t.feed(fragment)
    t.close()
    assert t.cur is t.root, "unclosed tags"
    return t.root


# What a real model answer looks like: nested mixed lists, a GFM table with code and emphasis,
# a fenced block with markup in it, emphasis inside link text, hostile bits, Chinese.
MODEL_ANSWER = f"""# 第三讲：细胞膜 — Lesson Plan

**Objective:** understand *selective permeability*.
**Duration:** 45 min

## Lesson Structure

1. Warm-up (00:00–[05:00])
   - Recall last week's quiz
     1. Question on **diffusion** at 02:03
     2. Question on `osmosis` at `03:00`
   - Discuss the [*phospholipid* **bilayer**](https://en.wikipedia.org/wiki/Lipid_bilayer)
2. Main activity
   * Watch 12:34 to 1:02:03
3. Wrap-up

| Concept | Example | Timestamp |
|:--------|:-------:|----------:|
| `ATP` pump | *active* transport | 07:15 |
| ~~Passive~~ **Facilitated** | channel \\| carrier | [08:20] |

```html
<script>alert("pwned")</script>
<p>at 09:00</p>
```

Try [this](javascript:alert(1)) or [that](JaVaScRiPt:alert(2)) or [data](data:text/html,<b>x</b>)
or [relative](../etc/passwd) or [proto-relative](//evil.example/x).
<iframe src="https://evil.example/frame"></iframe>
<img src="https://tracker.example/p.gif" onerror="alert(3)">

![cell diagram](https://upload.example/cell.png) ![](data:image/png;base64,AAAA)
[![badge](https://img.example/b.svg)](https://example.org/project)

Reference: [the video at 09:59](https://www.youtube.com/watch?v={VID}&t=599s), then 10:00, <https://example.org/notes>,
mail <teacher@example.org>, see https://example.org/faq.

讲者在 10:30 总结：**细胞膜**具有*选择透过性*。
"""


def render_model_answer(video_id: str | None = VID) -> tuple[str, _Node]:
    out = markdown_to_html(MODEL_ANSWER, video_id)
    return out, tree(out)


def test_html_nested_lists_three_deep() -> None:
    _, root = render_model_answer()
    top = root.kids("ol")
    assert len(top) == 1
    items = top[0].kids("li")
    assert [li.text().split("\n")[0].strip() for li in items] == ["Warm-up (00:00–05:00)", "Main activity", "Wrap-up"]
    level2 = items[0].kids("ul")[0]
    level2_items = level2.kids("li")
    assert len(level2_items) == 2
    level3 = level2_items[0].kids("ol")[0]
    assert [li.text() for li in level3.kids("li")] == ["Question on diffusion at 02:03", "Question on osmosis at 03:00"]
    assert level3.kids("li")[0].find_all("strong")[0].text() == "diffusion"
    assert items[1].kids("ul")[0].kids("li")[0].text() == "Watch 12:34 to 1:02:03"


def test_html_gfm_table_with_code_and_emphasis() -> None:
    out, root = render_model_answer()
    (table,) = root.find_all("table")
    head = [th.text() for th in table.find_all("th")]
    assert head == ["Concept", "Example", "Timestamp"]
    assert [th.attrs.get("style") for th in table.find_all("th")] == [
        "text-align:left", "text-align:center", "text-align:right"]
    rows = table.kids("tbody")[0].kids("tr")
    assert [[td.text() for td in tr.kids("td")] for tr in rows] == [
        ["ATP pump", "active transport", "07:15"],
        ["Passive Facilitated", "channel | carrier", "08:20"],  # an escaped pipe stays in its cell
    ]
    assert rows[0].kids("td")[0].find_all("code")[0].text() == "ATP"
    assert rows[0].kids("td")[1].find_all("em")[0].text() == "active"
    assert rows[1].kids("td")[0].find_all("s")[0].text() == "Passive"
    assert rows[1].kids("td")[0].find_all("strong")[0].text() == "Facilitated"
    ts = rows[0].kids("td")[2].find_all("a")[0]
    assert ts.attrs == {"class": "ts", "href": f"https://www.youtube.com/watch?v={VID}&t=435s"}
    assert f'<a class="ts" href="https://www.youtube.com/watch?v={VID}&amp;t=500s">08:20</a>' in out


def test_html_code_block_is_escaped_text() -> None:
    out, root = render_model_answer()
    (pre,) = root.find_all("pre")
    code = pre.kids("code")[0]
    assert code.attrs == {"class": "language-html"}
    assert code.text() == '<script>alert("pwned")</script>\n<p>at 09:00</p>\n'  # as text, timestamp untouched
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in out
    assert not root.find_all("script") and "<script" not in out


def test_html_links_and_images_are_sanitised() -> None:
    out, root = render_model_answer()
    hrefs = [a.attrs["href"] for a in root.find_all("a")]
    assert all(re.match(r"(https?://|mailto:)", h) for h in hrefs), hrefs
    assert not any("passwd" in h or h.startswith("//") or "evil.example/x" in h for h in hrefs)
    # A URL written inside raw HTML is shown as text and, like any bare URL, is a link a reader may
    # click (never a frame or an image that loads by itself).
    assert "https://evil.example/frame" in hrefs and "https://tracker.example/p.gif" in hrefs
    # Unsafe links keep their label only; their targets appear nowhere as links.
    text = root.text()
    assert "Try this or that or data\nor relative or proto-relative." in text
    assert "javascript" not in out.lower() and "data:" not in out
    # Raw HTML is shown as text, never parsed as elements.
    tags = {n.tag for n in _walk(root)}
    assert not tags & {"iframe", "img", "script", "style", "object", "embed", "link"}, tags
    assert '&lt;iframe src=&quot;<a href="https://evil.example/frame">https://evil.example/frame</a>&quot;&gt;' in out
    assert "&lt;/iframe&gt;" in out and ' onerror=&quot;alert(3)&quot;&gt;' in out
    assert '<iframe src="https://evil.example/frame"></iframe>' in text  # what the reader sees
    # Emphasis inside link text survives inside the <a>.
    (wiki,) = [a for a in root.find_all("a") if "wikipedia" in a.attrs["href"]]
    assert [c.tag for c in wiki.children if isinstance(c, _Node)] == ["em", "strong"]
    assert wiki.text() == "phospholipid bilayer"
    # Images are links labelled with their alt text, never loaded; an image inside a link is its alt.
    assert '<a href="https://upload.example/cell.png">cell diagram</a>' in out
    assert '<a href="https://example.org/project">badge</a>' in out
    assert "img.example" not in out and "AAAA" not in out
    # Autolinks, e-mail autolinks and bare URLs are links; a sentence's final dot stays outside.
    assert '<a href="https://example.org/notes">https://example.org/notes</a>' in out
    assert '<a href="mailto:teacher@example.org">teacher@example.org</a>' in out
    assert '<a href="https://example.org/faq">https://example.org/faq</a>.' in out


def _walk(node: _Node):
    for c in node.children:
        if isinstance(c, _Node):
            yield c
            yield from _walk(c)


def test_html_timestamps_like_link_timestamps() -> None:
    out, root = render_model_answer()
    link = f"https://www.youtube.com/watch?v={VID}&t="
    ts = {a.text(): a.attrs["href"] for a in root.find_all("a") if a.attrs.get("class") == "ts"}
    assert ts == {"00:00": link + "0s", "05:00": link + "300s", "02:03": link + "123s", "12:34": link + "754s",
                  "1:02:03": link + "3723s", "07:15": link + "435s", "08:20": link + "500s",
                  "10:00": link + "600s", "10:30": link + "630s"}
    # Not touched: in a code span, in a code block, inside the model's own link.
    assert "<code>03:00</code>" in out and link + "180s" not in out and link + "540s" not in out
    assert out.count("t=599s") == 1  # the model's own link, not a second one inside it
    (own,) = [a for a in root.find_all("a") if a.attrs["href"].endswith("t=599s")]
    assert own.text() == "the video at 09:59" and not own.find_all("a")
    # Without a YouTube source: no links, marked spans instead.
    plain = tree(markdown_to_html(MODEL_ANSWER, None))
    assert not [a for a in plain.find_all("a") if a.attrs.get("class") == "ts"]
    assert [s.text() for s in plain.find_all("span")][:3] == ["00:00", "05:00", "02:03"]


def test_html_timestamp_inside_existing_link_text_is_not_linked() -> None:
    out = markdown_to_html(f"See [part 2 at 04:10](https://example.org/p2) and `05:00` then 06:00.", VID)
    assert out == (f'<p>See <a href="https://example.org/p2">part 2 at 04:10</a> and <code>05:00</code> then '
                   f'<a class="ts" href="https://www.youtube.com/watch?v={VID}&amp;t=360s">06:00</a>.</p>')


def test_html_chinese_and_line_breaks() -> None:
    out, root = render_model_answer()
    (h1,) = root.find_all("h1")
    assert h1.text() == "第三讲：细胞膜 — Lesson Plan"
    assert "讲者在 " in out and "<strong>细胞膜</strong>具有<em>选择透过性</em>。" in out
    # One newline inside a paragraph is a line break, as with the old converter.
    assert "<strong>Objective:</strong> understand <em>selective permeability</em>.<br>\n<strong>Duration:</strong>" in out
    zh = "# 细胞膜\n\n- 磷脂双分子层\n  - 亲水头部与疏水尾部\n\n| 概念 | 说明 |\n|---|---|\n| 主动运输 | 消耗 **ATP** |\n"
    page = get_formatter("html").render(zh, meta()).decode("utf-8")
    assert '<html lang="zh-Hans">' in page and '<meta charset="utf-8">' in page
    assert "<td>消耗 <strong>ATP</strong></td>" in page and "<li>亲水头部与疏水尾部</li>" in page


def test_html_page_of_model_answer_is_offline() -> None:
    page = get_formatter("html").render(MODEL_ANSWER, meta()).decode("utf-8")
    p = _Refs()
    p.feed(page)
    assert all(t == "a" and k == "href" for t, k, _ in p.refs)
    assert all(v.startswith(("https://", "mailto:")) for _, _, v in p.refs)
    assert "script" not in p.tags and "iframe" not in p.tags and "img" not in p.tags
    tree(page.split("<body>", 1)[1].split("</body>", 1)[0])  # the body's tags nest properly


# ---------------------------------------------------------------- metadata: new fields, read back

FULL = dict(attempt_id="a-7f3c9e", truncated=True, media_resolution="MEDIA_RESOLUTION_LOW", strategy="clips",
            clips=3, tokens={"prompt_tokens": 1200, "candidates_tokens": 800, "total_tokens": 2000,
                             "cached_tokens": 512})


def test_new_fields_in_every_format() -> None:
    m = meta(**FULL)
    fm, _ = split_front_matter(get_formatter("md").render(LESSON, m).decode())
    assert fm["attempt_id"] == "a-7f3c9e" and fm["truncated"] is True and fm["strategy"] == "clips"
    assert fm["clips"] == 3 and fm["media_resolution"] == "MEDIA_RESOLUTION_LOW" and fm["tokens"]["cached_tokens"] == 512
    data = json.loads(get_formatter("json").render(LESSON, m))
    assert {k: data["meta"][k] for k in ("attempt_id", "truncated", "media_resolution", "strategy", "clips")} == {
        "attempt_id": "a-7f3c9e", "truncated": True, "media_resolution": "MEDIA_RESOLUTION_LOW", "strategy": "clips",
        "clips": 3}
    page = get_formatter("html").render(LESSON, m).decode()
    head = page.split("</head>", 1)[0]
    for tag in ('<meta name="gsvr:attempt_id" content="a-7f3c9e">', '<meta name="gsvr:truncated" content="true">',
                '<meta name="gsvr:strategy" content="clips">', '<meta name="gsvr:clips" content="3">',
                '<meta name="gsvr:media_resolution" content="MEDIA_RESOLUTION_LOW">', '&quot;cached_tokens&quot;: 512'):
        assert tag in head, tag


def test_optional_fields_stay_out_of_front_matter_when_unset() -> None:
    fm, _ = split_front_matter(get_formatter("md").render("x", meta(task_id=None, cost_usd=None)).decode())
    assert set(fm) == set(FRONT_MATTER_FIELDS)  # no attempt_id, truncated: false, strategy: null …
    fm, _ = split_front_matter(get_formatter("md").render("x", meta(truncated=False, clips=0, strategy="full")).decode())
    assert "truncated" not in fm and fm["clips"] == 0 and fm["strategy"] == "full"


ODD_TITLES = [
    'Cells: "the basics" — 细胞 🎓',
    "key: value: more",
    "'single' and \"double\" quotes",
    "第三讲：细胞膜",
    "line one\nline two",
    "title\n---\ntask_id: forged\n---\n",
    "trailing newline\n",
    "\r\nCR LF\r\nand\u2028LS\u2029PS\x85NEL",
    "---",
    "- a list?",
    "yes",
    "2026-03-01",
    "# heading, [link](x) & <b>tag</b>",
    "",
]


@pytest.mark.parametrize("title", ODD_TITLES)
@pytest.mark.parametrize("fmt", ["md", "json", "html"])
def test_read_output_meta_round_trips(tmp_path, fmt: str, title: str) -> None:
    from gsvr_batch.formats import read_output_meta

    m = meta(title=title, **FULL)
    f = get_formatter(fmt)
    path = tmp_path / f"out{f.extension}"
    path.write_bytes(f.render(LESSON, m))
    got = read_output_meta(path)
    assert got is not None
    expected = m.to_dict()
    expected["format"] = fmt
    assert got == expected
    assert read_output_meta(str(path)) == expected  # str and PathLike alike


def test_read_output_meta_defaults_and_minimal_meta(tmp_path) -> None:
    from gsvr_batch.formats import read_output_meta

    m = LessonMeta(title="T", source="/v/a.mp4", created="2026-01-01T00:00:00Z")
    for name, f in FORMATTERS.items():
        path = tmp_path / f"a{f.extension}"
        path.write_bytes(f.render("body", m))
        got = read_output_meta(path)
        assert got is not None, name
        assert got["task_id"] is None and got["attempt_id"] is None and got["truncated"] is False
        assert got["strategy"] is None and got["clips"] is None and got["tokens"] == {} and got["duration"] is None
        assert {k: v for k, v in got.items() if k != "format"} == m.to_dict(), name


def test_title_with_newline_keeps_front_matter_intact() -> None:
    m = meta(title="title\n---\ntask_id: forged\n---\n", task_id="t-real")
    doc = get_formatter("md").render(LESSON, m).decode()
    head = doc.split("\n---\n", 1)[0]  # what any front-matter reader takes as the header
    fm = yaml.safe_load(head[4:])
    assert fm["title"] == m.title and fm["task_id"] == "t-real"
    # One line per key (or list item / nested key): nothing of the title spills onto a line of its own.
    assert all(line.strip().startswith("- ") or line.strip().split(":", 1)[0].isidentifier()
               for line in head.splitlines()[1:])
    assert "title: \"title\\n---\\ntask_id: forged\\n---\\n\"" in head
    # The HTML meta tags too: one line each, the line breaks as character references.
    page = get_formatter("html").render(LESSON, m).decode()
    (line,) = [ln for ln in page.splitlines() if ln.startswith('<meta name="gsvr:title"')]
    assert line == '<meta name="gsvr:title" content="title&#10;---&#10;task_id: forged&#10;---&#10;">'


def _md_doc(fm: str, body: str = "text\n") -> bytes:
    return f"---\n{fm}---\n\n{body}".encode()


GOOD_FM = ("title: T\nsource: s\ntemplate: x\nmodel: m\ncreated: '2026-01-01T00:00:00Z'\nbackend: gemini\n"
           "tokens: {}\ntags: []\n")


@pytest.mark.parametrize("content", [
    b"",
    b"\x00\x01\x02 binary \xff\xfe",
    b"# Just a note\n\nNo front matter.\n",
    b"---\ntitle: Jekyll post\nlayout: post\n---\n\nhello\n",  # someone else's front matter
    b"---\n" + GOOD_FM.encode() + b"\nno end marker, as if cut off\n",
    b"---\n---\n\nempty front matter\n",
    b"---\n- a\n- list\n---\n\n",
    b"---\ntitle: [unclosed\n---\n\n",  # YAML syntax error
    b"---\n" + b"title: \xff\xfe\n" + b"---\n\n",  # not UTF-8
    _md_doc(GOOD_FM.replace("tokens: {}", "tokens: lots")),
    _md_doc(GOOD_FM.replace("tags: []", "tags: {a: 1}")),
    _md_doc(GOOD_FM + "truncated: maybe\n"),
    _md_doc(GOOD_FM + "clips: -1\n"),
    _md_doc(GOOD_FM + "duration: .nan\n"),
    _md_doc(GOOD_FM.replace("title: T", "title: {a: 1}")),
    b"{}",
    b'{"meta": {"title": "T"}, "lesson_markdown": ""}',  # required keys missing
    b'{"meta": [1, 2], "lesson_markdown": ""}',
    b'{"not": "ours"}',
    b'{"meta": {"title": "T", "source": "s", "template": "x", "model": "m", "created": "c", "backend": "b"}',  # cut
    b"[1, 2, 3]",
    b"<!DOCTYPE html>\n<html><head><title>someone else's page</title></head><body></body></html>",
    b'<!DOCTYPE html>\n<html><head><meta name="generator" content="gsvr-batch"><meta name="gsvr:title" content="T">',
    b'<!DOCTYPE html>\n<html><head><meta name="generator" content="gsvr-batch"><meta name="gsvr:title" content="T">'
    b"</head><body></body></html>",  # required meta missing
    b'<!DOCTYPE html><html><head><meta name="generator" content="gsvr-batch">'
    + b"".join(f'<meta name="gsvr:{k}" content="x">'.encode() for k in
               ("title", "source", "template", "model", "created", "backend"))
    + b'<meta name="gsvr:truncated" content="sometimes"></head></html>',
])
def test_read_output_meta_rejects_foreign_and_malformed(tmp_path, content: bytes) -> None:
    from gsvr_batch.formats import read_output_meta

    path = tmp_path / "x.md"
    path.write_bytes(content)
    assert read_output_meta(path) is None


def test_read_output_meta_accepts_the_minimal_hand_written_front_matter(tmp_path) -> None:
    """The control for the rejections above: the same base document is accepted."""
    from gsvr_batch.formats import read_output_meta

    path = tmp_path / "x.md"
    path.write_bytes(_md_doc(GOOD_FM + "duration: 12\n"))
    got = read_output_meta(path)
    assert got is not None and got["title"] == "T" and got["duration"] == 12 and got["format"] == "md"
    # Keys we do not know (a later version's, a user's) are ignored; YAML aliases are not expanded.
    path.write_bytes(_md_doc(GOOD_FM + "extra: &a [1, 2]\nmore: [*a, *a, *a]\n"))
    got = read_output_meta(path)
    assert got is not None and "extra" not in got


def test_read_output_meta_missing_dir_fifo(tmp_path) -> None:
    import os

    from gsvr_batch.formats import read_output_meta

    assert read_output_meta(tmp_path / "missing.md") is None
    assert read_output_meta(tmp_path) is None
    assert read_output_meta("bad\x00path") is None
    fifo = tmp_path / "fifo.md"
    os.mkfifo(fifo)
    assert read_output_meta(fifo) is None  # does not block waiting for a writer
    unreadable = tmp_path / "u.md"
    unreadable.write_bytes(get_formatter("md").render("x", meta()))
    os.chmod(unreadable, 0)
    if os.geteuid() != 0:  # root reads through mode 0
        assert read_output_meta(unreadable) is None


@pytest.mark.parametrize("fmt", ["md", "html", "json"])
def test_read_output_meta_reads_a_2gb_file_by_its_head(tmp_path, fmt: str) -> None:
    import tracemalloc

    from gsvr_batch.formats import JSON_READ_LIMIT, META_READ_LIMIT, read_output_meta

    f = get_formatter(fmt)
    path = tmp_path / f"big{f.extension}"
    with open(path, "wb") as fh:
        fh.write(f.render(LESSON, meta(**FULL)))
        fh.truncate(2 * 1024**3)  # sparse: 2 GB on paper, nothing on disk
    tracemalloc.start()
    try:
        got = read_output_meta(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Read a bounded prefix, never the whole file: 64 KiB for md / html, a few MB for JSON.
    if fmt == "json":
        assert got is None  # a JSON output is never that big: not ours
        assert peak < 4 * JSON_READ_LIMIT
    else:
        assert got is not None and got["attempt_id"] == "a-7f3c9e" and got["format"] == fmt
        assert peak < 16 * META_READ_LIMIT


def test_read_output_meta_front_matter_past_the_read_limit(tmp_path) -> None:
    from gsvr_batch.formats import META_READ_LIMIT, read_output_meta

    path = tmp_path / "long.md"
    path.write_bytes(get_formatter("md").render("x", meta(title="T" * META_READ_LIMIT)))
    assert read_output_meta(path) is None  # the header does not end within the limit: not read further
    path.write_bytes(get_formatter("md").render("x", meta(title="T" * (META_READ_LIMIT // 2))))
    assert read_output_meta(path)["title"] == "T" * (META_READ_LIMIT // 2)


@pytest.mark.parametrize("fmt", ["md", "json", "html"])
def test_read_output_meta_never_raises_on_damaged_outputs(tmp_path, fmt: str) -> None:
    """Seeded byte-level damage (flips, cuts, insertions) to a real output: None or a full dict."""
    import random

    from gsvr_batch.formats import read_output_meta

    f = get_formatter(fmt)
    good = f.render(LESSON, meta(**FULL))
    head = good[:4096]  # the metadata lives here: damage it, not the body
    rng = random.Random(f"gsvr-{fmt}")
    path = tmp_path / f"d{f.extension}"
    results = {"none": 0, "dict": 0}
    for _ in range(300):
        data = bytearray(head)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            op = rng.randrange(3)
            if op == 0:
                data[i] = rng.randrange(256)
            elif op == 1:
                del data[i:i + rng.randint(1, 40)]
            else:
                data[i:i] = rng.choice([b"\n", b"---\n", b"\x00", b"{", b"\"", b"<", b"&#", b"\xff", b": ", b"- "])
        path.write_bytes(bytes(data) + good[4096:])
        got = read_output_meta(path)
        assert got is None or (isinstance(got, dict) and set(got) == set(m_keys()) | {"format"})
        results["none" if got is None else "dict"] += 1
    assert results["none"] > 0 and results["dict"] > 0  # the damage both breaks and spares files


def m_keys() -> list[str]:
    import dataclasses

    return [f.name for f in dataclasses.fields(LessonMeta)]
