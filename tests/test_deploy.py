"""Deploy: Together endpoints against the fake server; a local deployment for real."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recipe.errors import RecipeError
from recipe.runner import run

from .conftest import NO_DISTILL, RECIPE, TOGETHER_KEY, read_until
from .fake_together import FakeTogether
from .subprocesses import limit, processes

KEY = TOGETHER_KEY


def together(make_cfg, *overrides: str, deploy: str = "together_dedicated"):
    return make_cfg(
        "stages=[mix,train,deploy]",
        "train=together_lora",
        "train.poll_s=0.01",
        "train.progress=false",
        f"deploy={deploy}",
        "deploy.poll_s=0.01",
        "deploy.progress=false",
        "mix.progress=false",
        *overrides,
        base=NO_DISTILL,
    )


def test_dedicated_endpoint_is_created_once_and_answers(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    record = run(together(make_cfg), run_dir=tmp_path)
    manifest = json.loads((Path(record["stages"]["deploy"]["artifact"]) / "manifest.json").read_text())
    (create,) = fake.posts("/v1/endpoints")
    assert create.body["hardware"] == "1x_nvidia_h100_80gb_sxm"  # the cheapest *available* one
    assert create.body["inactive_timeout"] == 15 and create.body["autoscaling"] == {
        "min_replicas": 1,
        "max_replicas": 1,
    }
    assert (
        create.body["model"]
        == json.loads((Path(record["stages"]["train"]["artifact"]) / "manifest.json").read_text())["model_output_name"]
    )
    assert manifest["state"] == "STARTED" and manifest["endpoint_id"] in fake.endpoints
    assert manifest["smoke"]["answer"].startswith("answer 1 to: What is the capital")
    assert manifest["usd_per_hour"] == 5.42 * 60 / 100  # the hardware's listed 5.42 cents per minute
    # Queried through the endpoint, in the format the model was trained in (the seed's [INST] text).
    smoke = fake.posts("/v1/completions")[-1].body
    assert smoke["model"] == fake.endpoints[manifest["endpoint_id"]]["name"]
    assert smoke["prompt"] == "[INST] What is the capital of Australia? [/INST]" and smoke["stop"] == ["[INST]"]
    assert manifest["deployment"]["format"] == {"kind": "text", "template": "llama2_inst"}
    # Re-run: re-attaches, no second endpoint.
    run(together(make_cfg), run_dir=tmp_path)
    assert len(fake.posts("/v1/endpoints")) == 1
    # Stop, start, delete the recorded endpoint.
    stopped = run(together(make_cfg, "deploy.action=stop"), run_dir=tmp_path)
    assert (
        json.loads((Path(stopped["stages"]["deploy"]["artifact"]) / "manifest.json").read_text())["state"] == "STOPPED"
    )
    run(together(make_cfg, "deploy.action=start"), run_dir=tmp_path)
    assert fake.endpoints[manifest["endpoint_id"]]["state"] == "STARTED"
    run(together(make_cfg, "deploy.action=delete"), run_dir=tmp_path)
    assert fake.endpoints == {}
    with pytest.raises(RecipeError, match=r"deploy\.action=stop: no Together endpoint is recorded"):
        run(together(make_cfg, "deploy.action=stop"), run_dir=tmp_path)
    assert len(fake.posts("/v1/endpoints")) == 1


def test_serverless_queries_the_fine_tuned_model(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    record = run(together(make_cfg, deploy="together_serverless"), run_dir=tmp_path)
    manifest = json.loads((Path(record["stages"]["deploy"]["artifact"]) / "manifest.json").read_text())
    assert manifest["mode"] == "serverless" and not fake.posts("/v1/endpoints")
    assert fake.posts("/v1/completions")[-1].body["model"] == manifest["deployment"]["model"]
    # A model trained on `messages` is asked through chat, Together applying its template.
    record = run(together(make_cfg, "train.model=org/chat-model", deploy="together_serverless"), run_dir=tmp_path)
    manifest = json.loads((Path(record["stages"]["deploy"]["artifact"]) / "manifest.json").read_text())
    assert fake.posts("/v1/chat/completions")[-1].body["model"] == manifest["deployment"]["model"]


def test_local_deploy_needs_a_local_model(make_cfg, tmp_path: Path, fake: FakeTogether) -> None:
    cfg = make_cfg(
        "stages=[mix,train,deploy]",
        "train=together_lora",
        "train.poll_s=0.01",
        "train.progress=false",
        "deploy=local",
        "mix.progress=false",
        base=NO_DISTILL,
    )
    with pytest.raises(RecipeError, match="deploy=local needs a locally trained model"):
        run(cfg, run_dir=tmp_path)


def serve_processes() -> set[int]:
    """`transformers serve` processes started by this test worker."""
    return set(processes(b"serve", b"transformers"))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["int", "term", "kill"])
def test_local_deployment_serves_the_openai_client_until_stopped(
    tmp_path: Path, tiny_model_dir: Path, spawn, signum: int
) -> None:
    """Serving in the foreground ends cleanly on Ctrl-C or SIGTERM (the stage completes); kill -9
    of `recipe` takes the server with it (PR_SET_PDEATHSIG)."""
    openai = pytest.importorskip("openai")
    before = serve_processes()
    proc = spawn(
        [
            RECIPE,
            "stages=[mix,train,deploy]",
            "mix=samples",
            "mix.progress=false",
            f"train.model={tiny_model_dir}",
            "train.max_steps=2",
            "train.args.max_seq_length=128",
            "train.progress=false",
            "deploy.foreground=true",
            "deploy.smoke_max_tokens=4",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    said = read_until(proc, r"serving at http://127\.0\.0\.1:\d+\S* until Ctrl-C", timeout_s=600)
    url = re.search(r"serving at (http://127\.0\.0\.1:\d+\S*) until Ctrl-C", said).group(1)
    model = re.search(r"^(\S+) \(\w+\) answered the smoke query", said, re.MULTILINE).group(1)
    assert re.fullmatch(r"recipe-[0-9a-f]{8}", model), model  # a readable name, not a filesystem path
    client = openai.OpenAI(base_url=url, api_key="none")
    completion = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello!"}], max_tokens=5
    )
    assert completion.choices[0].message.content is not None and completion.usage.completion_tokens > 0
    chat = subprocess.run(
        [str(Path(sys.executable).parent / "recipe-chat"), "--url", url, "--model", model, "--max-tokens", "5", "Hi"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert chat.returncode == 0 and chat.stdout.strip()
    proc.send_signal(signum)
    assert proc.wait(timeout=limit(60)) == (-signal.SIGKILL if signum == signal.SIGKILL else 0)
    deadline = time.monotonic() + limit(15)
    while serve_processes() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not serve_processes() - before, "the server outlived its recipe"
    if signum != signal.SIGKILL:
        record = json.loads(sorted((tmp_path / "outputs" / "runs").glob("*/*/run.json"))[-1].read_text())
        assert record["stages"]["deploy"]["status"] == "ok"


def test_recipe_chat_sends_the_together_key_to_together_only(tmp_path: Path) -> None:
    chat = str(Path(sys.executable).parent / "recipe-chat")

    def ask(url: str, *extra: str, **env: str) -> None:
        environment = {**os.environ, "TOGETHER_API_KEY": KEY, "TOGETHER_BASE_URL": "http://127.0.0.1:9/v1", **env}
        subprocess.run([chat, "--url", url, "--model", "m", *extra, "Hi"], env=environment, check=True, timeout=60)

    with FakeTogether(api_key=None, validate=False) as other:
        ask(other.base_url)  # any other host: no key
        ask(other.base_url, "--key-env", "MY_SERVER_KEY", MY_SERVER_KEY="paired-key")  # a key the user paired
        ask(other.base_url, TOGETHER_BASE_URL=other.base_url)  # the Together base URL itself: its key
        sent = [r.headers.get("Authorization") for r in other.posts("/v1/chat/completions")]
    assert sent == [None, "Bearer paired-key", f"Bearer {KEY}"]
