"""Where an app file sets its concurrency knobs, read from its syntax tree, by use not by name.

The knobs `mls tune` sets: Modal's per-container concurrency (`@modal.concurrent(target_inputs=,
max_inputs=)`, or a Server's `target_concurrency=` / `max_concurrency=`), the container counts
(`min_containers=`, `max_containers=` of the serving function, class or Server) and the engine's
batch (`--max-num-seqs`, SGLang's `--max-running-requests`, in the engine's argv list). Each is
found where the app uses it; `mls tune` can set it when its value is a module-level UPPER_CASE
constant (as in every recipe: `max_inputs=MAX_INPUTS`, `"--max-num-seqs", str(MAX_NUM_SEQS)`),
since it edits constants only (`new.render_source`).
"""

from __future__ import annotations

import ast
import dataclasses
import re

from modal_llm_serving.check.app import Definition
from modal_llm_serving.check.settings import modal_functions, whole
from modal_llm_serving.check.source import Source, dotted, kwarg, line_of
from modal_llm_serving.errors import UsageError

__all__ = ["ROLES", "Knob", "find_knobs"]

# role -> the keyword arguments (or engine flags) that set it
ROLES = {
    "target": ("target_inputs", "target_concurrency"),
    "max": ("max_inputs", "max_concurrency"),
    "min_containers": ("min_containers",),
    "max_containers": ("max_containers",),
    "max_num_seqs": ("--max-num-seqs", "--max-running-requests"),
}
_CONSTANT = re.compile(r"^[A-Z][A-Z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Knob:
    """One knob as the app sets it: its role, how it is written, the constant behind it."""

    role: str  # a key of ROLES
    written: str  # "max_inputs=MAX_INPUTS", "--max-num-seqs"
    constant: str | None  # the module-level constant that gives its value; None: not settable
    value: int | None  # its value now, if a whole number
    line: int


def _knob(src: Source, role: str, written: str, node: ast.expr) -> Knob:
    """The knob whose value is the expression `node` (`str(NAME)` read as NAME)."""
    value = whole(src.resolve(node))
    inner = node
    if (isinstance(node, ast.Call) and dotted(node.func) == "str" and len(node.args) == 1
            and not node.keywords):
        inner = node.args[0]
    constant = None
    if (isinstance(inner, ast.Name) and _CONSTANT.match(inner.id)
            and inner.id in src.constants):
        constant = inner.id
    return Knob(role, written, constant, value, line_of(node))


def _serving(src: Source) -> list[tuple[Definition, ast.Call]]:
    """(definition, call) for each call that sets per-container concurrency: a
    `@modal.concurrent(...)` decorator or an `@app.server(...)`."""
    found = [(d, c) for d, c in src.decorators("concurrent") if isinstance(c, ast.Call)]
    found += [(d, c) for d, c in modal_functions(src) if dotted(c.func).endswith(".server")]
    return [(d, c) for d, c in found if isinstance(d, Definition)]


def _container_calls(src: Source, definition: Definition) -> list[ast.Call]:
    """The serving definition's own Modal call(s): where its container counts are given."""
    return [call for d, call in modal_functions(src) if d is definition]


def find_knobs(src: Source) -> list[Knob]:
    """Every concurrency knob the app sets; a UsageError when it sets no per-container
    concurrency at all (then it is not a server `mls tune` can size)."""
    serving = _serving(src)
    if not serving:
        raise UsageError(f"{src.path} sets no per-container concurrency (no "
                         "@modal.concurrent(target_inputs=...) and no app.server("
                         "target_concurrency=...)): it is not an HTTP server mls tune can size "
                         "(a batch job sizes itself by its own batch)")
    knobs: list[Knob] = []
    for definition, call in serving:
        for role in ("target", "max"):
            for name in ROLES[role]:
                if (node := kwarg(call, name)) is not None:
                    knobs.append(_knob(src, role, f"{name}={ast.unparse(node)}", node))
        for modal_call in _container_calls(src, definition):
            for role in ("min_containers", "max_containers"):
                if (node := kwarg(modal_call, role)) is not None:
                    knobs.append(_knob(src, role, f"{role}={ast.unparse(node)}", node))
    for sequence in src.sequences:
        assert isinstance(sequence, ast.List | ast.Tuple)
        words = sequence.elts
        for index, word in enumerate(words[:-1]):
            if isinstance(word, ast.Constant) and word.value in ROLES["max_num_seqs"]:
                knobs.append(_knob(src, "max_num_seqs", word.value, words[index + 1]))
    for role in ROLES:
        if len({knob.constant for knob in knobs if knob.role == role}) > 1:
            written = ", ".join(sorted({k.written for k in knobs if k.role == role}))
            raise UsageError(f"{src.path} sets {role.replace('_', ' ')} in more than one way "
                             f"({written}); give each the same constant, or tune them by hand")
    return knobs
