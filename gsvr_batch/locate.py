"""Which journal a command's JOURNAL argument names.

``status``, ``replay``, ``report``, ``retry``, ``repair``, ``pause``, ``resume`` and ``cancel``
work on a batch's journal. People name a batch the way they ran it, so each of these accepts:

* the journal itself (``jobs/output/.gsvr/journal.jsonl``);
* the output folder or its state folder (``jobs/output``, ``jobs/output/.gsvr``), or the folder
  holding the manifest (``jobs``);
* whatever ``gsvr-batch run`` was given — a manifest, a folder of videos, a list file, a video —
  which names the journal a run of it uses (the run's own rule: ``Manifest.journal``), as long as
  that journal is this input's batch (a run would refuse one of another manifest: so does this).

Anything else is refused with a message saying what the file is, *before* a command can act on
it: ``repair`` on a manifest once "repaired" the manifest to 0 bytes, because its first line was
read as a damaged journal record. Nothing of the user's is written here (a manifest may leave an
entry in the manifest cache, as ``validate`` does).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import JournalError
from .journal import RECORD_START
from .manifest_types import STATE_DIR

JOURNAL_NAME = "journal.jsonl"
_HINT = "name a journal, an output folder or the manifest you ran"


def _head(path: str | os.PathLike[str]) -> bytes:
    """As many first bytes of the regular file ``path`` as a record's beginning has."""
    with open(path, "rb") as fh:
        return fh.read(len(RECORD_START))


def starts_like_journal(path: str | os.PathLike[str]) -> bool:
    """Whether the regular file at ``path`` is empty or starts the way every journal record does."""
    return _head(path) in (b"", RECORD_START)


def looks_like_journal(path: str | os.PathLike[str]) -> bool:
    """Whether a JOURNAL argument naming the regular file ``path`` means it as a journal: a first
    line that starts the way every record does, or a ``.jsonl`` name (a journal whose first record
    was damaged must still reach ``repair``, which says so). An empty file only by that name: an
    empty manifest is not a journal with nothing in it yet."""
    return os.fspath(path).endswith(".jsonl") or _head(path) == RECORD_START


def locate_journal(target: str | os.PathLike[str]) -> Path:
    """The journal ``target`` names (see the module's docstring), or JournalError saying why none."""
    text = os.fspath(target)
    if not text.strip():
        raise JournalError(f"no journal given: {_HINT}")
    text = os.path.expanduser(text)
    try:
        return _locate(text)
    except OSError as exc:  # a name too long, a folder that cannot be read...
        raise JournalError(f"cannot read {text}: {exc.strerror or exc}") from exc


def _locate(text: str) -> Path:
    from .manifest import held_manifests
    from .media import is_video_name

    path = Path(text)
    if path.is_dir():
        for candidate in (path / STATE_DIR / JOURNAL_NAME, path / JOURNAL_NAME):
            if candidate.is_file():
                return candidate
        held = held_manifests(text)
        if not held:
            return _journal_of_folder(text)
        # the manifest's folder (`status jobs`): the batch of whichever of its manifests ran
        first: JournalError | None = None
        for name in held:
            try:
                return _journal_of_run_input(os.path.join(text, name))
            except JournalError as exc:
                first = first or exc
        assert first is not None
        raise first
    if not path.exists():
        if is_video_name(text):  # `run lecture.mp4` works on with the video deleted (gone.py): so does this
            try:
                return _journal_of_run_input(text)
            except JournalError:
                pass
        raise JournalError(f"journal not found: {text}")
    if not path.is_file():  # a FIFO would block the read below (cron would hang), a device never end
        raise JournalError(f"{text} is not a regular file: {_HINT}")
    if looks_like_journal(path):
        return path
    return _journal_of_run_input(text)


def _journal_of_folder(text: str) -> Path:
    """The journal of ``gsvr-batch run FOLDER``, found without reading the folder (``status /``
    walked the whole disk to list videos it did not need)."""
    from .manifest import folder_batch

    journal, identity = folder_batch(text)
    return _checked(text, "folder", journal, identity)


def _journal_of_run_input(text: str) -> Path:
    """The journal ``gsvr-batch run TEXT`` uses, if TEXT is something ``run`` accepts and it has run."""
    from .manifest import journal_of_manifest, validate_sources
    from .media import is_video_name

    is_manifest = os.path.splitext(text)[1].lower() in (".yaml", ".yml", ".csv")
    what = ("manifest" if is_manifest else "folder" if os.path.isdir(text)
            else "video" if is_video_name(text) else "list file")
    manifest, problems = validate_sources(text, {}, check_files=False)
    found = (manifest.journal, manifest.identity) if manifest is not None and manifest.journal is not None else None
    if found is None and is_manifest:
        found = journal_of_manifest(text)  # its errors (a --templates template, say) do not move its journal
    if found is None:
        first = next((p for p in problems if p.is_error), None)
        why = f" ({first.message})" if first is not None else ""
        if is_manifest:
            raise JournalError(f"{text} is a manifest, not a journal, and its journal cannot be worked out: it has "
                               f"errors{why}. See `gsvr-batch validate {text}`, or name the journal itself")
        raise JournalError(f"{text} is not a journal{why}. Name the journal (OUTPUT/{STATE_DIR}/{JOURNAL_NAME}), "
                           f"the output folder, or the manifest the batch was run with")
    journal, identity = found
    return _checked(text, what, journal, identity)


def _checked(text: str, what: str, journal: Path, identity: str) -> Path:
    """``journal`` if a run of ``text`` has written it (and it is that batch's), else why not."""
    if not journal.is_file():
        raise JournalError(f"{text} is a {what} whose batch has not run yet: its journal would be {journal}. "
                           f"Run it first (gsvr-batch run {text}), or, if it ran with --journal or --output, "
                           f"name that journal")
    other = _batch_of(journal)
    if other is not None and other[0] != identity:
        raise JournalError(f"{text} is a {what} whose batch has not run yet: the journal its run would use, "
                           f"{journal}, belongs to another manifest ({other[1]}). If it ran with --journal or "
                           f"--output, name that journal")
    return journal


def _batch_of(journal: Path) -> tuple[str, str] | None:
    """(manifest identity, manifest) of the batch in ``journal``, from its first record; None when
    that cannot be read (the command reports the journal's state itself)."""
    from .journal import batch_record, first_line

    try:
        rec = batch_record(first_line(journal, 1 << 20))
    except OSError:
        return None
    if rec is None or not rec.get("manifest_identity"):
        return None
    return str(rec["manifest_identity"]), str(rec.get("manifest"))
