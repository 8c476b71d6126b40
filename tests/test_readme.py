"""The README's commands as a newcomer types them, in order, from a fresh directory, against the
loopback Hub and the fake Together API. The quick-start is tests/test_e2e.py; "Install as a tool"
is run on the core install in tests/test_install.py."""

from __future__ import annotations

import errno
import os
import socket
import sys
from pathlib import Path

import pytest

from .conftest import TOGETHER_KEY
from .fake_hub import FakeHub, publish_seed_data
from .fake_together import FakeTogether
from .readme import Rule, run_section, section

pytestmark = pytest.mark.slow
BIN = str(Path(sys.executable).parent)

TOGETHER_SKIPS = [
    Rule(r"^export TOGETHER_API_KEY=", "the test sets TOGETHER_API_KEY and TOGETHER_BASE_URL to the fake Together API"),
    Rule(
        r"^recipe experiment=llama2_7b_32k_instruct$",
        "the seed's 38K-example run: tests/test_seed.py runs this command with only sizes overridden",
    ),
]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return e.errno != errno.EADDRINUSE
    return True


def test_the_together_section_runs_as_written(tmp_path: Path) -> None:
    commands = section("Pointing at Together")
    assert any("distill=openai_compatible" in c for c in commands)
    if not port_free(8000):
        pytest.skip("the README's OpenAI-compatible example needs 127.0.0.1:8000, which is taken here")
    with (
        FakeTogether(api_key=TOGETHER_KEY) as together,
        FakeTogether(port=8000) as openai_compatible,  # `distill.teacher.base_url=http://127.0.0.1:8000/v1`
        FakeHub() as hub,
        FakeHub() as files,
    ):
        publish_seed_data(hub, files)
        env = {
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "TOGETHER_API_KEY": TOGETHER_KEY,
            "TOGETHER_BASE_URL": together.base_url,
            "HF_ENDPOINT": hub.endpoint,
            "HF_HOME": str(tmp_path / "hf-home"),
            "HYDRA_FULL_ERROR": "0",
        }
        env.pop("OPENAI_API_KEY", None)
        ran = run_section(commands, TOGETHER_SKIPS, tmp_path, env, timeout_s=600)
        assert together.posts("/v1/completions"), "the seed's Distill sent nothing"
        assert openai_compatible.posts("/v1/chat/completions"), "the OpenAI-compatible teacher was never asked"
        assert together.invalid == [] and openai_compatible.invalid == []
    assert not any("Traceback" in r.stderr for r in ran)
