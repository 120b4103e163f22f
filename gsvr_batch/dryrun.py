"""``gsvr-batch run ... --dry-run``: validate, probe every local video, print the cost estimate.

Nothing is uploaded, nothing is sent to any API, and nothing is written: the journal is only
read (when it exists, for what is already done and for past output sizes) and never created,
and no run lock is taken, so a dry run can never block or disturb a real run on the same batch.
"""

from __future__ import annotations

import os
import unicodedata
from typing import Any, Callable

from .costs import JobEstimate, estimate_job
from .pricing import UNKNOWN_VIDEO_SECONDS
from .errors import GsvrError


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    total = int(round(seconds))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _fmt_cost(value: float | None) -> str:
    return "?" if value is None else f"${value:.4f}"


def _width(text: str) -> int:
    """Columns a terminal gives ``text``: CJK and other wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _cut(text: str, width: int) -> str:
    if _width(text) <= width:
        return text
    out = ""
    for ch in text:
        if _width(out + ch) > width - 1:
            break
        out += ch
    return out + "…"


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * max(0, width - _width(text))
    return fill + text if right else text + fill


def estimate_rows(opts: Any, *, probe: Callable[[str], float | None] | None = None
                  ) -> tuple[Any, list[JobEstimate], list[str]]:
    """(manifest, one estimate per job, notes) for ``opts`` (a RunOptions); raises GsvrError on bad input."""
    from .lifecycle import replay
    from .gone import load_for_run
    from .runner.preflight import check_notify_targets, resolve_journal

    manifest = load_for_run(opts.manifest, dict(opts.settings), force=bool(getattr(opts, "force", False)),
                            redo=getattr(opts, "retry_ids", ()))
    check_notify_targets(manifest.settings.notify)
    notes = [str(w) for w in manifest.warnings]
    journal = resolve_journal(opts.get("journal"), manifest)
    state = None
    if journal.exists():  # read only: replay() never writes, and no lock is taken
        try:
            state = replay(journal).state
        except GsvrError as exc:
            notes.append(f"Warning: journal {journal} not read ({exc}); estimating as a new batch")
        else:
            if state.manifest_identity and state.manifest_identity != manifest.identity:
                notes.append(f"Warning: {journal} belongs to another manifest; a real run would refuse it")
                state = None
    pricing = None
    try:
        from .pricing import load_pricing

        pricing = load_pricing(manifest.settings.pricing)
    except GsvrError:
        raise  # a broken --pricing file is a usage error the user must see
    except Exception as exc:  # noqa: BLE001 - no table: show tokens, costs as "?"
        notes.append(f"Warning: pricing table not loaded ({exc}); costs shown as ?")
    from .runner.preflight import resolve_run_limits

    limits, sources = resolve_run_limits(manifest, opts)
    ctx = {"strategy": manifest.settings.context, "clip_minutes": manifest.settings.clip_minutes,
           "mode": str(manifest.settings.mode or "online")}
    rows = [estimate_job(job, templates_dirs=manifest.templates_dirs, pricing=pricing, state=state,
                         force=bool(getattr(opts, "force", False)), max_duration=manifest.settings.max_duration,
                         probe=probe, limits=limits, settings_context=ctx) for job in manifest.jobs]
    if not getattr(opts, "force", False):
        rows = _with_earlier_outputs(manifest, rows, state)
    manifest.limits, manifest.limit_sources = limits, sources  # for the limits line
    manifest.youtube_line = youtube_line(manifest, rows, state, now=getattr(opts, "now", None))
    return manifest, rows, notes


def _with_earlier_outputs(manifest: Any, rows: list[JobEstimate], state: Any) -> list[JobEstimate]:
    """Jobs the run would adopt instead of sending (their output was made for exactly them under a
    journal that is not this one: reconcile.adopt_earlier_output) are not counted, as the run does."""
    import dataclasses

    from .runner.reconcile import earlier_output, never_started
    from .runner.session import fingerprints
    from .templates import load_templates

    tasks = state.tasks if state is not None else {}
    todo = [job for job, row in zip(manifest.jobs, rows) if row.counted
            and (job.job_id not in tasks or never_started(tasks[job.job_id]))]
    if not todo or not any(os.path.exists(job.output_path) for job in todo):
        return rows
    prints = fingerprints(todo, load_templates(manifest.templates_dirs))
    sandbox = bool(manifest.settings.sandbox)
    adoptable = {job.job_id for job in todo if earlier_output(job, prints.get(job.job_id), sandbox=sandbox)}
    return [dataclasses.replace(row, note="made earlier for exactly this job: adopted, not sent", counted=False)
            if row.task_id in adoptable else row for row in rows]


def youtube_line(manifest: Any, rows: list[JobEstimate], state: Any, now: Any = None) -> str | None:
    """The free tier's YouTube budget as it stands for this batch, or None when it does not apply.

    "you can't upload more than 8 hours of YouTube video per day" (free tier; Gemini API docs, video
    understanding, limitations). Today's use is the journal's (requests_charged.youtube_seconds,
    per Pacific day), the same count the run stops at (exit 75).
    """
    from .runner.session import youtube_limit
    from .timeutil import pacific_day

    links = [r for r in rows if r.source_kind == "youtube" and r.counted]
    s = manifest.settings
    limit = youtube_limit(s)
    if not links or limit is None or str(s.mode or "online") == "batch":
        return None
    import time as _time

    day = pacific_day((now or _time.time)())
    used = float((getattr(state, "youtube_seconds_by_day", None) or {}).get(day, 0.0)) if state is not None else 0.0
    known = sum(r.duration or 0.0 for r in links if r.duration is not None)
    unknown = sum(1 for r in links if r.duration is None)
    need = _fmt_duration(known) + (f" + {unknown} of unknown length" if unknown else "") if known else (
        f"{unknown} of unknown length")
    left = max(0.0, limit - used)
    verdict = ""
    if known and known > left:
        verdict = " — more than is left today: the run stops at the limit (exit 75) and goes on after midnight Pacific"
    return (f"YouTube (free tier: {limit / 3600:g} h of video a Pacific day): {len(links)} link(s), "
            f"{need}; {_fmt_duration(used)} used today, {_fmt_duration(left)} left{verdict}.")


def dry_run(opts: Any, *, probe: Callable[[str], float | None] | None = None) -> str:
    """The dry-run report for ``opts`` as text (what ``gsvr-batch run --dry-run`` prints)."""
    manifest, rows, notes = estimate_rows(opts, probe=probe)
    from .runner.preflight import resolve_journal

    mode = str(manifest.settings.mode or "online")
    batch = mode == "batch"
    header = ["Job", "Title", "Duration", "Strategy", "Requests", "In tokens", "Out tokens", "Online cost"]
    if batch:
        header.append("Batch cost")
    header.append("Note")
    table: list[list[str]] = []
    for r in rows:
        line = [r.task_id[:10], _cut(r.title, 32), _fmt_duration(r.duration), r.strategy, f"{r.requests:,}",
                f"{r.input_tokens:,}", f"{r.output_tokens:,}", _fmt_cost(r.cost_online)]
        if batch:
            line.append(_fmt_cost(r.cost_batch))
        line.append(r.note)
        table.append(line)
    counted = [r for r in rows if r.counted]
    total_secs = sum(r.duration or 0.0 for r in counted)
    unknown = sum(1 for r in counted if r.duration is None)
    requests = sum(r.requests for r in counted)
    total = ["Total", f"{len(counted)} to run", _fmt_duration(total_secs) + (f" +{unknown}?" if unknown else ""),
             "", f"{requests:,}", f"{sum(r.input_tokens for r in counted):,}",
             f"{sum(r.output_tokens for r in counted):,}", _fmt_cost(_sum(counted, "online"))]
    if batch:
        total.append(_fmt_cost(_sum(counted, "batch")))
    total.append("")
    widths = [max(_width(row[i]) for row in [header, *table, total]) for i in range(len(header))]
    right = {2, 4, 5, 6, 7, 8} if batch else {2, 4, 5, 6, 7}

    def fmt(row: list[str]) -> str:
        cells = [_pad(c, widths[i], i in right) for i, c in enumerate(row)]
        return "  ".join(cells).rstrip()

    out = [f"Dry run of {opts.manifest}: {len(rows)} job(s), mode {mode}. Nothing is uploaded, sent or journaled."]
    out += notes
    out += [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, table), fmt(["-" * w for w in widths]), fmt(total)]
    out.append("")
    out.append("Estimates: the plan the run would choose (1 call, low res, or clips + merge, to fit the model's input "
               "and the per-minute token quota); input = 258 tokens a frame (66 at low resolution) + 32 audio + 10 "
               "timestamp tokens a second + prompt characters / 4; output = median of this template's past outputs "
               "in the journal, else 2,048 tokens a request.")
    from .runner.preflight import limits_line_of

    out.append(limits_line_of(manifest.limits, manifest.limit_sources, requests))
    if unknown:
        out.append(f"{unknown} video(s) have no known duration (YouTube: unknown until the run counts its tokens); "
                   f"each is priced as {UNKNOWN_VIDEO_SECONDS / 3600:g} h and its strategy marked '?'.")
    if getattr(manifest, "youtube_line", None):
        out.append(manifest.youtube_line)
    refused = [r for r in counted if not r.fits]
    if refused:
        out.append(f"Warning: {len(refused)} job(s) are forced onto a strategy that cannot fit (see Note); "
                   f"remove the forced context: or choose clips.")
    limit = manifest.settings.cost_limit
    if limit is not None:
        est = _sum(counted, mode)
        verdict = "fits within" if est is not None and est <= limit else "would pass"
        out.append(f"Cost limit ${limit:.2f}: the estimate {verdict} it"
                   + (" (the run stops dispatching before passing it, exit 75)." if verdict == "would pass" else "."))
    out.append(f"Journal (not created by a dry run): {resolve_journal(opts.get('journal'), manifest)}")
    return "\n".join(out)


def _sum(rows: list[JobEstimate], mode: str) -> float | None:
    values = [r.cost_batch if mode == "batch" else r.cost_online for r in rows]
    if any(v is None for v in values):
        return None if values else 0.0
    return float(sum(values))  # type: ignore[arg-type]
