"""CPU parallelism: how many worker processes (jobs) and torch intra-op threads a run uses, set in one place.

torch's default intra-op pool has one thread per core, and its threads spin-wait for each other at the end of every
parallel kernel: when another process holds one of the cores, every kernel waits for a descheduled thread, and a
sweep of small models runs 10-50x slower than on an idle machine. Small work gains nothing from the pool anyway, so
the default here is one thread per job for small models (a sample of at most SMALL_SAMPLE values, e.g. the analytic
mixtures and the 8x8 digits nets) and the usable cores shared out between the jobs otherwise. Several jobs never
oversubscribe the cores: jobs x threads <= usable cores (os.sched_getaffinity, which honours taskset and cgroup
cpusets). `set_torch_threads` is the only place that changes torch's thread count.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["SMALL_SAMPLE", "Parallelism", "usable_cores", "machine_load", "choose", "set_torch_threads"]

SMALL_SAMPLE = 1024  # values per sample at or below which a model's evaluations run on one thread per job
JOBS_ENV = "SCOREBENCH_JOBS"  # the default --jobs where set (the test suite sets 1: its spies live in one process)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on every platform
        return max(1, os.cpu_count() or 1)


def machine_load() -> float | None:
    """The 1-minute load average (None where the platform has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def set_torch_threads(threads: int) -> None:
    """Set torch's intra-op threads (the one place in scorebench that does)."""
    if threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {threads}")
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Parallelism:
    jobs: int  # cells sampled at once, each in its own worker process (1: in the main process)
    threads: int  # torch intra-op threads of each job
    cores: int  # usable cores
    reason: str  # why: recorded in env.json

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose(
    *,
    device_type: str = "cpu",
    world: int = 1,
    jobs: int | None = None,
    threads: int | None = None,
    cells: int | None = None,
    sample_size: int = 0,
    cores: int | None = None,
    memory_jobs: int | None = None,
) -> Parallelism:
    """Jobs and threads for a run; `jobs` / `threads` are the user's (`--jobs`, `--threads`), None for the default.

    Jobs: 1 on a GPU and under torchrun (`world` > 1); on the CPU the user's, else as many as the usable cores allow
    (at most one per cell to do, `cells`, and at most `memory_jobs`, the jobs the host memory holds). Threads: the
    user's, else 1 for small models (`sample_size`, the largest model's values per sample, <= SMALL_SAMPLE), else the
    cores left to each job (shared among torchrun's local processes). ValueError when the user's jobs x threads
    exceed the usable cores."""
    cores = cores or usable_cores()
    small = sample_size <= SMALL_SAMPLE
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs must be a positive integer, got {jobs}")
    if device_type != "cpu" or world > 1:
        why = "torchrun shards the cells' samples" if world > 1 else f"one process drives the {device_type} device"
        if jobs not in (None, 1):
            why += f" (--jobs {jobs} ignored)"
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world)) if world > 1 else 1
        n = threads or (1 if small else max(1, cores // max(1, local)))
        return Parallelism(1, n, cores, f"1 job: {why}; {_threads_why(threads, small, n)}")
    if jobs is not None:
        jobs_why = f"{jobs} job(s) (--jobs)"
    elif os.environ.get(JOBS_ENV):
        jobs = _env_jobs()
        jobs_why = f"{jobs} job(s) ({JOBS_ENV})"
    else:
        jobs = max(1, cores // threads) if threads else cores
        cap = f"{cores} usable cores" + (f" / {threads} threads" if threads else "")
        if cells is not None and cells < jobs:
            jobs, cap = max(1, cells), f"{cells} cell(s) to do"
        if memory_jobs is not None and memory_jobs < jobs:
            jobs, cap = max(1, memory_jobs), "host memory"
        jobs_why = f"{jobs} job(s) (default, limited by {cap})"
    if threads is not None and jobs > 1 and jobs * threads > cores:
        raise ValueError(f"{jobs} jobs x --threads {threads} exceeds the {cores} usable cores: lower one of them")
    n = threads or (1 if small else max(1, cores // jobs))
    return Parallelism(jobs, n, cores, f"{jobs_why}; {_threads_why(threads, small, n)}")


def _env_jobs() -> int:
    text = os.environ[JOBS_ENV]
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"{JOBS_ENV}={text!r} is not a positive integer")
    return int(text)


def _threads_why(given: int | None, small: bool, n: int) -> str:
    if given:
        return f"{n} thread(s) per job (--threads)"
    if small:
        return f"1 thread per job (samples of at most {SMALL_SAMPLE} values: the thread pool would only wait)"
    return f"{n} thread(s) per job (the usable cores shared among the jobs)"
