"""The rules of `mls check`, one row each, and the finding that says where one was broken.

Each rule has an id, a short name, a one-line message (why it matters) and a fix; `RULES` is the
table `mls check --list` prints. A new rule is a row here, a function in the module of its family
(`pinning`: revisions, engine versions; `storage`: Volumes, caches, downloads; `serving`:
readiness, the smoke path, patterns, concurrency, endpoints; `security`: secrets, auth, dev mode;
`regions`: where a server runs and routes; `startup`: whether the app can start at all, judged
against the model's facts; `cluster`: apps on Modal's clustered containers; `imports`:
importing the file), one line in `run._static_findings`, and a fixture in tests/fixtures/check
that fires it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["RULES", "Finding", "Rule", "finding"]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule: its id, a short name, why it matters and how to fix it."""

    id: str
    name: str
    message: str
    fix: str


RULES: tuple[Rule, ...] = (
    Rule("MLS001", "unpinned-revision",
         "the model is pulled from a mutable registry without a pinned commit: a push to the "
         "repo silently changes what you serve",
         "set MODEL_REVISION to a commit hash and pass it (revision=MODEL_REVISION / --revision)"),
    Rule("MLS002", "weights-not-on-volume",
         "model weights are not cached on a modal.Volume, so every cold start downloads them",
         "mount a Volume at the Hugging Face cache, e.g. volumes={'/root/.cache/huggingface': "
         "modal.Volume.from_name('hf-cache', create_if_missing=True)}"),
    Rule("MLS003", "compile-cache",
         "engine compilation artifacts (torch.compile, CUDA graphs, DeepGEMM) are not on a "
         "Volume of their own, so each cold start recompiles, or a cache wipe takes the weights",
         "mount a second Volume at the engine's cache (/root/.cache/vllm for vLLM; "
         "/root/.cache/sglang for SGLang, whose DeepGEMM kernels go to ~/.cache/sglang/deep_gemm), "
         "separate from the weights Volume"),
    Rule("MLS004", "no-hf-xet",
         "HF_XET_HIGH_PERFORMANCE=1 is not set, so the first weight download runs far below "
         "the network's speed",
         "add .env({'HF_XET_HIGH_PERFORMANCE': '1'}) to the image"),
    Rule("MLS005", "no-readiness-check",
         "nothing polls /health: Modal's web_server readiness is only a TCP check, so success "
         "can be reported (and requests routed) before the model is loaded",
         "poll http://127.0.0.1:PORT/health until 200 (and process.poll() for a crash) before "
         "the server function returns or the smoke test reports success"),
    Rule("MLS006", "no-smoke-path",
         "there is no @app.local_entrypoint, so `modal run FILE` cannot prove the app answers",
         "add an @app.local_entrypoint() that waits for /health and sends one OpenAI chat "
         "request (a client under `if __name__ == \"__main__\":` doing both also counts)"),
    Rule("MLS007", "several-patterns",
         "more than one serving pattern in one file: their knobs and lifecycles conflict",
         "keep one pattern per file (split online, low-latency and offline into their own apps)"),
    Rule("MLS008", "max-inputs-with-http-server",
         "@modal.concurrent(max_inputs=...) with modal.experimental.http_server raises "
         "TypeError at import",
         "use @modal.concurrent(target_inputs=N) only with http_server"),
    Rule("MLS009", "dev-mode-public",
         "vLLM dev mode (sleep mode) is on with the engine on the port Modal exposes "
         "(@modal.web_server or @app.server): vLLM's key does not guard /sleep, /wake_up or "
         "/collective_rpc, and proxy auth lets every holder of a workspace proxy token in",
         "bind vLLM to 127.0.0.1 on its own port behind an allow-list forwarder (the recipes' "
         "PUBLIC_ROUTES); proxy auth alone is not enough"),
    Rule("MLS010", "low-latency-no-region",
         "a low-latency server without a pinned region: the GPU may run far from the proxy "
         "and clients, adding a round trip to every token",
         "set region=... on the class (and proxy_regions=[...] on http_server) to where your "
         "users are"),
    Rule("MLS011", "low-latency-no-503-retry",
         "a scaled-to-zero http_server answers 503 while it scales up; a client that does not "
         "retry fails the first request",
         "retry on HTTP 503 (and timeouts) with a deadline in the smoke test / client"),
    Rule("MLS012", "secret-in-code",
         "a secret (API key, token, password) is written in the file: it lands in git, logs "
         "and images",
         "read it from a modal.Secret (modal.Secret.from_name) and os.environ at run time"),
    Rule("MLS013", "unpinned-engine",
         "the engine version or base image is not pinned (`vllm` without ==, an image tag "
         "'latest' or none): a rebuild can change the engine under you",
         "pin the engine (vllm==X.Y.Z, sglang==X.Y.Z) and use a fixed image tag"),
    Rule("MLS014", "gpu-snapshot-multi-gpu",
         "GPU memory snapshots are enabled with several GPUs per container, which snapshots "
         "do not support",
         "use one GPU with enable_gpu_snapshot, or turn GPU snapshots off for tensor parallelism"),
    Rule("MLS015", "extra-endpoints",
         "the app exposes more ports or endpoints than serving needs (several web endpoints, "
         "tunnels), widening what the public can reach",
         "expose one web endpoint for the server; drop extra endpoints and modal.forward "
         "tunnels"),
    Rule("MLS016", "syntax-error",
         "the file does not parse as Python", "fix the syntax error at the reported line"),
    Rule("MLS017", "import-failed",
         "importing the file with the Modal SDK fails, so `modal deploy` would fail too",
         "run `python -c 'import runpy; runpy.run_path(\"FILE\")'` and fix the error shown"),
    Rule("MLS018", "import-timeout",
         "importing the file did not finish in time: it does work (or waits) at import",
         "move work at import time into functions (@modal.enter, the local_entrypoint)"),
    Rule("MLS019", "server-routing-far-from-compute",
         "a Server's routing_region is in another part of the world than its compute_region: "
         "every request crosses regions (tens of ms each way) before it reaches a GPU",
         "set routing_region to the region nearest compute_region (us-east, us-west, eu-west "
         "or ap-south), or move compute_region"),
    Rule("MLS020", "unauthenticated-api-without-key",
         "a Server with unauthenticated=True serves an OpenAI-compatible API that requires no "
         "key: anyone with the URL can generate on your GPUs",
         "keep proxy auth (drop unauthenticated=True), or have the engine require an API key "
         "from a modal.Secret (VLLM_API_KEY / SGLang --api-key)"),
    Rule("MLS021", "concurrent-on-server",
         "@modal.concurrent (or @modal.method) on an @app.server class: Servers take "
         "target_concurrency/max_concurrency in @app.server and expose only HTTP",
         "remove @modal.concurrent / @modal.method; set target_concurrency= and "
         "max_concurrency= on @app.server"),
    Rule("MLS022", "tp-vs-gpus",
         "the engine's tensor parallelism does not match the GPUs per container, or does not "
         "split the attention heads evenly: the engine fails at start, or paid GPUs sit idle",
         "set the engine's tensor parallel size (vLLM --tensor-parallel-size, SGLang "
         "--tp-size, LLM(tensor_parallel_size=)) to the N of gpu=\"TYPE:N\", a size that "
         "divides the model's attention heads"),
    Rule("MLS023", "does-not-fit",
         "the weights plus one sequence of the context length do not fit the engine's share "
         "of GPU memory (less the per-GPU overhead): the engine fails at start, out of memory "
         "or with no room for the KV cache",
         "use more or larger GPUs (gpu=\"TYPE:N\" with tensor parallelism N), a shorter max "
         "model len, or a quantized checkpoint; `mls plan` sizes it"),
    Rule("MLS024", "context-beyond-model",
         "the engine's context length is longer than the model's position embeddings: vLLM "
         "refuses to start, and positions the model was never trained on give garbage",
         "set --max-model-len (SGLang --context-length) at most the model's "
         "max_position_embeddings, or turn on the rope scaling its card documents"),
    Rule("MLS025", "precision-unsupported",
         "the GPU has no kernels for the weights' precision (FP8 where the GPU catalog gives no "
         "FP8 support, MXFP4 on Turing): the engine refuses the model or falls back to slow "
         "weight-only kernels",
         "choose a GPU that runs it (FP8: L4, L40S, RTX-PRO-6000, H100, H200, B200), or a "
         "checkpoint in a precision this GPU runs (bf16, AWQ/GPTQ int4)"),
    Rule("MLS026", "startup-timeout-short",
         "Modal stops a container that takes longer to start than its startup timeout "
         "(startup_timeout=, else timeout=, else 300 s); below the time to read the weights, "
         "or below the file's own readiness wait, the app never comes up",
         "raise startup_timeout= (N * MINUTES) above the weights' load time plus the engine's "
         "start, and at least to the readiness wait; `mls plan` suggests one"),
    Rule("MLS027", "concurrency-vs-batch",
         "Modal's per-container concurrency is far from the engine's batch size: far above it, "
         "requests queue unseen inside the engine (slow, no scale-out); far below it, the GPU "
         "idles with batch room you pay for and never use",
         "keep max_inputs / max_concurrency between a quarter of and twice the engine's "
         "--max-num-seqs (SGLang --max-running-requests), e.g. just under it"),
    Rule("MLS028", "gated-model-no-token",
         "the model is gated on the Hub and no modal.Secret gives the container HF_TOKEN: the "
         "download fails (401/403) when the app starts",
         "create a Secret holding HF_TOKEN of an account that accepted the license (modal "
         "secret create huggingface HF_TOKEN=...) and pass "
         "secrets=[modal.Secret.from_name(\"huggingface\")]"),
    Rule("MLS029", "unpinned-extra-model",
         "a model besides the main one (speculative draft, LoRA adapter, another download) is "
         "fetched without a pinned commit: a push to its repo silently changes what you serve",
         "pin it: \"revision\" in --speculative-config, --speculative-draft-model-revision, "
         "snapshot_download(repo, revision=HASH); LoRA adapters: download them at a commit to "
         "a Volume and pass that path"),
    Rule("MLS030", "shell-command",
         "a command is run through the shell (shell=True, os.system) from joined or interpolated "
         "text: a value with a space or quote breaks it, a value can inject shell syntax, and "
         "the shell sits between Modal and the engine's signals",
         "pass the command as an argv list, subprocess.Popen(argv), without shell=True; keep "
         "secrets in env=, not in the command"),
    Rule("MLS031", "cluster-containers-not-whole",
         "a clustered app's min_containers, max_containers or buffer_containers is not a "
         "multiple of the cluster size: they count containers, and Modal refuses the deploy",
         "write each as a multiple of size, e.g. max_containers = 2 * N_NODES for two clusters"),
    Rule("MLS032", "cluster-partial-host",
         "a clustered container asks for fewer GPUs than its host has: Modal gives a cluster "
         "whole hosts, so each container must take all of them",
         "ask for every GPU of the host, gpu=\"TYPE:8\", and size the engine to it"),
    Rule("MLS033", "cluster-without-rdma",
         "a cluster of several containers on GPUs whose hosts Modal joins with RDMA does not "
         "ask for it: every step's traffic between hosts crosses the slower private network",
         "pass rdma=True to @modal.clustered(size=..., rdma=True)"),
    Rule("MLS034", "cluster-parallel-vs-gpus",
         "the engine's tensor x pipeline x data parallelism is not the cluster's GPUs (nodes x "
         "GPUs per container), or its node count is missing or not the cluster size: the "
         "engine fails at start, waits for ranks that never come, or leaves GPUs idle",
         "set tensor parallelism to the GPUs of a host and pipeline parallelism to the nodes "
         "(vLLM --tensor-parallel-size 8 --pipeline-parallel-size N --nnodes N), N the size "
         "of @modal.clustered"),
)
_BY_ID = {rule.id: rule for rule in RULES}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One rule broken at one place."""

    rule: Rule
    path: str
    line: int
    detail: str  # what exactly was found here

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.id, "name": self.rule.name, "path": self.path,
                "line": self.line, "detail": self.detail, "why": self.rule.message,
                "fix": self.rule.fix}

    def location(self) -> str:
        return f"{self.path}:{self.line}"


def finding(rule_id: str, path: str, line: int, detail: str) -> Finding:
    """A finding of the rule `rule_id` (e.g. "MLS001") at `path:line`."""
    return Finding(_BY_ID[rule_id], path, line, detail)
