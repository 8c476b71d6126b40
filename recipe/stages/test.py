"""Test: the recipe's Step III. The model card's suites, base against tuned, in one report.

What it does:
- reaches each model in `test.models` (`base`, `tuned`) the way it was trained: for local training a
  managed OpenAI-compatible server on 127.0.0.1 (`transformers serve` on CPU, vLLM on GPU when
  installed) over the merged model, or over the base model (the embedded GGUF is exported once to a
  Hugging Face directory in the store, so both run on the same engine); for a Together fine-tune the
  inference API, serverless or through a temporary dedicated endpoint that the stage deletes after;
- asks every suite's prompts (`conf/test/suite/`: multi-document QA, BookSum, AlpacaEval-style
  instructions) through the request cache Distill uses, so a re-run or a sweep asks nothing twice;
- has a judge (any model provider) compare each model's answers with the reference answers, both
  orders; computes the held-out loss of both models on the mixture's eval split (local models) and
  a few side-by-side generations;
- scores them; `recipe/evaluation/outputs.py` writes `report.md` (tables like the model card's),
  `report.html`, `metrics.json`, `chart.png`, `generations.jsonl` and `summary.txt` from the scores.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from tqdm import tqdm

from recipe.artifacts import Mixture, Planned, TestReport, TrainedModel
from recipe.config import TestConfig
from recipe.data.sources import config_key, iter_records, source_identity
from recipe.evaluation import judging, outputs, suites, uncertainty, workload
from recipe.evaluation.contamination import suite_view
from recipe.providers.cache import RequestCache
from recipe.providers.http import Client
from recipe.providers.limits import ADAPTIVE_IN_FLIGHT, Controller, stop_all
from recipe.providers.local.server import served_dtype
from recipe.providers.model_client import (
    REMOTE_PROVIDERS,
    BudgetReached,
    Ledger,
    ModelClient,
    ModelSpec,
    connected,
    paced,
)
from recipe.providers.serving import LocalServing, ModelAccess, base_model_dir, reach
from recipe.stages import Output, Plan, Stage, StageError, Workspace, missing_extra
from recipe.store import Artifact, ArtifactStore, content_digest

log = logging.getLogger(__name__)


def by_component(records: list[dict[str, Any]], losses: list[float | None]) -> dict[str, dict[str, Any]]:
    """Per component of the eval split: its mean example loss, how many examples it is measured on
    and how many were dropped (no answer token within the row length), and each example's loss by id (`heldout/<component>/<content digest>`: jobs and models are paired on the
    same examples, whatever their order), from which the figure `heldout.loss.<component>` gets its
    interval and its paired comparisons."""
    grouped: dict[str, dict[str, float | None]] = {}
    for record, loss in zip(records, losses, strict=True):
        name = str(record.get("component") or "all")
        digest = content_digest(record["messages"], 16)
        grouped.setdefault(name, {})[f"heldout/{name}/{digest}"] = loss
    out = {}
    for name in sorted(grouped):
        values = [v for v in grouped[name].values() if v is not None]
        out[name] = {
            "loss": round(sum(values) / len(values), 6) if values else None,
            "examples": len(values),
            "dropped": len(grouped[name]) - len(values),
            "per_prompt": {"loss": grouped[name]},
        }
    return out


HELDOUT_LOSS_VERSION = 2  # bump when trainer.heldout_loss changes what it computes: kept losses are then recomputed


@dataclass
class Asking:
    """One run's means of asking: the request cache, the ledger, and the rate controllers, one per
    role (base, tuned, judge), each shared by that model's clients (and through its state file with
    every other sender on the key); their accounts are the manifest's `sending`. Made by `run` and
    handed on, never kept on the stage."""

    cache: RequestCache
    ledger: Ledger
    controllers: dict[str, Controller] = field(default_factory=dict)

    def controller(self, client: Client, model: str, role: str) -> Controller:
        if role not in self.controllers:
            self.controllers[role] = paced(self.cache, client, model)
        return self.controllers[role]


class Test(Stage):
    __test__ = False  # not a pytest test class
    name = "test"
    version = "1"
    schema = TestConfig

    def upstream(self) -> tuple[str, ...]:
        return ("mix", "train")

    def semantic_config(self) -> dict[str, Any]:
        semantic = super().semantic_config()
        # Each suite's data by content (local files by sha256, not path), as sources enter Mix's.
        semantic["suite_data"] = {n: source_identity(self._key(n), s) for n, s in self.config.suites.items()}
        for name, suite in self.config.suites.items():
            if not suite.hub_id:  # the files' paths: the same data in another checkout is the same test
                semantic["suites"][name].pop("data_files", None)
        return semantic

    def _key(self, name: str) -> str:
        return f"test.suites.{name}"

    # -- what will be asked ------------------------------------------------------------------------

    def items(self, names: list[str] | None = None) -> tuple[dict[str, list[suites.Item]], dict[str, dict[str, int]]]:
        """Every suite's prompts, or those of `names` (records read and checked; errors name file and
        line), and per suite the records skipped, by reason."""
        out: dict[str, list[suites.Item]] = {}
        skipped_by_suite: dict[str, dict[str, int]] = {}
        for name, suite in self.config.suites.items():
            if names is not None and name not in names:
                continue
            key = self._key(name)
            records = islice(iter_records(key, suite), suite.max_examples)
            kind = suite.kind.value
            if kind == "mqa":
                items, skipped = suites.mqa_items(
                    name, records, list(suite.num_documents), [p.value for p in suite.gold_positions], key
                )
                if skipped.counts:
                    skipped_by_suite[name] = dict(skipped.counts)
                    log.warning("%s: records skipped: %s", key, dict(skipped.counts))
            elif kind == "synthetic":
                items = suites.synthetic_items(name, records)
            elif kind == "booksum":
                items = suites.booksum_items(
                    name, records, suite.text_field, suite.summary_field, suite.max_text_chars, key
                )
            else:
                items = suites.judge_items(name, records, suite.instruction_field, suite.reference_field, key)
            if not items:
                raise StageError(f"{key}: no usable record (see {config_key(key)}.data_files / hub_id)")
            out[name] = items
        return out, skipped_by_suite

    def heldout_items(self, mixture: Mixture | None) -> tuple[list[suites.Item], list[dict[str, Any]]]:
        """Side-by-side sample prompts (the first user turn of eval-split conversations, with the
        mixture's answer as reference) and the eval split's records (messages and component), for
        the held-out loss."""
        if mixture is None:
            return [], []
        records = list(mixture.records("eval"))
        conversations = [r["messages"] for r in records]
        samples = []
        for i, messages in enumerate(conversations[: self.config.heldout.samples]):
            user = next((m["content"] for m in messages if m["role"] == "user"), None)
            answer = next((m["content"] for m in messages if m["role"] == "assistant"), "")
            if user:
                samples.append(suites.Item(suite="heldout", id=f"heldout/{i}", prompt=user, answers=(answer,)))
        return samples, records

    def budget(self) -> tuple[str, float | None]:
        return "test.budget.max_usd", self.config.budget.max_usd

    def plan(self, inputs: dict[str, Artifact | None], upstream: dict[str, Planned]) -> Plan:
        c = self.config
        orders, n = (2 if c.judge_protocol.value == "both_orders" else 1), len(c.models)
        built, _ = self.items([name for name, suite in c.suites.items() if not suite.hub_id])  # local: read
        asked = workload.count(c, built, judging.max_tokens(c.judge_protocol.value, c.judge_max_tokens))
        trained = TrainedModel.load(inputs["train"]) if inputs.get("train") else None
        provider = trained.provider if trained else (upstream["train"].provider if "train" in upstream else None)
        free = c.prices.input_per_mtok == c.prices.output_per_mtok == 0  # a model not yet trained: priced at 0
        usd, cost = None, ""  # answers counted at max_tokens: an upper bound (recipe/evaluation/workload.py)
        if c.judge.provider.value == "local" and (provider == "local" if provider else free):
            usd = 0.0
        elif not asked.unknown:
            ledger = Ledger(c.prices.input_per_mtok, c.prices.output_per_mtok, None)
            usd, cost = asked.cost(ledger, n, orders, c.heldout.samples * c.heldout.max_tokens)
        described = "; ".join(workload.suite_line(name, suite) for name, suite in c.suites.items()) or "no suite"
        local_judge = c.judge.provider.value == "local" and not c.judge.base_url
        what = "Test of a local model" if provider == "local" else "test.judge.provider=local"
        missing = missing_extra(what, gguf=True) if provider == "local" or local_judge else None
        return Plan(
            f"{' and '.join(m.value for m in c.models)} on {len(c.suites)} suites: "
            + asked.describe(n, orders, c.heldout.samples),
            "; ".join(x for x in (described, f"held-out samples {c.heldout.samples}", asked.assumptions()) if x) + cost,
            usd=usd,
            bound="at most",
            needs=missing,
        )

    def uses_together(self) -> bool:
        return self.config.judge.provider.value == "together"

    # -- the run -----------------------------------------------------------------------------------

    def run(self, inputs: dict[str, Artifact], workspace: Workspace) -> Output:
        c, out_dir = self.config, workspace.out_dir
        trained = TrainedModel.load(inputs["train"])
        items, skipped = self.items()
        mixture = Mixture.load(inputs["mix"]) if "mix" in inputs else None
        samples, heldout_records = self.heldout_items(mixture)
        contamination = suite_view(mixture.contamination if mixture else None, c.suites, self._key)
        started = time.monotonic()
        cache = RequestCache(c.cache_path)
        ledger = Ledger(c.prices.input_per_mtok, c.prices.output_per_mtok, c.budget.max_usd)
        asking = Asking(cache, ledger)
        answers: dict[str, dict[str, str]] = {}
        cut: dict[str, set[str]] = {}  # per model, the ids of answers cut at max_tokens
        names: dict[str, str] = {}
        dtypes: dict[str, str] = {}  # local models: the dtype each was served in
        heldout_loss: dict[str, float] = {}
        heldout_components: dict[str, dict[str, Any]] = {}
        seconds: dict[str, float] = {}  # where the stage's time goes

        def clock(key: str, since: float) -> float:
            now = time.monotonic()
            seconds[key] = round(seconds.get(key, 0.0) + now - since, 2)
            return now

        def measure_loss(which: str, model_dir: Path | None, weights: str | None, mark: float) -> float:
            if not (c.heldout.loss and model_dir is not None and heldout_records):
                return mark
            # The base model's loss is kept by its weights' identity; a tuned model's is its own.
            kept_as = weights if which == "base" else None
            loss, each = self._heldout_loss(model_dir, kept_as, heldout_records, trained, workspace.store)
            heldout_loss[which], heldout_components[which] = loss, by_component(heldout_records, each)
            return clock(f"{which}.heldout_loss", mark)

        try:
            for which in (m.value for m in c.models):
                mark = time.monotonic()
                if trained.provider == "local" and not samples and not any(items.values()):
                    # Nothing to ask (no suite, no side-by-side sample): the held-out loss reads
                    # the weights, and no server is started.
                    if which == "tuned":
                        model_dir, weights = trained.local_dir, trained.weights
                    else:
                        model_dir, weights = base_model_dir(trained, workspace.store)
                    names[which], answers[which] = str(model_dir), {}
                    mark = measure_loss(which, model_dir, weights, mark)
                    continue
                with self._reach(trained, which, workspace.store) as access:
                    mark = clock(f"{which}.start", mark)
                    names[which] = access.model
                    if access.provider not in REMOTE_PROVIDERS:  # what the answers were generated in
                        dtypes[which] = access.dtype or "the weights' own"
                    cut[which] = set()
                    answers[which] = self._generate(access, asking, items, samples, cut[which])
                    mark = measure_loss(which, access.local_dir, access.weights, clock(f"{which}.generate", mark))
                clock(f"{which}.stop", mark)
            mark = time.monotonic()
            verdicts = self._judge(asking, items, answers) if self._judged(items) else {}
            clock("judge", mark)
        except BudgetReached:
            raise StageError(
                f"test.budget.max_usd={c.budget.max_usd}: the budget is spent; answers so far are cached, "
                "a re-run with a larger budget asks only the rest",
                details={"usage": ledger.usage(), "cost_usd": round(ledger.cost_usd, 6)},
            ) from None
        finally:
            cache.close()
        if "tuned" not in heldout_loss and trained.eval_loss is not None:
            heldout_loss["tuned"] = trained.eval_loss  # as measured by the trainer
        metrics = self._score(items, answers, verdicts, heldout_loss, heldout_components)
        protocol = judging.protocol_name(c.judge_protocol.value) if self._judged(items) else None
        result = {
            "judge_protocol": protocol,
            "models": {w: {"name": names[w], **metrics[w]} for w in answers},
            "suites": {
                name: {
                    "kind": c.suites[name].kind.value,
                    "prompts": len(its),
                    "skipped": skipped.get(name, {}),
                    "cut_at_max_tokens": {w: sum(i.id in cut.get(w, ()) for i in its) for w in answers},
                }
                for name, its in items.items()
            },
        }
        self._warn_cut(result)
        settings = uncertainty.Settings(**OmegaConf.to_container(c.uncertainty))  # type: ignore[arg-type]
        kinds = {n: c.suites[n].kind.value for n in items}
        summary, differences = outputs.write_all(
            out_dir, result, items, samples, answers, verdicts, kinds, contamination, settings
        )
        report = TestReport(
            dir=out_dir,
            report_file="report.md",
            metrics_file="metrics.json",
            generations_file="generations.jsonl",
            chart_file="chart.png",
            summary=summary,
        )
        return Output(
            report,
            {
                "models": {w: names[w] for w in answers},
                "served_dtype": dtypes,
                "prompt_format": trained.format.describe(),
                "judge_protocol": protocol,
                "differences": differences,
                "contamination": contamination,
                "contamination_counts": {
                    n: {"prompts_in_training": v["in_training"]} for n, v in contamination.items() if v["checked"]
                },
                "usage": ledger.usage(),
                "cost_usd": round(ledger.cost_usd, 6),
                "seconds": round(time.monotonic() - started, 2),
                "timings": seconds,
                # Per remote model: requests, 429/503 answers, time waiting, concurrency and rate reached.
                "sending": {role: controller.stats.record() for role, controller in asking.controllers.items()},
            },
        )

    def _warn_cut(self, result: dict[str, Any]) -> None:
        """Most of a model's answers cut at max_tokens: a figure that may measure the budget, not the model."""
        for name, suite in result["suites"].items():
            for which, count in suite["cut_at_max_tokens"].items():
                if count > suite["prompts"] / 2:
                    print(
                        f"warning: {count} of {suite['prompts']} {which} answers on {name} stopped at "
                        f"test.suites.{name}.max_tokens={self.config.suites[name].max_tokens}: a model cut off before "
                        f"its answer scores 0; raise it so the comparison measures the models, not the budget",
                        flush=True,
                    )

    def report(self, artifact: Artifact) -> str | None:
        table = (artifact.path / "summary.txt").read_text().rstrip()
        page = artifact.path / "report.html"
        return f"\nTest ({artifact.path / 'report.md'}; open {page} in a browser for the charts):\n{table}\n"

    # -- models ------------------------------------------------------------------------------------

    def _reach(
        self, trained: TrainedModel, which: str, store: ArtifactStore
    ) -> contextlib.AbstractContextManager[ModelAccess]:
        c = self.config
        return reach(
            trained,
            which,
            store=store,
            local=LocalServing(
                c.engine.value,
                c.device,
                startup_timeout_s=c.startup_timeout_s,
                timeout_s=c.timeout_s,
                greedy_batch=c.temperature == 0,  # every request greedy, with the same settings
                dtype=served_dtype(c.dtype.value, c.device),
            ),
            together=self.together_client if trained.provider == "together" else None,
            dedicated=c.endpoint.value == "dedicated",
            hardware=c.hardware,
            poll_s=c.poll_s,
            progress=c.progress,
        )

    # -- asking ------------------------------------------------------------------------------------

    def _client_for(
        self, access: ModelAccess, asking: Asking, max_tokens: int, first_line: bool = False
    ) -> ModelClient:
        """A client asking `access`'s model; `first_line`: for a suite scored on the answer's first
        line (mqa, synthetic), whose local models stop there."""
        c = self.config
        sampling = {"max_tokens": max_tokens, "temperature": c.temperature, "seed": c.seed}
        if first_line:
            sampling.update(access.line_end_fields())
        remote = access.provider in REMOTE_PROVIDERS
        controller = asking.controller(access.client, access.model, access.which) if remote else None
        # Prompts in the format the model was trained in (the Train artifact's).
        return ModelClient(
            access.client, asking.cache, access.spec, sampling=sampling, ledger=asking.ledger, controller=controller
        )

    def _in_flight(self, access: ModelAccess | None) -> int:
        """Requests in flight: a local server's own limit, else `concurrency`, else as many as the
        rate controller may want (it paces them)."""
        if access is not None and access.concurrency:
            return access.concurrency
        return self.config.concurrency or ADAPTIVE_IN_FLIGHT

    def _generate(
        self,
        access: ModelAccess,
        asking: Asking,
        items: dict[str, list[suites.Item]],
        samples: list[suites.Item],
        cut: set[str] | None = None,
    ) -> dict[str, str]:
        c = self.config
        work: list[tuple[suites.Item, ModelClient]] = []
        for name, suite_items in items.items():
            suite = c.suites[name]
            first_line = suite.kind.value in suites.FIRST_LINE_KINDS
            client = self._client_for(access, asking, suite.max_tokens, first_line)
            work.extend((item, client) for item in suite_items)
        if samples:
            client = self._client_for(access, asking, c.heldout.max_tokens)
            work.extend((item, client) for item in samples)
        return self._ask_all(
            f"test {access.which}",
            self._in_flight(access),
            work,
            lambda w: w[1].ask([{"role": "user", "content": w[0].prompt}]),
            cut,
            local=access.client if access.provider not in REMOTE_PROVIDERS else None,
        )

    def _ask_all(
        self,
        desc: str,
        concurrency: int,
        work: list[Any],
        ask: Callable[[Any], Any],
        cut: set[str] | None = None,
        local: Client | None = None,
    ) -> dict[str, str]:
        """Every answer's text by item id; the ids of answers cut at max_tokens go into `cut`. On
        Ctrl-C or an error, a `local` model's answers in flight are dropped (they cost nothing); a
        paid model's finish and are cached."""
        out: dict[str, str] = {}
        with (
            tqdm(total=len(work), desc=desc, unit="prompt", disable=not self.config.progress) as bar,
            ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool,
        ):
            futures = [(w, pool.submit(ask, w)) for w in work]
            try:
                for w, future in futures:
                    answer = future.result()
                    key = w[0].id if isinstance(w[0], suites.Item) else w[0]
                    out[key] = answer.text
                    if cut is not None and answer.truncated:
                        cut.add(key)
                    bar.update(1)
            except BaseException:
                for _, future in futures:
                    future.cancel()
                stop_all()  # senders waiting for a slot give up now, not after their pause
                if local is not None:
                    local.abandon()
                raise
        return out

    def _judged(self, items: dict[str, list[suites.Item]]) -> bool:
        return any(self.config.suites[n].kind.value == "judge" for n in items)

    def _judge(
        self,
        asking: Asking,
        items: dict[str, list[suites.Item]],
        answers: dict[str, dict[str, str]],
    ) -> dict[str, dict[str, tuple[str, str]]]:
        """{model: {item id: verdict pair}}: both_orders, (reply with the model as (a), as (b));
        alpaca_eval, (reply, the order shown) (see recipe/evaluation/judging.py)."""
        c = self.config
        j = c.judge
        protocol = c.judge_protocol.value
        judged = [i for n, its in items.items() if c.suites[n].kind.value == "judge" for i in its]
        sampling = {"max_tokens": judging.max_tokens(protocol, c.judge_max_tokens), "temperature": 0.0, "seed": c.seed}
        spec = ModelSpec.configured(j)
        remote = spec.provider in REMOTE_PROVIDERS
        with connected(j, self.root, c, pool_size=self._in_flight(None) if remote else 1) as client:
            controller = asking.controller(client, spec.model, "judge") if remote else None
            judge = ModelClient(
                client, asking.cache, spec, sampling=sampling, ledger=asking.ledger, controller=controller
            )
            work = []
            for which in answers:
                for item in judged:
                    work.extend(judging.requests(protocol, c.seed, which, item, answers[which][item.id]))
            replies = self._ask_all(
                "judge",
                self._in_flight(None) if remote else 1,
                work,
                lambda w: judge.ask(w[1]),
                local=None if remote else client,
            )
        return {
            which: {
                item.id: judging.verdict(protocol, c.seed, which, item, answers[which][item.id], replies)
                for item in judged
            }
            for which in answers
        }

    def _heldout_loss(
        self,
        model_dir: Path,
        weights: str | None,
        records: list[dict[str, Any]],
        trained: TrainedModel,
        store: ArtifactStore,
    ) -> tuple[float, list[float | None]]:
        """Mean loss per answer token on the eval split, in the format the model was trained in (the
        figure training's eval loss computes), and each example's own (trainer.heldout_loss).
        With `weights` (the base model's identity), kept in the store by what decides it (the
        weights, the conversations, the format, the row length): every job of a share sweep holds
        out the same examples, so the base model's loss is computed once for the whole sweep."""
        from recipe.providers.local import trainer

        rows_of = trained.max_seq_length or 2048
        conversations = [r["messages"] for r in records]
        if not weights:
            return trainer.heldout_loss(str(model_dir), conversations, trained.format.template, rows_of)
        what = {"version": HELDOUT_LOSS_VERSION, "weights": weights, "template": trained.format.template}
        key = content_digest({**what, "rows": rows_of, "conversations": conversations}, 32)
        kept = store.record("heldout-loss", key)
        if kept is not None:
            return kept["loss"], kept["each"]
        loss, each = trainer.heldout_loss(str(model_dir), conversations, trained.format.template, rows_of)
        store.put_record("heldout-loss", key, {**what, "loss": loss, "each": each})
        return loss, each

    # -- scores and files --------------------------------------------------------------------------

    def _score(
        self,
        items: dict[str, list[suites.Item]],
        answers: dict[str, dict[str, str]],
        verdicts: dict[str, dict[str, tuple[str, str]]],
        heldout_loss: dict[str, float],
        heldout_components: dict[str, dict[str, Any]],
    ) -> dict[str, dict[str, Any]]:
        scores: dict[str, dict[str, Any]] = {}
        for which, mine in answers.items():
            per_suite: dict[str, Any] = {}
            for name, suite_items in items.items():
                kind = self.config.suites[name].kind.value
                if kind in ("mqa", "synthetic"):
                    per_suite[name] = suites.score_mqa(suite_items, mine)
                elif kind == "booksum":
                    per_suite[name] = suites.score_booksum(suite_items, mine)
                elif self.config.judge_protocol.value == "alpaca_eval":
                    per_suite[name] = suites.score_judge_alpaca_eval(suite_items, mine, verdicts[which])
                else:
                    per_suite[name] = suites.score_judge(suite_items, verdicts[which])
            scores[which] = {
                "suites": per_suite,
                "heldout_loss": heldout_loss.get(which),
                "heldout_components": heldout_components.get(which, {}),
            }
        return scores
