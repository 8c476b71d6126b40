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

import logging
import os
import re

from recipe.artifacts import SERVING_RECORDS, Deployment, Planned, PromptFormat, TrainedModel
from recipe.config import LocalDeployConfig, TogetherDeployConfig
from recipe.providers.http import Client
from recipe.providers.local.server import serving_engine
from recipe.providers.model_client import api_snippets
from recipe.providers.serving import DedicatedEndpoints, LocalServing, local_model, smoke_query
from recipe.stages import Output, Plan, Stage, StageError, Workspace, missing_extra
from recipe.store import Artifact, ArtifactStore

log = logging.getLogger(__name__)
ENDPOINTS = "together-endpoints"


# What each deploy option serves, and what to choose instead when the train artifact is another kind.
NEEDS_PROVIDER = {
    "local": "deploy=local needs a locally trained model (train=local_lora|local_full); "
    "for a Together fine-tune use deploy=together_dedicated or together_serverless",
    "together": "deploy=together_* needs a Together fine-tune (train=together_lora|together_full); "
    "for a locally trained model use deploy=local",
}


def _trained_provider(inputs: dict[str, Artifact | None], upstream: dict[str, Planned]) -> str | None:
    """Where the model to deploy is (local | together): from the train artifact, else Train's plan."""
    if inputs.get("train") is not None:
        return TrainedModel.load(inputs["train"]).provider  # type: ignore[arg-type]
    planned = upstream.get("train")
    return planned.provider if planned else None


def check_provider(provider: str | None, wanted: str) -> None:
    """A dry run and a run refuse the same mismatch, with the same words."""
    if provider is not None and provider != wanted:
        raise StageError(NEEDS_PROVIDER[wanted])


def _user(prompt: str) -> dict[str, str]:
    return {"role": "user", "content": prompt}


def snippets(url: str, model: str, key_env: str | None, fmt: PromptFormat) -> str:
    """How to ask the deployment from elsewhere (the playground's `<>` panel says the same)."""
    said = (
        [f"# trained in {fmt.describe()}: prompted through raw completions in that format"]
        if fmt.kind == "text"
        else []
    )
    lines = [*said, *api_snippets(url, model, key_env, fmt, [_user("Hello!")]), "# or: recipe-chat 'Hello!'"]
    return "\n".join(f"  {line}" if line else "" for line in lines)


class LocalDeploy(Stage):
    """Serve the merged model locally; the artifact records the smoke answer."""

    name = "deploy"
    version = "1"
    reusable = False  # a server answering now is not a file: deploy every time
    schema = LocalDeployConfig

    def upstream(self) -> tuple[str, ...]:
        return ("train",)

    def plan(self, inputs: dict[str, Artifact | None], upstream: dict[str, Planned]) -> Plan:
        check_provider(_trained_provider(inputs, upstream), "local")
        missing = missing_extra("deploy=local")
        engine = self.config.engine.value if missing else serving_engine(self.config.engine.value)
        return Plan(
            f"serve the trained model on {self.config.host} ({engine}), then a smoke query", usd=0.0, needs=missing
        )

    def run(self, inputs: dict[str, Artifact], workspace: Workspace) -> Output:
        c = self.config
        trained = TrainedModel.load(inputs["train"])
        check_provider(trained.provider, "local")
        serving = LocalServing(c.engine.value, c.device, c.host, c.port, c.startup_timeout_s)
        # A name people can read and clients can send: the experiment and the trained model's fingerprint.
        experiment = re.sub(r"[^A-Za-z0-9._-]+", "-", str(self.root.notes.get("experiment") or "recipe"))
        name = f"{experiment}-{trained.weights.rsplit(':', 1)[-1][:8]}" if trained.weights else None
        with local_model(
            trained.local_dir, serving, which="tuned", weights=trained.weights, fmt=trained.format, served_name=name
        ) as m:
            answer = smoke_query(m.client, m.model, c.smoke_prompt, c.smoke_max_tokens, m.format)
            engine = m.provider.removeprefix("local-")
            deployment = Deployment("local", m.url, m.model, model_dir=str(trained.local_dir), format=m.format)
            record = {"provider": "local", "engine": engine, "smoke": answer}
            print(
                f"\n{m.model} ({engine}) answered the smoke query: {answer['prompt']!r} -> {answer['answer']!r} in "
                f"{answer['latency_s']} s",
                flush=True,
            )
            if c.foreground:
                assert m.server is not None
                # While it serves, recipe-chat (and the playground) find it here instead of starting a copy.
                store, fingerprint = workspace.store, workspace.fingerprint
                store.put_record(SERVING_RECORDS, fingerprint, {**deployment.manifest(), "pid": os.getpid()})
                ask = snippets(m.url, m.model, None, m.format)
                print(f"serving at {m.url} until Ctrl-C; ask it like this:\n\n{ask}\n", flush=True)
                try:
                    m.server.wait()
                except KeyboardInterrupt:
                    print("\nstopping the server", flush=True)
                finally:
                    store.delete_record(SERVING_RECORDS, fingerprint)
            else:
                print(
                    f"the server stopped after the smoke query (deploy.foreground=false). To serve the model:\n"
                    f"  recipe 'stages=[deploy]' deploy.foreground=true\nthen ask it like this (the port is "
                    f"chosen when it starts; recipe-chat finds it by itself):\n\n"
                    f"{snippets(m.url, m.model, None, m.format)}\n"
                )
        return Output(deployment, {**record, "state": "stopped"})


class TogetherDeploy(Stage):
    """A dedicated Together endpoint (created once, re-attached), or the serverless API."""

    name = "deploy"
    version = "1"
    reusable = False  # the endpoint's state changes; each run reports it anew
    schema = TogetherDeployConfig

    def upstream(self) -> tuple[str, ...]:
        return ("train",)

    def uses_together(self) -> bool:
        return True

    def plan(self, inputs: dict[str, Artifact | None], upstream: dict[str, Planned]) -> Plan:
        c = self.config
        check_provider(_trained_provider(inputs, upstream), "together")
        if c.action.value in ("stop", "delete"):
            return Plan(f"{c.action.value} the endpoint recorded for this fine-tune", "stops its bill", usd=0.0)
        if not c.dedicated:  # one smoke query of smoke_max_tokens: well under a cent
            return Plan(
                "the fine-tuned model on the serverless API", f"one smoke query (≤{c.smoke_max_tokens} tokens)", usd=0.0
            )
        where = f"{c.action.value} a dedicated endpoint ({c.hardware or 'cheapest hardware'}), then a smoke query"
        if c.inactive_timeout is None:
            billing = "billed per minute while started, with no idle stop: until you stop it (deploy.action=stop)"
            if c.usd_per_hour is not None:
                billing += f"; ${c.usd_per_hour:g}/hour (deploy.usd_per_hour)"
            return Plan(where, billing)
        billing = f"billed per minute while started (stopped after {c.inactive_timeout} idle minutes)"
        if c.usd_per_hour is None:
            return Plan(where, billing + "; not priced offline (set deploy.usd_per_hour: the hardware's rate)")
        usd = round(c.usd_per_hour * c.inactive_timeout / 60, 2)
        return Plan(
            where,
            f"{billing}; at ${c.usd_per_hour:g}/hour (deploy.usd_per_hour): at least ${usd:.2f} for the "
            f"{c.inactive_timeout} idle minutes after the smoke query, plus start-up and any use",
            usd=usd,
            bound="at least",
        )

    def run(self, inputs: dict[str, Artifact], workspace: Workspace) -> Output:
        c = self.config
        trained = TrainedModel.load(inputs["train"])
        check_provider(trained.provider, "together")
        model, fmt = trained.model, trained.format
        client = self.together_client()
        url = client.base_url
        try:
            if not c.dedicated:
                answer = smoke_query(client, model, c.smoke_prompt, c.smoke_max_tokens, fmt)
                print(
                    f"\nserverless {model}: {answer['answer']!r} in {answer['latency_s']} s\n\n"
                    f"{snippets(url, model, 'TOGETHER_API_KEY', fmt)}\n"
                )
                deployment = Deployment("together", url, model, key_env="TOGETHER_API_KEY", format=fmt)
                return Output(deployment, {"provider": "together", "mode": "serverless", "smoke": answer})
            return self._dedicated(client, model, trained, workspace.store)
        finally:
            client.close()

    def _dedicated(self, client: Client, model: str, trained: TrainedModel, store: ArtifactStore) -> Output:
        c = self.config
        endpoints = DedicatedEndpoints(client, store, ENDPOINTS, c.poll_s, c.progress)
        identity = {
            "model": model,
            "hardware": c.hardware,
            "min": c.min_replicas,
            "max": c.max_replicas,
            "inactive_timeout": c.inactive_timeout,
        }
        key = endpoints.key(identity)
        record, current = endpoints.existing(key)
        action = c.action.value
        if current is None:
            gone = (
                f"the endpoint {record['id']} recorded for this config is gone (deleted outside recipe)"
                if record
                else ""
            )
            if action == "delete" and record is not None:
                print(f"{gone}: nothing to delete")
                return Output(
                    None, {"provider": "together", "endpoint_id": record["id"], "model": model, "state": "DELETED"}
                )
            if action != "ensure":
                raise StageError(
                    f"deploy.action={action}: {gone or 'no Together endpoint is recorded for this config'}"
                )
            if record is not None:
                print(f"{gone}; creating a new one")
            body = {
                "display_name": "",
                "model": model,
                "hardware": c.hardware,
                "autoscaling": {"min_replicas": c.min_replicas, "max_replicas": c.max_replicas},
                "state": "STARTED",
            }
            if c.inactive_timeout is not None:
                body["inactive_timeout"] = c.inactive_timeout
            record = endpoints.create(key, body)
        endpoint_id = record["id"]
        state = {"provider": "together", "endpoint_id": endpoint_id, "model": model}
        if action == "delete":
            endpoints.delete(key, record)
            return Output(None, {**state, "state": "DELETED"})
        if action == "stop":
            return Output(None, {**state, "state": endpoints.set_state(endpoint_id, "STOPPED").get("state")})
        if action == "start" or (current or {}).get("state") == "STOPPED":
            endpoints.set_state(endpoint_id, "STARTED")
        endpoint = endpoints.wait_started(endpoint_id, key)
        name = endpoint["name"]
        answer = smoke_query(client, name, c.smoke_prompt, c.smoke_max_tokens, trained.format)
        rate = endpoints.usd_per_hour(model, endpoint.get("hardware") or record["hardware"])
        print(
            f"\nendpoint {endpoint_id} ({name}) on {endpoint.get('hardware')}"
            f"{f' at ${rate:g}/hour' if rate is not None else ''}: {answer['answer']!r} in "
            f"{answer['latency_s']} s; it stops after {c.inactive_timeout} idle minutes "
            f"(deploy.action=stop|delete to stop paying now)\n\n"
            f"{snippets(client.base_url, name, 'TOGETHER_API_KEY', trained.format)}\n"
        )
        deployment = Deployment("together", client.base_url, name, key_env="TOGETHER_API_KEY", format=trained.format)
        return Output(
            deployment,
            {
                **state,
                "model": name,
                "mode": "dedicated",
                "hardware": endpoint.get("hardware"),
                "usd_per_hour": rate,  # Together's listed rate for that hardware (GET /hardware)
                "state": endpoint.get("state"),
                "inactive_timeout": c.inactive_timeout,
                "smoke": answer,
            },
        )
