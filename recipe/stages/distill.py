"""Distill: the recipe's Step I. Replay the human turns of ShareGPT conversations to a teacher,
multi-turn (each turn sees the whole history with the teacher's own earlier answers), and keep
its answers as chat conversations for Mix.

What it supports:
- teachers: `local` (the embedded SmolLM2 behind a llama.cpp server on 127.0.0.1, the default),
  `together` (chat, or raw completions with the seed's `[INST] ... [/INST]` prompts and `[INST]`
  stop), `openai_compatible` (any base URL); one HTTP client, one code path;
- the seed's cleanup of ShareGPT page counters (`1 / 1` glued to a turn); limits on conversations,
  turns, turn length and history length; skipped turns counted;
- a per-request SQLite cache shared by runs: answers are committed as they arrive, so a killed run
  resumes without sending any finished request again;
- conversations in parallel (`concurrency`), requests- and tokens-per-minute limits, retries with
  backoff honouring Retry-After; a conversation whose request fails for good is recorded as failed
  and the run goes on; the stage fails if more than `max_failure_share` of them fail;
- money: usage and cost in a ledger, a dry-run estimate walked through the cache, and
  `budget.max_usd`, past which no new request is sent (the stage then stops, saying so);
- `mode: batch` (Together): one batch job per turn index, its id stored before waiting so a re-run
  re-attaches; results land in the same cache.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from recipe.artifacts import CONVERSATIONS_FILE, Planned
from recipe.artifacts import Conversations as ConversationsArtifact
from recipe.config import DistillConfig
from recipe.data import contamination
from recipe.data.contamination import Decontamination
from recipe.data.jsonl import encode_line
from recipe.data.sources import (
    SHAREGPT_ROLES,
    check_source,
    cut_page_counter,
    iter_records,
    seed_output,
    sharegpt_turns,
    source_identity,
)
from recipe.data.tokens import approx_tokens
from recipe.providers.cache import RequestCache
from recipe.providers.http import APIError, Client
from recipe.providers.limits import ADAPTIVE_IN_FLIGHT, Controller, stop_all
from recipe.providers.model_client import (
    REMOTE_PROVIDERS,
    Answer,
    BudgetReached,
    Ledger,
    ModelClient,
    ModelSpec,
    ask_batch,
    connected,
    paced,
)
from recipe.stages import Output, Plan, Stage, StageError, Workspace, missing_extra
from recipe.store import INDEXES, Artifact

log = logging.getLogger(__name__)
TURN_STATS = ("skipped_empty_turns", "skipped_long_turns", "turns_beyond_max_turns", "no_turns", "page_counters_cut")
Message = dict[str, str]


@dataclass
class Conversation:
    id: str
    turns: list[str]
    messages: list[Message] = field(default_factory=list)
    error: str | None = None
    truncated: int = 0  # answers cut at max_tokens (finish_reason "length")

    @property
    def done(self) -> bool:
        return self.error is None and len(self.messages) == 2 * len(self.turns)


@dataclass(frozen=True)
class Sent:
    """How a run's requests went: retries, requests sent again after a crash, the rate controller's
    account (a remote teacher); made by `run` and handed on, never kept on the stage."""

    retries: int
    resent: int
    sending: dict[str, Any] | None


class Distill(Stage):
    """Build `conversations.jsonl` (teacher answers, multi-turn) and a manifest of counts and cost."""

    name = "distill"
    version = "1"
    schema = DistillConfig

    def __init__(self, config: DictConfig, root: DictConfig) -> None:
        super().__init__(config, root)
        c = config
        if c.source not in root.sources:
            raise StageError(f"distill.source={c.source!r}: no such source (known: {', '.join(sorted(root.sources))})")
        if root.sources[c.source].kind.value != "sharegpt":
            raise StageError(
                f"distill.source={c.source!r}: must be a sharegpt source, not {root.sources[c.source].kind.value}"
            )
        check_source(c.source, root.sources[c.source])
        for key in ("max_turns", "max_turn_chars", "concurrency"):
            if c[key] is not None and c[key] < 1:
                raise StageError(f"distill.{key}={c[key]}: must be at least 1")
        if c.max_conversations is not None and c.max_conversations < 1:
            raise StageError(f"distill.max_conversations={c.max_conversations}: must be at least 1 (or null for all)")
        provider = c.teacher.provider.value
        if provider == "openai_compatible" and not c.teacher.base_url:
            raise StageError("distill.teacher.base_url: required for provider openai_compatible")
        if c.mode.value == "batch" and provider != "together":
            raise StageError(f"distill.mode=batch needs distill.teacher.provider=together, not {provider}")
        if c.sampling.max_tokens < 1:
            raise StageError(f"distill.sampling.max_tokens={c.sampling.max_tokens}: must be at least 1")
        d = c.decontaminate  # human turns holding a Test prompt are never sent (recipe/data/contamination.py)
        self.decon = Decontamination(d, "distill.decontaminate") if d is not None and d.enabled else None

    # ---- identity and plan -----------------------------------------------------------------
    def semantic_config(self) -> dict[str, Any]:
        semantic = super().semantic_config()
        semantic["source_data"] = source_identity(self.config.source, self.root.sources[self.config.source])
        semantic["decontaminate"] = contamination.identity(self.config.decontaminate, "distill.decontaminate")
        return semantic

    def _seed_prompts(self) -> bool:
        return self.config.teacher.api.value == "completions" and self.config.teacher.template == "llama2_inst_seed"

    def conversations(self, decon: Decontamination | None = None) -> tuple[list[Conversation], dict[str, int]]:
        """The conversations to replay: human turns, cleaned, limited, decontaminated (not in a dry
        run: the suites may be on the hub); and what was left out."""
        c = self.config
        stats = dict.fromkeys(TURN_STATS, 0)
        seed = self._seed_prompts()
        conversations = []
        for i, (record, where) in enumerate(iter_records(c.source, self.root.sources[c.source])):
            if c.max_conversations is not None and len(conversations) >= c.max_conversations:
                break
            human = []
            for speaker, value in sharegpt_turns(record, where):
                if SHAREGPT_ROLES.get(speaker) != "user":
                    continue
                text, counted = cut_page_counter(value)
                text = text.strip()
                if len(text) > c.max_turn_chars:
                    stats["skipped_long_turns"] += 1
                elif seed:  # the seed sent every human turn verbatim: empty ones and bare counters too
                    stats["page_counters_cut"] += counted
                    human.append(value)
                elif not text:
                    stats["skipped_empty_turns"] += 1
                else:
                    stats["page_counters_cut"] += counted
                    human.append(text)
            stats["turns_beyond_max_turns"] += max(0, len(human) - c.max_turns)
            if not human:
                stats["no_turns"] += 1
                continue
            conversations.append(Conversation(str(record.get("id", i)), human[: c.max_turns]))
        if decon is not None:
            conversations = decon.filter(conversations, lambda conv: conv.turns, lambda conv: conv.id)
        return conversations, stats

    def uses_together(self) -> bool:
        return self.config.teacher.provider.value == "together"

    def budget(self) -> tuple[str, float | None]:
        return "distill.budget.max_usd", self.config.budget.max_usd

    def _plan_unread(self) -> Plan:
        """A hub source is not read by a dry run: the cost from stated assumptions."""
        c = self.config
        teacher = f"{c.teacher.provider.value}:{c.teacher.model}"
        if c.max_conversations is None:
            return Plan(
                f"every conversation of sources.{c.source} (hub) -> {teacher}",
                "not read offline: set distill.max_conversations to price it",
            )
        ledger = Ledger(c.prices.input_per_mtok, c.prices.output_per_mtok, None, self._price_factor())
        n, turns = c.max_conversations, min(c.estimate_turns, c.max_turns)
        u, a = c.estimate_turn_tokens, c.estimate_answer_tokens
        prompt = n * (u * turns * (turns + 1) / 2 + a * turns * (turns - 1) / 2)  # each turn resends the history
        usd = round(ledger.cost(int(prompt), int(n * turns * a)), 2)
        worst = ledger.cost(int(prompt), int(n * turns * c.sampling.max_tokens))
        size = Planned(n, int(n * turns * (u + a)), basis=f"distill.estimate_*: {turns:g} turns of {u}+{a} tokens")
        return Plan(
            f"{n:,} conversations of sources.{c.source} (hub) -> {teacher}",
            f"not read offline: assuming {turns:g} turns of {u} tokens and answers of {a} (distill.estimate_*), "
            f"~{int(prompt):,} prompt tokens; at most ${worst:,.2f} with max_tokens={c.sampling.max_tokens}",
            usd=usd,
            size=size,
        )

    def plan(self, inputs: dict[str, Artifact | None], upstream: dict[str, Planned]) -> Plan:
        c = self.config
        if self.root.sources[c.source].hub_id:
            return self._plan_unread()
        conversations, _ = self.conversations()
        missing = None
        if c.teacher.provider.value == "local" and not c.teacher.base_url:
            missing = missing_extra("distill.teacher.provider=local", ("llama_cpp",), gguf=c.teacher.gguf is None)
        # A dry run writes nothing: without a cache file yet, every request is still to send.
        cache = RequestCache(c.cache_path) if Path(c.cache_path).exists() and not missing else None
        teacher = self._teacher(None, cache, Ledger(0, 0, None)) if cache is not None else None
        ledger = Ledger(c.prices.input_per_mtok, c.prices.output_per_mtok, None, self._price_factor())
        cached = to_send = prompt_tokens = trained_tokens = 0
        for conv in conversations:
            history: list[Message] = []
            following_cache = True
            for turn in conv.turns:
                history.append({"role": "user", "content": turn})
                answer = teacher.cached(history) if following_cache and teacher is not None else None
                trained_tokens += approx_tokens(turn) + (
                    approx_tokens(answer.text) if answer else c.estimate_answer_tokens
                )
                if answer is not None:
                    cached += 1
                    history.append({"role": "assistant", "content": answer.text})
                    continue
                following_cache = False  # later turns depend on an answer not known yet
                to_send += 1
                prompt_tokens += approx_tokens(json.dumps(history)) + 8
                history.append({"role": "assistant", "content": "x" * 4 * c.estimate_answer_tokens})
        if cache is not None:
            cache.close()
        usd = round(ledger.cost(prompt_tokens, to_send * c.estimate_answer_tokens), 2)
        worst = ledger.cost(prompt_tokens, to_send * c.sampling.max_tokens)
        turns = cached + to_send
        basis = f"{c.estimate_answer_tokens}-token answers (distill.estimate_answer_tokens) for those not cached"
        return Plan(
            f"{len(conversations):,} conversations ({turns:,} turns) -> {c.teacher.provider.value}:{c.teacher.model}: "
            f"{cached:,} answers cached, {to_send:,} to send",
            f"~{prompt_tokens:,} prompt tokens; ~${usd:,.2f} with {basis}, at most ${worst:,.2f} with "
            f"max_tokens={c.sampling.max_tokens}; "
            + (f"then {self.decon.describe()}" if self.decon else "no decontamination"),
            usd=usd,
            size=Planned(len(conversations), trained_tokens, basis=basis),
            needs=missing,
        )

    def _price_factor(self) -> float:
        return self.config.prices.batch_factor if self.config.mode.value == "batch" else 1.0

    # ---- run ----------------------------------------------------------------------------------
    def run(self, inputs: dict[str, Artifact], workspace: Workspace) -> Output:
        c, out_dir = self.config, workspace.out_dir
        decon = self.decon.for_run(workspace.store.root / INDEXES) if self.decon is not None else None
        conversations, stats = self.conversations(decon)
        if not conversations:
            raise StageError(f"sources.{c.source}: no conversation has a human turn to replay")
        cache = RequestCache(c.cache_path)
        ledger = Ledger(c.prices.input_per_mtok, c.prices.output_per_mtok, c.budget.max_usd, self._price_factor())
        try:
            with connected(c.teacher, self.root, c, pool_size=self._in_flight()) as client:
                teacher = self._teacher(client, cache, ledger)
                if c.mode.value == "batch":
                    self._run_batch(teacher, client, conversations, ledger, out_dir)
                else:
                    self._run_online(teacher, conversations, ledger, client)
                # Requests a dead process had in flight and this one sent again, over every crash so far.
                resent = cache.resent_count(teacher.asked)
                sending = teacher.controller.stats.record() if teacher.controller is not None else None
        finally:
            cache.close()
        sent = Sent(client.retries.value, resent, sending)
        return self._finish(conversations, stats, ledger, out_dir, sent, decon)

    def _in_flight(self) -> int:
        """Conversations in flight: `concurrency` when set, else as many as the rate controller may
        want for a remote teacher (it paces them), one for a local server (llama-cpp-python's server
        answers one request at a time: more in flight only queue behind its lock)."""
        c = self.config
        if c.concurrency is not None:
            return c.concurrency
        return ADAPTIVE_IN_FLIGHT if c.teacher.provider.value in REMOTE_PROVIDERS else 1

    def _teacher(self, client: Client | None, cache: RequestCache | None, ledger: Ledger) -> ModelClient:
        c = self.config
        sampling = OmegaConf.to_container(c.sampling, resolve=True)
        assert isinstance(sampling, dict)
        spec = ModelSpec.configured(c.teacher)
        controller = None
        if client is not None and cache is not None and spec.provider in REMOTE_PROVIDERS:
            controller = paced(cache, client, spec.model, c.requests_per_minute, c.tokens_per_minute)
        return ModelClient(
            client,  # type: ignore[arg-type]  (None only for dry-run key lookups)
            cache,  # type: ignore[arg-type]
            spec,
            sampling=sampling,
            ledger=ledger,
            controller=controller,
        )

    def _run_online(
        self, teacher: ModelClient, conversations: list[Conversation], ledger: Ledger, client: Client
    ) -> None:
        progress = SpendProgress(len(conversations), ledger, client, self.config.progress, teacher.controller)
        stop = threading.Event()  # set on Ctrl-C or any crash: no new request after it

        def converse(conv: Conversation) -> None:
            try:
                for turn in conv.turns:
                    if stop.is_set():
                        return
                    conv.messages.append({"role": "user", "content": turn})
                    answer = teacher.ask(conv.messages)
                    conv.messages.append({"role": "assistant", "content": answer.text})
                    conv.truncated += answer.truncated
            except BudgetReached:
                conv.error = "budget"
                del conv.messages[len(conv.messages) // 2 * 2 :]
            except APIError as e:
                conv.error = str(e)
            progress.item_done(conv.error is not None)

        pool = ThreadPoolExecutor(max_workers=self._in_flight())
        try:
            list(pool.map(converse, conversations))
        except BaseException:
            stop.set()  # queued conversations never start
            stop_all()  # senders waiting for a slot (a pause, a Retry-After) give up now
            if self.config.teacher.provider.value not in REMOTE_PROVIDERS:  # in-flight answers cost nothing
                client.abandon()
            # (a paid teacher's answers in flight finish and are cached: the next run does not pay twice)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            progress.close()

    def _run_batch(
        self, teacher: ModelClient, client: Client, conversations: list[Conversation], ledger: Ledger, out_dir: Path
    ) -> None:
        """One Together batch job per turn index; answers go to the cache like online ones."""
        c = self.config
        endpoint = "/v1/chat/completions" if teacher.api == "chat" else "/v1/completions"
        for index in range(c.max_turns):
            waiting: list[tuple[Conversation, dict[str, Any], str]] = []
            for conv in conversations:
                if conv.error is not None or len(conv.turns) <= index:
                    continue
                conv.messages.append({"role": "user", "content": conv.turns[index]})
                answer = teacher.cached(conv.messages)
                if answer is not None:
                    ledger.record_cached()
                    conv.messages.append({"role": "assistant", "content": answer.text})
                    conv.truncated += answer.truncated
                else:
                    body = teacher.body(conv.messages)
                    waiting.append((conv, body, teacher.key(body)))
            if not waiting:
                continue
            prompt_tokens = sum(approx_tokens(json.dumps(body)) for _, body, _ in waiting)
            try:
                reserved = ledger.reserve(prompt_tokens, c.sampling.max_tokens * len(waiting))
            except BudgetReached:
                for conv, _, _ in waiting:
                    conv.error = "budget"
                    conv.messages.pop()
                return
            requests = [(body, key) for _, body, key in waiting]
            answers = ask_batch(
                teacher, client, endpoint, f"turn {index + 1}", requests, out_dir, c.batch_poll_s, c.progress
            )
            ledger.settle(reserved, None)
            for conv, _, key in waiting:
                answer = answers.get(key)
                if isinstance(answer, Answer):
                    ledger.settle(0.0, answer)
                    conv.messages.append({"role": "assistant", "content": answer.text})
                    conv.truncated += answer.truncated
                else:
                    conv.error = answer or "no answer in the batch output"

    def _finish(
        self,
        conversations: list[Conversation],
        stats: dict[str, int],
        ledger: Ledger,
        out_dir: Path,
        sent: Sent,
        decon: Decontamination | None,
    ) -> Output:
        c = self.config
        budget_stopped = [conv for conv in conversations if conv.error == "budget"]
        failed = [conv for conv in conversations if conv.error not in (None, "budget")]
        details = {"usage": ledger.usage(), "cost_usd": round(ledger.cost_usd, 6)}
        if budget_stopped:
            done = sum(conv.done for conv in conversations)
            raise StageError(
                f"distill.budget.max_usd={c.budget.max_usd} reached: spent ${ledger.cost_usd:.4f} on "
                f"{ledger.requests} requests; {done} of {len(conversations)} conversations are complete and every "
                "answer is cached; raise the budget and run again to continue where this run stopped",
                details,
            )
        if len(failed) > c.max_failure_share * len(conversations):
            raise StageError(
                f"distill: {len(failed)} of {len(conversations)} conversations failed (distill.max_failure_share="
                f"{c.max_failure_share}); first error: {failed[0].error}; finished answers are cached",
                details,
            )
        done = [conv for conv in conversations if conv.done]
        cut = [conv for conv in done if conv.truncated]
        if cut:
            log.warning(
                "%d of %d conversations hold answers cut at max_tokens=%d (%d answers); %s (distill.keep_truncated)",
                len(cut),
                len(done),
                c.sampling.max_tokens,
                sum(conv.truncated for conv in cut),
                "kept" if c.keep_truncated else "left out",
            )
        kept = done if c.keep_truncated else [conv for conv in done if not conv.truncated]
        with open(out_dir / CONVERSATIONS_FILE, "wb") as f:
            for conv in kept:
                # The seed's turns went out verbatim and its answers came back raw: store them cut as its output was.
                messages = seed_output(conv.messages) if self._seed_prompts() else conv.messages
                f.write(encode_line({"id": conv.id, "messages": messages}))
        record = {
            "conversations": {
                "distilled": len(kept),
                "failed": len(failed),
                "without_turns": stats.pop("no_turns"),
                "truncated_left_out": len(done) - len(kept),
            },
            "turns": {"answered": sum(len(conv.turns) for conv in kept), **stats},
            # Answers cut at max_tokens (finish_reason "length"), in the conversations answered.
            "truncated": {
                "answers": sum(conv.truncated for conv in done),
                "conversations": len(cut),
                "kept": c.keep_truncated,
            },
            "failed": [{"id": conv.id, "error": conv.error} for conv in failed[:20]],
            "teacher": {"provider": c.teacher.provider.value, "model": c.teacher.model, "api": c.teacher.api.value},
            "retries": sent.retries,
            # Requests a process had in flight when it died (kill -9, a crash), sent again: over every crash.
            "resent_after_crash": sent.resent,
            # The rate controller's account (a remote teacher): requests, 429/503 answers, time waiting,
            # concurrency and rate reached.
            "sending": sent.sending,
            "contamination": decon.manifest() if decon else None,
            "contamination_counts": decon.counts() if decon else None,
            **details,
        }
        return Output(ConversationsArtifact(out_dir / CONVERSATIONS_FILE), record)


class SpendProgress:
    """One tqdm bar of finished conversations with the tokens, cost, retries and failures so far."""

    def __init__(
        self, total: int, ledger: Ledger, client: Client, enabled: bool, controller: Controller | None = None
    ) -> None:
        self.bar = tqdm(total=total, desc="distill", unit=" conv", disable=not enabled, mininterval=0.5)
        self.ledger, self.client, self.controller = ledger, client, controller
        self.failed = 0
        self._lock = threading.Lock()

    def item_done(self, failed: bool) -> None:
        with self._lock:
            self.failed += failed
            tokens = self.ledger.prompt_tokens + self.ledger.completion_tokens
            self.bar.set_postfix(
                tokens=tokens,
                cost=f"${self.ledger.cost_usd:.4f}",
                retries=self.client.retries.value,
                failed=self.failed,
                **self._rate(),
                refresh=False,
            )
            self.bar.update()

    def _rate(self) -> dict[str, Any]:
        """The live request rate and the 429s so far, from the rate controller."""
        if self.controller is None:
            return {}
        sent = self.controller.stats.record()
        return {"req_s": sent["mean_rps"], "429s": sent["throttled_429_503"]}

    def close(self) -> None:
        self.bar.close()
