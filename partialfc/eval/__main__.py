"""``python -m partialfc.eval PROTOCOL``: evaluate a trained model (``--help`` on each).

One sub-command per protocol of :data:`partialfc.eval.registry.PROTOCOLS`: its options, then each
of its sources run through :meth:`~partialfc.eval.protocols.EvalProtocol.run`; the results' tables
(merged when they share a header: one row per ``.bin`` set), their notes, and with ``--json`` one
object ``{"command", "source", "results": {target: result}}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from partialfc.common.cli import ArgumentParser, error_line
from partialfc.eval.embedder import add_model_options
from partialfc.eval.protocols import EvalResult, Table
from partialfc.eval.registry import PROTOCOLS


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m partialfc.eval",
        description="Evaluate a trained face model (model.pt or .onnx). Every command runs on the synthetic "
        "quickstart data by default (data/synthetic, runs/quickstart/model.pt); exit code 2 on bad input.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, protocol in PROTOCOLS.items():
        command = sub.add_parser(name, help=protocol.help, description=protocol.description)
        protocol.add_arguments(command)
        add_model_options(command)
        command.add_argument(
            "--json",
            metavar="FILE",
            default=None,
            help="also write the results as JSON to FILE; '-' prints only the JSON on stdout",
        )
        command.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def print_results(results: list[EvalResult]) -> None:
    """The tables, one per header (rows of results with the same header together), then each note once."""
    tables: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for result in results:
        tables.setdefault(result.table.header, []).extend(result.table.rows)
    for header, rows in tables.items():
        print("\n".join(Table(header, tuple(rows)).lines()))
    print("\n".join(dict.fromkeys(note for result in results for note in result.notes)))


def evaluate_command(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen protocol on its sources; the JSON object of the results."""
    protocol_class = PROTOCOLS[args.command]
    protocol, sources = protocol_class.from_arguments(args)
    embedder = protocol_class.embedder_from_arguments(args)
    results = [protocol.run(embedder, source) for source in sources]
    if args.json != "-":
        print_results(results)
    return {
        "command": args.command,
        "source": embedder.description,
        "results": {result.target: result.to_json() for result in results},
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        payload = evaluate_command(args)
    except (ValueError, OSError) as err:  # ModelFileError, TemplateListError, VerificationError, DatasetError ...
        print(error_line(err), file=sys.stderr)
        return 2
    if args.json == "-":
        print(json.dumps(payload, indent=2, sort_keys=True))
    elif args.json is not None:
        Path(args.json).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
