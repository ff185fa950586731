"""What this machine's CPU can do for local vLLM: model, usable cores, instruction sets.

vLLM's CPU build picks its kernels from the instruction sets: with AVX-512 (and better, its BF16
and VNNI extensions, or AMX tiles) it runs its oneDNN matmuls; with AVX2 only it falls back to
plain torch linear layers, several times slower. `mls doctor` reports which kind this machine is
and what that means for `mls local serve`, so a slow local engine is not mistaken for a bug.

>>> info = read_cpu_info()  # doctest: +SKIP
>>> info.kind, info.cores  # doctest: +SKIP
('avx512-amx', 2)
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
from pathlib import Path

__all__ = ["FLAGS", "CpuInfo", "cpu_quota", "parse_cpuinfo", "read_cpu_info",
           "usable_cores"]

# The flags that decide vLLM's CPU kernels, in /proc/cpuinfo's spelling.
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    """One machine's CPU as local vLLM sees it."""

    model: str
    arch: str
    cores: int  # usable by this process (usable_cores()), not the host's total
    flags: frozenset[str]

    @property
    def kind(self) -> str:
        """avx512-amx | avx512 | avx2 | other: the class of kernels vLLM's CPU build runs."""
        if "avx512f" in self.flags and {"amx_bf16", "amx_tile"} <= self.flags:
            return "avx512-amx"
        if "avx512f" in self.flags:
            return "avx512"
        if "avx2" in self.flags:
            return "avx2"
        return "other"

    def describe(self) -> str:
        shown = ", ".join(flag for flag in FLAGS if flag in self.flags) or "none of " + \
            ", ".join(FLAGS)
        return f"{self.model} ({self.arch}), {self.cores} usable cores; {shown}"

    def meaning(self) -> str:
        """What the instruction sets mean for `mls local serve` here, in one sentence."""
        return {
            "avx512-amx": "vLLM's CPU build runs its oneDNN kernels with AMX and BF16 (measured "
                          "on a 2-core Intel Xeon: ≈ 23 tok/s at 1 stream, ≈ 163 at 8, with the "
                          "embedded model)",
            "avx512": "vLLM's CPU build runs its oneDNN kernels (AVX-512)",
            "avx2": "AVX2 only: for a bf16 model (the embedded one is) vLLM's CPU build falls "
                    "back from oneDNN to plain torch linear layers, several times slower "
                    "(measured on a 2-core AMD EPYC: ≈ 10 tok/s in all at 4 streams; float32 "
                    "keeps oneDNN, docs/PERFORMANCE.md); fine for checking flags and client "
                    "code, not for speed",
            "other": "no AVX2: vLLM's x86 CPU build needs at least AVX2 (Arm and others use "
                     "their own builds); local serving may not start",
        }[self.kind]


def parse_cpuinfo(text: str, *, arch: str, cores: int) -> CpuInfo:
    """A CpuInfo from the text of /proc/cpuinfo (the first processor's entry)."""
    model, flags = "unknown CPU", frozenset[str]()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name in ("model name", "Model") and model == "unknown CPU":
            model = value.strip() or model
        elif name in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model=model, arch=arch, cores=cores, flags=flags)


def usable_cores(root: str | os.PathLike[str] = "/") -> int:
    """CPU cores this process may use: its affinity mask, capped by its cgroup's CPU quota (a
    container given 4 CPUs on a 64-core host sees 64 in its mask, and may use 4). A fractional
    quota rounds up: 1.5 CPUs is 2 cores, the second one half-used rather than idle.

    `root` is the folder /proc and /sys/fs/cgroup are read under: "/" on this machine, or a
    folder laid out like them (how the tests show a quota)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    quota = cpu_quota(root)
    return cores if quota is None else min(cores, max(1, math.ceil(quota)))


def cpu_quota(root: str | os.PathLike[str] = "/") -> float | None:
    """The CPU time this process's cgroup allows, in cores (quota / period; 1.5 is one and a half
    cores' worth), or None: no quota set, or none readable. Read from cgroup v2's `cpu.max` or
    v1's `cpu.cfs_quota_us` and `cpu.cfs_period_us`, in the process's own cgroup and every
    parent up to the mount: the tightest counts, since a parent's quota caps its children."""
    quotas = [quota for folder in _cpu_cgroup_folders(Path(root))
              if (quota := _quota_in(folder)) is not None]
    return min(quotas, default=None)


def _cpu_cgroup_folders(root: Path) -> list[Path]:
    """The cgroup folders that may hold this process's CPU quota, its own first, then each
    parent up to the mount; without a readable /proc/self/cgroup, the mounts' roots (what a
    container sees as its own cgroup)."""
    mount = root / "sys/fs/cgroup"
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    found: tuple[Path, str] | None = None
    for line in lines:  # "ID:CONTROLLERS:PATH"; cgroup v2's one tree has no controllers
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue  # not a cgroup line
        number, controllers, path = fields
        if "cpu" in controllers.split(","):  # v1's CPU hierarchy: it alone holds the quota
            by_name = mount / "cpu"  # usually a link to "cpu,cpuacct"
            found = (by_name if by_name.is_dir() else mount / controllers, path)
            break
        if number == "0" and controllers == "":  # v2, unless a v1 CPU line follows (hybrid)
            found = (mount, path)
    if found is None:
        return [mount, mount / "cpu"]
    hierarchy, path = found
    folder = hierarchy / path.lstrip("/")
    if ".." in Path(path).parts or not folder.is_dir():
        # the path as the host names it: a container sees its own cgroup at the mount
        return [hierarchy]
    folders = [folder]
    while folders[-1] != hierarchy:
        folders.append(folders[-1].parent)
    return folders


def _quota_in(folder: Path) -> float | None:
    """The quota one cgroup folder sets, in cores; None where it sets none, or it is unreadable
    or malformed (a limit we cannot read is one we cannot honour)."""
    try:
        if (folder / "cpu.max").exists():  # v2: "150000 100000", or "max 100000" for none
            quota, period = (folder / "cpu.max").read_text().split()
        else:  # v1: a quota of -1 is none
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        cores = int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return cores if cores > 0 else None


def read_cpu_info() -> CpuInfo:
    """This machine's CPU (Linux reads /proc/cpuinfo; elsewhere only the architecture)."""
    cores = usable_cores()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, arch=platform.machine() or "unknown", cores=cores)
