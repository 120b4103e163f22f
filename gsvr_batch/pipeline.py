"""One task in a worker process: resolve → upload → wait ACTIVE → generate → format → write.

A worker is a ``ProcessPoolExecutor`` process (spawn) set up once by :func:`init_worker`;
the manager then calls :func:`run_task` per task. ``run_task`` never raises for task,
transient or batch errors: it returns a :class:`TaskResult` whose ``error`` says what
happened and what ``kind`` of reaction the manager owes it. Progress goes to the manager
as events on the queue (the manager alone writes the journal, DESIGN invariant 1).

Every API call goes through :func:`_call`: the shared rate limiter first, the SDK second,
:func:`gemini.classify` on failure, and the one retry loop of the worker.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import multiprocessing
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from . import fsutil, inputs
from .errors import (
    BatchStop,
    ContentBlocked,
    CredentialsError,
    DiskFull,
    FatalAPIError,
    FileProcessingFailed,
    GsvrError,
    OutputError,
    QuotaExhausted,
    RateLimited,
    RequestRejected,
    TransientError,
)
from .gemini import WorkerConfig, classify, make_client, redact
from .tasks import EVENT_STEP, EVENT_UPLOAD, EVENT_USAGE, TaskResult, TaskSpec, UploadRef

__all__ = ["WorkerConfig", "init_worker", "run_task", "error_dict", "estimate_tokens", "PreparedRequest",
           "ManagerSteps", "usage_of"]

log = logging.getLogger("gsvr_batch.pipeline")

T = TypeVar("T")

# Tokens per second of video: see pricing.estimate_tokens.
# Guess for videos whose length is unknown before the call (YouTube): 10 minutes.
UNKNOWN_DURATION_GUESS = 600.0
# An upload is only reused if it stays valid for at least this long.
REUSE_MARGIN = _dt.timedelta(hours=1)
# Free space an output write must leave on its disk.
OUTPUT_DISK_MARGIN = 10 * 1024**2
BACKOFF_CAP = 60.0
POLL_CAP = 10.0
_OK_FINISH = {"STOP", "MAX_TOKENS"}


@dataclass
class _Worker:
    cfg: WorkerConfig
    client: Any
    limiter: Any
    queue: Any
    parent_pid: int


_STATE: _Worker | None = None


# --------------------------------------------------------------------------- process setup


def _set_parent_death_signal() -> None:
    """Linux: have the kernel SIGKILL this worker when its manager dies (even by kill -9).

    An orphaned worker must never write an output its (dead) manager will not journal.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %s", ctypes.get_errno())
    except (OSError, AttributeError) as exc:
        log.warning("cannot set the parent-death signal: %s", exc)


def _make_limiter(path: str | None) -> Any:
    from . import ratelimit

    if path:
        return ratelimit.RateLimiter.attach(path)
    return ratelimit.NullLimiter()


def init_worker(cfg: WorkerConfig, queue: Any) -> None:
    """``ProcessPoolExecutor(initializer=init_worker, initargs=(cfg, queue))``; spawn context.

    The process-wide hooks (SIGINT ignored, parent-death signal) are only installed in a
    real child process, so tests may call this in-process without changing pytest itself.
    """
    global _STATE
    if multiprocessing.parent_process() is not None:
        # The manager handles Ctrl-C and decides what happens to running tasks.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _set_parent_death_signal()
        # The manager may have died (kill -9) between spawning us and the prctl above; then the
        # kernel will never send the death signal and we would idle as an orphan forever.
        if os.getppid() != multiprocessing.parent_process().pid:
            os._exit(1)
    client = make_client(cfg)
    _STATE = _Worker(cfg=cfg, client=client, limiter=_make_limiter(cfg.limiter_path), queue=queue, parent_pid=os.getppid())


def _require_state() -> _Worker:
    if _STATE is None:
        raise RuntimeError("run_task called before init_worker")
    return _STATE


# --------------------------------------------------------------------------- results


def error_kind(err: GsvrError) -> str:
    """What the manager must do about an error (see TaskResult.error)."""
    if isinstance(err, QuotaExhausted):
        return "quota_day"
    if isinstance(err, (FatalAPIError, CredentialsError)):
        return "fatal"
    if isinstance(err, DiskFull):
        return "disk_full"
    if isinstance(err, BatchStop):
        return "cancelled"
    if isinstance(err, TransientError):
        return "transient"
    return "task"


def error_dict(err: GsvrError) -> dict[str, Any]:
    d: dict[str, Any] = {
        "error_class": err.error_class,
        "message": redact(str(err)),
        "retryable": err.retryable,
        "kind": error_kind(err),
    }
    for attr in ("retry_delay", "resets_at", "quota_id"):
        value = getattr(err, attr, None)
        if value is not None:
            d[attr] = value
    return d


class _Task:
    """State of one running task (so helpers need not pass ten arguments)."""

    def __init__(self, w: _Worker, spec: TaskSpec) -> None:
        self.w = w
        self.spec = spec
        self.calls: Counter[str] = Counter()
        self.headers = {"x-gsvr-task-id": spec.task_id}

    def emit(self, kind: str, payload: dict[str, Any]) -> None:
        if self.w.queue is None:
            return
        try:
            self.w.queue.put((kind, self.spec.task_id, payload))
        except Exception as exc:  # a broken queue must not lose the task's result
            log.warning("task %s: cannot report %s event: %s", self.spec.task_id, kind, exc)

    def step(self, name: str) -> None:
        self.emit(EVENT_STEP, {"step": name})

    # ---------------------------------------------------------------- the retry loop

    def call(self, kind: str, label: str, fn: Callable[[], T], *, tokens: int = 0) -> T:
        """Run one API call through the limiter with the worker's retry policy.

        ``kind`` is the limiter's bucket ("generate" | "file"); ``label`` counts the call
        in ``TaskResult.api_calls``. Transient errors are retried up to
        ``max_call_retries`` times; a 429 first tells the shared limiter, so every worker
        holds, and the retry waits at least the server's retryDelay.
        """
        cfg = self.w.cfg
        model = self.spec.model
        attempt = 0
        while True:
            self.w.limiter.acquire(kind, model, tokens=tokens)  # may raise QuotaExhausted / BatchStop
            self.calls[label] += 1
            if label == "generate":
                # Counted whatever the outcome: the API charges RPD for failed requests too.
                self.emit(EVENT_USAGE, {"model": model, "requests": 1})
            failed_at = time.monotonic()
            try:
                out = fn()
            except Exception as exc:
                err = classify(exc)
                if isinstance(err, QuotaExhausted):
                    self.w.limiter.record_quota_day_exhausted(model)
                    raise err from exc
                if isinstance(err, RateLimited):
                    self.w.limiter.record_rate_limited(kind, model, err.retry_delay)
                if not isinstance(err, TransientError) or attempt >= cfg.max_call_retries:
                    raise err from exc
                delay = min(BACKOFF_CAP, 2.0**attempt) * random.uniform(0.8, 1.2)
                if isinstance(err, RateLimited) and err.retry_delay is not None:
                    # The limiter's acquire holds every worker until then; we also wait here so
                    # the server's delay is honoured even with a NullLimiter.
                    delay = max(err.retry_delay - (time.monotonic() - failed_at), 0.0) + random.uniform(0.0, 0.25)
                attempt += 1
                log.info(
                    "task %s: %s call failed (%s), retry %d/%d in %.1f s",
                    self.spec.task_id, label, err, attempt, cfg.max_call_retries, delay,
                )
                time.sleep(delay)
                continue
            if kind != "generate":
                # generate calls report after the response is read (with the real token count);
                # file calls here, so a file bucket slowed by a 429 recovers too.
                self.w.limiter.record_success(kind, model)
            return out


# --------------------------------------------------------------------------- steps


def _iso(t: Any) -> str | None:
    if t is None:
        return None
    if isinstance(t, _dt.datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.timezone.utc)
        return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(t)


def _parse_iso(text: str | None) -> _dt.datetime | None:
    if not text:
        return None
    try:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def _state_name(f: Any) -> str:
    state = getattr(f, "state", None)
    return str(getattr(state, "value", state) or "STATE_UNSPECIFIED")


def _try_reuse(task: _Task, src: inputs.ResolvedInput, now: _dt.datetime | None = None) -> UploadRef | None:
    ref = task.spec.reuse_upload
    if ref is None:
        return None
    now = now or _dt.datetime.now(_dt.timezone.utc)
    expires = _parse_iso(ref.expires_at)
    if expires is None or expires - now < REUSE_MARGIN:
        log.info("task %s: previous upload %s expires too soon; uploading again", task.spec.task_id, ref.name)
        return None
    if not ref.source_sha256 or ref.source_sha256 != src.sha256:
        log.info("task %s: the video changed since upload %s; uploading again", task.spec.task_id, ref.name)
        return None
    client = task.w.client
    try:
        f = task.call("file", "file_get", lambda: client.files.get(name=ref.name, config={"http_options": {"headers": task.headers}}))
    except RequestRejected as err:  # 403/404: expired or deleted on the server
        log.info("task %s: previous upload %s is gone (%s); uploading again", task.spec.task_id, ref.name, err)
        return None
    if _state_name(f) != "ACTIVE":
        return None
    return ref


def _upload(task: _Task, src: inputs.ResolvedInput) -> UploadRef:
    client = task.w.client
    task.step("uploading")
    config = {"display_name": src.display_name, "mime_type": src.mime_type, "http_options": {"headers": task.headers}}

    def upload() -> Any:
        # An open file, not the path: given a path, the SDK puts the file's base name in an
        # X-Goog-Upload-File-Name header, which httpx refuses for non-ASCII names (讲座.mp4).
        with open(src.path, "rb") as fh:
            return client.files.upload(file=fh, config=config)

    f = task.call("file", "upload", upload)
    ref = UploadRef(
        name=f.name,
        uri=f.uri,
        mime_type=f.mime_type or src.mime_type,
        expires_at=_iso(f.expiration_time),
        size_bytes=f.size_bytes if f.size_bytes is not None else src.size_bytes,
        source_sha256=src.sha256,
    )
    # Reported at once: a crash from here on must not cost the upload (invariant 4).
    task.emit(EVENT_UPLOAD, ref.to_dict())
    _wait_active(task, ref, f)
    return ref


def _wait_active(task: _Task, ref: UploadRef, f: Any) -> None:
    cfg = task.w.cfg
    client = task.w.client
    task.step("processing")
    start = time.monotonic()
    interval = max(cfg.poll_interval, 0.05)
    while True:
        state = _state_name(f)
        if state == "ACTIVE":
            return
        if state == "FAILED":
            err = getattr(f, "error", None)
            reason = getattr(err, "message", None) or "no reason given"
            raise FileProcessingFailed(f"Gemini could not process the video ({ref.name}): {reason}")
        waited = time.monotonic() - start
        if waited >= cfg.active_timeout:
            raise FileProcessingFailed(
                f"uploaded video {ref.name} still {state} after {waited:.0f} s (active_timeout {cfg.active_timeout:g} s)"
            )
        time.sleep(min(interval, max(cfg.active_timeout - waited, 0.0)))
        interval = min(interval * 1.5, POLL_CAP)
        f = task.call("file", "file_get", lambda: client.files.get(name=ref.name, config={"http_options": {"headers": task.headers}}))


def estimate_tokens(duration: float | None, prompt: str, media_resolution: str | None = None) -> int:
    """The TPM charge before a call: pricing's rule, but an unknown length (YouTube) counts as
    10 minutes, not the dry run's pessimistic hour, so one link does not fill a free-tier minute."""
    from .pricing import estimate_tokens as prompt_tokens

    seconds = duration if duration is not None else UNKNOWN_DURATION_GUESS
    return prompt_tokens(seconds, len(prompt) // 4, media_resolution)


def _response_text(response: Any) -> str:
    """The answer's text, or :class:`ContentBlocked` saying why there is none."""
    feedback = getattr(response, "prompt_feedback", None)
    block = getattr(feedback, "block_reason", None) if feedback else None
    if block:
        detail = getattr(feedback, "block_reason_message", None)
        reason = getattr(block, "value", block)
        raise ContentBlocked(f"prompt blocked: blockReason {reason}" + (f" ({detail})" if detail else ""))
    candidates = getattr(response, "candidates", None) or []
    if not candidates:
        raise ContentBlocked("response has no candidates")
    cand = candidates[0]
    finish = getattr(cand, "finish_reason", None)
    finish_name = str(getattr(finish, "value", finish)) if finish is not None else None
    if finish_name is not None and finish_name not in _OK_FINISH:
        raise ContentBlocked(f"response blocked: finishReason {finish_name}")
    parts = getattr(getattr(cand, "content", None), "parts", None) or []
    text = "".join(p.text for p in parts if getattr(p, "text", None) and not getattr(p, "thought", False))
    if not text.strip():
        raise ContentBlocked(f"response has no text (finishReason {finish_name or 'unset'})")
    if finish_name == "MAX_TOKENS":
        log.warning("response cut at max_output_tokens; the output may be incomplete")
    return text


def _lesson_meta(fields: dict[str, Any]) -> Any:
    """Build formats.LessonMeta from the fields it declares (tolerates optional extras)."""
    from . import formats

    cls = formats.LessonMeta
    if dataclasses.is_dataclass(cls):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in fields.items() if k in names})
    return cls(**fields)


def _check_parent(task: _Task) -> None:
    """Abort the write if our manager died (we were re-parented): it would never journal it."""
    if os.getppid() != task.w.parent_pid:
        raise BatchStop("the manager process is gone; output not written")


def _write(task: _Task, data: bytes) -> tuple[str, int]:
    spec = task.spec
    if not fsutil.is_inside(spec.output_root, spec.output_path):
        raise OutputError(f"output path {spec.output_path} is outside the output root {spec.output_root}; refused")
    free = fsutil.free_bytes(os.path.dirname(spec.output_path) or spec.output_root)
    if free < len(data) + OUTPUT_DISK_MARGIN:
        raise DiskFull(
            f"only {free // 1024**2} MB free for {spec.output_path}; at least {OUTPUT_DISK_MARGIN // 1024**2} MB must stay free"
        )
    sha = fsutil.atomic_write_bytes(spec.output_path, data, before_replace=lambda: _check_parent(task))
    return sha, len(data)


def _delete_upload(task: _Task, ref: UploadRef) -> bool:
    client = task.w.client
    try:
        task.call("file", "file_delete", lambda: client.files.delete(name=ref.name, config={"http_options": {"headers": task.headers}}))
        return True
    except GsvrError as err:
        log.warning("task %s: could not delete upload %s: %s (it expires in 48 h)", task.spec.task_id, ref.name, err)
        return False


@dataclass
class PreparedRequest:
    """One task's generate request, ready to send: online at once, or inside a Gemini batch job.

    ``skipped_reason`` set means: do not send anything (e.g. the video is too long).
    """

    task_id: str
    contents: list[Any]  # [video Part, prompt text]
    generation: dict[str, Any]  # GenerateContentConfig keyword arguments from the template
    prompt: str
    upload: UploadRef | None
    video_duration: float | None
    template_name: str
    template_version: str
    estimated_tokens: int = 0
    skipped_reason: str | None = None


def _prepare(task: _Task) -> PreparedRequest:
    """resolve → upload (or reuse) → wait ACTIVE → render the prompt. Raises GsvrError."""
    from google.genai import types

    from . import templates

    spec = task.spec
    # Problems that would make the whole call useless are found before it costs quota.
    if not fsutil.is_inside(spec.output_root, spec.output_path):
        raise OutputError(f"output path {spec.output_path} is outside the output root {spec.output_root}; refused")
    template = templates.get_template(spec.template, spec.templates_dirs)
    gen = templates.generation_config(template)

    task.step("resolving")
    with inputs.resolve_input(
        spec.source,
        spec.source_kind,
        max_download_bytes=spec.max_download_bytes,
        timeout=task.w.cfg.request_timeout,
        on_step=task.step,
        temp_root=spec.extra.get("download_dir"),
    ) as src:
        prep = PreparedRequest(task_id=spec.task_id, contents=[], generation=gen, prompt="", upload=None,
                               video_duration=src.duration, template_name=template.name,
                               template_version=template.version)
        if spec.max_duration is not None and src.duration is not None and src.duration > spec.max_duration:
            prep.skipped_reason = (
                f"video is {src.duration:.0f} s long, longer than max_duration {spec.max_duration:g} s"
            )
            return prep

        if src.kind == "youtube":
            video_part = types.Part(file_data=types.FileData(file_uri=src.uri))
        else:
            ref = _try_reuse(task, src)
            if ref is None:
                ref = _upload(task, src)
            else:
                log.info("task %s: reusing upload %s", spec.task_id, ref.name)
            prep.upload = ref
            video_part = types.Part.from_uri(file_uri=ref.uri, mime_type=ref.mime_type)

        prep.prompt = templates.render_prompt(
            template, spec.params, {"title": spec.title, "duration": src.duration, "source": spec.source}
        )
        prep.contents = [video_part, prep.prompt]
        prep.estimated_tokens = estimate_tokens(src.duration, prep.prompt, gen.get("media_resolution"))
        return prep


def _write_lesson(task: _Task, prep: PreparedRequest, text: str, usage: dict[str, int],
                  model_version: str | None) -> tuple[str, int]:
    """format → atomic write of one answer; ``(sha256, bytes)``. Shared by online and batch mode."""
    from . import formats

    spec = task.spec
    task.step("writing")
    meta = _lesson_meta(
        {
            "title": spec.title,
            "source": spec.source,
            "source_url": spec.source if spec.source_kind in ("youtube", "url") else None,
            "backend": spec.backend,
            "duration": prep.video_duration,
            "template": prep.template_name,
            "template_version": prep.template_version,
            "model": spec.model,
            "model_version": model_version,
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "candidates_tokens": usage.get("candidates_tokens", 0),
            "total_tokens": usage.get("total_tokens", 0),
            "tokens": dict(usage),
            "created": _iso(_dt.datetime.now(_dt.timezone.utc)),
            "task_id": spec.task_id,
        }
    )
    data = formats.get_formatter(spec.output_format).render(text, meta)
    return _write(task, data)


def usage_of(response: Any) -> dict[str, int]:
    """``{prompt_tokens, candidates_tokens, total_tokens}`` of a GenerateContentResponse, plus
    ``thoughts_tokens`` and the per-modality prompt breakdown when present (both change the bill)."""
    from .pricing import usage_from_metadata

    usage = usage_from_metadata(getattr(response, "usage_metadata", None))
    for key in ("prompt_tokens", "candidates_tokens", "total_tokens"):
        usage.setdefault(key, 0)
    return usage


def _run(task: _Task, result: TaskResult) -> None:
    from google.genai import types

    spec = task.spec
    client = task.w.client
    prep = _prepare(task)
    result.video_duration = prep.video_duration
    result.upload = prep.upload
    if prep.skipped_reason:
        result.skipped_reason = prep.skipped_reason
        return
    ref = prep.upload
    tokens = prep.estimated_tokens
    config = types.GenerateContentConfig(**prep.generation, http_options=types.HttpOptions(headers=task.headers))
    task.step("generating")
    response = task.call(
        "generate",
        "generate",
        lambda: client.models.generate_content(model=spec.model, contents=prep.contents, config=config),
        tokens=tokens,
    )
    result.usage = usage_of(response)
    result.model_version = getattr(response, "model_version", None)
    task.w.limiter.record_success(
        "generate", spec.model, estimated_tokens=tokens, actual_tokens=result.usage.get("prompt_tokens") or tokens
    )
    text = _response_text(response)

    result.sha256, result.bytes_written = _write_lesson(task, prep, text, result.usage, result.model_version)
    result.output_path = spec.output_path
    result.ok = True

    if ref is not None and not spec.keep_uploads:
        result.upload_deleted = _delete_upload(task, ref)


# --------------------------------------------------------------------------- in the manager
# Gemini Batch Mode (batchmode.py) runs the same steps in the manager process, split in two:
# prepare now, write when the batch job's answer arrives. These wrap the worker's steps so
# both modes share one upload / prompt / format / write path.


class ManagerSteps:
    """The worker's steps for a manager that has its own client (see init_worker for workers)."""

    def __init__(self, cfg: WorkerConfig, client: Any, limiter: Any, on_event: Callable[[tuple], None]) -> None:
        self._w = _Worker(cfg=cfg, client=client, limiter=limiter, queue=_CallbackQueue(on_event),
                          parent_pid=os.getppid())

    def prepare(self, spec: TaskSpec) -> PreparedRequest:
        """resolve → upload/reuse → ACTIVE → prompt; events (upload, step) go to ``on_event``."""
        return _prepare(_Task(self._w, spec))

    def write(self, spec: TaskSpec, prep: PreparedRequest, response: Any) -> tuple[str, int, dict[str, int]]:
        """Check the answer (blocked / empty → ContentBlocked), format and write it atomically."""
        text = _response_text(response)
        usage = usage_of(response)
        sha, n = _write_lesson(_Task(self._w, spec), prep, text, usage, getattr(response, "model_version", None))
        return sha, n, usage

    def delete_upload(self, spec: TaskSpec, ref: UploadRef) -> bool:
        return _delete_upload(_Task(self._w, spec), ref)

    def call(self, spec: TaskSpec, kind: str, label: str, fn: Callable[[], T]) -> T:
        """One API call with the limiter and the worker's retry policy."""
        return _Task(self._w, spec).call(kind, label, fn)


class _CallbackQueue:
    def __init__(self, fn: Callable[[tuple], None]) -> None:
        self._fn = fn

    def put(self, item: tuple) -> None:
        self._fn(item)


def run_task(spec: TaskSpec) -> TaskResult:
    """Run one task; errors come back in ``TaskResult.error`` (never raised)."""
    w = _require_state()
    task = _Task(w, spec)
    result = TaskResult(task_id=spec.task_id, ok=False)
    start = time.monotonic()
    try:
        _run(task, result)
    except GsvrError as err:
        result.ok = False
        result.error = error_dict(err)
        log.info("task %s failed (%s): %s", spec.task_id, result.error["kind"], result.error["message"])
    except Exception as exc:  # a bug or an unforeseen SDK answer: fail this task, keep the batch
        result.ok = False
        result.error = {
            "error_class": type(exc).__name__,
            "message": redact(f"unexpected error: {exc}"),
            "retryable": False,
            "kind": "task",
        }
        log.exception("task %s: unexpected error", spec.task_id)
    finally:
        result.elapsed = time.monotonic() - start
        result.api_calls = dict(task.calls)
    return result
