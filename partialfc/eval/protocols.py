"""An evaluation protocol as a component: ``run(embedder, source) -> EvalResult``.

A protocol (``.bin`` verification, IJB 1:1 template pairs, IJB 1:N identification, the next one) is
one class: its command-line options, how it opens its sources, and ``run``. The ``eval`` command
(:mod:`partialfc.eval.__main__`) and training (:mod:`partialfc.training.evaluation`) both take it
from :data:`partialfc.eval.registry.PROTOCOLS` and read the same :class:`EvalResult`:

- ``summary``: name -> number, what the run record, Prometheus, the report and the best-model
  choice read; the protocol's ``headline`` entry is the one that ranks models;
- ``table`` and ``notes``: the console read-out;
- ``details``: everything else, for the JSON output;
- ``artifacts``: files written beside it (a ROC as CSV and PNG, a CMC plot).
"""

from __future__ import annotations

import argparse
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from partialfc.eval.embedder import Embedder, StoredEmbeddings, load_embedder

__all__ = ["DEFAULT_DATA", "EvalProtocol", "EvalResult", "Table", "format_number"]

SourceT = TypeVar("SourceT")
DEFAULT_DATA = Path("data/synthetic")
"""The quickstart's dataset: every ``eval`` command's default source lies in it."""


def format_number(value: float | None) -> str:
    """Four decimals; ``n/a`` for a number that is not defined (NaN)."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


@dataclass(frozen=True)
class Table:
    """A console table: a header and rows of cells."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def lines(self) -> list[str]:
        """Columns padded to their widest cell, a rule under the header."""
        widths = [max(len(cell) for cell in column) for column in zip(self.header, *self.rows)]
        return [
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
            for line in (self.header, tuple("-" * width for width in widths), *self.rows)
        ]


@dataclass
class EvalResult:
    """One protocol's result on one source (a ``.bin`` set, an IJB release)."""

    protocol: str
    target: str  # what was evaluated: the set's or the release's name
    summary: dict[str, float]  # name -> number; ``headline`` ranks models
    headline: str
    table: Table
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    seconds: float = math.nan

    @property
    def score(self) -> float:
        """The headline number."""
        return self.summary[self.headline]

    def to_json(self) -> dict[str, Any]:
        """The JSON output of this result: summary, details, artifact paths and seconds."""
        return {
            "summary": self.summary,
            "headline": self.headline,
            **self.details,
            "artifacts": {name: str(path) for name, path in self.artifacts.items()},
            "seconds": self.seconds,
        }


class EvalProtocol(ABC, Generic[SourceT]):
    """One evaluation protocol; subclasses are listed in :data:`partialfc.eval.registry.PROTOCOLS`."""

    name: ClassVar[str]
    """The ``eval`` sub-command and the name in ``eval.protocols``."""
    help: ClassVar[str]
    """One line for the command list."""
    description: ClassVar[str]
    """The sub-command's ``--help`` text: the protocol and its read-outs."""
    headline: ClassVar[str]
    """The summary entry that ranks models (the best-model choice, the report's plot)."""

    @classmethod
    @abstractmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Its options and sources on the ``eval`` command line (the model options are added for it)."""

    @classmethod
    @abstractmethod
    def from_arguments(cls, args: argparse.Namespace) -> tuple[EvalProtocol[SourceT], list[SourceT]]:
        """The protocol configured from the command line, and the sources it evaluates."""

    @classmethod
    def embedder_from_arguments(cls, args: argparse.Namespace) -> Embedder | StoredEmbeddings:
        """What embeds the images: ``--model`` on ``--device`` (a protocol may read stored embeddings instead)."""
        return load_embedder(args.model, args.device, args.backbone)

    @abstractmethod
    def run(self, embedder: Embedder | StoredEmbeddings, source: SourceT) -> EvalResult:
        """Evaluate; collective when torch.distributed is initialised (every rank gets the same result)."""
