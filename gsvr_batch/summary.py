"""Read-only views of a batch for ``replay`` and ``status`` (safe while a run is writing)."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .channels import lock_is_held, read_owner
from .context import plan_label
from .fsutil import sha256_file
from .lifecycle import replay
from .progress import fmt_duration
from .state import BatchState, TaskStatus, adoption


def plan_view(t: Any) -> dict[str, Any]:
    """How a task's video is sent and how far its clips are, from the journal alone (its
    ``task_plan`` and ``clip_completed`` records): ``strategy`` ("1 call", "low res",
    "7 clips + merge"), ``clips`` (planned), ``clips_done`` (answered and journaled), and
    ``progress``: "clip 3/7" while clips are being answered (three of seven in), "merging" when all
    are in and the task still runs, "" otherwise. Empty values for a task with no plan yet."""
    plan = getattr(t, "plan", None) or {}
    strategy = plan.get("strategy")
    if not strategy:
        return {"strategy": None, "clips": None, "clips_done": None, "progress": "",
                "media_resolution": None}
    clips = [c for c in plan.get("clips") or [] if isinstance(c, dict)]
    partials = getattr(t, "partials", None) or {}
    if clips:
        done = sum(1 for c in clips if str(c.get("index")) in partials)
        n = len(clips)
    else:  # the summary a completed task's record carries: no clip list, its request count
        n = max(0, int(plan.get("requests") or 1) - 1)
        done = min(n, len(partials))
    label = plan_label(strategy, n)
    progress = ""
    status = getattr(getattr(t, "status", None), "value", None)
    if strategy == "clips" and status not in ("completed", "skipped"):
        progress = "merging" if done == n and status == "running" else f"clip {done}/{n}"
    media = plan.get("media_resolution") or ("MEDIA_RESOLUTION_LOW" if plan.get("low_resolution") else "default")
    return {"strategy": label, "clips": n if strategy == "clips" else None,
            "clips_done": done if strategy == "clips" else None, "progress": progress, "media_resolution": media}


def _plan_text(t: dict[str, Any]) -> str:
    if not t.get("strategy"):
        return ""
    return f"  [{t['strategy']}{', ' + t['progress'] if t.get('progress') else ''}]"


def verify_outputs(state: BatchState) -> list[dict[str, Any]]:
    """Every completed task's output must exist with the sha256 its record says."""
    problems = []
    for t in state.live_tasks():
        if t.status is not TaskStatus.COMPLETED:
            continue
        try:
            digest = sha256_file(t.output)
        except OSError as exc:
            problems.append({"task_id": t.task_id, "output": t.output, "problem": f"missing ({exc.strerror})"})
            continue
        if digest != t.sha256:
            problems.append({"task_id": t.task_id, "output": t.output,
                             "problem": f"sha256 {digest[:12]}… differs from the journal's {str(t.sha256)[:12]}…"})
    return problems


def batch_document(journal: str | os.PathLike[str], *, verify: bool = False) -> dict[str, Any]:
    """The state as one JSON-able document (``replay --json``).

    ``verify`` also reads every record from the start (not the snapshot), so damage in the part a
    snapshot covers is found too, and checks every output against its sha256.
    """
    return _batch_document(journal, verify=verify)[0]


def cache_view(s: BatchState) -> dict[str, Any]:
    """Prompt tokens the API served from its cache, and what that saved against the full input
    rate (priced with the batch's price table; the built-in one if that cannot be read)."""
    from .pricing import batch_price_table, cache_totals

    table, mode = batch_price_table(s.settings)
    tokens, saved = cache_totals(s.live_tasks(), table, mode=mode)
    return {"cached_tokens": tokens, "cache_saving_usd": round(saved, 6)}


def _cache_text(doc: dict[str, Any]) -> str:
    if not doc.get("cached_tokens"):
        return ""
    return f"; cached input {doc['cached_tokens']:,} tokens saved ${doc.get('cache_saving_usd', 0.0):.4f}"


def _batch_document(journal: str | os.PathLike[str], *, verify: bool = False) -> tuple[dict[str, Any], BatchState]:
    rp = replay(journal, use_snapshot=not verify)
    s = rp.state
    doc: dict[str, Any] = {
        "journal": str(Path(journal).resolve()),
        "batch_id": s.batch_id,
        "manifest": s.manifest,
        "created": s.created_ts,
        "last_record": s.last_ts,
        "records": s.last_seq,
        "runs": s.runs,
        "finished": s.finished,
        "stopped": s.stopped,
        "paused": s.paused and s.running_run,
        "counts": s.counts(),
        "cost_usd": round(s.total_cost_usd, 6),
        **cache_view(s),
        # generate calls whose answer was lost after it may have been billed (a kill, a timeout):
        # not in cost_usd (no usage came back), shown so the money is accounted for
        "lost_calls": sum(t.lost_calls for t in s.tasks.values()),
        "torn_tail_bytes": rp.torn_bytes,
        "requests_by_day": s.requests_by_day,
        "tasks": [
            {"id": t.task_id, "source": t.source, "title": t.title, "template": t.template, "model": t.model,
             "status": t.status.value, "attempts": t.attempts, "output": t.output, "sha256": t.sha256,
             "cost_usd": round(t.cost_usd, 6), "usage": t.usage, "step": t.step,
             "skipped_reason": t.skipped_reason, "last_error": t.last_error, "truncated": t.truncated,
             "adopted": t.adopted, "calls": t.calls, "lost_calls": t.lost_calls,
             "failures": t.failures, "crashes": t.crashes, "interruptions": t.interruptions, **plan_view(t)}
            for t in s.live_tasks()
        ],
    }
    if verify:
        doc["verify_problems"] = verify_outputs(s)
    return doc, s


def render_replay(doc: dict[str, Any]) -> str:
    c = doc["counts"]
    lines = [
        f"Journal:  {doc['journal']}",
        f"Manifest: {doc['manifest']}",
        f"Batch:    {doc['batch_id']}  ({doc['records']} records, {doc['runs']} runs, last {doc['last_record']})",
        f"Tasks:    {c['total']} total: {c['completed']} completed, {c['skipped']} skipped, "
        f"{c['failed']} failed, {c['running']} running, {c['pending']} pending",
        f"Cost:     ${doc['cost_usd']:.4f}" + _cache_text(doc) + (
            f" (+ {doc['lost_calls']} generate call{'s' if doc['lost_calls'] != 1 else ''} whose answer was lost "
            f"and may have been billed)" if doc.get("lost_calls") else ""),
    ]
    if doc.get("stopped"):
        st = doc["stopped"]
        lines.append(f"Stopped:  {st.get('kind')}: {st.get('reason')}")
    if doc["torn_tail_bytes"]:
        lines.append(f"Note:     {doc['torn_tail_bytes']} bytes at the end do not form a complete record "
                     f"(a run may be writing, or the last run crashed mid-write; the next run cuts them off)")
    unfinished = [t for t in doc["tasks"] if t["status"] in ("pending", "running", "failed")]
    if unfinished:
        lines.append("")
        lines.append("Unfinished or failed:")
        for t in unfinished:
            err = t["last_error"] or {}
            why = f" — {err.get('error_class')}: {err.get('message')}" if err else ""
            lines.append(f"  {t['id']}  {t['status']:<8} attempts={t['attempts']}  {t['title'] or t['source']}"
                         f"{_plan_text(t)}{why}")
    done = [t for t in doc["tasks"] if t["status"] == "completed"]
    if done:
        lines.append("")
        lines.append("Outputs:")
        for t in done:
            how = adoption(t.get("adopted"), t.get("attempts"))
            flags = (" [truncated: cut at max_output_tokens]" if t.get("truncated") else "") + (f" [{how}]" if how else "")
            lines.append(f"  {t['id']}  {t['output']}{_plan_text(t)}{flags}")
    if "verify_problems" in doc:
        lines.append("")
        if doc["verify_problems"]:
            lines.append(f"Verify: {len(doc['verify_problems'])} problem(s):")
            for p in doc["verify_problems"]:
                lines.append(f"  {p['task_id']}  {p['output']}: {p['problem']}")
        else:
            lines.append(f"Verify: all {len(done)} outputs match their recorded sha256.")
    return "\n".join(lines)


def status_document(journal: str | os.PathLike[str], *, now: float | None = None) -> dict[str, Any]:
    """Short live view: counts, rate, ETA, lock holder, running tasks with their step."""
    now = time.time() if now is None else now
    doc, rp_state = _batch_document(journal)  # one replay, not two
    held = lock_is_held(journal)
    doc["running_now"] = held
    doc["owner"] = read_owner(journal) if held else {}
    window = 600.0  # rate over the last 10 minutes, or since the run's first task started if later
    # Adopted outputs were made before (a crash, a lost journal): no work of this window.
    recent = [t for t in rp_state.live_tasks()
              if t.status is TaskStatus.COMPLETED and t.finished_ts and not t.adopted
              and now - _ts(t.finished_ts) <= window]
    starts = [_ts(t.started_ts) for t in recent if t.started_ts]
    starts += [_ts(t.started_ts) for t in rp_state.live_tasks() if t.status is TaskStatus.RUNNING and t.started_ts]
    span = min(window, now - min(starts)) if starts else window
    rate = len(recent) / max(span, 1.0) * 60 if recent else 0.0  # tasks per minute
    left = doc["counts"]["pending"] + doc["counts"]["running"]
    doc["rate_per_min"] = round(rate, 2)
    doc["eta_seconds"] = (left / rate * 60) if rate else None
    doc["waiting_until"] = None
    stopped = doc.get("stopped") or {}
    resets = stopped.get("resets_at")
    if stopped.get("kind") == "quota_day" and resets and _ts(resets) > now:
        # The run sleeps (or the next cron firing waits) until the daily quota resets: a rate-based
        # ETA would promise minutes for what cannot start before then.
        doc["eta_seconds"] = None
        doc["waiting_until"] = resets
    doc["running_tasks"] = [
        {"id": t.task_id, "title": t.title, "step": t.step,
         "elapsed": (now - _ts(t.started_ts)) if t.started_ts else None, **plan_view(t)}
        for t in rp_state.live_tasks() if t.status is TaskStatus.RUNNING
    ]
    rl = Path(str(journal) + ".ratelimit")
    if held and rl.exists():
        try:
            from .ratelimit import RateLimiter

            lim = RateLimiter.attach(str(rl))
            doc["rate_limiter"] = lim.snapshot()
            lim.close()
        except Exception:  # noqa: BLE001 - status is best effort about the limiter
            pass
    return doc


def _ts(iso: str | None) -> float:
    if not iso:
        return 0.0
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def render_status(doc: dict[str, Any]) -> str:
    c = doc["counts"]
    if doc["running_now"]:
        o = doc.get("owner") or {}
        head = f"Running (pid {o.get('pid')} on {o.get('host')}, since {o.get('since')})"
        if doc.get("paused"):
            head += " — PAUSED"
    else:
        head = "Not running"
        if doc.get("stopped"):
            head += f" — last run stopped: {doc['stopped'].get('kind')}: {doc['stopped'].get('reason')}"
        elif doc.get("finished"):
            head += " — batch finished"
    lines = [
        head,
        f"{c['completed'] + c['skipped']}/{c['total']} done, {c['failed']} failed, {c['running']} running, "
        f"{c['pending']} pending; cost ${doc['cost_usd']:.4f}{_cache_text(doc)}",
        f"rate {doc['rate_per_min']:.2f} tasks/min (recent), ETA "
        + (f"after the daily quota resets at {doc['waiting_until']}" if doc.get("waiting_until") else
           fmt_duration(doc['eta_seconds']) if doc['eta_seconds'] is not None else "unknown"),
    ]
    for t in doc["running_tasks"]:
        lines.append(f"  {t['id']}  {t['step'] or 'starting':<11} {fmt_duration(t['elapsed'])}  {t['title']}"
                     f"{_plan_text(t)}")
    return "\n".join(lines)


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, ensure_ascii=False, indent=2, default=str)
