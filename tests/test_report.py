"""``gsvr-batch report``: numbers, the three formats, the CLI, and a headless-Chromium render."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import GSVR, env_for, journal_of, make_batch, records, run_cli, wait_for
from gsvr_batch.cli import cli
from gsvr_batch.lifecycle import BatchLog
from gsvr_batch.report import build_report, pack_lanes, percentile, render_report, write_report

EVIL = "<script>alert('x')</script> 讲座 🎓"


def _usage(p: int, c: int) -> dict:
    return {"prompt_tokens": p, "candidates_tokens": c, "total_tokens": p + c,
            "prompt_tokens_details": [{"modality": "VIDEO", "token_count": p}]}


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

    at(10)
    log.start_task("a")
    log.start_task("b")
    at(11)
    complete("a")
    at(12)
    complete("b")
    log.start_task("c")
    log.start_task("e")
    at(13)
    log.schedule_retry("e", {"error_class": "ServerError", "message": "503 unavailable"}, 1.0, now=T0 + 13)
    at(14)
    log.start_task("e")
    at(15)
    log.schedule_retry("e", {"error_class": "ServerError", "message": "503 unavailable"}, 1.0, now=T0 + 15)
    at(16)
    log.start_task("e")
    at(17)
    log.fail_task("e", {"error_class": "ContentBlocked", "message": "blocked: SAFETY"}, cost_usd=0.001)
    at(18)
    complete("c")
    log.start_task("d")
    at(28)
    complete("d")
    at(30)
    log.start_task("f")
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
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; 讲座 🎓" in page
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


def test_corrupt_journal_is_an_error(journal: Path) -> None:
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b'"task_added"', b'"task_addeX"')
    journal.write_bytes(b"".join(lines))
    (journal.parent / "journal.jsonl.snapshot").unlink(missing_ok=True)
    res = CliRunner().invoke(cli, ["report", str(journal)])
    assert res.exit_code == 2 and res.output.startswith("Error: ") and "line 4" in res.output


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_chromium_renders(journal: Path, tmp_path: Path) -> None:
    page = write_report(journal, "html", tmp_path / "r.html")
    png = tmp_path / "r.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}", "--window-size=1000,1400",
                    page.resolve().as_uri()], check=True, timeout=60, capture_output=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


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
