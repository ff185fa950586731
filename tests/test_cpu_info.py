"""`local.cpu_info`: the cores this process may use, read from real cgroup file layouts.

Each case writes the files a kernel shows (/proc/self/cgroup, /sys/fs/cgroup/...) into a
temporary folder and reads it as the root: cgroup v2 and v1, nested cgroups, the path a
container sees, and files that are missing or malformed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modal_llm_serving.local.cpu_info import cpu_quota, usable_cores

AFFINITY = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
    os.cpu_count() or 1)

V2 = "0::/\n"  # a container's own cgroup namespace: its cgroup is the mount's root
V1 = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n"  # the path as the host names it


def layout(root: Path, files: dict[str, str], *, cgroup: str | None = V2) -> Path:
    """`root` with /proc/self/cgroup holding `cgroup` (none if None) and each of `files`
    (a path under /sys/fs/cgroup: its text)."""
    if cgroup is not None:
        (root / "proc/self").mkdir(parents=True)
        (root / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        path = root / "sys/fs/cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def v1(folder: str, quota: str, period: str = "100000") -> dict[str, str]:
    """A cgroup v1 CPU quota in `folder`: its two files."""
    return {f"{folder}/cpu.cfs_quota_us": f"{quota}\n",
            f"{folder}/cpu.cfs_period_us": f"{period}\n"}


@pytest.mark.parametrize(("cgroup", "files", "cores"), [
    # cgroup v2, in a container
    (V2, {"cpu.max": "max 100000\n"}, None),
    (V2, {"cpu.max": "150000 100000\n"}, 1.5),
    (V2, {"cpu.max": "400000 100000\n"}, 4.0),
    (V2, {"cpu.max": "50000 100000\n"}, 0.5),
    # cgroup v2 on a host: the process's own cgroup and its parents, the tightest counting
    ("0::/user.slice/app.service\n", {"user.slice/app.service/cpu.max": "max 100000\n",
                                      "user.slice/cpu.max": "200000 100000\n"}, 2.0),
    ("0::/user.slice/app.service\n", {"user.slice/app.service/cpu.max": "50000 100000\n",
                                      "user.slice/cpu.max": "200000 100000\n"}, 0.5),
    # a path the mount does not show (the host's name for a container's cgroup): the mount
    ("0::/kubepods/pod1/abc\n", {"cpu.max": "300000 100000\n"}, 3.0),
    # cgroup v1: the CPU hierarchy, by its link "cpu" or by its full name
    (V1, v1("cpu", "200000"), 2.0),
    (V1, v1("cpu,cpuacct", "250000", "100000"), 2.5),
    (V1, v1("cpu", "-1"), None),
    ("3:cpu,cpuacct:/batch/job\n0::/\n", {**v1("cpu/batch/job", "-1"),
                                          **v1("cpu/batch", "150000")}, 1.5),
    # hybrid (v1 controllers, v2 tree beside them): the CPU quota is v1's
    ("1:cpu:/\n0::/\n", {**v1("cpu", "300000"), "unified/cgroup.procs": "1\n"}, 3.0),
    # missing: nothing there, or no /proc (the mount's root is read)
    (V2, {}, None),
    (V1, {}, None),
    (None, {"cpu.max": "150000 100000\n"}, 1.5),
    (None, v1("cpu", "150000"), 1.5),
    (None, {}, None),
    # malformed: not a quota we can read, so none
    (V2, {"cpu.max": "lots 100000\n"}, None),
    (V2, {"cpu.max": "150000\n"}, None),
    (V2, {"cpu.max": "150000 0\n"}, None),
    (V2, {"cpu.max": "-5 100000\n"}, None),
    (V2, {"cpu.max": ""}, None),
    (V1, v1("cpu", "1.5"), None),
    (V1, {"cpu/cpu.cfs_quota_us": "150000\n"}, None),  # no period
    ("nonsense\n", {"cpu.max": "150000 100000\n"}, 1.5),  # an unreadable line is skipped
    ("0::/../../escape\n", {"cpu.max": "150000 100000\n"}, 1.5),
])
def test_cpu_quota_is_read_from_the_cgroup_files(tmp_path: Path, cgroup: str | None,
                                                 files: dict[str, str],
                                                 cores: float | None) -> None:
    assert cpu_quota(layout(tmp_path, files, cgroup=cgroup)) == cores


def test_usable_cores_is_the_affinity_mask_capped_by_the_quota(tmp_path: Path) -> None:
    def usable(cpu_max: str | None, name: str) -> int:
        files = {} if cpu_max is None else {"cpu.max": cpu_max}
        return usable_cores(layout(tmp_path / name, files))

    assert usable(None, "none") == AFFINITY
    assert usable("max 100000", "unlimited") == AFFINITY
    assert usable(f"{(AFFINITY + 3) * 100000} 100000", "larger") == AFFINITY
    assert usable("10000 100000", "tenth") == 1  # never below one core
    if AFFINITY < 2:
        pytest.skip("the smaller-quota cases need 2 cores in this process's affinity mask")
    assert usable("100000 100000", "smaller") == 1
    assert usable("150000 100000", "fraction") == 2  # rounded up: the second core half-used

