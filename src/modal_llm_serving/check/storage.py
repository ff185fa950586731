"""Rules on storage: weights on a Volume (MLS002), the engine's compile cache on a Volume of its
own (MLS003), and fast first downloads (MLS004).

What a cold start has to fetch or rebuild is what it costs: weights and compile artifacts kept
on Volumes, apart, are read back instead.
"""

from __future__ import annotations

import ast
import re

from modal_llm_serving.check.app import Model
from modal_llm_serving.check.rules import Finding, finding
from modal_llm_serving.check.source import UNKNOWN, Source, dotted, kwarg, line_of

__all__ = ["no_hf_xet", "volumes"]


def _volume_names(src: Source) -> dict[str, str]:
    """Variable name -> Volume name for `x = modal.Volume.from_name("name", ...)`."""
    names: dict[str, str] = {}
    for stmt in ast.walk(src.tree):
        if (isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name)
                and isinstance(stmt.value, ast.Call)
                and dotted(stmt.value.func).endswith("Volume.from_name")):
            value = src.resolve(stmt.value.args[0]) if stmt.value.args else UNKNOWN
            names[stmt.targets[0].id] = value if isinstance(value, str) else stmt.targets[0].id
    return names


def _mounts(src: Source) -> list[tuple[str, str, int]]:
    """(mount path, volume identity, line) for every volumes={...} entry."""
    names = _volume_names(src)
    mounts = []
    for call in src.calls:
        value = kwarg(call, "volumes")
        if not isinstance(value, ast.Dict):
            continue
        for key, vol in zip(value.keys, value.values, strict=True):
            path = src.resolve(key)
            if isinstance(vol, ast.Name):
                ident = names.get(vol.id, vol.id)
            elif isinstance(vol, ast.Call) and vol.args:
                ident = str(src.resolve(vol.args[0]))
            else:
                ident = ast.unparse(vol)
            mounts.append((str(path), ident, line_of(call)))
    return mounts


def volumes(src: Source, model: Model | None, engines: set[str]) -> list[Finding]:
    """MLS002 (no Volume for the weights) and MLS003 (no Volume of its own for the compile
    cache)."""
    found = []
    mounts = _mounts(src)
    server_line = next((line_of(d) for _, d in src.decorators("function", "cls")),
                       model.line if model else 1)
    weight_mounts = [m for m in mounts if re.search(r"hugging|/hf|hf[-_]|models?\b|weights",
                                                    m[0], re.I)]
    if model and not weight_mounts:
        found.append(finding("MLS002", src.path, server_line, "no Volume is mounted at the "
                             "Hugging Face cache (or a models/weights folder)"))
    if not engines:
        return found
    # SGLang 0.5 keeps DeepGEMM kernels in $SGLANG_CACHE_DIR/deep_gemm (~/.cache/sglang/deep_gemm):
    # a folder named "deepgemm" elsewhere is one SGLang never reads, unless the image points a
    # cache variable at it.
    pointed = _cache_env_paths(src)
    compile_mounts = [m for m in mounts if re.search(r"vllm|compile|inductor|triton|sglang|torch",
                                                     m[0], re.I) or m[0].rstrip("/") in pointed]
    broad = [m for m in mounts if m[0].rstrip("/") in ("/root/.cache", "/root", "/cache")]
    if broad:
        return [*found, finding("MLS003", src.path, broad[0][2], f"one Volume at {broad[0][0]} "
                                "holds weights and compile caches together")]
    if not compile_mounts:
        return [*found, finding("MLS003", src.path, server_line,
                                "no Volume for the engine's compile cache")]
    weight_ids = {m[1] for m in weight_mounts}
    for path, ident, line in compile_mounts:
        if ident in weight_ids:
            found.append(finding("MLS003", src.path, line, f"the compile cache at {path} shares "
                                 f"the weights Volume {ident!r}"))
    return found


def _cache_env_paths(src: Source) -> set[str]:
    """Folders the image's environment names as a cache (SGLANG_DG_CACHE_DIR, VLLM_CACHE_ROOT)."""
    paths = set()
    for call in src.calls_named("env"):
        for arg in call.args:
            mapping = src.resolve(arg)
            if isinstance(mapping, dict):
                paths |= {str(v).rstrip("/") for k, v in mapping.items()
                          if re.search(r"CACHE_(DIR|ROOT)$", str(k)) and isinstance(v, str)}
    return paths


def _xet_on(src: Source) -> bool:
    for call in src.calls_named("env"):
        for arg in call.args:
            mapping = src.resolve(arg)
            if isinstance(mapping, dict) and str(mapping.get("HF_XET_HIGH_PERFORMANCE")) in (
                    "1", "True", "true"):
                return True
    for node in ast.walk(src.tree):  # os.environ["HF_XET_HIGH_PERFORMANCE"] = "1"
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript):
            key = src.resolve(node.targets[0].slice)
            if key == "HF_XET_HIGH_PERFORMANCE" and str(src.resolve(node.value)) == "1":
                return True
    return False


def no_hf_xet(src: Source, model: Model | None) -> list[Finding]:
    """MLS004: a model is downloaded without HF_XET_HIGH_PERFORMANCE=1."""
    if model and not _xet_on(src):
        return [finding("MLS004", src.path, model.line,
                        "HF_XET_HIGH_PERFORMANCE is never set to '1'")]
    return []
