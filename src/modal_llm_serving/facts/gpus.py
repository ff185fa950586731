"""GPU facts: the catalog (a data file you can override) and the platform's own figures.

GPU figures come from `data/gpus.toml`; a user file (`--gpu-catalog` or env `MLS_GPU_CATALOG`)
replaces entries field by field and may add new GPUs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from modal_llm_serving.errors import UsageError
from modal_llm_serving.facts.workload import read_toml

__all__ = ["GB", "GPU", "Platform", "builtin_table", "catalog_gpu", "lacks_kernels",
           "load_gpu_catalog"]

GB = 1e9


@dataclasses.dataclass(frozen=True)
class GPU:
    """One Modal GPU type and the figures the planner uses."""

    name: str  # Modal's GPU string, e.g. "H100"
    memory_gb: float
    hbm_tb_s: float
    bf16_tflops: float
    fp8_tflops: float
    fp8: bool
    price_per_hour: float
    price_verified: bool
    nvlink: bool = False  # GPUs of one container linked by NVLink (else PCIe)
    bf16: bool = True  # native bf16 tensor cores (Turing has none: it would run fp16 instead)

    def tflops(self, *, fp8: bool) -> float:
        return self.fp8_tflops if fp8 and self.fp8 and self.fp8_tflops > 0 else self.bf16_tflops


def lacks_kernels(gpu: GPU, precision: str) -> Literal["fp8", "mxfp4"] | None:
    """What `gpu` has no kernels for, of weights stored in `precision`: "fp8" where the catalog
    gives it no FP8 support (no FP8 tensor cores: vLLM at best falls back to weight-only Marlin
    kernels), "mxfp4" on Turing (the T4: the engines' MXFP4 kernels need Ampere or newer); else
    None. The plan rules such GPUs out and `mls check` flags an app that runs on one."""
    if precision == "fp8" and not gpu.fp8:
        return "fp8"
    if precision == "mxfp4" and gpu.name == "T4":
        return "mxfp4"
    return None


# Modal's GPU strings that differ from the catalog's names: "A100" is the 40 GB card, "A10G" the
# A10. A trailing "!" (no automatic upgrade) or "+" (this or newer) names the same card.
_MODAL_ALIASES = {"A100": "A100-40GB", "A10G": "A10"}


def catalog_gpu(modal_name: str, catalog: dict[str, GPU]) -> GPU | None:
    """The catalog entry for a Modal GPU string's type (`h100!` -> H100), or None if unknown."""
    name = modal_name.strip().upper().rstrip("!+")
    name = _MODAL_ALIASES.get(name, name)
    return next((gpu for key, gpu in catalog.items() if key.upper() == name), None)


@dataclasses.dataclass(frozen=True)
class Platform:
    """Platform estimates behind the cold-start prediction (see data/gpus.toml)."""

    volume_read_gb_s: float
    host_to_device_gb_s: float
    container_start_s: float
    engine_init_s: float
    snapshot_restore_s: float
    gpu_overhead_gb: float


_GPU_FIELDS = {f.name: f for f in dataclasses.fields(GPU) if f.name != "name"}
_PLATFORM_FIELDS = {f.name for f in dataclasses.fields(Platform)}


# Catalog figures are finite and positive; the cap keeps arithmetic on them finite too.
_LARGEST = 1e6


def _positive(value: object, *, zero_ok: bool = False) -> bool:
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and math.isfinite(value) and (value >= 0 if zero_ok else value > 0)
            and value <= _LARGEST)


def builtin_table(name: str) -> dict[str, Any]:
    """A data file shipped in `facts/data/` (gpus.toml, models.toml), parsed."""
    text = resources.files("modal_llm_serving.facts").joinpath("data", name).read_text("utf-8")
    return tomllib.loads(text)


def load_gpu_catalog(override: Path | None = None) -> tuple[dict[str, GPU], Platform]:
    """The GPU catalog and platform figures, with `override` (or $MLS_GPU_CATALOG) applied."""
    data = builtin_table("gpus.toml")
    if override is None and (env := os.environ.get("MLS_GPU_CATALOG")):
        override = Path(env)
    gpus: dict[str, dict[str, Any]] = {k: dict(v) for k, v in data["gpus"].items()}
    platform: dict[str, Any] = dict(data["platform"])
    if override is not None:
        user = read_toml(override, "GPU catalog")
        for key in user:
            if key not in ("gpus", "platform"):
                raise UsageError(f"GPU catalog {override}: unknown table [{key}] (use [gpus.NAME] "
                                 "and [platform])")
        if not isinstance(user.get("gpus", {}), dict) or not isinstance(
                user.get("platform", {}), dict):
            raise UsageError(f"GPU catalog {override}: [gpus.NAME] and [platform] must be "
                             "tables")
        for name, entry in user.get("gpus", {}).items():
            if not isinstance(entry, dict):
                raise UsageError(f"GPU catalog {override}: gpus.{name} must be a table of "
                                 "fields, e.g. [gpus.{name}] with price_per_hour = 3.95")
            gpus[name] = {**gpus.get(name, {}), **entry}
        platform.update(user.get("platform", {}))
    source = override or "the built-in GPU catalog"
    catalog: dict[str, GPU] = {}
    for name, entry in gpus.items():
        unknown = set(entry) - set(_GPU_FIELDS)
        missing = set(_GPU_FIELDS) - set(entry) - {"nvlink", "bf16"}
        if unknown or missing:
            raise UsageError(f"{source}: GPU '{name}' has unknown fields {sorted(unknown)} or "
                             f"lacks {sorted(missing)}; every GPU needs {sorted(_GPU_FIELDS)}")
        for field in ("memory_gb", "hbm_tb_s", "bf16_tflops", "fp8_tflops", "price_per_hour"):
            if not _positive(entry[field], zero_ok=field == "fp8_tflops"):
                raise UsageError(f"{source}: GPU '{name}' field '{field}' must be a finite "
                                 f"positive number (at most {_LARGEST:g}), got {entry[field]!r}")
        for field in ("nvlink", "bf16"):
            if field in entry and not isinstance(entry[field], bool):
                raise UsageError(f"{source}: GPU '{name}' field '{field}' must be true or false, "
                                 f"got {entry[field]!r}")
        catalog[name] = GPU(name=name, **entry)
    if set(platform) != _PLATFORM_FIELDS:
        raise UsageError(f"{source}: [platform] needs exactly {sorted(_PLATFORM_FIELDS)}")
    for field, value in platform.items():
        if not _positive(value, zero_ok=True):
            raise UsageError(f"{source}: [platform] {field} must be a finite number >= 0 (at "
                             f"most {_LARGEST:g}), got {value!r}")
    return catalog, Platform(**{k: float(v) for k, v in platform.items()})
