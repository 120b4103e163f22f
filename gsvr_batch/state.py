"""Current state of a batch: a pure fold over journal records (DESIGN invariant 1).

History lives in the journal; this module only knows how each record changes the state.
``apply`` refuses every illegal transition with :class:`IllegalTransition` *before* mutating
anything, so a refused record leaves the state as it was.

Task life cycle::

    PENDING ──task_started──► RUNNING ──task_completed──► COMPLETED
       ▲  ▲                    │  │  └──task_failed────► FAILED
       │  └─retry_scheduled────┘  └───task_skipped───► SKIPPED   (also from PENDING)
       └──task_requeued (crash, stop, signal, retry command, --force) ◄── RUNNING / TERMINAL

Counters of a task (what the retry policy reads, see ``policy.py``):

* ``attempts``      attempts started (``task_started``); numbers the attempt, charges nothing;
* ``failures``      attempts charged to the task (``retry_scheduled`` / ``task_failed`` with
                    ``charge: attempt``), compared with ``max_attempts``;
* ``crashes``       worker deaths charged to the task (``charge: crash``), against ``crash_budget``;
* ``interruptions`` times it was in flight when a run ended abruptly, the pool was torn down or a
                    signal stopped the run (``task_requeued`` with ``interrupted``): charged to nobody.

Money: every generate call that returned an answer is priced in the record that reports it
(``clip_completed``, ``task_completed``, ``retry_scheduled``, ``task_failed``); a call whose
answer was lost after it may have been billed is counted in ``lost_calls`` of the record that
ends the attempt. ``cost_usd`` of a task is the sum over all its records.

``task_dropped`` hides a task whose job left the manifest; ``task_added`` brings it back.
"""

from __future__ import annotations

import enum
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Iterable

from .errors import IllegalTransition


class TaskStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.SKIPPED})
DONE = frozenset({TaskStatus.COMPLETED, TaskStatus.SKIPPED})  # nothing left to do, not an error
RUNNABLE = frozenset({TaskStatus.PENDING})
LIVE = frozenset({TaskStatus.PENDING, TaskStatus.RUNNING})  # still needs work (and its upload)


def adoption(adopted: Any, attempts: Any) -> str | None:
    """How a completed task's output was adopted, as replay and the report say it (None: not adopted).
    An attempt of this journal made it (a crash before its record), or none did (an earlier journal)."""
    if not adopted:
        return None
    return "adopted after a crash" if attempts else "adopted: made under an earlier journal"

_ERROR_KEYS = ("error_class", "message", "disposition", "retryable", "kind", "charge")


@dataclass
class TaskState:
    task_id: str
    source: str
    source_kind: str = "local"
    title: str = ""
    template: str = ""
    model: str = ""
    output: str = ""
    output_format: str = "md"
    origin: str = ""
    status: TaskStatus = TaskStatus.PENDING
    dropped: bool = False
    attempts: int = 0  # attempts started
    failures: int = 0  # attempts charged (max_attempts)
    crashes: int = 0  # worker deaths charged (crash_budget)
    interruptions: int = 0  # in flight when a run ended abruptly / the pool was torn down: nobody's fault
    attempt_id: str | None = None  # nonce of the latest attempt (outputs carry it: adoption after a crash)
    fingerprint: str | None = None  # what the latest attempt was asked to make (model, template version, params…)
    done_fingerprint: str | None = None  # ... and what the completed output was made from
    worker: int | None = None
    step: str | None = None
    started_ts: str | None = None
    finished_ts: str | None = None
    not_before: float | None = None  # unix time before which a scheduled retry must not start
    last_error: dict[str, Any] | None = None
    skipped_reason: str | None = None
    plan: dict[str, Any] | None = None  # context strategy (context.Plan.to_record())
    partials: dict[str, dict[str, Any]] = field(default_factory=dict)  # clip index (str) → partial record
    sha256: str | None = None
    bytes: int | None = None
    usage: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0
    calls: int = 0  # generate calls that returned an answer (paid)
    lost_calls: int = 0  # generate calls whose answer was lost after they may have been billed
    model_version: str | None = None
    video_duration: float | None = None
    elapsed: float | None = None
    adopted: bool = False  # completed from an output found on disk after a crash (not paid twice)
    truncated: bool = False  # the answer was cut at max_output_tokens

    def to_dict(self) -> dict[str, Any]:
        # Shallow on purpose: asdict() deep-copies every nested dict, which made a 10,000-task
        # snapshot take over a second; the values are JSON-ready already.
        d = {name: getattr(self, name) for name in _TASK_FIELDS}
        d["status"] = self.status.value
        return d

    def to_sparse_dict(self) -> dict[str, Any]:
        """``to_dict`` without the fields that still hold their default (what a snapshot stores:
        a 10,000-task snapshot is ~3x smaller, so it is written and read ~3x faster)."""
        d = {}
        for name, default in _TASK_SPARSE:
            v = getattr(self, name)
            if v is not default and (v != default or type(v) is not type(default)):
                d[name] = v
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskState:
        # _TASK_FIELD_SET, not fields(cls) per call: that was a third of loading a 10,000-task snapshot.
        if cls is TaskState:  # defaults, then what the dict holds (a sparse snapshot holds only changes)
            t = _new_task(d if d.keys() <= _TASK_FIELD_SET else {k: v for k, v in d.items() if k in _TASK_FIELD_SET})
        else:
            t = cls(**{k: v for k, v in d.items() if k in _TASK_FIELD_SET})
        t.status = TaskStatus(t.status)
        return t

    @property
    def live(self) -> bool:
        return not self.dropped and self.status in LIVE


_TASK_FIELDS = tuple(f.name for f in fields(TaskState))
_TASK_FIELD_SET = frozenset(_TASK_FIELDS)
_RUNNING, _PENDING, _COMPLETED = TaskStatus.RUNNING, TaskStatus.PENDING, TaskStatus.COMPLETED
_ONLY_RUNNING = frozenset({TaskStatus.RUNNING})
_RUNNING_OR_PENDING = frozenset({TaskStatus.RUNNING, TaskStatus.PENDING})
# What the generated __init__ would set when a field is not given (see _new_task).
_TASK_DEFAULTS = {f.name: f.default for f in fields(TaskState) if f.default is not MISSING}
_TASK_FACTORIES = tuple((f.name, f.default_factory) for f in fields(TaskState) if f.default_factory is not MISSING)
# Defaults and (placeholders for) the fresh mutable defaults, in field order: one copy makes a
# task's __dict__ at its final size instead of growing it key by key (see _fresh_task_dict).
_TASK_TEMPLATE = dict(_TASK_DEFAULTS, **{name: None for name, _ in _TASK_FACTORIES})
_TASK_REQUIRED = frozenset(f.name for f in fields(TaskState)
                           if f.default is MISSING and f.default_factory is MISSING)
# (field, default) for to_sparse_dict: required fields always written (no default matches them).
_NO_DEFAULT = object()
_TASK_SPARSE = tuple((f.name, f.default if f.default is not MISSING else
                      (f.default_factory() if f.default_factory is not MISSING else _NO_DEFAULT))
                     for f in fields(TaskState) if f.name != "status")


def _new_task(values: dict[str, Any]) -> TaskState:
    """``TaskState(**values)`` without the generated ``__init__``'s 37 keyword assignments.

    The same instance (defaults, fresh mutable defaults, then ``values``), ~4x cheaper: a
    1M-record replay makes one per task and a 10,000-task snapshot load 10,000. Anything
    unusual (a required field missing, an unknown key) takes the real constructor, which raises.
    """
    if not (_TASK_REQUIRED <= values.keys() <= _TASK_FIELD_SET):
        return TaskState(**values)
    d = _fresh_task_dict()
    d.update(values)
    return _task_with(d)


def _fresh_task_dict() -> dict[str, Any]:
    """The ``__dict__`` of a task that has only its defaults so far (the required fields missing)."""
    d = _TASK_TEMPLATE.copy()
    for name, factory in _TASK_FACTORIES:
        d[name] = factory()
    return d


def _task_with(d: dict[str, Any]) -> TaskState:
    t = object.__new__(TaskState)
    t.__dict__ = d
    return t


@dataclass
class BatchState:
    batch_id: str | None = None
    manifest: str | None = None
    manifest_identity: str | None = None
    manifest_hash: str | None = None
    created_ts: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    run_options: dict[str, Any] = field(default_factory=dict)  # the latest run's command-line settings
    tasks: dict[str, TaskState] = field(default_factory=dict)
    paused: bool = False
    cancelled: bool = False
    stopped: dict[str, Any] | None = None  # last batch_stopped record's fields
    finished: bool = False
    runs: int = 0
    running_run: bool = False  # a run_started without its run_finished (a crash, or a live run)
    last_seq: int = 0
    last_ts: str | None = None
    requests_by_day: dict[str, dict[str, int]] = field(default_factory=dict)  # day → model → count
    youtube_seconds_by_day: dict[str, float] = field(default_factory=dict)  # day → seconds sent
    quota_blocks: dict[str, str] = field(default_factory=dict)  # model → resets_at (a spent daily quota)
    total_cost_usd: float = 0.0
    notifications: list[dict[str, Any]] = field(default_factory=list)
    batch_jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # Gemini Batch Mode jobs
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)  # upload name → upload (alive at the API)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # local path → {size, mtime_ns, sha256}

    # -- derived views -------------------------------------------------------------------------
    def live_tasks(self) -> Iterable[TaskState]:
        return (t for t in self.tasks.values() if not t.dropped)

    def counts(self) -> dict[str, int]:
        c = {s.value: 0 for s in TaskStatus}
        for t in self.live_tasks():
            c[t.status.value] += 1
        c["total"] = sum(c[s.value] for s in TaskStatus)
        return c

    def is_complete(self) -> bool:
        return all(t.status in TERMINAL for t in self.live_tasks())

    def upload_for(self, sha256: str | None) -> dict[str, Any] | None:
        """A live upload of the video with this content hash (one upload serves every task of it)."""
        if not sha256:
            return None
        for up in self.uploads.values():
            if up.get("source_sha256") == sha256:
                return up
        return None

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "tasks"}
        d["tasks"] = {k: t.to_sparse_dict() for k, t in self.tasks.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BatchState:
        names = {f.name for f in fields(cls)}
        s = cls(**{k: v for k, v in d.items() if k in names and k != "tasks"})
        s.tasks = {k: TaskState.from_dict(v) for k, v in d.get("tasks", {}).items()}
        return s


# ---------------------------------------------------------------------------------------------


def _illegal(rec: dict[str, Any], why: str) -> IllegalTransition:
    return IllegalTransition(f"record seq {rec.get('seq')} ({rec.get('type')}): {why}")


def _task(state: BatchState, rec: dict[str, Any]) -> TaskState:
    tid = rec.get("task_id")
    t = state.tasks.get(tid)  # type: ignore[arg-type]
    if t is None:
        raise _unknown_task(rec)
    return t


def _unknown_task(rec: dict[str, Any]) -> IllegalTransition:
    # The hot handlers look the task up inline (one call fewer per record) and raise this.
    return _illegal(rec, f"unknown task {rec.get('task_id')!r}")


def _need(rec: dict[str, Any], t: TaskState, allowed: Iterable[TaskStatus], *, live: bool = True) -> None:
    # ``allowed`` is a set (the hot handlers pass the module-level ones below): no copy per record.
    if t.status not in allowed:
        names = "/".join(sorted(s.value for s in allowed))
        raise _illegal(rec, f"task {t.task_id} is {t.status.value}, must be {names}")
    if live and t.dropped:
        raise _illegal(rec, f"task {t.task_id} was dropped from the manifest")


def apply(state: BatchState, rec: dict[str, Any]) -> BatchState:
    """Apply one record to ``state`` (in place) and return it; raise IllegalTransition if illegal."""
    typ = rec.get("type")
    seq = rec.get("seq")
    if not isinstance(seq, int) or (state.last_seq and seq != state.last_seq + 1):
        raise _illegal(rec, f"sequence number {seq} does not follow {state.last_seq}")
    if typ != "batch_created" and state.batch_id is None:
        raise _illegal(rec, "journal does not start with batch_created")
    handler = _HANDLERS.get(typ)  # type: ignore[arg-type]
    if handler is None:
        raise _illegal(rec, f"unknown record type {typ!r}")
    handler(state, rec)
    state.last_seq = seq
    state.last_ts = rec.get("ts")
    return state


def fold(records: Iterable[dict[str, Any]], state: BatchState | None = None) -> BatchState:
    """``apply`` each record in turn (a million-record replay spends most of its fold time here).

    The loop is :func:`apply` with its checks reduced to what a well-formed record needs: two
    subscripts, one handler lookup, an int check and the sequence check (``seq == last + 1``:
    apply's own when ``last`` is not 0, and stricter when it is). Anything else — a missing key,
    an unknown type, a record before ``batch_created``, a gap, another first seq than 1 — goes
    through ``apply`` itself, which applies it or raises exactly as it always did. The handlers
    are the very ones ``apply`` calls, so the state cannot drift from it.
    """
    state = state if state is not None else BatchState()
    handlers = _HANDLERS
    last = state.last_seq
    # Only _batch_created sets batch_id, and only apply (below) can run it while batch_id is None.
    created = state.batch_id is not None
    done: dict[str, Any] | None = None  # the last record applied by the fast path, not yet recorded
    try:
        for rec in records:
            try:
                seq = rec["seq"]
                handler = handlers[rec["type"]]
            except (KeyError, TypeError):  # missing, unknown or unhashable: apply says which
                handler = None
            if handler is None or type(seq) is not int or seq != last + 1 or not created:
                if done is not None:  # apply reads last_seq: bring the state up to date first
                    state.last_seq, state.last_ts, done = last, done.get("ts"), None
                apply(state, rec)  # raises IllegalTransition with its message (or, for a bool seq, applies it)
                last = state.last_seq
                created = state.batch_id is not None
                continue
            handler(state, rec)
            # last_seq / last_ts are written once, when the loop ends or a record is refused:
            # only the last record's values survive anyway.
            last = seq
            done = rec
    finally:
        if done is not None:
            state.last_seq = last
            state.last_ts = done.get("ts")
    return state


# -- handlers: each checks first, then mutates ---------------------------------------------------


def _batch_created(s: BatchState, r: dict[str, Any]) -> None:
    if s.batch_id is not None:
        raise _illegal(r, "batch already created")
    s.batch_id = r["batch_id"]
    s.manifest = r.get("manifest")
    s.manifest_identity = r.get("manifest_identity")
    s.manifest_hash = r.get("manifest_hash")
    s.settings = dict(r.get("settings") or {})
    s.created_ts = r.get("ts")


def _manifest_changed(s: BatchState, r: dict[str, Any]) -> None:
    s.manifest_hash = r.get("manifest_hash")
    if r.get("settings") is not None:
        s.settings = dict(r["settings"])


def _run_started(s: BatchState, r: dict[str, Any]) -> None:
    # Pause and cancel belong to the run that received them; a new run starts afresh.
    s.runs += 1
    s.running_run = True
    s.paused = False
    s.cancelled = False
    s.stopped = None
    if r.get("options") is not None:
        s.run_options = dict(r["options"])
    if r.get("manifest"):
        s.manifest = r["manifest"]


def _run_finished(s: BatchState, r: dict[str, Any]) -> None:
    s.running_run = False


def _task_added(s: BatchState, r: dict[str, Any]) -> None:
    tid = r["task_id"]
    old = s.tasks.get(tid)
    if old is not None and not old.dropped:
        raise _illegal(r, f"task {tid} already exists")
    s.finished = False
    if old is not None:
        old.dropped = False  # the job came back into the manifest: keep its history
        return
    if "seq" in r and "ts" in r and "type" in r and "source" in r and _ADDED_RECORD.issuperset(r):
        # The record as the manager writes it: every key but seq/ts/type is a task field, so the
        # task is the defaults updated with the record, without a filtering loop per key
        # (the same instance _new_task makes, about twice as fast).
        d = _fresh_task_dict()
        d.update(r)
        del d["seq"], d["ts"], d["type"]
        s.tasks[tid] = _task_with(d)
        return
    s.tasks[tid] = _new_task({k: v for k, v in r.items() if k in _ADDED_FIELDS})


# TaskState fields a task_added record may set; computed once (dataclasses.fields() per record
# was a fifth of the fold time of a 1M-record replay).
_ADDED_FIELDS = frozenset({"task_id", "source", "source_kind", "title", "template", "model", "output",
                           "output_format", "origin"})
_ADDED_RECORD = _ADDED_FIELDS | {"seq", "ts", "type"}


def _task_dropped(s: BatchState, r: dict[str, Any]) -> None:
    t = _task(s, r)
    _need(r, t, set(TaskStatus) - {TaskStatus.RUNNING})
    t.dropped = True


def _task_started(s: BatchState, r: dict[str, Any]) -> None:
    get = r.get  # the hot handlers read a dozen optional keys: one method lookup
    t = s.tasks.get(get("task_id"))  # type: ignore[arg-type]
    if t is None:
        raise _unknown_task(r)
    if t.status is not _PENDING or t.dropped:  # identity first: an enum's hash is a Python call
        _need(r, t, RUNNABLE)
    attempts = t.attempts
    attempt = int(get("attempt", attempts + 1))
    if attempt != attempts + 1:
        raise _illegal(r, f"task {t.task_id} attempt {attempt} does not follow {attempts}")
    t.status = _RUNNING
    t.attempts = attempt
    t.attempt_id = get("attempt_id")
    value = get("model")
    if value:
        t.model = value  # the model this attempt is sent to: what its cost is priced with
    value = get("fingerprint")
    if value:
        t.fingerprint = value
    value = get("output")
    if value:
        t.output = value
    t.worker = get("worker")
    t.step = "queued"
    t.started_ts = get("ts")
    t.not_before = None


def _task_step(s: BatchState, r: dict[str, Any]) -> None:
    t = s.tasks.get(r.get("task_id"))  # type: ignore[arg-type]
    if t is None:
        raise _unknown_task(r)
    if t.status is not _RUNNING or t.dropped:  # identity first: an enum's hash is a Python call
        _need(r, t, _ONLY_RUNNING)
    t.step = r.get("step")
    worker = r.get("worker")
    if worker is not None:
        t.worker = worker


def _task_plan(s: BatchState, r: dict[str, Any]) -> None:
    t = _task(s, r)
    _need(r, t, {TaskStatus.RUNNING})
    plan = dict(r["plan"])
    # Partials of clips the new plan keeps (same index, start and end) stay paid for; those of
    # clips it cut differently cannot be merged with it.
    keep = {str(c.get("index")): (c.get("start"), c.get("end")) for c in plan.get("clips") or []}
    t.partials = {k: p for k, p in t.partials.items()
                  if k in keep and (p.get("start"), p.get("end")) == keep[k]}
    t.plan = plan
    if r.get("video_duration") is not None:
        t.video_duration = r["video_duration"]


def _clip_completed(s: BatchState, r: dict[str, Any]) -> None:
    t = _task(s, r)
    _need(r, t, {TaskStatus.RUNNING, TaskStatus.PENDING} if r.get("adopted") else {TaskStatus.RUNNING})
    key = str(int(r["clip"]))
    if key in t.partials:
        raise _illegal(r, f"task {t.task_id} clip {key} is already completed")
    t.partials[key] = {k: r.get(k) for k in ("path", "sha256", "start", "end", "usage", "cost_usd", "adopted")}
    _charge(s, t, r)


def _upload_finished(s: BatchState, r: dict[str, Any]) -> None:
    up = dict(r["upload"])
    name = up.get("name")
    if not name:
        raise _illegal(r, "upload without a name")
    s.uploads[name] = up
    src = up.get("source")
    if src:
        sha256 = up.get("source_sha256")
        if sha256:
            s.sources[src] = {"size": up.get("source_size"), "mtime_ns": up.get("source_mtime_ns"), "sha256": sha256}


def _upload_deleted(s: BatchState, r: dict[str, Any]) -> None:
    s.uploads.pop(r.get("name"), None)  # type: ignore[arg-type]


def _task_completed(s: BatchState, r: dict[str, Any]) -> None:
    get = r.get  # a dozen optional keys: one method lookup
    t = s.tasks.get(get("task_id"))  # type: ignore[arg-type]
    if t is None:
        raise _unknown_task(r)
    # An adopted output may belong to an attempt a signal already put back to pending.
    if t.status is not _RUNNING or t.dropped:  # identity first: an enum's hash is a Python call
        _need(r, t, _RUNNING_OR_PENDING if get("adopted") else _ONLY_RUNNING)
    sha256 = get("sha256")
    if not sha256:
        raise _illegal(r, "completed record without sha256")
    t.status = _COMPLETED
    t.output = get("output", t.output)
    t.sha256 = sha256
    t.bytes = get("bytes")
    t.usage = dict(get("usage") or {})
    t.model_version = get("model_version")
    t.video_duration = get("video_duration", t.video_duration)
    t.elapsed = get("elapsed")
    t.finished_ts = get("ts")
    t.adopted = bool(get("adopted"))
    t.truncated = bool(get("truncated"))
    t.done_fingerprint = get("fingerprint") or t.fingerprint
    plan = get("plan")
    if plan and (t.plan or {}).get("strategy") != "clips":
        t.plan = dict(plan)  # a one-call plan is recorded with the outcome; a clips plan has its own
    t.step = None
    t.last_error = None
    _charge(s, t, r)


def _error_of(r: dict[str, Any]) -> dict[str, Any]:
    return {k: r.get(k) for k in _ERROR_KEYS if k in r}


def _task_failed(s: BatchState, r: dict[str, Any]) -> None:
    t = _task(s, r)
    _need(r, t, _ONLY_RUNNING)
    t.status = TaskStatus.FAILED
    t.last_error = _error_of(r)
    t.finished_ts = r.get("ts")
    t.step = None
    _count_charge(t, r)
    _charge(s, t, r)


def _retry_scheduled(s: BatchState, r: dict[str, Any]) -> None:
    t = _task(s, r)
    _need(r, t, _ONLY_RUNNING)
    t.status = TaskStatus.PENDING
    t.not_before = r.get("not_before")
    t.last_error = _error_of(r)
    t.step = None
    _count_charge(t, r)
    _charge(s, t, r)


def _count_charge(t: TaskState, r: dict[str, Any]) -> None:
    charge = r.get("charge", "attempt")  # journals of 0.1 charged every failed attempt
    if charge == "attempt":
        t.failures += 1
    elif charge == "crash":
        t.crashes += 1


def _charge(s: BatchState, t: TaskState, r: dict[str, Any]) -> None:
    # Every answer is priced where it is reported; a failed attempt may still have been billed.
    cost = float(r.get("cost_usd") or 0.0)
    t.cost_usd += cost
    s.total_cost_usd += cost
    t.calls += int(r.get("calls") or 0)
    t.lost_calls += int(r.get("lost_calls") or 0)


def _task_requeued(s: BatchState, r: dict[str, Any]) -> None:
    t = _task(s, r)
    _need(r, t, {TaskStatus.RUNNING} | TERMINAL)
    # 0.1 journals: in_flight / refund_attempt / reset_attempts
    if t.status is TaskStatus.RUNNING and r.get("interrupted", r.get("in_flight", False)):
        t.interruptions += 1
    if r.get("reset", r.get("reset_attempts")):
        t.failures = 0
        t.crashes = 0
        t.partials = {}
        t.plan = None
    t.status = TaskStatus.PENDING
    t.step = None
    t.not_before = None
    s.finished = False
    _charge(s, t, r)


def _task_skipped(s: BatchState, r: dict[str, Any]) -> None:
    t = _task(s, r)
    _need(r, t, {TaskStatus.PENDING, TaskStatus.RUNNING})
    t.status = TaskStatus.SKIPPED
    t.skipped_reason = r.get("reason")
    t.finished_ts = r.get("ts")
    t.step = None
    if r.get("video_duration") is not None:
        t.video_duration = r["video_duration"]


def _requests_charged(s: BatchState, r: dict[str, Any]) -> None:
    day = s.requests_by_day.setdefault(r["day"], {})
    day[r["model"]] = day.get(r["model"], 0) + int(r.get("count", 1))
    if r.get("youtube_seconds"):
        s.youtube_seconds_by_day[r["day"]] = s.youtube_seconds_by_day.get(r["day"], 0.0) + float(r["youtube_seconds"])


def _batch_paused(s: BatchState, r: dict[str, Any]) -> None:
    s.paused = True


def _batch_resumed(s: BatchState, r: dict[str, Any]) -> None:
    s.paused = False


def _batch_cancelled(s: BatchState, r: dict[str, Any]) -> None:
    s.cancelled = True


def _batch_stopped(s: BatchState, r: dict[str, Any]) -> None:
    s.stopped = {k: v for k, v in r.items() if k not in ("seq", "crc")}
    # A spent daily quota outlives the run that met it: the next cron firing the same Pacific
    # day must not ask the API again (it would only burn another request).
    # Our own budget (settings.rpd, ``budget: true``) is not a block: every run recounts it from
    # requests_charged with its own settings, so a rerun with a raised --rpd goes on.
    if r.get("kind") == "quota_day" and r.get("resets_at") and not r.get("budget"):
        for model in r.get("models") or ([r["model"]] if r.get("model") else ["*"]):
            s.quota_blocks[model] = r["resets_at"]


def _quota_cleared(s: BatchState, r: dict[str, Any]) -> None:
    for model in r.get("models") or list(s.quota_blocks):
        s.quota_blocks.pop(model, None)


def _batch_finished(s: BatchState, r: dict[str, Any]) -> None:
    s.finished = True


def _notification(s: BatchState, r: dict[str, Any]) -> None:
    s.notifications.append({k: v for k, v in r.items() if k not in ("seq", "crc")})


_RECORD_KEYS = frozenset({"seq", "ts", "type", "crc"})


def _batch_job_submitted(s: BatchState, r: dict[str, Any]) -> None:
    # Extra fields (remote job name, display name, per-task video durations...) are kept:
    # batch mode needs them on the next run to find, read and clean up the remote job.
    job = {k: v for k, v in r.items() if k not in _RECORD_KEYS}
    job.update({"name": r["name"], "task_ids": list(r.get("task_ids", [])),
                "state": r.get("state") or "SUBMITTED", "ts": r.get("ts"), "model": r.get("model")})
    s.batch_jobs[r["name"]] = job


def _batch_job_updated(s: BatchState, r: dict[str, Any]) -> None:
    job = s.batch_jobs.get(r["name"])
    if job is None:
        raise _illegal(r, f"unknown batch job {r['name']!r}")
    job.update({k: v for k, v in r.items() if k not in _RECORD_KEYS | {"name", "done", "state"}})
    job["state"] = r.get("state", job["state"])
    if r.get("done"):
        job["done"] = True


_HANDLERS = {
    "batch_created": _batch_created,
    "manifest_changed": _manifest_changed,
    "run_started": _run_started,
    "run_finished": _run_finished,
    "task_added": _task_added,
    "task_dropped": _task_dropped,
    "task_started": _task_started,
    "task_step": _task_step,
    "task_plan": _task_plan,
    "clip_completed": _clip_completed,
    "upload_finished": _upload_finished,
    "upload_deleted": _upload_deleted,
    "task_completed": _task_completed,
    "task_failed": _task_failed,
    "retry_scheduled": _retry_scheduled,
    "task_requeued": _task_requeued,
    "task_skipped": _task_skipped,
    "requests_charged": _requests_charged,
    "batch_paused": _batch_paused,
    "batch_resumed": _batch_resumed,
    "batch_cancelled": _batch_cancelled,
    "batch_stopped": _batch_stopped,
    "quota_cleared": _quota_cleared,
    "batch_finished": _batch_finished,
    "notification": _notification,
    "batch_job_submitted": _batch_job_submitted,
    "batch_job_updated": _batch_job_updated,
}

RECORD_TYPES = frozenset(_HANDLERS)
