"""``gsvr-batch validate``: everything ``run`` would check or refuse, said before it runs.

Nothing here calls an API, takes the run lock or writes a byte: the journal, when it exists, is
only replayed (read-only). ``validate`` takes the same sources and options as ``run`` so that it
answers for the exact command the user is about to type, and it reports:

* every manifest problem (``FILE:LINE: message (hint)``), outputs onto files the batch owns included;
* notification targets ``run`` would refuse (``notify.validate_targets``);
* a missing API key (a note, not a problem: validating on a machine without the key is normal);
* a pricing table that cannot be read, or a cost limit that cannot be enforced;
* a journal that belongs to another manifest (``run`` refuses it);
* outputs that exist and were not made by this batch (``run`` refuses them unless
  ``--skip-existing`` or ``--overwrite``);
* completed jobs whose model, template version or parameters changed (``--force`` redoes them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import GsvrError
from .gone import validate_for_run
from .manifest import CLI, Manifest, Problem
from .manifest_types import origin_of


@dataclass
class Validation:
    """What ``validate`` found: the manifest (None if it could not be built) and every problem."""

    manifest: Manifest | None
    problems: list[Problem] = field(default_factory=list)
    journal: Path | None = None
    journal_note: str = ""  # "a new batch" / "4 tasks so far: …"
    notes: list[str] = field(default_factory=list)  # about this machine, not the batch (a missing key)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.is_error]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if not p.is_error]

    @property
    def ok(self) -> bool:
        return self.manifest is not None and not self.errors


def validate_batch(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, force: bool = False,
                   **settings: Any) -> Validation:
    """Check ``sources`` with the ``run`` options ``settings`` (names as in ``settings.SETTINGS``)."""
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    given = {k: v for k, v in settings.items() if v is not None and v != () and v != []}
    manifest, problems = validate_for_run(items if len(items) != 1 else items[0], given, force=force)
    result = Validation(manifest, list(problems))
    if manifest is None:
        return result
    where = os.fspath(items[0]) if len(items) == 1 and manifest.path is not None else CLI
    result.journal = manifest.journal
    result.problems += _notify_problems(manifest, where, "notify" in given)
    result.notes += _key_notes(manifest)
    result.problems += _pricing_problems(manifest, where)
    state = _read_journal(manifest, result)
    result.problems += _existing_outputs(manifest, state, force)
    return result


def _notify_problems(manifest: Manifest, where: str, from_cli: bool) -> list[Problem]:
    targets = list(manifest.settings.notify or [])
    if not targets:
        return []
    from .notify import validate_targets

    file, line = (CLI, None) if from_cli else (where, manifest.settings_lines.get("notify"))
    return [Problem(file, line, message, "`run` checks notifications before any work and stops here, exit 2")
            for message in validate_targets(targets)]


def _key_notes(manifest: Manifest) -> list[str]:
    from .gemini import resolve_credentials

    try:
        resolve_credentials(manifest.settings.api_key_env, sandbox=bool(manifest.settings.sandbox))
    except GsvrError as exc:  # never echoes the key: the message names the variable only
        return [f"Note: in this environment `run` would stop before any work (exit 2): {exc}"]
    return []


def _pricing_problems(manifest: Manifest, where: str) -> list[Problem]:
    from .runner.preflight import check_model_prices

    notes: list[str] = []
    try:
        check_model_prices(manifest, manifest.settings.pricing, notes)
    except GsvrError as exc:
        return [Problem(where, manifest.settings_lines.get("pricing"), str(exc), None)]
    return [Problem(where, None, n.removeprefix("Warning: "), None, "warning") for n in notes]


def _read_journal(manifest: Manifest, result: Validation) -> Any:
    """The batch's state when its journal exists and belongs to this manifest; else None."""
    journal = manifest.journal
    if journal is None or not journal.exists():
        result.journal_note = "a new batch"
        return None
    from .lifecycle import replay

    try:
        state = replay(journal).state
    except GsvrError as exc:
        result.problems.append(Problem(str(journal), None, str(exc), None))
        return None
    if state.manifest_identity and state.manifest_identity != manifest.identity:
        result.problems.append(Problem(
            str(journal), None, f"this journal belongs to another manifest ({state.manifest}); run would refuse it",
            "for a batch of its own, pass --journal NEW_PATH or --output NEW_DIR"))
        return None
    counts = state.counts()
    total = counts["total"]
    result.journal_note = (f"{total} task{'s' if total != 1 else ''} so far: {counts['completed']} completed, "
                           f"{counts['failed']} failed, {counts['pending']} pending")
    from .runner.reconcile import changed_jobs
    from .templates import load_templates

    try:
        changed = changed_jobs(state, manifest, load_templates(manifest.templates_dirs))
    except GsvrError:
        changed = []  # an unloadable template is already reported as a manifest problem
    if changed:
        n = len(changed)
        result.problems.append(Problem(
            str(journal), None, f"{n} job{'s' if n != 1 else ''} changed since {'they' if n != 1 else 'it'} completed "
            f"(model, template version or parameters): {', '.join(changed[:5])}{' …' if n > 5 else ''}",
            "use --force to redo them; without it they are kept as they are", "warning"))
    return state


def _existing_outputs(manifest: Manifest, state: Any, force: bool) -> list[Problem]:
    """Outputs that exist and were not made by this batch: run refuses them (exit 2) unless told."""
    from .runner.reconcile import foreign_outputs

    problems = []
    for job in foreign_outputs(manifest, state, force=force):
        file, line = origin_of(job)
        rel = os.path.relpath(job.output_path, manifest.output_root)
        problems.append(Problem(file, line, f"output '{rel}' already exists and was not made by this batch",
                                "run refuses to overwrite it: --skip-existing keeps it (the job is skipped), "
                                "--overwrite replaces it"))
    return problems


__all__ = ["Validation", "validate_batch"]
