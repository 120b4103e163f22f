"""Cost estimates for tasks not yet run (cost limit, dry run), from the pricing table.

Estimates are deliberately simple and documented (docs/FEATURES.md):

* input tokens ≈ video seconds × 300 (100 at low media resolution) + the rendered prompt's
  characters / 4 — the same rule Gemini's video tokenizer roughly follows;
* output tokens ≈ the median of this template's past outputs in the journal (any completed
  task counts), else half the template's ``max_tokens``, else 2048;
* a YouTube or http(s) link's length is unknown before the model answers (nothing is
  downloaded for an estimate), so it is priced as one hour and flagged as a guess.

Prices come from :mod:`gsvr_batch.pricing` (``PriceTable.cost(model, usage, mode)``).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .pricing import estimate_tokens
from .state import BatchState, TaskStatus

DEFAULT_OUTPUT_TOKENS = 2048


@dataclass
class JobEstimate:
    """What one job is expected to cost, for the dry-run table and the cost limit."""

    task_id: str
    title: str
    template: str
    model: str
    source_kind: str
    duration: float | None  # seconds; None when unknown (YouTube / links / unprobeable)
    input_tokens: int
    output_tokens: int
    cost_online: float | None  # None when the model is not in the pricing table
    cost_batch: float | None
    note: str = ""  # "skip: longer than max_duration", "done", "duration unknown (priced as 1 h)"
    counted: bool = True  # False for jobs that will not be sent (done / skipped)

    def cost(self, mode: str = "online") -> float:
        value = self.cost_batch if mode == "batch" else self.cost_online
        return float(value or 0.0)


def past_output_tokens(state: BatchState | None, template: str) -> list[int]:
    """Output token counts of this template's completed tasks in the journal."""
    if state is None:
        return []
    return [int(t.usage.get("candidates_tokens") or 0) for t in state.live_tasks()
            if t.status is TaskStatus.COMPLETED and t.template == template and (t.usage or {}).get("candidates_tokens")]


def estimate_output(template_max: int | None, past: list[int]) -> int:
    """Past outputs of the same template are the best guess; the template's cap is the fallback."""
    if past:
        return int(statistics.median(past))
    if template_max:
        return int(template_max) // 2
    return DEFAULT_OUTPUT_TOKENS


def estimate_input(video_seconds: float | None, prompt_chars: int, media_resolution: str | None) -> int:
    """Prompt tokens of one call, by the pricing module's one rule (prompt text ≈ 4 characters a token)."""
    return estimate_tokens(video_seconds, (prompt_chars + 3) // 4, media_resolution)


def _price(pricing: Any, model: str, tin: int, tout: int, mode: str) -> float | None:
    if pricing is None:
        return None
    try:
        return float(pricing.cost(model, {"prompt_tokens": tin, "candidates_tokens": tout,
                                          "total_tokens": tin + tout}, mode=mode))
    except Exception:  # noqa: BLE001 - an unknown model (override file) is shown as "?" rather than stopping
        return None


def estimate_job(job: Any, *, templates_dirs: Iterable[Any] = (), pricing: Any = None,
                 state: BatchState | None = None, max_duration: float | None = None, force: bool = False,
                 probe: Callable[[str], float | None] | None = None) -> JobEstimate:
    """Estimate one manifest job. Local videos are probed (PyAV); links are not fetched."""
    from .templates import get_template, render_prompt

    seconds: float | None = None
    if job.source_kind == "local":
        if probe is None:
            from .inputs import probe_duration as probe
        seconds = probe(job.source)
    max_out: int | None = None
    media_res: str | None = None
    prompt_chars = 4000
    try:
        tpl = get_template(job.template, templates_dirs)
        mc = tpl.model_config or {}
        max_out = mc.get("max_output_tokens") or mc.get("max_tokens")
        media_res = mc.get("media_resolution")
        try:
            prompt_chars = len(render_prompt(tpl, job.params, {"title": job.title, "duration": seconds,
                                                               "source": job.source}))
        except Exception:  # noqa: BLE001 - a prompt that does not render fails at run time, with its reason
            prompt_chars = len(tpl.prompt)
    except Exception:  # noqa: BLE001 - estimates never stop a batch
        pass
    tin = estimate_input(seconds, prompt_chars, media_res)
    tout = estimate_output(max_out, past_output_tokens(state, job.template))
    limit = job.max_duration if job.max_duration is not None else max_duration
    note, counted = "", True
    if seconds is None:
        note = ("duration unknown until the model answers (priced as 1 h)" if job.source_kind == "youtube"
                else "duration unknown (link not downloaded for an estimate; priced as 1 h)"
                if job.source_kind == "url" else "duration unreadable (priced as 1 h)")
    elif limit is not None and seconds > limit:
        note, counted = f"skip: {seconds:.0f} s is longer than max_duration {limit:g} s", False
    if state is not None and not force:
        t = state.tasks.get(job.job_id)
        if t is not None and not t.dropped and t.status in (TaskStatus.COMPLETED, TaskStatus.SKIPPED):
            note, counted = f"already {t.status.value} (journal)", False
    return JobEstimate(task_id=job.job_id, title=job.title, template=job.template, model=job.model,
                       source_kind=job.source_kind, duration=seconds, input_tokens=tin, output_tokens=tout,
                       cost_online=_price(pricing, job.model, tin, tout, "online"),
                       cost_batch=_price(pricing, job.model, tin, tout, "batch"), note=note, counted=counted)


def estimate_task_cost(runner: Any, task_id: str) -> float:
    """Estimated $ for one task of a live run, in the batch's mode (cached per task)."""
    cache = runner.__dict__.setdefault("_estimates", {})
    if task_id in cache:
        return cache[task_id]
    job = runner.jobs[task_id]
    est = estimate_job(job, templates_dirs=runner.manifest.templates_dirs, pricing=runner.pricing,
                       state=runner.state)
    cost = est.cost(str(getattr(runner.settings, "mode", "online") or "online"))
    cache[task_id] = cost
    return cost
