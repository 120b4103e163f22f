"""Cost estimates for tasks not yet run (cost limit, dry run), from the pricing table.

Estimates are deliberately simple and documented: input ≈ video seconds × tokens per second
(300 at default media resolution, 100 at low) + prompt tokens; output ≈ the median of this
template's past outputs in the journal, else half the template's max output tokens.
"""

from __future__ import annotations

import statistics
from typing import Any

from .state import BatchState, TaskStatus

DEFAULT_OUTPUT_TOKENS = 2048
UNKNOWN_VIDEO_SECONDS = 3600.0  # a YouTube link's length is unknown before the model answers: assume 1 h


def past_output_tokens(state: BatchState, template: str) -> list[int]:
    return [int(t.usage.get("candidates_tokens") or 0) for t in state.live_tasks()
            if t.status is TaskStatus.COMPLETED and t.template == template and t.usage.get("candidates_tokens")]


def estimate_output(template_max: int | None, past: list[int]) -> int:
    if len(past) >= 3:
        return int(statistics.median(past))
    if template_max:
        return int(template_max) // 2
    return DEFAULT_OUTPUT_TOKENS


def estimate_input(video_seconds: float | None, prompt_chars: int, media_resolution: str | None) -> int:
    per_second = 100 if (media_resolution or "").lower() in ("low", "media_resolution_low") else 300
    secs = UNKNOWN_VIDEO_SECONDS if video_seconds is None else video_seconds
    return int(round(secs * per_second)) + (prompt_chars + 3) // 4


def estimate_task_cost(runner: Any, task_id: str) -> float:
    """Estimated $ for one task of a live run (cached per task)."""
    cache = runner.__dict__.setdefault("_estimates", {})
    if task_id in cache:
        return cache[task_id]
    job = runner.jobs[task_id]
    try:
        from .templates import get_template

        tpl = get_template(job.template, runner.manifest.templates_dirs)
        mc = tpl.model_config or {}
        max_out = mc.get("max_output_tokens") or mc.get("max_tokens")
        media_res = mc.get("media_resolution")
        prompt_chars = len(tpl.prompt)
    except Exception:  # noqa: BLE001 - estimates never stop a batch
        max_out, media_res, prompt_chars = None, None, 4000
    seconds = None
    if job.source_kind == "local":
        from .inputs import probe_duration

        seconds = probe_duration(job.source)
    tin = estimate_input(seconds, prompt_chars, media_res)
    tout = estimate_output(max_out, past_output_tokens(runner.state, job.template))
    cost = runner.pricing.cost(job.model, {"prompt_tokens": tin, "candidates_tokens": tout}, mode="online")
    cache[task_id] = float(cost)
    return float(cost)
