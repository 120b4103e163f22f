"""The fold: hand-written record sequences, and every illegal transition raises."""

from __future__ import annotations

import pytest

from gsvr_batch.errors import IllegalTransition
from gsvr_batch.state import TERMINAL, BatchState, TaskStatus, apply, fold


class Seq:
    """Builds records with consecutive sequence numbers."""

    def __init__(self):
        self.n = 0

    def __call__(self, type_, **f):
        self.n += 1
        return {"seq": self.n, "ts": f"2026-01-01T00:00:{self.n:02d}.000Z", "type": type_, **f}


def base(seq, *tids):
    recs = [seq("batch_created", batch_id="b1", manifest="m.yaml", manifest_identity="i", manifest_hash="h",
                settings={})]
    recs += [seq("task_added", task_id=t, source=f"{t}.mp4") for t in tids]
    return recs


def test_happy_life_cycle():
    s = Seq()
    st = fold(base(s, "a", "b") + [
        s("run_started"),
        s("task_started", task_id="a", attempt=1),
        s("task_step", task_id="a", step="uploading"),
        s("upload_finished", task_id="a", upload={"name": "files/x", "uri": "u", "mime_type": "video/mp4"}),
        s("task_completed", task_id="a", output="a.md", sha256="f" * 64, usage={"total_tokens": 9}, cost_usd=0.5),
        s("task_started", task_id="b", attempt=1),
        s("retry_scheduled", task_id="b", attempt=2, not_before=10.0, error_class="ServerError", message="503"),
        s("task_started", task_id="b", attempt=2),
        s("task_failed", task_id="b", attempt=2, error_class="ContentBlocked", message="safety"),
        s("run_finished", exit_code=1),
    ])
    assert st.tasks["a"].status is TaskStatus.COMPLETED and set(st.uploads) == {"files/x"}
    assert st.tasks["b"].status is TaskStatus.FAILED and st.tasks["b"].attempts == 2
    assert st.tasks["b"].failures == 2  # journals of 0.1 (no "charge") charge every failed attempt
    assert st.tasks["b"].last_error["error_class"] == "ContentBlocked"
    assert st.counts() == {"pending": 0, "running": 0, "completed": 1, "failed": 1, "skipped": 0, "total": 2}
    assert st.total_cost_usd == 0.5 and st.is_complete()


def test_crash_requeue_and_retry_command_keep_history():
    s = Seq()
    st = fold(base(s, "a") + [
        s("task_started", task_id="a", attempt=1),
        s("task_requeued", task_id="a", reason="crash", in_flight=True),
        s("task_started", task_id="a", attempt=2),
        s("task_failed", task_id="a", attempt=2, error_class="X", message="m"),
        s("task_requeued", task_id="a", reason="retry", in_flight=False, reset_attempts=True),
    ])
    t = st.tasks["a"]
    # 0.1 journals: in_flight / reset_attempts; the crash charged nobody, the retry reset the charges
    assert t.status is TaskStatus.PENDING and t.attempts == 2 and t.failures == 0 and t.interruptions == 1


def test_charges_go_to_the_budget_named_and_crashes_charge_nobody():
    s = Seq()
    st = fold(base(s, "a") + [
        s("task_started", task_id="a", attempt=1, attempt_id="n1", model="gemini-2.5-pro"),
        s("retry_scheduled", task_id="a", attempt=2, error_class="ServerError", message="503", charge="attempt",
          cost_usd=0.25, calls=1, lost_calls=1),
        s("task_started", task_id="a", attempt=2, attempt_id="n2"),
        s("retry_scheduled", task_id="a", attempt=3, error_class="WorkerDied", message="died", charge="crash"),
        s("task_started", task_id="a", attempt=3, attempt_id="n3"),
        s("task_requeued", task_id="a", reason="manager died", interrupted=True),
        s("task_started", task_id="a", attempt=4, attempt_id="n4"),
        s("task_requeued", task_id="a", reason="pool rebuilt", interrupted=True),
    ])
    t = st.tasks["a"]
    assert (t.failures, t.crashes, t.interruptions, t.attempts) == (1, 1, 2, 4)
    assert t.model == "gemini-2.5-pro" and t.attempt_id == "n4"  # the model actually called, priced from there
    assert t.cost_usd == 0.25 and t.calls == 1 and t.lost_calls == 1 and st.total_cost_usd == 0.25


def test_an_output_found_after_a_signal_is_adopted_from_pending():
    s = Seq()
    st = fold(base(s, "a") + [
        s("task_started", task_id="a", attempt=1, attempt_id="n1"),
        s("task_requeued", task_id="a", reason="second Ctrl-C", interrupted=True),
    ])
    with pytest.raises(IllegalTransition):  # only an adoption may complete a pending task
        apply(st, s("task_completed", task_id="a", sha256="x"))
    s.n -= 1
    apply(st, s("task_completed", task_id="a", sha256="x", adopted=True, cost_usd=0.1, calls=1))
    assert st.tasks["a"].status is TaskStatus.COMPLETED and st.tasks["a"].adopted and st.tasks["a"].calls == 1


def test_clip_partials_are_paid_once_and_a_new_plan_forgets_other_boundaries():
    s = Seq()
    plan = {"strategy": "clips", "clips": [{"index": 0, "start": 0, "end": 60}, {"index": 1, "start": 60, "end": 90}]}
    st = fold(base(s, "a") + [
        s("task_started", task_id="a", attempt=1, attempt_id="n1"),
        s("task_plan", task_id="a", plan=plan),
        s("clip_completed", task_id="a", clip=0, start=0, end=60, path="p0", sha256="s0", usage={}, cost_usd=0.5,
          calls=1),
    ])
    assert set(st.tasks["a"].partials) == {"0"} and st.total_cost_usd == 0.5
    with pytest.raises(IllegalTransition):  # the same clip twice would be paid twice
        apply(st, s("clip_completed", task_id="a", clip=0, start=0, end=60, path="p0", sha256="s0", usage={}))
    s.n -= 1
    apply(st, s("task_plan", task_id="a", plan=dict(plan)))  # same boundaries: partials kept
    assert set(st.tasks["a"].partials) == {"0"}
    apply(st, s("task_plan", task_id="a", plan={"strategy": "clips", "clips": [{"index": 0, "start": 0, "end": 45}]}))
    assert st.tasks["a"].partials == {} and st.total_cost_usd == 0.5  # money already spent stays counted


def test_a_spent_daily_quota_outlives_the_run_that_met_it():
    s = Seq()
    st = fold(base(s, "a") + [
        s("run_started"),
        s("batch_stopped", kind="quota_day", reason="spent", resets_at="2026-11-29T08:00:00Z", model="m"),
        s("run_finished", exit_code=75),
        s("run_started"),
    ])
    assert st.stopped is None and st.quota_blocks == {"m": "2026-11-29T08:00:00Z"}
    apply(st, s("quota_cleared", models=["m"], reason="new day"))
    assert st.quota_blocks == {}


def test_dropped_task_is_hidden_and_can_come_back():
    s = Seq()
    st = fold(base(s, "a", "b") + [s("task_dropped", task_id="b", reason="gone")])
    assert st.counts()["total"] == 1
    apply(st, s("task_added", task_id="b", source="b.mp4"))
    assert st.counts()["total"] == 2


def test_snapshot_roundtrip():
    s = Seq()
    st = fold(base(s, "a") + [s("task_started", task_id="a", attempt=1)])
    assert BatchState.from_dict(st.to_dict()).to_dict() == st.to_dict()


ILLEGAL = [
    ("record before batch_created", lambda s: [s("task_added", task_id="a", source="x")]),
    ("second batch_created", lambda s: base(s) + [s("batch_created", batch_id="b2")]),
    ("unknown record type", lambda s: base(s) + [s("task_exploded", task_id="a")]),
    ("duplicate task", lambda s: base(s, "a") + [s("task_added", task_id="a", source="x")]),
    ("unknown task", lambda s: base(s) + [s("task_started", task_id="zz", attempt=1)]),
    ("complete a pending task", lambda s: base(s, "a") + [s("task_completed", task_id="a", sha256="x")]),
    ("fail a pending task", lambda s: base(s, "a") + [s("task_failed", task_id="a", error_class="E")]),
    ("start a running task", lambda s: base(s, "a") + [s("task_started", task_id="a", attempt=1),
                                                       s("task_started", task_id="a", attempt=2)]),
    ("start a completed task", lambda s: base(s, "a") + [
        s("task_started", task_id="a", attempt=1), s("task_completed", task_id="a", sha256="x"),
        s("task_started", task_id="a", attempt=2)]),
    ("complete twice", lambda s: base(s, "a") + [
        s("task_started", task_id="a", attempt=1), s("task_completed", task_id="a", sha256="x"),
        s("task_completed", task_id="a", sha256="x")]),
    ("completed without sha256", lambda s: base(s, "a") + [
        s("task_started", task_id="a", attempt=1), s("task_completed", task_id="a")]),
    ("attempt number skips", lambda s: base(s, "a") + [s("task_started", task_id="a", attempt=3)]),
    ("step of a pending task", lambda s: base(s, "a") + [s("task_step", task_id="a", step="x")]),
    ("upload without a name", lambda s: base(s, "a") + [s("upload_finished", task_id="a", upload={})]),
    ("retry of a pending task", lambda s: base(s, "a") + [s("retry_scheduled", task_id="a")]),
    ("requeue a pending task", lambda s: base(s, "a") + [s("task_requeued", task_id="a", reason="r")]),
    ("skip a failed task", lambda s: base(s, "a") + [
        s("task_started", task_id="a", attempt=1), s("task_failed", task_id="a", error_class="E"),
        s("task_skipped", task_id="a", reason="r")]),
    ("drop a running task", lambda s: base(s, "a") + [s("task_started", task_id="a", attempt=1),
                                                      s("task_dropped", task_id="a", reason="r")]),
    ("start a dropped task", lambda s: base(s, "a") + [s("task_dropped", task_id="a", reason="r"),
                                                       s("task_started", task_id="a", attempt=1)]),
    ("unknown batch job", lambda s: base(s) + [s("batch_job_updated", name="batches/x", state="S")]),
]


@pytest.mark.parametrize("why,records", ILLEGAL, ids=[i[0] for i in ILLEGAL])
def test_illegal_transitions_raise_and_leave_state_unchanged(why, records):
    recs = records(Seq())
    st = BatchState()
    for r in recs[:-1]:
        apply(st, r)
    before = st.to_dict()
    with pytest.raises(IllegalTransition):
        apply(st, recs[-1])
    assert st.to_dict() == before


def test_sequence_gap_is_illegal():
    s = Seq()
    recs = base(s, "a")
    s.n += 1  # skip one
    with pytest.raises(IllegalTransition, match="sequence"):
        fold(recs + [s("task_started", task_id="a", attempt=1)])


def test_terminal_set():
    assert TERMINAL == {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.SKIPPED}
    assert TaskStatus.COMPLETED == "completed"  # str enum: journal values compare directly


def test_fold_fast_path_is_apply_record_by_record():
    """state.fold inlines apply (issue 12): same state, and a refused record raises the same error."""
    from gsvr_batch.errors import IllegalTransition
    from gsvr_batch.state import BatchState, TaskState, _new_task, apply, fold

    recs = [
        {"seq": 1, "ts": "a", "type": "batch_created", "batch_id": "b"},
        {"seq": 2, "ts": "b", "type": "task_added", "task_id": "t1", "source": "v.mp4", "title": "T", "extra": 1},
        {"seq": 3, "ts": "c", "type": "task_started", "task_id": "t1", "attempt": 1, "attempt_id": "x", "model": "m"},
        {"seq": 4, "ts": "d", "type": "task_step", "task_id": "t1", "step": "uploading", "worker": 7},
        {"seq": 5, "ts": "e", "type": "task_completed", "task_id": "t1", "sha256": "ab", "cost_usd": 0.5,
         "usage": {"prompt_tokens": 3}},
    ]
    slow = BatchState()
    for r in recs:
        apply(slow, r)
    assert fold(recs).to_dict() == slow.to_dict()
    t = _new_task({"task_id": "t9", "source": "s"})
    assert vars(t) == vars(TaskState(task_id="t9", source="s")) and t.partials is not TaskState("a", "b").partials
    assert TaskState.from_dict(slow.tasks["t1"].to_dict()) == slow.tasks["t1"]
    for bad in ({"seq": 7, "ts": "f", "type": "task_step", "task_id": "t1", "step": "x"},  # gap
                {"seq": 6, "ts": "f", "type": "no_such_type"},
                {"seq": 6, "ts": "f", "type": "task_step", "task_id": "t1", "step": "x"}):  # completed: not running
        st = fold(recs)
        before = st.to_dict()
        with pytest.raises(IllegalTransition) as e1:
            fold([bad], st)
        with pytest.raises(IllegalTransition) as e2:
            apply(fold(recs), bad)
        assert str(e1.value) == str(e2.value) and st.to_dict() == before


def test_sparse_snapshot_dicts_round_trip_exactly():
    from gsvr_batch.state import TaskState

    plain = TaskState(task_id="t", source="s")
    assert set(plain.to_sparse_dict()) == {"task_id", "source", "status"}
    busy = TaskState(task_id="t", source="s", attempts=2, cost_usd=0, usage={"prompt_tokens": 5}, partials={},
                     status=TaskStatus.COMPLETED, not_before=0.0, adopted=True)
    d = busy.to_sparse_dict()
    assert d["cost_usd"] == 0 and type(d["cost_usd"]) is int  # equal to the default but not the same value
    for t in (plain, busy):
        back = TaskState.from_dict(t.to_sparse_dict())
        assert back == t and back.to_dict() == t.to_dict() and back.partials is not t.partials
    assert TaskState.from_dict(dict(plain.to_dict(), from_a_newer_version=1)) == plain


# -- issue 12: fold is apply, record by record, whatever the records ------------------------------


def _random_record(rng, tids):
    """One record of any type, with fields a real journal has, sometimes odd or missing."""
    tid = rng.choice(tids)
    pick = rng.random
    usage = {"prompt_tokens": rng.randint(0, 9)} if pick() < 0.7 else None
    plan = rng.choice([None, {"strategy": "full", "requests": 1},
                       {"strategy": "clips", "clips": [{"index": 0, "start": 0, "end": 60},
                                                       {"index": 1, "start": 60, "end": 90}]}])
    makers = {
        "manifest_changed": lambda: {"manifest_hash": "h2", "settings": rng.choice([None, {"rpm": 5}])},
        "run_started": lambda: {"options": rng.choice([None, {"workers": 2}]), "manifest": rng.choice(["", "m2"])},
        "run_finished": lambda: {"exit_code": 0},
        "task_added": lambda: dict({"task_id": tid, "source": f"{tid}.mp4", "title": "T", "model": "m"},
                                   **rng.choice([{}, {}, {"extra": 1}, {"status": "completed"}, {"crc": "x"}])),
        "task_dropped": lambda: {"task_id": tid, "reason": "gone"},
        "task_started": lambda: {k: v for k, v in {
            "task_id": tid, "attempt": rng.choice([1, 2, 3, None]), "attempt_id": f"a{rng.randint(0, 99)}",
            "model": rng.choice(["", "m2"]), "fingerprint": rng.choice([None, "fp"]), "output": rng.choice(["", "o2"]),
            "worker": rng.choice([None, 4])}.items() if v is not None or pick() < 0.2},
        "task_step": lambda: {"task_id": tid, "step": rng.choice(["uploading", "generating"]),
                              **({"worker": 7} if pick() < 0.3 else {})},
        "task_plan": lambda: {"task_id": tid, "plan": plan or {"strategy": "full"}, "video_duration": 90.0},
        "clip_completed": lambda: {"task_id": tid, "clip": rng.choice([0, 1]), "start": 0, "end": 60, "path": "p",
                                   "sha256": "s", "usage": usage, "cost_usd": 0.125, "calls": 1,
                                   "adopted": pick() < 0.2},
        "upload_finished": lambda: {"task_id": tid, "upload": {
            "name": rng.choice(["files/a", "files/b", ""]), "source": rng.choice([f"{tid}.mp4", None]),
            "source_sha256": rng.choice(["ab", None]), "source_size": 5, "source_mtime_ns": 7}},
        "upload_deleted": lambda: {"name": rng.choice(["files/a", "files/b", "files/none"]), "reason": "r"},
        "task_completed": lambda: {k: v for k, v in {
            "task_id": tid, "sha256": rng.choice(["f" * 64, "f" * 64, ""]), "output": "o.md", "bytes": 10,
            "usage": usage, "cost_usd": rng.choice([0.5, None]), "calls": 1, "lost_calls": rng.choice([0, 1]),
            "model_version": "mv", "video_duration": 60.0, "elapsed": 1.5, "adopted": pick() < 0.2,
            "truncated": pick() < 0.2, "fingerprint": rng.choice([None, "fp2"]), "plan": plan}.items()
            if v is not None or pick() < 0.3},
        "task_failed": lambda: {"task_id": tid, "error_class": "E", "message": "m", "disposition": "fail",
                                "charge": rng.choice(["attempt", "crash", None]), "cost_usd": 0.25},
        "retry_scheduled": lambda: {"task_id": tid, "not_before": 10.0, "error_class": "E",
                                    "charge": rng.choice(["attempt", "crash"]), "calls": 1},
        "task_requeued": lambda: {"task_id": tid, "reason": "r", "interrupted": pick() < 0.5, "reset": pick() < 0.3},
        "task_skipped": lambda: {"task_id": tid, "reason": "too long", "video_duration": rng.choice([None, 9.0])},
        "requests_charged": lambda: {"model": rng.choice(["m", "m2"]), "day": "2026-01-01",
                                     **({"count": 2} if pick() < 0.7 else {}),
                                     **({"youtube_seconds": 3.5} if pick() < 0.5 else {})},
        "batch_paused": lambda: {"reason": "r"},
        "batch_resumed": lambda: {"reason": "r"},
        "batch_cancelled": lambda: {"reason": "r"},
        "batch_stopped": lambda: {"kind": "quota_day", "reason": "r", "resets_at": "z", "models": ["m"]},
        "quota_cleared": lambda: {"models": ["m"], "reason": "r"},
        "batch_finished": lambda: {"counts": {}},
        "notification": lambda: {"kind": "k", "text": "t"},
        "batch_job_submitted": lambda: {"name": "batches/1", "task_ids": [tid], "model": "m"},
        "batch_job_updated": lambda: {"name": "batches/1", "state": "RUNNING", "done": pick() < 0.3},
    }
    # the records of a task's life cycle most of the time, so that long histories are legal
    hot = ["task_added", "task_started", "task_step", "task_step", "upload_finished", "task_completed",
           "upload_deleted"]
    typ = rng.choice(hot) if pick() < 0.6 else rng.choice(list(makers))
    return typ, makers[typ]()


def _history(rng):
    """A legal history (every record apply accepts, numbered on), built by trying random records."""
    import copy

    from gsvr_batch.errors import IllegalTransition

    st = BatchState()
    recs = [{"seq": 1, "ts": "t1", "type": "batch_created", "batch_id": "b", "settings": {"workers": 1}}]
    apply(st, copy.deepcopy(recs[0]))
    tids = [f"t{i}" for i in range(rng.randint(1, 4))]
    for _ in range(rng.randint(0, 400)):
        typ, fields = _random_record(rng, tids)
        rec = {"seq": len(recs) + 1, "ts": f"t{len(recs) + 1}", "type": typ, **fields}
        try:
            apply(st, copy.deepcopy(rec))
        except IllegalTransition:
            continue  # refused before anything changed: the state is still the one of ``recs``
        except (KeyError, TypeError, ValueError):  # a malformed field: the state may be half-changed
            st = BatchState()
            for r in copy.deepcopy(recs):
                apply(st, r)
            continue
        recs.append(rec)
    return recs, tids


def _outcome(run, records):
    """(state as a dict, the error raised: type and message) of run(records)."""
    import copy

    st = BatchState()
    try:
        run(st, copy.deepcopy(records))
        err = None
    except Exception as exc:  # noqa: BLE001 - compared, whatever it is
        err = (type(exc), str(exc))
    return st.to_dict(), {k: (t, vars(t)) for k, t in st.tasks.items()}, err


@pytest.mark.parametrize("seed", range(40))
def test_fold_is_apply_record_by_record_on_random_histories(seed):
    """Random legal histories, then one last record that is anything (illegal, a gap, a bool or a
    missing seq, an unknown type, a key missing): fold — in one call or in batches — leaves the
    same state and raises the same error as apply, record by record."""
    import random

    rng = random.Random(seed)
    recs, tids = _history(rng)
    typ, fields = _random_record(rng, tids + ["zz"])
    n = len(recs) + 1
    last = rng.choice([
        {"seq": n, "ts": "x", "type": typ, **fields},
        {"seq": n + 1, "ts": "x", "type": typ, **fields},  # a gap
        {"seq": n - 1, "ts": "x", "type": typ, **fields},  # a repeat
        {"seq": float(n), "ts": "x", "type": typ, **fields},
        {"seq": True, "ts": "x", "type": typ, **fields},
        {"ts": "x", "type": typ, **fields},
        {"seq": n, "ts": "x", "type": "no_such_type"},
        {"seq": n, "ts": "x", **fields},
        {"seq": n, "type": typ, **fields},  # no ts
        {"seq": n, "ts": "x", "type": typ, **{k: v for k, v in fields.items() if k != "task_id"}},
        {"seq": n, "ts": "x", "type": "batch_created", "batch_id": "again"},
    ])
    records = recs + [last]
    if rng.random() < 0.1:  # no batch_created: the first record is refused, whatever its seq
        records = [dict(r, seq=r["seq"] - 1) for r in records[1:-1]] + [last]

    def one_by_one(st, rs):
        for r in rs:
            apply(st, r)

    def in_batches(st, rs):
        cut = sorted(rng.sample(range(len(rs) + 1), k=min(3, len(rs) + 1)))
        for a, b in zip([0] + cut, cut + [len(rs)]):
            fold(rs[a:b], st)

    want = _outcome(one_by_one, records)
    assert _outcome(lambda st, rs: fold(rs, st), records) == want
    assert _outcome(in_batches, records) == want
    if records[0]["type"] != "batch_created":
        return
    # and from a snapshot of a prefix, as replay does with one
    k = rng.randrange(1, len(records))
    head = BatchState()
    one_by_one(head, records[:k])

    def from_snapshot(st, rs):
        snap = BatchState.from_dict(head.to_dict())
        st.__dict__.update(snap.__dict__)
        fold(rs[k:], st)

    assert _outcome(from_snapshot, records) == want
