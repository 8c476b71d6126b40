"""A fake Together API on 127.0.0.1 for tests, written from Together's OpenAPI spec.

It validates every JSON request body (and multipart form) against the spec's schemas
(tests/data/together-openapi.yaml, MIT, Together AI) and records each request, so tests can assert
what was sent and count duplicates. Faults can be switched on: HTTP errors with Retry-After or
retry-after-ms, dropped connections, slow replies.

Endpoints: POST /v1/chat/completions, /v1/completions, /v1/files/upload, /v1/batches;
GET /v1/files/{id}/content, /v1/batches/{id}. It will grow with the Train and Deploy issues.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC_PATH = Path(__file__).parent / "data" / "together-openapi.yaml"
_SPEC: dict[str, Any] | None = None


def spec() -> dict[str, Any]:
    global _SPEC
    if _SPEC is None:
        _SPEC = yaml.safe_load(SPEC_PATH.read_text())
    return _SPEC


def validator(schema_name: str) -> jsonschema.protocols.Validator:
    """A validator for one of the spec's component schemas ($refs resolve inside the spec)."""
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": spec()["components"]}
    return jsonschema.Draft202012Validator(root)


def request_schema(path: str, method: str = "post") -> dict[str, Any]:
    """The request body schema of an operation, for inline (non-$ref) multipart schemas."""
    return spec()["paths"][path][method]["requestBody"]["content"]["multipart/form-data"]["schema"]


@dataclass
class Recorded:
    method: str
    path: str
    body: Any
    headers: dict[str, str]


@dataclass
class Fault:
    kind: str  # "status" | "drop"
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    paths: tuple[str, ...] = ()  # empty: any path


def default_answer(body: dict[str, Any]) -> str:
    """A deterministic answer that shows what history the request carried."""
    if "messages" in body:
        users = [m["content"] for m in body["messages"] if m["role"] == "user"]
        return f"answer {len(users)} to: {users[-1][:60]}"
    prompt = body["prompt"]
    turn = prompt.rsplit("[INST]", 1)[-1].replace("[/INST]", "").strip()
    return f"answer {prompt.count('[INST]')} to: {turn[:60]}"


class FakeTogether:
    def __init__(
        self,
        answer: Callable[[dict[str, Any]], str] = default_answer,
        api_key: str | None = None,
        validate: bool = True,
    ):
        self.answer = answer
        self.validate = validate
        self.api_key = api_key
        self.delay_s = 0.0
        self.batch_polls_until_done = 2
        self.requests: list[Recorded] = []
        self.answered: list[str] = []  # bodies (canonical JSON) of POSTs answered with 200
        self.invalid: list[str] = []
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._validators = {
            "/v1/chat/completions": validator("ChatCompletionRequest"),
            "/v1/completions": validator("CompletionRequest"),
            "/v1/batches": validator("CreateBatchRequest"),
        }
        self._upload_schema = jsonschema.Draft202012Validator(
            {**request_schema("/files/upload"), "components": spec()["components"]}
        )
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms stall

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_POST(self) -> None:
                server._handle(self, "POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # ---- control ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeTogether:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail(
        self,
        status: int,
        times: int = 1,
        *,
        retry_after: float | None = None,
        retry_after_ms: int | None = None,
        paths: tuple[str, ...] = (),
    ) -> None:
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        with self._lock:
            self._faults += [Fault("status", status, headers, paths) for _ in range(times)]

    def drop(self, times: int = 1, paths: tuple[str, ...] = ()) -> None:
        with self._lock:
            self._faults += [Fault("drop", paths=paths) for _ in range(times)]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def posts(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and r.path == path]

    # ---- serving -----------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        path = h.path.split("?", 1)[0]
        content_type = h.headers.get("Content-Type", "")
        body: Any = None
        if raw and content_type.startswith("application/json"):
            body = json.loads(raw)
        elif raw and content_type.startswith("multipart/form-data"):
            body = _parse_multipart(content_type, raw)
        with self._lock:
            self.requests.append(Recorded(method, path, body, dict(h.headers)))
            fault = next((f for f in self._faults if _matches(f.paths, path)), None)
            if fault is not None:
                self._faults.remove(fault)
        if self.delay_s:
            time.sleep(self.delay_s)
        if fault is not None and fault.kind == "drop":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None:
            return _send(h, fault.status, {"error": {"message": "injected fault", "type": "fault"}}, fault.headers)
        if self.api_key and h.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _send(h, 401, {"error": {"message": "invalid API key", "type": "invalid_request_error"}})
        try:
            status, payload = self._route(method, path, body)
        except _BadRequest as e:
            with self._lock:
                self.invalid.append(f"{method} {path}: {e}")
            status, payload = 400, {"error": {"message": str(e), "type": "invalid_request_error"}}
        if isinstance(payload, bytes):
            _send_bytes(h, status, payload)
        else:
            _send(h, status, payload)
        if status == 200 and method == "POST" and path.endswith("completions"):
            with self._lock:
                self.answered.append(json.dumps(body, sort_keys=True))

    def _validate(self, path: str, body: Any) -> None:
        if not self.validate:
            return
        errors = sorted(self._validators[path].iter_errors(body), key=lambda e: e.path)
        if errors:
            raise _BadRequest(f"{errors[0].message} at {list(errors[0].path)}")

    def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            self._validate(path, body)
            return 200, self._complete(path, body)
        if method == "POST" and path == "/v1/files/upload":
            fields = {k: v for k, v in body.items() if k != "file"}
            errors = list(self._upload_schema.iter_errors({**fields, "file": "binary"}))
            if errors:
                raise _BadRequest(errors[0].message)
            file_id = f"file-{uuid.uuid4()}"
            self.files[file_id] = body["file"]
            return 200, {
                "id": file_id,
                "object": "file",
                "created_at": int(time.time()),
                "filename": body["file_name"],
                "bytes": len(body["file"]),
                "purpose": body["purpose"],
                "FileType": body.get("file_type", "jsonl"),
                "Processed": True,
            }
        if method == "GET" and path.startswith("/v1/files/") and path.endswith("/content"):
            file_id = path.split("/")[3]
            if file_id not in self.files:
                return 404, {"error": {"message": f"no file {file_id}"}}
            return 200, self.files[file_id]
        if method == "POST" and path == "/v1/batches":
            self._validate(path, body)
            if body["input_file_id"] not in self.files:
                raise _BadRequest(f"no file {body['input_file_id']}")
            batch_id = str(uuid.uuid4())
            job = {
                "id": batch_id,
                "input_file_id": body["input_file_id"],
                "endpoint": body["endpoint"],
                "status": "VALIDATING",
                "progress": 0.0,
                "created_at": "2026-01-01T00:00:00Z",
                "_polls": 0,
            }
            self.batches[batch_id] = job
            return 200, {"job": _public(job)}
        if method == "GET" and path.startswith("/v1/batches/"):
            job = self.batches.get(path.rsplit("/", 1)[1])
            if job is None:
                return 404, {"error": "no such batch"}
            job["_polls"] += 1
            if job["_polls"] >= self.batch_polls_until_done and job["status"] != "COMPLETED":
                self._run_batch(job)
            elif job["status"] == "VALIDATING":
                job.update(status="IN_PROGRESS", progress=50.0)
            return 200, _public(job)
        return 404, {"error": {"message": f"no route {method} {path}"}}

    def _complete(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        text = self.answer(body)
        prompt = json.dumps(body.get("messages")) if "messages" in body else body["prompt"]
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        common = {
            "id": str(uuid.uuid4()),
            "created": int(time.time()),
            "model": body["model"],
            "usage": usage,
            "prompt": [],
        }
        if path == "/v1/chat/completions":
            choice = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
            return {**common, "object": "chat.completion", "choices": [choice]}
        return {
            **common,
            "object": "text.completion",
            "choices": [{"index": 0, "text": " " + text, "finish_reason": "stop"}],
        }

    def _run_batch(self, job: dict[str, Any]) -> None:
        path = job["endpoint"]
        out = []
        for line in self.files[job["input_file_id"]].splitlines():
            request = json.loads(line)
            errors = list(self._validators[path].iter_errors(request["body"]))
            if errors:
                with self._lock:
                    self.invalid.append(f"batch line {request.get('custom_id')}: {errors[0].message}")
                continue
            response = {"status_code": 200, "body": self._complete(path, request["body"])}
            out.append(json.dumps({"id": str(uuid.uuid4()), "custom_id": request["custom_id"], "response": response}))
        output_id = f"file-{uuid.uuid4()}"
        self.files[output_id] = ("\n".join(out) + "\n").encode()
        job.update(status="COMPLETED", progress=100.0, output_file_id=output_id)


def _matches(patterns: tuple[str, ...], path: str) -> bool:
    """No patterns match every path; `prefix*` matches by prefix."""
    return not patterns or any(path.startswith(p[:-1]) if p.endswith("*") else path == p for p in patterns)


class _BadRequest(Exception):
    pass


def _public(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if not k.startswith("_")}


def _parse_multipart(content_type: str, raw: bytes) -> dict[str, Any]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        fields[name] = payload if part.get_filename() else payload.decode()
    return fields


def _send(h: BaseHTTPRequestHandler, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(payload).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        h.send_header(key, value)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def _send_bytes(h: BaseHTTPRequestHandler, status: int, data: bytes) -> None:
    h.send_response(status)
    h.send_header("Content-Type", "application/octet-stream")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def serve_forever(delay_s: float = 0.0, validate: bool = True) -> None:  # pragma: no cover - manual use
    """`python -m tests.fake_together [DELAY_S] [--no-validate]`: print the base URL and serve."""
    fake = FakeTogether(validate=validate)
    fake.delay_s = delay_s
    with fake:
        print(fake.base_url, flush=True)
        threading.Event().wait()


if __name__ == "__main__":  # pragma: no cover
    import sys

    numbers = [a for a in sys.argv[1:] if not a.startswith("--")]
    serve_forever(delay_s=float(numbers[0]) if numbers else 0.0, validate="--no-validate" not in sys.argv)
