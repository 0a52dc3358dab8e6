"""How many torch threads a process trains with (run-config key ``num-threads``).

``torch.set_num_threads`` is process-wide, so it is called by the entry points
(the centralised baseline, the federated client), never at import.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = [
    "CLIENT_DEFAULT_THREADS",
    "MAX_THREADS",
    "apply_num_threads",
    "available_cpus",
    "cgroup_cpu_limit",
    "resolve_num_threads",
]

# Sanity bound for an explicit ``num-threads``: torch overflows on 2**31 and a
# process with 10**5 threads crashes at exit; no machine we target has more cores.
MAX_THREADS = 1024
# A federated client uses one thread unless ``num-threads`` says otherwise: the
# simulation engine runs several clients side by side on one machine.
CLIENT_DEFAULT_THREADS = 1
# Below this many usable CPUs the automatic rule picks one thread (measured on a
# shared 2-CPU machine: one thread was faster than two, see resolve_num_threads).
_SMALL_MACHINE_CPUS = 4


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup, in CPUs; None when unlimited.

    Reads cgroup v2 ``cpu.max`` (``"200000 100000"`` = 2 CPUs, ``"max ..."`` =
    none), at the process's own cgroup and at the root, else cgroup v1
    ``cpu/cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` (quota -1 = none).

    Parameters
    ----------
    root : pathlib.Path (default: /sys/fs/cgroup)
        Mount point of the cgroup hierarchy (tests point it at a fake tree).
    """
    candidates = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                candidates.append(root / line[3:].lstrip("/") / "cpu.max")
    except OSError:
        pass
    candidates.append(root / "cpu.max")
    for path in candidates:
        try:
            fields = path.read_text().split()
        except OSError:
            continue
        if fields:
            # The period is optional in cpu.max; the kernel's default is 100000 us.
            return _ratio(fields[0], fields[1] if len(fields) > 1 else "100000")
    for folder in ("cpu", "cpu,cpuacct"):
        try:
            quota = (root / folder / "cpu.cfs_quota_us").read_text().strip()
            period = (root / folder / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            continue
        return _ratio(quota, period)
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = float(quota), float(period)
    except ValueError:  # "max": no quota
        return None
    return q / p if q > 0 and p > 0 else None


def available_cpus(root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on: its affinity mask, capped by the cgroup quota.

    ``os.cpu_count()`` counts the host's CPUs, not the container's share, so a
    container limited to 2 CPUs on a 64-core host would otherwise start 64 threads.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        # Rounded down: a 1.5-CPU quota throttles a second busy thread.
        cpus = min(cpus, max(1, math.floor(limit)))
    return max(1, cpus)


def resolve_num_threads(requested: int, *, default: int | None = None) -> int:
    """The torch thread count for ``num-threads = requested``.

    Parameters
    ----------
    requested : int
        ``num-threads``: a positive value is used as is; 0 = automatic.
    default : int, optional (default: None)
        What 0 means for this caller (a federated client passes
        :data:`CLIENT_DEFAULT_THREADS`); None = the automatic rule: one thread
        when fewer than 4 CPUs are available to the process (see
        :func:`available_cpus`), else one per available CPU. Measured on a
        shared 2-CPU machine: a centralised NeuMF epoch on ML-100K took 3.6-3.8 s
        with one thread and 6-72 s with two (torch's default there), with
        bit-identical results. The model's matrices are small, so a second
        thread gains little, and when other processes hold a core its worker
        threads wait for each other at every operation. The rule for 4 or more
        CPUs was not measured here.

    Returns
    -------
    int
        At least 1.
    """
    if requested > 0:
        return requested
    if default is not None:
        return default
    cpus = available_cpus()
    return 1 if cpus < _SMALL_MACHINE_CPUS else cpus


def apply_num_threads(requested: int, *, default: int | None = None) -> int:
    """Resolve ``num-threads`` (see :func:`resolve_num_threads`) and set it in torch.

    Returns
    -------
    int
        The thread count now in effect, for the results file.
    """
    import torch

    n = resolve_num_threads(requested, default=default)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
