"""The engines' own parsers, as `mls local command` and the recipe tests use them."""

from __future__ import annotations

import pytest

from modal_llm_serving.errors import EngineArgsError
from modal_llm_serving.local.engine_args import parse_command, parse_sglang, parse_vllm_serve


def test_vllm_parser_reads_gpu_only_flags_on_a_cpu_machine() -> None:
    args = parse_vllm_serve(["vllm", "serve", "org/m", "--tensor-parallel-size", "2",
                             "--kv-cache-dtype", "fp8", "--enable-sleep-mode"])
    assert (args.model, args.tensor_parallel_size, args.kv_cache_dtype) == ("org/m", 2, "fp8")


@pytest.mark.parametrize(("argv", "words"), [
    (["vllm", "serve", "m", "--no-such-flag", "1"], "does not know --no-such-flag"),
    (["vllm", "serve", "m", "--max-num-seqs", "many"], "rejected the command"),
    (["vllm", "serve", "m", "--kv-cache-dtype", "fp7"], "rejected the command"),
    (["vllm", "bench", "m"], "not a `vllm serve` command"),
])
def test_vllm_parser_rejections_are_one_clear_error(argv: list[str], words: str) -> None:
    with pytest.raises(EngineArgsError, match=words):
        parse_vllm_serve(argv)


def test_sglang_parser_and_its_rejections() -> None:
    launch = ["python", "-m", "sglang.launch_server", "--model-path", "org/m"]
    assert parse_sglang([*launch, "--tp-size", "2"]).tp_size == 2
    assert parse_command([*launch]).model_path == "org/m"
    # SGLang 0.5.23 split --cuda-graph-max-bs into decode and prefill forms: ambiguous now
    with pytest.raises(EngineArgsError, match="SGLang's parser rejected"):
        parse_sglang([*launch, "--cuda-graph-max-bs", "8"])
    with pytest.raises(EngineArgsError, match="does not know --max-num-seqs"):
        parse_sglang([*launch, "--max-num-seqs", "8"])


def test_the_version_lookup_is_restored_after_parsing() -> None:
    import importlib.metadata

    before = importlib.metadata.version
    parse_vllm_serve(["vllm", "serve", "m"])
    assert importlib.metadata.version is before
