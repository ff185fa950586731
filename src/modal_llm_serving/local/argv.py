"""Read an engine command line: which engine it starts, its flags and their values, its model.

The one reader for every place that looks inside a `vllm serve MODEL ...` or `python -m
sglang.launch_server ...` argv: the CPU transforms, the differences `mls local` reports, the
context fitted to a local model, and `mls check` (on argv lists written in an app file, whose
words may be values it cannot work out, hence the words' type is left open).

The rule is the engines' own for long options: a word starting with `--` is a flag; its value is
what follows `=` in the same word, else the next word unless that is a flag too (then the flag is
a bare switch).

>>> [(o.flag, o.value) for o in options(["vllm", "serve", "m", "--port=8000", "--enforce-eager"])]
[('--port', '8000'), ('--enforce-eager', None)]
>>> settings(["vllm", "serve", "m", "--max-model-len", "4096", "--enforce-eager"])
{'model': 'm', 'max_model_len': '4096', 'enforce_eager': None}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Generic, Literal, TypeVar

from modal_llm_serving.errors import RecipeError

__all__ = ["Option", "engine_of", "flag_name", "options", "served_model", "settings",
           "with_value"]

Word = TypeVar("Word")


@dataclasses.dataclass(frozen=True)
class Option(Generic[Word]):
    """One flag of an argv and its value; `argv[start:end]` are the words it was written with."""

    flag: str  # "--max-model-len", as written before any "="
    value: Word | str | None  # None: a bare switch
    start: int
    end: int

    @property
    def setting(self) -> str:
        """The engine's name for it: `--max-model-len` -> `max_model_len`."""
        return self.flag.lstrip("-").replace("-", "_")


def _is_flag(word: object) -> bool:
    return isinstance(word, str) and word.startswith("--")


def options(argv: Sequence[Word]) -> list[Option[Word]]:
    """Every flag of `argv` with its value, in order; other words (the program, the model) are
    not options."""
    found: list[Option[Word]] = []
    index = 0
    while index < len(argv):
        word = argv[index]
        if not (isinstance(word, str) and word.startswith("--")):
            index += 1
            continue
        flag, equals, inline = word.partition("=")
        if equals:
            found.append(Option(flag, inline, index, index + 1))
            index += 1
        elif index + 1 < len(argv) and not _is_flag(argv[index + 1]):
            found.append(Option(flag, argv[index + 1], index, index + 2))
            index += 2
        else:
            found.append(Option(flag, None, index, index + 1))
            index += 1
    return found


def served_model(argv: Sequence[Word]) -> Word | None:
    """MODEL in `... serve MODEL ...` (vLLM's positional model), or None."""
    for index, word in enumerate(argv[:-1]):
        if word == "serve" and not _is_flag(argv[index + 1]):
            return argv[index + 1]
    return None


def settings(argv: list[str]) -> dict[str, str | None]:
    """`vllm serve M --a 1 --b` as {"model": "M", "a": "1", "b": None}, in order.

    Names use vLLM's underscores (`max_model_len`), the same names as the CPU transforms.
    """
    found: dict[str, str | None] = {}
    if argv[:2] == ["vllm", "serve"] and (model := served_model(argv)) is not None:
        found["model"] = model
    for option in options(argv):
        found[option.setting] = option.value
    return found


def with_value(argv: list[str], flag: str, value: str) -> list[str]:
    """`argv` with `flag`'s value replaced (in the form it was written), or the flag appended."""
    for option in options(argv):
        if option.flag == flag:
            inline = option.value is not None and option.end - option.start == 1
            words = [f"{flag}={value}"] if inline else [flag, value]
            return [*argv[:option.start], *words, *argv[option.end:]]
    return [*argv, flag, value]


def flag_name(setting: str) -> str:
    """vLLM's flag for an `LLM(...)` keyword: `max_model_len` -> `--max-model-len`."""
    return "--" + setting.replace("_", "-")


def engine_of(argv: list[str]) -> Literal["vllm", "sglang"]:
    """Which engine an argv starts: `vllm serve ...` or `python -m sglang.launch_server ...`."""
    if argv[:2] == ["vllm", "serve"]:
        return "vllm"
    if len(argv) >= 3 and argv[1:3] == ["-m", "sglang.launch_server"]:
        return "sglang"
    raise RecipeError(f"the engine command starts {' '.join(argv[:3])!r}; expected `vllm serve "
                      "MODEL ...` or `python -m sglang.launch_server ...`")
