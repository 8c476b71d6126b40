"""The dtype Test's local models generate in (`test.dtype`, recipe/providers/local/server.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import requests

from recipe.providers.cache import request_key
from recipe.providers.local.server import TransformersServer, native_bfloat16, served_dtype
from recipe.providers.model_client import ModelClient, ModelSpec

from .subprocesses import limit


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_auto_is_bfloat16_only_where_the_device_computes_it() -> None:
    native = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    assert native_bfloat16("cpu") is native
    assert served_dtype("auto", "cpu") == ("bfloat16" if native else None)
    assert served_dtype("auto", "mps") is None  # no way to tell: the weights' own
    assert served_dtype("weights", "cpu") is None
    assert served_dtype("float32", "cpu") == "float32" and served_dtype("bfloat16", "cpu") == "bfloat16"


def test_answers_in_another_dtype_are_cached_apart() -> None:
    """A model served in bfloat16 answers a little differently: its answers never stand in for the
    weights' own (and the weights' own keep the keys they had before the dtype existed)."""
    spec = ModelSpec("local-transformers", "tuned", "chat", "raw", "train:0123")
    sampling = {"max_tokens": 8, "temperature": 0.0}
    own = ModelClient(None, None, spec, sampling=sampling, ledger=None)  # type: ignore[arg-type]
    halved = ModelClient(None, None, replace(spec, dtype="bfloat16"), sampling=sampling, ledger=None)  # type: ignore[arg-type]
    body = own.body([{"role": "user", "content": "Hi"}])
    assert body == halved.body([{"role": "user", "content": "Hi"}])
    assert own.key(body) != halved.key(body)
    # The weights' own keep the keys cached before the dtype existed.
    before = {"provider": "local-transformers", "api": "chat", "body": body, "weights": "train:0123"}
    assert own.key(body) == request_key(before)


@pytest.mark.slow  # the tiny model behind a real transformers server: 20-40 s
def test_transformers_serve_loads_the_weights_in_the_dtype_asked(tiny_model_dir: Path) -> None:
    with TransformersServer(tiny_model_dir, served_name="tiny", dtype="bfloat16", batching=True) as server:
        assert server.process is not None
        command = psutil.Process(server.process.pid).cmdline()
        assert command[command.index("--dtype") + 1] == "bfloat16"
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}
        answer = requests.post(f"{server.base_url}/chat/completions", json=body, timeout=limit(300))
        assert answer.status_code == 200, answer.text
    with TransformersServer(tiny_model_dir) as server:  # unset: the weights' own, no flag
        assert server.process is not None and "--dtype" not in psutil.Process(server.process.pid).cmdline()
