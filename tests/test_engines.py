"""The CPU transforms: what `for_local_cpu` changes in a vLLM command, and nothing else; and the
one reader of an engine command line they (and `mls local`, `mls check`) use."""

from __future__ import annotations

import doctest
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modal_llm_serving.errors import RecipeError
from modal_llm_serving.local import argv, transforms
from modal_llm_serving.local.argv import (
    engine_of,
    flag_name,
    options,
    served_model,
    settings,
    with_value,
)
from modal_llm_serving.local.transforms import CPU_ENVIRONMENT, CPU_TRANSFORMS, for_local_cpu
from tests.skill.cpu_llm_kwargs import llm_kwargs_for_local_cpu

GPU_ONLY = ["--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.9",
            "--kv-cache-memory-bytes", "4G", "--kv-cache-dtype", "fp8", "--enable-sleep-mode",
            "--dtype", "bfloat16", "--compilation-config", '{"cudagraph_capture_sizes": [1]}']


def test_every_gpu_only_setting_is_dropped_and_eager_mode_added() -> None:
    argv = ["vllm", "serve", "m", "--max-model-len", "4096", *GPU_ONLY, "--max-num-seqs", "8"]
    local = for_local_cpu(argv)
    assert local.argv == ["vllm", "serve", "m", "--max-model-len", "4096", "--max-num-seqs", "8",
                          "--enforce-eager"]
    dropped = {change.setting: change.before for change in local.changes if change.after is None}
    assert dropped == {"tensor_parallel_size": "2", "gpu_memory_utilization": "0.9",
                       "kv_cache_memory_bytes": "4G", "kv_cache_dtype": "fp8",
                       "enable_sleep_mode": "on", "dtype": "bfloat16",
                       "compilation_config": '{"cudagraph_capture_sizes": [1]}'}
    reasons = {t.setting: t.reason for t in CPU_TRANSFORMS}
    assert all(change.reason == reasons[change.setting] for change in local.changes)


def test_equals_forms_and_negated_flags_are_dropped_too() -> None:
    argv = ["vllm", "serve", "m", "--tensor-parallel-size=4", "--no-enable-sleep-mode",
            "--enforce-eager"]
    local = for_local_cpu(argv)
    assert local.argv == ["vllm", "serve", "m", "--enforce-eager"]
    assert [c.setting for c in local.changes] == ["tensor_parallel_size", "enable_sleep_mode"]


def test_a_command_without_gpu_settings_only_gains_eager_mode() -> None:
    local = for_local_cpu(["vllm", "serve", "m", "--port", "8000"])
    assert local.argv == ["vllm", "serve", "m", "--port", "8000", "--enforce-eager"]
    assert local.changes[0].describe().startswith("--enforce-eager added: ")


flags = st.sampled_from(["--port", "--max-model-len", "--max-num-seqs", "--served-model-name",
                         "--revision",
                         *[flag_name(t.setting) for t in CPU_TRANSFORMS if t.action == "drop"]])
values = st.text(alphabet="abc0123456789.", min_size=1, max_size=6)


@given(st.lists(st.tuples(flags, values), max_size=12))
def test_transform_keeps_every_other_flag_in_order_and_is_idempotent(
        pairs: list[tuple[str, str]]) -> None:
    argv = ["vllm", "serve", "m"] + [item for pair in pairs for item in pair]
    local = for_local_cpu(argv)
    dropped = {flag_name(t.setting) for t in CPU_TRANSFORMS if t.action == "drop"}
    kept = [item for flag, value in pairs if flag not in dropped for item in (flag, value)]
    assert local.argv == ["vllm", "serve", "m", *kept, "--enforce-eager"]
    assert for_local_cpu(local.argv).argv == local.argv  # applying it twice changes nothing


def test_llm_kwargs_get_the_same_transforms() -> None:
    kwargs = {"model": "m", "revision": "r", "max_model_len": 4096, "tensor_parallel_size": 2,
              "gpu_memory_utilization": 0.92, "kv_cache_dtype": "auto"}
    assert llm_kwargs_for_local_cpu(kwargs) == {"model": "m", "revision": "r",
                                                "max_model_len": 4096, "enforce_eager": True}


def test_engine_of_reads_the_first_words() -> None:
    assert engine_of(["vllm", "serve", "m"]) == "vllm"
    assert engine_of(["python", "-m", "sglang.launch_server"]) == "sglang"
    with pytest.raises(RecipeError, match="expected `vllm serve"):
        engine_of(["llama-server", "-m", "x"])


def test_the_readme_lists_exactly_these_transforms() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (drop|add) `(--[a-z-]+)` \| (.+) \|$", readme, re.M)
    listed = {(action, flag) for action, flag, _ in rows}
    ours = {("drop" if t.action == "drop" else "add", t.flag) for t in CPU_TRANSFORMS}
    assert listed == ours
    environment = set(re.findall(r"^\| set `([A-Z0-9_]+=[^`]*)` \| .+ \|$", readme, re.M))
    assert environment == {f"{e.variable}={e.value}" for e in CPU_ENVIRONMENT}


def test_module_examples() -> None:
    for module in (argv, transforms):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_the_reader_takes_both_forms_bare_switches_and_the_positional_model() -> None:
    command = ["vllm", "serve", "org/m", "--port", "8000", "--max-model-len=4096",
               "--enforce-eager", "--host", "-1"]
    assert [(o.flag, o.value, o.start, o.end) for o in options(command)] == [
        ("--port", "8000", 3, 5), ("--max-model-len", "4096", 5, 6),
        ("--enforce-eager", None, 6, 7), ("--host", "-1", 7, 9)]
    assert served_model(command) == "org/m"
    assert settings(command) == {"model": "org/m", "port": "8000", "max_model_len": "4096",
                                 "enforce_eager": None, "host": "-1"}
    assert served_model(["vllm", "serve", "--model", "org/m"]) is None


def test_the_reader_reads_words_it_cannot_work_out_as_values() -> None:
    """`mls check` reads argv lists from source, where a word may be a number or unknown."""
    unknown = object()
    assert [(o.flag, o.value) for o in options(["--port", 8000, "--model", unknown, "--x"])] == [
        ("--port", 8000), ("--model", unknown), ("--x", None)]


def test_with_value_keeps_the_form_the_flag_was_written_in() -> None:
    assert with_value(["a", "--max-model-len", "9", "b"], "--max-model-len", "4") == [
        "a", "--max-model-len", "4", "b"]
    assert with_value(["a", "--max-model-len=9"], "--max-model-len", "4") == [
        "a", "--max-model-len=4"]
    assert with_value(["a"], "--port", "1") == ["a", "--port", "1"]
