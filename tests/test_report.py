"""``gsvr-batch report``: numbers, the three formats, the CLI, and a headless-Chromium render."""

from __future__ import annotations

import html
import json
import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import GSVR, env_for, journal_of, make_batch, records, run_cli, wait_for
from gsvr_batch.cli import cli
from gsvr_batch.errors import Disposition, ErrorRecord
from gsvr_batch.lifecycle import BatchLog
from gsvr_batch.formats import LessonMeta, get_formatter
from gsvr_batch.report import OUTCOME_COLOURS, build_report, pack_lanes, percentile, render_report, write_report

# A title that, were it ever passed through as markup, would run and mark the page: the Chromium
# tests look for that mark in the live DOM (the script and the onerror handler each set it).
CANARY = "data-pwned"
EVIL = (f"<script>document.documentElement.setAttribute('{CANARY}','script')</script>"
        f"<img src=x onerror=\"document.documentElement.setAttribute('{CANARY}','img')\"> 讲座 🎓")


def _usage(p: int, c: int) -> dict:
    return {"prompt_tokens": p, "candidates_tokens": c, "total_tokens": p + c,
            "prompt_tokens_details": [{"modality": "VIDEO", "token_count": p}]}


def _error(error_class: str, message: str, disposition: Disposition) -> ErrorRecord:
    return ErrorRecord(error_class=error_class, message=message, disposition=disposition)


T0 = 1_800_000_000.0  # the fixture's clock: records are stamped T0 + the `at(...)` offsets below


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    """A hand-made batch with known times, usage and costs.

    Run 1: a, b, c, d complete (2 models, 2 templates); e is retried twice (ServerError) and then
    fails (ContentBlocked); f starts, reaches "uploading", and the run dies (no run_finished).
    Run 2 starts at +100 s, requeues f and is interrupted, so f stays pending.
    """
    path = tmp_path / ".gsvr" / "journal.jsonl"
    log, _ = BatchLog.open(path)
    clock = [T0]
    log.writer._wallclock = lambda: clock[0]  # JournalWriter's wallclock parameter, set after open

    def at(offset: float) -> None:
        clock[0] = T0 + offset

    log.create_batch(manifest="m.yaml", manifest_identity="i", manifest_hash="h", settings={"workers": 2},
                     version="test")
    specs = [("a", "gemini-2.5-flash", "summary_report", EVIL), ("b", "gemini-2.5-flash", "summary_report", "B"),
             ("c", "gemini-2.5-pro", "comprehensive_lesson", "C"), ("d", "gemini-2.5-pro", "summary_report", "D"),
             ("e", "gemini-2.5-flash", "comprehensive_lesson", "E"), ("f", "gemini-2.5-flash", "summary_report", "F")]
    for tid, model, template, title in specs:
        log.add_task(task_id=tid, source=f"/v/{tid}.mp4", title=title, template=template, model=model,
                     output=f"/o/{tid}.md")
    log.run_started(workers=2)
    done = {"a": (1.0, 100, 10, 0.01), "b": (2.0, 200, 20, 0.02), "c": (3.0, 300, 30, 0.5), "d": (10.0, 400, 40, 0.25)}

    def complete(tid: str) -> None:
        el, p, c, cost = done[tid]
        log.complete_task(tid, output=f"/o/{tid}.md", sha256="0" * 64, bytes_=10, usage=_usage(p, c),
                          cost_usd=cost, model_version=None, video_duration=6.0, elapsed=el)

    models = {tid: model for tid, model, _template, _title in specs}

    def start(tid: str) -> None:
        attempt = log.state.tasks[tid].attempts + 1
        log.start_task(tid, attempt_id=f"{tid}-{attempt}", model=models[tid])

    at(10)
    start("a")
    start("b")
    at(11)
    complete("a")
    at(12)
    complete("b")
    start("c")
    start("e")
    at(13)
    log.schedule_retry("e", _error("ServerError", "503 unavailable", Disposition.RETRY), 1.0, now=T0 + 13)
    at(14)
    start("e")
    at(15)
    log.schedule_retry("e", _error("ServerError", "503 unavailable", Disposition.RETRY), 1.0, now=T0 + 15)
    at(16)
    start("e")
    at(17)
    log.fail_task("e", _error("ContentBlocked", "blocked: SAFETY", Disposition.FAIL_TASK), cost_usd=0.001)
    at(18)
    complete("c")
    start("d")
    at(28)
    complete("d")
    at(30)
    start("f")
    at(35)
    log.step("f", "uploading")
    # -- the manager is killed here; the next run starts later and requeues f
    at(100)
    log.run_started(workers=2)
    log.requeue("f", "in flight when the last run stopped")
    at(101)
    log.run_finished(130)
    log.close()
    return path


def test_numbers(journal: Path) -> None:
    doc = build_report(journal)
    assert doc["counts"] == {"pending": 1, "running": 0, "completed": 4, "failed": 1, "skipped": 0, "total": 6}
    assert doc["runs"] == 2
    assert doc["attempts"] == 8  # a, b, c, d, f once; e three times
    # elapsed 1, 2, 3, 10 → median 2.5, p95 by linear interpolation 3 + 0.85 * 7 = 8.95 (numpy default)
    d = doc["durations"]
    assert (d["count"], d["min"], d["max"]) == (4, 1.0, 10.0)
    assert d["median"] == pytest.approx(2.5) and d["p95"] == pytest.approx(8.95)
    errors = {e["error_class"]: e for e in doc["errors"]}
    assert errors["ServerError"]["retries"] == 2 and errors["ServerError"]["failed"] == 0
    assert errors["ServerError"]["top_messages"] == [{"message": "503 unavailable", "count": 2}]
    assert errors["ContentBlocked"]["failed"] == 1
    assert doc["errors"][0]["error_class"] == "ServerError"  # most frequent first
    assert doc["failed_tasks"] == [{"task_id": "e", "title": "E", "error_class": "ContentBlocked",
                                    "message": "blocked: SAFETY"}]
    models = {r["model"]: r for r in doc["by_model"]}
    assert models["gemini-2.5-pro"]["prompt_tokens"] == 700 and models["gemini-2.5-pro"]["completed"] == 2
    assert models["gemini-2.5-pro"]["cost_usd"] == pytest.approx(0.75)
    assert models["gemini-2.5-flash"]["tasks"] == 4 and models["gemini-2.5-flash"]["total_tokens"] == 330
    assert models["gemini-2.5-flash"]["cost_usd"] == pytest.approx(0.031)  # includes the failed attempt's charge
    templates = {r["template"]: r for r in doc["by_template"]}
    assert templates["summary_report"]["candidates_tokens"] == 70
    assert templates["comprehensive_lesson"]["cost_usd"] == pytest.approx(0.501)
    assert doc["cost_usd"] == pytest.approx(0.781)
    # completions at +1, +2, +8, +18 s after the first start (T0 + 10): two 10 s buckets
    tp = doc["throughput"]
    assert tp["bucket_seconds"] == 10 and [b["completed"] for b in tp["buckets"]] == [3, 1]
    assert tp["buckets"][0]["start"] == "2027-01-15T08:00:10.000Z"
    assert [(p["t"], p["completed"]) for p in doc["cumulative"]] == [(1, 1), (2, 2), (8, 3), (18, 4)]
    assert [p["cost_usd"] for p in doc["cumulative"]] == pytest.approx([0.01, 0.03, 0.53, 0.78])  # completions only
    tl = doc["timeline"]
    assert tl["start"] == "2027-01-15T08:00:10.000Z" and tl["lanes"] == 2 and tl["span"] == 25
    bars = [(b["task_id"], b["attempt"], b["start"], b["end"], b["outcome"], b["lane"]) for b in tl["bars"]]
    assert bars == [("a", 1, 0, 1, "completed", 0), ("b", 1, 0, 2, "completed", 1), ("e", 1, 2, 3, "retried", 0),
                    ("c", 1, 2, 8, "completed", 1), ("e", 2, 4, 5, "retried", 0), ("e", 3, 6, 7, "failed", 0),
                    ("d", 1, 8, 18, "completed", 0),
                    # cut off by the crash: ends at the dead run's last record, not at the requeue 65 s later
                    ("f", 1, 20, 25, "interrupted", 0)]
    assert tl["bars"][5]["error"] == "ContentBlocked: blocked: SAFETY"


def test_lane_packing_and_percentile() -> None:
    attempts = [{"start": 0, "end": 5}, {"start": 1, "end": 3}, {"start": 3, "end": 4}, {"start": 6, "end": 7}]
    assert pack_lanes(attempts) == 2
    assert [a["lane"] for a in attempts] == [0, 1, 1, 0]
    assert percentile([], 50) is None
    assert percentile([4.0], 95) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_formats(journal: Path) -> None:
    doc = build_report(journal)
    assert json.loads(render_report(doc, "json"))["counts"]["completed"] == 4
    md = render_report(doc, "md")
    for heading in ("## Tasks by status", "## Errors by class", "## Task durations", "## Tokens and cost by model",
                    "## Tokens and cost by template", "## Throughput"):
        assert heading in md
    assert "| completed | 4 |" in md and "| ServerError | 0 | 2 | 503 unavailable (×2) |" in md
    assert "<script>" not in md
    page = render_report(doc, "html")
    p = _Collect()
    p.feed(page)
    tags = [t for t, _ in p.tags]
    assert "script" not in tags and "<script" not in page
    assert tags.count("svg") == 3
    assert "link" not in tags and "img" not in tags and "iframe" not in tags
    assert "url(" not in page and "@import" not in page  # no stylesheet fetches either
    # tooltips: one <title> per timeline bar and per completion point on each line chart, plus the page's
    assert tags.count("title") == 1 + len(doc["timeline"]["bars"]) + 2 * len(doc["cumulative"])
    assert "interrupted" in page  # the crashed attempt's outcome is in the legend / tooltip
    for _tag, attrs in p.tags:
        for k in ("src", "href"):
            assert k not in attrs or not str(attrs[k]).startswith(("http:", "https:", "//"))
    assert html.escape(EVIL) in page and "&lt;script&gt;document.documentElement" in page
    assert any(EVIL in t for t in p.text)  # the title survives, as text
    assert "first-fit" in page  # the caption explains the lanes


def test_cli(journal: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "r.json"
    res = runner.invoke(cli, ["report", str(journal), "--format", "json", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text(encoding="utf-8"))["counts"]["failed"] == 1
    res = runner.invoke(cli, ["report", str(journal)])
    assert res.exit_code == 0 and "## Tasks by status" in res.output
    res = runner.invoke(cli, ["report", str(journal), "--format", "html"])
    assert res.exit_code == 0 and res.output.startswith("<!DOCTYPE html>")
    page = tmp_path / "sub" / "r.html"
    res = runner.invoke(cli, ["report", str(journal), "--format", "html", "-o", str(page)])
    assert res.exit_code == 0 and res.output.strip() == str(page)
    assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [x.name for x in page.parent.iterdir()] == ["r.html"]  # no temp file left behind
    missing = tmp_path / "nope.jsonl"
    res = runner.invoke(cli, ["report", str(missing)])
    assert res.exit_code == 2
    assert f"Error: journal not found: {missing}" in res.output


def test_a_report_never_overwrites_what_is_not_a_report(journal: Path, tmp_path: Path) -> None:
    """`-o` onto the journal once replaced the batch's history with its report. Only an earlier report
    (any format) or an empty file is replaced; anything else is refused, exit 2, untouched."""
    runner = CliRunner()
    before = journal.read_bytes()
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text("jobs: []\n", encoding="utf-8")
    for victim in (journal, manifest):
        kept = victim.read_bytes()
        res = runner.invoke(cli, ["report", str(journal), "-o", str(victim)])
        assert res.exit_code == 2
        assert res.stderr == (f"Error: {victim} exists and is not a gsvr-batch report: refusing to overwrite it "
                              f"(choose another name for the report, or delete that file first)\n")
        assert victim.read_bytes() == kept
    assert journal.read_bytes() == before
    out = tmp_path / "report.out"
    out.write_bytes(b"")
    for fmt in ("md", "html", "json", "md"):  # an earlier report of any format is replaced
        res = runner.invoke(cli, ["report", str(journal), "--format", fmt, "-o", str(out)])
        assert res.exit_code == 0, res.output
        text = out.read_text(encoding="utf-8")
        if fmt == "json":
            assert json.loads(text)["journal"] == str(journal)
        else:
            assert text.startswith("# gsvr-batch report" if fmt == "md" else "<!DOCTYPE html>")
    # shapes that once passed for a JSON report, and files reading would hang on
    lookalike = tmp_path / "lookalike.jsonl"
    lookalike.write_text('{"journal": "j", "batch_id": "b", "generated": "g", "counts": {}}\n{"seq": 2}\n',
                         encoding="utf-8")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for victim in (lookalike, journal.with_name("journal.jsonl.snapshot"), fifo):
        if not victim.exists():
            continue
        res = runner.invoke(cli, ["report", str(journal), "-o", str(victim)])
        assert res.exit_code == 2, (victim, res.output)
        assert "is not a gsvr-batch report: refusing to overwrite it" in res.stderr
    assert lookalike.read_text(encoding="utf-8").endswith('{"seq": 2}\n')
    res = runner.invoke(cli, ["report", str(journal), "-o", "/proc/gsvr-no-such/r.md"])
    assert res.exit_code == 2 and res.stderr == "Error: cannot write /proc/gsvr-no-such/r.md: No such file or directory\n"


def test_corrupt_journal_is_an_error(journal: Path) -> None:
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"task_added"', b'"task_addeX"')
    journal.write_bytes(b"".join(lines))
    (journal.parent / "journal.jsonl.snapshot").unlink(missing_ok=True)
    res = CliRunner().invoke(cli, ["report", str(journal)])
    assert res.exit_code == 2 and res.output.startswith("Error: ") and "line 4" in res.output


# ---------------------------------------------------------------- seen by a real browser

#: CI (.ci/run) sets this: there a missing Chromium is a failure, not a skip, so the pages are
#: always rendered. On a developer's machine without Chromium the tests below are skipped.
REQUIRE_CHROMIUM = os.environ.get("GSVR_REQUIRE_CHROMIUM", "").strip() not in ("", "0")
WINDOW = (1280, 1600)  # wide enough for the report's 1120 px charts


def chromium_exe() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        if REQUIRE_CHROMIUM:
            pytest.fail("GSVR_REQUIRE_CHROMIUM is set but `chromium` is not on PATH "
                        "(.ci/run installs Debian's chromium; see its output for why it could not)")
        pytest.skip("chromium not installed (GSVR_REQUIRE_CHROMIUM=1 makes this a failure)")
    return exe


def chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on a local page, offline and with a fresh profile each time."""
    profile = tempfile.mkdtemp(prefix="profile-", dir=tmp_path)
    return subprocess.run(
        [chromium_exe(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", *args, page.resolve().as_uri()],
        check=True, timeout=90, capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def decode_png(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """(width, height, bytes per pixel, unfiltered rows) of an 8-bit RGB/RGBA non-interlaced PNG
    (what Chromium writes); a small decoder so the test needs no imaging library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + n
    assert ihdr is not None, "no IHDR"
    w, h, depth, ctype, _, _, interlace = ihdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, ihdr
    bpp = 3 if ctype == 2 else 4
    stride = w * bpp
    raw = zlib.decompress(b"".join(idat))
    assert len(raw) == h * (stride + 1), "truncated image data"
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(h):
        ft = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if ft == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif ft == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif ft == 3:
            for i in range(stride):
                line[i] = (line[i] + (((line[i - bpp] if i >= bpp else 0) + prev[i]) >> 1)) & 255
        elif ft == 4:
            for i in range(stride):
                left, up_left = (line[i - bpp], prev[i - bpp]) if i >= bpp else (0, 0)
                line[i] = (line[i] + _paeth(left, prev[i], up_left)) & 255
        else:
            assert ft == 0, f"bad filter {ft}"
        prev = line
        rows.append(bytes(line))
    return w, h, bpp, rows


def screenshot_colours(page: Path, tmp_path: Path) -> Counter[str]:
    """Render ``page`` to a PNG of the window's size and count its pixels by colour ("#rrggbb")."""
    png = tmp_path / (page.stem + ".png")
    chromium(page, tmp_path, f"--screenshot={png}")
    w, h, bpp, rows = decode_png(png.read_bytes())
    assert (w, h) == WINDOW
    colours: Counter[str] = Counter()
    for row in rows:
        colours.update(row[i:i + 3].hex() for i in range(0, len(row), bpp))  # RGB, alpha ignored
    return Counter({"#" + k: v for k, v in colours.items()})


class _Dom(HTMLParser):
    """Elements of a DOM dump: (tag, attrs) in document order, and the text."""

    def __init__(self, dump: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(dump)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def tags(self) -> Counter[str]:
        return Counter(t for t, _ in self.elements)


def assert_inert(dom: _Dom) -> None:
    """Nothing of the page ran or loaded: no script or loading element, and the canary never fired."""
    tags = dom.tags()
    for bad in ("script", "img", "iframe", "object", "embed", "link", "video", "audio", "source"):
        assert tags[bad] == 0, (bad, tags[bad])
    assert all(CANARY not in attrs for _t, attrs in dom.elements), "a script ran"


@pytest.mark.slow
def test_chromium_renders_the_report(journal: Path, tmp_path: Path) -> None:
    page = write_report(journal, "html", tmp_path / "r.html")
    source_tables = page.read_text(encoding="utf-8").count("<table>")
    dom = _Dom(chromium(page, tmp_path, "--dump-dom").stdout)
    tags = dom.tags()
    assert_inert(dom)
    # The browser built the charts and tables the report holds (a page cut short or broken markup
    # would lose them): three SVGs with their bars, lines and points, and every table.
    assert tags["svg"] == 3 and tags["polyline"] == 2
    assert tags["circle"] == 2 * 4  # one point per completion on each line chart
    timeline_bars = [a for t, a in dom.elements if t == "rect" and a.get("rx") == "3"]
    assert len(timeline_bars) == len(build_report(journal)["timeline"]["bars"]) == 8
    assert source_tables >= 4 and tags["table"] == source_tables
    text = "".join(dom.text)
    assert EVIL in text  # the hostile title is shown as text
    assert "gsvr-batch report: batch" in text and "Tokens and cost by model" in text

    colours = screenshot_colours(page, tmp_path)
    total = WINDOW[0] * WINDOW[1]
    background = colours.most_common(1)[0][0]
    assert background == "#ffffff" and colours[background] < 0.97 * total  # not a blank page
    assert len(colours) > 50  # text is anti-aliased: many shades, not a flat fill
    # The charts were painted, in their own colours. Each legend swatch is ~100 px; the thresholds
    # need the bars themselves (18 px tall, width by duration: ~12,000 px completed, ~600 failed,
    # ~1,300 retried, ~3,300 interrupted at this window size) and both 2 px step lines (~1,500 each).
    painted = {k: colours[OUTCOME_COLOURS[k]] for k in ("completed", "failed", "retried", "interrupted")}
    assert painted["completed"] > 6000 and painted["failed"] > 400, painted
    assert painted["retried"] > 800 and painted["interrupted"] > 1500, painted
    assert colours["#2e6fd6"] > 800 and colours["#c2562b"] > 800, (colours["#2e6fd6"], colours["#c2562b"])


LESSON_PAGE = f"""# Lesson: the cell membrane 细胞膜

**Objective:** explain selective permeability.

1. Warm-up at [00:30]
   - Recall **diffusion** at 01:15
     - Ask *why* at 02:00
2. Discuss the [*phospholipid* **bilayer**](https://en.wikipedia.org/wiki/Lipid_bilayer)

| Concept | Example | Time |
|---|---|---|
| `ATP` pump | *active* transport | 07:15 |

```html
<script>document.documentElement.setAttribute('{CANARY}','fence')</script>
```

{EVIL} [click](javascript:document.documentElement.setAttribute('{CANARY}','link'))
<iframe src="https://evil.example/"></iframe> ![pixel](https://tracker.example/p.gif)
"""


@pytest.mark.slow
def test_chromium_renders_a_lesson_page(tmp_path: Path) -> None:
    """One `--format html` lesson, as the pipeline writes it, opened in the browser."""
    meta = LessonMeta(title=EVIL, source="https://youtu.be/dQw4w9WgXcQ", source_url="https://youtu.be/dQw4w9WgXcQ",
                      duration=754.0, template="comprehensive_lesson", template_version="2.0",
                      model="gemini-2.5-flash", tokens={"prompt_tokens": 10, "total_tokens": 20},
                      created="2026-03-01T09:30:00Z", backend="gemini", task_id="t-1", attempt_id="a-1")
    page = tmp_path / "lesson.html"
    page.write_bytes(get_formatter("html").render(LESSON_PAGE, meta))
    dom = _Dom(chromium(page, tmp_path, "--dump-dom").stdout)
    assert_inert(dom)
    tags = dom.tags()
    assert tags["table"] == 1 and tags["td"] == 3 and tags["pre"] == 1
    assert tags["ol"] == 1 and tags["ul"] == 2  # three levels of list
    ts = [a for t, a in dom.elements if t == "a" and a.get("class") == "ts"]
    assert [a["href"].rsplit("&t=", 1)[1] for a in ts] == ["30s", "75s", "120s", "435s"]
    hrefs = [a.get("href", "") for t, a in dom.elements if t == "a"]
    assert all(h.startswith("https://") for h in hrefs), hrefs
    metas = {a.get("name"): a.get("content") for t, a in dom.elements if t == "meta"}
    assert metas["gsvr:task_id"] == "t-1" and metas["gsvr:attempt_id"] == "a-1" and metas["gsvr:title"] == EVIL
    text = "".join(dom.text)
    assert EVIL in text and '<iframe src="https://evil.example/"></iframe>' in text

    colours = screenshot_colours(page, tmp_path)
    assert colours["#ffffff"] < 0.97 * WINDOW[0] * WINDOW[1] and len(colours) > 50
    # The page's own styles were applied: timestamp chips, the table header, the code block.
    assert colours["#e8f0fe"] > 300  # a.ts background
    assert colours["#f3f3f3"] > 1000  # th background
    assert colours["#f6f6f6"] > 1000  # pre background


@pytest.mark.slow
def test_status_and_report_during_a_live_run(tmp_path: Path, sandbox) -> None:
    """While a real run is generating, `status` lists the running tasks with their step and elapsed
    time, and `report` (read-only, no lock) draws their attempts as "running" bars."""
    server = sandbox(latency=4.0)  # long enough that the CLI calls below land mid-generate
    m = make_batch(tmp_path, 2)
    j = journal_of(tmp_path)
    run = subprocess.Popen(GSVR + ["run", str(m), "--progress", "quiet"], env=env_for(server),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        def generating() -> set[str]:
            return {r["task_id"] for r in records(j) if r["type"] == "task_step" and r["step"] == "generating"}

        assert wait_for(lambda: len(generating()) == 2), "the run never reached the generate step"
        st = run_cli(["status", j, "--json"])
        assert st.returncode == 0, st.stderr
        doc = json.loads(st.stdout)
        assert doc["running_now"] is True and doc["counts"]["running"] == 2
        running = {t["id"]: t for t in doc["running_tasks"]}
        assert set(running) == generating()
        assert all(t["step"] == "generating" and t["elapsed"] >= 0 for t in running.values())
        text = run_cli(["status", j])
        assert text.returncode == 0 and text.stdout.startswith("Running (pid ")
        assert sum(" generating " in line for line in text.stdout.splitlines()) == 2
        rep = run_cli(["report", j, "--format", "json"])
        assert rep.returncode == 0, rep.stderr
        bars = json.loads(rep.stdout)["timeline"]["bars"]
        assert sorted(b["outcome"] for b in bars) == ["running", "running"]
    finally:
        out, err = run.communicate(timeout=120)
    assert run.returncode == 0, out + err
    done = build_report(j)
    assert done["counts"]["completed"] == 2 and [b["outcome"] for b in done["timeline"]["bars"]] == ["completed"] * 2


def test_a_batch_that_has_not_started_renders(tmp_path: Path) -> None:
    """Before any task starts there is no timeline and no completion: every format still renders."""
    path = tmp_path / "journal.jsonl"
    log, _ = BatchLog.open(path)
    log.create_batch(manifest="m.yaml", manifest_identity="i", manifest_hash="h", settings={}, version="test")
    log.add_task(task_id="a", source="/v/a.mp4", title="A", template="summary_report", model="gemini-2.5-flash",
                 output="/o/a.md")
    log.close()
    doc = build_report(path)
    assert doc["counts"]["pending"] == 1 and doc["attempts"] == 0 and doc["timeline"]["bars"] == []
    assert doc["durations"] == {"count": 0, "min": None, "median": None, "p95": None, "max": None}
    assert doc["throughput"]["buckets"] == [] and doc["cumulative"] == []
    assert json.loads(render_report(doc, "json"))["counts"]["total"] == 1
    assert "| pending | 1 |" in render_report(doc, "md")
    assert render_report(doc, "html").count("<svg") == 3
