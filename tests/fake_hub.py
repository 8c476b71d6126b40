"""A loopback Hugging Face Hub (and a plain file server for URL data files) for tests.

Selected the way users select a mirror: `HF_ENDPOINT=http://127.0.0.1:PORT`. `datasets.load_dataset`
and `huggingface_hub` reach it through their own code paths, which use these routes (huggingface_hub
2.x, datasets 5.x):

- `GET /api/datasets/{repo}` and `/api/datasets/{repo}/revision/{rev}`: repository info (`sha`,
  `siblings`), the commit a revision points at;
- `GET /api/datasets/{repo}/tree/{rev}[/{path}]` (`recursive`): the file listing `HfFileSystem` walks
  to expand data-file patterns; `POST /api/datasets/{repo}/paths-info/{rev}` (form `paths`);
- `HEAD|GET /datasets/{repo}/resolve/{rev}/{path}`: downloads, with the headers `hf_hub_download`
  checks (`X-Repo-Commit`, `ETag`, `Content-Length`) and byte ranges (`Range` -> 206), which
  `HfFileSystem` uses to stream;
- misses answer 404 with `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`), which
  the client turns into its typed errors (datasets relies on `EntryNotFound` for an absent README).

Any other path is a plain static file (`serve`): a second instance on its own port stands in for
another host (e.g. the Lost-in-the-Middle data file at the path it has on raw.githubusercontent.com).
It must be another port: `datasets` reads a URL under `HF_ENDPOINT` as a Hub file.

Repositories hold files per commit; `commit()` makes a new revision (the old one stays readable by
its sha), so pinned revisions can be tested. Every request is recorded (`requests`), so tests can
check which files were read through which path.

`publish_seed_data` fills a hub and a file server with the shipped samples at the paths and in the
shapes the seed's configs name; where we are not sure of a real repository's layout it says so.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import zstandard

from recipe.config import SAMPLES_DIR


@dataclass
class Seen:
    method: str
    path: str
    status: int


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, list[tuple[str, dict[str, bytes]]]] = {}  # repo -> [(sha, files)], oldest first
        self.static: dict[str, bytes] = {}  # URL path -> bytes
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                hub._handle(self, "GET")

            def do_HEAD(self) -> None:
                hub._handle(self, "HEAD")

            def do_POST(self) -> None:
                hub._handle(self, "POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # ---- control ------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def commit(self, repo: str, files: dict[str, bytes]) -> str:
        """A new revision of `repo` holding `files` on top of the previous one; its sha."""
        history = self.repos.setdefault(repo, [])
        previous = dict(history[-1][1]) if history else {}
        previous.update(files)
        sha = hashlib.sha1(f"{repo}{len(history)}{sorted(previous)}".encode()).hexdigest()
        history.append((sha, previous))
        return sha

    def serve(self, path: str, data: bytes) -> str:
        """A static file at `path`; its URL."""
        self.static[path] = data
        return f"{self.endpoint}{path}"

    def downloaded(self, repo: str | None = None) -> set[str]:
        """Paths fetched with GET (resolve downloads, or static files when `repo` is None)."""
        with self._lock:
            seen = [r for r in self.requests if r.method == "GET" and r.status in (200, 206)]
        if repo is None:
            return {r.path for r in seen if r.path in self.static}
        prefix = f"/datasets/{repo}/resolve/"
        return {r.path[len(prefix) :].split("/", 1)[1] for r in seen if r.path.startswith(prefix)}

    # ---- serving ------------------------------------------------------------------------------
    def _revision(self, repo: str, rev: str) -> tuple[str, dict[str, bytes]] | None:
        history = self.repos[repo]
        if rev in ("main", "HEAD", ""):
            return history[-1]
        return next((h for h in history if h[0] == rev), None)

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        parsed = urllib.parse.urlsplit(h.path)
        path = urllib.parse.unquote(parsed.path)
        query = urllib.parse.parse_qs(parsed.query)
        status, headers, body = self._route(method, path, query, raw, h.headers.get("Range"))
        with self._lock:
            self.requests.append(Seen(method, path, status))
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if method != "HEAD":
            h.wfile.write(body)

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], raw: bytes, byte_range: str | None
    ) -> tuple[int, dict[str, str], bytes]:
        if path.startswith("/api/datasets/"):
            return self._api(method, path[len("/api/datasets/") :], query, raw)
        if path.startswith("/datasets/") and "/resolve/" in path:
            repo, rest = path[len("/datasets/") :].split("/resolve/", 1)
            rev, _, file = rest.partition("/")
            return self._resolve(repo, urllib.parse.unquote(rev), file, byte_range)
        if path in self.static:
            return _ranged(self.static[path], byte_range, {"ETag": f'"{_oid(self.static[path])}"'})
        return _missing("EntryNotFound", f"no file at {path}")

    def _api(
        self, method: str, rest: str, query: dict[str, list[str]], raw: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        parts = rest.split("/")
        repo = "/".join(parts[:2])
        if repo not in self.repos:
            return _missing("RepoNotFound", f"Repository {repo} not found")
        action = parts[2] if len(parts) > 2 else ""
        rev = urllib.parse.unquote(parts[3]) if len(parts) > 3 else "main"
        found = self._revision(repo, rev)
        if found is None:
            return _missing("RevisionNotFound", f"Invalid rev id: {rev}")
        sha, files = found
        if method == "GET" and action in ("", "revision"):
            info = {
                "_id": _oid(repo.encode()),
                "id": repo,
                "author": repo.split("/")[0],
                "sha": sha,
                "private": False,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "cardData": {},
                "lastModified": "2024-01-01T00:00:00.000Z",
                "createdAt": "2023-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": name} for name in sorted(files)],
            }
            return _json(info)
        if method == "GET" and action == "tree":
            prefix = "/".join(parts[4:]).strip("/")
            recursive = (query.get("recursive") or ["false"])[0].lower() == "true"
            return _json(_tree(files, prefix, recursive))
        if method == "POST" and action == "paths-info":
            form = urllib.parse.parse_qs(raw.decode())
            wanted = form.get("paths") or []
            if not wanted and raw.startswith(b"{"):
                wanted = json.loads(raw).get("paths") or []
            entries = []
            for p in wanted:
                p = p.strip("/")
                if p in files:
                    entries.append(_file_entry(p, files[p]))
                elif any(name.startswith(p + "/") for name in files) or p == "":
                    entries.append({"type": "directory", "oid": _oid(p.encode()), "path": p})
            return _json(entries)
        return _missing("EntryNotFound", f"no route {method} /api/datasets/{rest}")

    def _resolve(self, repo: str, rev: str, file: str, byte_range: str | None) -> tuple[int, dict[str, str], bytes]:
        if repo not in self.repos:
            return _missing("RepoNotFound", f"Repository {repo} not found")
        found = self._revision(repo, rev)
        if found is None:
            return _missing("RevisionNotFound", f"Invalid rev id: {rev}")
        sha, files = found
        if file not in files:
            return _missing("EntryNotFound", f"{file} does not exist on {rev}", {"X-Repo-Commit": sha})
        data = files[file]
        return _ranged(data, byte_range, {"X-Repo-Commit": sha, "ETag": f'"{_oid(data)}"'})


def _oid(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _file_entry(path: str, data: bytes) -> dict[str, Any]:
    return {"type": "file", "oid": _oid(data), "size": len(data), "path": path}


def _tree(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict[str, Any]]:
    """Entries under `prefix`: files and the directories on the way (one level unless recursive)."""
    out: dict[str, dict[str, Any]] = {}
    base = f"{prefix}/" if prefix else ""
    for name, data in sorted(files.items()):
        if not name.startswith(base):
            continue
        rest = name[len(base) :].split("/")
        for depth in range(1, len(rest)):
            directory = base + "/".join(rest[:depth])
            out.setdefault(directory, {"type": "directory", "oid": _oid(directory.encode()), "path": directory})
            if not recursive:
                break
        if recursive or len(rest) == 1:
            out[name] = _file_entry(name, data)
    return list(out.values())


def _json(value: Any) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps(value).encode()


def _missing(code: str, message: str, extra: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message, **(extra or {})}
    return 404, headers, json.dumps({"error": message}).encode()


def _ranged(data: bytes, byte_range: str | None, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    headers = {**headers, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
    headers["Last-Modified"] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(0))
    if not byte_range or not byte_range.startswith("bytes="):
        return 200, headers, data
    start_s, _, end_s = byte_range[len("bytes=") :].partition("-")
    if start_s == "":  # a suffix: the last N bytes
        start, end = max(0, len(data) - int(end_s)), len(data) - 1
    else:
        start, end = int(start_s), min(int(end_s) if end_s else len(data) - 1, len(data) - 1)
    if start >= len(data):
        return 416, {**headers, "Content-Range": f"bytes */{len(data)}"}, b""
    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
    return 206, headers, data[start : end + 1]


# The Lost-in-the-Middle file the seed's MQA suite names, at its path on raw.githubusercontent.com.
LITM_PATH = (
    "/nelson-liu/lost-in-the-middle/main/qa_data/30_total_documents/nq-open-30_total_documents_gold_at_0.jsonl.gz"
)
CARD = b"---\nlicense: other\n---\n# %s\n\nA loopback copy for tests.\n"


def _lines(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (SAMPLES_DIR / name).read_text().splitlines() if line.strip()]


def publish_seed_data(hub: FakeHub, files: FakeHub) -> dict[str, str]:
    """The seed's sources and Test suites, built from the shipped samples, at the paths its configs
    name: {"mqa_url": the Lost-in-the-Middle file's URL on `files`, repo: its main commit sha}.

    - philschmid/sharegpt-raw: `sharegpt_90k_raw_dataset/sg_90k_part{1,2}.json`, each one JSON list
      of `{"id", "conversations": [{"from", "value"}]}` (the shipped sample, split in two);
    - togethercomputer/llama-instruct: `llama-instruct-19K.jsonl`, `{"text": "[INST] ..."}` lines;
    - togethercomputer/Long-Data-Collections: `fine-tune/booksum.jsonl.zst` and
      `fine-tune/natural_questions_10_200_docs.jsonl.zst`, zstd JSON Lines of prompt/completion/text;
    - tatsu-lab/alpaca_eval: `alpaca_eval.json` (one JSON list of instruction/output/generator/dataset)
      beside the repository's loading script `alpaca_eval.py`, as the real repository holds one;
    - kmfoda/booksum: `train.csv`, `validation.csv`, `test.csv` with `chapter` and `summary_text`
      among other columns. NOT SURE: we believe the real repository holds these three CSV files at
      its root (splits inferred from the names); only `test` is read, by split name, so a Parquet
      conversion of the same splits reads the same way;
    - the Lost-in-the-Middle NQ file: gzip JSON Lines of `{"question", "answers", "ctxs"}` with
      `ctxs` items `{"title", "text", "hasanswer", "isgold"}` (the shipped sample has 8 documents a
      question, the real file 30)."""
    shas: dict[str, str] = {}
    sharegpt = json.loads((SAMPLES_DIR / "sharegpt.json").read_text())
    half = len(sharegpt) // 2
    shas["philschmid/sharegpt-raw"] = hub.commit(
        "philschmid/sharegpt-raw",
        {
            "README.md": CARD % b"ShareGPT raw",
            "sharegpt_90k_raw_dataset/sg_90k_part1.json": json.dumps(sharegpt[:half]).encode(),
            "sharegpt_90k_raw_dataset/sg_90k_part2.json": json.dumps(sharegpt[half:]).encode(),
        },
    )
    shas["togethercomputer/llama-instruct"] = hub.commit(
        "togethercomputer/llama-instruct",
        {
            "README.md": CARD % b"llama-instruct",
            "llama-instruct-19K.jsonl": (SAMPLES_DIR / "llama_instruct.jsonl").read_bytes(),
        },
    )
    zstd = zstandard.ZstdCompressor()
    shas["togethercomputer/Long-Data-Collections"] = hub.commit(
        "togethercomputer/Long-Data-Collections",
        {
            "README.md": CARD % b"Long-Data-Collections",
            "fine-tune/booksum.jsonl.zst": zstd.compress((SAMPLES_DIR / "booksum.jsonl").read_bytes()),
            "fine-tune/natural_questions_10_200_docs.jsonl.zst": zstd.compress(
                (SAMPLES_DIR / "mqa.jsonl").read_bytes()
            ),
            "pretrain/rp_sub.jsonl.zst": zstd.compress(b'{"text": "not read by the recipe"}\n'),
        },
    )
    shas["tatsu-lab/alpaca_eval"] = hub.commit(
        "tatsu-lab/alpaca_eval",
        {
            "README.md": CARD % b"AlpacaEval",
            "alpaca_eval.py": b"# a datasets loading script (datasets 4+ refuses to run it)\nimport datasets\n",
            "alpaca_eval.json": json.dumps(_lines("alpaca_eval.jsonl"), indent=2).encode(),
        },
    )
    table = io.StringIO()
    columns = ["bid", "source", "chapter_path", "chapter", "summary_text", "chapter_length", "summary_length"]
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    for i, r in enumerate(_lines("booksum_eval.jsonl")):
        writer.writerow(
            {
                "bid": i,
                "source": "sample",
                "chapter_path": f"chapter-{i}",
                "chapter": r["chapter"],
                "summary_text": r["summary_text"],
                "chapter_length": len(r["chapter"].split()),
                "summary_length": len(r["summary_text"].split()),
            }
        )
    data = table.getvalue().encode()
    shas["kmfoda/booksum"] = hub.commit(
        "kmfoda/booksum", {"README.md": CARD % b"BookSum", "train.csv": data, "validation.csv": data, "test.csv": data}
    )
    litm = "".join(json.dumps(r) + "\n" for r in _lines("mqa_eval.jsonl")).encode()
    return {"mqa_url": files.serve(LITM_PATH, gzip.compress(litm)), **shas}
