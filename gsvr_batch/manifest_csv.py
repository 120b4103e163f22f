"""CSV manifests and plain source lists (one path or URL per line).

CSVs come from Excel and Google Sheets: a UTF-8 BOM, CRLF line ends, quoted fields with
commas inside, ``;`` as the separator in locales that use a decimal comma, Chinese file
names. All of those are accepted; a ragged row or an empty ``source`` is reported with
its line.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .manifest_types import Problem, RawJob, RawManifest
from .manifest_yaml import API_KEY_SHAPE, SECRET_HINT, SECRET_KEY_NAME

CSV_COLUMNS = ("source", "template", "output", "title", "model", "output_format", "max_duration")
DELIMITERS = (",", ";", "\t")


def decode_text(data: bytes, file: str) -> tuple[str | None, list[Problem]]:
    """UTF-8 text of a manifest file (BOM stripped), or a problem saying why it is not text.

    UTF-16 with a byte-order mark is read too: Excel's "Unicode Text" export writes it, and its
    NUL bytes would otherwise look like a binary file.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), []
        except UnicodeDecodeError as exc:
            return None, [Problem(file, None, f"not valid UTF-16 text (at byte {exc.start})",
                                  "save the file as UTF-8 (Excel: 'CSV UTF-8 (Comma delimited)')")]
    if b"\x00" in data[:8192]:
        return None, [Problem(file, None, "this is a binary file, not a manifest",
                              "give a .yaml, .csv or .txt manifest, or a folder of videos")]
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return None, [Problem(file, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
                              "save the file as UTF-8 (Excel: 'CSV UTF-8 (Comma delimited)')")]


def detect_delimiter(header_line: str) -> str:
    """The separator used in the header: the most frequent of , ; and tab outside quotes."""
    counts = {d: 0 for d in DELIMITERS}
    quoted = False
    for ch in header_line:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    best = max(DELIMITERS, key=lambda d: counts[d])  # ties keep the first: ","
    return best if counts[best] else ","


def parse_csv(text: str, file: str, base_dir: Path) -> tuple[RawManifest | None, list[Problem]]:
    problems: list[Problem] = []
    raw = RawManifest(file=file, base_dir=base_dir)
    if not text.strip():
        return None, [Problem(file, None, "manifest is empty: add a header row with a 'source' column and one row per video",
                              "first line: source,template,title")]
    first_line = text.lstrip("\r\n").splitlines()[0]
    delimiter = detect_delimiter(first_line)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        rows = []
        start = 1
        for row in reader:
            rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        return None, [Problem(file, reader.line_num or None, f"malformed CSV: {exc}",
                              "check the quotes on this line: a quote inside a field is written \"\"")]
    rows = [(n, r) for n, r in rows if any(c.strip() for c in r)]  # blank rows are ignored
    if not rows:
        return None, [Problem(file, None, "manifest is empty: add a header row with a 'source' column", None)]
    header_line, header = rows[0]
    names = [h.strip() for h in header]
    keys = [n.lower() if n.lower() in CSV_COLUMNS else n for n in names]
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        if not key:
            problems.append(Problem(file, header_line, f"column {i + 1} has no name in the header row",
                                    "name every column, or delete the empty one"))
        elif key in seen:
            problems.append(Problem(file, header_line, f"column '{key}' appears twice in the header", "keep one"))
        seen.setdefault(key, i)
    if "source" not in seen:
        sep = {",": "comma", ";": "semicolon", "\t": "tab"}[delimiter]
        problems.append(Problem(file, header_line, "missing 'source' column in the header row",
                                f"the first row must name the columns, one of them 'source' (separator read as {sep})"))
        return None, problems

    for line, row in rows[1:]:
        if row and row[0].lstrip().startswith("#"):
            continue  # comment row
        if len(row) != len(keys):
            extra_empty = len(row) > len(keys) and not any(c.strip() for c in row[len(keys):])
            if not extra_empty:  # trailing empty cells (a stray separator) are harmless
                problems.append(Problem(file, line, f"row has {len(row)} fields but the header has {len(keys)}",
                                        "a field containing the separator must be quoted"))
                continue
        fields: dict[str, object] = {}
        params: dict[str, str] = {}
        for key, cell in zip(keys, row):
            value = cell.strip()
            if not key:
                continue
            if API_KEY_SHAPE.search(value) or (value and SECRET_KEY_NAME.search(key)):
                problems.append(Problem(file, line, f"column '{key}' holds what looks like an API key",
                                        SECRET_HINT, "warning"))
            if not value:
                continue  # empty cell: use the default
            if key in CSV_COLUMNS:
                fields[key] = value
            else:
                params[key] = value
        if "source" not in fields:
            problems.append(Problem(file, line, "empty 'source' in this row", "put a file path or URL in the source column"))
            continue
        if params:
            fields["params"] = params
        raw.jobs.append(RawJob(fields, file, line, base_dir))
    if not raw.jobs and not problems:
        problems.append(Problem(file, None, "the CSV has a header but no rows", "add one row per video"))
    return raw, problems


def parse_source_list(text: str, file: str, base_dir: Path) -> tuple[list[tuple[int, str]], list[Problem]]:
    """``(line, source)`` pairs of a list file: one path/URL per line, '#' comments and blanks ignored."""
    entries = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        entries.append((number, line))
    problems: list[Problem] = []
    for number, line in entries:
        if API_KEY_SHAPE.search(line):
            problems.append(Problem(file, number, "this line looks like a Google API key", SECRET_HINT, "warning"))
    entries = [(n, s) for n, s in entries if not API_KEY_SHAPE.search(s)]
    return entries, problems
