"""Gemini Batch Mode's non-idempotent calls (issue 11, "Why" 5), against a real sandbox over HTTP.

The faults are injected on the server side, in a sandbox whose handler misbehaves the way a real
service can: ``batches.create`` creates (and would bill) the job, then its answer is lost (503, or
the connection drops); ``batches.cancel`` fails. The SDK, the CLI and the runs are the real ones.
"""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import env_for, journal_of, make_batch, records, run_cli, wait_for
from procs import start_run

pytestmark = pytest.mark.slow


def _servers():
    from gsvr_batch.sandbox import SandboxServer
    from gsvr_batch.sandbox import rpc
    from gsvr_batch.sandbox.server import _Drop

    class CreateAnswerLost(SandboxServer):
        """The first batches.create takes effect, then its answer is lost."""

        how = "503"
        lost = 0

        def _batch_create(self, model, body, entry):
            reply = super()._batch_create(model, body, entry)  # the job now exists at the "server"
            if self.lost:
                return reply
            self.lost += 1
            entry["injected"] = f"create_answer_lost:{self.how}"
            if self.how == "drop":
                raise _Drop("create_answer_lost:drop")
            raise rpc.ApiError(503, "UNAVAILABLE", "The service is currently unavailable.")

    class CancelFails(SandboxServer):
        """Every batches.cancel fails (the job keeps running)."""

        def _batches(self, method, rest, query, entry):
            if method == "POST" and rest and rest[-1].endswith(":cancel"):
                entry["kind"] = "batch_cancel"
                raise rpc.ApiError(503, "UNAVAILABLE", "The service is currently unavailable.")
            return super()._batches(method, rest, query, entry)

    return CreateAnswerLost, CancelFails


@pytest.fixture
def server_of():
    started = []

    def start(cls, **cfg):
        from gsvr_batch.sandbox import SandboxConfig

        cfg.setdefault("processing_delay", 0.05)
        cfg.setdefault("batch_duration", 1.0)
        s = cls(SandboxConfig(**cfg))
        s.start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def kinds(server, status=None) -> Counter:
    return Counter(r["kind"] for r in server.requests if status is None or r["status"] == status)


@pytest.mark.parametrize("how", ["503", "drop"])
def test_create_whose_answer_was_lost_is_looked_up_never_created_twice(tmp_path, server_of, how):
    CreateAnswerLost, _ = _servers()
    CreateAnswerLost.how = how
    server = server_of(CreateAnswerLost)
    m = make_batch(tmp_path, 3, extra_settings="mode: batch")
    r = run_cli(["run", m, "--progress", "log", "--wait"], env=env_for(server), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert server.lost == 1, "the fault was never injected"
    assert len(server.batches) == 1  # one job at the server: nothing created (and billed) twice
    assert kinds(server)["batch_create"] == 1
    recs = records(journal_of(tmp_path))
    assert sum(x["type"] == "task_completed" for x in recs) == 3
    assert {x.get("remote") for x in recs if x["type"] == "batch_job_updated" and x.get("remote")} == \
        {next(iter(server.batches.values())).name}


def _held(journal) -> tuple[dict, list]:
    from gsvr_batch.lifecycle import replay

    st = replay(journal).state
    return {t: v.status.value for t, v in st.tasks.items()}, [j for j in st.batch_jobs.values() if not j.get("done")]


def test_cancel_without_a_run_keeps_tasks_held_when_the_remote_cancel_fails(tmp_path, server_of):
    _, CancelFails = _servers()
    server = server_of(CancelFails, batch_duration=3.0)
    m = make_batch(tmp_path, 2, extra_settings="mode: batch")
    j = journal_of(tmp_path)
    r1 = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r1.returncode == 75, r1.stdout + r1.stderr  # submitted; the job runs at the server
    c = run_cli(["cancel", j], env=env_for(server))
    assert "could not be cancelled" in c.stdout + c.stderr, c.stdout + c.stderr
    assert kinds(server)["batch_cancel"] >= 1
    status, open_jobs = _held(j)
    assert set(status.values()) == {"running"} and len(open_jobs) == 1, (status, open_jobs)
    assert not [x for x in records(j) if x["type"] == "task_requeued"]
    r2 = run_cli(["run", m, "--progress", "log", "--wait"], env=env_for(server), timeout=120)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert kinds(server)["batch_create"] == 1  # the job that kept running was collected, not resubmitted
    assert sum(x["type"] == "task_completed" for x in records(j)) == 2


def test_cancel_during_a_run_keeps_tasks_held_when_the_remote_cancel_fails(tmp_path, server_of):
    _, CancelFails = _servers()
    server = server_of(CancelFails, batch_duration=4.0)
    m = make_batch(tmp_path, 2, extra_settings="mode: batch")
    j = journal_of(tmp_path)
    with start_run(m, server, "--wait") as run:
        assert wait_for(lambda: any(x["type"] == "batch_job_updated" and x.get("remote") for x in records(j)),
                        timeout=60), run.output()[-2000:]
        c = run_cli(["cancel", j], env=env_for(server))
        assert c.returncode == 0, c.stdout + c.stderr
        assert run.wait(timeout=60) == 4, run.output()[-2000:]
    assert kinds(server)["batch_cancel"] >= 1
    status, open_jobs = _held(j)
    assert set(status.values()) == {"running"} and len(open_jobs) == 1, (status, open_jobs)
    assert not [x for x in records(j) if x["type"] == "task_requeued"]
    r2 = run_cli(["run", m, "--progress", "log", "--wait"], env=env_for(server), timeout=120)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert kinds(server)["batch_create"] == 1
    assert sum(x["type"] == "task_completed" for x in records(j)) == 2
