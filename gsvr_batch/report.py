"""``gsvr-batch report``: what a batch did, built from its journal alone (DESIGN invariant 1).

:func:`build_report` reads the journal twice, both read-only (safe while a run is writing):
``lifecycle.replay`` for the folded per-task state (status, usage, cost, elapsed) and
``journal.iter_records`` for the history (when each attempt started and ended, when tasks
completed, which errors happened on the way). The result is one JSON-able document;
:func:`render_report` turns it into Markdown, JSON or one self-contained HTML page whose charts
are inline SVG (no script, no network: it must open offline, e.g. attached to an e-mail).

Worker lanes: ``task_started.worker`` is not recorded (the executor does not say which process
runs a task), so the timeline packs concurrent attempts into lanes first-fit. With N workers this
never needs more than N lanes, but lane k is not "worker process k" — the caption says so.
Lanes rather than recording pids: they need no change to the worker or the journal format, they
show what matters (how many attempts ran at once and where the gaps are), and they work on
journals written before this report existed; pids would also not make stable rows, as a worker
that dies is replaced by a new process when the pool is rebuilt.

An attempt still open when the next ``run_started`` arrives was cut off by a crash: its bar ends
at the dead run's last record (outcome ``interrupted``), not at the next run's requeue.
"""

from __future__ import annotations

import html
import json
import math
import os
import stat
import sys
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from .errors import OutputError, UsageError
from .fsutil import atomic_write_bytes
from .journal import iter_records
from .lifecycle import replay
from .state import TaskStatus, adoption

FORMATS = ("md", "json", "html")
TOP_MESSAGES = 3
MAX_BUCKETS = 30
# Bucket widths (seconds) tried in order for the throughput table; 10 minutes is the usual one.
BUCKET_SIZES = (10, 30, 60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400)

# Record types that end an attempt, and the outcome each gives the attempt's bar.
_END_TYPES = {
    "task_completed": "completed",
    "task_failed": "failed",
    "retry_scheduled": "retried",
    "task_requeued": "requeued",
    "task_skipped": "skipped",
}
OUTCOME_COLOURS = {
    "completed": "#2e9d4f",
    "failed": "#d64541",
    "retried": "#f0a030",
    "requeued": "#8a8f98",
    "interrupted": "#4a4f58",
    "skipped": "#6f8fbf",
    "running": "#8e5ad6",
}


def _parse_ts(ts: str | None) -> float | None:
    if not ts:
        return None
    try:
        return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        try:
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default) of an already sorted list."""
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def _tokens(usage: dict[str, Any], key: str) -> int:
    v = usage.get(key)
    return int(v) if isinstance(v, (int, float)) else 0


def _task_tokens(t: Any, key: str) -> int:
    """A task's tokens of one kind: a clips task's own usage is its merge call, its clips' are in its partials."""
    return _tokens(t.usage, key) + sum(_tokens(p.get("usage") or {}, key) for p in t.partials.values())


def pack_lanes(attempts: list[dict[str, Any]]) -> int:
    """Give each attempt (sorted by start) a ``lane``: the first lane free at its start. Returns lane count."""
    lane_ends: list[float] = []
    for a in attempts:
        for i, end in enumerate(lane_ends):
            if end <= a["start"]:
                a["lane"] = i
                lane_ends[i] = a["end"]
                break
        else:
            a["lane"] = len(lane_ends)
            lane_ends.append(a["end"])
    return len(lane_ends)


def _bucket_size(span: float) -> int:
    for size in BUCKET_SIZES:
        if span / size <= MAX_BUCKETS:
            return size
    return BUCKET_SIZES[-1]


def build_report(journal: str | os.PathLike[str]) -> dict[str, Any]:
    """The report document for ``journal`` (JSON-able). Raises JournalError if it cannot be read."""
    journal = Path(journal)
    state = replay(journal).state  # raises JournalError for a missing / corrupt journal

    # -- history: attempts, completions, errors ----------------------------------------------
    open_attempts: dict[str, dict[str, Any]] = {}
    attempts: list[dict[str, Any]] = []
    completions: list[tuple[float, float]] = []  # (time, cost_usd)
    errors: dict[str, dict[str, Any]] = {}
    first_ts = last_ts = None
    for _line, _end, rec in iter_records(journal):
        t = _parse_ts(rec.get("ts"))
        typ = rec.get("type")
        tid = rec.get("task_id")
        if typ == "run_started" and open_attempts:
            # Attempts still open when a new run starts were cut off by a crash of the last run
            # (kill -9, power loss). End their bars at that run's last record, not at the new run's
            # requeue, which may come hours later and would draw a task running all night.
            for a in open_attempts.values():
                a.update(end=max(last_ts or a["start"], a["start"]), outcome="interrupted")
                attempts.append(a)
            open_attempts.clear()
        if t is not None:
            first_ts = t if first_ts is None else first_ts
            last_ts = t
        if typ == "task_started" and t is not None:
            open_attempts[tid] = {"task_id": tid, "attempt": rec.get("attempt"), "start": t}
        elif typ in _END_TYPES:
            a = open_attempts.pop(tid, None)
            if a is not None and t is not None:  # a skip from pending has no attempt to draw
                a.update(end=max(t, a["start"]), outcome=_END_TYPES[typ])
                if typ in ("task_failed", "retry_scheduled"):
                    a["error"] = f"{rec.get('error_class') or 'Error'}: {rec.get('message') or ''}"
                attempts.append(a)
            if typ == "task_completed" and t is not None:
                completions.append((t, float(rec.get("cost_usd") or 0.0)))
            if typ in ("task_failed", "retry_scheduled"):
                cls = str(rec.get("error_class") or "Error")
                e = errors.setdefault(cls, {"error_class": cls, "failed": 0, "retries": 0, "messages": Counter()})
                e["failed" if typ == "task_failed" else "retries"] += 1
                e["messages"][str(rec.get("message") or "")] += 1
    for a in open_attempts.values():  # still running (a live run) or cut off by a crash
        a.update(end=max(last_ts or a["start"], a["start"]), outcome="running")
        attempts.append(a)
    attempts.sort(key=lambda a: (a["start"], a["end"]))
    lanes = pack_lanes(attempts)

    tasks = {t.task_id: t for t in state.live_tasks()}
    titles = {tid: (t.title or Path(t.source).name or tid) for tid, t in state.tasks.items()}
    t0 = attempts[0]["start"] if attempts else first_ts
    timeline = [
        {"task_id": a["task_id"], "title": titles.get(a["task_id"], a["task_id"]), "attempt": a["attempt"],
         "lane": a["lane"], "outcome": a["outcome"], "start": round(a["start"] - t0, 3),
         "end": round(a["end"] - t0, 3), "error": a.get("error")}
        for a in attempts
    ] if t0 is not None else []

    # -- durations of completed tasks (the pipeline's own elapsed) -----------------------------
    elapsed = sorted(float(t.elapsed) for t in tasks.values()
                     if t.status is TaskStatus.COMPLETED and t.elapsed is not None)
    durations = {"count": len(elapsed), "min": elapsed[0] if elapsed else None,
                 "median": percentile(elapsed, 50), "p95": percentile(elapsed, 95),
                 "max": elapsed[-1] if elapsed else None}

    # -- tokens and cost by model / template ---------------------------------------------------
    # Cached prompt tokens (served from the API's cache, billed at the cached rate) and what they
    # saved against the full input rate, priced with the batch's table.
    from .pricing import batch_price_table, cache_totals

    table, mode = batch_price_table(state.settings)
    saving = {tid: cache_totals([t], table, mode)[1] for tid, t in tasks.items()}

    def group(key: str) -> list[dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        for t in tasks.values():
            name = getattr(t, key) or "(none)"
            r = rows.setdefault(name, {key: name, "tasks": 0, "completed": 0, "prompt_tokens": 0,
                                       "candidates_tokens": 0, "total_tokens": 0, "cached_tokens": 0,
                                       "cache_saving_usd": 0.0, "cost_usd": 0.0})
            r["tasks"] += 1
            r["completed"] += t.status is TaskStatus.COMPLETED
            for k in ("prompt_tokens", "candidates_tokens", "total_tokens", "cached_tokens"):
                r[k] += _task_tokens(t, k)
            r["cost_usd"] += t.cost_usd
            r["cache_saving_usd"] += saving[t.task_id]
        for r in rows.values():
            r["cost_usd"] = round(r["cost_usd"], 6)
            r["cache_saving_usd"] = round(r["cache_saving_usd"], 6)
        return sorted(rows.values(), key=lambda r: (-r["cost_usd"], r[key]))

    # -- throughput and cumulative series ------------------------------------------------------
    completions.sort()
    throughput: dict[str, Any] = {"bucket_seconds": None, "buckets": []}
    cumulative: list[dict[str, Any]] = []
    if completions and t0 is not None:
        span = max(completions[-1][0] - t0, 1.0)
        size = _bucket_size(span)
        counts: dict[int, int] = defaultdict(int)
        for ct, _c in completions:
            counts[int((ct - t0) // size)] += 1
        throughput = {"bucket_seconds": size, "buckets": [
            {"start": _iso(t0 + i * size), "offset": i * size, "completed": counts.get(i, 0)}
            for i in range(max(counts) + 1)]}
        total_cost = 0.0
        for n, (ct, c) in enumerate(completions, 1):
            total_cost += c
            cumulative.append({"t": round(ct - t0, 3), "completed": n, "cost_usd": round(total_cost, 6)})

    error_rows = []
    for e in sorted(errors.values(), key=lambda e: (-(e["failed"] + e["retries"]), e["error_class"])):
        error_rows.append({"error_class": e["error_class"], "failed": e["failed"], "retries": e["retries"],
                           "top_messages": [{"message": m, "count": c}
                                            for m, c in e["messages"].most_common(TOP_MESSAGES)]})
    failed_tasks = [{"task_id": t.task_id, "title": titles[t.task_id],
                     "error_class": (t.last_error or {}).get("error_class"),
                     "message": (t.last_error or {}).get("message")}
                    for t in tasks.values() if t.status is TaskStatus.FAILED]

    return {
        "journal": str(journal.resolve()),
        "batch_id": state.batch_id,
        "manifest": state.manifest,
        "created": state.created_ts,
        "first_record": _iso(first_ts),
        "last_record": state.last_ts,
        "runs": state.runs,
        "generated": _iso(datetime.now(tz=timezone.utc).timestamp()),
        "counts": state.counts(),
        "cost_usd": round(sum(t.cost_usd for t in tasks.values()), 6),
        "cached_tokens": sum(_task_tokens(t, "cached_tokens") for t in tasks.values()),
        "cache_saving_usd": round(sum(saving.values()), 6),
        "attempts": len(attempts),
        "errors": error_rows,
        "failed_tasks": failed_tasks,
        # Outputs worth a second look: cut at max_output_tokens, or adopted after a crash (paid once).
        "notable_outputs": [{"task_id": t.task_id, "title": titles.get(t.task_id, t.task_id), "output": t.output,
                             "note": ", ".join(n for n in ("truncated at max_output_tokens" if t.truncated else None,
                                                           adoption(t.adopted, t.attempts)) if n)}
                            for t in tasks.values() if t.status is TaskStatus.COMPLETED and (t.truncated or t.adopted)],
        "calls": sum(t.calls for t in tasks.values()),
        "lost_calls": sum(t.lost_calls for t in tasks.values()),
        "strategies": _strategies(tasks, titles),
        "durations": durations,
        "by_model": group("model"),
        "by_template": group("template"),
        "throughput": throughput,
        "cumulative": cumulative,
        "timeline": {"start": _iso(t0), "lanes": lanes,
                     "span": round(max((a["end"] for a in timeline), default=0.0), 3), "bars": timeline},
    }


# ---------------------------------------------------------------------------------------------
# Rendering


def _strategies(tasks: dict[str, Any], titles: dict[str, str]) -> list[dict[str, Any]]:
    """One row per task with a context plan: strategy, clip progress ("clip 3/7" / "7/7"), resolution,
    input tokens over every request (clips and merge), cost. Tasks without a plan (older journals,
    skipped before planning) are left out."""
    from .context import hms
    from .summary import plan_view

    rows = []
    for t in tasks.values():
        view = plan_view(t)
        if not view["strategy"]:
            continue
        clips = "" if view["clips"] is None else (view["progress"] or f"{view['clips_done']}/{view['clips']}")
        tokens = _task_tokens(t, "prompt_tokens")
        duration = t.video_duration if t.video_duration is not None else (t.plan or {}).get("duration")
        rows.append({"task_id": t.task_id, "title": titles.get(t.task_id, t.task_id), "status": t.status.value,
                     "duration": hms(duration) if duration is not None else "?", "strategy": view["strategy"],
                     "clips": clips, "clips_total": view["clips"], "clips_done": view["clips_done"],
                     "media_resolution": view["media_resolution"], "input_tokens": tokens,
                     "cost_usd": round(t.cost_usd, 6)})
    return rows


def _num(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _usd(v: float) -> str:
    return f"${v:.4f}"


def _md_cell(v: Any) -> str:
    # Markdown table cells: no raw pipes or newlines, and no live HTML from titles / messages.
    return html.escape(str(v), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return out


def _sections(doc: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    """The report's tables, shared by Markdown and HTML: (heading, headers, rows)."""
    c = doc["counts"]
    d = doc["durations"]
    out = [
        ("Tasks by status", ["Status", "Tasks"],
         [[s, c[s]] for s in ("completed", "failed", "skipped", "running", "pending")] + [["total", c["total"]]]),
        ("Errors by class", ["Error class", "Failed tasks", "Retries", "Top messages"],
         [[e["error_class"], e["failed"], e["retries"],
           "; ".join(f"{m['message']} (×{m['count']})" for m in e["top_messages"])] for e in doc["errors"]]),
        ("Task durations (completed tasks, seconds)", ["Count", "Min", "Median", "p95", "Max"],
         [[d["count"], _num(d["min"]), _num(d["median"]), _num(d["p95"]), _num(d["max"])]]),
    ]
    for key, title in (("model", "Tokens and cost by model"), ("template", "Tokens and cost by template")):
        rows = doc[f"by_{key}"]
        out.append((title, [key.capitalize(), "Tasks", "Completed", "Prompt tokens", "Output tokens",
                            "Total tokens", "Cached tokens", "Cache saving (USD)", "Cost (USD)"],
                    [[r[key], r["tasks"], r["completed"], r["prompt_tokens"], r["candidates_tokens"],
                      r["total_tokens"], r.get("cached_tokens", 0), _usd(r.get("cache_saving_usd", 0.0)),
                      _usd(r["cost_usd"])] for r in rows]))
    tp = doc["throughput"]
    if tp["bucket_seconds"]:
        out.append((f"Throughput (completions per {_fmt_span(tp['bucket_seconds'])})", ["Bucket start (UTC)",
                                                                                        "Completed"],
                    [[b["start"], b["completed"]] for b in tp["buckets"]]))
    if doc.get("strategies"):
        out.append(("Long videos: how each video was sent", ["Task", "Title", "Duration", "Strategy", "Clips",
                                                             "Resolution", "Input tokens", "Cost (USD)"],
                    [[r["task_id"], r["title"], r["duration"], r["strategy"], r["clips"], r["media_resolution"],
                      r["input_tokens"], _usd(r["cost_usd"])] for r in doc["strategies"]]))
    if doc.get("notable_outputs"):
        out.append(("Outputs to check", ["Task", "Title", "Output", "Note"],
                    [[r["task_id"], r["title"], r["output"], r["note"]] for r in doc["notable_outputs"]]))
    if doc["failed_tasks"]:
        out.append(("Failed tasks", ["Task", "Title", "Error class", "Message"],
                    [[f["task_id"], f["title"], f["error_class"], f["message"]] for f in doc["failed_tasks"]]))
    return out


def _fmt_span(seconds: float) -> str:
    s = int(seconds)
    if s % 86400 == 0:
        return f"{s // 86400} d"
    if s % 3600 == 0:
        return f"{s // 3600} h"
    if s % 60 == 0:
        return f"{s // 60} min"
    return f"{s} s"


def _header_lines(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [("Journal", doc["journal"]), ("Manifest", str(doc["manifest"])), ("Batch", str(doc["batch_id"])),
            ("Runs", str(doc["runs"])), ("First record", str(doc["first_record"])),
            ("Last record", str(doc["last_record"])), ("Attempts", str(doc["attempts"])),
            ("Total cost", _usd(doc["cost_usd"]) + (
                f" (cached input: {doc['cached_tokens']:,} tokens, saved {_usd(doc.get('cache_saving_usd', 0.0))})"
                if doc.get("cached_tokens") else ""))]


def render_markdown(doc: dict[str, Any]) -> str:
    lines = [f"# gsvr-batch report: {_md_cell(doc['batch_id'])}", ""]
    lines += [f"- **{k}:** {_md_cell(v)}" for k, v in _header_lines(doc)]
    for title, headers, rows in _sections(doc):
        lines += ["", f"## {title}", ""]
        lines += _md_table(headers, rows) if rows else ["(none)"]
    return "\n".join(lines) + "\n"


# -- HTML + SVG ---------------------------------------------------------------------------------

_E = html.escape

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Noto Sans CJK SC",sans-serif;
margin:24px auto;max-width:1200px;color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #e3e6ec;padding-bottom:4px}
table{border-collapse:collapse;margin:4px 0 8px}th,td{border:1px solid #dfe3ea;padding:4px 9px;text-align:left;
vertical-align:top}th{background:#f3f5f9}td.n{text-align:right;font-variant-numeric:tabular-nums}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}dt{color:#5b6475}dd{margin:0;
word-break:break-all}.cards{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0}.card{border:1px solid #dfe3ea;
border-radius:6px;padding:8px 14px;min-width:110px}.card b{display:block;font-size:22px}
figure{margin:8px 0 4px}figcaption{color:#5b6475;font-size:12.5px}svg{display:block;max-width:100%;height:auto}
.legend span{display:inline-block;margin-right:14px;font-size:12.5px}.legend i{display:inline-block;width:11px;
height:11px;margin-right:4px;vertical-align:-1px;border-radius:2px}
"""


def _ticks(span: float, n: int = 8) -> list[float]:
    if span <= 0:
        return [0.0]
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    if span > 120:  # minutes / hours read better on round minute steps
        step = next((s for s in (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
                     if s >= raw), step)
    out, t = [], 0.0
    while t <= span + 1e-9:
        out.append(t)
        t += step
    return out


def _fmt_offset(t: float) -> str:
    if t < 120 and t != int(t):
        return f"{t:.1f}s"
    if t < 120:
        return f"{int(t)}s"
    m, s = divmod(int(t), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}" if h else f"{m}m{s:02d}" if s else f"{m}m"


_W, _LEFT, _RIGHT = 1120, 70, 20


def _x_axis(span: float, y: float, plot_w: float) -> list[str]:
    out = [f'<line x1="{_LEFT}" y1="{y}" x2="{_LEFT + plot_w}" y2="{y}" stroke="#9aa3b2"/>']
    for t in _ticks(span):
        x = _LEFT + (t / span * plot_w if span else 0)
        out.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" stroke="#9aa3b2"/>'
                   f'<text x="{x:.1f}" y="{y + 16}" font-size="11" text-anchor="middle" fill="#5b6475">'
                   f'{_E(_fmt_offset(t))}</text>')
    return out


def svg_timeline(doc: dict[str, Any]) -> str:
    tl = doc["timeline"]
    bars, lanes = tl["bars"], max(tl["lanes"], 1)
    span = max(tl["span"], 1e-3)
    lane_h, top = 24, 10
    plot_w = _W - _LEFT - _RIGHT
    h = top + lanes * lane_h + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {h}" width="{_W}" height="{h}" '
           f'role="img" aria-label="Timeline of task attempts per lane">']
    for i in range(lanes):
        y = top + i * lane_h
        fill = "#f7f8fb" if i % 2 == 0 else "#ffffff"
        out.append(f'<rect x="{_LEFT}" y="{y}" width="{plot_w}" height="{lane_h}" fill="{fill}"/>'
                   f'<text x="{_LEFT - 8}" y="{y + lane_h / 2 + 4}" font-size="11.5" text-anchor="end" '
                   f'fill="#5b6475">lane {i + 1}</text>')
    for b in bars:
        x = _LEFT + b["start"] / span * plot_w
        w = max((b["end"] - b["start"]) / span * plot_w, 2.0)
        y = top + b["lane"] * lane_h + 3
        tip = (f"{b['title']} (task {b['task_id']}, attempt {b['attempt']}): {b['outcome']}, "
               f"{_fmt_offset(b['start'])}–{_fmt_offset(b['end'])}, {b['end'] - b['start']:.2f}s")
        if b.get("error"):
            tip += f"\n{b['error']}"
        out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{lane_h - 6}" rx="3" '
                   f'fill="{OUTCOME_COLOURS.get(b["outcome"], "#999")}" stroke="#ffffff" stroke-width="1">'
                   f'<title>{_E(tip)}</title></rect>')
    out += _x_axis(span, top + lanes * lane_h, plot_w)
    out.append("</svg>")
    return "".join(out)


def svg_cumulative(doc: dict[str, Any], key: str, label: str, colour: str, fmt) -> str:
    pts = doc["cumulative"]
    span = max(doc["timeline"]["span"], pts[-1]["t"] if pts else 0.0, 1e-3)
    top, plot_h = 14, 170
    plot_w = _W - _LEFT - _RIGHT
    h = top + plot_h + 30
    ymax = max((p[key] for p in pts), default=0) or 1
    if key == "completed":  # whole tasks: make the quarter grid lines fall on integers
        ymax = max(4, math.ceil(ymax / 4) * 4)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {h}" width="{_W}" height="{h}" '
           f'role="img" aria-label="{_E(label)}">']
    for frac in (0, 0.25, 0.5, 0.75, 1):
        y = top + plot_h - frac * plot_h
        out.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + plot_w}" y2="{y:.1f}" stroke="#eceff4"/>'
                   f'<text x="{_LEFT - 8}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#5b6475">'
                   f'{_E(fmt(ymax * frac))}</text>')
    if pts:
        # A step line: the total only changes at a completion.
        coords = [(_LEFT, top + plot_h)]
        prev = 0.0
        for p in pts:
            x = _LEFT + p["t"] / span * plot_w
            coords.append((x, top + plot_h - prev / ymax * plot_h))
            prev = p[key]
            coords.append((x, top + plot_h - prev / ymax * plot_h))
        coords.append((_LEFT + plot_w, coords[-1][1]))
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for p in pts:
            x = _LEFT + p["t"] / span * plot_w
            y = top + plot_h - p[key] / ymax * plot_h
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}">'
                       f'<title>{_E(_fmt_offset(p["t"]))}: {_E(fmt(p[key]))}</title></circle>')
    out += _x_axis(span, top + plot_h, plot_w)
    out.append("</svg>")
    return "".join(out)


def _html_table(headers: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "<p>(none)</p>"

    def cell(v: Any) -> str:
        numeric = isinstance(v, (int, float)) or (isinstance(v, str) and v[:1] in "$0123456789–" and
                                                  v.replace("$", "").replace(".", "").isdigit())
        return f'<td class="n">{_E(str(v))}</td>' if numeric else f"<td>{_E(str(v))}</td>"

    head = "".join(f"<th>{_E(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(doc: dict[str, Any]) -> str:
    c = doc["counts"]
    cards = [("Tasks", c["total"]), ("Completed", c["completed"]), ("Failed", c["failed"]),
             ("Skipped", c["skipped"]), ("Attempts", doc["attempts"]), ("Cost", _usd(doc["cost_usd"]))]
    legend = "".join(f'<span><i style="background:{col}"></i>{_E(name)}</span>'
                     for name, col in OUTCOME_COLOURS.items())
    tl = doc["timeline"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>gsvr-batch report {_E(str(doc['batch_id']))}</title><style>{_CSS}</style></head><body>",
        f"<h1>gsvr-batch report: batch {_E(str(doc['batch_id']))}</h1>",
        "<dl>" + "".join(f"<dt>{_E(k)}</dt><dd>{_E(v)}</dd>" for k, v in _header_lines(doc)) + "</dl>",
        '<div class="cards">' + "".join(f'<div class="card">{_E(k)}<b>{_E(str(v))}</b></div>'
                                        for k, v in cards) + "</div>",
        "<h2>Timeline</h2>",
        f'<figure>{svg_timeline(doc)}<figcaption><div class="legend">{legend}</div>'
        f"One bar per attempt, from its <code>task_started</code> record to the record that ended it; time is "
        f"relative to the first start ({_E(str(tl['start']))}). The journal does not record which worker "
        f"process ran an attempt, so attempts that overlap are packed into lanes first-fit: "
        f"{tl['lanes']} lane(s) means at most {tl['lanes']} attempts ran at once, not that lane 1 is worker 1. "
        f"Hover a bar for the task.</figcaption></figure>",
        "<h2>Completions over time</h2>",
        f"<figure>{svg_cumulative(doc, 'completed', 'Cumulative completions', '#2e6fd6', lambda v: f'{v:.0f}')}"
        "<figcaption>Cumulative number of completed tasks (time relative to the first start).</figcaption></figure>",
        "<h2>Cost over time</h2>",
        f"<figure>{svg_cumulative(doc, 'cost_usd', 'Cumulative cost', '#c2562b', lambda v: f'${v:.4f}')}"
        "<figcaption>Cumulative estimated cost (USD) of completed tasks, from each <code>task_completed</code> "
        "record's <code>cost_usd</code>.</figcaption></figure>",
    ]
    for title, headers, rows in _sections(doc):
        parts.append(f"<h2>{_E(title)}</h2>{_html_table(headers, rows)}")
    parts.append(f"<p style='color:#8a8f98;font-size:12px'>Generated {_E(str(doc['generated']))} "
                 f"by gsvr-batch report from the journal alone.</p></body></html>")
    return "\n".join(parts) + "\n"


def render_report(doc: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
    if fmt == "md":
        return render_markdown(doc)
    if fmt == "html":
        return render_html(doc)
    raise ValueError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")


def write_report(journal: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str] | None = None,
                 *, stream: TextIO | None = None) -> Path | None:
    """Render the report to ``out`` (written atomically) and return its path, or print it.

    Without ``out`` the report goes to ``stream`` (default stdout) and None is returned, in every
    format, so ``gsvr-batch report J --format html > r.html`` works as a shell user expects.
    """
    text = render_report(build_report(journal), fmt)
    if out is None:
        (stream or sys.stdout).write(text)
        return None
    out = Path(out).expanduser()  # `-o '~/r.md'` (quoted, or --output=~/r.md, which the shell leaves alone)
    if not _replaceable(out):
        # `-o` onto the journal once replaced the batch's whole history with its own report; the
        # manifest, a video or a lesson would be lost the same way. A report is only ever
        # written over an earlier report (of any format) or an empty file.
        raise UsageError(f"{out} exists and is not a gsvr-batch report: refusing to overwrite it "
                         f"(choose another name for the report, or delete that file first)")
    try:
        atomic_write_bytes(out, text.encode("utf-8"))
    except OutputError as exc:  # a path that cannot be written is the caller's to fix: exit 2, not 1
        raise UsageError(str(exc)) from exc
    return out


def _replaceable(path: Path) -> bool:
    """Whether ``path`` is absent, empty, or a report this command wrote (md, json or html).

    Each format is recognised by its whole shape, not by words in it: a journal holds "journal",
    "batch_id" and whatever its titles say, and must never pass for a JSON report.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False  # a folder, a device, or a FIFO (reading it would block)
    if st.st_size == 0:
        return True
    try:
        data = path.read_bytes()
    except OSError:
        return False
    text = data.decode("utf-8", "replace")
    if text.startswith("# gsvr-batch report: "):
        return True
    if text.startswith("<!DOCTYPE html>") and "<title>gsvr-batch report " in text[:8192]:
        return True
    try:
        doc = json.loads(data)
    except ValueError:  # a journal (many lines), a snapshot (a checksum line first), anything else
        return False
    return isinstance(doc, dict) and list(doc)[:2] == ["journal", "batch_id"] and {"generated", "counts"} <= doc.keys()


__all__ = ["FORMATS", "build_report", "pack_lanes", "percentile", "render_report", "write_report"]
