"""Videos deleted after their work was done.

A teacher converts a semester, deletes the 2 GB lectures whose lesson plans are written to free
the disk, adds next week's lecture to the manifest and runs it again. Pre-flight finds the deleted
files missing; refusing the whole run for them (exit 2, nothing started) would hold the new
lecture hostage to videos nobody needs any more.

So a run forgives a missing video when *every* job naming it has a ``completed`` task in the
batch's journal whose output is still on disk: such a task is never sent to the API again
(invariant 4), so nothing in the run reads the video. Each forgiven file becomes a warning. Any
other missing file is an error as before, and so is everything else: the rule is applied only
when a missing file is the *only* kind of error, so no other problem hides behind it.

``run``, ``run --dry-run`` and ``validate`` all load their manifest through :func:`validate_for_run`,
so the three agree on what a run would do.
"""

from __future__ import annotations

import os
from typing import Any, Collection, Sequence

from .errors import GsvrError, ManifestError
from .manifest import Manifest, Problem, _summary, validate_sources

FORGIVEN_HINT = "remove it from the manifest or the command line to silence this"


def validate_for_run(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                     overrides: dict | None = None, *, date: str | None = None, force: bool = False,
                     redo: Collection[str] = ()) -> tuple[Manifest | None, list[Problem]]:
    """``manifest.validate_sources``, with missing videos of completed work forgiven (see above).

    ``force`` (``run --force``: redo completed jobs too) forgives nothing: every video is needed.
    ``redo``: task ids the run will do again whatever their state (``retry --ids``): their videos
    are needed too.
    """
    manifest, problems = validate_sources(sources, overrides, date=date)
    if manifest is not None or force:
        return manifest, problems
    errors = [p for p in problems if p.is_error]
    if not errors or any(p.gone is None for p in errors):
        return None, problems
    # The same build without opening any video: the jobs and the journal the run would use.
    lenient, _ = validate_sources(sources, overrides, date=date, check_files=False)
    if lenient is None or lenient.journal is None:
        return None, problems
    done = _completed_outputs(lenient.journal, lenient.identity)
    gone = {p.gone for p in errors}
    naming = [job for job in lenient.jobs if job.source_kind == "local" and job.source in gone]
    if {job.source for job in naming} != gone:
        return None, problems  # a missing file no job of the lenient build names: not ours to judge
    if any(done.get(job.job_id) != job.output_path or job.job_id in redo for job in naming):
        return None, problems
    forgiven = [Problem(p.file, p.line, f"{p.message}: its work is done (output kept), so it is not needed",
                        FORGIVEN_HINT, "warning") for p in errors]
    warnings = [p for p in problems if not p.is_error] + forgiven
    lenient.warnings = warnings
    return lenient, warnings


def load_for_run(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], overrides: dict | None = None,
                 *, date: str | None = None, force: bool = False, redo: Collection[str] = ()) -> Manifest:
    """:func:`validate_for_run`, raising ManifestError with every problem (``manifest.load_sources``'s contract)."""
    manifest, problems = validate_for_run(sources, overrides, date=date, force=force, redo=redo)
    if manifest is None:
        raise ManifestError(_summary(problems), problems)
    return manifest


def _completed_outputs(journal: Any, identity: str) -> dict[str, str]:
    """task id → output path, for the live completed tasks of ``journal`` whose output is a file.

    Read only (replay takes no lock and writes nothing). A journal that is missing, cannot be read
    or belongs to another manifest (``identity``) forgives nothing: the run then reports what it
    finds there itself.
    """
    from .lifecycle import replay
    from .state import TaskStatus

    if not os.path.isfile(journal):
        return {}
    try:
        state = replay(journal).state
    except GsvrError:
        return {}
    if state.manifest_identity != identity:
        return {}
    return {tid: t.output for tid, t in state.tasks.items()
            if t.status is TaskStatus.COMPLETED and not t.dropped and t.output and os.path.isfile(t.output)}
