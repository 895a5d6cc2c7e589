"""An arcface_torch config file read without executing it, merged onto the ``base.py`` beside it.

Their configs (insightface ``recognition/arcface_torch/configs/*.py``) are Python modules:
``from easydict import EasyDict as edict``, ``config = edict()``, then ``config.KEY = VALUE`` lines whose
values are literals, tuples and lists of them, and arithmetic on numbers and on the file's earlier
``config.*`` values (``config.warmup_epoch = config.num_epoch // 10``). This module evaluates exactly that
with :mod:`ast`; anything else (a call, an import, a loop, a name) is refused naming the file and line,
so a config is never run. The merge is their ``utils/utils_config.py`` ``get_config``: ``configs/base.py``
first, the job's keys over it, and an ``output`` left None becomes ``work_dirs/<config name>``. Each
file is its own module there, so ``config.X`` on a right-hand side names the same file's earlier value.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from partialfc.migrate import MigrationError

__all__ = ["ArcfaceConfig", "Assignment", "read_arcface_config", "read_config_file"]

BASE = "base.py"
"""The file get_config merges every config onto, in the same folder (their ``configs/base.py``)."""

_OBJECT = "config"  # get_config reads the module attribute of this name
_LARGEST_EXPONENT = 64  # bounds ** so that a config cannot ask for a number of gigabytes

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}

# What a refused statement or expression is called in the error.
_KINDS: dict[type[ast.AST], str] = {
    ast.Call: "a function call",
    ast.Import: "an import",
    ast.ImportFrom: "an import",
    ast.For: "a loop",
    ast.AsyncFor: "a loop",
    ast.While: "a loop",
    ast.If: "an if statement",
    ast.IfExp: "a conditional expression",
    ast.FunctionDef: "a function definition",
    ast.AsyncFunctionDef: "a function definition",
    ast.ClassDef: "a class definition",
    ast.Lambda: "a lambda",
    ast.With: "a with statement",
    ast.Try: "a try statement",
    ast.Name: "a name",
    ast.Subscript: "a subscript",
    ast.Dict: "a dict",
    ast.ListComp: "a comprehension",
    ast.AugAssign: "an augmented assignment",
    ast.AnnAssign: "an annotated assignment",
}


@dataclass(frozen=True)
class Assignment:
    """A key's value and the line that set it."""

    value: Any
    path: Path
    line: int

    @property
    def where(self) -> str:
        return f"{self.path} line {self.line}"


@dataclass(frozen=True)
class ArcfaceConfig:
    """The merged config: every key in get_config's order (base.py's, then the job's new ones)."""

    job: Path
    keys: dict[str, Assignment]

    def value(self, key: str, default: Any = None) -> Any:
        return self.keys[key].value if key in self.keys else default

    def set_by_job(self, key: str) -> bool:
        """Whether the job's own file (not base.py) assigns ``key``."""
        return key in self.keys and self.keys[key].path == self.job


def read_arcface_config(path: str | Path) -> ArcfaceConfig:
    """The config at ``path`` merged onto the ``base.py`` beside it, as get_config builds it."""
    job = Path(path)
    base = job.with_name(BASE)
    if not base.is_file():
        raise MigrationError(
            f"{job}: no {BASE} beside it ({base}); arcface_torch's get_config merges every config onto "
            f"configs/{BASE}, so copy theirs next to this file"
        )
    keys = read_config_file(base)
    if job.resolve() != base.resolve():
        keys.update(read_config_file(job))
    output = keys.get("output")
    if output is not None and output.value is None:
        keys["output"] = Assignment(f"work_dirs/{job.stem}", output.path, output.line)
    return ArcfaceConfig(job, keys)


def read_config_file(path: Path) -> dict[str, Assignment]:
    """One file's ``config.KEY = VALUE`` assignments, in the order keys first appear (a later one wins)."""
    try:
        source = path.read_text()
    except OSError as error:
        raise MigrationError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        module = ast.parse(source, filename=str(path))
    except SyntaxError as error:
        raise MigrationError(f"{path} line {error.lineno}: not valid Python ({error.msg})") from None
    return _Reader(path).read(module)


class _Reader:
    """Walks one module's statements, evaluating the values it allows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.constructors: set[str] = set()  # the names EasyDict was imported as
        self.created = False  # `config = edict()` seen
        self.keys: dict[str, Assignment] = {}

    def refuse(self, node: ast.AST, what: str) -> MigrationError:
        return MigrationError(
            f"{self.path} line {getattr(node, 'lineno', '?')}: {what} is not read here: a config is "
            f"`{_OBJECT}.KEY = VALUE` lines of literals and arithmetic, and the file is never executed"
        )

    def read(self, module: ast.Module) -> dict[str, Assignment]:
        for statement in module.body:
            if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
                continue  # a docstring or a bare string
            if isinstance(statement, ast.ImportFrom) and self._easydict_import(statement):
                continue
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                self._assign(statement, statement.targets[0])
                continue
            shown = statement.value if isinstance(statement, ast.Expr) else statement  # a call on its own line
            raise self.refuse(statement, _KINDS.get(type(shown), f"a statement ({type(shown).__name__})"))
        if not self.created:
            raise MigrationError(f"{self.path}: defines no `{_OBJECT} = edict()` (the config get_config reads)")
        return self.keys

    def _easydict_import(self, statement: ast.ImportFrom) -> bool:
        if statement.module != "easydict" or [alias.name for alias in statement.names] != ["EasyDict"]:
            return False
        self.constructors.add(statement.names[0].asname or "EasyDict")
        return True

    def _assign(self, statement: ast.Assign, target: ast.expr) -> None:
        value = statement.value
        if isinstance(target, ast.Name) and target.id == _OBJECT:
            creates = (
                isinstance(value, ast.Call)
                and isinstance(value.func, ast.Name)
                and value.func.id in self.constructors
                and not value.args
                and not value.keywords
            )
            if not creates:
                raise self.refuse(statement, f"`{_OBJECT} = ...` other than `{_OBJECT} = edict()`")
            self.created = True
            return
        if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)):
            raise self.refuse(statement, "an assignment to something other than config.KEY")
        if target.value.id != _OBJECT:
            raise self.refuse(statement, f"an assignment to {target.value.id}.{target.attr}")
        if not self.created:
            raise MigrationError(
                f"{self.path} line {statement.lineno}: {_OBJECT}.{target.attr} is set before `{_OBJECT} = edict()`"
            )
        # A reassignment keeps the key's first position (dict order) and names the line that won.
        self.keys[target.attr] = Assignment(self._evaluate(value), self.path, statement.lineno)

    def _evaluate(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (bool, int, float, str)) or node.value is None:
                return node.value
            raise self.refuse(node, f"a {type(node.value).__name__} literal")
        if isinstance(node, (ast.Tuple, ast.List)):
            items = [self._evaluate(item) for item in node.elts]
            return tuple(items) if isinstance(node, ast.Tuple) else items
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == _OBJECT:
            if node.attr not in self.keys:
                raise MigrationError(
                    f"{self.path} line {node.lineno}: {_OBJECT}.{node.attr} is used before this file sets it "
                    "(each config file is a module of its own: base.py's values are not visible here)"
                )
            return self.keys[node.attr].value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](self._number(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self._number(node.left), self._number(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > _LARGEST_EXPONENT:
                raise self.refuse(node, f"an exponent above {_LARGEST_EXPONENT}")
            try:
                return _BINARY[type(node.op)](left, right)
            except ArithmeticError as error:
                raise MigrationError(f"{self.path} line {node.lineno}: {error}") from None
        raise self.refuse(node, _KINDS.get(type(node), f"an expression ({type(node).__name__})"))

    def _number(self, node: ast.expr) -> int | float:
        value = self._evaluate(node)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MigrationError(
                f"{self.path} line {node.lineno}: arithmetic on {value!r}: only numbers are computed here"
            )
        return value
