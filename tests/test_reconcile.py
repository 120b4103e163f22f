"""What a run makes of what came before it, and answers that are not what they seem (issue 11, "Why" 6
and 9), through real runs against the real sandbox:

* a job whose model changed after it completed is reported, kept, and redone with ``--force``
  at the price of the model actually called;
* temp outputs and downloads that a killed run left are removed (those of a live process kept);
* a daily-quota stop journaled by one run makes the next run that Pacific day exit 75 without a request;
* an answer cut at ``max_output_tokens`` is asked once more, then kept and marked ``truncated``;
* an unknown model (404) stops the batch before any upload.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import env_for, journal_of, make_batch, records, run_cli
from procs import generates

pytestmark = pytest.mark.slow


def completions(j) -> list[dict]:
    return [r for r in records(j) if r["type"] == "task_completed"]


def test_model_changed_after_completion_is_reported_and_force_prices_the_new_model(tmp_path, sandbox):
    from gsvr_batch.pricing import load_pricing

    server = sandbox()
    m = make_batch(tmp_path, 2)
    j = journal_of(tmp_path)
    assert run_cli(["run", m], env=env_for(server)).returncode == 0
    m.write_text(m.read_text().replace("  output_dir: out\n", "  output_dir: out\n  model: gemini-2.5-pro\n"))
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    said = r.stdout + r.stderr
    assert "2 jobs changed since they completed" in said and "--force" in said, said
    assert len(generates(server)) == 2  # reported and kept, not silently redone (nor silently ignored)
    r = run_cli(["run", m, "--progress", "log", "--force"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    sent = generates(server)[2:]
    assert len(sent) == 2 and {g["model"] for g in sent} == {"gemini-2.5-pro"}
    recs = records(j)
    last_start = {x["task_id"]: x for x in recs if x["type"] == "task_started"}
    assert {x["model"] for x in last_start.values()} == {"gemini-2.5-pro"}
    pricing = load_pricing(None)
    for done in completions(j)[2:]:
        pro = pricing.cost("gemini-2.5-pro", done["usage"], mode="online")
        flash = pricing.cost("gemini-2.5-flash", done["usage"], mode="online")
        assert done["cost_usd"] == pytest.approx(pro, rel=1e-6), (done["cost_usd"], pro, flash)
        assert pro > 2 * flash  # the two prices are far apart: the test tells them apart
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0 and "changed since" not in r.stdout + r.stderr


def test_validate_reports_jobs_changed_since_they_completed(tmp_path, sandbox):
    """Issue 11 asks `validate` too to say "N jobs changed since they completed; use --force"."""
    server = sandbox()
    m = make_batch(tmp_path, 2)
    assert run_cli(["run", m], env=env_for(server)).returncode == 0
    m.write_text(m.read_text().replace("  output_dir: out\n", "  output_dir: out\n  model: gemini-2.5-pro\n"))
    v = run_cli(["validate", m])
    assert v.returncode == 0, v.stdout + v.stderr
    assert "2 jobs changed since they completed" in v.stdout + v.stderr, v.stdout + v.stderr


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftover_temp_outputs_and_downloads_of_dead_processes_are_removed(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 2)
    j = journal_of(tmp_path)
    assert run_cli(["run", m], env=env_for(server)).returncode == 0
    out, state = tmp_path / "out", j.parent
    dead, alive = _dead_pid(), os.getpid()  # this test process is alive and is not the run
    tmp_dead = out / f".gsvr-tmp-{dead}-k2j4x9"
    tmp_live = out / f".gsvr-tmp-{alive}-a8b7c6"  # another batch writing into the same folder
    dl_dead = state / "downloads" / f"gsvr-dl-{dead}-q1w2e3"
    for f in (tmp_dead, tmp_live):
        f.write_bytes(b"half an output")
    dl_dead.mkdir(parents=True)
    (dl_dead / "video.mp4").write_bytes(b"half a download")
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert not tmp_dead.exists() and not dl_dead.exists()
    assert tmp_live.exists()  # its writer is alive: not ours to remove
    assert len(generates(server)) == 2


def test_daily_quota_stop_is_honoured_by_the_next_run_that_pacific_day_without_a_request(tmp_path, sandbox):
    server = sandbox()
    server.inject_429(1, retry_delay=None, per="day")
    m = make_batch(tmp_path, 3)
    j = journal_of(tmp_path)
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 75, r.stdout + r.stderr
    stop = [x for x in records(j) if x["type"] == "batch_stopped"]
    assert stop and stop[-1]["kind"] == "quota_day" and stop[-1].get("resets_at"), stop
    n = len(server.requests)
    again = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert again.returncode == 75, again.stdout + again.stderr
    assert len(server.requests) == n, server.requests[n:]  # not one request: the journal already knows
    assert "quota" in (again.stdout + again.stderr).lower()
    assert not [x for x in records(j) if x["type"] == "task_failed"]


def _truncating_batch(tmp_path, server):
    """A one-job batch whose template caps the answer at 8 output tokens (the sandbox's lessons are
    far longer), run to the end."""
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "tiny.yaml").write_text(
        "templates:\n  tiny:\n    name: Tiny\n    version: '1'\n    model_config: {max_tokens: 8}\n"
        "    prompt: |\n      ## Overview\n      ## Summary\n      Write a lesson.\n", encoding="utf-8")
    m = make_batch(tmp_path, 1, extra_settings=f"templates_dir: [{tpl}]\n")
    m.write_text(m.read_text().replace("template: summary_report", "template: tiny"))
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    return journal_of(tmp_path)


def test_answer_cut_at_max_tokens_is_asked_once_more_then_kept_as_truncated(tmp_path, sandbox):
    server = sandbox()
    j = _truncating_batch(tmp_path, server)
    gen = generates(server)
    assert [g.get("outcome") for g in gen] == ["max_tokens", "max_tokens"]  # asked once more, not a third time
    (done,) = completions(j)
    assert done["truncated"] is True and done["calls"] == 2  # both answers were paid for
    text = open(done["output"], encoding="utf-8").read()
    assert "truncated: true" in text  # in the output's front matter


def test_a_truncated_answer_is_visible_in_replay_and_report(tmp_path, sandbox):
    j = _truncating_batch(tmp_path, sandbox())
    rp = run_cli(["replay", j])
    rj = run_cli(["replay", j, "--json"])
    rep = run_cli(["report", j])
    assert rp.returncode == rj.returncode == rep.returncode == 0
    assert "truncated" in rp.stdout, rp.stdout
    assert '"truncated": true' in rj.stdout
    assert "truncated" in rep.stdout.lower(), rep.stdout


def test_unknown_model_stops_the_batch_before_any_upload(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 3)
    m.write_text(m.read_text().replace("  output_dir: out\n", "  output_dir: out\n  model: gemini-9.9-nonexistent\n"))
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "gemini-9.9-nonexistent" in r.stdout + r.stderr
    kinds = {q["kind"] for q in server.requests}
    assert not {k for k in kinds if k.startswith("upload") or k == "generate"}, kinds
    recs = records(journal_of(tmp_path))
    assert not [x for x in recs if x["type"] in ("task_failed", "task_started")]


# --- foreign outputs from folder listings (issue 12: one listdir per folder, not a stat per output) --


def _foreign(tmp_path, names_on_disk: dict[str, bytes], outputs: list[str], *, completed: frozenset = frozenset(),
             list_after: int | None = None, monkeypatch=None) -> list[str]:
    from types import SimpleNamespace

    from gsvr_batch.runner import reconcile as rc
    from gsvr_batch.state import TaskStatus

    if list_after is not None:
        monkeypatch.setattr(rc._Listings, "LIST_AFTER", list_after)
    for name, data in names_on_disk.items():
        p = tmp_path / "out" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    jobs = [SimpleNamespace(job_id=f"t{i}", output_path=str(tmp_path / "out" / o)) for i, o in enumerate(outputs)]
    tasks = {j.job_id: SimpleNamespace(status=TaskStatus.COMPLETED if j.job_id in completed else TaskStatus.PENDING)
             for j in jobs}
    manifest = SimpleNamespace(settings=SimpleNamespace(skip_existing=False, overwrite=False), jobs=jobs)
    return [os.path.relpath(j.output_path, tmp_path / "out")
            for j in rc.foreign_outputs(manifest, SimpleNamespace(tasks=tasks))]


@pytest.mark.parametrize("list_after", [None, 0])
def test_foreign_outputs_are_found_in_a_folder_of_many(tmp_path, monkeypatch, list_after):
    outputs = [f"v{i:02d}.md" for i in range(60)] + ["sub/é.md", "sub/x.md", "gone/y.md"]
    on_disk = {"v45.md": b"written by hand\n", "V46.md": b"another spelling\n", "sub/é.md": b"x", "v50.md": b"x",
               "v03.md": b"x"}
    got = _foreign(tmp_path, on_disk, outputs, completed=frozenset({"t50"}), list_after=list_after,
                   monkeypatch=monkeypatch)
    assert got == ["v03.md", "v45.md", "sub/é.md"]  # v50's task completed: not this run's business


def test_ours_is_not_foreign_past_the_listing(tmp_path, monkeypatch):
    from gsvr_batch.formats import LessonMeta, MarkdownFormatter

    meta = MarkdownFormatter().render("# lesson\n", LessonMeta(title="T", source="v.mp4", template="summary_report",
                                                               model="gemini-2.5-flash", task_id="t40"))
    got = _foreign(tmp_path, {"v40.md": meta, "v41.md": meta}, [f"v{i:02d}.md" for i in range(45)],
                   list_after=0, monkeypatch=monkeypatch)
    assert got == ["v41.md"]  # written for t40, so foreign to t41


def test_no_notify_target_means_notify_is_not_imported_at_start(tmp_path):
    """Journaling the settings and the run's options without a notify target needs no notify module
    (smtplib, email: ~30 ms of every start)."""
    code = ("import sys\n"
            "from types import SimpleNamespace\n"
            "from gsvr_batch.manifest import Settings\n"
            "from gsvr_batch.runner import reconcile as rc\n"
            "rec = rc.settings_record(Settings())\n"
            "opts = rc.public_options(SimpleNamespace(opts=SimpleNamespace(settings={'workers': 2})))\n"
            "assert rec['notify'] == [] and opts == {'workers': 2}, (rec, opts)\n"
            "print('gsvr_batch.notify' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=env_for())
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr


def test_fingerprints_of_a_batch_equal_each_jobs_own():
    """Session computes fingerprints once per distinct (model, template, format, params): the
    same values as fingerprint() job by job, {} and None and key order told apart as before."""
    from types import SimpleNamespace as N

    from gsvr_batch.runner.session import fingerprint, fingerprints

    combos = [(m, t, f, p) for m in ("a", "b") for t in ("x", "y") for f in ("md", "html")
              for p in ({}, None, {"k": 1}, {"k": 2}, {"k": [1, 2]}, {"z": 1, "k": 1}, {"k": 1, "z": 1})]
    jobs = [N(job_id=str(i), model=m, template=t, output_format=f, params=p) for i, (m, t, f, p) in enumerate(combos)]
    templates = {"x": N(version="1", context=None), "y": N(version="2", context={"strategy": "clips"})}
    got = fingerprints(jobs, templates)
    assert got == {j.job_id: fingerprint(j, templates.get(j.template)) for j in jobs}
    assert len(set(got.values())) == len(combos) - 8  # {"z": 1, "k": 1} is {"k": 1, "z": 1}


def test_a_batch_whose_journal_was_lost_adopts_its_outputs_and_pays_nothing_again(tmp_path, sandbox):
    """The journal moved aside (the advice for one damaged at its first record) or lost: the next run
    found every lesson "ours" and paid for all of them again, overwriting any edit. Outputs made for
    these very jobs are adopted instead (cost 0 under the new journal); --force still regenerates."""
    server = sandbox()
    m = make_batch(tmp_path, 3)
    assert run_cli(["run", m, "--progress", "quiet"], env=env_for(server)).returncode == 0
    j = journal_of(tmp_path)
    out = tmp_path / "out"
    edited = out / "lecture-000_summary_report.md"
    edited.write_text(edited.read_text(encoding="utf-8") + "\nMy own note.\n", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in out.glob("*.md")}
    calls = len(generates(server))
    os.replace(j, tmp_path / "journal.moved-aside")
    for p in j.parent.glob("journal.jsonl.*"):
        p.unlink()
    d = run_cli(["run", m, "--dry-run"], env=env_for(server))  # says what the run will do
    assert d.returncode == 0 and d.stdout.count("made earlier for exactly this job: adopted, not sent") == 3, d.stdout
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Adopted 3 output(s) already made for exactly these jobs" in r.stdout
    assert len(generates(server)) == calls  # nothing paid again
    assert {p.name: p.read_bytes() for p in out.glob("*.md")} == before  # the edit kept
    done = [x for x in records(j) if x["type"] == "task_completed"]
    assert len(done) == 3 and all(x["adopted"] and x["cost_usd"] == 0 and x["calls"] == 0 for x in done)
    assert run_cli(["replay", j, "--verify"], env=env_for(server)).returncode == 0
    # a --force that put one back, then a crash before it restarted: the next run redoes it, as asked
    from gsvr_batch.lifecycle import BatchLog

    blog, _ = BatchLog.open(j)
    blog.requeue(done[0]["task_id"], "--force: reprocess", reset=True)
    blog.close()
    r = run_cli(["run", m, "--progress", "quiet"], env=env_for(server))
    assert r.returncode == 0 and len(generates(server)) == calls + 1, r.stdout + r.stderr
    r = run_cli(["run", m, "--force", "--progress", "quiet"], env=env_for(server))
    assert r.returncode == 0 and len(generates(server)) == calls + 4
    # lessons made with other parameters are not these jobs' lessons: the journal lost again, and a
    # parameter changed, all three are made again
    os.replace(j, tmp_path / "journal.moved-aside-2")
    for p in j.parent.glob("journal.jsonl.*"):
        p.unlink()
    m.write_text(m.read_text(encoding="utf-8").replace("  template: summary_report\n",
                                                       "  template: summary_report\n  params:\n    audience: nurses\n"),
                 encoding="utf-8")
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0 and "Adopted" not in r.stdout, r.stdout + r.stderr
    assert len(generates(server)) == calls + 7
