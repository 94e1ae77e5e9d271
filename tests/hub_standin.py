"""A local HTTP stand-in of the Hugging Face Hub endpoints that ``create_repo`` + ``upload_folder`` use.

The Hub cannot be reached from here, so the push path is tested against this server: point
``HF_ENDPOINT`` at ``standin.url``, disable Xet (``HF_HUB_DISABLE_XET=1``) so huggingface_hub uses the
single-commit path, and every request is recorded. It answers the endpoints huggingface_hub 2.x calls
(read from its source):

- ``POST /api/repos/create``                          -> ``{"url": ...}``
- ``POST /api/validate-yaml``                         -> ``{"errors": [], "warnings": []}``
- ``POST /api/{type}s/{repo}/preupload/{rev}``        -> every file ``uploadMode: "regular"``
- ``POST /api/{type}s/{repo}/commit/{rev}`` (NDJSON)  -> stores base64 contents, returns a commit id

Regular upload mode makes the client send file contents inline (base64) in the commit, so no LFS or
Xet storage is needed. Anything else gets a 404 and is recorded too, so a test can see it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HubStandin:
    """Threaded HTTP server; ``repos`` maps repo id -> {path: bytes} of committed files."""

    host: str = "127.0.0.1"
    requests: list[RecordedRequest] = field(default_factory=list)
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    created: list[dict[str, Any]] = field(default_factory=list)
    commits: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((self.host, 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> HubStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    # ----------------------------------------------------------------- request handling
    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        with self._lock:
            self.requests.append(RecordedRequest(method, path, headers, body))
        route = path.split("?", 1)[0]
        parts = route.strip("/").split("/")
        if method == "POST" and route == "/api/repos/create":
            payload = json.loads(body or b"{}")
            repo_id = "/".join(p for p in (payload.get("organization"), payload.get("name")) if p)
            kind = payload.get("type") or "model"
            with self._lock:
                self.created.append(payload)
                exists = repo_id in self.repos
                self.repos.setdefault(repo_id, {})
            prefix = "" if kind == "model" else f"{kind}s/"
            if exists:
                return 409, {
                    "error": "You already created this model repo",
                    "url": f"{self.url}/{prefix}{repo_id}",
                }
            return 200, {"url": f"{self.url}/{prefix}{repo_id}", "name": repo_id}
        if method == "POST" and route == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        # /api/{type}s/{owner}/{name}/{action}/{revision}
        if method == "POST" and len(parts) >= 6 and parts[0] == "api" and parts[4] in ("preupload", "commit"):
            repo_id = f"{parts[2]}/{parts[3]}"
            if repo_id not in self.repos:
                return 404, {"error": f"Repository not found: {repo_id}"}
            if parts[4] == "preupload":
                files = json.loads(body or b"{}").get("files", [])
                return 200, {
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                        for f in files
                    ]
                }
            return self._commit(repo_id, body)
        return 404, {"error": f"stand-in does not serve {method} {route}"}

    def _commit(self, repo_id: str, body: bytes) -> tuple[int, Any]:
        header: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item["key"] == "header":
                header = item["value"]
            elif item["key"] == "file":
                value = item["value"]
                files[value["path"]] = base64.b64decode(value["content"])
            else:
                return 400, {"error": f"stand-in only accepts regular files, got {item['key']}"}
        oid = hashlib.sha1(body).hexdigest()
        with self._lock:
            self.repos[repo_id].update(files)
            self.commits.append({"repo_id": repo_id, "header": header, "files": sorted(files), "oid": oid})
        return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, payload = standin._handle(self.command, self.path, dict(self.headers), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:  # silence stderr noise in tests
                pass

        return Handler
