"""How many threads each process of a run may use: torch's intra-op pool in the trainer and in
`transformers serve`, llama.cpp's threads in its server.

Left alone, each of them takes every core. One run uses them one at a time (the teacher's server,
then the trainer, then Test's servers one after another), so that is right; but a parallel sweep
runs several jobs at once, and on two cores two jobs' servers and trainers fight for them: a
300-token forward took 9.55 s with 2 threads against 2.35 s with 1 beside another job. So the
root key `threads` sets the count (exported as OMP_NUM_THREADS, which torch and every child we
start read); left null, a job of a parallel sweep gets its share of the cores (cores // jobs at
once, from the launcher's `n_jobs`), and a single run keeps whatever OMP_NUM_THREADS says (every
core when unset).
"""

from __future__ import annotations

import os
import sys

from recipe.errors import RecipeError


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def share(configured: int | None, jobs: int, available: int) -> int | None:
    """The thread count to export: `configured` when set; else each of `jobs` parallel jobs' share
    of `available` cores (at least 1); None for a single job (leave the environment as it is)."""
    if configured is not None:
        if configured < 1:
            raise RecipeError(f"threads={configured}: must be at least 1 (or null: shared out by the jobs at once)")
        return configured
    if jobs <= 1:
        return None
    return max(1, available // jobs)


def apply(count: int) -> None:
    """Use `count` threads here and in every child started from now on."""
    os.environ["OMP_NUM_THREADS"] = str(count)
    torch = sys.modules.get("torch")  # already imported: its pool was sized at import
    if torch is not None:
        torch.set_num_threads(count)
    # numpy's BLAS (OpenBLAS) sized its pool when numpy was imported, before this, and does not read
    # the variable again: its matrix products spun two threads on a core another process was using
    # (a sweep's comparisons ran ~10x slower beside a training than alone).
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=count)


def current() -> int:
    """The threads a process we start should use: OMP_NUM_THREADS when set, else every core."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else cores()
