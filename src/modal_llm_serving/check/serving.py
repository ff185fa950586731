"""Rules on how the app serves: readiness (MLS005), a smoke path (MLS006), one pattern per file
(MLS007), concurrency settings Modal accepts (MLS008, MLS021), a client that rides out a scale-up
(MLS011), GPU snapshots (MLS014) and no more endpoints than serving needs (MLS015).
"""

from __future__ import annotations

import ast
import contextlib

from modal_llm_serving.check.app import server_calls, servers
from modal_llm_serving.check.rules import Finding, finding
from modal_llm_serving.check.source import Source, dotted, kwarg, line_of

__all__ = ["concurrent_on_server", "extra_endpoints", "gpu_snapshot_multi_gpu",
           "max_inputs_with_http_server", "no_503_retry", "no_readiness_check", "no_smoke_path",
           "several_patterns"]

_WEB_DECORATORS = ("web_server", "http_server", "fastapi_endpoint", "web_endpoint", "asgi_app",
                  "wsgi_app")


def no_readiness_check(src: Source, patterns: list[tuple[str, int]]) -> list[Finding]:
    """MLS005: an HTTP server, and nothing in the file asks /health."""
    if any(kind != "offline LLM" for kind, _ in patterns) and not src.has_string("/health"):
        return [finding("MLS005", src.path, patterns[0][1],
                        "no request to /health anywhere in the file")]
    return []


def _main_block_client(src: Source) -> bool:
    """An `if __name__ == "__main__":` block in a file that calls /health and chat."""
    has_main = any(isinstance(stmt, ast.If) and "__name__" in ast.unparse(stmt.test)
                   for stmt in src.tree.body)
    chat = src.has_string("chat/completions") or any(
        dotted(c.func).endswith("chat.completions.create") for c in src.calls)
    return has_main and chat and src.has_string("/health")


def no_smoke_path(src: Source) -> list[Finding]:
    """MLS006: no local_entrypoint (nor a __main__ client) that proves the app answers."""
    if not list(src.decorators("local_entrypoint")) and not _main_block_client(src):
        return [finding("MLS006", src.path, 1, "no @app.local_entrypoint() (nor a __main__ "
                        "client that hits /health and one chat completion)")]
    return []


def several_patterns(src: Source, patterns: list[tuple[str, int]],
                     engines: set[str]) -> list[Finding]:
    """MLS007: more than one serving pattern, or more than one engine, in one file."""
    kinds = sorted({kind for kind, _ in patterns})
    if len(kinds) > 1 or len(engines) > 1:
        what = ", ".join(kinds) if len(kinds) > 1 else " and ".join(sorted(engines))
        line = sorted(line for _, line in patterns)[-1] if patterns else 1
        return [finding("MLS007", src.path, line, f"found {what}")]
    return []


def max_inputs_with_http_server(src: Source) -> list[Finding]:
    """MLS008: @modal.concurrent(max_inputs=...) on an http_server class."""
    found = []
    for definition in servers(src, "http_server"):
        for decorator in definition.decorator_list:
            if (isinstance(decorator, ast.Call) and dotted(decorator.func).endswith("concurrent")
                    and kwarg(decorator, "max_inputs") is not None):
                found.append(finding("MLS008", src.path, line_of(decorator),
                                     "@modal.concurrent(max_inputs=...) on an http_server class"))
    return found


def concurrent_on_server(src: Source) -> list[Finding]:
    """MLS021: @modal.concurrent or @modal.method on an @app.server class."""
    found = []
    for definition, _ in server_calls(src):
        forbidden = [d for d in definition.decorator_list
                     if dotted(d).split(".")[-1] == "concurrent"]
        if isinstance(definition, ast.ClassDef):
            forbidden += [d for item in definition.body
                          if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                          for d in item.decorator_list
                          if dotted(d).split(".")[-1] == "method"]
        for decorator in forbidden:
            name = dotted(decorator).split(".")[-1]
            found.append(finding("MLS021", src.path, line_of(decorator),
                                 f"@modal.{name} on a Server"))
    return found


def no_503_retry(src: Source) -> list[Finding]:
    """MLS011: a low-latency server whose client never retries a 503 (asked of those only)."""
    if any(isinstance(n, ast.Constant) and n.value == 503 for n in ast.walk(src.tree)):
        return []
    entrypoints = list(src.decorators("local_entrypoint"))
    line = line_of(entrypoints[0][1]) if entrypoints else 1
    return [finding("MLS011", src.path, line, "no retry on HTTP 503 in the file's client")]


def gpu_snapshot_multi_gpu(src: Source) -> list[Finding]:
    """MLS014: GPU memory snapshots with several GPUs per container."""
    on = src.constants.get("ENABLE_GPU_SNAPSHOT") is True
    line = src.constant_lines.get("ENABLE_GPU_SNAPSHOT", 1)
    for call in src.calls:
        options = src.resolve(kwarg(call, "experimental_options"))
        if isinstance(options, dict) and options.get("enable_gpu_snapshot") is True:
            on, line = True, line_of(call)
    if not on:
        return []
    counts: list[int] = []
    if isinstance(src.constants.get("N_GPU"), int):
        counts.append(src.constants["N_GPU"])
    for call in src.calls:
        gpu = src.resolve(kwarg(call, "gpu"))
        for spec in gpu if isinstance(gpu, list) else [gpu]:
            if isinstance(spec, str) and ":" in spec:
                with contextlib.suppress(ValueError):
                    counts.append(int(spec.rsplit(":", 1)[1]))
    if any(count > 1 for count in counts):
        return [finding("MLS014", src.path, line, f"enable_gpu_snapshot with {max(counts)} GPUs")]
    return []


def extra_endpoints(src: Source) -> list[Finding]:
    """MLS015: a second web endpoint, or a modal.forward tunnel."""
    found = []
    web = [d for _, d in src.decorators(*_WEB_DECORATORS)]
    web += [d for _, d in src.decorators("server") if dotted(d).split(".")[-1] == "server"]
    for decorator in sorted(web, key=line_of)[1:]:
        found.append(finding("MLS015", src.path, line_of(decorator),
                             "a second web endpoint in the same app"))
    for call in src.calls_named("forward"):
        if dotted(call.func).startswith("modal."):
            found.append(finding("MLS015", src.path, line_of(call),
                                 "a modal.forward tunnel opens an extra port"))
    return found
