"""The Together fine-tune lifecycle: upload (deduplicated), estimate, create once, re-attach, follow,
cancel, download. The Train stage shapes the request; this provider owns every REST call and the
records that make "never pay twice" hold.

Records (in the artifact store, written before anything waits on the object):
- `together-files/<key>`: a file's id on one base URL, keyed by the file's sha256;
- `together-fine-tunes/<key>`: the job created for one job identity (base URL, data by content and
  every hyperparameter), so a re-run re-attaches instead of launching a second paid job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from recipe.artifacts import Planned
from recipe.errors import RecipeError
from recipe.providers.http import RECONCILE_WINDOW_S, APIError, Client, reconcile
from recipe.providers.together import (
    FINE_TUNE_DONE,
    cancel_fine_tune,
    delete_file,
    download_fine_tune,
    estimate_price,
    file_exists,
    fine_tune_checkpoints,
    fine_tune_events,
    get_fine_tune,
    unless_gone,
    upload_fine_tune_file,
)
from recipe.store import ArtifactStore, sha256_file

log = logging.getLogger(__name__)
FILES = "together-files"
JOBS = "together-fine-tunes"
MAX_POLL_S = 60.0
MAX_POLL_FAILURES = 10
FAILED = ("error", "user_error", "cancelled")
# Fields of a job in `GET /fine-tunes` that identify it as made from our request.
MATCH_KEYS = ("training_file", "validation_file", "model", "suffix", "n_epochs", "learning_rate")


class FineTuneError(RecipeError):
    """A fine-tune that cannot go on as asked (failed, cancelled, over budget, not confirmed)."""


@dataclass
class FineTuneSettings:
    """How the lifecycle runs (none of it changes what is trained)."""

    relaunch: bool = False  # launch a new (paid) job when the recorded one failed or was cancelled
    confirm: bool = False  # ask on the terminal before a paid job starts
    max_usd: float | None = None  # refuse a job whose estimate is over this
    poll_s: float = 10.0
    multipart_threshold: int = 5 * 2**30
    part_size: int = 256 * 2**20
    workers: int = 4
    progress: bool = True


class TogetherFineTuner:
    """One Together account (a client) and the store's records of files and jobs."""

    def __init__(self, client: Client, store: ArtifactStore, settings: FineTuneSettings) -> None:
        self.client, self.store, self.settings = client, store, settings
        self._sha_by_file_id: dict[str, str] = {}  # uploaded file id -> content sha256

    # -- files ---------------------------------------------------------------------------------------
    def upload(self, path: Path, sha256: str | None = None) -> str:
        """The file id of `path` on this base URL: recorded, or uploaded now and recorded."""
        sha256 = sha256 or sha256_file(path)
        key = hashlib.sha256(f"{self.client.base_url}\n{sha256}".encode()).hexdigest()[:24]
        record = self.store.record(FILES, key)
        if record is not None and record.get("file_id"):
            if file_exists(self.client, record["file_id"]):
                log.info("%s already uploaded as %s (sha256 %s)", path.name, record["file_id"], sha256[:12])
                self._sha_by_file_id[record["file_id"]] = sha256
                return str(record["file_id"])
            print(
                f"the uploaded {path.name} ({record['file_id']}) is gone from Together (HTTP 404); uploading it again"
            )
        if record is not None and record.get("uploading"):  # an upload that an earlier run never finished
            orphan = record["uploading"]
            deleted = delete_file(self.client, orphan)
            what = "deleted the unfinished upload" if deleted else "the unfinished upload (gone already)"
            print(f"{what} {orphan} of {path.name}, left by an interrupted run; uploading it again")
        s = self.settings
        size = path.stat().st_size
        with tqdm(total=size, unit="B", unit_scale=True, desc=f"upload {path.name}", disable=not s.progress) as bar:
            uploaded = upload_fine_tune_file(
                self.client,
                path,
                progress=bar,
                multipart_threshold=s.multipart_threshold,
                part_size=s.part_size,
                workers=s.workers,
                on_file_id=lambda file_id: self.store.put_record(FILES, key, {"uploading": file_id, "sha256": sha256}),
            )
        value = {"file_id": uploaded["id"], "sha256": sha256, "bytes": size, "base_url": self.client.base_url}
        self.store.put_record(FILES, key, {**value, "file": uploaded})
        self._sha_by_file_id[uploaded["id"]] = sha256
        return str(uploaded["id"])

    # -- jobs ----------------------------------------------------------------------------------------
    def job_key(self, body: dict[str, Any]) -> str:
        """What identifies a paid job: where it runs, the data (by content) and every hyperparameter."""
        identity = {
            k: v for k, v in body.items() if k not in ("training_file", "validation_file", "wandb_key", "wandb_api_key")
        }
        identity["base_url"] = self.client.base_url
        identity["data"] = [
            self._sha_by_file_id.get(body.get(k), body.get(k)) for k in ("training_file", "validation_file")
        ]
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]

    def recorded(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The job recorded for this body, as Together reports it now; None when none is recorded.
        A create that was sent but whose answer never came (a crash, a timeout) is looked up and,
        when found, adopted and recorded. A recorded job that Together no longer knows (HTTP 404) is
        an error unless `relaunch` (then: None)."""
        key = self.job_key(body)
        record = self.store.record(JOBS, key)
        if record is None:
            return None
        if not record.get("job_id"):  # intent only: did the create reach Together?
            found = self._matches(body, set(record.get("previous_job_ids", [])))
            if not found:
                return None
            job = found[0]
            log.warning("found Together fine-tune %s created for this config before a crash: adopting it", job["id"])
            record = {
                **record,
                "job_id": job["id"],
                "adopted": True,
                "reconcile_until": time.time() + RECONCILE_WINDOW_S,
            }
            self.store.put_record(JOBS, key, record)
        self.reconcile(body)  # a create re-sent before may have landed twice
        job = unless_gone(lambda: get_fine_tune(self.client, record["job_id"]))
        if job is not None:
            return job
        if not self.settings.relaunch:
            raise FineTuneError(
                f"the Together fine-tune {record['job_id']} recorded for this config no longer exists (HTTP 404: "
                "deleted outside recipe?); nothing was launched: set train.relaunch=true to launch a new (paid) one"
            )
        log.warning("the recorded fine-tune %s is gone; launching a new one (train.relaunch=true)", record["job_id"])
        return None

    def ensure(self, body: dict[str, Any], record_extra: dict[str, Any]) -> dict[str, Any]:
        """The job recorded for this body (re-attached), or a new one: priced, held against the
        budget, confirmed if asked, its intent recorded before the create is sent, and the create
        never repeated blindly (see Client.create)."""
        s = self.settings
        job = self.recorded(body)
        if job is not None:
            if job.get("status") not in FAILED:
                log.info("re-attaching to Together fine-tune %s (%s)", job["id"], job.get("status"))
                return job
            if not s.relaunch:
                raise FineTuneError(
                    f"Together fine-tune {job['id']} for this config ended {job['status']}; set train.relaunch=true "
                    "to launch a new (paid) job"
                )
            log.warning("fine-tune %s ended %s; launching a new one (train.relaunch=true)", job["id"], job["status"])
        estimate = estimate_price(self.client, body)
        price = float(estimate.get("estimated_total_price") or 0.0)
        tokens = estimate.get("estimated_train_token_count", "?")
        print(f"Together estimates ${price:.2f} for this fine-tune ({tokens} training tokens)")
        if s.max_usd is not None and price > s.max_usd:
            raise FineTuneError(
                f"estimated price ${price:.2f} is over train.budget.max_usd={s.max_usd}; nothing was launched"
            )
        if estimate.get("allowed_to_proceed") is False:
            raise FineTuneError(
                f"Together says this job may not proceed (limit ${estimate.get('user_limit')}); nothing was launched"
            )
        if s.confirm:
            _confirm(price)
        key = self.job_key(body)
        old = self.store.record(JOBS, key) or {}
        previous = [*old.get("previous_job_ids", []), *([old["job_id"]] if old.get("job_id") else [])]
        # The intent first: if we die before Together's answer is recorded, a re-run looks the job up.
        intent = {"estimate": estimate, "sent": time.time(), "previous_job_ids": previous, **record_extra}
        self.store.put_record(JOBS, key, intent)
        created = self.client.create(
            "fine-tunes",
            body,
            find=lambda: self._matches(body, set(previous)),
            discard=lambda job: cancel_fine_tune(self.client, job["id"]),
            what="fine-tune job",
        )
        record = {**intent, "job_id": created.id, "created": time.time()}
        if created.resent:  # an earlier attempt may still land: keep reconciling while it could
            record["reconcile_until"] = time.time() + RECONCILE_WINDOW_S
        self.store.put_record(JOBS, key, record)
        log.info("created Together fine-tune %s", created.id)
        return created.value

    def _matches(self, body: dict[str, Any], exclude: set[str]) -> list[dict[str, Any]]:
        """Jobs on Together made from this body (same files, model, suffix and schedule) that are not
        one of `exclude` and not cancelled, newest first."""
        jobs = self.client.get_json("fine-tunes").get("data") or []
        keys = [k for k in MATCH_KEYS if k in body]
        matches = [
            j
            for j in jobs
            if j.get("id") not in exclude
            and j.get("status") not in ("cancelled", "cancel_requested")
            and all(j.get(k) == body[k] for k in keys)
        ]
        return sorted(matches, key=lambda j: str(j.get("created_at", "")), reverse=True)

    def reconcile(self, body: dict[str, Any]) -> None:
        """While a re-sent create's earlier attempt may still land, cancel every job made from this
        body but the recorded one (a pending job costs nothing; cancelled at once, it never will)."""
        key = self.job_key(body)
        record = self.store.record(JOBS, key) or {}
        if not record.get("job_id") or time.time() > record.get("reconcile_until", 0):
            return
        previous = set(record.get("previous_job_ids", []))
        cancelled = reconcile(
            lambda: self._matches(body, previous),
            record["job_id"],
            lambda job: cancel_fine_tune(self.client, job["id"]),
            "fine-tune job",
        )
        if cancelled:
            self.store.put_record(
                JOBS, key, {**record, "cancelled_duplicates": [*record.get("cancelled_duplicates", []), *cancelled]}
            )

    def estimate_of(self, body: dict[str, Any]) -> dict[str, Any] | None:
        record = self.store.record(JOBS, self.job_key(body))
        return None if record is None else record.get("estimate")

    def cancel(self, job_id: str) -> None:
        cancel_fine_tune(self.client, job_id)

    def follow(self, job_id: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Poll until a terminal status, logging new events and showing steps; the final job. With
        the job's `body`, duplicates of a re-sent create are cancelled as they land (see reconcile)."""
        s = self.settings
        interval = s.poll_s
        seen = failures = 0
        bar = tqdm(desc=f"train {job_id}", unit=" step", disable=not s.progress)
        try:
            while True:
                try:
                    job = get_fine_tune(self.client, job_id)
                    events = fine_tune_events(self.client, job_id)
                    if body is not None:
                        self.reconcile(body)
                    failures = 0
                except APIError as e:
                    failures += 1
                    if failures >= MAX_POLL_FAILURES:
                        raise FineTuneError(
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
                interval = s.poll_s if changed else min(interval * 1.5, MAX_POLL_S)
                time.sleep(interval)
        finally:
            bar.close()

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        return fine_tune_checkpoints(self.client, job_id)

    def download(self, job_id: str, checkpoint: str, target: Path) -> int:
        """Stream the merged model or adapter to `target`; its size."""
        desc = f"download {target.name}"
        with tqdm(unit="B", unit_scale=True, desc=desc, disable=not self.settings.progress) as bar:
            return download_fine_tune(self.client, job_id, checkpoint, target, bar)


def request_body(c: Any, training_file: str, validation_file: str | None) -> dict[str, Any]:
    """The POST /fine-tunes body for a `train` config (TogetherTrainConfig): every hyperparameter
    from config, shaped as the spec wants. The W&B key is read from WANDB_API_KEY, sent, never kept."""
    args = c.args
    if args.training_type.value == "lora":
        training_type: dict[str, Any] = {
            "type": "Lora",
            "lora_r": args.lora.r,
            "lora_alpha": args.lora.alpha,
            "lora_dropout": args.lora.dropout,
            "lora_trainable_modules": args.lora.target_modules,
        }
    else:
        training_type = {"type": "Full"}
    train_on_inputs: bool | str = {"true": True, "false": False}.get(str(args.train_on_inputs).lower(), "auto")
    scheduler = args.lr_scheduler
    scheduler_args: dict[str, Any] = {"min_lr_ratio": scheduler.min_lr_ratio}
    if scheduler.type.value == "cosine":
        scheduler_args["num_cycles"] = scheduler.num_cycles
    body: dict[str, Any] = {
        "training_file": training_file,
        "model": c.model,
        "training_type": training_type,
        "training_method": {"method": "sft", "train_on_inputs": train_on_inputs},
        "lr_scheduler": {"lr_scheduler_type": scheduler.type.value, "lr_scheduler_args": scheduler_args},
        "n_epochs": args.n_epochs,
        "n_checkpoints": c.n_checkpoints,
        "n_evals": c.n_evals,
        "batch_size": "max" if args.global_batch_size is None else args.global_batch_size,
        "learning_rate": args.learning_rate,
        "warmup_ratio": args.warmup_ratio,
        "max_grad_norm": args.max_grad_norm,
        "weight_decay": args.weight_decay,
        "packing": args.packing,
    }
    optional = {
        "validation_file": validation_file,
        "suffix": c.suffix,
        "max_seq_length": args.max_seq_length,
        "random_seed": args.seed,
        "from_checkpoint": c.from_checkpoint,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if c.wandb.enabled:
        key = os.environ.get("WANDB_API_KEY")
        if not key:
            raise FineTuneError("train.wandb.enabled=true needs WANDB_API_KEY in the environment")
        # `wandb_key`, as every official SDK sends it (the OpenAPI spec says wandb_api_key, which the
        # live service is not what the SDKs were written against); sent, never recorded (job_key).
        body["wandb_key"] = key
        for field in ("project_name", "name", "entity", "base_url"):
            if c.wandb[field]:
                body[f"wandb_{field}"] = c.wandb[field]
    return body


def _confirm(price: float, ask: Callable[[str], str] = input) -> None:
    if not sys.stdin.isatty():
        raise FineTuneError(
            "train.confirm=true needs a terminal to answer on; set train.confirm=false to launch unattended"
        )
    answer = ask(f"Launch this fine-tune for about ${price:.2f}? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise FineTuneError("not launched: the price was not confirmed")


def billed_tokens(
    size: Planned, n_epochs: int, n_evals: int, packing: bool, max_seq_length: int | None, label: str
) -> tuple[int | None, str]:
    """Tokens Together bills for a job on data of this size, by its published rule: n_epochs x
    training tokens + n_evals x validation tokens; without packing every example counts as
    max_seq_length tokens (docs.together.ai, fine-tuning pricing). `label` says where the size comes
    from. (None, why) when unknown."""
    if not packing:
        if max_seq_length is None:
            return None, "packing off bills max_seq_length per example: set train.args.max_seq_length"
        if size.examples is None:
            return None, f"the mixture's examples are unknown ({label})"
        per = max_seq_length
        train, held = size.examples * per, size.eval_examples * per
        how = f"{size.examples:,} examples x max_seq_length {per:,}, packing off"
    else:
        if size.tokens is None or (n_evals and size.eval_examples and size.eval_tokens is None):
            return None, f"the mixture's tokens are unknown ({label})"
        train, held, how = size.tokens, size.eval_tokens or 0, f"{size.tokens:,} tokens ({label})"
    return n_epochs * train + n_evals * held, f"{n_epochs} epochs x {how}" + (
        f", + {n_evals} evals x {held:,}" if n_evals and held else ""
    )
