"""Gemini Batch Mode (``--mode batch``): half price, separate quotas, up to 24 h per job.

The manager does everything itself (it is the only journal writer, DESIGN invariant 1):

1. **poll** every journaled, unfinished batch job once (``batches.get``); a finished job has
   its answers written exactly like online answers (pipeline's format + atomic write, then a
   ``task_completed`` record at batch price); per-request errors fail only their task; a job
   that ends FAILED / CANCELLED / EXPIRED puts its tasks back to pending;
2. **submit** the pending tasks: upload each video (reused uploads as online, through the
   shared rate limiter), build its request, and send them with ``batches.create`` — inline
   for small jobs, as an uploaded JSONL file otherwise, split into several jobs at the limits;
3. exit 75 while jobs are still running ("N tasks waiting in M batch jobs"), so cron can
   call the same command again; ``--wait`` polls with backoff until everything is done.

Exactly-once submission: the ``batch_job_submitted`` record (state ``SUBMITTING``) with a
deterministic display name is journaled *before* ``batches.create``. If we die between the
create call and the record of its answer, the next run lists the remote jobs and adopts the
one with that display name instead of submitting the tasks again.

While a task is inside a remote job it is RUNNING in the fold; ``held_task_ids`` tells the
runner's reconcile not to requeue those tasks as "in flight at a crash".

Long videos (DESIGN invariant 13) follow the same context plan as online mode (context.py,
through ``pipeline.ManagerSteps.plan``: journaled before anything is sent, a YouTube link measured
with ``models.count_tokens`` first). Batch requests have no per-minute token quota, so the
ceiling is the model's input window alone. A ``full`` / ``low`` plan is one request keyed by the
task id; a ``clips`` plan is one request per clip (key ``<task>#clip-NNN``, the video Part
clipped with ``VideoMetadata`` offsets, the segment prompt). Each clip's answer is written to its
partial file and journaled (``clip_completed``, batch price) as the job is collected — every
successful answer of a job first, its errors after, so a failed sibling never drops a paid
answer. When a task's clips are all in, its **merge** goes into the *next* batch job
(``<task>#merge``): a follow-up round rather than an online call, because it keeps the whole
task at the batch price and off the online RPM/RPD quotas the user chose batch mode to avoid,
and it reuses this module's exactly-once submission; the cost is one more batch turnaround for
those tasks (minutes to hours), which a user of batch mode has already accepted. A request
refused for size (400 "input token count (N) exceeds … (L)") is never final: the task is
re-planned from N and L (``context.after_overflow``), the plan journaled, and the task goes back
to pending, uncharged, for the next round.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from .context import parse_token_overflow
from .errors import Disposition, DiskFull, ErrorRecord, GsvrError, RequestRejected, TransientError
from .state import BatchState, TaskStatus

log = logging.getLogger("gsvr_batch.batchmode")

SUBMITTING = "SUBMITTING"
NOT_SUBMITTED = "NOT_SUBMITTED"  # journaled intent whose create call never reached Google
SUCCEEDED = "JOB_STATE_SUCCEEDED"
FAILED_STATES = frozenset({"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"})
# Per-request error codes (google.rpc.Code) worth sending again in a later job.
TRANSIENT_CODES = frozenset({4, 8, 10, 13, 14})  # DEADLINE_EXCEEDED ABORTED RESOURCE_EXHAUSTED INTERNAL UNAVAILABLE

WAIT_FIRST = 1.0  # --wait: first pause between polls (seconds), growing ×1.5 ...
WAIT_MAX = 300.0  # ... up to this
CRON_HINT = timedelta(minutes=15)  # the "next check" we suggest to a cron user


@dataclass(frozen=True)
class JobLimits:
    """Where one batch job ends and the next begins (Gemini: inline ≤ 20 MB, files ≤ 2 GB)."""

    max_requests: int = 1000
    inline_max_requests: int = 20
    inline_max_bytes: int = 8 * 1024**2
    file_max_bytes: int = 1024**3


@dataclass
class _Item:
    task_id: str
    model: str
    request: dict[str, Any]  # REST GenerateContentRequest (camelCase), for the JSONL file
    inline: Any  # types.InlinedRequest, for inline jobs
    size: int  # bytes of its JSONL line
    duration: float | None
    key: str = ""  # the request's key in the job: the task id, "<task>#clip-003" or "<task>#merge"

    def __post_init__(self) -> None:
        self.key = self.key or self.task_id


CLIP_KEY = "#clip-"
MERGE_KEY = "#merge"


def request_key(task_id: str, kind: str = "whole", clip: int | None = None) -> str:
    """The key of one request in a batch job (deterministic: a resubmission uses the same keys)."""
    if kind == "clip":
        return f"{task_id}{CLIP_KEY}{int(clip or 0):03d}"
    if kind == "merge":
        return f"{task_id}{MERGE_KEY}"
    return task_id


def parse_key(key: str) -> tuple[str, str, int | None]:
    """``(task id, "whole" | "clip" | "merge", clip index)`` of a request key."""
    if CLIP_KEY in key:
        tid, _, idx = key.rpartition(CLIP_KEY)
        if idx.isdigit():
            return tid, "clip", int(idx)
    if key.endswith(MERGE_KEY):
        return key[: -len(MERGE_KEY)], "merge", None
    return key, "whole", None


def held_task_ids(state: BatchState) -> set[str]:
    """Tasks inside a journaled batch job that has not finished: they wait for Google, not for us."""
    held: set[str] = set()
    for job in state.batch_jobs.values():
        if not job.get("done"):
            held.update(job.get("task_ids", []))
    return held


def open_jobs(state: BatchState) -> list[dict[str, Any]]:
    return [j for j in state.batch_jobs.values() if not j.get("done")]


def plan_jobs(items: list[_Item], limits: JobLimits) -> list[list[_Item]]:
    """Split items (one model) into jobs that stay under the count and size limits."""
    jobs: list[list[_Item]] = []
    cur: list[_Item] = []
    size = 0
    for it in items:
        if cur and (len(cur) >= limits.max_requests or size + it.size > limits.file_max_bytes):
            jobs.append(cur)
            cur, size = [], 0
        cur.append(it)
        size += it.size
    if cur:
        jobs.append(cur)
    return jobs


def is_inline(items: list[_Item], limits: JobLimits) -> bool:
    return len(items) <= limits.inline_max_requests and sum(i.size for i in items) <= limits.inline_max_bytes


def _state_name(job: Any) -> str:
    st = getattr(job, "state", None)
    return str(getattr(st, "value", st) or "JOB_STATE_UNSPECIFIED")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ---------------------------------------------------------------------------------------------


class BatchMode:
    """One ``run --mode batch`` invocation, driving the run's :class:`~gsvr_batch.runner.session.Session`
    through its public face (the same transitions and retry policy as the online loop)."""

    def __init__(self, session: Any, *, limits: JobLimits | None = None) -> None:
        self.s = session
        self.blog = session.log
        self.limits = limits or JobLimits()
        self.client: Any = None
        self.steps: Any = None

    @property
    def state(self) -> BatchState:
        return self.blog.state

    # -- entry point ---------------------------------------------------------------------------
    def run(self) -> Any:
        from .channels import ControlWatcher
        from .pipeline import ManagerSteps
        from .ratelimit import NullLimiter

        s = self.s
        pending = self._pending()
        if not pending and not open_jobs(self.state):
            return s.finish_idle()
        s.control = ControlWatcher(self.blog.path)
        s.echo(f"Journal: {self.blog.path}")
        s.echo(f"Outputs: {s.manifest.output_root}")
        s.echo("Mode: Gemini Batch Mode (batch price; Google aims to finish each job within 24 h)")
        s.install_signals()
        try:
            self.client = s.client
            self.steps = ManagerSteps(s.worker_config, self.client, s.limiter or NullLimiter(),
                                      lambda ev: s.on_event(ev, {}))
            self._cycle()
            delay = WAIT_FIRST
            # The in-process sandbox forgets its batch jobs when this run ends, so with it the run
            # waits for them (they finish in seconds); against Google, only with --wait.
            wait = bool(s.settings.wait) or bool(s.settings.sandbox)
            while wait and s.stop_reason is None and (open_jobs(self.state) or self._pending()
                                                      or self._merge_ready()):
                self._sleep(delay)
                if s.stop_reason is not None:
                    break
                delay = min(delay * 1.5, WAIT_MAX)
                self._cycle()
            if s.stop_reason is None and open_jobs(self.state):
                jobs = open_jobs(self.state)
                n = sum(len([t for t in j["task_ids"] if self.state.tasks[t].status is TaskStatus.RUNNING])
                        for j in jobs)
                nxt = (datetime.fromtimestamp(s.now(), tz=timezone.utc) + CRON_HINT).strftime("%H:%M UTC")
                s.stop("batch_waiting", f"{_plural(n, 'task')} waiting in {_plural(len(jobs), 'batch job')}, next "
                       f"check {nxt} or later: run the same command again (e.g. from cron), or add --wait")
        except GsvrError as err:
            d = err.disposition
            if d is Disposition.STOP_BATCH:
                s.stop("fatal", f"stopped by a fatal API error: {err}")
            elif d is Disposition.PAUSE:
                s.stop("disk_full", f"paused: {err}. Free some space and run again")
            elif d is Disposition.PAUSE_UNTIL:
                s.stop("quota_day", f"daily quota exhausted: {err}", resets_at=getattr(err, "resets_at", None))
            elif isinstance(err, TransientError):
                s.stop("transient", f"the batch API is unavailable for now ({err}); run the same command again later")
            else:
                raise
        finally:
            s.restore_signals()
            s.flush_requests()
            if self.state.is_complete():
                s.delete_unneeded_uploads()
            s.close_services()
        return s.conclude()

    def _pending(self) -> list[str]:
        only = self.s.opts.only_ids
        return [tid for tid in self.s.order if self.state.tasks[tid].status is TaskStatus.PENDING
                and (only is None or tid in only)]

    def _cycle(self) -> None:
        """Adopt half-submitted jobs, poll every open job once, then submit what is pending."""
        self._adopt_submitting()
        self._poll_all()
        if self._stopping():
            return
        self._submit_pending()
        self.s.collect_deletions()
        self.blog.sync()

    def _stopping(self) -> bool:
        """Handle control commands and signals; True when no new work may start."""
        s = self.s
        was_cancelled = s.cancelled
        s.poll_control()
        if s.cancelled and not was_cancelled:
            self.cancel_open_jobs("cancelled by `gsvr-batch cancel`")
        if s.interrupts and (s.stop_reason is None or s.stop_reason.kind != "interrupted"):
            # Remote jobs go on without us: the next run collects them. Nothing to requeue.
            s.stop("interrupted", "interrupted; submitted batch jobs keep running at Google and the next run "
                                  "collects them")
        return s.stop_reason is not None or s.paused

    def _sleep(self, delay: float) -> None:
        counts = self.state.counts()
        jobs = open_jobs(self.state)
        states = ", ".join(sorted({j["state"] for j in jobs})) or "-"
        self.s.echo(f"batch: {counts['completed']} completed, {counts['failed']} failed, "
                    f"{counts['running']} waiting in {_plural(len(jobs), 'batch job')} ({states}); "
                    f"next check in {delay:.0f} s")
        end = time.monotonic() + delay
        while time.monotonic() < end:
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))
            if self._stopping():
                return

    # -- API calls -----------------------------------------------------------------------------
    def _api(self, label: str, model: str, fn: Callable[[], Any], *, retries: int | None = None) -> Any:
        """One batch / files call through the shared limiter's file bucket and the one retry loop.

        ``retries=0`` for a call that must never be repeated blind (``batches.create``)."""
        from .calls import call_api

        limiter = self.s.limiter
        if limiter is None:
            from .ratelimit import NullLimiter

            limiter = NullLimiter()
        return call_api(limiter, "file", model, fn, policy=self.s.policy, label=label, retries=retries)

    def _remote_by_display(self, model: str, names: set[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for job in self._api("batch_list", model, lambda: list(self.client.batches.list(config={"page_size": 100}))):
            if job.display_name in names and job.display_name not in found:
                found[job.display_name] = job
        return found

    # -- 1. crash window between journal and batches.create -------------------------------------
    def _adopt_submitting(self) -> None:
        half = [j for j in open_jobs(self.state) if j["state"] == SUBMITTING]
        if not half:
            return
        wanted = {j["display_name"]: j for j in half}
        found = self._remote_by_display(half[0].get("model") or "", set(wanted))
        for dn, j in wanted.items():
            remote = found.get(dn)
            if remote is not None:
                _important(self.s, f"Adopted batch job {remote.name} ({dn}) submitted before a crash.")
                self.blog.batch_job_updated(j["name"], _state_name(remote), remote=remote.name)
            else:
                # The create call never reached Google: its tasks go back to be submitted again.
                self.blog.batch_job_updated(j["name"], NOT_SUBMITTED, done=True)
                for tid in j["task_ids"]:
                    self.s.interrupted(tid, "its batch job was never created (crash before submission)")

    # -- 2. polling and results ----------------------------------------------------------------
    def _poll_all(self) -> None:
        for j in open_jobs(self.state):
            remote = j.get("remote")
            if not remote:
                continue
            try:
                job = self._api("batch_get", j.get("model") or "", lambda: self.client.batches.get(name=remote))
            except RequestRejected as err:
                # Deleted, or from an offline sandbox that has since stopped: its answers are gone,
                # so its tasks go back to be submitted again rather than stopping the batch.
                self._requeue_job(j, f"batch job {remote} no longer exists on the server ({err})")
                self.blog.batch_job_updated(j["name"], "JOB_STATE_NOT_FOUND", done=True)
                continue
            st = _state_name(job)
            if st != j["state"] and st not in FAILED_STATES and st != SUCCEEDED:
                self.blog.batch_job_updated(j["name"], st)
            if st == SUCCEEDED:
                self._collect(j, job)
            elif st in FAILED_STATES:
                self._requeue_job(j, f"batch job {remote} ended {st.replace('JOB_STATE_', '')}",
                                  charged=st == "JOB_STATE_FAILED")
                self.blog.batch_job_updated(j["name"], st, done=True)
                self._cleanup(j)

    def _requeue_job(self, j: dict[str, Any], reason: str, *, charged: bool = False) -> None:
        """A job that ended without answers puts its tasks back. FAILED is one failed attempt of each
        task (the policy decides); EXPIRED, CANCELLED or a job the server forgot are nobody's fault."""
        err = ErrorRecord(error_class="BatchJobFailed", message=reason, disposition=Disposition.RETRY)
        for tid in j["task_ids"]:
            if self.state.tasks[tid].status is not TaskStatus.RUNNING:
                continue
            if charged:
                self.s.fail_attempt(tid, err)
            else:
                self.s.interrupted(tid, f"{reason}; it will be submitted again")

    def _results(self, job: Any, model: str) -> list[tuple[str | None, Any, Any]]:
        """``(request key or None, response, error)`` for every answer of a SUCCEEDED job."""
        from google.genai import types

        dest = getattr(job, "dest", None)
        out: list[tuple[str | None, Any, Any]] = []
        if dest is not None and dest.inlined_responses:
            for ir in dest.inlined_responses:
                meta = ir.metadata or {}
                tid = meta.get("key") or meta.get("task_id")
                err = None
                if ir.error is not None:
                    err = {"code": getattr(ir.error, "code", None), "message": getattr(ir.error, "message", None)}
                out.append((tid, ir.response, err))
        elif dest is not None and dest.file_name:
            data = self._api("files_download", model, lambda: self.client.files.download(file=dest.file_name))
            for line in bytes(data).decode("utf-8").splitlines():
                if not line.strip():
                    continue
                obj = json.loads(line)
                resp = obj.get("response")
                out.append((obj.get("key"), types.GenerateContentResponse.model_validate(resp) if resp else None,
                            obj.get("error")))
        return out

    def _collect(self, j: dict[str, Any], job: Any) -> None:
        """Write and journal every answer of a SUCCEEDED job: all successes first, then the errors
        (a task failed by one refused clip must not lose its siblings' paid answers)."""
        s = self.s
        answered: set[str] = set()
        errors: list[tuple[str, str, int | None, dict[str, Any]]] = []
        blocked: dict[str, tuple[GsvrError, float]] = {}  # task → (why, cost): failed once all are in
        for key, response, err in self._results(job, j.get("model") or ""):
            if key is None:
                continue
            tid, kind, idx = parse_key(str(key))
            if tid not in j["task_ids"]:
                continue
            answered.add(str(key))
            t = self.state.tasks.get(tid)
            if t is None or t.status is not TaskStatus.RUNNING or tid not in s.jobs:
                continue  # already handled by an earlier poll of this job, or left the manifest
            if err is not None:
                errors.append((tid, kind, idx, err))
            elif kind == "clip":
                why = self._clip_answer(tid, int(idx or 0), response)
                if why is not None:
                    prev = blocked.get(tid)
                    blocked[tid] = (prev[0] if prev else why[0], (prev[1] if prev else 0.0) + why[1])
            else:
                self._final_answer(j, tid, kind, response)
        for tid, (why, cost) in blocked.items():  # every sibling's answer is journaled by now
            if self.state.tasks[tid].status is TaskStatus.RUNNING:
                s.fail_attempt(tid, why.to_record(), cost_usd=cost, calls=1)
        refused: dict[str, tuple[str, int | None, int, int]] = {}
        for tid, kind, idx, err in errors:
            if self.state.tasks[tid].status is not TaskStatus.RUNNING:
                continue
            overflow = parse_token_overflow(str(err.get("message") or ""))
            if overflow and kind != "merge":
                # Keep the first refused request of the task: the new plan is sized from it.
                prev = refused.get(tid)
                if prev is None or (idx or 0) < (prev[1] or 0):
                    refused[tid] = (kind, idx, overflow[0], overflow[1])
                continue
            self._request_error(tid, err)
        for tid, (kind, idx, n, limit) in refused.items():
            if self.state.tasks[tid].status is TaskStatus.RUNNING:
                self._replan(tid, idx, n, limit)
        keys = set(j.get("keys") or j["task_ids"])
        for tid in j["task_ids"]:
            t = self.state.tasks[tid]
            if t.status is not TaskStatus.RUNNING:
                continue
            if self._clips_left(tid) == 0 and any(parse_key(k)[0] == tid and parse_key(k)[1] == "clip" for k in keys):
                continue  # every clip is in: its merge goes into the next job (see the module doc)
            s.interrupted(tid, "the batch job returned no answer for this task"
                          if not any(parse_key(k)[0] == tid for k in answered) else
                          "the batch job left some of this task's clips unanswered; they are sent again")
        self.blog.batch_job_updated(j["name"], SUCCEEDED, done=True)
        self._cleanup(j)

    def _lesson_prep(self, spec: Any, duration: float | None, tpl: Any = None) -> Any:
        """What writing a lesson needs of the request (template, resolution, length): no upload.
        ``tpl``: the task's template when the caller has loaded it already."""
        from . import templates
        from .pipeline import PreparedRequest

        tpl = tpl or templates.get_template(spec.template, spec.templates_dirs)
        return PreparedRequest(task_id=spec.task_id, contents=[], generation=templates.generation_config(tpl),
                               prompt="", upload=None, video_duration=duration, template_name=tpl.name,
                               template_version=tpl.version, youtube=spec.source_kind == "youtube")

    def _plan_of(self, tid: str) -> Any:
        from .context import Plan

        rec = self.state.tasks[tid].plan
        try:
            return Plan.from_record(rec) if rec else None
        except (KeyError, TypeError, ValueError):
            return None

    def _clip_answer(self, tid: str, idx: int, response: Any) -> tuple[GsvrError, float] | None:
        """One clip's answer: its partial file (atomic, fsynced), then ``clip_completed`` at batch price.

        A blocked or empty answer is returned ``(why, cost)`` instead: the caller fails the task once
        every other answer of the job is journaled."""
        from .pipeline import answer_of, save_partial

        s = self.s
        t = self.state.tasks[tid]
        plan = self._plan_of(tid)
        clip = next((c for c in (plan.clips if plan else ()) if c.index == idx), None)
        if clip is None or str(idx) in t.partials:
            return None  # an answer for clip boundaries no longer planned, or journaled by an earlier poll
        try:
            answer = answer_of(response)
        except GsvrError as e:  # blocked / empty: the task fails, the answer was paid all the same
            return e, s.price(t.model, _usage_or_empty(response), mode="batch")
        spec = s.spec_for(tid)
        path, sha = save_partial(spec, clip, answer)
        self.blog.clip_completed(tid, clip=idx, start=clip.start, end=clip.end, path=path, sha256=sha,
                                 usage=answer.usage, cost_usd=s.price(t.model, answer.usage, mode="batch"))
        return None

    def _final_answer(self, j: dict[str, Any], tid: str, kind: str, response: Any) -> None:
        """A one-call answer or a merge: the lesson, written as online mode writes it, then ``task_completed``."""
        s = self.s
        t = self.state.tasks[tid]
        spec = s.spec_for(tid)
        plan = self._plan_of(tid)
        duration = (j.get("durations") or {}).get(tid)
        if duration is None and plan is not None:
            duration = plan.duration
        prep = self._lesson_prep(spec, duration)
        clips = len(plan.clips) if plan is not None and kind == "merge" else 0
        usage = _usage_or_empty(response)
        try:
            sha, n, usage, truncated = self.steps.write(spec, prep, response, plan=plan, clips=clips)
        except DiskFull:
            raise  # the job stays open: the next run writes its answers
        except GsvrError as e:
            s.fail_attempt(tid, e.to_record(), cost_usd=s.price(t.model, usage, mode="batch"),
                           calls=1 if usage else 0)
            return
        self.blog.complete_task(tid, output=spec.output_path, sha256=sha, bytes_=n, usage=usage,
                                cost_usd=s.price(t.model, usage, mode="batch"),
                                model_version=getattr(response, "model_version", None),
                                video_duration=duration, elapsed=None, truncated=truncated,
                                fingerprint=s.fingerprints.get(tid))
        if clips:
            s.drop_partials(tid)  # the merged lesson is durable: the partials served their purpose

    def _replan(self, tid: str, idx: int | None, n_tokens: int, limit: int) -> None:
        """A request refused for size: the next plan from the API's N and L, journaled; the task goes
        back to pending uncharged (the refusal cost nothing) and is sent again in the next round."""
        from . import context

        s = self.s
        t = self.state.tasks[tid]
        plan = self._plan_of(tid)
        if plan is None:
            s.interrupted(tid, "refused for size without a journaled plan; planned again")
            return
        spec = s.spec_for(tid)  # its context, clip_minutes and allow_low: Session.context_of's answer
        done = 0
        if plan.strategy == "clips" and idx is not None:
            # after_overflow keeps the answered clips that come before the refused one.
            while done < idx and str(plan.clips[done].index) in t.partials:
                done += 1
        prep = self._prompt_prep(spec, plan)
        try:
            new = context.after_overflow(plan, n_tokens, limit, duration=plan.duration if plan.duration_known else None,
                                         prompt_chars=len(prep.prompt), tpm=None, allow_low=spec.allow_low,
                                         clip_minutes=spec.clip_minutes,
                                         forced="clips" if spec.context == "clips" else "auto", completed=done)
        except context.ContextError as err:
            s.fail_attempt(tid, RequestRejected(f"refused for size and cannot be re-planned: {err}").to_record())
            return
        if not new.fits:
            s.fail_attempt(tid, RequestRejected(
                f"the API refused {n_tokens:,} tokens (limit {limit:,}) and no plan fits: {new.reason}").to_record())
            return
        self.blog.plan(tid, new.to_record(), new.duration)
        s.echo(f"Task {tid}: refused for size ({n_tokens:,} > {limit:,} tokens); re-planned as {new.label()}, "
               f"sent again in the next batch job.")
        s.interrupted(tid, f"refused for size ({n_tokens:,} tokens > {limit:,}); re-planned as {new.label()}")

    def _request_error(self, tid: str, err: dict[str, Any]) -> None:
        code = err.get("code")
        message = f"batch request failed: {err.get('message') or 'no message'} (code {code})"
        disposition = Disposition.RETRY if code in TRANSIENT_CODES else Disposition.FAIL_TASK
        self.s.fail_attempt(tid, ErrorRecord(error_class="BatchRequestError", message=message,
                                             disposition=disposition))

    def _cleanup(self, j: dict[str, Any]) -> None:
        """Release finished tasks' uploads (requeued tasks keep theirs for reuse) and delete the input file."""
        for tid in j["task_ids"]:
            t = self.state.tasks[tid]
            if t.status in (TaskStatus.COMPLETED, TaskStatus.FAILED) and tid in self.s.jobs:
                self.s.release_uploads(tid)
        if j.get("input_file") and self.s.janitor is not None:
            self.s.janitor.delete(j["input_file"])

    # -- 3. submission -------------------------------------------------------------------------
    def _merge_ready(self) -> list[str]:
        """Running tasks outside any open job whose clips are all answered: their merge is due."""
        held = held_task_ids(self.state)
        out = []
        for tid in self.s.order:
            t = self.state.tasks.get(tid)
            if t is None or t.status is not TaskStatus.RUNNING or tid in held:
                continue
            if (t.plan or {}).get("strategy") == "clips" and self._clips_left(tid) == 0:
                out.append(tid)
        return out

    def _clips_left(self, tid: str) -> int:
        """Clips of the task's journaled plan with no journaled partial (-1: not a clips plan)."""
        t = self.state.tasks[tid]
        clips = (t.plan or {}).get("clips") or []
        if (t.plan or {}).get("strategy") != "clips" or not clips:
            return -1
        return sum(1 for c in clips if str(c.get("index")) not in t.partials)

    def _prompt_prep(self, spec: Any, plan: Any) -> Any:
        """The task's rendered prompt without touching the video (a merge needs no upload). Rendered
        with the length the clips' prompts were rendered with: the probed one, None for a link."""
        from . import templates

        tpl = templates.get_template(spec.template, spec.templates_dirs)
        prep = self._lesson_prep(spec, plan.duration if plan is not None else None, tpl)
        known = plan.duration if plan is not None and plan.duration_known else None
        prep.prompt = templates.render_prompt(tpl, spec.params, {"title": spec.title, "duration": known,
                                                                 "source": spec.source})
        return prep

    def _submit_pending(self) -> None:
        s = self.s
        by_model: dict[str, list[_Item]] = {}
        now = s.now()
        for tid in self._merge_ready():  # already RUNNING: this attempt's clips are in
            if self._stopping():
                break
            try:
                by_model.setdefault(s.jobs[tid].model, []).extend(self._merge_items(s.spec_for(tid)))
            except GsvrError as err:
                d = s.fail_attempt(tid, err.to_record())
                if d.stop is not None:
                    self._unsubmitted(by_model, f"batch stopped: {err}")
                    return
        for tid in self._pending():
            t = self.state.tasks[tid]
            if t.not_before and t.not_before > now:
                continue
            if self._stopping() or not s.within_cost_limit(tid, []):
                break
            spec = s.start(tid)
            try:
                items = self._items_for(spec)
            except GsvrError as err:
                d = s.fail_attempt(tid, err.to_record())
                if d.stop is not None:
                    # The batch stops: the tasks prepared before this one go back unsubmitted.
                    self._unsubmitted(by_model, f"batch stopped: {err}")
                    return
                continue
            if items:
                by_model.setdefault(spec.model, []).extend(items)
        prepared = [i for items in by_model.values() for i in items]
        if s.cancelled or s.stop_reason is not None:
            # Stopped while preparing: what is uploaded stays reusable, nothing is submitted.
            self._unsubmitted(by_model, "stopped before submission")
            return
        for model, items in by_model.items():
            for chunk in plan_jobs(items, self.limits):
                self._submit(model, chunk)

    def _unsubmitted(self, by_model: dict[str, list[_Item]], reason: str) -> None:
        for tid in sorted({i.task_id for items in by_model.values() for i in items}):
            self.s.interrupted(tid, reason)

    def _items_for(self, spec: Any) -> list[_Item]:
        """The requests one started task sends in this round: its one call, its clips not yet
        answered, or — every clip in — its merge. Raises GsvrError (upload, template, plan)."""
        import dataclasses

        from .pipeline import clip_request, known_partial, whole_request

        s = self.s
        tid = spec.task_id
        plan = self._plan_of(tid)
        if plan is not None and plan.strategy == "clips" and self._clips_left(tid) == 0:
            items = self._merge_items(spec)
            if items:
                return items  # every clip is paid for: no upload, no video, only the merge
        # No per-minute token quota applies to batch requests: the ceiling is the input window.
        bspec = dataclasses.replace(spec, tpm=None)
        prep = self.steps.prepare(bspec)
        if prep.skipped_reason:
            self.blog.skip_task(tid, prep.skipped_reason, video_duration=prep.video_duration)
            return []
        plan = self.steps.plan(bspec, prep)
        duration = prep.video_duration if prep.video_duration is not None else plan.duration
        if self.state.tasks[tid].plan != plan.to_record():
            # Journaled before the job is created, whatever the strategy: the answer may come back
            # hours later to another run, which needs the plan to read it (and to re-plan from it).
            self.blog.plan(tid, plan.to_record(), duration)
        if plan.strategy != "clips":
            contents, gen = whole_request(prep, plan)
            return [self._item(tid, spec.model, request_key(tid), contents, gen, duration)]
        fresh = dataclasses.replace(bspec, partials=dict(self.state.tasks[tid].partials))
        items = []
        for clip in plan.clips:
            if known_partial(fresh, clip) is not None:
                continue
            contents, gen = clip_request(prep, plan, clip)
            items.append(self._item(tid, spec.model, request_key(tid, "clip", clip.index), contents, gen, duration))
        return items or self._merge_items(s.spec_for(tid))

    def _merge_items(self, spec: Any) -> list[_Item]:
        """The merge request of a task whose clips are all answered ([] if a partial went missing:
        the caller then sends the missing clips again)."""
        from . import context
        from .pipeline import known_partial, merge_request

        tid = spec.task_id
        plan = self._plan_of(tid)
        if plan is None:
            return []
        partials = []
        for clip in plan.clips:
            text = known_partial(spec, clip)
            if text is None:
                return []
            partials.append((clip, text))
        prep = self._prompt_prep(spec, plan)
        contents, gen = merge_request(prep, plan, partials)
        if context.text_tokens(contents[0]) > context.DEFAULT_INPUT_LIMIT:
            raise RequestRejected(f"the merge of {len(partials)} partial answers is larger than the model's input; "
                                  f"use longer clips (clip_minutes) or a template with a smaller max_output_tokens")
        return [self._item(tid, spec.model, request_key(tid, "merge"), contents, gen, plan.duration)]

    def _item(self, tid: str, model: str, key: str, contents: list[Any], generation: dict[str, Any],
              duration: float | None) -> _Item:
        from google.genai import types

        parts = [c if isinstance(c, types.Part) else types.Part(text=str(c)) for c in contents]
        content = types.Content(role="user", parts=parts)
        gen = types.GenerationConfig(**generation)
        request = {"contents": [content.model_dump(mode="json", by_alias=True, exclude_none=True)]}
        gen_json = gen.model_dump(mode="json", by_alias=True, exclude_none=True)
        if gen_json:
            request["generationConfig"] = gen_json
        line = json.dumps({"key": key, "request": request}, ensure_ascii=False)
        inline = types.InlinedRequest(model=model, contents=[content],
                                      config=types.GenerateContentConfig(**generation),
                                      metadata={"task_id": tid, "key": key})
        return _Item(tid, model, request, inline, len(line.encode("utf-8")) + 1, duration, key)

    def _submit(self, model: str, items: list[_Item]) -> None:
        from google.genai import types

        s = self.s
        seq = len(self.state.batch_jobs) + 1
        display = f"gsvr-{self.state.batch_id}-{seq:04d}"
        inline = is_inline(items, self.limits)
        task_ids = list(dict.fromkeys(i.task_id for i in items))  # a clips task has several requests
        # Journaled (fsynced) BEFORE the create call: a crash after it leaves an intent the
        # next run resolves by listing the remote jobs (adopt), never by blind resubmission.
        self.blog.batch_job_submitted(display, task_ids, model, state=SUBMITTING,
                                      display_name=display, input="inline" if inline else "file",
                                      durations={i.task_id: i.duration for i in items},
                                      keys=[i.key for i in items])
        cfg = {"display_name": display}
        if inline:
            src: Any = [i.inline for i in items]
        else:
            data = "".join(json.dumps({"key": i.key, "request": i.request}, ensure_ascii=False) + "\n"
                           for i in items).encode("utf-8")
            f = self._api("upload", model, lambda: self.client.files.upload(
                file=io.BytesIO(data), config={"display_name": f"{display}-requests",
                                               "mime_type": "application/jsonl"}))
            self.blog.batch_job_updated(display, SUBMITTING, input_file=f.name)
            src = f.name
        try:
            # Never retried blind: a create whose answer was lost may have created (and will bill) a job.
            job = self._api("batch_create", model, lambda: self.client.batches.create(
                model=model, src=src, config=types.CreateBatchJobConfig(**cfg)), retries=0)
        except TransientError as err:
            # Unknown whether Google created it: look it up by the journaled display name first.
            try:
                found = self._remote_by_display(model, {display}).get(display)
            except GsvrError:
                found = None
            if found is None:
                # Still unknown (the list failed too, or it is not visible yet): leave the intent;
                # the next run adopts the job or, if it never existed, submits the tasks again.
                raise err
            job = found
            _important(s, f"Adopted batch job {job.name} ({display}) after its create answer was lost.")
        except GsvrError as err:
            self.blog.batch_job_updated(display, NOT_SUBMITTED, done=True, reason=str(err))
            for tid in task_ids:
                d = s.fail_attempt(tid, err.to_record())
                if d.stop is not None:
                    raise
            return
        self.blog.batch_job_updated(display, _state_name(job), remote=job.name)
        clips = sum(1 for i in items if parse_key(i.key)[1] == "clip")
        merges = sum(1 for i in items if parse_key(i.key)[1] == "merge")
        extra = [f"{_plural(clips, 'clip request')}" if clips else "", f"{_plural(merges, 'merge')}" if merges else ""]
        what = ", ".join(x for x in extra if x)
        s.echo(f"Submitted batch job {job.name} ({display}): {_plural(len(task_ids), 'task')}"
               + (f" ({len(items)} requests: {what})" if what else "")
               + f", {'inline' if inline else 'JSONL file'} input, model {model}.")

    # -- cancel --------------------------------------------------------------------------------
    def cancel_open_jobs(self, reason: str) -> int:
        return cancel_jobs(self.blog, self.client, reason, echo=self.s.echo)


def _important(session: Any, text: str) -> None:
    """A line even ``--progress quiet`` shows: a job adopted after a crash is what an operator
    must be able to see in the log of the run that found it."""
    say = getattr(session.echo, "say", None)
    if say is not None:
        say(text, important=True)
    else:
        session.echo(text)


def _usage_or_empty(response: Any) -> dict[str, int]:
    from .pipeline import usage_of

    return usage_of(response) if response is not None else {}


def cancel_jobs(blog: Any, client: Any, reason: str, echo: Callable[[str], None] = print) -> int:
    """Cancel every open remote job of ``blog``; put back to pending only the tasks of jobs the server
    confirms cancelled (a job whose cancel failed keeps running at Google: its tasks stay held and
    the next run collects its answers). Returns the number of jobs cancelled."""
    n = 0
    for j in open_jobs(blog.state):
        remote = j.get("remote")
        confirmed = client is None or not remote  # an in-process sandbox died with its run; an intent never submitted
        if remote and client is not None:
            try:
                client.batches.cancel(name=remote)
                state = _state_name(client.batches.get(name=remote))
                confirmed = state in FAILED_STATES or state in ("JOB_STATE_CANCELLING", SUCCEEDED) or \
                    "CANCEL" in state
            except Exception as exc:  # noqa: BLE001 - reported; the job keeps its tasks
                log.warning("could not cancel batch job %s: %s", remote, exc)
                echo(f"Warning: batch job {remote} could not be cancelled ({exc}); its tasks stay with it and "
                     f"the next run collects its answers.")
                continue
        if not confirmed:
            continue
        for tid in j["task_ids"]:
            t = blog.state.tasks.get(tid)
            if t is not None and t.status is TaskStatus.RUNNING:
                blog.requeue(tid, f"batch job cancelled ({reason})", interrupted=True)
        blog.batch_job_updated(j["name"], "JOB_STATE_CANCELLED", done=True, reason=reason)
        n += 1
    return n


def cancel_batch_jobs(journal: str | Path, *, echo: Callable[[str], None] = print) -> int | None:
    """``gsvr-batch cancel`` when no run is in progress: cancel remote batch jobs directly.

    Takes the run lock (LockHeld if a run started meanwhile), journals under it, and returns
    the number of jobs cancelled — or None when the journal has no open batch job.
    """
    from .channels import RunLock
    from .gemini import WorkerConfig, make_client
    from .lifecycle import BatchLog, replay

    journal = Path(journal)
    if not open_jobs(replay(journal).state):
        return None
    lock = RunLock(journal)
    lock.acquire()
    try:
        blog, _ = BatchLog.open(journal, warn=lambda m: echo(f"Warning: {m}"))
        try:
            settings = blog.state.settings
            client = None
            if not settings.get("sandbox"):
                # Same client the run used: GOOGLE_GEMINI_BASE_URL and the key from the environment.
                client = make_client(WorkerConfig(base_url=None, api_version=None,
                                                  api_key_env=settings.get("api_key_env"),
                                                  request_timeout=60.0, limiter_path=None))
            # (an in-process sandbox died with its run: its jobs are gone, only the journal is left)
            n = cancel_jobs(blog, client, "gsvr-batch cancel", echo=echo)
            blog.cancel("gsvr-batch cancel (batch jobs)")
            blog.sync()
        finally:
            blog.close()
    finally:
        lock.release()
    left = len(open_jobs(replay(journal).state))
    if n:
        echo(f"Cancelled {_plural(n, 'batch job')}; their tasks are pending again (rerun to resubmit).")
    if left:
        echo(f"{_plural(left, 'batch job')} could not be cancelled and keep their tasks; the next run collects "
             f"their answers (or try `gsvr-batch cancel` again).")
    return n


__all__ = ["BatchMode", "JobLimits", "held_task_ids", "open_jobs", "plan_jobs", "is_inline",
           "cancel_jobs", "cancel_batch_jobs", "request_key", "parse_key"]
