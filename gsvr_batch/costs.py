"""Cost estimates for tasks not yet run (cost limit, dry run), from the pricing table.

Estimates are deliberately simple and documented (README, "Before and while spending money"):

* the request plan comes from :func:`gsvr_batch.context.choose`, exactly as the run will choose
  it: one call, the same call at low media resolution, or clips + one merge call;
* input tokens follow context.py's one rule (258 tokens a frame, 66 at low resolution, 32 audio
  tokens a second, 10 of timestamps; prompt text 4 characters a token); a clips plan pays each
  clip's video and prompt, and the merge reads every partial;
* output tokens ≈ the median of this template's past outputs in the journal, else 2,048 (a long lesson plan), never more than the template's ``max_tokens``; a clips plan
  writes one partial per clip and the merged lesson;
* a YouTube or http(s) link's length is unknown before the model answers (nothing is downloaded
  or counted for an estimate): it is priced as one hour and flagged ("?" after its strategy),
  unless an earlier run of the same batch measured it (its journaled plan or duration);
* the context options are :func:`gsvr_batch.context.effective_options` (job > ``--context`` /
  ``--clip-minutes`` > template), the same rule as the run; in batch mode no per-minute token
  quota applies, so only the input window limits a request.

Prices come from :mod:`gsvr_batch.pricing` (``PriceTable.cost(model, usage, mode)``), with the
audio share of the input at the audio rate.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from . import context
from .pricing import UNKNOWN_VIDEO_SECONDS
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
    input_tokens: int  # over every request of the plan
    output_tokens: int
    cost_online: float | None  # None when the model is not in the pricing table
    cost_batch: float | None
    note: str = ""  # "skip: longer than max_duration", "done", "duration unknown (priced as 1 h)"
    counted: bool = True  # False for jobs that will not be sent (done / skipped)
    strategy: str = "1 call"  # Plan.label(): "1 call" | "low res" | "7 clips + merge"
    requests: int = 1
    plan_reason: str = ""
    fits: bool = True

    def cost(self, mode: str = "online") -> float:
        value = self.cost_batch if mode == "batch" else self.cost_online
        return float(value or 0.0)


def past_output_tokens(state: BatchState | None, template: str) -> list[int]:
    """Output token counts of this template's completed tasks in the journal."""
    if state is None:
        return []
    return [int(t.usage.get("candidates_tokens") or 0) + int(t.usage.get("thoughts_tokens") or 0)
            for t in state.live_tasks()
            if t.status is TaskStatus.COMPLETED and t.template == template and (t.usage or {}).get("candidates_tokens")]


def estimate_output(template_max: int | None, past: list[int]) -> int:
    """Past outputs of the same template are the best guess; else a long lesson's 2,048 tokens.

    Not half the template's cap: a cap of 65,536 made the estimate ~8× a real lesson's cost.
    """
    values = [int(v) for v in past if v and int(v) > 0]
    if values:  # even one finished lesson of this template beats any default
        return int(statistics.median(values))
    out = DEFAULT_OUTPUT_TOKENS
    return min(out, int(template_max)) if template_max else out


def _price(pricing: Any, model: str, tin: int, tout: int, audio: int, mode: str) -> float | None:
    if pricing is None:
        return None
    try:
        return float(pricing.estimate_cost(model, tin, tout, mode, audio_tokens=min(audio, tin)))
    except Exception:  # noqa: BLE001 - an unknown model (override file) is shown as "?" rather than stopping
        return None


def plan_for(seconds: float | None, prompt_chars: int, *, model: str, media_resolution: str | None,
             tpm: float | None, ctx: dict[str, Any] | None = None, input_limit: int | None = None) -> context.Plan:
    """The plan the run would choose for a video of ``seconds`` (None: unknown, priced as 1 h)."""
    ctx = ctx or {}
    limit = int(input_limit or context.input_limit_for(model))
    return context.choose(UNKNOWN_VIDEO_SECONDS if seconds is None else seconds, prompt_chars, input_limit=limit,
                          tpm=tpm, forced=ctx.get("strategy") or "auto", clip_minutes=ctx.get("clip_minutes"),
                          allow_low=ctx.get("allow_low_resolution", True), template_resolution=media_resolution)


def plan_tokens(plan: context.Plan, seconds: float, prompt_chars: int, out_tokens: int) -> tuple[int, int, int]:
    """``(input, output, audio)`` tokens over every request of ``plan``."""
    fps = plan.fps
    if plan.strategy != "clips":
        tin = context.request_tokens(seconds, prompt_chars, low=plan.low_resolution, fps=fps)
        return tin, out_tokens, round(seconds * context.AUDIO_TOKENS_PER_SECOND)
    tin = tout = 0
    for clip in plan.clips:
        tin += context.request_tokens(clip.seconds, prompt_chars, low=plan.low_resolution, fps=fps) + \
            context.SEGMENT_PROMPT_TOKENS
        tout += out_tokens
    tin += context.prompt_tokens(prompt_chars) + tout  # the merge reads the prompt and every partial
    tout += out_tokens  # and writes the lesson
    return tin, tout, round(seconds * context.AUDIO_TOKENS_PER_SECOND)


def estimate_job(job: Any, *, templates_dirs: Iterable[Any] = (), pricing: Any = None,
                 state: BatchState | None = None, max_duration: float | None = None, force: bool = False,
                 probe: Callable[[str], float | None] | None = None, limits: dict[str, Any] | None = None,
                 settings_context: dict[str, Any] | None = None) -> JobEstimate:
    """Estimate one manifest job. Local videos are probed (PyAV); links are not fetched."""
    from .templates import get_template, render_prompt

    seconds: float | None = None
    measured = False  # a link's length learnt by an earlier run (count_tokens or the model's answer)
    if job.source_kind == "local":
        if probe is None:
            from .inputs import probe_duration as probe
        seconds = probe(job.source)
    elif state is not None and job.job_id in state.tasks:
        t = state.tasks[job.job_id]
        known = t.video_duration if t.video_duration is not None else (t.plan or {}).get("duration")
        if known:
            seconds, measured = float(known), True
    max_out: int | None = None
    media_res: str | None = None
    prompt_chars = 4000
    run_ctx: dict[str, Any] = dict(settings_context or {})
    ctx: dict[str, Any] = context.effective_options(None, getattr(job, "context", None),
                                                    strategy=run_ctx.get("strategy"),
                                                    clip_minutes=run_ctx.get("clip_minutes"))
    try:
        tpl = get_template(job.template, templates_dirs)
        mc = tpl.model_config or {}
        max_out = mc.get("max_output_tokens") or mc.get("max_tokens")
        media_res = mc.get("media_resolution")
        ctx = context.effective_options(getattr(tpl, "context", None), getattr(job, "context", None),
                                        strategy=run_ctx.get("strategy"), clip_minutes=run_ctx.get("clip_minutes"))
        try:
            prompt_chars = len(render_prompt(tpl, job.params, {"title": job.title, "duration": seconds,
                                                               "source": job.source}))
        except Exception:  # noqa: BLE001 - a prompt that does not render fails at run time, with its reason
            prompt_chars = len(tpl.prompt)
    except Exception:  # noqa: BLE001 - estimates never stop a batch
        pass
    lim = (limits or {}).get(job.model)
    # Batch requests are not paced per minute: only the model's input window limits one.
    tpm = None if run_ctx.get("mode") == "batch" else getattr(lim, "tpm", None)
    plan = plan_for(seconds, prompt_chars, model=job.model, media_resolution=media_res, tpm=tpm, ctx=ctx)
    tout_one = estimate_output(max_out, past_output_tokens(state, job.template))
    priced_seconds = UNKNOWN_VIDEO_SECONDS if seconds is None else seconds
    tin, tout, audio = plan_tokens(plan, priced_seconds, prompt_chars, tout_one)
    limit = job.max_duration if job.max_duration is not None else max_duration
    note, counted = "", True
    if measured:
        note = f"length {context.hms(seconds)} measured by an earlier run"
    if seconds is None:
        note = ("duration unknown until the model answers (priced as 1 h)" if job.source_kind == "youtube"
                else "duration unknown (link not downloaded for an estimate; priced as 1 h)"
                if job.source_kind == "url" else "duration unreadable (priced as 1 h)")
    elif limit is not None and seconds > limit:
        note, counted = f"skip: {seconds:.0f} s is longer than max_duration {limit:g} s", False
    elif not plan.fits:
        note = "will be refused: " + plan.reason
    if state is not None and not force:
        t = state.tasks.get(job.job_id)
        if t is not None and not t.dropped and t.status in (TaskStatus.COMPLETED, TaskStatus.SKIPPED):
            note, counted = f"already {t.status.value} (journal)", False
    return JobEstimate(task_id=job.job_id, title=job.title, template=job.template, model=job.model,
                       source_kind=job.source_kind, duration=seconds, input_tokens=tin, output_tokens=tout,
                       cost_online=_price(pricing, job.model, tin, tout, audio, "online"),
                       cost_batch=_price(pricing, job.model, tin, tout, audio, "batch"), note=note, counted=counted,
                       strategy=plan.label() + ("?" if seconds is None else ""), requests=plan.requests,
                       plan_reason=plan.reason, fits=plan.fits)
