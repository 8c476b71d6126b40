"""How Test's local models generate: the dtype (`test.dtype`) and, for a suite scored on its answers'
first line, the ids that end an answer there (recipe/providers/local/server.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import requests

from recipe.providers.cache import request_key
from recipe.providers.local.server import (
    TransformersServer,
    line_end_fields,
    line_end_ids,
    native_bfloat16,
    served_dtype,
)
from recipe.providers.model_client import ModelClient, ModelSpec, transformers_sampling

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


def test_an_answer_scored_on_its_first_line_ends_at_any_token_holding_a_newline(tiny_model_dir: Path) -> None:
    """The ids are the model's own end and every token whose text holds a newline, and no other;
    vLLM gets OpenAI's `stop`; a temperature above 0 adds its sampling to the ids, never drops them."""
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = line_end_ids(tiny_model_dir)
    newline = {i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i])}
    assert set(ids) == newline | {tokenizer.eos_token_id}
    assert tokenizer.encode("\n", add_special_tokens=False)[0] in ids and len(newline) > 100  # "\n", "\n\n", " \n", ...
    assert tokenizer.encode("Paris", add_special_tokens=False)[0] not in ids
    assert line_end_fields(tiny_model_dir, "vllm") == {"stop": ["\n"]}
    fields = line_end_fields(tiny_model_dir, "transformers")
    assert json.loads(fields["generation_config"]) == {"eos_token_id": ids}
    sampled = json.loads(transformers_sampling({**fields, "temperature": 0.7, "top_p": 0.9})["generation_config"])
    assert sampled == {"eos_token_id": ids, "do_sample": True, "temperature": 0.7, "top_p": 0.9}


@pytest.mark.slow  # the tiny model behind a real transformers server: 20-40 s
def test_a_batching_transformers_server_takes_the_dtype_and_the_end_ids_asked(tiny_model_dir: Path) -> None:
    """The dtype is the server's flag; the end ids are each request's own, which continuous batching
    honours (it ignores OpenAI's `stop`): with every id an end, an answer is one token long."""
    with TransformersServer(tiny_model_dir, served_name="tiny", dtype="bfloat16", batching=True) as server:
        assert server.process is not None
        command = psutil.Process(server.process.pid).cmdline()
        assert command[command.index("--dtype") + 1] == "bfloat16"
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "temperature": 0}
        answer = requests.post(f"{server.base_url}/chat/completions", json=body, timeout=limit(300))
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == 6  # the tiny model never ends on its own
        vocabulary = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
        ended = {**body, "generation_config": json.dumps({"eos_token_id": list(range(vocabulary))})}
        answer = requests.post(f"{server.base_url}/chat/completions", json=ended, timeout=limit(300))
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == 1
        assert answer.json()["choices"][0]["finish_reason"] == "stop"
    with TransformersServer(tiny_model_dir) as server:  # unset: the weights' own, no flag
        assert server.process is not None and "--dtype" not in psutil.Process(server.process.pid).cmdline()
