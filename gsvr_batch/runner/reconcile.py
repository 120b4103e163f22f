"""Bring the journal in line with the manifest and with what happened before this run.

Runs under the run lock, before any task is dispatched:

(Outputs that exist but were not made by this batch were refused just before, under the lock:
preflight.refuse_foreign_outputs, called by run_batch.)

1. a new batch is created, or a journal of another manifest refused, or an edit noted;
2. tasks are added / dropped for an edited manifest;
3. what a killed run left behind is cleaned (temp files of dead processes, downloads, sockets);
4. tasks in flight at the crash: an output or clip partial that carries the task's id and its
   attempt nonce is **adopted** (journaled as completed; the answer was paid once and is not
   paid again); anything else goes back to pending, charged to nobody;
5. ``--force``, ``retry``, ``--skip-existing``; completed outputs that vanished are redone;
6. completed jobs whose model, template version or parameters changed are reported.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import JournalMismatch, UsageError
from ..fsutil import TMP_PREFIX, pid_alive, sha256_file
from ..state import TERMINAL, BatchState, TaskStatus
from .session import Session


def public_options(s: Session) -> dict[str, Any]:
    """The command-line settings of this run as journaled (for ``retry``): no secrets."""
    out: dict[str, Any] = {}
    for name, value in s.opts.settings.items():
        if name in _PATH_OPTIONS:
            # absolute: `retry` may run from another folder (cron runs from /)
            value = [os.path.abspath(os.fspath(v)) for v in value] if isinstance(value, (list, tuple)) \
                else os.path.abspath(os.fspath(value))
        if name == "notify":
            from .. import notify as notify_mod  # here: importing it (smtplib, email) was ~30 ms of every start

            out[name] = [notify_mod.storable(t) for t in value]
        elif isinstance(value, (str, int, float, bool)):
            out[name] = value
        elif isinstance(value, (list, tuple)):
            out[name] = [str(v) for v in value]
    return out


_PATH_OPTIONS = ("output", "journal", "pricing", "templates_dir")


def settings_record(settings: Any) -> dict[str, Any]:
    """Settings as journaled: plain values only, never a secret."""
    out = {}
    for k, v in vars(settings).items():
        if k == "notify":
            if isinstance(v, (list, tuple)) and not v:
                out[k] = []  # no target: no need to import notify (smtplib, email: ~30 ms)
            else:
                from .. import notify as notify_mod

                out[k] = [notify_mod.public_view(t) for t in v]
        elif isinstance(v, (str, int, float, bool, type(None))):
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = [str(x) for x in v]
    return out


def task_fields(job: Any) -> dict[str, Any]:
    return {"task_id": job.job_id, "source": job.source, "source_kind": job.source_kind, "title": job.title,
            "template": job.template, "model": job.model, "output": job.output_path,
            "output_format": job.output_format, "origin": job.origin}


def output_is_ours(path: str, tid: str) -> bool | None:
    """True: the file was made by this task; False: someone else's; None: no file."""
    from ..formats import read_output_meta

    if not os.path.isfile(path):
        return None  # nothing there (a folder in the way makes the write fail, with its own message)
    meta = read_output_meta(path)
    return bool(meta and meta.get("task_id") == tid)


def foreign_outputs(manifest: Any, state: BatchState | None, *, force: bool = False) -> list[Any]:
    """The jobs whose output file exists but was not made by this batch (what ``run`` refuses to
    overwrite unless --skip-existing or --overwrite says what to do). A completed task's output is
    not this run's business unless ``force`` redoes it. ``state``: None for a batch not started yet."""
    s = manifest.settings
    if s.skip_existing or s.overwrite:
        return []
    tasks = state.tasks if state is not None else {}
    listed = _Listings()
    out = []
    for job in manifest.jobs:
        t = tasks.get(job.job_id)
        if t is not None and t.status is TaskStatus.COMPLETED and not force:
            continue
        if listed.may_exist(job.output_path) and output_is_ours(job.output_path, job.job_id) is False:
            out.append(job)
    return out


class _Listings:
    """Which output files may exist: one listing per folder instead of one stat per output.

    A name its folder does not list is no file (``output_is_ours`` would say None). Where another
    spelling can name the same file (macOS: case-insensitive, Unicode forms), a folder listing only
    plain ASCII names decides for plain ASCII names, compared lower-cased (no other spelling of one
    can exist there); any other name, a folder with another name in it, or a folder that cannot be
    listed is asked file by file, as before. A folder is listed once it has ``LIST_AFTER`` outputs:
    a few outputs in a big existing folder should not pay for listing it.
    """

    LIST_AFTER = 32
    _ASK = None  # a folder answered file by file

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._names: dict[str, frozenset[str] | None] = {}

    def may_exist(self, path: str) -> bool:
        folder, sep, name = path.rpartition("/")
        if not sep or not name:
            return True  # not a file name in a folder: asked as it is
        folder = folder or "/"
        n = self._seen[folder] = self._seen.get(folder, 0) + 1
        if n <= self.LIST_AFTER or not name.isascii():
            return True
        if folder not in self._names:
            self._names[folder] = self._list(folder)
        names = self._names[folder]
        return names is self._ASK or name.lower() in names

    @classmethod
    def _list(cls, folder: str) -> frozenset[str] | None:
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return frozenset()  # no folder: no file in it
        except (OSError, ValueError):
            return cls._ASK
        if not all(n.isascii() for n in names):
            return cls._ASK
        return frozenset(n.lower() for n in names)


def reconcile(s: Session) -> None:
    m, st, blog = s.manifest, s.state, s.log
    wanted = set(s.opts.retry_ids)
    unknown = wanted - set(st.tasks) - set(s.jobs)
    if unknown:  # before anything is journaled: a typo must not leave a half-started run behind
        raise UsageError(f"unknown task id(s): {', '.join(sorted(unknown))} (see `gsvr-batch replay {blog.path}`)")
    if st.batch_id is not None and st.manifest_identity != m.identity:
        raise JournalMismatch(
            f"journal {blog.path} belongs to another manifest ({st.manifest}); refusing to mix two batches in one "
            f"journal. To start fresh, move that journal away or pass --journal NEW_PATH")
    if st.batch_id is None:
        blog.create_batch(manifest=str(m.path or m.base_dir), manifest_identity=m.identity,
                          manifest_hash=m.content_hash, settings=settings_record(s.settings), version=__version__)
    elif st.manifest_hash != m.content_hash:
        blog.manifest_changed(m.content_hash, settings_record(s.settings))
        s.echo("Manifest changed since the last run: adding and dropping only the jobs that changed.")
    blog.run_started(workers=s.settings.workers, sandbox=bool(s.settings.sandbox), mode=s.mode,
                     options=public_options(s), manifest=str(m.path or m.base_dir), version=__version__)
    # Tasks the manifest no longer has are dropped (history kept); new ones are added.
    # (Looked up once: these loops visit every task, 10,000 of them in a big batch.)
    tasks, jobs = st.tasks, s.jobs
    running, in_flight = TaskStatus.RUNNING, (TaskStatus.RUNNING, TaskStatus.PENDING)
    for tid, t in list(tasks.items()):
        if tid not in jobs and not t.dropped:
            if t.status is running:
                blog.requeue(tid, "was in flight when the previous run ended", interrupted=True)
            blog.drop_task(tid, "job no longer in the manifest")
    for tid in s.order:
        t = tasks.get(tid)
        if t is None or t.dropped:
            blog.add_task(**task_fields(jobs[tid]))
    clean_leftovers(s)
    # In flight at a crash / kill. Batch mode: a task inside an unfinished Gemini batch job is not
    # lost, it waits at Google.
    held: set[str] = set()
    if s.mode == "batch":
        from ..batchmode import held_task_ids

        held = held_task_ids(st)
    for tid in s.order:
        t = tasks[tid]
        if t.status in in_flight and tid not in held and t.attempt_id:
            adopt_partials(s, tid)
            if adopt_output(s, tid):
                continue
        if t.status is running and tid not in held:
            from .session import lost_in_flight

            blog.requeue(tid, "was in flight when the previous run ended (crash or kill)", interrupted=True,
                         lost_calls=lost_in_flight(t.step))
    if not s.opts.force:
        adopted = 0
        # One fsync for all of them (a whole batch whose journal was lost would otherwise pay one
        # per lesson); nothing acts on these records before the block ends.
        listed = _Listings()  # a 10,000-task batch asks one listing per folder, not 10,000 stats
        with blog.group_commit():
            for tid in s.order:
                if never_started(tasks[tid]) and tid not in wanted and listed.may_exist(jobs[tid].output_path):
                    adopted += adopt_earlier_output(s, tid)
        if adopted:
            s.echo(f"Adopted {adopted} output(s) already made for exactly these jobs (same task, model, template "
                   f"version, parameters and format) but not recorded in this journal: kept, not paid again. "
                   f"`gsvr-batch retry {blog.path} --ids ...` regenerates one, --force all.")
    _check_completed_outputs(s)
    if s.opts.force:
        for tid in s.order:
            if st.tasks[tid].status in TERMINAL:
                blog.requeue(tid, "--force: reprocess", reset=True)
    if s.opts.retry_failed or wanted:
        for tid in s.order:
            t = st.tasks[tid]
            if t.status in TERMINAL and ((s.opts.retry_failed and t.status is TaskStatus.FAILED) or tid in wanted):
                blog.requeue(tid, "retry requested", reset=True)
    if s.settings.skip_existing:
        for tid in s.order:
            t = st.tasks[tid]
            path = s.jobs[tid].output_path
            if t.status is TaskStatus.PENDING and output_is_ours(path, tid) is False:
                blog.skip_task(tid, f"output already exists (made outside this batch): {path}")
    s.clear_passed_quota_blocks()
    _report_changed(s)
    blog.sync()


def _check_completed_outputs(s: Session) -> None:
    """A completed task whose output vanished is redone; one edited by hand is kept (warned)."""
    tasks = s.state.tasks  # the same dict throughout (requeue updates its tasks in place)
    for tid in s.order:
        t = tasks[tid]
        if t.status is not TaskStatus.COMPLETED:
            continue
        try:
            st = os.stat(t.output)
        except OSError:
            s.log.requeue(tid, f"output {t.output} is missing; regenerating")
            continue
        if t.bytes is not None and st.st_size != t.bytes:
            s.echo(f"Warning: {t.output} changed since it was written (kept as is; --force regenerates it)")


def _report_changed(s: Session) -> None:
    changed = _changed(s.state, s.order, s.fingerprints)
    if changed:
        n = len(changed)
        s.echo(f"{n} job{'s' if n != 1 else ''} changed since {'they' if n != 1 else 'it'} completed (model, "
               f"template version or parameters): {', '.join(changed[:5])}{' …' if n > 5 else ''}; "
               f"kept as they are — use --force to redo them")


def changed_jobs(state: Any, manifest: Any, templates: dict[str, Any]) -> list[str]:
    """Completed tasks whose job changed since (for ``validate``): the run's rule (_changed)."""
    from .session import fingerprints

    return _changed(state, [job.job_id for job in manifest.jobs], fingerprints(manifest.jobs, templates))


def _changed(state: Any, order: list[str], fingerprints: dict[str, str]) -> list[str]:
    """Completed tasks of ``order`` whose output was made from something else than what their job
    asks for now (model, template and its version, parameters, format, context)."""
    tasks = state.tasks
    return [tid for tid in order if tid in tasks and tasks[tid].status is TaskStatus.COMPLETED
            and tasks[tid].done_fingerprint and tasks[tid].done_fingerprint != fingerprints.get(tid)]


# -- adoption ----------------------------------------------------------------------------------


def adopt_output(s: Session, tid: str) -> bool:
    """Journal an output a worker wrote for the task's latest attempt but nobody recorded."""
    from ..formats import read_output_meta

    t = s.state.tasks[tid]
    path = s.jobs[tid].output_path
    meta = read_output_meta(path) if os.path.exists(path) else None
    if not meta or meta.get("task_id") != tid or meta.get("attempt_id") != t.attempt_id:
        return False
    if not _complete_adopted(s, tid, path, meta, paid=True, fingerprint=t.fingerprint):
        return False
    s.echo(f"Adopted {os.path.relpath(path, s.manifest.output_root)}: written by a run that ended before "
           f"recording it (not paid again).")
    s.drop_partials(tid)
    return True


def never_started(t: Any) -> bool:
    """A task this journal never started nor finished (what ``adopt_earlier_output`` may adopt). A
    --force or retry put back keeps its finish time: what it asked for is not undone by a crash
    before the task restarts."""
    return t.status is TaskStatus.PENDING and not t.attempts and t.finished_ts is None


def earlier_output(job: Any, fingerprint: str | None, *, sandbox: bool) -> dict[str, Any] | None:
    """The metadata of ``job``'s output if it is already there and was made for exactly this job (see
    :func:`adopt_earlier_output`), else None. Reads at most the output's header; writes nothing."""
    from ..formats import read_output_meta

    path = job.output_path
    meta = read_output_meta(path) if fingerprint and os.path.exists(path) else None
    if (not meta or meta.get("task_id") != job.job_id or meta.get("fingerprint") != fingerprint
            or meta.get("backend") != ("sandbox" if sandbox else "gemini") or meta.get("format") != job.output_format):
        return None
    return meta


def adopt_earlier_output(s: Session, tid: str) -> bool:
    """Journal as completed a never-started task whose output is already there, made for exactly
    this job under a journal that is not this one (moved aside, lost): a batch whose journal was lost
    would otherwise pay for every lesson again and overwrite any edits made to them.

    "Exactly this job": the output carries the task id and the job's fingerprint (model, template
    version, parameters, format, context) as it is now, and was made by the same backend (a sandbox
    answer is never kept for a real run). Outputs older than the fingerprint in their metadata are
    not adopted: nothing says what they were asked for. Nothing was paid under this journal, so the
    cost is 0 (the tokens are kept)."""
    job = s.jobs[tid]
    path = job.output_path
    fingerprint = s.fingerprints.get(tid)
    meta = earlier_output(job, fingerprint, sandbox=bool(s.settings.sandbox))
    return meta is not None and _complete_adopted(s, tid, path, meta, paid=False, fingerprint=fingerprint)


def _complete_adopted(s: Session, tid: str, path: str, meta: dict[str, Any], *, paid: bool,
                      fingerprint: str | None) -> bool:
    """Journal the output at ``path`` as ``tid``'s completion (adopted), from what its metadata says.
    ``paid``: the answer was paid under this journal (a crash: one call, priced), or not (0, 0)."""
    usage = {k: int(v) for k, v in (meta.get("tokens") or {}).items() if isinstance(v, (int, float))}
    try:
        sha = sha256_file(path)
        size = os.path.getsize(path)
    except OSError:
        return False
    model = s.state.tasks[tid].model
    s.log.complete_task(tid, output=path, sha256=sha, bytes_=size, usage=usage,
                        cost_usd=s.price(model, usage) if paid else 0.0, model_version=meta.get("model_version"),
                        video_duration=meta.get("duration"), elapsed=None, calls=1 if paid else 0, adopted=True,
                        truncated=bool(meta.get("truncated")), fingerprint=fingerprint)
    return True


def adopt_partials(s: Session, tid: str) -> int:
    """Journal clip partials written for the task's plan that no record mentions yet."""
    t = s.state.tasks[tid]
    plan = t.plan or {}
    clips = {int(c["index"]): c for c in plan.get("clips") or []}
    folder = s.prepared.state_dir / "partials" / tid
    if not clips or not folder.is_dir():
        return 0
    from ..pipeline import read_partial  # only now: most in-flight tasks have no clips to adopt

    n = 0
    for f in sorted(folder.glob("clip-*.md")):
        got = read_partial(str(f))
        if got is None:
            continue
        header, _ = got
        idx = header.get("clip")
        clip = clips.get(idx) if isinstance(idx, int) else None
        if clip is None or header.get("task_id") != tid or str(idx) in t.partials:
            continue
        if float(header.get("start", -1)) != float(clip["start"]) or float(header.get("end", -1)) != float(clip["end"]):
            continue
        usage = {k: v for k, v in (header.get("usage") or {}).items()}
        s.log.clip_completed(tid, clip=idx, start=float(clip["start"]), end=float(clip["end"]), path=str(f),
                             sha256=sha256_file(f), usage=usage, cost_usd=s.price(t.model, usage), adopted=True)
        n += 1
    return n


# -- leftovers of a killed run -----------------------------------------------------------------


def clean_leftovers(s: Session) -> int:
    """Temp files of processes that are gone, abandoned downloads, stale sockets. Returns a count.

    Safe because we hold the run lock and a killed run's workers died with it (parent-death
    signal); a temp file whose writer (named in the file) is alive is left alone: it may belong
    to another batch writing into the same folder.
    """
    from ..channels import clean_run_dir

    n = clean_run_dir(s.log.path)
    dirs = {os.path.dirname(j.output_path) for j in s.manifest.jobs}
    state_dir = s.prepared.state_dir
    dirs.add(str(state_dir))
    partials = state_dir / "partials"
    if partials.is_dir():
        dirs.update(str(p) for p in partials.iterdir() if p.is_dir())
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            if name.startswith(TMP_PREFIX) and _dead_writer(name[len(TMP_PREFIX):]):
                try:
                    os.unlink(os.path.join(d, name))
                    n += 1
                except OSError:
                    pass
    downloads = state_dir / "downloads"
    if downloads.is_dir():
        for p in downloads.iterdir():
            if p.name.startswith("gsvr-dl-") and _dead_writer(p.name[len("gsvr-dl-"):]):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


def _dead_writer(rest: str) -> bool:
    """``<pid>-<random>``: True when that process is gone (names without a pid: older runs, gone too)."""
    head = rest.split("-", 1)[0]
    if not head.isdigit():
        return True
    return not pid_alive(int(head))


__all__ = ["reconcile", "foreign_outputs", "adopt_output", "adopt_partials", "clean_leftovers",
           "changed_jobs", "Path"]
