"""Fast torture: the four kinds of kill of scripts/torture.py on a small batch; nothing lost or doubled.

The same code as scripts/torture.py (which runs ≥ 100 tasks and ≥ 40 kills for docs/RELIABILITY.md),
with 24 tasks and 8 kills (two of each kind) so it fits the suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import torture  # noqa: E402

pytestmark = pytest.mark.slow


def test_kills_of_every_kind_lose_nothing_charge_nobody_and_pay_only_what_a_kill_explains(tmp_path, monkeypatch):
    # Every replay of these runs (each restart's, `replay --verify`'s) on two cores, as a long
    # journal's would be: torn tails, snapshots and kills meet fastreplay here. The rest of the
    # suite replays with the reference (short journals).
    monkeypatch.setenv("GSVR_BATCH_TWO_CORE_REPLAY", "always")
    rep = torture.torture(tmp_path / "t", tasks=24, kills=8, latency=0.8, workers=3, seed=7, max_seconds=240)
    assert rep.problems == [], torture.summary(rep)
    assert rep.kills_by_kind == {"manager": 2, "worker": 2, "sigterm": 2, "stop-kill": 2}
    assert rep.exit_codes[-1] == 0  # the last run finished the batch by itself
    assert rep.exit_codes.count(130) == 2  # each group SIGTERM was a graceful stop
    assert rep.completed == 24 == rep.outputs and rep.failed == 0
    assert rep.adopted >= 1  # a kill between answer and journal left an output that was adopted
    assert rep.temp_files == 0 and rep.stragglers == 0 and rep.verify_rc == 0
    assert rep.charged_other == 0 and rep.charged_crash <= 2
    # every generate call beyond one per task is an answer a kill kept from the manager
    assert rep.paid_beyond_one <= rep.provably_unreceived and rep.unexplained == 0
    assert rep.generate_calls == 24 + rep.paid_beyond_one


def test_running_tasks_fold_tracks_start_and_end_records():
    recs = [{"type": "task_started", "task_id": "a"}, {"type": "task_started", "task_id": "b"},
            {"type": "task_completed", "task_id": "a"}, {"type": "retry_scheduled", "task_id": "b"},
            {"type": "task_started", "task_id": "c"}]
    assert torture.running_tasks(recs) == {"c"}


def test_the_kill_plan_has_the_asked_share_of_each_kind(tmp_path):
    t = torture.Torturer(tmp_path, tasks=1, kills=10, latency=0.1, workers=1, seed=3, max_seconds=1,
                         mix={"manager": 2, "worker": 1, "sigterm": 1, "stop-kill": 1}, echo=print)
    assert sorted(t.plan) == sorted(["manager"] * 4 + ["worker"] * 2 + ["sigterm"] * 2 + ["stop-kill"] * 2)
