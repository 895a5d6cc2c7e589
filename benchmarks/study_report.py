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


def write_generated(doc: Path, text: str, title: str) -> Path:
    """Replace what lies between the markers of ``doc`` with ``text``; a new doc gets ``title`` and the markers."""
    current = doc.read_text() if doc.is_file() else f"# {title}\n\n{START}\n{END}\n"
    if START not in current or END not in current:
        current += f"\n{START}\n{END}\n"
    head, rest = current.split(START, 1)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(f"{head}{START}\n{text}\n{END}{rest.split(END, 1)[1]}")
    return doc
