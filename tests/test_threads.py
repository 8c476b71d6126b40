"""Threads per process (recipe/threads.py): the `threads` key, a parallel sweep's share of the
cores, and the local servers that are told the count."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from recipe import threads
from recipe.errors import RecipeError
from recipe.providers.local.server import LlamaCppServer, embedded_gguf

from .subprocesses import limit


def test_a_parallel_sweeps_jobs_share_the_cores_and_the_key_wins() -> None:
    assert threads.share(None, 1, 2) is None  # one run: the environment as it is (every core)
    assert threads.share(None, 2, 2) == 1 and threads.share(None, 3, 2) == 1 and threads.share(None, 2, 16) == 8
    assert threads.share(3, 2, 2) == 3  # the key, as set
    with pytest.raises(RecipeError, match="threads=0: must be at least 1"):
        threads.share(0, 1, 2)


def test_the_teacher_server_is_told_the_runs_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("llama_cpp")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    command = LlamaCppServer(embedded_gguf(), "teacher").command()
    assert command[command.index("--n_threads") + 1] == "1" and command[command.index("--n_threads_batch") + 1] == "1"
    monkeypatch.delenv("OMP_NUM_THREADS")
    command = LlamaCppServer(embedded_gguf(), "teacher").command()
    assert command[command.index("--n_threads") + 1] == str(threads.cores())


def test_apply_sizes_torch_and_the_children(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", ""))
    try:
        threads.apply(1)
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1" and threads.current() == 1
    finally:
        torch.set_num_threads(before)


def test_a_share_of_the_cores_holds_for_numpys_blas_loaded_before_it() -> None:
    """OpenBLAS sizes its pool when numpy is imported and never reads OMP_NUM_THREADS again."""
    script = (
        "import json, numpy\nfrom threadpoolctl import threadpool_info\nfrom recipe import threads\n"
        "blas = lambda: [p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas']\n"
        "before = blas()\nthreads.apply(1)\nprint(json.dumps([before, blas()]))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=limit(120), check=True
    )
    before, after = json.loads(done.stdout)
    assert after == [1], done.stdout
    if threads.cores() > 1:  # more than one thread at import (every core the library counts): capped above
        assert before and before[0] > 1, done.stdout
