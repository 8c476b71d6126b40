"""Servers we start bind where we say and load what we name, whatever our environment holds."""

from __future__ import annotations

import socket
from pathlib import Path

import psutil
import pytest
import requests

from recipe.providers.local.server import LlamaCppServer, TransformersServer, child_env, embedded_gguf

# Variables a shell, a PaaS or a careless profile may hold, each of which moved or broke a server.
HOSTILE = {
    "HOST": "0.0.0.0",
    "API_KEY": "a-key-our-client-does-not-send",
    "CONFIG_FILE": "/nonexistent/llama-config.json",
    "MODEL": "/nonexistent/model.gguf",
    "N_CTX": "7",
    "PET_NPROC_PER_NODE": "64",
    "TOGETHER_API_KEY": "sk-never-handed-to-a-child",
}


@pytest.fixture
def hostile_env(monkeypatch) -> socket.socket:
    """HOSTILE in the environment, and PORT naming a port that is taken (held by the test)."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    for name, value in {**HOSTILE, "PORT": str(busy.getsockname()[1])}.items():
        monkeypatch.setenv(name, value)
    yield busy
    busy.close()


def listening(pid: int) -> set[tuple[str, int]]:
    """The (address, port) pairs a process and its children listen on."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    found = set()
    for proc in procs:
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                found.add((conn.laddr.ip, conn.laddr.port))
    return found


def test_the_child_environment_keeps_paths_and_drops_settings(hostile_env) -> None:
    env = child_env(OMP_NUM_THREADS="1")
    assert not set(HOSTILE) & set(env) and "PORT" not in env
    assert env["PATH"] and env["OMP_NUM_THREADS"] == "1"


def test_the_teacher_server_binds_loopback_on_our_port(hostile_env) -> None:
    with LlamaCppServer(embedded_gguf(), "teacher", context_length=512) as server:
        assert server.process is not None
        assert listening(server.process.pid) == {("127.0.0.1", server.port)}
        answer = requests.post(
            f"{server.base_url}/completions", json={"model": "teacher", "prompt": "Hi", "max_tokens": 2}, timeout=120
        )
        assert answer.status_code == 200, answer.text  # no API_KEY asked of us, the model we named loaded


@pytest.mark.slow  # the tiny model and a transformers server: 20-40 s
def test_transformers_serve_binds_loopback_on_our_port(hostile_env, tiny_model_dir: Path) -> None:
    with TransformersServer(tiny_model_dir, served_name="tiny") as server:
        assert server.process is not None
        assert listening(server.process.pid) == {("127.0.0.1", server.port)}
