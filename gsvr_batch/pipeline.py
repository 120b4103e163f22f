"""One task in a worker process: resolve → upload (or reuse) → ACTIVE → plan → generate → write.

A worker is a ``ProcessPoolExecutor`` process (spawn) set up once by :func:`init_worker`; the
manager then calls :func:`run_task` per task. ``run_task`` never raises for task, transient or
batch errors: it returns a :class:`TaskResult` whose ``error`` is a typed
:class:`~gsvr_batch.errors.ErrorRecord`; what happens next is the manager's policy (policy.py).
Progress goes to the manager as events (the manager alone writes the journal, invariant 1).

Exactly-once rules kept here (invariant 12):

* Between the model's answer and the result there is no rate-limited, blocking or retried step:
  the answer is formatted and written (atomically, fsynced) and the result is sent at once —
  first on the event channel, then through the executor. Uploads are *not* deleted here: the
  manager deletes them once ``task_completed`` is durable and no pending task needs them.
* The output carries the task id and this attempt's nonce, so a manager that died before
  journaling it adopts the file on the next run instead of paying for it again.
* A long video is sent in clips (context.py); each clip's answer is written to a partial file and
  reported before the next clip is sent, so a kill costs at most the clip in flight.
* A generate request whose answer was lost after it may have reached the model ends the attempt
  (``calls.CallLost``) and is counted, never silently retried.

Workers ignore SIGINT and SIGTERM: a Ctrl-C or a ``kill -- -PGID`` reaches the whole process
group, and the manager decides what happens to running tasks (a graceful stop lets them finish).
They die with the manager (``PR_SET_PDEATHSIG``) and re-check their parent before the final
rename, so an orphan never writes an output nobody will journal.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from . import context, fsutil, inputs
from .calls import CallLost, call_api
from .errors import (
    BatchStop,
    ContentBlocked,
    DiskFull,
    ErrorRecord,
    FileGone,
    FileProcessingFailed,
    GsvrError,
    OutputError,
    RequestRejected,
    TokenOverflow,
    UploadAmbiguous,
)
from .gemini import WorkerConfig, make_client, redact
from .policy import RetryPolicy
from .tasks import (
    EVENT_PARTIAL,
    EVENT_PLAN,
    EVENT_REQUEST,
    EVENT_RESULT,
    EVENT_STARTED,
    EVENT_STEP,
    EVENT_UPLOAD,
    TaskResult,
    TaskSpec,
    UploadRef,
)
from .timeutil import iso_utc, parse_iso

__all__ = ["WorkerConfig", "init_worker", "run_task", "PreparedRequest", "ManagerSteps", "usage_of",
           "internal_error"]

log = logging.getLogger("gsvr_batch.pipeline")

T = TypeVar("T")

# An upload is only reused if it stays valid for at least this long.
REUSE_MARGIN = _dt.timedelta(hours=1)
# Free space an output write must leave on its disk.
OUTPUT_DISK_MARGIN = 10 * 1024**2
POLL_CAP = 10.0
MAX_REPLANS = 3  # 400 "input token count … exceeds" answers one task may turn into a new plan
_OK_FINISH = {"STOP", "MAX_TOKENS"}
_BRIEF_STEPS = frozenset({"resolving", "writing"})


@dataclass
class _Worker:
    cfg: WorkerConfig
    client: Any
    limiter: Any
    queue: Any  # EventSender, or a callback queue in the manager (batch mode)
    parent_pid: int
    policy: RetryPolicy


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


def worker_policy(cfg: WorkerConfig) -> RetryPolicy:
    return RetryPolicy(max_call_retries=cfg.max_call_retries)


def init_worker(cfg: WorkerConfig, queue: Any, env: dict[str, str] | None = None) -> None:
    """``ProcessPoolExecutor(initializer=init_worker, initargs=(cfg, sender, dict(os.environ)))``.

    The process-wide hooks (signals ignored, parent-death signal) are only installed in a real
    child process, so tests may call this in-process without changing pytest itself.

    ``env``: the manager's environment when it made the pool. A forkserver child inherits the
    environment of the *forkserver*, which CPython starts once per process and keeps: a second run
    in the same process (a library caller, a test) would otherwise send its requests to the first
    run's ``GOOGLE_GEMINI_BASE_URL`` with the first run's key. It is applied whole, so a worker
    sees exactly what a spawned or forked one would (proxy, CA bundle, TMPDIR, secret names).
    (The working directory needs nothing: multiprocessing's preparation data carries it.)
    """
    global _STATE
    if multiprocessing.parent_process() is not None:
        if env is not None and env != os.environ:
            os.environ.clear()
            os.environ.update(env)
        # The manager decides what happens to running tasks on Ctrl-C / SIGTERM, including a
        # SIGTERM sent to the whole process group (systemd stop, `timeout`, `kill -- -PGID`).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # SIGUSR1: our pool broke (a sibling died); finish the task in hand, take no other.
        signal.signal(signal.SIGUSR1, _retire)
        parent = os.getppid()  # the manager (spawn) or its forkserver
        _set_parent_death_signal()
        # The manager may have died (kill -9) between starting us and the prctl above; then the
        # kernel will never send the death signal and we would idle as an orphan forever.
        if not _manager_is(parent, cfg.manager_pid):
            os._exit(1)
        if cfg.manager_pid and parent != cfg.manager_pid:
            _watch_manager(cfg.manager_pid)
    client = make_client(cfg)
    _STATE = _Worker(cfg=cfg, client=client, limiter=_make_limiter(cfg.limiter_path), queue=queue,
                     parent_pid=os.getppid(), policy=worker_policy(cfg))


_RETIRING = False


def _retire(_signum: int, _frame: Any) -> None:
    global _RETIRING
    _RETIRING = True


def _watch_manager(manager: int) -> None:
    """A forkserver's child: end this worker the moment the manager dies.

    The parent-death signal follows our real parent, the forkserver, and CPython keeps a
    forkserver alive as long as any of its children is: so when the manager dies (kill -9, OOM),
    neither would ever go. A pidfd becomes readable when the manager exits; a daemon thread waits
    on it (or polls, on kernels without pidfd) and exits the process at once, as the parent-death
    signal does for spawned workers. An output being written is lost with us, never half-written
    (atomic rename), and the next run adopts one that made it.
    """
    import select
    import threading

    def wait() -> None:
        try:
            fd = os.pidfd_open(manager)
            select.select([fd], [], [])
        except (AttributeError, OSError):
            while fsutil.pid_alive(manager):
                time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=wait, name="gsvr-manager-watch", daemon=True).start()


def _manager_is(parent: int, manager: int | None) -> bool:
    """Our parent is still there, and it is the manager or a process of the manager (forkserver)."""
    if os.getppid() != parent:
        return False  # re-parented: whoever started us is gone
    if manager is None or parent == manager:
        return True
    from .channels import parent_pid_of

    return parent_pid_of(parent) == manager


def _require_state() -> _Worker:
    if _STATE is None:
        raise RuntimeError("run_task called before init_worker")
    return _STATE


def internal_error(exc: BaseException, where: str = "") -> ErrorRecord:
    """A bug or an unforeseen SDK answer: fail this task with a readable reason, keep the batch."""
    return ErrorRecord(error_class=type(exc).__name__,
                       message=redact(f"internal error{where}: {exc}"),
                       disposition=GsvrError.disposition)


# --------------------------------------------------------------------------- one running task


class _Task:
    """State of one running task (so helpers need not pass ten arguments)."""

    def __init__(self, w: _Worker, spec: TaskSpec) -> None:
        self.w = w
        self.spec = spec
        self.calls: Counter[str] = Counter()
        self.headers = {"x-gsvr-task-id": spec.task_id}
        self.result = TaskResult(task_id=spec.task_id, ok=False, attempt_id=spec.attempt_id)

    def emit(self, kind: str, payload: dict[str, Any]) -> None:
        if self.w.queue is None:
            return
        payload = dict(payload, attempt_id=self.spec.attempt_id)
        try:
            self.w.queue.put((kind, self.spec.task_id, payload))
        except Exception as exc:  # a broken channel must not lose the task's result
            log.warning("task %s: cannot report %s event: %s", self.spec.task_id, kind, exc)

    def step(self, name: str) -> None:
        # Only the steps that take time are worth an event: resolving and writing take
        # milliseconds, and the result event follows the write at once.
        if name not in _BRIEF_STEPS:
            self.emit(EVENT_STEP, {"step": name})

    def http(self) -> dict[str, Any]:
        return {"http_options": {"headers": self.headers}}

    def call(self, kind: str, label: str, fn: Callable[[], T], *, tokens: int = 0, paid: bool = False,
             youtube_seconds: float = 0.0) -> T:
        """One API call: the shared limiter, the one retry loop (calls.py), the call counted."""

        def on_request() -> None:
            self.calls[label] += 1
            if paid:
                # Counted whatever the outcome: the API charges the daily quota for failed requests too.
                ev: dict[str, Any] = {"model": self.spec.model}
                if youtube_seconds:
                    ev["youtube_seconds"] = round(float(youtube_seconds), 3)
                self.emit(EVENT_REQUEST, ev)

        return call_api(self.w.limiter, kind, self.spec.model, fn, policy=self.w.policy, label=label,
                        tokens=tokens, paid=paid, on_request=on_request)


# --------------------------------------------------------------------------- input and upload


def _state_name(f: Any) -> str:
    state = getattr(f, "state", None)
    return str(getattr(state, "value", state) or "STATE_UNSPECIFIED")


def _try_reuse(task: _Task, src: inputs.ResolvedInput, now: _dt.datetime | None = None) -> UploadRef | None:
    """A live upload of this video: the one the journal knows for its path, else one of another
    file with the same bytes (a copy under another name; one upload per distinct video). The
    first that is still usable at the Files API wins; None means upload it."""
    if task.spec.reuse_upload is not None:
        return _usable(task, task.spec.reuse_upload, src, now)
    for ref in task.spec.same_size_uploads:
        if src.sha256 and ref.source_sha256 == src.sha256:
            log.info("task %s: %s has the same bytes as %s; trying its upload", task.spec.task_id, src.path,
                     ref.source)
            got = _usable(task, ref, src, now)
            if got is not None:
                return got
    return None


def _usable(task: _Task, ref: UploadRef, src: inputs.ResolvedInput, now: _dt.datetime | None) -> UploadRef | None:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    expires = parse_iso(ref.expires_at)
    if expires is None or expires - now < REUSE_MARGIN:
        log.info("task %s: upload %s expires too soon; uploading again", task.spec.task_id, ref.name)
        return None
    if not ref.source_sha256 or ref.source_sha256 != src.sha256:
        log.info("task %s: the video changed since upload %s; uploading again", task.spec.task_id, ref.name)
        return None
    client = task.w.client
    try:
        f = task.call("file", "file_get", lambda: client.files.get(name=ref.name, config=task.http()))
    except RequestRejected as err:  # 403/404: expired or deleted on the server
        log.info("task %s: upload %s is gone (%s)", task.spec.task_id, ref.name, err)
        return None
    state = _state_name(f)
    if state == "PROCESSING":
        # Another task of the same video uploaded it a moment ago and the Files API is still
        # processing it: wait for it, as that task does, rather than send the same bytes again
        # (one upload serves every template and every clip of a video). If processing fails, it
        # fails for this task as for that one: the same video would fail again.
        _wait_active(task, ref, f)
        return ref
    if state != "ACTIVE":
        return None
    return ref


def _ref_of(f: Any, src: inputs.ResolvedInput) -> UploadRef:
    st = os.stat(src.path) if src.path else None
    return UploadRef(name=f.name, uri=f.uri, mime_type=f.mime_type or src.mime_type or "video/mp4",
                     expires_at=iso_utc(f.expiration_time) if f.expiration_time else None,
                     size_bytes=f.size_bytes if f.size_bytes is not None else src.size_bytes,
                     source_sha256=src.sha256, source=task_source_path(src), source_size=st.st_size if st else None,
                     source_mtime_ns=st.st_mtime_ns if st else None)


def task_source_path(src: inputs.ResolvedInput) -> str | None:
    return None if src.downloaded else src.path


def _find_uploaded(task: _Task, src: inputs.ResolvedInput) -> Any | None:
    """After an ambiguous upload: the file the server may have finalized, by display name + sha256."""
    import base64

    client = task.w.client
    want = base64.b64encode((src.sha256 or "").encode()).decode()
    try:
        files = task.call("file", "files_list", lambda: list(client.files.list(config={"page_size": 100,
                                                                                         **task.http()})))
    except GsvrError as err:
        log.info("task %s: could not list files after an ambiguous upload: %s", task.spec.task_id, err)
        return None
    for f in files[:1000]:
        sha = getattr(f, "sha256_hash", None) or ""
        if getattr(f, "display_name", None) == src.display_name and sha in (want, src.sha256):
            return f
    return None


def _upload(task: _Task, src: inputs.ResolvedInput) -> UploadRef:
    client = task.w.client
    task.step("uploading")
    config = {"display_name": src.display_name, "mime_type": src.mime_type, **task.http()}

    def upload() -> Any:
        # An open file, not the path: given a path, the SDK puts the file's base name in an
        # X-Goog-Upload-File-Name header, which httpx refuses for non-ASCII names (讲座.mp4).
        with open(src.path, "rb") as fh:  # type: ignore[arg-type]
            return client.files.upload(file=fh, config=config)

    f = None
    for _ in range(3):
        try:
            f = task.call("file", "upload", upload)
            break
        except UploadAmbiguous as err:
            # The last answer of the upload was lost after it may have taken effect. Uploads are
            # free: adopt the file if the server has it, else start a new session.
            log.info("task %s: ambiguous upload (%s); looking for the file", task.spec.task_id, err)
            f = _find_uploaded(task, src)
            if f is not None:
                break
    if f is None:
        raise UploadAmbiguous(f"the upload of {src.display_name} kept losing its answer; will retry the task")
    ref = _ref_of(f, src)
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
        f = task.call("file", "file_get", lambda: client.files.get(name=ref.name, config=task.http()))


# --------------------------------------------------------------------------- answers


@dataclass
class Answer:
    text: str
    usage: dict[str, int]
    model_version: str | None
    truncated: bool = False


def answer_of(response: Any) -> Answer:
    """An :class:`Answer` from a GenerateContentResponse (batch mode's answers); ContentBlocked if none."""
    text, finish = _response_text(response)
    return Answer(text, usage_of(response), getattr(response, "model_version", None),
                  truncated=finish == "MAX_TOKENS")


def usage_of(response: Any) -> dict[str, int]:
    """``{prompt_tokens, candidates_tokens, total_tokens}`` of a GenerateContentResponse, plus
    ``thoughts_tokens``, ``cached_tokens`` and the per-modality prompt breakdown when present
    (each changes the bill)."""
    from .pricing import usage_from_metadata

    usage = usage_from_metadata(getattr(response, "usage_metadata", None))
    for key in ("prompt_tokens", "candidates_tokens", "total_tokens"):
        usage.setdefault(key, 0)
    return usage


def _response_text(response: Any) -> tuple[str, str | None]:
    """``(text, finishReason)`` of an answer, or :class:`ContentBlocked` saying why there is none."""
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
    return text, finish_name


def _generate(task: _Task, contents: list[Any], generation: dict[str, Any], *, tokens: int,
              youtube_seconds: float = 0.0) -> Answer:
    """One paid request, with one retry at a larger ``max_output_tokens`` if the answer is cut.

    Every answer that came back is billed: the first, cut one goes into ``result.billed``; a
    blocked answer too (its prompt was read), before ContentBlocked propagates.
    """
    from google.genai import types

    spec = task.spec
    client = task.w.client
    gen = dict(generation)
    for round_ in (1, 2):
        config = types.GenerateContentConfig(**gen, http_options=types.HttpOptions(headers=task.headers))
        response = task.call("generate", "generate",
                             lambda: client.models.generate_content(model=spec.model, contents=contents, config=config),
                             tokens=tokens, paid=True, youtube_seconds=youtube_seconds)
        usage = usage_of(response)
        task.w.limiter.record_success("generate", spec.model, estimated_tokens=tokens,
                                      actual_tokens=usage.get("prompt_tokens") or tokens)
        try:
            text, finish = _response_text(response)
        except ContentBlocked:
            task.result.billed.append(usage)
            raise
        answer = Answer(text, usage, getattr(response, "model_version", None))
        if finish != "MAX_TOKENS":
            return answer
        current = int(gen.get("max_output_tokens") or 8192)
        cap = int(spec.output_limit or 65536)
        if round_ == 2 or current >= cap:
            answer.truncated = True
            log.warning("task %s: answer cut at max_output_tokens %d; kept, marked truncated", spec.task_id, current)
            return answer
        # Once, with twice the room (never past the model's cap): the cut answer was paid for.
        task.result.billed.append(usage)
        gen["max_output_tokens"] = min(cap, current * 2)
        log.info("task %s: answer cut at %d output tokens; asking once more with %d", spec.task_id, current,
                 gen["max_output_tokens"])
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- preparing


@dataclass
class PreparedRequest:
    """One task's request material, ready to send: online at once, or inside a Gemini batch job.

    ``skipped_reason`` set means: do not send anything (e.g. the video is too long).
    """

    task_id: str
    contents: list[Any]  # [video Part, prompt text] (full / low plans)
    generation: dict[str, Any]  # GenerateContentConfig keyword arguments from the template
    prompt: str
    upload: UploadRef | None
    video_duration: float | None
    template_name: str
    template_version: str
    estimated_tokens: int = 0
    skipped_reason: str | None = None
    video_uri: str | None = None
    video_mime: str | None = None
    youtube: bool = False
    reused: bool = False  # the upload is one another task (or run) made: it may vanish under us


def video_part(prep: PreparedRequest, clip: context.Clip | None = None, fps: float | None = None) -> Any:
    """The video Part of a request, clipped with ``VideoMetadata`` for a clips plan."""
    from google.genai import types

    meta = None
    if clip is not None:
        meta = types.VideoMetadata(**context.clip_offsets(clip, fps))
    elif fps is not None:
        meta = types.VideoMetadata(fps=fps)
    fd = types.FileData(file_uri=prep.video_uri, mime_type=None if prep.youtube else prep.video_mime)
    return types.Part(file_data=fd, video_metadata=meta)


def _prepare(task: _Task) -> PreparedRequest:
    """resolve → upload (or reuse) → wait ACTIVE → render the prompt. Raises GsvrError."""
    from . import templates

    spec = task.spec
    # Problems that would make the whole call useless are found before it costs quota.
    if not fsutil.is_inside(spec.output_root, spec.output_path):
        raise OutputError(f"output path {spec.output_path} is outside the output root {spec.output_root}; refused")
    template = templates.get_template(spec.template, spec.templates_dirs)
    gen = templates.generation_config(template)

    task.step("resolving")
    with inputs.resolve_input(spec.source, spec.source_kind, max_download_bytes=spec.max_download_bytes,
                              timeout=task.w.cfg.request_timeout, on_step=task.step,
                              temp_root=spec.download_dir) as src:
        prep = PreparedRequest(task_id=spec.task_id, contents=[], generation=gen, prompt="", upload=None,
                               video_duration=src.duration, template_name=template.name,
                               template_version=template.version)
        if spec.max_duration is not None and src.duration is not None and src.duration > spec.max_duration:
            prep.skipped_reason = (
                f"video is {src.duration:.0f} s long, longer than max_duration {spec.max_duration:g} s")
            return prep
        if src.kind == "youtube":
            prep.video_uri, prep.youtube = src.uri, True
        else:
            ref = _try_reuse(task, src)
            if ref is None:
                ref = _upload(task, src)
            else:
                prep.reused = True
                log.info("task %s: reusing upload %s", spec.task_id, ref.name)
            prep.upload = ref
            prep.video_uri, prep.video_mime = ref.uri, ref.mime_type
        prep.prompt = templates.render_prompt(
            template, spec.params, {"title": spec.title, "duration": src.duration, "source": spec.source})
        prep.contents = [video_part(prep), prep.prompt]
        return prep


def _initial_plan(task: _Task, prep: PreparedRequest) -> context.Plan:
    spec = task.spec
    if spec.plan:
        try:
            plan = context.Plan.from_record(spec.plan)  # journaled by an earlier attempt: keep its clips
        except (KeyError, TypeError, ValueError):
            pass
        else:
            if prep.video_duration is None and plan.duration is not None:
                prep.video_duration = plan.duration  # a YouTube link measured by that attempt
            return plan
    plan = context.choose(prep.video_duration, len(prep.prompt), input_limit=_input_limit(spec), tpm=spec.tpm,
                          forced=spec.context, clip_minutes=spec.clip_minutes, allow_low=spec.allow_low,
                          template_resolution=prep.generation.get("media_resolution"), fps=spec.fps)
    if plan.probe and prep.youtube:
        plan = _plan_from_count(task, prep, plan)
        if plan.duration is not None:
            prep.video_duration = plan.duration
    task.emit(EVENT_PLAN, {"plan": plan.to_record(), "duration": prep.video_duration})
    return plan


def _plan_from_count(task: _Task, prep: PreparedRequest, probe: context.Plan) -> context.Plan:
    """A YouTube link's length is unknown until the API has seen it: ask ``models.count_tokens``
    (no generation, no generate quota, no TPM charge) and size the plan from its total, so not even
    one probing 400 is needed (invariant 13). If the count cannot be had, ``probe`` is returned and
    the first generate call probes instead (a 400 whose N sizes the next plan, see context.py).

    countTokens goes through the limiter's ``file`` bucket: it must not use up the generate
    requests per minute / day that the paid calls need. The Gemini API takes no generation config
    on countTokens, so the count is at the API's default media resolution, and the plan is sized
    from a default-resolution probe (a template at low resolution then sends less than planned).
    """
    from google.genai import types

    from .errors import Disposition

    spec = task.spec
    client = task.w.client
    contents = [video_part(prep), prep.prompt]
    config = types.CountTokensConfig(http_options=types.HttpOptions(headers=task.headers))
    try:
        got = task.call("file", "count_tokens",
                        lambda: client.models.count_tokens(model=spec.model, contents=contents, config=config))
    except GsvrError as err:
        if err.disposition in (Disposition.STOP_BATCH, Disposition.PAUSE, Disposition.PAUSE_UNTIL,
                               Disposition.REQUEUE):
            raise
        log.info("task %s: count_tokens failed (%s); the first request probes the length", spec.task_id, err)
        return probe
    total = getattr(got, "total_tokens", None)
    if not isinstance(total, int) or total <= 0:
        return probe
    at_default = context.choose(None, len(prep.prompt), input_limit=_input_limit(spec), tpm=spec.tpm,
                                clip_minutes=spec.clip_minutes, allow_low=spec.allow_low, fps=spec.fps)
    return context.from_count(at_default, total, input_limit=_input_limit(spec), duration=None,
                              prompt_chars=len(prep.prompt), tpm=spec.tpm, allow_low=spec.allow_low,
                              clip_minutes=spec.clip_minutes, forced=spec.context)


def _input_limit(spec: TaskSpec) -> int:
    return int(spec.input_limit or context.input_limit_for(spec.model))


def _generation_for(prep: PreparedRequest, plan: context.Plan) -> dict[str, Any]:
    gen = dict(prep.generation)
    if plan.media_resolution:
        gen["media_resolution"] = plan.media_resolution
    return gen


# --------------------------------------------------------------------------- the strategies


def _partial_path(spec: TaskSpec, clip: context.Clip) -> str:
    base = spec.partials_dir or os.path.join(os.path.dirname(spec.output_path), ".gsvr-partials")
    return os.path.join(base, spec.task_id, f"clip-{clip.index:03d}-{int(clip.start)}-{int(clip.end)}.md")


def read_partial(path: str, sha256: str | None = None) -> tuple[dict[str, Any], str] | None:
    """``(header, text)`` of a partial file, or None if it is missing or not what was journaled."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        return None
    head, _, body = data.partition(b"\n")
    try:
        header = json.loads(head)
    except ValueError:
        return None
    if not isinstance(header, dict) or header.get("kind") != "gsvr-partial":
        return None
    return header, body.decode("utf-8", "replace")


def clip_request(prep: PreparedRequest, plan: context.Plan, clip: context.Clip) -> tuple[list[Any], dict[str, Any]]:
    """``(contents, generation)`` of one clip's request: the video Part clipped with ``VideoMetadata``
    and the segment prompt. The one builder for online workers and batch mode alike."""
    prompt = context.segment_prompt(prep.prompt, clip, len(plan.clips), plan.duration or prep.video_duration)
    return [video_part(prep, clip, plan.fps), prompt], _generation_for(prep, plan)


def whole_request(prep: PreparedRequest, plan: context.Plan) -> tuple[list[Any], dict[str, Any]]:
    """``(contents, generation)`` of a one-call plan (``full`` or ``low``)."""
    return [video_part(prep, fps=plan.fps), prep.prompt], _generation_for(prep, plan)


def merge_request(prep: PreparedRequest, plan: context.Plan,
                  partials: list[tuple[context.Clip, str]]) -> tuple[list[Any], dict[str, Any]]:
    """``(contents, generation)`` of the text-only merge of a clips plan's partial answers."""
    prompt = context.merge_prompt(prep.prompt, partials, plan.duration or prep.video_duration)
    gen = {k: v for k, v in prep.generation.items() if k != "media_resolution"}  # text only
    return [prompt], gen


def save_partial(spec: TaskSpec, clip: context.Clip, answer: Answer,
                 before_replace: Callable[[], None] | None = None) -> tuple[str, str]:
    """Write one clip's answer durably (atomic, fsynced) under the state folder; ``(path, sha256)``.

    The header names the task, the attempt and the clip's range, so a run that died before
    journaling it adopts the file instead of paying for the clip again (reconcile.adopt_partials).
    """
    header = {"kind": "gsvr-partial", "task_id": spec.task_id, "attempt_id": spec.attempt_id, "clip": clip.index,
              "start": clip.start, "end": clip.end, "model": spec.model, "model_version": answer.model_version,
              "usage": answer.usage, "truncated": answer.truncated}
    data = (json.dumps(header, ensure_ascii=False) + "\n" + answer.text).encode("utf-8")
    path = _partial_path(spec, clip)
    return path, fsutil.atomic_write_bytes(path, data, before_replace=before_replace)


def known_partial(spec: TaskSpec, clip: context.Clip) -> str | None:
    """The text of ``clip``'s partial if the journal has it and the file still matches, else None."""
    known = spec.partials.get(str(clip.index))
    if not known:
        return None
    got = read_partial(str(known.get("path")), known.get("sha256"))
    if got is not None and float(got[0].get("start", -1)) == clip.start and float(got[0].get("end", -1)) == clip.end:
        return got[1]
    log.warning("task %s: partial of clip %d is missing or changed; generating it again", spec.task_id, clip.index)
    return None


def _clip_answer(task: _Task, prep: PreparedRequest, plan: context.Plan, clip: context.Clip) -> str:
    """One clip's partial: read back if an earlier attempt paid for it, else generate and write it."""
    spec = task.spec
    text = known_partial(spec, clip)
    if text is not None:
        return text
    contents, gen = clip_request(prep, plan, clip)
    task.step("generating")
    tokens = min(plan.tokens_per_request, plan.ceiling)
    answer = _generate(task, contents, gen, tokens=tokens, youtube_seconds=clip.seconds if prep.youtube else 0.0)
    path, sha = save_partial(spec, clip, answer, before_replace=lambda: _check_parent(task))
    # Known to this attempt at once: if a later clip is refused for size, the re-plan keeps this one
    # (after_overflow keeps answered clips) and it must be read back, not paid again.
    spec.partials[str(clip.index)] = {"path": path, "sha256": sha, "start": clip.start, "end": clip.end}
    # Reported before the next clip is sent: a kill from here on costs nothing already answered.
    task.emit(EVENT_PARTIAL, {"clip": clip.index, "start": clip.start, "end": clip.end, "path": path, "sha256": sha,
                              "usage": answer.usage, "model_version": answer.model_version})
    return answer.text


def _run_plan(task: _Task, prep: PreparedRequest, plan: context.Plan) -> tuple[Answer, int]:
    """The final answer for ``plan`` and how many clips it used (0 for one call)."""
    if plan.strategy != "clips":
        task.step("generating")
        contents, gen = whole_request(prep, plan)
        tokens = min(max(plan.tokens_per_request, 1), plan.ceiling)
        seconds = prep.video_duration or 0.0
        answer = _generate(task, contents, gen, tokens=tokens, youtube_seconds=seconds if prep.youtube else 0.0)
        if prep.youtube and prep.video_duration is None:
            # Learnt from the API's own count: lets status, the report and the quota know the length.
            video_tokens = max(0, answer.usage.get("prompt_tokens", 0) - context.prompt_tokens(len(prep.prompt)))
            prep.video_duration = round(context.duration_from_tokens(video_tokens, low=plan.low_resolution,
                                                                     fps=plan.fps), 1)
        return answer, 0
    partials: list[tuple[context.Clip, str]] = []
    for clip in plan.clips:
        try:
            partials.append((clip, _clip_answer(task, prep, plan, clip)))
        except TokenOverflow as err:
            err.completed = len(partials)  # type: ignore[attr-defined]  # leading clips answered, kept by the re-plan
            raise
    task.step("merging")
    contents, gen = merge_request(prep, plan, partials)
    answer = _generate(task, contents, gen, tokens=context.text_tokens(contents[0]))
    return answer, len(plan.clips)


def _check_parent(task: _Task) -> None:
    """Abort the write if our manager died (we were re-parented): it would never journal it."""
    manager = task.w.cfg.manager_pid
    gone = os.getppid() != task.w.parent_pid
    if not gone and manager and manager != task.w.parent_pid:
        gone = not fsutil.pid_alive(manager)  # a forkserver's child: its parent outlives the manager
    if gone:
        raise BatchStop("the manager process is gone; output not written")


def _write(task: _Task, data: bytes) -> tuple[str, int]:
    spec = task.spec
    if not fsutil.is_inside(spec.output_root, spec.output_path):
        raise OutputError(f"output path {spec.output_path} is outside the output root {spec.output_root}; refused")
    free = fsutil.free_bytes(os.path.dirname(spec.output_path) or spec.output_root)
    if free < len(data) + OUTPUT_DISK_MARGIN:
        raise DiskFull(
            f"only {free // 1024**2} MB free for {spec.output_path}; at least {OUTPUT_DISK_MARGIN // 1024**2} MB must stay free")
    sha = fsutil.atomic_write_bytes(spec.output_path, data, before_replace=lambda: _check_parent(task))
    return sha, len(data)


def _lesson_meta(fields: dict[str, Any]) -> Any:
    """Build formats.LessonMeta from the fields it declares (tolerates optional extras)."""
    from . import formats

    names = {f.name for f in dataclasses.fields(formats.LessonMeta)}
    return formats.LessonMeta(**{k: v for k, v in fields.items() if k in names})


def _write_lesson(task: _Task, prep: PreparedRequest, answer: Answer, *, plan: context.Plan | None = None,
                  clips: int = 0) -> tuple[str, int]:
    """format → atomic write of one answer; ``(sha256, bytes)``. Shared by online and batch mode."""
    from . import formats

    spec = task.spec
    task.step("writing")
    usage = answer.usage
    meta = _lesson_meta({
        "title": spec.title, "source": spec.source,
        "source_url": spec.source if spec.source_kind in ("youtube", "url") else None,
        "backend": spec.backend, "duration": prep.video_duration, "template": prep.template_name,
        "template_version": prep.template_version, "model": spec.model, "model_version": answer.model_version,
        "tokens": dict(usage), "created": iso_utc(), "task_id": spec.task_id, "attempt_id": spec.attempt_id,
        "truncated": answer.truncated, "strategy": plan.strategy if plan else None,
        # Always said when a plan was followed: "default" = none sent, the API's default resolution.
        "media_resolution": (plan.media_resolution if plan and plan.media_resolution else
                             prep.generation.get("media_resolution") or ("default" if plan else None)),
        "clips": clips or None, "fingerprint": spec.fingerprint or None,
    })
    data = formats.get_formatter(spec.output_format).render(answer.text, meta)
    return _write(task, data)


def _run(task: _Task) -> None:
    spec = task.spec
    result = task.result
    prep = _prepare(task)
    result.video_duration = prep.video_duration
    result.upload = prep.upload
    if prep.skipped_reason:
        result.skipped_reason = prep.skipped_reason
        return
    plan = _initial_plan(task, prep)
    for _ in range(MAX_REPLANS + 2):  # + the one FileGone retry
        result.plan = plan.to_record()
        try:
            answer, clips = _run_plan(task, prep, plan)
            break
        except FileGone as err:
            if not prep.reused:
                raise  # our own upload vanished: the task-level policy decides
            # The upload this task reused was deleted or expired after it was checked (a 403 is an
            # answer: nothing was billed). Upload the video ourselves and send the same plan again.
            log.info("task %s: the reused upload is gone (%s); uploading the video", spec.task_id, err)
            task.spec = spec = dataclasses.replace(spec, reuse_upload=None, same_size_uploads=())
            prep = _prepare(task)
            result.upload = prep.upload
            continue
        except TokenOverflow as err:
            # Never final: the next strategy, sized from the API's own numbers (invariant 13).
            # The refused clip is plan.clips[done]: every clip before it is answered (in this attempt or
            # an earlier one) and kept; counting journaled partials alone would re-plan paid clips.
            done = int(getattr(err, "completed", 0)) if plan.strategy == "clips" else 0
            plan = context.after_overflow(plan, err.tokens, err.limit, duration=prep.video_duration,
                                          prompt_chars=len(prep.prompt), tpm=spec.tpm, allow_low=spec.allow_low,
                                          clip_minutes=spec.clip_minutes,
                                          forced="clips" if spec.context == "clips" else "auto", completed=done)
            if prep.video_duration is None and plan.duration is not None:
                prep.video_duration = plan.duration
            log.info("task %s: %s; new plan: %s", spec.task_id, err, plan.label())
            task.emit(EVENT_PLAN, {"plan": plan.to_record(), "duration": prep.video_duration})
    else:
        raise RequestRejected(f"the request still exceeds the model's input after {MAX_REPLANS} new plans")
    result.plan = plan.to_record()
    result.video_duration = prep.video_duration
    result.usage = answer.usage
    result.model_version = answer.model_version
    result.truncated = answer.truncated
    result.sha256, result.bytes_written = _write_lesson(task, prep, answer, plan=plan, clips=clips)
    result.output_path = spec.output_path
    result.ok = True


def run_task(spec: TaskSpec) -> TaskResult:
    """Run one task; errors come back in ``TaskResult.error`` (never raised)."""
    if _RETIRING:
        os._exit(0)  # a stale item of a broken pool: the manager has already given it to a new worker
    w = _require_state()
    task = _Task(w, spec)
    result = task.result
    # The parent is the forkserver this worker was forked from: if it is gone when this worker
    # dies, the worker died with it (parent-death signal), not of its task.
    task.emit(EVENT_STARTED, {"pid": os.getpid(), "ppid": os.getppid()})
    start = time.monotonic()
    try:
        _run(task)
    except CallLost as err:
        result.lost_calls += 1
        result.error = err.to_record(message=redact(str(err))).to_dict()
        log.info("task %s: %s", spec.task_id, result.error["message"])
    except GsvrError as err:
        result.error = err.to_record(message=redact(str(err))).to_dict()
        log.info("task %s failed (%s): %s", spec.task_id, result.error["disposition"], result.error["message"])
    except Exception as exc:  # a bug or an unforeseen SDK answer: fail this task, keep the batch
        result.error = internal_error(exc).to_dict()
        log.exception("task %s: unexpected error", spec.task_id)
    finally:
        result.ok = result.ok and result.error is None
        result.elapsed = time.monotonic() - start
        result.api_calls = dict(task.calls)
    # First on the event channel: if the pool is torn down now (a sibling worker died), the
    # result still reaches the manager; the executor's copy is then simply a duplicate.
    task.emit(EVENT_RESULT, result.to_dict())
    if _RETIRING:
        os._exit(0)  # our pool is broken: the result is delivered, take nothing else from its queue
    return result


# --------------------------------------------------------------------------- in the manager
# Gemini Batch Mode (batchmode.py) runs the same steps in the manager process, split in two:
# prepare now, write when the batch job's answer arrives. These wrap the worker's steps so
# both modes share one upload / prompt / format / write path.


class ManagerSteps:
    """The worker's steps for a manager that has its own client (see init_worker for workers)."""

    def __init__(self, cfg: WorkerConfig, client: Any, limiter: Any, on_event: Callable[[tuple], None]) -> None:
        self._w = _Worker(cfg=cfg, client=client, limiter=limiter, queue=_CallbackQueue(on_event),
                          parent_pid=os.getppid(), policy=worker_policy(cfg))

    def prepare(self, spec: TaskSpec) -> PreparedRequest:
        """resolve → upload/reuse → ACTIVE → prompt; events (upload, step) go to ``on_event``."""
        return _prepare(_Task(self._w, spec))

    def write(self, spec: TaskSpec, prep: PreparedRequest, response: Any, *, plan: context.Plan | None = None,
              clips: int = 0) -> tuple[str, int, dict[str, int], bool]:
        """Check the answer (blocked / empty → ContentBlocked), format and write it atomically.

        ``plan`` / ``clips``: the context plan followed (front matter: strategy, resolution, clips).
        Returns ``(sha256, bytes, usage, truncated)``."""
        answer = answer_of(response)
        sha, n = _write_lesson(_Task(self._w, spec), prep, answer, plan=plan, clips=clips)
        return sha, n, answer.usage, answer.truncated

    def plan(self, spec: TaskSpec, prep: PreparedRequest) -> context.Plan:
        """The task's context plan, exactly as a worker makes it (journaled plan kept; a YouTube
        link measured with count_tokens); a new plan goes to ``on_event`` as a plan event."""
        return _initial_plan(_Task(self._w, spec), prep)

    def call(self, spec: TaskSpec, kind: str, label: str, fn: Callable[[], T], *, retries: int | None = None) -> T:
        """One API call with the limiter and the one retry loop."""
        task = _Task(self._w, spec)
        return call_api(self._w.limiter, kind, spec.model, fn, policy=self._w.policy, label=label, retries=retries)


class _CallbackQueue:
    def __init__(self, fn: Callable[[tuple], None]) -> None:
        self._fn = fn

    def put(self, item: tuple) -> None:
        self._fn(item)
