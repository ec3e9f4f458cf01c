"""How many torch threads a command takes on a machine that other work may share.

torch's default is one thread per CPU, and its OpenMP threads spin while they wait for each other: on cores that
other processes keep busy, a step then waits for threads that are not running. Measured with
``experiments/bench/shared_machine.py --load 4`` (ResNet-20 SGD steps, 2 CPUs, 4 competing busy processes;
``results/shared_machine.json``): 2 threads ran 20x slower than idle, 1 thread 2.3x (the load's fair share is
~2.5x). ``OMP_WAIT_POLICY=PASSIVE`` also avoids the collapse (4.0x) but ran 43% slower than the default when the
machine was idle (15.2 against 26.7 steps/s), so the commands choose the thread count instead: the
CPUs that were not busy in a short sample when the command started (:func:`fair_threads`). Set
``OMP_NUM_THREADS`` (or call ``torch.set_num_threads``) to choose yourself.
"""

from __future__ import annotations

import os
import time

SAMPLE_S = 0.1
"""How long :func:`busy_cpus` watches the machine."""


def cpu_count() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from ``/proc/stat`` (None where there is none)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cpus(sample_s: float = SAMPLE_S) -> float:
    """How many of the machine's CPUs other work kept busy during ``sample_s`` seconds (the 1-minute load average
    where ``/proc/stat`` does not exist), in [0, machine CPUs]."""
    first = _cpu_times()
    if first is None:
        return min(os.getloadavg()[0], float(os.cpu_count() or 1)) if hasattr(os, "getloadavg") else 0.0
    time.sleep(sample_s)
    second = _cpu_times()
    busy, total = second[0] - first[0], second[1] - first[1]
    return (os.cpu_count() or 1) * busy / total if total > 0 else 0.0


def fair_threads(cpus: int, busy: float) -> int:
    """Threads for ``cpus`` usable CPUs of which ``busy`` are taken: the free ones, at least one."""
    return max(1, min(cpus, round(cpus - busy)))


def choose_threads() -> str | None:
    """Sets torch's thread count to :func:`fair_threads` unless ``OMP_NUM_THREADS`` chooses it; returns a note when
    the machine was busy enough to take fewer threads than CPUs (None otherwise)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cpus = cpu_count()
    if cpus == 1:
        return None
    busy = busy_cpus()
    threads = fair_threads(cpus, busy)
    if threads == cpus:
        return None
    import torch

    torch.set_num_threads(threads)
    return (
        f"{busy:.1f} of {cpus} CPUs were busy with other work: using {threads} torch thread"
        f"{'s' if threads > 1 else ''} (set OMP_NUM_THREADS to choose)"
    )
