"""Every config field refuses a value outside its domain, before any process group or data exists:
exit 2, the field named (issue: `--eval.batch_size 0` used to train 200 steps, then crash)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

import pytest

from partialfc.common.options import FREE
from partialfc.config import Config
from partialfc.train import main

# Free-form by nature: paths and names checked where they are used (a missing path is an error there).
FREE_FIELDS = {
    "output",
    "data.path",
    "data.val_targets",
    "data.synthetic.path",
    "model.init_from",
    "checkpoint.resume",
    "eval.ijb.release",
    "eval.ijb.set",
    "metrics.address",
    "metrics.multiproc_dir",
}


def fields(node: Any = None, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted name, type hint, domain) of every leaf field of the training config."""
    node = node if node is not None else Config()
    hints, leaves = typing.get_type_hints(type(node)), []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            leaves += fields(value, f"{prefix}{f.name}.")
        else:
            leaves.append((f"{prefix}{f.name}", hints[f.name], f.metadata.get("domain")))
    return leaves


def outside(name: str, hint: Any, domain: Any) -> Any:
    """A value the field must refuse: its domain's example, else one its type refuses."""
    if domain is not None:
        return domain.outside
    if typing.get_origin(hint) is Literal:
        return "no-such-choice"
    if hint is bool:
        return "maybe"
    raise AssertionError(f"{name}: no domain, and its type {hint} accepts every value: declare one in its option()")


CHECKED = [(name, hint, domain) for name, hint, domain in fields() if domain is not FREE]


def test_only_path_like_fields_are_free():
    assert {name for name, _, domain in fields() if domain is FREE} == FREE_FIELDS


@pytest.mark.parametrize("name, hint, domain", CHECKED, ids=[name for name, _, _ in CHECKED])
def test_every_field_refuses_a_value_outside_its_domain(name, hint, domain, capsys):
    value = outside(name, hint, domain)
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    try:
        code = main(["--dry-run", f"--{name}", text])
    except SystemExit as stop:  # argparse refuses a choice itself
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, f"--{name} {text} was accepted"
    assert name in err and len(err.splitlines()) == 1, err
