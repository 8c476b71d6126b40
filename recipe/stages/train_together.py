"""Train: the recipe's Step II, on Together or on this machine. Both read the same way: take the
Mix artifact's conversations, render them once for the model being trained, hand them to a
fine-tune provider, and describe the result as a `TrainedModel` (where the model is, its base, and
the prompt format it was trained in, which Test and Deploy obey).

`TogetherTrain` (`train=together_lora|together_full`):
- the upload file is rendered for the target model (`train.format`): `messages` (Together applies
  the model's chat template) or text in a named template (the seed's `[INST]`, `llama2_inst`); `auto`
  takes the model's known format; a format the model is known not to take is refused;
- the Together file check before any request; the SDKs' upload, deduplicated by content; the
  fine-tune body shaped as the spec wants; `estimate-price` first, against `budget.max_usd`;
- never twice: the job is recorded before waiting and re-attached on a re-run; a failed job is an
  error unless `train.relaunch=true`; `train.cancel=true`; `train.wait=false` returns after creating;
- the artifact: file ids, job id, `model_output_name`, status, price, checkpoints, optional download.
  The lifecycle itself is `recipe.providers.together_finetune`.

`LocalTrain` (`train=local_lora|local_full`) is in train_local.py.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recipe.artifacts import Mixture, Planned, PromptFormat, TrainedModel, content_id
from recipe.config import TogetherTrainConfig, TrainArgs
from recipe.data import templates
from recipe.data.filecheck import check_file
from recipe.data.jsonl import encode_line
from recipe.providers.together_finetune import (
    FineTuneError,
    FineTuneSettings,
    TogetherFineTuner,
    billed_tokens,
    request_body,
)
from recipe.stages import Output, Plan, Stage, StageError, StagePending, Workspace
from recipe.store import Artifact, sha256_file

log = logging.getLogger(__name__)
UPLOAD_FILE = "upload.jsonl"
EVAL_UPLOAD_FILE = "upload-eval.jsonl"


def upload_format(model: str, fmt: str, template: str | None, mixture: Mixture | None) -> PromptFormat:
    """The format a hosted fine-tune of `model` is trained in, from `train.format`/`train.template`
    (and, for `mixture`, the mixture's own format); a format the model is known not to take is an error."""
    known = templates.known_format(model)
    key = "mix.template" if fmt == "mixture" else "train.template"
    if fmt == "mixture":
        if mixture is None:
            return PromptFormat("chat_template")  # a dry run before Mix: checked when it runs
        if mixture.format == "messages":
            fmt = "messages"
        else:
            fmt, template = "text", mixture.template
    if fmt == "auto":
        return PromptFormat("text", known[0]) if known and not known[1] else PromptFormat("chat_template")
    if fmt == "messages":
        if known and not known[1]:
            raise StageError(
                f"train.format=messages: {model} has no chat template; it is trained (and tested) in "
                f"{known[0]} text: use train.format=auto or train.format=text"
            )
        return PromptFormat("chat_template")
    if template is None:
        if known is None:
            raise StageError(f"train.format=text: set train.template (llama2_inst, chatml, ...) for {model}")
        template = known[0]
    templates.check_template(template, key)
    if known and template != known[0]:
        raise StageError(
            f"{key}={template!r}: {model} is trained and tested in {known[0]} ([INST] ... [/INST]); "
            "use train.format=auto, or a template that matches the model"
        )
    return PromptFormat("text", template)


def render_upload(mixture: Mixture, split: str, fmt: PromptFormat, path: Path) -> str:
    """Write the mixture's `split` conversations as a fine-tune file in `fmt`; its sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for record in mixture.records(split):
            if fmt.kind == "chat_template":
                line = encode_line({"messages": record["messages"]})
            else:
                assert fmt.template is not None
                template = mixture.template_for(record["component"], fmt.template)
                line = encode_line(templates.example(record["messages"], "text", template))
            digest.update(line)
            f.write(line)
    return digest.hexdigest()


class TogetherTrain(Stage):
    """Fine-tune on Together from the Mix artifact; the artifact describes the finished job."""

    name = "train"
    version = "2"
    schema = TogetherTrainConfig

    def __init__(self, config: DictConfig, root: DictConfig) -> None:
        super().__init__(config, root)
        c = config
        if c.suffix is not None and len(c.suffix) > 40:
            raise StageError(f"train.suffix={c.suffix!r}: at most 40 characters ({len(c.suffix)} given)")
        TrainArgs.check(c.args)
        if c.n_checkpoints < 1:
            raise StageError(f"train.n_checkpoints={c.n_checkpoints}: must be at least 1")
        self.format = upload_format(c.model, c.format.value, c.template, None)  # checked early; again in run

    def upstream(self) -> tuple[str, ...]:
        return ("mix",)

    def reads(self, name: str, artifact: Artifact) -> str:
        return content_id(name, artifact, contamination=False)  # the examples, not what the check found

    # ---- the request ------------------------------------------------------------------------
    def body(self, training_file: str, validation_file: str | None) -> dict[str, Any]:
        """The POST /fine-tunes body for this config (recipe/providers/together_finetune.py)."""
        return request_body(self.config, training_file, validation_file)

    def uses_together(self) -> bool:
        return True

    def budget(self) -> tuple[str, float | None]:
        return "train.budget.max_usd", self.config.budget.max_usd

    def plan(self, inputs: dict[str, Artifact | None], upstream: dict[str, Planned]) -> Plan:
        c = self.config
        args = c.args
        kind = "LoRA" if args.training_type.value == "lora" else "full"
        mixture = Mixture.load(inputs["mix"]) if inputs.get("mix") else None
        data = f"mixture {mixture.train.upload_sha256[:12]}" if mixture else "the mixture this run builds"
        fmt = upload_format(c.model, c.format.value, c.template, mixture)
        size = mixture.size() if mixture else upstream.get("mix")
        label = "the mixture's count" if mixture else "Mix's plan"
        billed, how = (
            billed_tokens(size, args.n_epochs, c.n_evals, args.packing, args.max_seq_length, label)
            if size
            else (None, "the mixture is not built and Mix is not planned in this run: add it, stages=[mix,train]")
        )
        usd = None
        if c.price_per_mtok is None:
            price = "not priced offline (set train.price_per_mtok: your bracket's rate)"
        elif billed is None:
            price = f"not priced: {how}"
        else:
            usd = round(billed * c.price_per_mtok / 1e6, 2)
            price = f"~{billed:,} tokens billed ({how}) at ${c.price_per_mtok:g}/M (train.price_per_mtok)"
        tokens = f", ~{billed / 1e6:,.1f}M tokens billed" if billed is not None else ""
        return Plan(
            f"{kind} fine-tune of {c.model} on Together, {args.n_epochs} epochs{tokens}",
            f"batch {args.global_batch_size or 'max'}, lr {args.learning_rate:g}, on {data} in {fmt.describe()}; "
            f"{price}; at the run, "
            "Together's estimate-price is asked before the job is created",
            usd=usd,
            size=Planned(None, provider="together"),
        )

    def run(self, inputs: dict[str, Artifact], workspace: Workspace) -> Output:
        c, out_dir = self.config, workspace.out_dir
        mixture = Mixture.load(inputs["mix"])
        fmt = upload_format(c.model, c.format.value, c.template, mixture)
        if c.n_evals > 0 and mixture.eval is None:
            raise StageError(f"train.n_evals={c.n_evals} needs an eval split: set mix.eval_fraction > 0")
        training, validation, sha = self._files(mixture, fmt, out_dir)
        for path in (training, validation):
            if path is not None:
                check_file(path)  # before any request: a bad file never leaves this machine
        settings = FineTuneSettings(
            relaunch=c.relaunch,
            confirm=c.confirm,
            max_usd=c.budget.max_usd,
            poll_s=c.poll_s,
            multipart_threshold=int(c.multipart_threshold_gb * 2**30),
            part_size=max(1, int(c.multipart_part_mb * 2**20)),
            workers=c.multipart_workers,
            progress=c.progress,
        )
        client = self.together_client()
        try:
            tuner = TogetherFineTuner(client, workspace.store, settings)
            training_file = tuner.upload(training, sha)
            validation_file = tuner.upload(validation) if validation else None
            body = self.body(training_file, validation_file)
            if c.cancel:
                job = tuner.recorded(body)
                if job is None:
                    raise StageError("train.cancel=true: no Together fine-tune is recorded for this config")
                tuner.cancel(job["id"])
                raise StageError(f"cancelled Together fine-tune {job['id']} (train.cancel=true)")
            job = tuner.ensure(body, {"model": c.model, "format": fmt.describe(), "config": self.semantic_config()})
            if not c.wait:
                raise StagePending(
                    f"Together fine-tune {job['id']} is {job.get('status', 'pending')}; run again to follow it",
                    {"job_id": job["id"]},
                )
            job = tuner.follow(job["id"], body)
            if job["status"] != "completed":
                raise StageError(
                    f"Together fine-tune {job['id']} ended {job['status']}; the job stays recorded: set "
                    "train.relaunch=true to launch a new (paid) one"
                )
            return self._output(tuner, job, body, fmt, training, out_dir)
        except FineTuneError as e:
            raise StageError(str(e)) from None
        finally:
            client.close()

    def _files(self, mixture: Mixture, fmt: PromptFormat, out_dir: Path) -> tuple[Path, Path | None, str]:
        """The training (and validation) file in `fmt`: mixture.jsonl itself when Mix already wrote
        exactly that, else rendered from the canonical conversations into the artifact."""
        as_mixture = (
            self.config.format.value == "mixture"  # mixture.jsonl as Mix wrote it (prompt_completion too)
            or (fmt.kind == "chat_template" and mixture.format == "messages")
            or (fmt.kind == "text" and mixture.format == "text" and mixture.template == fmt.template)
        )
        validation = None
        if as_mixture:
            training, sha = mixture.dir / mixture.train.upload_file, mixture.train.upload_sha256
            if sha256_file(training) != sha:  # these bytes leave the machine: hashed again, not trusted
                raise StageError(
                    f"{training}: its sha256 is not the one the mix artifact recorded ({sha[:12]}): it changed after "
                    f"Mix made it; nothing was uploaded. Remove {mixture.dir} and run again: Mix builds it anew"
                )
            if self.config.n_evals > 0 and mixture.eval is not None:
                validation = mixture.dir / mixture.eval.upload_file
            return training, validation, sha
        log.info("rendering the mixture for %s in %s", self.config.model, fmt.describe())
        training = out_dir / UPLOAD_FILE
        sha = render_upload(mixture, "train", fmt, training)
        if self.config.n_evals > 0:
            validation = out_dir / EVAL_UPLOAD_FILE
            render_upload(mixture, "eval", fmt, validation)
        return training, validation, sha

    def _output(
        self,
        tuner: TogetherFineTuner,
        job: dict[str, Any],
        body: dict[str, Any],
        fmt: PromptFormat,
        training: Path,
        out_dir: Path,
    ) -> Output:
        c = self.config
        model_name = job.get("model_output_name")
        if not model_name:
            raise StageError(f"Together fine-tune {job['id']} completed without a model_output_name")
        trained = TrainedModel(
            provider="together",
            model=model_name,
            base_model=job.get("model", c.model),
            format=fmt,
            weights=f"together:{model_name}",
        )
        record: dict[str, Any] = {
            "provider": "together",
            "upload_file": training.name if training.parent == out_dir else None,
            "training_file": body["training_file"],
            "validation_file": body.get("validation_file"),
            "job_id": job["id"],
            "model": job.get("model", c.model),
            "model_output_name": model_name,
            "status": job["status"],
            "price_estimate": tuner.estimate_of(body),
            "total_price": job.get("total_price"),
            "token_count": job.get("token_count"),
            "checkpoints": tuner.checkpoints(job["id"]),
            "cost_usd": job.get("total_price"),
        }
        if c.download.value != "none":
            target = out_dir / f"model-{c.download.value}.tar.zst"
            record["download"] = {"file": target.name, "bytes": tuner.download(job["id"], c.download.value, target)}
        return Output(trained, record)
