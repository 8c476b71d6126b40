"""What each stage's artifact holds: the typed contract between stages.

A stage reads its inputs only through these types (`X.load(artifact)`), never another stage's
config and never by importing another stage; a stage writes its own artifact with `X(...).manifest()`
(merged into manifest.json by the store). The fields below are what downstream stages may rely on;
everything else in a manifest is a record for people (counts, timings, costs).

- `Conversations` (Distill): chat conversations, `messages` with roles, one per line.
- `Mixture` (Mix): a training split and a held-out split (`MixtureSplit`), each the selected
  conversations in one canonical form (messages plus the component, source and stratum each came
  from), for training and held-out evaluation, and an upload file (`mixture.jsonl`, `eval.jsonl`)
  rendered as `mix.format`/`mix.template` asked, for people and for hosted trainers whose target
  model takes exactly that format; with what each split holds (examples and tokens per component).
- `TrainedModel` (Train): where the tuned model is (a local directory, or a Together model name),
  which base model it came from, and the `PromptFormat` it was trained in. Test and Deploy prompt it
  in that format, so a model is never tested in a format it was not trained in.
- `TestReport` (Test): the report people read and the figures sweeps compare (headline figures
  per model: the tuned model's are `metrics`).
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
from recipe.store import Artifact, content_digest, sha256_file

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


def file_sha256(artifact: Artifact, name: str) -> str:
    """A file's sha256 as the store listed it when the artifact was made (hashed now if unlisted)."""
    listed = (artifact.manifest.get("files") or {}).get(name) or {}
    return listed.get("sha256") or sha256_file(artifact.path / name)


def content_id(stage: str, artifact: Artifact, **narrow: Any) -> str:
    """What a stage's artifact is, by content (its type's `identity`, `narrow`ed to what a reader
    reads) as 20 hex digits: a stage downstream is keyed on this, so an input rebuilt byte for byte
    is still a cache hit below it (Nix's content-addressed derivations)."""
    value = ARTIFACT_TYPES[stage].load(artifact)
    return content_digest(value.identity(artifact, **narrow))


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

    def identity(self, artifact: Artifact) -> dict[str, Any]:
        return {"conversations": file_sha256(artifact, self.path.name)}


@dataclass(frozen=True)
class Composition:
    """What a split holds: examples and tokens per component, examples per stratum (stratified
    components only)."""

    counts: dict[str, int]
    tokens_by_component: dict[str, int]
    strata: dict[str, dict[str, int]]

    @property
    def tokens(self) -> int:
        return int(sum(self.tokens_by_component.values()))


@dataclass(frozen=True)
class MixtureSplit:
    """One split of a mixture (train, or the held-out eval split): the upload file rendered as the
    mix config asked, the canonical conversations file beside it (the same examples in the same
    order), and what it holds."""

    upload_file: str  # mixture.jsonl | eval.jsonl
    upload_sha256: str
    conversations_file: str  # conversations.jsonl | eval_conversations.jsonl
    conversations_sha256: str
    examples: int
    composition: Composition  # examples and tokens per component, examples per stratum

    @property
    def tokens(self) -> int:
        return self.composition.tokens

    def manifest(self) -> dict[str, Any]:
        return {
            "file": self.upload_file,
            "sha256": self.upload_sha256,
            "examples": self.examples,
            "tokens": self.tokens,
            "counts": self.composition.counts,
            "tokens_by_component": self.composition.tokens_by_component,
            "strata": self.composition.strata,
            "conversations": {
                "file": self.conversations_file,
                "sha256": self.conversations_sha256,
                "examples": self.examples,
            },
        }

    @classmethod
    def from_manifest(cls, m: dict[str, Any]) -> MixtureSplit:
        return cls(
            upload_file=m["file"],
            upload_sha256=m["sha256"],
            conversations_file=m["conversations"]["file"],
            conversations_sha256=m["conversations"]["sha256"],
            examples=m["examples"],
            composition=Composition(m["counts"], m["tokens_by_component"], m["strata"]),
        )


@dataclass(frozen=True)
class Mixture:
    """Mix's output: the training split and the held-out split (None without `mix.eval_fraction`).
    Trainers and Test read the canonical conversations (`messages`, `component`, `source`,
    `stratum` per line); the upload files are in the format the mix config asked for (`format`,
    with `template` and the components that pinned their own)."""

    dir: Path
    format: str  # text | messages | prompt_completion
    template: str  # the mixture's text template (for text and prompt_completion)
    component_templates: dict[str, str]  # components whose template overrides `template`
    train: MixtureSplit
    eval: MixtureSplit | None
    contamination: dict[str, Any] | None  # what Mix's decontamination checked and found (None: off)

    @classmethod
    def load(cls, artifact: Artifact) -> Mixture:
        m = artifact.manifest
        _need(m, "conversations", artifact)
        _need(m, "counts", artifact)
        return cls(
            dir=artifact.path,
            format=m["format"],
            template=m["template"],
            component_templates=dict(m.get("component_templates") or {}),
            train=MixtureSplit.from_manifest(m),
            eval=MixtureSplit.from_manifest(m["eval"]) if m.get("eval") else None,
            contamination=m.get("contamination"),
        )

    def manifest(self) -> dict[str, Any]:
        return {
            **self.train.manifest(),
            "format": self.format,
            "template": self.template,
            "component_templates": self.component_templates,
            "eval": self.eval.manifest() if self.eval else None,
            "contamination": self.contamination,
        }

    def identity(self, artifact: Artifact, contamination: bool = True) -> dict[str, Any]:
        """What the mixture is, by content: each split's files by sha256 and the format they are in;
        with `contamination`, what its check found (Test reports it; trainers do not read it)."""
        splits = {
            n: s and [s.upload_sha256, s.conversations_sha256] for n, s in (("train", self.train), ("eval", self.eval))
        }
        found = {"contamination": self.contamination} if contamination else {}
        return {
            **splits,
            "format": self.format,
            "template": self.template,
            "templates": self.component_templates,
            **found,
        }

    def size(self) -> Planned:
        """The mixture's size in the shape a dry run plans with."""
        held = self.eval
        return Planned(
            self.train.examples,
            self.train.tokens,
            held.examples if held else 0,
            held.tokens if held else None,
            "the mixture's own count",
        )

    def split(self, name: str = "train") -> MixtureSplit | None:
        return self.train if name == "train" else self.eval

    def records(self, split: str = "train") -> Iterator[dict[str, Any]]:
        """Canonical records (`messages`, `component`, `source`, `stratum`) of `train` or `eval`."""
        part = self.split(split)
        if part is None:
            return iter(())
        return read_conversations(self.dir / part.conversations_file)

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

    def identity(self, artifact: Artifact) -> dict[str, Any]:
        """The tuned weights (`weights` names them: the train fingerprint, or Together's model) and
        how they are prompted; not where they lie, nor the figures measured on them."""
        return {k: v for k, v in asdict(self).items() if k not in ("model", "eval_loss")}

    @property
    def local_dir(self) -> Path:
        if self.provider != "local":
            raise ArtifactError(f"the {self.provider} model {self.model} has no local directory")
        return Path(self.model)


@dataclass(frozen=True)
class TestReport:
    """Test's output: `report.md` for people, `metrics.json` with every figure per model and suite,
    the answers in `generations.jsonl`, and the headline figures per model (`summary`)."""

    __test__ = False  # not a pytest test class

    dir: Path
    report_file: str
    metrics_file: str
    generations_file: str
    chart_file: str
    summary: dict[str, dict[str, float]]  # model (base, tuned) -> headline figure -> value

    @property
    def metrics(self) -> dict[str, float]:
        """The figures a sweep compares: the tuned model's (the only model's when one was tested)."""
        return self.summary.get("tuned") or next(iter(self.summary.values()), {})

    def identity(self, artifact: Artifact) -> dict[str, Any]:
        return {"metrics": file_sha256(artifact, self.metrics_file), "summary": self.summary}

    @classmethod
    def load(cls, artifact: Artifact) -> TestReport:
        m = artifact.manifest
        return cls(
            dir=artifact.path,
            report_file=_need(m, "report", artifact),
            metrics_file=m["metrics_file"],
            generations_file=m["generations"],
            chart_file=m["chart"],
            summary=m["summary"],
        )

    def manifest(self) -> dict[str, Any]:
        return {
            "report": self.report_file,
            "metrics_file": self.metrics_file,
            "generations": self.generations_file,
            "chart": self.chart_file,
            "summary": self.summary,
            "metrics": self.metrics,
        }


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

    def identity(self, artifact: Artifact) -> dict[str, Any]:
        return asdict(self)


# Each stage's artifact type (what `content_id` loads to name an artifact by its content).
ARTIFACT_TYPES: dict[str, Any] = {
    "distill": Conversations,
    "mix": Mixture,
    "train": TrainedModel,
    "test": TestReport,
    "deploy": Deployment,
}
