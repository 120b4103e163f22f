"""Which journal a command's JOURNAL argument names.

``status``, ``replay``, ``report``, ``retry``, ``repair``, ``pause``, ``resume`` and ``cancel``
work on a batch's journal. People name a batch the way they ran it, so each of these accepts:

* the journal itself (``jobs/output/.gsvr/journal.jsonl``);
* the output folder or its state folder (``jobs/output``, ``jobs/output/.gsvr``), or the folder
  holding the manifest (``jobs``);
* whatever ``gsvr-batch run`` was given — a manifest, a folder of videos, a list file, a video —
  which names the journal a run of it uses (the run's own rule: ``Manifest.journal``).

Anything else is refused with a message saying what the file is, *before* a command can act on
it: ``repair`` on a manifest once "repaired" the manifest to 0 bytes, because its first line was
read as a damaged journal record.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import JournalError
from .manifest_types import MANIFEST_NAMES, STATE_DIR

JOURNAL_NAME = "journal.jsonl"
# Every record the writer appends starts with its sequence number (journal.JournalWriter.make).
_RECORD_START = b'{"seq":'


def looks_like_journal(path: str | os.PathLike[str]) -> bool:
    """Whether the file at ``path`` is (or was meant to be) a journal: empty, a first line that
    starts the way every record does, or a ``.jsonl`` name (a journal whose first record was
    damaged must still reach ``repair``, which says so)."""
    if os.fspath(path).endswith(".jsonl"):
        return True
    with open(path, "rb") as fh:
        head = fh.read(len(_RECORD_START))
    return not head or head == _RECORD_START


def locate_journal(target: str | os.PathLike[str]) -> Path:
    """The journal ``target`` names (see the module's docstring), or JournalError saying why none.

    Never writes anything: a manifest is read with ``check_files=False`` (no video is opened).
    """
    text = os.fspath(target)
    if not text.strip():
        raise JournalError("no journal given: name a journal, an output folder or the manifest you ran")
    path = Path(text).expanduser()
    if path.is_dir():
        for candidate in (path / STATE_DIR / JOURNAL_NAME, path / JOURNAL_NAME):
            if candidate.is_file():
                return candidate
        held = next((name for name in MANIFEST_NAMES if (path / name).is_file()), None)
        if held is not None:  # the manifest's folder (`status jobs`): the manifest's batch
            return _journal_of_run_input(os.path.join(text, held))
    elif not path.exists():
        from .media import is_video_name

        if is_video_name(text):  # `run lecture.mp4` works on with the video deleted (gone.py): so does this
            try:
                return _journal_of_run_input(text)
            except JournalError:
                pass
        raise JournalError(f"journal not found: {text}")
    elif not path.is_file():  # a FIFO would block the read below (cron would hang), a device never end
        raise JournalError(f"{text} is not a regular file: name a journal, an output folder or the manifest you ran")
    else:
        try:
            if looks_like_journal(path):
                return path
        except OSError as exc:
            raise JournalError(f"cannot read {text}: {exc.strerror or exc}") from exc
    return _journal_of_run_input(text)


def _journal_of_run_input(text: str) -> Path:
    """The journal ``gsvr-batch run TEXT`` uses, if TEXT is something ``run`` accepts and it has run."""
    from .manifest import validate_sources

    from .media import is_video_name

    is_manifest = os.path.splitext(text)[1].lower() in (".yaml", ".yml", ".csv")
    what = ("manifest" if is_manifest else "folder" if os.path.isdir(text)
            else "video" if is_video_name(text) else "list file")
    manifest, problems = validate_sources(text, {}, check_files=False)
    if manifest is None:
        first = next((p for p in problems if p.is_error), None)
        why = f" ({first.message})" if first is not None else ""
        if is_manifest:
            raise JournalError(f"{text} is a manifest, not a journal, and its journal cannot be worked out: it has "
                               f"errors{why}. See `gsvr-batch validate {text}`, or name the journal itself")
        raise JournalError(f"{text} is not a journal{why}. Name the journal (OUTPUT/{STATE_DIR}/{JOURNAL_NAME}), "
                           f"the output folder, or the manifest the batch was run with")
    journal = manifest.journal
    if journal is None or not journal.is_file():
        raise JournalError(f"{text} is a {what} whose batch has not run yet: its journal would be {journal}. "
                           f"Run it first (gsvr-batch run {text}), or, if it ran with --journal or --output-dir, "
                           f"name that journal")
    return journal
