"""What the studies share: their raw results as JSON lines, and a generated section inside a doc.

A study appends one JSON line per finished unit of work (a cell, a trained head) to its results
file, so it can be stopped and started again; its report is regenerated from that file alone and
written between two markers of its doc, leaving the prose around them as it is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

START, END = "<!-- results start -->", "<!-- results end -->"


def read_results(path: Path) -> list[dict]:
    """Every record of a results file, in the order they finished; none when it does not exist yet."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_result(path: Path, record: Mapping[str, object]) -> None:
    """One finished unit, as one line: a crash loses at most the unit in progress."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")


def markers(section: str | None = None) -> tuple[str, str]:
    """The start and end markers of a doc's generated section; a named section has its own pair."""
    if section is None:
        return START, END
    return f"<!-- results start: {section} -->", f"<!-- results end: {section} -->"


def write_generated(doc: Path, text: str, title: str, section: str | None = None) -> Path:
    """Replace what lies between the markers of ``doc`` (of ``section``'s pair, if named) with ``text``;
    a new doc gets ``title`` and the markers, a doc without them gets them appended."""
    start, end = markers(section)
    current = doc.read_text() if doc.is_file() else f"# {title}\n\n{start}\n{end}\n"
    if start not in current or end not in current:
        current += f"\n{start}\n{end}\n"
    head, rest = current.split(start, 1)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(f"{head}{start}\n{text}\n{end}{rest.split(end, 1)[1]}")
    return doc
