"""Engine command lines, built in one place.

One typed config (`EngineConfig`) and one function per engine turn a serving setup into the
command the engine runs. The Modal recipes and `mls local` both call these, so what runs on this
machine is what runs on Modal.

The recipes must import with only `modal` installed, so each one carries a verbatim copy of the
block between the `BEGIN/END engine-command` markers below; `tests/test_engine_copies.py` fails
when a copy drifts and `mls dev sync-recipes` rewrites them. Keep this block standard-library only.

>>> cmd = vllm_command(EngineConfig(model="Qwen/Qwen3-8B", revision="abc123", port=8000))
>>> cmd.argv[:3]
['vllm', 'serve', 'Qwen/Qwen3-8B']
"""

from __future__ import annotations

# BEGIN engine-command (generated copy in each recipe; edit here, then `mls dev sync-recipes`)
import dataclasses


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """What to serve and how; `None` leaves the engine's own default in place."""

    model: str  # a Hub id (pin `revision`) or a local checkpoint folder
    revision: str | None = None  # a commit hash for Hub ids
    served_model_name: str | None = None  # the id clients send; default: `model`
    host: str = "0.0.0.0"
    port: int = 8000
    max_model_len: int | None = None  # context length: prompt + output tokens
    max_num_seqs: int | None = None  # sequences decoded together (SGLang: max running requests)
    max_num_batched_tokens: int | None = None  # tokens per scheduler step (vLLM only)
    gpu_memory_utilization: float | None = None  # share of GPU memory (SGLang: static fraction)
    tensor_parallel_size: int = 1
    dtype: str | None = None  # "auto", "bfloat16", "float16", ...
    kv_cache_dtype: str | None = None  # e.g. "fp8" on Hopper
    enforce_eager: bool = False  # skip CUDA graphs / torch.compile (fast start, slower decode)
    enable_prefix_caching: bool | None = None
    enable_sleep_mode: bool = False  # vLLM only: /sleep and /wake_up (needs VLLM_SERVER_DEV_MODE=1)
    api_key: str | None = None  # required on /v1; vLLM gets it via env, never on the command line
    speculative_algorithm: str | None = None  # SGLang only: "EAGLE3", "NEXTN", ...
    speculative_draft_model: str | None = None
    speculative_num_steps: int | None = None
    speculative_eagle_topk: int | None = None
    speculative_num_draft_tokens: int | None = None
    extra_args: tuple[str, ...] = ()  # appended verbatim, last, so they win


@dataclasses.dataclass(frozen=True)
class EngineCommand:
    """An engine's argv plus the environment variables it needs."""

    argv: list[str]
    env: dict[str, str]


def _flag(argv: list[str], name: str, value: object) -> None:
    if value is not None:
        argv += [name, str(value)]


def vllm_command(config: EngineConfig) -> EngineCommand:
    """The `vllm serve` command for `config`; the API key travels in `VLLM_API_KEY`."""
    if config.speculative_algorithm or config.speculative_draft_model:
        raise ValueError("speculative_* settings are built for SGLang only; pass vLLM's "
                         "--speculative-config through extra_args")
    argv = ["vllm", "serve", config.model]
    _flag(argv, "--revision", config.revision)
    _flag(argv, "--served-model-name", config.served_model_name)
    _flag(argv, "--host", config.host)
    _flag(argv, "--port", config.port)
    _flag(argv, "--max-model-len", config.max_model_len)
    _flag(argv, "--max-num-seqs", config.max_num_seqs)
    _flag(argv, "--max-num-batched-tokens", config.max_num_batched_tokens)
    _flag(argv, "--gpu-memory-utilization", config.gpu_memory_utilization)
    if config.tensor_parallel_size != 1:
        _flag(argv, "--tensor-parallel-size", config.tensor_parallel_size)
    _flag(argv, "--dtype", config.dtype)
    _flag(argv, "--kv-cache-dtype", config.kv_cache_dtype)
    if config.enforce_eager:
        argv.append("--enforce-eager")
    if config.enable_prefix_caching is not None:
        argv.append("--enable-prefix-caching" if config.enable_prefix_caching
                    else "--no-enable-prefix-caching")
    env: dict[str, str] = {}
    if config.enable_sleep_mode:
        argv.append("--enable-sleep-mode")
        env["VLLM_SERVER_DEV_MODE"] = "1"  # sleep/wake endpoints exist only in dev mode
    if config.api_key:
        env["VLLM_API_KEY"] = config.api_key  # argv is visible to every process; env is not
    argv += config.extra_args
    return EngineCommand(argv=argv, env=env)


def sglang_command(config: EngineConfig) -> EngineCommand:
    """The `python -m sglang.launch_server` command for `config`."""
    if config.enable_sleep_mode or config.max_num_batched_tokens or config.kv_cache_dtype:
        raise ValueError("enable_sleep_mode, max_num_batched_tokens and kv_cache_dtype are "
                         "vLLM settings; pass SGLang's own flags through extra_args")
    argv = ["python", "-m", "sglang.launch_server", "--model-path", config.model]
    _flag(argv, "--revision", config.revision)
    _flag(argv, "--served-model-name", config.served_model_name)
    _flag(argv, "--host", config.host)
    _flag(argv, "--port", config.port)
    _flag(argv, "--context-length", config.max_model_len)
    _flag(argv, "--max-running-requests", config.max_num_seqs)
    _flag(argv, "--mem-fraction-static", config.gpu_memory_utilization)
    if config.tensor_parallel_size != 1:
        _flag(argv, "--tp-size", config.tensor_parallel_size)
    _flag(argv, "--dtype", config.dtype)
    if config.enforce_eager:
        argv.append("--disable-cuda-graph")
    if config.enable_prefix_caching is False:
        argv.append("--disable-radix-cache")
    _flag(argv, "--speculative-algorithm", config.speculative_algorithm)
    _flag(argv, "--speculative-draft-model-path", config.speculative_draft_model)
    _flag(argv, "--speculative-num-steps", config.speculative_num_steps)
    _flag(argv, "--speculative-eagle-topk", config.speculative_eagle_topk)
    _flag(argv, "--speculative-num-draft-tokens", config.speculative_num_draft_tokens)
    _flag(argv, "--api-key", config.api_key)  # SGLang reads no env var for it
    argv += config.extra_args
    return EngineCommand(argv=argv, env={})
# END engine-command


def for_local_cpu(config: EngineConfig) -> EngineConfig:
    """The same setup with the GPU-only choices swapped for ones vLLM's CPU build runs.

    This is the one place a recipe's engine config is changed to run on this machine:
    one device (no tensor parallelism), no fp8 KV cache, no sleep mode (CUDA memory pools),
    no GPU memory share (the CPU build sizes its KV cache from VLLM_CPU_KVCACHE_SPACE), the
    engine's own dtype, and eager mode (no CUDA graphs to capture; starts in seconds).
    """
    return dataclasses.replace(
        config,
        tensor_parallel_size=1,
        kv_cache_dtype=None,
        enable_sleep_mode=False,
        gpu_memory_utilization=None,
        enforce_eager=True,
        dtype=None,  # the CPU build picks what the processor supports
    )
