"""What an app file is, read from its source: its model, engines, serving patterns and servers.

Several rule families ask the same questions (which model? which engine? is this a low-latency
server? what does its engine command say?); the answers are worked out here once, from `Source`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

from modal_llm_serving.check.source import UNKNOWN, Source, dotted, kwarg, line_of
from modal_llm_serving.local.argv import Option, options, served_model
from modal_llm_serving.recipes.table import RECIPES

__all__ = ["ENGINE_PACKAGES", "HEX", "HUB_ID", "PRIMITIVES", "Definition", "Model", "argv_options",
           "engines", "model_reference", "package_name", "package_specs", "patterns",
           "server_calls", "servers"]

HEX = re.compile(r"^[0-9a-f]{7,40}$")  # a commit hash, full or abbreviated
# The engines and Modal serving primitives the recipes use, from the recipe table: what an app
# file is read for.
ENGINE_PACKAGES = tuple(dict.fromkeys(recipe.engine for recipe in RECIPES))
PRIMITIVES = tuple(dict.fromkeys(recipe.primitive for recipe in RECIPES if recipe.primitive))
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # org/name
# A shell command line written as one string (or one piece of an f-string) is text, not a list
# the argv reader could read: matching the text is all there is.
_MODEL_IN_COMMAND = re.compile(r"(?:vllm\s+serve|--model(?:-path)?)[ =]+([\w.-]+/[\w.-]+)")

# An engine started from a command line written as text (a shell string, or one word of a list).
_ENGINE_LAUNCH = {"vllm": re.compile(r"\bvllm\s+serve\b|\bvllm\.entrypoints\b"),
                  "sglang": re.compile(r"\bsglang\.launch_server\b")}

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


class Model(NamedTuple):
    """The Hub id of the model a file serves, and the line that names it."""

    name: str
    line: int


def argv_options(src: Source) -> Iterator[tuple[ast.List | ast.Tuple, Option[Any]]]:
    """Every flag and its value in the file's list and tuple literals (engine command lines), by
    the engine-argv reader; a value is what the checker can work out, else UNKNOWN."""
    for sequence in src.sequences:
        assert isinstance(sequence, ast.List | ast.Tuple)
        for option in options([src.resolve(element) for element in sequence.elts]):
            yield sequence, option


def model_reference(src: Source) -> Model | None:
    """The Hub id the file serves and its line, if it names one."""
    name = src.constants.get("MODEL_NAME")
    if isinstance(name, str) and "/" in name and not name.startswith(("/", ".")):
        return Model(name, src.constant_lines["MODEL_NAME"])
    for call in src.calls_named("snapshot_download", "hf_hub_download", "LLM", "from_pretrained"):
        value = src.resolve(kwarg(call, "model") or kwarg(call, "repo_id")
                            or (call.args[0] if call.args else None))
        if isinstance(value, str) and "/" in value and not value.startswith(("/", ".")):
            return Model(value, line_of(call))
    for sequence in src.sequences:  # ["vllm", "serve", M, ...] / [..., "--model", M]
        assert isinstance(sequence, ast.List | ast.Tuple)
        words = [src.resolve(element) for element in sequence.elts]
        named = [served_model(words), *(o.value for o in options(words)
                                        if o.flag in ("--model", "--model-path"))]
        for value in named:
            if isinstance(value, str) and HUB_ID.match(value):
                return Model(value, line_of(sequence))
    for string in src.strings:
        if match := _MODEL_IN_COMMAND.search(str(string.value)):
            return Model(match.group(1), line_of(string))
    return None


def package_specs(src: Source) -> Iterator[tuple[str, int]]:
    """(requirement, line) for every package the image installs with pip."""
    for call in src.calls_named("pip_install", "uv_pip_install"):
        for arg in call.args:
            values = src.resolve(arg)
            for spec in values if isinstance(values, list) else [values]:
                if isinstance(spec, str):
                    yield spec, line_of(call)


def package_name(spec: str) -> str:
    """`vllm[flashinfer]==0.9.1` -> `vllm`."""
    return re.split(r"[\[=<>~! ]", spec.strip(), maxsplit=1)[0].lower()


def engines(src: Source) -> set[str]:
    """Engines the file installs, imports or launches (not ones it merely could build)."""
    found: set[str] = set()
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names} & set(ENGINE_PACKAGES)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module.split(".")[0]} & set(ENGINE_PACKAGES)
    for spec, _ in package_specs(src):
        if package_name(spec) in ENGINE_PACKAGES:
            found.add(package_name(spec))
    for call in src.calls_named("from_registry"):
        tag = src.resolve(call.args[0]) if call.args else UNKNOWN
        found |= {e for e in ENGINE_PACKAGES if isinstance(tag, str) and e in tag.lower()}
    for call in src.calls:
        if dotted(call.func).split(".")[-1] == "LLM":
            found.add("vllm")
    for string in src.strings:  # launched from shell text: "python -m sglang.launch_server ..."
        for engine, launch in _ENGINE_LAUNCH.items():
            if launch.search(str(string.value)):
                found.add(engine)
    return found


def patterns(src: Source) -> list[tuple[str, int]]:
    """(serving pattern, line) for each way the file serves: one of the recipe table's Modal
    primitives (web_server, http_server, app.server), or an offline `LLM`."""
    found: list[tuple[str, int]] = []
    for primitive in PRIMITIVES:
        for _, decorator in src.decorators(primitive.split(".")[-1]):  # app.server: any `.server`
            found.append((primitive, line_of(decorator)))
    for call in src.calls_named("LLM"):
        found.append(("offline LLM", line_of(call)))
    return found


def servers(src: Source, *kinds: str) -> list[Definition]:
    """Definitions carrying one of the `kinds` decorators (e.g. http_server)."""
    found = []
    for definition in src.decorated:
        assert isinstance(definition, Definition)
        names = [dotted(d).split(".")[-1] for d in definition.decorator_list]
        if any(kind in names for kind in kinds):
            found.append(definition)
    return found


def server_calls(src: Source) -> list[tuple[Definition, ast.Call]]:
    """(class, its `@app.server(...)` call) for every Modal Server in the file."""
    found = []
    for definition, decorator in src.decorators("server"):
        if isinstance(decorator, ast.Call) and not dotted(decorator.func).endswith(
                ("web_server", "http_server")):
            assert isinstance(definition, Definition)
            found.append((definition, decorator))
    return found
