"""Carrying insightface ``recognition/arcface_torch`` (train_v2.py) runs over: their configs as our YAML
(:mod:`partialfc.migrate.config`, read from the Python file without executing it by
:mod:`partialfc.migrate.source`) and their checkpoints as a run directory our trainer resumes on any
world size (:mod:`partialfc.migrate.checkpoint`). ``python -m partialfc.migrate --help`` is the command;
docs/from_arcface_torch.md lists every key and how it is carried.
"""

from __future__ import annotations

__all__ = ["MigrationError"]


class MigrationError(ValueError):
    """An input that cannot be carried over; the message names the file and the line or key at fault."""
