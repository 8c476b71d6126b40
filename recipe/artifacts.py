"""What each stage's artifact holds: the typed contract between stages.

A stage reads its inputs only through these types (`X.load(artifact)`), never another stage's
config and never by importing another stage; a stage writes its own artifact with `X(...).manifest()`
(merged into manifest.json by the store). The fields below are what downstream stages may rely on;
everything else in a manifest is a record for people (counts, timings, costs).

- `Conversations` (Distill): chat conversations, `messages` with roles, one per line.
- `Mixture` (Mix): the selected conversations in one canonical form (messages plus the component,
  source and stratum each came from), for training and held-out evaluation; and the upload file
  `mixture.jsonl` rendered as `mix.format`/`mix.template` asked, for people and for hosted trainers
  whose target model takes exactly that format.
- `TrainedModel` (Train): where the tuned model is (a local directory, or a Together model name),
  which base model it came from, and the `PromptFormat` it was trained in. Test and Deploy prompt it
  in that format, so a model is never tested in a format it was not trained in.
- `Deployment` (Deploy): a URL and model name that `recipe-chat` can talk to.
- `Planned` (any stage, in a dry run): the size a stage expects its artifact to have, so the next
  stage can plan (and price) from it before the artifact exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from recipe.errors import RecipeError
from recipe.store import Artifact

Message = dict[str, str]
CONVERSATIONS_FILE = "conversations.jsonl"
MIXTURE_FILE = "mixture.jsonl"
EVAL_FILE = "eval.jsonl"
EVAL_CONVERSATIONS_FILE = "eval_conversations.jsonl"
SERVING_RECORDS = "serving"  # store records of local deployments serving in the foreground right now


@dataclass(frozen=True)
class Planned:
    """What a dry run expects a stage to produce: examples and, when it can say, their tokens
    (`basis` says how the tokens were estimated, for the plan's text)."""

    examples: int | None
    tokens: int | None = None
    eval_examples: int = 0
    eval_tokens: int | None = None
    basis: str = ""
    provider: str | None = None  # a trained model's: local | together

    @property
    def tokens_per_example(self) -> float | None:
        return self.tokens / self.examples if self.tokens is not None and self.examples else None


class ArtifactError(RecipeError):
    """An upstream artifact lacks what this stage needs (an older or foreign store entry)."""


def _need(manifest: dict[str, Any], key: str, artifact: Artifact) -> Any:
    if key not in manifest:
        raise ArtifactError(
            f"{artifact.path}: the {artifact.stage} artifact has no {key!r}; it was written by an older "
            f"version of recipe: delete it (or the store) and run stages=[{artifact.stage}] again"
        )
    return manifest[key]


def read_conversations(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a canonical conversations file (each holds `messages`)."""
    with open(path, "rb") as f:
        for line in f:
            yield orjson.loads(line)


@dataclass(frozen=True)
class PromptFormat:
    """How a model's prompts are written, as recorded by Train and obeyed by Test and Deploy.

    `chat_template`: chat requests with messages; the server applies the model's own chat template
    (the tokenizer's, for local models; Together's, for `messages` uploads). `text`: the model was
    trained on text rendered with the named `template` (e.g. the seed's `llama2_inst`), so it is
    prompted through raw completions rendered with that same template."""

    kind: str  # chat_template | text
    template: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("chat_template", "text") or (self.kind == "text") != (self.template is not None):
            raise ValueError(f"not a prompt format: kind={self.kind!r} template={self.template!r}")

    @property
    def api(self) -> str:
        return "chat" if self.kind == "chat_template" else "completions"

    def describe(self) -> str:
        return "the model's chat template" if self.kind == "chat_template" else f"text template {self.template}"


@dataclass(frozen=True)
class Conversations:
    """Distill's output: `conversations.jsonl`, lines `{"id", "messages"}`."""

    path: Path  # the file

    @classmethod
    def load(cls, artifact: Artifact) -> Conversations:
        return cls(artifact.path / _need(artifact.manifest, "file", artifact))

    def manifest(self) -> dict[str, Any]:
        return {"file": self.path.name}


@dataclass(frozen=True)
class Mixture:
    """Mix's output. `conversations` and `eval_conversations` (canonical: `messages`, `component`,
    `source`, `stratum` per line) are what trainers and Test read; `upload` is `mixture.jsonl` in the
    format the mix config asked for (with `eval.jsonl` beside it when there is an eval split)."""

    dir: Path
    conversations_file: str
    eval_conversations_file: str | None
    upload_file: str
    upload_sha256: str
    upload_format: str  # text | messages | prompt_completion
    upload_template: str  # the mixture's template (for text and prompt_completion)
    component_templates: dict[str, str]  # components whose template overrides upload_template
    eval_upload_file: str | None
    contamination: dict[str, Any] | None  # what Mix's decontamination checked and found (None: off)
    tokens: int | None = None  # the training split's tokens as Mix counted them (mix.tokenizer)
    eval_tokens: int | None = None
    examples: int | None = None
    eval_examples: int = 0

    @classmethod
    def load(cls, artifact: Artifact) -> Mixture:
        m = artifact.manifest
        canonical = _need(m, "conversations", artifact)
        eval_info = m.get("eval") or {}
        return cls(
            dir=artifact.path,
            conversations_file=canonical["file"],
            eval_conversations_file=(eval_info.get("conversations") or {}).get("file"),
            upload_file=m["file"],
            upload_sha256=m["sha256"],
            upload_format=m["format"],
            upload_template=m["template"],
            component_templates=dict(m.get("component_templates") or {}),
            eval_upload_file=eval_info.get("file"),
            contamination=m.get("contamination"),
            tokens=m.get("tokens"),
            eval_tokens=(m.get("eval") or {}).get("tokens"),
            examples=m.get("examples"),
            eval_examples=(m.get("eval") or {}).get("examples", 0),
        )

    def size(self) -> Planned:
        """The mixture's size in the shape a dry run plans with."""
        return Planned(self.examples, self.tokens, self.eval_examples, self.eval_tokens, "the mixture's own count")

    def records(self, split: str = "train") -> Iterator[dict[str, Any]]:
        """Canonical records (`messages`, `component`, `source`, `stratum`) of `train` or `eval`."""
        name = self.conversations_file if split == "train" else self.eval_conversations_file
        if name is None:
            return iter(())
        return read_conversations(self.dir / name)

    def conversations(self, split: str = "train") -> list[list[Message]]:
        return [r["messages"] for r in self.records(split)]

    def template_for(self, component: str, template: str) -> str:
        """The text template of one component's examples when rendering in `template`: components
        the mix config pinned (e.g. `raw` for BookSum's plain text) keep theirs."""
        return self.component_templates.get(component, template)


@dataclass(frozen=True)
class TrainedModel:
    """Train's output: the tuned model, its base, and the prompt format it was trained in."""

    provider: str  # local | together
    model: str  # local: the merged model's directory (relative to the artifact); together: model_output_name
    base_model: str | None  # local: a HF directory or hub id, None = the embedded GGUF; together: the model id
    format: PromptFormat
    weights: str  # identity of the tuned weights (part of request-cache keys)
    max_seq_length: int | None = None  # local: the trainer's row length (held-out loss packs the same way)
    eval_loss: float | None = None

    @classmethod
    def load(cls, artifact: Artifact) -> TrainedModel:
        fields = _need(artifact.manifest, "trained_model", artifact)
        model = fields["model"]
        if fields["provider"] == "local":  # stored relative to the artifact: the store can move
            model = str(artifact.path / model)
        return cls(**{**fields, "model": model, "format": PromptFormat(**fields["format"])})

    def manifest(self) -> dict[str, Any]:
        return {"trained_model": asdict(self)}

    @property
    def local_dir(self) -> Path:
        if self.provider != "local":
            raise ArtifactError(f"the {self.provider} model {self.model} has no local directory")
        return Path(self.model)


@dataclass(frozen=True)
class Deployment:
    """Deploy's output: where the model answers (an OpenAI-compatible base URL) and its name."""

    provider: str  # local | together
    url: str
    model: str
    model_dir: str | None = None  # local: the served directory (recipe-chat serves it again when stopped)
    key_env: str | None = None  # the environment variable holding the key the URL needs
    format: PromptFormat = PromptFormat("chat_template")  # the format the model was trained in

    @classmethod
    def load(cls, artifact: Artifact) -> Deployment:
        return cls._from(_need(artifact.manifest, "deployment", artifact))

    @classmethod
    def from_manifest_file(cls, path: Path) -> Deployment:
        manifest = orjson.loads(path.read_bytes())
        if "deployment" not in manifest:
            raise ArtifactError(f"{path}: not a deployment written by this version of recipe; run stages=[deploy]")
        return cls._from(manifest["deployment"])

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Deployment:
        """A deployment written as `manifest()` into a store record (plus fields of the record's own)."""
        if "deployment" not in record:
            raise ArtifactError("a serving record without its deployment: written by another version of recipe")
        return cls._from(record["deployment"])

    @classmethod
    def _from(cls, fields: dict[str, Any]) -> Deployment:
        return cls(**{**fields, "format": PromptFormat(**fields["format"])})

    def manifest(self) -> dict[str, Any]:
        return {"deployment": asdict(self)}
