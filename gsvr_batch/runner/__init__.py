"""The manager: one process that owns the journal and runs a batch (``gsvr-batch run`` / ``retry``).

``run_batch(options)`` is what ``gsvr-batch run`` calls. In order:

1. :mod:`.preflight` — load and check the manifest, the key, notification targets, prices,
   templates and rate limits (exit 2 on problems, nothing touched);
2. take the run lock (exit 75 at once if another run holds it) and open the journal (a torn
   tail is cut, damage refused with the line and the repair command);
3. a :class:`.session.Session` starts the services (sandbox, shared limiter, client), asks the API
   about each model (an unknown model stops here, before any upload), and :mod:`.reconcile`
   brings the journal in line with the manifest and with what a crashed run left;
4. :mod:`.online` (or :mod:`gsvr_batch.batchmode`) runs the tasks; every outcome is decided by
   the one retry policy (``policy.py``) and journaled by the session;
5. on the way out — done, failed, fatal error, daily quota, cost limit, disk full, pause,
   cancel or a signal — the journal is consistent, so the same command continues.

Package layout: ``options`` (RunOptions, RunResult), ``preflight``, ``session``, ``reconcile``,
``online``, ``janitor`` (upload deletes off the critical path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..channels import RunLock
from ..errors import JournalWriteFailed, UsageError
from ..exitcodes import ExitCode
from ..lifecycle import BatchLog, replay
from .options import RunOptions, RunResult
from .preflight import DERIVED_MANIFEST, Prepared, default_journal_path, prepare, refuse_foreign_outputs, resolve_journal

__all__ = ["RunOptions", "RunResult", "run_batch", "retry_batch", "default_journal_path", "resolve_journal",
           "DERIVED_MANIFEST", "write_derived_manifest"]


def run_batch(opts: RunOptions, *, echo: Callable[[str], None] | None = None) -> RunResult:
    """Run (or continue) the batch described by ``opts``. Raises GsvrError for usage problems."""
    from ..console import Console, resolve_display

    prepared = prepare(opts, echo=echo or print)
    display = resolve_display(prepared.settings.progress)
    echo = echo if isinstance(echo, Console) else Console(echo, display)
    for w in prepared.warnings:
        echo(w)
    try:
        lock = RunLock(prepared.journal)  # makes the state folder
    except OSError as exc:  # a path that cannot be made (read-only, /proc, a file in the way): the user's to fix
        raise UsageError(f"cannot create the state folder {prepared.journal.parent}: {exc.strerror or exc} "
                         f"(check --output / --journal)") from None
    lock.acquire()  # LockHeld → exit 75, nothing touched
    try:
        blog, _rp = BatchLog.open(prepared.journal, warn=lambda m: echo(f"Warning: {m}"))
        try:
            return _run_locked(prepared, blog, echo)
        except JournalWriteFailed as exc:
            counts = blog.state.counts()
            return RunResult(int(ExitCode.TEMPFAIL), f"paused: {exc}", str(prepared.journal),
                             str(prepared.manifest.output_root), counts, blog.state.total_cost_usd,
                             display=echo.display)
        finally:
            blog.close()
    finally:
        lock.release()


def _run_locked(prepared: Prepared, blog: BatchLog, echo: Callable[[str], None]) -> RunResult:
    from .online import OnlineRun
    from .reconcile import reconcile
    from .session import Session

    st = blog.state
    # Under the lock, with the journal's state in hand (read once, not replayed twice), and before
    # anything is written: no derived manifest, no batch record, no task.
    refuse_foreign_outputs(prepared.manifest, st, force=prepared.opts.force)
    if st.batch_id is None or st.manifest_identity == prepared.manifest.identity:
        write_derived_manifest(prepared.opts.sources, prepared.manifest, prepared.journal)  # never over another batch's
    session = Session(prepared, blog, echo=echo)
    try:
        session.start_services()
        reconcile(session)
        if session.mode == "batch":
            from ..batchmode import BatchMode
            from ..errors import GsvrError

            try:
                session.check_models()  # an unknown model stops the batch before the first upload
            except GsvrError as err:
                # Journaled and notified like any stop (a revoked key must reach the cron user).
                session.stop("fatal" if err.exit_code == 3 else "usage", str(err))
                return session.conclude()
            return BatchMode(session).run()
        return OnlineRun(session).run()
    finally:
        session.close_services(wait_janitor=0.0)


def write_derived_manifest(sources: list[str], manifest, journal_path: Path) -> Path | None:
    """A folder, list-file or videos batch gets its expanded manifest written next to the journal.

    Every job is explicit there (source, template, output...), so the batch can be re-run
    exactly even after the folder changes, and ``retry`` knows the batch's templates and outputs.
    """
    from ..manifest import is_manifest_path, write_manifest_yaml

    if len(sources) == 1:
        p = Path(sources[0])
        if is_manifest_path(str(p)) and not p.is_dir() and p.suffix.lower() in (".yaml", ".yml", ".csv"):
            return None
    target = journal_path.parent / DERIVED_MANIFEST
    target.parent.mkdir(parents=True, exist_ok=True)
    write_manifest_yaml(manifest, target, journal=journal_path, sources=sources)  # derived_from: this batch
    return target


def retry_batch(journal: str, *, failed: bool = False, ids: tuple[str, ...] = (),
                echo: Callable[[str], None] | None = None, **settings) -> RunResult:
    """``gsvr-batch retry``: rerun exactly the chosen tasks of exactly the batch in ``journal``,
    with the settings that batch was run with (journaled at each run), never another batch's."""
    journal_path = Path(journal).expanduser().resolve()
    if not failed and not ids:
        raise UsageError("say what to retry: --failed and/or --ids ID[,ID...]")
    st = replay(journal_path).state
    if not st.manifest:
        raise UsageError(f"{journal} has no batch in it")
    wanted = set(ids)
    unknown = wanted - set(st.tasks)
    if unknown:
        raise UsageError(f"unknown task id(s): {', '.join(sorted(unknown))} (see `gsvr-batch replay {journal}`)")
    chosen = {tid for tid, t in st.tasks.items() if not t.dropped and (tid in wanted or (failed and t.status.value == "failed"))}
    if not chosen:
        raise UsageError("nothing to retry: no failed task in this batch" if failed else "no such task to retry")
    source, identity = st.manifest, None
    derived = journal_path.parent / DERIVED_MANIFEST
    from ..manifest import is_manifest_path

    if derived.exists() and (Path(source).is_dir() or not is_manifest_path(source)
                             or Path(source).suffix.lower() not in (".yaml", ".yml", ".csv")):
        # a folder / list / videos batch: its command-line template and output live in the derived manifest
        source, identity = str(derived), st.manifest_identity
    given = dict(st.run_options)
    given.pop("notify", None)  # secrets are not journaled; a retry notifies only when told again
    given.update({k: v for k, v in settings.items() if v is not None and v != ()})
    given["journal"] = str(journal_path)
    opts = RunOptions(source, retry_failed=failed, retry_ids=tuple(sorted(chosen)), only_ids=tuple(sorted(chosen)),
                      accept_identity=identity, **given)
    return run_batch(opts, echo=echo)
