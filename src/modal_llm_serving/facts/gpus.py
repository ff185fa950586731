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

__all__ = ["GB", "GPU", "Achievable", "Platform", "builtin_table", "catalog_gpu", "lacks_kernels",
           "load_gpu_catalog"]

GB = 1e9


@dataclasses.dataclass(frozen=True)
class Achievable:
    """The share of a card's datasheet peaks that real kernels reach: a long copy through HBM,
    large dense bf16 and fp8 matrix products (benchmarks/gpu_calibrate.py), and where the figures
    come from (measured on that card, or assumed from another)."""

    hbm: float = 1.0
    bf16: float = 1.0
    fp8: float = 1.0
    source: str = "datasheet peaks"


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
    link: str = ""  # that link by name, e.g. "NVLink 4", "PCIe 5"
    link_gb_s: float = 0.0  # its datasheet bandwidth per GPU, each direction, GB/s
    fabric_gb_s: float = 0.0  # RDMA per host where Modal clusters this GPU's hosts (0: none)
    link_assumed: bool = False  # link and link_gb_s derived from `nvlink` alone (old catalogs)
    bf16: bool = True  # native bf16 tensor cores (Turing has none: it would run fp16 instead)
    achievable: Achievable = Achievable()

    def tflops(self, *, fp8: bool) -> float:
        """The datasheet's dense tensor-core peak for the precision."""
        return self.fp8_tflops if fp8 and self._fp8_math(fp8) else self.bf16_tflops

    def flops_s(self, *, fp8: bool) -> float:
        """FLOP/s the planner counts on: the peak times the achievable share."""
        share = self.achievable.fp8 if self._fp8_math(fp8) else self.achievable.bf16
        return self.tflops(fp8=fp8) * 1e12 * share

    @property
    def hbm_bytes_s(self) -> float:
        """Memory bytes/s the planner counts on: the datasheet's times the achievable share."""
        return self.hbm_tb_s * 1e12 * self.achievable.hbm

    def _fp8_math(self, fp8: bool) -> bool:
        return fp8 and self.fp8 and self.fp8_tflops > 0


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


_GPU_FIELDS = {f.name: f for f in dataclasses.fields(GPU)
               if f.name not in ("name", "link_assumed")}
_OPTIONAL_GPU_FIELDS = {"nvlink", "bf16", "achievable", "link", "link_gb_s", "fabric_gb_s"}
# What a catalog that gives only `nvlink` gets: the slowest link of each kind Modal offers
# (NVLink 3 on the A100, 600 GB/s both ways; PCIe Gen4 x16), so TP is never costed as cheaper
# than it may be. The plan names the GPUs whose link was assumed.
_ASSUMED_LINK = {True: ("NVLink 3 (assumed)", 300.0), False: ("PCIe 4 (assumed)", 32.0)}
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


def _achievable(entry: object, where: str) -> Achievable:
    """An `achievable` table: hbm, bf16 and fp8 shares in (0, 1], and their source."""
    fields = {f.name for f in dataclasses.fields(Achievable)}
    if not isinstance(entry, dict) or set(entry) != fields:
        raise UsageError(f"{where}: achievable must be a table of exactly {sorted(fields)}, "
                         "e.g. { hbm = 0.9, bf16 = 0.8, fp8 = 0.7, source = \"measured ...\" }")
    for share in ("hbm", "bf16", "fp8"):
        if not _positive(entry[share]) or entry[share] > 1:
            raise UsageError(f"{where}: achievable.{share} must be a share in (0, 1], got "
                             f"{entry[share]!r}")
    if not isinstance(entry["source"], str) or not entry["source"].strip():
        raise UsageError(f"{where}: achievable.source must say where the shares come from")
    return Achievable(hbm=float(entry["hbm"]), bf16=float(entry["bf16"]),
                      fp8=float(entry["fp8"]), source=entry["source"].strip())


def _link(entry: dict[str, Any], where: str) -> dict[str, Any]:
    """The intra-node link fields of one catalog entry, checked; derived from `nvlink` when the
    entry gives no `link_gb_s` (catalogs written before links were recorded)."""
    for field in ("link_gb_s", "fabric_gb_s"):
        if field in entry and not _positive(entry[field], zero_ok=field == "fabric_gb_s"):
            raise UsageError(f"{where}: field '{field}' must be a finite positive number (GB/s, "
                             f"at most {_LARGEST:g}), got {entry[field]!r}")
    if "link" in entry and (not isinstance(entry["link"], str) or not entry["link"].strip()):
        raise UsageError(f"{where}: field 'link' must name the link, e.g. \"NVLink 4\" or "
                         f"\"PCIe 5\", got {entry['link']!r}")
    if "link_gb_s" in entry:
        link = str(entry.get("link") or "")
        nvlink = entry.get("nvlink", link.upper().startswith("NVLINK"))
        return {"link": link or ("NVLink" if nvlink else "PCIe"), "nvlink": nvlink,
                "link_gb_s": float(entry["link_gb_s"]), "link_assumed": False}
    name, bandwidth = _ASSUMED_LINK[bool(entry.get("nvlink", False))]
    return {"link": name, "link_gb_s": bandwidth, "link_assumed": True}


def load_gpu_catalog(override: Path | None = None) -> tuple[dict[str, GPU], Platform]:
    """The GPU catalog and platform figures, with `override` (or $MLS_GPU_CATALOG) applied."""
    data = builtin_table("gpus.toml")
    if override is None and (env := os.environ.get("MLS_GPU_CATALOG")):
        override = Path(env)
    gpus: dict[str, dict[str, Any]] = {k: dict(v) for k, v in data["gpus"].items()}
    platform: dict[str, Any] = dict(data["platform"])
    assumed: dict[str, Any] = dict(data["achievable"])
    if override is not None:
        user = read_toml(override, "GPU catalog")
        for key in user:
            if key not in ("gpus", "platform", "achievable"):
                raise UsageError(f"GPU catalog {override}: unknown table [{key}] (use [gpus.NAME], "
                                 "[platform] and [achievable])")
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
        if isinstance(user.get("achievable"), dict):
            assumed.update(user["achievable"])
    source = override or "the built-in GPU catalog"
    catalog: dict[str, GPU] = {}
    for name, entry in gpus.items():
        unknown = set(entry) - set(_GPU_FIELDS)
        missing = set(_GPU_FIELDS) - set(entry) - _OPTIONAL_GPU_FIELDS
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
        share = _achievable(entry.get("achievable", assumed), f"{source}: GPU '{name}'")
        catalog[name] = GPU(name=name, **{**entry, **_link(entry, f"{source}: GPU '{name}'"),
                                          "achievable": share})
    if set(platform) != _PLATFORM_FIELDS:
        raise UsageError(f"{source}: [platform] needs exactly {sorted(_PLATFORM_FIELDS)}")
    for field, value in platform.items():
        if not _positive(value, zero_ok=True):
            raise UsageError(f"{source}: [platform] {field} must be a finite number >= 0 (at "
                             f"most {_LARGEST:g}), got {value!r}")
    return catalog, Platform(**{k: float(v) for k, v in platform.items()})
