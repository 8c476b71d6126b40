"""Deploy: the recipe's Step IV. Serve the tuned model and query it.

What it supports:
- `deploy=local`: the merged model from local training behind an OpenAI-compatible server on
  127.0.0.1 (`transformers serve` on CPU, vLLM on GPU when installed), started as a managed process
  with a readiness check; a smoke query; the URL, model name and ready-to-paste curl and Python
  snippets; `deploy.foreground=true` keeps serving until Ctrl-C and shuts down cleanly;
- `deploy=together_dedicated`: a dedicated endpoint for the Together fine-tune (hardware from config
  or the cheapest available), `inactive_timeout` by default so a forgotten endpoint stops costing
  money, waited for with progress; its id recorded before waiting, so a re-run re-attaches and
  never creates a second one; `deploy.action=stop|start|delete`;
- `deploy=together_serverless`: query the fine-tuned model through the inference API.
The manifest records URL, model, endpoint id, hardware, state, the smoke query and its latency.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from recipe.providers.http import Client
from recipe.providers.local.server import model_server, serving_engine
from recipe.providers.together import cheapest_hardware, wait_endpoint_started
from recipe.stages import Stage, StageError
from recipe.store import Artifact

log = logging.getLogger(__name__)
ENDPOINTS = "together-endpoints"


def smoke(client: Client, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One chat request: the answer and how long it took."""
    started = time.monotonic()
    response = client.post_json(
        "chat/completions",
        {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens},
    )
    answer = (response["choices"][0]["message"]["content"] or "").strip()
    return {"prompt": prompt, "answer": answer, "latency_s": round(time.monotonic() - started, 3)}


def snippets(url: str, model: str, key_env: str | None) -> str:
    auth = f' -H "Authorization: Bearer ${key_env}"' if key_env else ""
    key = f'os.environ["{key_env}"]' if key_env else '"none"'
    return (
        f"  curl {url}/chat/completions -H 'Content-Type: application/json'{auth} \\\n"
        f"    -d '{json.dumps({'model': model, 'messages': [{'role': 'user', 'content': 'Hello!'}]})}'\n\n"
        f"  import os; from openai import OpenAI\n"
        f"  client = OpenAI(base_url={url!r}, api_key={key})\n"
        f"  print(client.chat.completions.create(model={model!r}, "
        f"messages=[{{'role': 'user', 'content': 'Hello!'}}]).choices[0].message.content)\n"
        f"  # or: recipe-chat 'Hello!'"
    )


class LocalDeploy(Stage):
    """Serve the merged model locally; the artifact records the smoke answer."""

    name = "deploy"
    version = "1"
    reusable = False  # a server answering now is not a file: deploy every time
    execution_keys = frozenset({"engine", "host", "port", "device", "foreground", "startup_timeout_s"})

    def upstream(self) -> tuple[str, ...]:
        return ("train",)

    def plan(self, inputs: dict[str, Artifact | None]) -> str:
        return f"serve the trained model on {self.config.host} with {self._engine()}, then a smoke query"

    def _engine(self) -> str:
        return serving_engine(self.config.engine.value)

    def run(self, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
        c = self.config
        train = inputs["train"].manifest
        if train.get("provider") != "local":
            raise StageError(
                "deploy=local needs a locally trained model (train=local_lora|local_full); "
                "for a Together fine-tune use deploy=together_dedicated or together_serverless"
            )
        model_dir = inputs["train"].path / train["merged"]
        engine = self._engine()
        options = {"host": c.host, "port": c.port, "startup_timeout_s": c.startup_timeout_s}
        with model_server(model_dir, engine, c.device, **options) as server:
            model = server.model  # type: ignore[attr-defined]
            client = Client(server.base_url, None, max_retries=2, timeout_s=600)
            answer = smoke(client, model, c.smoke_prompt, c.smoke_max_tokens)
            client.close()
            print(
                f"\nserving {model}\n  at {server.base_url} ({engine})\n  smoke: {answer['prompt']!r} -> "
                f"{answer['answer']!r} in {answer['latency_s']} s\n\n{snippets(server.base_url, model, None)}\n"
            )
            manifest = {
                "provider": "local",
                "engine": engine,
                "url": server.base_url,
                "model": model,
                "model_dir": str(model_dir),
                "smoke": answer,
            }
            if c.foreground:
                print("serving until Ctrl-C ...", flush=True)
                try:
                    server.wait()
                except KeyboardInterrupt:
                    print("\nstopping the server", flush=True)
        manifest["state"] = "stopped"
        return manifest


class TogetherDeploy(Stage):
    """A dedicated Together endpoint (created once, re-attached), or the serverless API."""

    name = "deploy"
    version = "1"
    reusable = False  # the endpoint's state changes; each run reports it anew
    execution_keys = frozenset({"action", "poll_s", "timeout_s", "max_retries", "retry_backoff_s", "progress"})

    def upstream(self) -> tuple[str, ...]:
        return ("train",)

    def plan(self, inputs: dict[str, Artifact | None]) -> str:
        c = self.config
        where = f"a dedicated endpoint ({c.hardware or 'cheapest hardware'})" if c.dedicated else "the serverless API"
        return f"{c.action.value} the fine-tuned model on {where}, then a smoke query"

    def run(self, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
        c = self.config
        train = inputs["train"].manifest
        model = train.get("model_output_name")
        if train.get("provider") != "together" or not model:
            raise StageError("deploy=together_* needs a Together fine-tune (train=together_lora|together_full)")
        client = self.together_client()
        base_url = client.base_url
        try:
            if not c.dedicated:
                answer = smoke(client, model, c.smoke_prompt, c.smoke_max_tokens)
                print(
                    f"\nserverless {model}: {answer['answer']!r} in {answer['latency_s']} s\n\n"
                    f"{snippets(base_url, model, 'TOGETHER_API_KEY')}\n"
                )
                return {"provider": "together", "mode": "serverless", "url": base_url, "model": model, "smoke": answer}
            return self._dedicated(client, base_url, model)
        finally:
            client.close()

    def _dedicated(self, client: Client, base_url: str, model: str) -> dict[str, Any]:
        assert self.store is not None
        c = self.config
        identity = {
            "base_url": base_url,
            "model": model,
            "hardware": c.hardware,
            "min": c.min_replicas,
            "max": c.max_replicas,
            "inactive_timeout": c.inactive_timeout,
        }
        record_key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
        record = self.store.record(ENDPOINTS, record_key)
        action = c.action.value
        if record is None or record.get("deleted"):
            if action != "ensure":
                raise StageError(f"deploy.action={action}: no Together endpoint is recorded for this config")
            hardware = c.hardware or cheapest_hardware(client, model)
            body = {
                "display_name": f"recipe {model.split('/')[-1]}"[:64],
                "model": model,
                "hardware": hardware,
                "autoscaling": {"min_replicas": c.min_replicas, "max_replicas": c.max_replicas},
                "state": "STARTED",
            }
            if c.inactive_timeout is not None:
                body["inactive_timeout"] = c.inactive_timeout
            endpoint = client.post_json("endpoints", body)
            self.store.put_record(
                ENDPOINTS,
                record_key,
                {"id": endpoint["id"], "name": endpoint["name"], "hardware": hardware, "created": time.time()},
            )
            log.info("created Together endpoint %s on %s", endpoint["id"], hardware)
            record = self.store.record(ENDPOINTS, record_key)
        assert record is not None
        endpoint_id = record["id"]
        if action == "delete":
            client.request("DELETE", f"endpoints/{endpoint_id}")
            self.store.put_record(ENDPOINTS, record_key, {**record, "deleted": True})
            return {"provider": "together", "endpoint_id": endpoint_id, "state": "DELETED", "model": model}
        if action in ("stop", "start"):
            state = "STOPPED" if action == "stop" else "STARTED"
            endpoint = client.request("PATCH", f"endpoints/{endpoint_id}", json={"state": state}).json()
            if action == "stop":
                return {
                    "provider": "together",
                    "endpoint_id": endpoint_id,
                    "state": endpoint.get("state"),
                    "model": model,
                }
        endpoint = client.get_json(f"endpoints/{endpoint_id}")
        if endpoint.get("state") == "STOPPED" and action == "ensure":
            endpoint = client.request("PATCH", f"endpoints/{endpoint_id}", json={"state": "STARTED"}).json()
        endpoint = wait_endpoint_started(client, endpoint_id, c.poll_s, c.progress)
        answer = smoke(client, endpoint["name"], c.smoke_prompt, c.smoke_max_tokens)
        print(
            f"\nendpoint {endpoint_id} ({endpoint['name']}) on {endpoint.get('hardware')}: {answer['answer']!r} in "
            f"{answer['latency_s']} s; it stops after {c.inactive_timeout} idle minutes "
            f"(deploy.action=stop|delete to stop paying now)\n\n{snippets(client.base_url, endpoint['name'], 'TOGETHER_API_KEY')}\n"
        )
        return {
            "provider": "together",
            "mode": "dedicated",
            "url": client.base_url,
            "endpoint_id": endpoint_id,
            "model": endpoint["name"],
            "hardware": endpoint.get("hardware"),
            "state": endpoint.get("state"),
            "inactive_timeout": c.inactive_timeout,
            "smoke": answer,
        }
