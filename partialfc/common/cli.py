"""How every command line reports a mistake: one line that names the option and what to do, exit 2.

argparse's own report prints the whole usage block (70 lines for the training options) before the
one line that matters, and names its internal type functions ("invalid positive_int value").
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Iterable
from typing import NoReturn


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name a typo most likely meant: same section first, then spelling or initials
    (``optim.learning_rate`` -> ``optim.lr``)."""
    known = list(known)
    section, _, leaf = name.lstrip("-").rpartition(".")
    same_section = [k for k in known if k.lstrip("-").rpartition(".")[0] == section] or known
    initials = "".join(word[0] for word in re.split(r"[_.-]+", leaf) if word)
    for candidate in same_section:
        candidate_leaf = candidate.lstrip("-").rpartition(".")[2]
        if len(initials) > 1 and candidate_leaf == initials:
            return candidate
    matches = difflib.get_close_matches(name, same_section, n=1, cutoff=0.6)
    return matches[0] if matches else None


class ArgumentParser(argparse.ArgumentParser):
    """argparse with short errors: ``prog: error: <what>; did you mean <option>?`` and where help is.
    Prefixes of options are not taken for them: ``--train.max_step`` is a typo, not ``--train.max_steps``."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {self._explain(message)} (all options: {self.prog} --help)\n")

    def _explain(self, message: str) -> str:
        unknown = re.fullmatch(r"unrecognized arguments: (.*)", message)
        if not unknown:
            return re.sub(r"invalid \S+ value: ", "invalid value ", message)  # not argparse's type function names
        options = [option for action in self._actions for option in action.option_strings]
        parts, after_option = [], False
        for argument in unknown.group(1).split():
            if not argument.startswith("-"):
                if not after_option:  # else: the value of the unknown option just named
                    parts.append(f"unexpected argument {argument!r}")
                after_option = False
                continue
            after_option = "=" not in argument
            option = argument.split("=", 1)[0]
            suggestion = closest(option, options)
            parts.append(f"unknown option {option}" + (f"; did you mean {suggestion}?" if suggestion else ""))
        return "; ".join(parts)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (the parser reports anything else in one line)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def error_line(error: BaseException) -> str:
    """The one-line ``error: …`` a command prints for a runtime failure: an OSError as ``FILE: reason``
    (not Python's ``[Errno 2] …`` with a repr'd path), anything else as its own message."""
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename is not None else ""
        return f"error: {where}{error.strerror}"
    return f"error: {error}"
