"""A fake Together API on 127.0.0.1 for tests, written from Together's OpenAPI spec.

It validates every JSON request body (and multipart form) against the spec's schemas
(tests/data/together-openapi.yaml, MIT, Together AI) and records each request, so tests can assert
what was sent and count duplicates. Faults can be switched on: HTTP errors with Retry-After or
retry-after-ms, dropped connections, slow replies.

Endpoints: POST /v1/chat/completions, /v1/completions, /v1/files/upload, /v1/batches;
GET /v1/files/{id}/content, /v1/batches/{id}. Fine-tuning: the SDKs' upload (POST /v1/files ->
302 + X-Together-File-Id -> PUT to the presigned URL without auth -> POST /v1/files/{id}/preprocess,
and the multipart flow under /v1/files/multipart/), POST /v1/fine-tunes (+ estimate-price),
GET /v1/fine-tunes/{id} (+ /events, /checkpoints), POST /v1/fine-tunes/{id}/cancel,
GET /v1/finetune/download. A job advances one state per poll: pending, queued, running (steps),
uploading, completed. The two spec rules every SDK trips are relaxed, and only those:
`train_on_inputs` may be "auto", and `lr_scheduler_args` is matched with anyOf.
"""

from __future__ import annotations

import copy
import email.parser
import email.policy
import hashlib
import json
import socket
import threading
import time
import urllib.parse
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


def fine_tune_validator(path: str) -> jsonschema.protocols.Validator:
    """The request schema of /fine-tunes (or estimate-price), with the SDKs' two known quirks relaxed."""
    components = copy.deepcopy(spec()["components"])
    schemas = components["schemas"]
    schemas["TrainingMethodSFT"]["properties"]["train_on_inputs"].pop("type", None)
    scheduler = schemas["LRScheduler"]["properties"]["lr_scheduler_args"]
    scheduler["anyOf"] = scheduler.pop("oneOf")
    body = copy.deepcopy(spec()["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"])
    if "train_on_inputs" in body["properties"]:
        body["properties"]["train_on_inputs"].pop("type", None)
    return jsonschema.Draft202012Validator({**body, "components": components})


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
    kind: str  # "status" | "drop" | "slow" | "html" | "stream" | "null" | "redirect"
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    paths: tuple[str, ...] = ()  # empty: any path
    after: bool = False  # do the request's work first (create the object), then fail
    delay_s: float = 0.0  # "slow": answer only after this long


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
        port: int = 0,
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
        self.uploads: dict[str, dict[str, Any]] = {}  # file id -> pending SDK-style upload
        self.jobs: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.job_steps = 4  # training steps a job reports before it completes
        # (prompt_tokens, completion_tokens) a completion reports; None: ~4 characters a token
        self.usage: Callable[[dict[str, Any], str], tuple[int, int]] | None = None
        self.finish_reason: Callable[[dict[str, Any]], str] = lambda body: "stop"
        self.job_outcome = "completed"  # or "error", "cancelled" ... for the next jobs
        self.unauthorized_puts = 0
        self.keep_put_bytes = (
            64 << 20
        )  # larger PUT bodies are drained and hashed, not kept  # presigned PUTs that carried an Authorization header
        self.batches: dict[str, dict[str, Any]] = {}
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._validators = {
            "/v1/chat/completions": validator("ChatCompletionRequest"),
            "/v1/completions": validator("CompletionRequest"),
            "/v1/batches": validator("CreateBatchRequest"),
            "/v1/fine-tunes": fine_tune_validator("/fine-tunes"),
            "/v1/fine-tunes/estimate-price": fine_tune_validator("/fine-tunes/estimate-price"),
        }
        self._endpoint_validator = validator("CreateEndpointRequest")
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

            def do_PUT(self) -> None:
                server._handle(self, "PUT")

            def do_PATCH(self) -> None:
                server._handle(self, "PATCH")

            def do_DELETE(self) -> None:
                server._handle(self, "DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
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
        after: bool = False,
    ) -> None:
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        with self._lock:
            self._faults += [Fault("status", status, headers, paths, after) for _ in range(times)]

    def drop(self, times: int = 1, paths: tuple[str, ...] = (), *, after: bool = False) -> None:
        with self._lock:
            self._faults += [Fault("drop", paths=paths, after=after) for _ in range(times)]

    def slow(self, delay_s: float, times: int = 1, paths: tuple[str, ...] = (), *, before: bool = False) -> None:
        """Answer only after `delay_s` (past a client's timeout: an ambiguous failure). The work is done
        at once and the answer is late ("slow after the work"), or with `before`, the work itself is
        done only after the delay ("slow before the work": the object appears after the client gave
        up and looked for it)."""
        with self._lock:
            self._faults += [Fault("slow", paths=paths, after=not before, delay_s=delay_s) for _ in range(times)]

    def bad_answer(self, kind: str, times: int = 1, paths: tuple[str, ...] = ()) -> None:
        """Answer 200 with what is not an answer: an HTML page (`html`), an event stream where a plain
        answer was asked (`stream`), or a completion whose content is null (`null`)."""
        with self._lock:
            self._faults += [Fault(kind, 200, paths=paths, after=True) for _ in range(times)]

    def redirect(self, location: str, times: int = 1, paths: tuple[str, ...] = (), status: int = 307) -> None:
        """Answer with a redirect to `location` (another host, say) instead of doing the work."""
        with self._lock:
            self._faults += [Fault("redirect", status, {"Location": location}, paths) for _ in range(times)]

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def live_jobs(self) -> list[str]:
        """Fine-tune jobs that were not cancelled (and did not fail): what is, or will be, billed."""
        return [i for i, j in self.jobs.items() if j["status"] not in ("cancelled", "cancel_requested", "error")]

    def live_batches(self) -> list[str]:
        return [i for i, b in self.batches.items() if b["status"] != "CANCELLED"]

    def posts(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST" and r.path == path]

    # ---- serving -----------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        if h.command == "PUT" and length > self.keep_put_bytes:  # big uploads: drain, keep only a digest
            digest = hashlib.sha256()
            left = length
            while left > 0:
                block = h.rfile.read(min(left, 1 << 20))
                if not block:
                    break
                digest.update(block)
                left -= len(block)
            raw = f"<{length} bytes, sha256 {digest.hexdigest()}>".encode()
        else:
            raw = h.rfile.read(length) if length else b""
            if len(raw) < length:  # the client went away mid-request (killed): nothing to answer
                h.close_connection = True
                return
        path = h.path.split("?", 1)[0]
        content_type = h.headers.get("Content-Type", "")
        body: Any = None
        if method == "PUT":
            body = raw
        elif raw and content_type.startswith("application/json"):
            body = json.loads(raw)
        elif raw and content_type.startswith("multipart/form-data"):
            body = _parse_multipart(content_type, raw)
        elif raw and content_type.startswith("application/x-www-form-urlencoded"):
            body = {k: v[-1] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
        with self._lock:
            recorded = body if method != "PUT" else f"<{len(raw)} bytes>"
            self.requests.append(Recorded(method, path, recorded, dict(h.headers)))
            fault = next((f for f in self._faults if _matches(f.paths, path)), None)
            if fault is not None:
                self._faults.remove(fault)
        if self.delay_s:
            time.sleep(self.delay_s)
        if fault is not None and fault.kind == "slow" and not fault.after:
            time.sleep(fault.delay_s)  # slow before the work: the object appears only now
            fault = None
        if fault is not None and not fault.after:
            return self._fault(h, fault)
        if method == "PUT":  # presigned URLs carry their own authority: no API key may travel there
            if h.headers.get("Authorization"):
                self.unauthorized_puts += 1
        elif self.api_key and h.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _send(h, 401, {"error": {"message": "invalid API key", "type": "invalid_request_error"}})
        try:
            status, payload = self._route(method, path, body)
        except _BadRequest as e:
            with self._lock:
                self.invalid.append(f"{method} {path}: {e}")
            status, payload = 400, {"error": {"message": str(e), "type": "invalid_request_error"}}
        if fault is not None:  # the work is done (an object may exist now); the answer goes wrong
            if fault.kind != "slow":
                return self._fault(h, fault, payload)
            time.sleep(fault.delay_s)
        if status == 200 and isinstance(body, dict) and body.get("stream") and path.endswith("completions"):
            _send_bytes(h, 200, _stream(payload), "text/event-stream")  # what a streaming client asked for
        elif isinstance(payload, _Redirect):
            _send(h, status, {}, {**({"Location": payload.location} if payload.location else {}), **payload.headers})
        elif isinstance(payload, bytes):
            _send_bytes(h, status, payload)
        else:
            _send(h, status, payload)
        if status == 200 and method == "POST" and path.endswith("completions"):
            with self._lock:
                self.answered.append(json.dumps(body, sort_keys=True))

    @staticmethod
    def _fault(h: BaseHTTPRequestHandler, fault: Fault, payload: Any = None) -> None:
        if fault.kind == "drop":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault.kind == "html":
            return _send_bytes(h, 200, b"<html><body>502 Bad Gateway (cached)</body></html>", "text/html")
        if fault.kind == "stream":
            events = f"data: {json.dumps(payload)}\n\ndata: [DONE]\n\n".encode()
            return _send_bytes(h, 200, events, "text/event-stream")
        if fault.kind == "null":
            for choice in payload.get("choices", []):
                choice.setdefault("message", {})["content"] = None
                choice.pop("text", None)
            return _send(h, 200, payload)
        if fault.kind == "redirect":
            return _send(h, fault.status, {}, fault.headers)
        _send(h, fault.status, {"error": {"message": "injected fault", "type": "fault"}}, fault.headers)

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
        if path.startswith("/v1/files") or path.startswith("/upload/"):
            routed = self._route_files(method, path, body)
            if routed is not None:
                return routed
        if path.startswith("/v1/endpoints") or path == "/v1/hardware":
            return self._route_endpoints(method, path, body)
        if path.startswith("/v1/fine-tunes") or path == "/v1/finetune/download":
            return self._route_fine_tunes(method, path, body)
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
        if method == "POST" and path.startswith("/v1/batches/") and path.endswith("/cancel"):
            job = self.batches.get(path.split("/")[3])
            if job is None:
                return 404, {"error": {"message": f"no batch at {path}"}}
            if job["status"] not in ("COMPLETED", "FAILED", "EXPIRED", "CANCELLED"):
                job["status"] = "CANCELLED"
            return 200, _public(job)
        if method == "GET" and path == "/v1/batches":
            return 200, [_public(job) for job in self.batches.values()]
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

    # ---- files, the SDK way -------------------------------------------------------------------
    def _file_object(self, file_id: str, name: str, size: int, purpose: str, file_type: str) -> dict[str, Any]:
        return {
            "id": file_id,
            "object": "file",
            "created_at": int(time.time()),
            "filename": name,
            "bytes": size,
            "purpose": purpose,
            "FileType": file_type,
            "Processed": True,
            "LineCount": 0,
        }

    def _route_files(self, method: str, path: str, body: Any) -> tuple[int, Any] | None:
        if method == "POST" and path == "/v1/files":
            for key in ("purpose", "file_name"):
                if not body or key not in body:
                    raise _BadRequest(f"form field {key!r} is required")
            errors = list(self._upload_schema.iter_errors({**body, "file": "binary"}))
            if errors:
                raise _BadRequest(errors[0].message)
            file_id = f"file-{uuid.uuid4()}"
            self.uploads[file_id] = {**body, "data": None}
            location = f"{self.base_url.rsplit('/v1', 1)[0]}/upload/{file_id}"
            return 302, _Redirect(location, {"X-Together-File-Id": file_id})
        if method == "PUT" and path.startswith("/upload/"):
            parts = path.split("/")
            file_id = parts[2]
            if file_id not in self.uploads:
                return 404, {"error": "no such upload"}
            if len(parts) == 5:  # /upload/{id}/part/{n}
                self.uploads[file_id].setdefault("parts", {})[int(parts[4])] = body
                return 200, _Redirect(None, {"ETag": f'"{uuid.uuid4().hex}"'})
            self.uploads[file_id]["data"] = body
            return 200, {}
        if method == "GET" and path.startswith("/v1/files/") and path.count("/") == 3:
            file_id = path.split("/")[3]
            if file_id not in self.files:
                return 404, {"error": {"message": f"no file {file_id}"}}
            upload = self.uploads.get(file_id, {})
            name, purpose = upload.get("file_name", "file.jsonl"), upload.get("purpose", "fine-tune")
            return 200, self._file_object(file_id, name, len(self.files[file_id]), purpose, "jsonl")
        if method == "DELETE" and path.startswith("/v1/files/") and path.count("/") == 3:
            file_id = path.split("/")[3]
            if file_id not in self.uploads and file_id not in self.files:
                return 404, {"error": {"message": f"no file {file_id}"}}
            self.uploads.pop(file_id, None)
            self.files.pop(file_id, None)
            return 200, {"id": file_id, "deleted": True}
        if method == "POST" and path.startswith("/v1/files/") and path.endswith("/preprocess"):
            file_id = path.split("/")[3]
            upload = self.uploads.get(file_id)
            if upload is None or upload["data"] is None:
                return 400, {"error": {"message": f"{file_id} has no uploaded bytes"}}
            self.files[file_id] = upload["data"]
            return 200, self._file_object(
                file_id, upload["file_name"], len(upload["data"]), upload["purpose"], upload.get("file_type", "jsonl")
            )
        if method == "POST" and path == "/v1/files/multipart/initiate":
            file_id = f"file-{uuid.uuid4()}"
            self.uploads[file_id] = {**body, "data": None, "parts": {}}
            base = self.base_url.rsplit("/v1", 1)[0]
            urls = [
                {"PartNumber": n, "URL": f"{base}/upload/{file_id}/part/{n}"} for n in range(1, body["num_parts"] + 1)
            ]
            return 200, {"upload_id": f"up-{file_id}", "file_id": file_id, "parts": urls}
        if method == "POST" and path == "/v1/files/multipart/complete":
            upload = self.uploads[body["file_id"]]
            numbers = [p["PartNumber"] for p in body["parts"]]
            if numbers != sorted(upload["parts"]) or not all(p.get("ETag") for p in body["parts"]):
                raise _BadRequest("complete needs every part with its ETag, in order")
            upload["data"] = b"".join(upload["parts"][n] for n in numbers)
            self.files[body["file_id"]] = upload["data"]
            return 200, self._file_object(
                body["file_id"],
                upload["file_name"],
                len(upload["data"]),
                upload["purpose"],
                upload.get("file_type", "jsonl"),
            )
        if method == "POST" and path == "/v1/files/multipart/abort":
            self.uploads.pop(body["file_id"], None)
            return 200, {}
        return None

    # ---- fine-tuning ---------------------------------------------------------------------------
    def _route_fine_tunes(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "POST" and path == "/v1/fine-tunes/estimate-price":
            self._validate(path, body)
            tokens = len(self.files.get(body["training_file"], b"")) // 4 * body.get("n_epochs", 1)
            return 200, {
                "estimated_total_price": round(tokens * 3e-6, 4),
                "allowed_to_proceed": True,
                "user_limit": 1000.0,
                "estimated_train_token_count": tokens,
                "estimated_eval_token_count": 0,
            }
        if method == "POST" and path == "/v1/fine-tunes":
            self._validate(path, body)
            for key in ("training_file", "validation_file"):
                if key in body and body[key] not in self.files:
                    raise _BadRequest(f"{key} {body[key]} was never uploaded")
            job_id = f"ft-{uuid.uuid4()}"
            job = {
                "id": job_id,
                "status": "pending",
                "model": body["model"],
                "training_file": body["training_file"],
                "model_output_name": f"user/{body['model'].split('/')[-1]}-{body.get('suffix', 'ft')}-{job_id[3:11]}",
                "created_at": "2026-01-01T00:00:00Z",
                "updated_at": "2026-01-01T00:00:00Z",
                "events": [],
                "_step": 0,
                "_outcome": self.job_outcome,
                "_request": body,
            }
            self.jobs[job_id] = job
            self._event(job, "job_pending", "Fine tune request created")
            return 200, _truncated(job)
        if method == "GET" and path == "/v1/fine-tunes":
            fields = ("suffix", "n_epochs", "n_checkpoints", "n_evals", "learning_rate", "validation_file")
            return 200, {
                "data": [
                    {**_truncated(job), "training_file": job["training_file"]}
                    | {k: job["_request"][k] for k in fields if k in job["_request"]}
                    for job in self.jobs.values()
                ]
            }
        if method == "GET" and path == "/v1/finetune/download":
            return 200, b"model weights (" + (path.encode()) + b")"
        parts = path.split("/")
        job = self.jobs.get(parts[3]) if len(parts) > 3 else None
        if job is None:
            return 404, {"error": {"message": f"no fine-tune job at {path}"}}
        if method == "GET" and len(parts) == 4:
            self._advance(job)
            return 200, _public(job)
        if method == "GET" and parts[4] == "events":
            return 200, {"data": job["events"]}
        if method == "GET" and parts[4] == "checkpoints":
            steps = [e["step"] for e in job["events"] if e["type"] == "checkpoint_save"]
            return 200, {
                "data": [
                    {
                        "step": s,
                        "created_at": "2026-01-01T00:00:00Z",
                        "path": f"{job['id']}/ckpt-{s}",
                        "checkpoint_type": "Intermediate",
                    }
                    for s in steps
                ]
            }
        if method == "POST" and parts[4] == "cancel":
            if job["status"] not in ("completed", "error", "user_error", "cancelled"):
                job["status"] = "cancelled"
                self._event(job, "cancel_requested", "Cancelled by the user")
            return 200, _truncated(job)
        return 404, {"error": {"message": f"no route {method} {path}"}}

    # ---- dedicated endpoints -------------------------------------------------------------------
    HARDWARE = (("2x_nvidia_h100_80gb_sxm", 11.0), ("1x_nvidia_h100_80gb_sxm", 5.42), ("1x_nvidia_a100_80gb_pcie", 4.0))

    def _route_endpoints(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "GET" and path == "/v1/hardware":
            data = [
                {
                    "object": "hardware",
                    "id": name,
                    "pricing": {"cents_per_minute": cents},
                    "specs": {"gpu_type": name, "gpu_link": "sxm", "gpu_memory": 80, "gpu_count": 1},
                    "availability": {"status": "unavailable" if cents < 5 else "available"},
                    "updated_at": "2026-01-01T00:00:00Z",
                }
                for name, cents in self.HARDWARE
            ]
            return 200, {"object": "list", "data": data}
        if method == "POST" and path == "/v1/endpoints":
            errors = list(self._endpoint_validator.iter_errors(body))
            if errors:
                raise _BadRequest(errors[0].message)
            endpoint_id = f"endpoint-{uuid.uuid4()}"
            endpoint = {
                "object": "endpoint",
                "id": endpoint_id,
                "name": f"user/{body['model'].split('/')[-1]}-{endpoint_id[9:17]}",
                "display_name": body.get("display_name", ""),
                "model": body["model"],
                "hardware": body["hardware"],
                "type": "dedicated",
                "owner": "user",
                "state": "PENDING",
                "autoscaling": body["autoscaling"],
                "created_at": "2026-01-01T00:00:00Z",
                "_request": body,
            }
            self.endpoints[endpoint_id] = endpoint
            return 200, _public(endpoint)
        if method == "GET" and path == "/v1/endpoints":
            keys = ("object", "id", "name", "model", "type", "owner", "state", "created_at")
            return 200, {"object": "list", "data": [{k: e[k] for k in keys} for e in self.endpoints.values()]}
        endpoint = self.endpoints.get(path.split("/")[3]) if path.count("/") == 3 else None
        if endpoint is None:
            return 404, {"error": {"message": f"no endpoint at {path}"}}
        if method == "GET":
            endpoint["state"] = {"PENDING": "STARTING", "STARTING": "STARTED"}.get(endpoint["state"], endpoint["state"])
            return 200, _public(endpoint)
        if method == "PATCH":
            if body.get("state") not in ("STARTED", "STOPPED"):
                raise _BadRequest(f"state must be STARTED or STOPPED, not {body.get('state')!r}")
            endpoint["state"] = (
                "STARTING" if body["state"] == "STARTED" and endpoint["state"] == "STOPPED" else body["state"]
            )
            return 200, _public(endpoint)
        if method == "DELETE":
            del self.endpoints[endpoint["id"]]
            return 204, b""
        return 404, {"error": {"message": f"no route {method} {path}"}}

    def _event(self, job: dict[str, Any], kind: str, message: str, **extra: Any) -> None:
        job["events"].append(
            {
                "object": "fine-tune-event",
                "created_at": "2026-01-01T00:00:00Z",
                "level": "info",
                "message": message,
                "type": kind,
                "param_count": 0,
                "token_count": 0,
                "total_steps": self.job_steps,
                "wandb_url": "",
                "step": extra.get("step", 0),
                "checkpoint_path": "",
                "model_path": "",
                "training_offset": 0,
                "hash": "",
            }
        )

    def _advance(self, job: dict[str, Any]) -> None:
        """One state per poll: pending -> queued -> running (one step per poll) -> uploading -> outcome."""
        status = job["status"]
        if status == "pending":
            job["status"] = "queued"
        elif status == "queued":
            job["status"] = "running"
            self._event(job, "training_start", "Training started")
        elif status == "running" and job["_step"] < self.job_steps:
            job["_step"] += 1
            self._event(
                job,
                "checkpoint_save" if job["_step"] == self.job_steps else "epoch_complete",
                f"step {job['_step']}/{self.job_steps}",
                step=job["_step"],
            )
            if job["_outcome"] == "error" and job["_step"] == 2:
                job["status"] = "error"
                self._event(job, "job_error", "CUDA out of memory")
        elif status == "running":
            job["status"] = "uploading"
        elif status == "uploading":
            job["status"] = job["_outcome"]
            job["total_price"] = 1.25
            job["token_count"] = len(self.files.get(job["training_file"], b"")) // 4
            self._event(job, "job_complete", "Job finished")

    def _complete(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        text = self.answer(body)
        prompt = json.dumps(body.get("messages")) if "messages" in body else body["prompt"]
        counted = self.usage(body, text) if self.usage else (len(prompt) // 4, len(text) // 4)
        usage = {"prompt_tokens": counted[0], "completion_tokens": counted[1]}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        common = {
            "id": str(uuid.uuid4()),
            "created": int(time.time()),
            "model": body["model"],
            "usage": usage,
            "prompt": [],
        }
        if path == "/v1/chat/completions":
            finish = self.finish_reason(body)
            choice = {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text}}
            return {**common, "object": "chat.completion", "choices": [choice]}
        return {
            **common,
            "object": "text.completion",
            "choices": [{"index": 0, "text": " " + text, "finish_reason": self.finish_reason(body)}],
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


@dataclass
class _Redirect:
    location: str | None
    headers: dict[str, str]


def _truncated(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job[k] for k in ("id", "status", "created_at", "updated_at", "model", "model_output_name")}


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


def _stream(completion: dict[str, Any]) -> bytes:
    """A completion as the server-sent events of a streamed one: a chunk per word, the last with its
    finish_reason, then [DONE]."""
    choice = completion["choices"][0]
    chat = "message" in choice
    text = choice["message"]["content"] if chat else choice["text"]
    words = text.split(" ")
    events = []
    for i, word in enumerate(words):
        piece = word if i == 0 else " " + word
        last = i == len(words) - 1
        delta = {"delta": {"content": piece}} if chat else {"text": piece}
        chunk = {**delta, "index": 0, "finish_reason": choice["finish_reason"] if last else None}
        events.append({"id": completion["id"], "object": "chat.completion.chunk", "choices": [chunk]})
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


def _send(h: BaseHTTPRequestHandler, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
    data = json.dumps(payload).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        h.send_header(key, value)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def _send_bytes(h: BaseHTTPRequestHandler, status: int, data: bytes, kind: str = "application/octet-stream") -> None:
    h.send_response(status)
    h.send_header("Content-Type", kind)
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
