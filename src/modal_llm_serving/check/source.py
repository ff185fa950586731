"""Read an app file's syntax tree: its module constants, calls, decorators, strings and lists.

`Source.resolve` works out the value of an expression built from literals and module-level
constants (`f"{GPU_TYPE}:{N_GPU}"`, `10 * MINUTES`, a parameter's default inside a function), so
the rules judge what a setting says, not how it is spelled; what it cannot work out is `UNKNOWN`.
"""

from __future__ import annotations

import ast
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["UNKNOWN", "Source", "dotted", "kwarg", "line_of", "read_python_source"]


def read_python_source(path: Path) -> str:
    """A Python file's text as Python itself reads it: by its PEP 263 coding line or BOM, else
    UTF-8 (OSError; SyntaxError for an unknown coding; UnicodeDecodeError for bytes that are not
    in it). A symlink is read through, as Python imports it."""
    with tokenize.open(path) as handle:
        return handle.read()


class _Unknown:
    """A value the checker cannot work out statically."""

    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN: Any = _Unknown()


def dotted(node: ast.AST) -> str:
    """`modal.Volume.from_name` for that expression (a call: what it calls); "" if not a name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return dotted(node.func)
    return ""


class Source:
    """The parsed file plus what the rules ask of it: constants, calls, decorators, strings."""

    def __init__(self, tree: ast.Module, path: str) -> None:
        self.tree = tree
        self.path = path  # as findings name it
        nodes = list(ast.walk(tree))
        # Inside a function, a parameter resolves to its default, e.g. `"--host", host` in
        # engine_command(*, host="127.0.0.1"): `scopes` maps each node in a function to those.
        self.scopes: dict[int, dict[str, ast.expr]] = {}
        for function in nodes:
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                args = function.args
                positional = args.posonlyargs + args.args
                pairs = [*zip(positional[len(positional) - len(args.defaults):], args.defaults,
                              strict=True),
                         *((a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
                           if d is not None)]
                scope = {arg.arg: default for arg, default in pairs}
                for inner in ast.walk(function):  # walked outer first: the innermost wins
                    self.scopes[id(inner)] = scope
        self.constants: dict[str, Any] = {}
        self.constant_lines: dict[str, int] = {}
        for stmt in tree.body:
            targets: list[ast.expr] = []
            value: ast.expr | None = None
            if isinstance(stmt, ast.Assign):
                targets, value = stmt.targets, stmt.value
            elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
                targets, value = [stmt.target], stmt.value
            for target in targets:
                if isinstance(target, ast.Name) and value is not None:
                    self.constants[target.id] = self.resolve(value)
                    self.constant_lines[target.id] = stmt.lineno
        self.calls = [n for n in nodes if isinstance(n, ast.Call)]
        self.strings = [n for n in nodes
                        if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        self.sequences = [n for n in nodes if isinstance(n, ast.List | ast.Tuple)]
        self.decorated = [n for n in ast.walk(tree)
                          if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]

    def resolve(self, node: ast.AST | None) -> Any:
        """The value of an expression built from literals and module constants, else UNKNOWN."""
        if node is None:
            return UNKNOWN
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            default = self.scopes.get(id(node), {}).get(node.id)
            if default is not None and not (isinstance(default, ast.Name)
                                            and default.id == node.id):
                return self.resolve(default)
            return self.constants.get(node.id, UNKNOWN)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "str" and len(node.args) == 1):
            value = self.resolve(node.args[0])
            return UNKNOWN if value is UNKNOWN else str(value)
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                part = self.resolve(value.value if isinstance(value, ast.FormattedValue)
                                    else value)
                if part is UNKNOWN:
                    return UNKNOWN
                parts.append(str(part))
            return "".join(parts)
        if isinstance(node, ast.BinOp):
            left, right = self.resolve(node.left), self.resolve(node.right)
            if left is UNKNOWN or right is UNKNOWN:
                return UNKNOWN
            try:
                if isinstance(node.op, ast.Mult):
                    return left * right
                if isinstance(node.op, ast.Add):
                    return left + right
            except TypeError:
                return UNKNOWN
            return UNKNOWN
        if isinstance(node, ast.List | ast.Tuple):
            return [self.resolve(e) for e in node.elts]
        if isinstance(node, ast.Dict):
            mapping: dict[Any, Any] = {}
            for key, value in zip(node.keys, node.values, strict=True):
                resolved = self.resolve(key) if key is not None else UNKNOWN  # None: **spread
                if isinstance(resolved, str | int | float | bool):  # hashable literal keys only
                    mapping[resolved] = self.resolve(value)
            return mapping
        return UNKNOWN

    def calls_named(self, *suffixes: str) -> Iterator[ast.Call]:
        for call in self.calls:
            name = dotted(call.func)
            if any(name == s or name.endswith("." + s) for s in suffixes):
                yield call

    def decorators(self, *suffixes: str) -> Iterator[tuple[ast.AST, ast.expr]]:
        """(decorated definition, decorator) pairs whose decorator name ends with a suffix."""
        for definition in self.decorated:
            assert isinstance(definition, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            for decorator in definition.decorator_list:
                name = dotted(decorator)
                if any(name == s or name.endswith("." + s) for s in suffixes):
                    yield definition, decorator

    def has_string(self, needle: str) -> bool:
        return any(needle in str(s.value) for s in self.strings)

    def mentions(self, name: str) -> bool:
        return any(isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)
                   for n in ast.walk(self.tree))


def kwarg(call: ast.Call, name: str) -> ast.expr | None:
    """The expression passed as `name=` in `call`, or None."""
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def line_of(node: ast.AST | None) -> int:
    """The line a node starts on (1 when it has none)."""
    return getattr(node, "lineno", 1) or 1
