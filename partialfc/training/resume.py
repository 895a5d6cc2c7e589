"""Which config changes a resume may make: a checkpoint continues *its* run, not another one.

A field that changes what the run means (the loss family and its parameters, the backbone and
embedding size, the sampling, the length of training and its LR schedule) makes a resumed run a
different experiment whose curve still looks like one run. Such a change is refused, naming each
field, unless the user lists it in ``checkpoint.allow_changes``; then it is logged and recorded in
summary.json. Everything else (logging, evaluation, checkpoint cadence, loader workers, metrics,
timeouts) may change freely between starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from partialfc.common.options import ConfigError
from partialfc.config import Config, flatten, is_meaning_field, to_dict
from partialfc.config_aliases import current_names


@dataclass(frozen=True)
class ConfigChange:
    field: str
    checkpoint: Any
    job: Any

    def __str__(self) -> str:
        return f"{self.field} (checkpoint {self.checkpoint!r}, this job {self.job!r})"


def meaning_changes(saved: Mapping[str, Any], ours: Mapping[str, Any]) -> list[ConfigChange]:
    """The fields in MEANING_FIELDS whose value differs between a checkpoint's config and this job's.

    The checkpoint's config is read under today's names (config_aliases.ALIASES): a run saved as ``loss.head:
    margin`` is the same run as ``loss.family: combined``. A field it lacks was added after it was written,
    and the run it saved had that field's default.
    """
    defaults = flatten(to_dict(Config()))
    saved_flat = {**defaults, **flatten(current_names(saved, "checkpoint config", warn=False))}
    ours_flat = {**defaults, **flatten(ours)}
    return [
        ConfigChange(name, saved_flat.get(name), ours_flat.get(name))
        for name in sorted(set(saved_flat) | set(ours_flat))
        if is_meaning_field(name) and saved_flat.get(name) != ours_flat.get(name)
    ]


def check_changes(changes: list[ConfigChange], allowed: list[str], checkpoint: str) -> list[ConfigChange]:
    """The changes ``allowed`` lets through; ConfigError naming every other one."""
    refused = [change for change in changes if change.field not in allowed]
    if refused:
        names = ",".join(change.field for change in refused)
        raise ConfigError(
            f"checkpoint {checkpoint} was trained with other settings that change what the run means: "
            + "; ".join(map(str, refused))
            + f". Resume with the checkpoint's values, start a new run (another output directory), or accept the "
            f"change with --checkpoint.allow_changes {names}"
        )
    return changes
