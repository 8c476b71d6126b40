"""Train on Together: the recipe's Step II on the hosted service.

What it supports:
- the Together file check on the mixture (and eval split) before any request: a file that breaks a
  rule stops the stage with its line and rule;
- the upload the official SDKs do (302 + presigned PUT + preprocess; multipart above 5 GiB),
  streamed from disk with a byte progress bar, every step retried; a file whose sha256 was already
  uploaded to this base URL (recorded in the store) is not uploaded again;
- the fine-tune body shaped as the spec wants (LoRA or Full under `training_type`,
  `training_method` with `train_on_inputs`, `lr_scheduler`, W&B with the key from WANDB_API_KEY);
  `estimate-price` first: printed, recorded, held against `budget.max_usd`, optionally confirmed;
- never twice: the job id is recorded under the job's fingerprint before waiting; a re-run
  re-attaches to it; a failed or cancelled job is an error that says so, and only
  `train.relaunch=true` launches a new one; `train.cancel=true` cancels it;
- following the job: status and events polled with a growing interval, new events logged, a
  progress bar from the events' steps, transient poll failures survived; `train.wait=false`
  returns after creation and a later run picks the job up;
- artifact: manifest with file ids, job id, `model_output_name`, status, price estimate, billed
  `total_price`, token count, checkpoints; optional download of the merged model or adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm import tqdm

from recipe.data.filecheck import check_file
from recipe.providers.http import APIError, Client
from recipe.providers.together import (
    FINE_TUNE_DONE,
    cancel_fine_tune,
    create_fine_tune,
    download_fine_tune,
    estimate_price,
    fine_tune_checkpoints,
    fine_tune_events,
    get_fine_tune,
    upload_fine_tune_file,
)
from recipe.stages import Stage, StageError, StagePending
from recipe.store import Artifact, sha256_file

log = logging.getLogger(__name__)
FILES = "together-files"
JOBS = "together-fine-tunes"
MAX_POLL_S = 60.0
MAX_POLL_FAILURES = 10


class TogetherTrain(Stage):
    """Fine-tune on Together from the Mix artifact; the artifact describes the finished job."""

    name = "train"
    version = "1"
    execution_keys = frozenset(
        {
            "confirm",
            "relaunch",
            "cancel",
            "wait",
            "download",
            "poll_s",
            "timeout_s",
            "max_retries",
            "retry_backoff_s",
            "multipart_threshold_gb",
            "multipart_part_mb",
            "multipart_workers",
            "progress",
            "budget",
        }
    )

    def __init__(self, config: DictConfig, root: DictConfig) -> None:
        super().__init__(config, root)
        c = config
        if c.suffix is not None and len(c.suffix) > 40:
            raise StageError(f"train.suffix={c.suffix!r}: at most 40 characters ({len(c.suffix)} given)")
        if str(c.train_on_inputs).lower() not in ("auto", "true", "false"):
            raise StageError(f"train.train_on_inputs={c.train_on_inputs!r}: use auto, true or false")
        if c.batch_size != "max" and not str(c.batch_size).isdigit():
            raise StageError(f"train.batch_size={c.batch_size!r}: an integer, or max")
        for key in ("n_epochs", "n_checkpoints"):
            if c[key] < 1:
                raise StageError(f"train.{key}={c[key]}: must be at least 1")
        if root.get("mixture") is None:
            raise StageError("train needs the mix stage's config (mixture=...)")
        self._sha_by_file_id: dict[str, str] = {}  # uploaded file id -> content sha256

    def upstream(self) -> tuple[str, ...]:
        return ("mix",)

    # ---- the request ------------------------------------------------------------------------
    def body(self, training_file: str, validation_file: str | None) -> dict[str, Any]:
        """The POST /fine-tunes body, every hyperparameter from config, shaped as the spec wants."""
        c = self.config
        if c.training_type.value == "lora":
            training_type: dict[str, Any] = {
                "type": "Lora",
                "lora_r": c.lora.r,
                "lora_alpha": c.lora.alpha,
                "lora_dropout": c.lora.dropout,
                "lora_trainable_modules": c.lora.trainable_modules,
            }
        else:
            training_type = {"type": "Full"}
        train_on_inputs: bool | str = {"true": True, "false": False}.get(str(c.train_on_inputs).lower(), "auto")
        scheduler_args: dict[str, Any] = {"min_lr_ratio": c.lr_scheduler.min_lr_ratio}
        if c.lr_scheduler.type.value == "cosine":
            scheduler_args["num_cycles"] = c.lr_scheduler.num_cycles
        body: dict[str, Any] = {
            "training_file": training_file,
            "model": c.model,
            "training_type": training_type,
            "training_method": {"method": "sft", "train_on_inputs": train_on_inputs},
            "lr_scheduler": {"lr_scheduler_type": c.lr_scheduler.type.value, "lr_scheduler_args": scheduler_args},
            "n_epochs": c.n_epochs,
            "n_checkpoints": c.n_checkpoints,
            "n_evals": c.n_evals,
            "batch_size": "max" if c.batch_size == "max" else int(c.batch_size),
            "learning_rate": c.learning_rate,
            "warmup_ratio": c.warmup_ratio,
            "max_grad_norm": c.max_grad_norm,
            "weight_decay": c.weight_decay,
            "packing": c.packing,
        }
        optional = {
            "validation_file": validation_file,
            "suffix": c.suffix,
            "max_seq_length": c.max_seq_length,
            "random_seed": c.random_seed,
            "from_checkpoint": c.from_checkpoint,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if c.wandb.enabled:
            key = os.environ.get("WANDB_API_KEY")
            if not key:
                raise StageError("train.wandb.enabled=true needs WANDB_API_KEY in the environment")
            body["wandb_api_key"] = key  # sent, never recorded: see job_fingerprint and the manifest
            for field in ("project_name", "name", "entity", "base_url"):
                if c.wandb[field]:
                    body[f"wandb_{field}"] = c.wandb[field]
        return body

    def plan(self, inputs: dict[str, Artifact | None]) -> str:
        c = self.config
        kind = "LoRA" if c.training_type.value == "lora" else "full"
        mix = inputs.get("mix")
        data = f"mixture {mix.manifest['sha256'][:12]}" if mix else "the mixture this run builds"
        return (
            f"fine-tune {c.model} ({kind}, {c.n_epochs} epochs, batch {c.batch_size}, lr {c.learning_rate:g}) on "
            f"{data} through Together; the price is estimated before the job is created"
        )

    # ---- run ----------------------------------------------------------------------------------
    def run(self, inputs: dict[str, Artifact], out_dir: Path) -> dict[str, Any]:
        c = self.config
        assert self.store is not None
        mix = inputs["mix"]
        mixture = mix.path / mix.manifest["file"]
        eval_file = mix.path / mix.manifest["eval"]["file"] if c.n_evals > 0 and mix.manifest.get("eval") else None
        if c.n_evals > 0 and eval_file is None:
            raise StageError(f"train.n_evals={c.n_evals} needs an eval split: set mixture.eval_fraction > 0")
        for path in (mixture, eval_file):
            if path is not None:
                check_file(path)  # before any request: a bad file never leaves this machine
        client = self.together_client()
        base_url = client.base_url
        try:
            training_file = self._upload(client, base_url, mixture, mix.manifest["sha256"])
            validation_file = self._upload(client, base_url, eval_file, None) if eval_file else None
            body = self.body(training_file, validation_file)
            job_key = self.job_fingerprint(base_url, body)
            job = self._job(client, job_key, body)
            if c.cancel:
                cancel_fine_tune(client, job["id"])
                raise StageError(f"cancelled Together fine-tune {job['id']} (train.cancel=true)")
            if not c.wait:
                raise StagePending(
                    f"Together fine-tune {job['id']} is {job.get('status', 'pending')}; run again to follow it",
                    {"job_id": job["id"]},
                )
            job = self._follow(client, job["id"])
            return self._finish(client, job, training_file, validation_file, job_key, out_dir)
        finally:
            client.close()

    def job_fingerprint(self, base_url: str, body: dict[str, Any]) -> str:
        """What identifies a paid job: where it runs, the data (by content) and every hyperparameter."""
        identity = {k: v for k, v in body.items() if k not in ("training_file", "validation_file", "wandb_api_key")}
        identity["base_url"] = base_url
        identity["data"] = self.store_key_of(body.get("training_file")), self.store_key_of(body.get("validation_file"))
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]

    def store_key_of(self, file_id: str | None) -> str | None:
        return None if file_id is None else self._sha_by_file_id.get(file_id, file_id)

    def _upload(self, client: Client, base_url: str, path: Path, sha256: str | None) -> str:
        """The file id of `path` on this base URL: recorded, or uploaded now and recorded."""
        assert self.store is not None
        sha256 = sha256 or sha256_file(path)
        key = hashlib.sha256(f"{base_url}\n{sha256}".encode()).hexdigest()[:24]
        record = self.store.record(FILES, key)
        if record is not None:
            log.info("%s already uploaded as %s (sha256 %s)", path.name, record["file_id"], sha256[:12])
            self._sha_by_file_id[record["file_id"]] = sha256
            return record["file_id"]
        c = self.config
        with tqdm(
            total=path.stat().st_size, unit="B", unit_scale=True, desc=f"upload {path.name}", disable=not c.progress
        ) as bar:
            uploaded = upload_fine_tune_file(
                client,
                path,
                progress=bar,
                multipart_threshold=int(c.multipart_threshold_gb * 2**30),
                part_size=max(1, int(c.multipart_part_mb * 2**20)),
                workers=c.multipart_workers,
            )
        self.store.put_record(
            FILES,
            key,
            {
                "file_id": uploaded["id"],
                "sha256": sha256,
                "bytes": path.stat().st_size,
                "base_url": base_url,
                "file": uploaded,
            },
        )
        self._sha_by_file_id[uploaded["id"]] = sha256
        return str(uploaded["id"])

    def _job(self, client: Client, job_key: str, body: dict[str, Any]) -> dict[str, Any]:
        """The job recorded for this fingerprint, or a new one (priced, within budget, recorded first)."""
        assert self.store is not None
        c = self.config
        record = self.store.record(JOBS, job_key)
        if record is not None:
            job = get_fine_tune(client, record["job_id"])
            failed = job.get("status") in ("error", "user_error", "cancelled")
            if not failed or c.cancel:
                log.info("re-attaching to Together fine-tune %s (%s)", job["id"], job.get("status"))
                return job
            if not c.relaunch:
                raise StageError(
                    f"Together fine-tune {job['id']} for this config ended {job['status']}; set train.relaunch=true "
                    "to launch a new (paid) job"
                )
            log.warning("fine-tune %s ended %s; launching a new one (train.relaunch=true)", job["id"], job["status"])
        if c.cancel:
            raise StageError("train.cancel=true: no Together fine-tune is recorded for this config")
        estimate = estimate_price(client, body)
        price = float(estimate.get("estimated_total_price") or 0.0)
        print(
            f"Together estimates ${price:.2f} for this fine-tune ({estimate.get('estimated_train_token_count', '?')} training tokens)"
        )
        if c.budget.max_usd is not None and price > c.budget.max_usd:
            raise StageError(
                f"estimated price ${price:.2f} is over train.budget.max_usd={c.budget.max_usd}; nothing was launched"
            )
        if estimate.get("allowed_to_proceed") is False:
            raise StageError(
                f"Together says this job may not proceed (limit ${estimate.get('user_limit')}); nothing was launched"
            )
        if c.confirm:
            self._confirm(price)
        job = create_fine_tune(client, body)
        self.store.put_record(
            JOBS,
            job_key,
            {
                "job_id": job["id"],
                "estimate": estimate,
                "created": time.time(),
                "model": c.model,
                "config": self.semantic_config(),
            },
        )
        log.info("created Together fine-tune %s", job["id"])
        return {**job, "estimate": estimate}

    @staticmethod
    def _confirm(price: float) -> None:
        if not sys.stdin.isatty():
            raise StageError(
                "train.confirm=true needs a terminal to answer on; set train.confirm=false to launch unattended"
            )
        answer = input(f"Launch this fine-tune for about ${price:.2f}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise StageError("not launched: the price was not confirmed")

    def _follow(self, client: Client, job_id: str) -> dict[str, Any]:
        """Poll until a terminal status, logging new events and showing steps."""
        c = self.config
        interval = c.poll_s
        seen = failures = 0
        bar = tqdm(desc=f"train {job_id}", unit=" step", disable=not c.progress)
        try:
            while True:
                try:
                    job = get_fine_tune(client, job_id)
                    events = fine_tune_events(client, job_id)
                    failures = 0
                except APIError as e:
                    failures += 1
                    if failures >= MAX_POLL_FAILURES:
                        raise StageError(
                            f"lost contact with Together fine-tune {job_id}: {e}; run again to re-attach"
                        ) from None
                    log.warning("poll of %s failed (%s); trying again", job_id, e)
                    time.sleep(interval)
                    continue
                for event in events[seen:]:
                    log.info("%s: [%s] %s", job_id, event.get("type"), event.get("message"))
                    if event.get("total_steps"):
                        bar.total = event["total_steps"]
                    if event.get("step"):
                        bar.n = event["step"]
                changed = len(events) > seen
                seen = len(events)
                bar.set_postfix(status=job.get("status"), refresh=True)
                if job.get("status") in FINE_TUNE_DONE:
                    return job
                interval = c.poll_s if changed else min(interval * 1.5, MAX_POLL_S)
                time.sleep(interval)
        finally:
            bar.close()

    def _finish(
        self,
        client: Client,
        job: dict[str, Any],
        training_file: str,
        validation_file: str | None,
        job_key: str,
        out_dir: Path,
    ) -> dict[str, Any]:
        assert self.store is not None
        c = self.config
        if job["status"] != "completed":
            raise StageError(
                f"Together fine-tune {job['id']} ended {job['status']}; the job stays recorded: set train.relaunch=true "
                "to launch a new (paid) one"
            )
        record = self.store.record(JOBS, job_key) or {}
        manifest: dict[str, Any] = {
            "provider": "together",
            "training_file": training_file,
            "validation_file": validation_file,
            "job_id": job["id"],
            "model": job.get("model", c.model),
            "model_output_name": job.get("model_output_name"),
            "status": job["status"],
            "price_estimate": record.get("estimate"),
            "total_price": job.get("total_price"),
            "token_count": job.get("token_count"),
            "checkpoints": fine_tune_checkpoints(client, job["id"]),
            "cost_usd": job.get("total_price"),
        }
        if c.download.value != "none":
            target = out_dir / f"model-{c.download.value}.tar.zst"
            with tqdm(unit="B", unit_scale=True, desc=f"download {target.name}", disable=not c.progress) as bar:
                manifest["download"] = {
                    "file": target.name,
                    "bytes": download_fine_tune(client, job["id"], c.download.value, target, bar),
                }
        return manifest
