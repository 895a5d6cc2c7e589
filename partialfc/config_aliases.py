"""Config names before a rename, and what they are called now: one table for YAML files, ``--flags``
and the config a checkpoint saved.

A renamed key (and a renamed value of a key) keeps working: files and flags print one deprecation
line per rename on stderr, naming the old and the new name; a checkpoint's saved config is read
under today's names silently (the user cannot change it), so that a resume compares like with like.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from partialfc.common.options import ConfigError

__all__ = ["ALIASES", "Renamed", "current_name", "current_names"]


@dataclass(frozen=True)
class Renamed:
    key: str
    """The key's current dotted name."""
    values: Mapping[str, str] = field(default_factory=dict)
    """Old values of the key and what they are called now (also accepted under the current name)."""


ALIASES: dict[str, Renamed] = {
    # "head" named the switch, one of its choices ("margin") and other things; the families got sections.
    "loss.head": Renamed("loss.family", {"margin": "combined"}),
    "loss.m1": Renamed("loss.combined.m1"),
    "loss.m2": Renamed("loss.combined.m2"),
    "loss.m3": Renamed("loss.combined.m3"),
    "loss.adaface_m": Renamed("loss.adaface.m"),
    "loss.adaface_h": Renamed("loss.adaface.h"),
    "loss.adaface_t_alpha": Renamed("loss.adaface.t_alpha"),
    "loss.curricular_m": Renamed("loss.curricularface.m"),
    "loss.magface_l_a": Renamed("loss.magface.l_a"),
    "loss.magface_u_a": Renamed("loss.magface.u_a"),
    "loss.magface_l_m": Renamed("loss.magface.l_m"),
    "loss.magface_u_m": Renamed("loss.magface.u_m"),
    "loss.magface_lambda_g": Renamed("loss.magface.lambda_g"),
    "loss.elastic_m": Renamed("loss.elasticface.m"),
    "loss.elastic_std": Renamed("loss.elasticface.std"),
    "loss.elastic_kind": Renamed("loss.elasticface.kind"),
    # evaluation became a list of protocols, each with its section
    "eval.every_steps": Renamed("eval.verify.every_steps"),
    "eval.far": Renamed("eval.verify.far"),
}
"""Every deprecated config key (YAML, ``--flag``, a checkpoint's saved config) -> its current name and values."""
_RENAMED_VALUES = {
    **{renamed.key: renamed.values for renamed in ALIASES.values() if renamed.values},
    # a list of field names: the renamed fields under their current names
    "checkpoint.allow_changes": {old: renamed.key for old, renamed in ALIASES.items()},
}


def current_name(key: str, value: Any) -> tuple[str, Any, str | None]:
    """``key`` and ``value`` under their current names, and a deprecation note when either was renamed.

    A list value (or a command line's comma-separated one) has each item renamed.
    """
    new_key = ALIASES[key].key if key in ALIASES else key
    renames = _RENAMED_VALUES.get(new_key, {})
    if isinstance(value, list):
        new_value: Any = [renames.get(item, item) if isinstance(item, str) else item for item in value]
    elif isinstance(value, str):
        new_value = ",".join(renames.get(item, item) for item in value.split(","))
    else:
        new_value = value
    if (new_key, new_value) == (key, value):
        return key, value, None
    old, new = (f"{key} {value}", f"{new_key} {new_value}") if new_value != value else (key, new_key)
    return new_key, new_value, f"'{old}' is deprecated, use '{new}'"


def current_names(raw: Mapping[str, Any], source: str, warn: bool = True) -> dict[str, Any]:
    """A nested config mapping (a YAML file, a checkpoint's config) with every deprecated key and value renamed;
    ``warn`` prints one deprecation line per rename to stderr."""
    renamed: dict[str, Any] = {}
    for key, value in _leaves(raw):
        new_key, value, note = current_name(key, value)
        if note and warn:
            print(f"partialfc: {source}: {note}", file=sys.stderr)
        *parents, leaf = new_key.split(".")
        node = renamed
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: '{'.'.join(parents[: depth + 1])}' is a section and needs a mapping")
        if leaf in node:
            raise ConfigError(f"{source}: '{new_key}' is given twice (under its current and its deprecated name)")
        node[leaf] = value
    return renamed


def _leaves(raw: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every value that is no mapping (empty sections stay, as empty mappings)."""
    leaves: list[tuple[str, Any]] = []
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and name not in ALIASES:
            leaves += _leaves(value, f"{name}.")
        else:
            leaves.append((name, value))
    return leaves
