"""The engine command builders: what argv and env each setting produces."""

from __future__ import annotations

import pytest

from modal_llm_serving.engines import EngineConfig, for_local_cpu, sglang_command, vllm_command

REV = "0123456789abcdef0123456789abcdef01234567"


def flag_value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_vllm_minimal_config_leaves_engine_defaults() -> None:
    command = vllm_command(EngineConfig(model="Qwen/Qwen3-8B"))
    assert command.argv == ["vllm", "serve", "Qwen/Qwen3-8B", "--host", "0.0.0.0",
                            "--port", "8000"]
    assert command.env == {}


def test_vllm_full_config() -> None:
    config = EngineConfig(
        model="Qwen/Qwen3-8B", revision=REV, served_model_name="qwen3", port=8080,
        max_model_len=8192, max_num_seqs=64, max_num_batched_tokens=8192,
        gpu_memory_utilization=0.9, tensor_parallel_size=2, dtype="bfloat16",
        kv_cache_dtype="fp8", enforce_eager=True, enable_prefix_caching=True,
        extra_args=("--async-scheduling",))
    argv = vllm_command(config).argv
    assert flag_value(argv, "--revision") == REV
    assert flag_value(argv, "--served-model-name") == "qwen3"
    assert flag_value(argv, "--port") == "8080"
    assert flag_value(argv, "--max-model-len") == "8192"
    assert flag_value(argv, "--max-num-seqs") == "64"
    assert flag_value(argv, "--max-num-batched-tokens") == "8192"
    assert flag_value(argv, "--gpu-memory-utilization") == "0.9"
    assert flag_value(argv, "--tensor-parallel-size") == "2"
    assert flag_value(argv, "--dtype") == "bfloat16"
    assert flag_value(argv, "--kv-cache-dtype") == "fp8"
    assert "--enforce-eager" in argv
    assert "--enable-prefix-caching" in argv
    assert argv[-1] == "--async-scheduling", "extra args come last so they win"


def test_vllm_prefix_caching_can_be_turned_off() -> None:
    argv = vllm_command(EngineConfig(model="m", enable_prefix_caching=False)).argv
    assert "--no-enable-prefix-caching" in argv
    assert "--enable-prefix-caching" not in argv


def test_vllm_api_key_goes_in_env_never_argv() -> None:
    command = vllm_command(EngineConfig(model="m", api_key="sk-secret"))
    assert not any("sk-secret" in arg for arg in command.argv)
    assert "--api-key" not in command.argv
    assert command.env["VLLM_API_KEY"] == "sk-secret"


def test_vllm_sleep_mode_needs_dev_mode_env() -> None:
    command = vllm_command(EngineConfig(model="m", enable_sleep_mode=True))
    assert "--enable-sleep-mode" in command.argv
    assert command.env["VLLM_SERVER_DEV_MODE"] == "1"


def test_vllm_refuses_sglang_only_settings() -> None:
    with pytest.raises(ValueError, match="SGLang only"):
        vllm_command(EngineConfig(model="m", speculative_algorithm="EAGLE3"))


def test_sglang_full_config() -> None:
    config = EngineConfig(
        model="Qwen/Qwen3-8B", revision=REV, served_model_name="qwen3", port=30000,
        max_model_len=4096, max_num_seqs=32, gpu_memory_utilization=0.8,
        tensor_parallel_size=2, api_key="sk-x", speculative_algorithm="EAGLE3",
        speculative_draft_model="org/draft", speculative_num_steps=3,
        speculative_eagle_topk=1, speculative_num_draft_tokens=4,
        extra_args=("--enable-metrics",))
    command = sglang_command(config)
    argv = command.argv
    assert argv[:3] == ["python", "-m", "sglang.launch_server"]
    assert flag_value(argv, "--model-path") == "Qwen/Qwen3-8B"
    assert flag_value(argv, "--revision") == REV
    assert flag_value(argv, "--context-length") == "4096"
    assert flag_value(argv, "--max-running-requests") == "32"
    assert flag_value(argv, "--mem-fraction-static") == "0.8"
    assert flag_value(argv, "--tp-size") == "2"
    assert flag_value(argv, "--speculative-algorithm") == "EAGLE3"
    assert flag_value(argv, "--speculative-draft-model-path") == "org/draft"
    assert flag_value(argv, "--speculative-num-steps") == "3"
    assert flag_value(argv, "--speculative-eagle-topk") == "1"
    assert flag_value(argv, "--speculative-num-draft-tokens") == "4"
    assert flag_value(argv, "--api-key") == "sk-x"
    assert argv[-1] == "--enable-metrics"
    assert command.env == {}


def test_sglang_refuses_vllm_only_settings() -> None:
    with pytest.raises(ValueError, match="vLLM settings"):
        sglang_command(EngineConfig(model="m", enable_sleep_mode=True))


def test_for_local_cpu_swaps_only_gpu_choices() -> None:
    gpu = EngineConfig(model="m", revision=REV, served_model_name="s", port=9000,
                       max_model_len=4096, max_num_seqs=8, gpu_memory_utilization=0.9,
                       tensor_parallel_size=4, dtype="bfloat16", kv_cache_dtype="fp8",
                       enable_sleep_mode=True, api_key="k", extra_args=("--x",))
    cpu = for_local_cpu(gpu)
    assert (cpu.tensor_parallel_size, cpu.kv_cache_dtype, cpu.enable_sleep_mode) == (1, None, False)
    assert (cpu.gpu_memory_utilization, cpu.enforce_eager, cpu.dtype) == (None, True, None)
    unchanged = {"model", "revision", "served_model_name", "host", "port", "max_model_len",
                 "max_num_seqs", "api_key", "extra_args"}
    for field in unchanged:
        assert getattr(cpu, field) == getattr(gpu, field), field
