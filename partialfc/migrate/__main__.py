"""``python -m partialfc.migrate``: bring an insightface arcface_torch (train_v2.py) run over.

python -m partialfc.migrate config configs/ms1mv3_r50.py --out ms1mv3_r50.yaml
python -m partialfc.migrate checkpoint work_dirs/ms1mv3_r50 --config ms1mv3_r50.yaml --out runs/ms1mv3_r50
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from partialfc.common.cli import ArgumentParser, error_line
from partialfc.common.options import ConfigError
from partialfc.config import load_config
from partialfc.migrate import MigrationError
from partialfc.training.checkpoint import CheckpointError

PROG = "python -m partialfc.migrate"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog=PROG,
        description="Carry an insightface recognition/arcface_torch run (train_v2.py) over: its config as a YAML "
        "file of this trainer, then its checkpoints as a run directory that `python -m partialfc.train` resumes "
        "on any number of GPUs. docs/from_arcface_torch.md lists how every key is carried. Exit code 2 on input "
        "that cannot be carried, with one line naming the file and the line or key.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config = sub.add_parser(
        "config",
        help="an arcface_torch config file as a YAML config",
        description="Read ARCFACE_CONFIG merged onto the base.py beside it, as arcface_torch's get_config does, "
        "without executing either file: only `config.KEY = VALUE` lines of literals and arithmetic are read. Every "
        "key is carried to its field (the YAML names the key and line each value comes from) or refused (exit 2) "
        "with what to use here instead; notes on what changes go to stderr. The YAML passes "
        "`python -m partialfc.train --config FILE --dry-run`.",
    )
    config.add_argument(
        "arcface_config", metavar="ARCFACE_CONFIG", type=Path, help="their configs/<name>.py (base.py beside it)"
    )
    config.add_argument("--out", metavar="FILE", type=Path, required=True, help="the YAML file to write")
    checkpoint = sub.add_parser(
        "checkpoint",
        help="train_v2.py's checkpoint_gpu_{rank}.pt files as a run directory",
        description="Read the checkpoint_gpu_{rank}.pt files of all ranks in ARCFACE_OUTPUT_DIR (written at an "
        "epoch's end when their config.save_all_states is True) and write RUN_DIR/checkpoints/step-N/ in this "
        "trainer's format: the backbone, every class centre by class id, the SGD momentum or AdamW moments of "
        "both, the step (in optimizer steps) and the next epoch, the LR schedule where theirs stood. The dataset "
        "(data.path) must be readable: the loader's position is saved from it. Then train with "
        "`python -m partialfc.train --config FILE --output RUN_DIR` on any world size.",
    )
    checkpoint.add_argument(
        "arcface_output", metavar="ARCFACE_OUTPUT_DIR", type=Path, help="their run's output folder (config.output)"
    )
    checkpoint.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        required=True,
        help="the run's config as written by the config command (it must describe their run)",
    )
    checkpoint.add_argument(
        "--out", metavar="RUN_DIR", type=Path, required=True, help="the run directory to write (no checkpoints yet)"
    )
    return parser


def migrate_config_command(args: argparse.Namespace) -> int:
    from partialfc.migrate.config import migrate_config
    from partialfc.migrate.source import read_arcface_config

    migrated = migrate_config(read_arcface_config(args.arcface_config))
    args.out.write_text(migrated.yaml())
    load_config(args.out)  # what the trainer will read: it must load as it was checked
    for note in migrated.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    keys = len(migrated.arcface.keys)
    print(f"wrote {args.out}: {keys} keys of {args.arcface_config} carried, {len(migrated.notes)} note(s)")
    print(f"check it: python -m partialfc.train --config {args.out} --dry-run")
    return 0


def migrate_checkpoint_command(args: argparse.Namespace) -> int:
    from partialfc.migrate.checkpoint import migrate_checkpoint

    run = migrate_checkpoint(args.arcface_output, load_config(args.config), args.out)
    their_lr = f"{run.their_lr:.6g}" if run.their_lr is not None else "not saved"
    print(
        f"wrote {run.checkpoint}: {run.world_size} rank files, {run.num_classes} classes, step {run.step} of "
        f"{run.plan_steps} (their global_step {run.global_step}), next epoch {run.epoch}; LR of the next step "
        f"{run.lr:.6g} (their scheduler's {their_lr})"
    )
    print(f"resume it: python -m partialfc.train --config {args.config} --output {args.out}")
    return 0


COMMANDS = {"config": migrate_config_command, "checkpoint": migrate_checkpoint_command}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (MigrationError, ConfigError, CheckpointError, OSError) as error:
        print(f"{PROG}: {error_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
