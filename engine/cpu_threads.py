"""How many CPU threads torch should use: the cores this process may really run on.

torch sizes its thread pool from the CPUs it can see. In a container with a CPU limit that is
the node's whole core count, while the cgroup quota lets the pod run on only a few: the extra
threads then time-slice against each other, and a 2-thread matmul on an oversubscribed core
was measured 10-20x slower than the same matmul on one thread. The quota is the truth.
"""
import math
import os

import torch

CGROUP_ROOT = "/sys/fs/cgroup"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: str | None = None) -> float | None:
    """The CPU quota in cores (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`), or None."""
    root = root or CGROUP_ROOT
    v2 = _read(os.path.join(root, "cpu.max"))
    if v2:
        quota, _, period = v2.partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100000)
    quota = _read(os.path.join(root, "cpu", "cpu.cfs_quota_us"))
    period = _read(os.path.join(root, "cpu", "cpu.cfs_period_us"))
    if quota is None or period is None or int(quota) <= 0:
        return None
    return int(quota) / int(period)


def usable_cpus(root: str | None = None) -> int:
    """CPUs in this process's affinity mask, capped by the cgroup quota rounded up."""
    cpus = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root)
    return cpus if limit is None else max(1, min(cpus, math.ceil(limit)))


def limit_torch_threads(share: int = 1) -> int:
    """Lower torch's intra-op threads to usable_cpus() // share (never raise them), unless
    the user chose with OMP_NUM_THREADS. Returns the thread count now in use."""
    if not os.environ.get("OMP_NUM_THREADS"):
        wanted = max(1, usable_cpus() // share)
        if wanted < torch.get_num_threads():
            torch.set_num_threads(wanted)
    return torch.get_num_threads()
