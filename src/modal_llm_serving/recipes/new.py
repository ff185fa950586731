"""`mls new`: one recipe with a plan's settings, edited through its syntax tree.

Only the values of module-level UPPER_CASE constants change, by name; every other byte of the
recipe (prose, code, comments beside the constants) stays as it was. The edit is verified: the
new file parses, and its syntax tree equals the recipe's except for those values.

>>> render_source('N_GPU = 1  # GPUs\\nX = N_GPU\\n', {"N_GPU": 2}).text
'N_GPU = 2  # GPUs\\nX = N_GPU\\n'
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modal_llm_serving.errors import RecipeError, UsageError
from modal_llm_serving.files import cannot_write, write_atomic

if TYPE_CHECKING:  # annotations only: render_source and write_app need no planner
    from modal_llm_serving.facts.workload import Workload
    from modal_llm_serving.plan import Plan

__all__ = ["RenderResult", "render_source", "write_app"]

_CONSTANT = re.compile(r"^[A-Z][A-Z0-9_]*$")
_MINUTES = 60


@dataclasses.dataclass(frozen=True)
class RenderResult:
    """The rendered text, what changed (name -> (old source, new source)), what the recipe lacks."""

    text: str
    changed: dict[str, tuple[str, str]]
    unchanged: list[str]  # settings the recipe already had at the planned value
    missing: list[str]  # settings the plan has but the recipe does not define


def _literal(value: Any, old: ast.expr) -> str:
    """Source for `value`, in the recipe's own style where it had one (`N * MINUTES`)."""
    uses_minutes = (isinstance(old, ast.BinOp) and isinstance(old.op, ast.Mult)
                    and isinstance(old.right, ast.Name) and old.right.id == "MINUTES")
    if uses_minutes and isinstance(value, int) and value % _MINUTES == 0:
        return f"{value // _MINUTES} * MINUTES"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # double quotes, like the recipes
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return repr(value)
    if isinstance(value, float):
        return repr(round(value, 6))
    if isinstance(value, list | tuple):
        items = ", ".join(_literal(v, ast.Constant(None)) for v in value)
        if isinstance(value, list):
            return f"[{items}]"
        return f"({items},)" if len(value) == 1 else f"({items})"
    raise UsageError(f"cannot write {value!r} ({type(value).__name__}) as a recipe constant")


def _value(node: ast.expr, env: dict[str, Any]) -> Any:
    """The value of a constant's expression (literals and `N * MINUTES`)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return _value(node.left, env) * _value(node.right, env)
    if isinstance(node, ast.Name):
        return env[node.id]
    return ast.literal_eval(node)


def _offsets(source: str) -> list[int]:
    """Character offset of each line start (ast columns are UTF-8 byte offsets per line)."""
    starts, total = [0], 0
    for line in source.splitlines(keepends=True):
        total += len(line)
        starts.append(total)
    return starts


def _char(source_lines: list[str], starts: list[int], line: int, byte_col: int) -> int:
    text = source_lines[line - 1]
    return starts[line - 1] + len(text.encode("utf-8")[:byte_col].decode("utf-8"))


def render_source(source: str, settings: dict[str, Any]) -> RenderResult:
    """`source` with each module-level constant named in `settings` set to its value."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    starts = _offsets(source)
    edits: list[tuple[int, int, str]] = []
    changed: dict[str, tuple[str, str]] = {}
    unchanged: list[str] = []
    env: dict[str, Any] = {"MINUTES": _MINUTES}
    seen: set[str] = set()
    for stmt in tree.body:
        target: ast.expr | None = None
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
        elif isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            target = stmt.target
        if not isinstance(target, ast.Name) or not _CONSTANT.match(target.id):
            continue
        assert isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None
        name, node = target.id, stmt.value
        if name not in settings:
            continue
        if name in seen:
            raise UsageError(f"the recipe assigns {name} twice at module level; cannot edit it "
                             "unambiguously")
        seen.add(name)
        assert node.end_lineno is not None and node.end_col_offset is not None
        start = _char(lines, starts, node.lineno, node.col_offset)
        end = _char(lines, starts, node.end_lineno, node.end_col_offset)
        old_text = source[start:end]
        new_text = _literal(settings[name], node)
        try:
            same = _value(node, env) == settings[name] and type(_value(node, env)) is type(
                settings[name])
        except (ValueError, KeyError, TypeError):
            same = False
        if same or old_text == new_text:
            unchanged.append(name)
            continue
        edits.append((start, end, new_text))
        changed[name] = (old_text, new_text)
    text = source
    for start, end, new_text in sorted(edits, reverse=True):
        text = text[:start] + new_text + text[end:]
    _verify(tree, text, settings, set(changed))
    missing = [name for name in settings if name not in seen]
    return RenderResult(text=text, changed=changed, unchanged=unchanged, missing=missing)


def _verify(old_tree: ast.Module, text: str, settings: dict[str, Any], names: set[str]) -> None:
    """The edit changed exactly the named constants' values, to the planned values."""
    new_tree = ast.parse(text)
    if len(new_tree.body) != len(old_tree.body):
        raise RecipeError("the edit changed the recipe's structure (a bug: please report it)")
    env = {"MINUTES": _MINUTES}
    for old, new in zip(old_tree.body, new_tree.body, strict=True):
        name = None
        if isinstance(new, ast.Assign) and isinstance(new.targets[0], ast.Name):
            name = new.targets[0].id
        elif isinstance(new, ast.AnnAssign) and isinstance(new.target, ast.Name):
            name = new.target.id
        if name in names:
            assert isinstance(new, ast.Assign | ast.AnnAssign) and new.value is not None
            got = _value(new.value, env)
            want = settings[name]
            if (list(got) if isinstance(got, tuple) else got) != (
                    list(want) if isinstance(want, tuple) else want):
                raise RecipeError(f"{name} rendered as {got!r}, planned {want!r} (a bug: "
                                  "please report it)")
            continue
        if ast.dump(old) != ast.dump(new):
            raise RecipeError(f"the edit changed more than constants at line {new.lineno} (a bug: "
                              "please report it)")


def write_app(source_path: Path, settings: dict[str, Any], output: Path, *,
              force: bool = False) -> RenderResult:
    """Render the recipe at `source_path` with `settings` into `output` (atomically)."""
    if output.exists() and not force:
        raise UsageError(f"{output} exists; pass --force to overwrite it or choose another path")
    if output.suffix != ".py":
        raise UsageError(f"{output}: the app file must end in .py (Modal imports it)")
    if not output.parent.is_dir():
        raise UsageError(f"{output.parent} is not a folder; create it first")
    source = source_path.read_text(encoding="utf-8")
    app_name = "mls-" + re.sub(r"[^a-z0-9-]+", "-", output.stem.lower()).strip("-")
    result = render_source(source, {**settings, "APP_NAME": app_name[:63]})
    try:  # never a half-written app, never a write through a file or link of that name
        write_atomic(output, result.text)
    except OSError as exc:
        raise cannot_write(output, exc) from None
    # APP_NAME is offered to every recipe; only those that name their app by a constant take it
    return dataclasses.replace(result, missing=[m for m in result.missing if m != "APP_NAME"])


@dataclasses.dataclass(frozen=True)
class NewApp:
    """What `mls new` did: the plan, the rendered recipe, the written file's check findings."""

    plan: Plan
    recipe: Path
    output: Path
    render: RenderResult
    findings: list[Any]  # modal_llm_serving.check.Finding

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "recipe": str(self.recipe),
                "pattern": self.plan.pattern,
                "changed": {k: {"from": a, "to": b} for k, (a, b) in self.render.changed.items()},
                "unchanged": self.render.unchanged, "not_in_recipe": self.render.missing,
                "findings": [f.to_dict() for f in self.findings], "plan": self.plan.to_dict()}


def new_app(workload: Workload, output: Path, *, force: bool = False,
            gpu_catalog: Path | None = None, import_check: bool = True) -> NewApp:
    """Plan `workload`, write its recipe with the plan's settings to `output`, check the file."""
    from modal_llm_serving.check import check_file
    from modal_llm_serving.plan import make_plan
    from modal_llm_serving.recipes.files import recipe_path

    if workload.is_local_path:
        raise UsageError(f"{workload.model} is a folder on this machine, which a Modal container "
                         "cannot see: give the Hub id and its commit (`--model ORG/NAME "
                         "--revision HASH`), or upload the folder to a Volume and edit MODEL_NAME "
                         "by hand")
    plan = make_plan(workload, gpu_catalog=gpu_catalog)
    _recipe_can_carry(plan)
    recipe = recipe_path(plan.recipe_row.name)
    result = write_app(recipe, plan.recipe_settings(), output, force=force)
    # the same GPU catalog as the plan: the startup rules judge the file by the plan's figures
    findings = check_file(output, import_check=import_check, gpu_catalog=gpu_catalog)
    return NewApp(plan=plan, recipe=recipe, output=output, render=result, findings=findings)


def _recipe_can_carry(plan: Plan) -> None:
    """Refuse plans whose memory math rests on an engine setting the recipes do not have."""
    from modal_llm_serving.facts.workload import PRECISIONS

    native = plan.model.native_precision
    # fp32 checkpoints are served in 16 bits by the engines' dtype "auto": nothing to carry
    if plan.quantization or (plan.precision != native and native in PRECISIONS):
        raise UsageError(
            f"this plan serves {plan.model.name} at {plan.precision}, but its checkpoint is "
            f"{native} and the recipes have no quantization setting: point --model at a "
            f"checkpoint stored in {plan.precision} (e.g. a -FP8 or AWQ repo), or drop "
            "--precision")
