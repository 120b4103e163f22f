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
