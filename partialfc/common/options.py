"""A config field declared once: its default, its one-line doc and its domain, side by side.

The domain says which values of the field's type are accepted; every field either has one, gets
one from its type (a choice, a bool, a number), or says it takes any value (``FREE``), so that a
test can walk every field and offer each a value it must refuse (``Domain.outside``). Checked when
the config is loaded, before any process group or dataset exists. Components declare their own
config sections with :func:`option` and report with :class:`ConfigError` without importing
partialfc.config, which imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """A configuration problem, with the field (and file) it comes from."""


class Domain:
    """Accepted values: ``accepts(value)``; ``rule`` completes "<field>=<value> ..."; ``outside`` is a
    value of the field's type the domain refuses (None for ``FREE``); ``choices``, when the domain is
    a set of names, lists them for ``--help``."""

    def __init__(
        self, accepts: Callable[[Any], bool], rule: str, outside: Any, choices: tuple[str, ...] | None = None
    ) -> None:
        self.accepts, self.rule, self.outside, self.choices = accepts, rule, outside, choices


FREE = Domain(lambda value: True, "", None)  # any value of the type: a path, a name checked where it is used


def at_least(low: float) -> Domain:
    return Domain(lambda value: value >= low, f"must be >= {low:g}", low - 1)


def above(low: float) -> Domain:
    return Domain(lambda value: value > low, f"must be > {low:g}", low)


def one_of(names: Collection[str]) -> Domain:
    """One of ``names`` (a registry's keys: the choices follow the registry)."""
    return Domain(lambda value: value in names, f"is not one of {', '.join(names)}", "no-such-choice", tuple(names))


def each_of(names: Collection[str]) -> Domain:
    """A list of distinct items, each one of ``names``."""
    return Domain(
        lambda values: all(value in names for value in values) and len(set(values)) == len(values),
        f"may only list each of {', '.join(names)} once",
        ["no-such-choice"],
        tuple(names),
    )


def interval(low: float, high: float, *, high_open: bool = True, low_open: bool = False) -> Domain:
    """``[low, high)`` by default; ``low_open`` / ``high_open`` choose the brackets."""

    def accepts(value: float) -> bool:
        return (value > low if low_open else value >= low) and (value < high if high_open else value <= high)

    brackets = ("(" if low_open else "[") + f"{low:g}, {high:g}" + (")" if high_open else "]")
    return Domain(accepts, f"must be in {brackets}", high if high_open else high + 1)


FRACTION = interval(0, 1, low_open=True, high_open=False)  # (0, 1]


def option(default: Any, help: str, domain: Domain | None = None) -> Any:
    """A dataclass field with a one-line doc and a domain; mutable defaults are copied per instance."""
    metadata = {"help": help, "domain": domain}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)
