"""A Hugging Face Hub on loopback: its file API as huggingface_hub uses it, for repos a test builds.

It answers what `HfApi.model_info`, `hf_hub_download` and `parse_safetensors_file_metadata` ask:

- `GET /api/models/{repo}/revision/{rev}`: the model's JSON (`id`, `sha`, `gated`, `siblings`);
- `GET /api/models/{repo}/tree/{rev}`: its files as `list_repo_files` reads them (vLLM lists a
  repo before it downloads the weights); one page, folders not listed;
- `HEAD` and `GET` (with `Range`) on `/{repo}/resolve/{rev}/{file}`, with the headers the library
  reads: `X-Repo-Commit`, `ETag` (and `X-Linked-Etag` / `X-Linked-Size` for weights, as the Hub
  sends for LFS files), `Content-Length`, `Content-Range`;
- its failures, marked as the Hub marks them with `X-Error-Code`: `RepoNotFound` (401 without a
  token, 404 with one), `RevisionNotFound` (404), `EntryNotFound` (404, with `X-Repo-Commit`),
  `GatedRepo` (401 without a token, 403 with a token that was not granted access), and 429 with
  `Retry-After` for paths containing `rate_limit_path`.

Weights are real safetensors files (8-byte little-endian header length, JSON header, data), kept
tiny: the library only ever reads their first bytes. Every request is recorded in `requests`.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["HubRepo", "HubServer", "Seen", "json_file", "running_hub", "safetensors_file"]

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/]+)$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_RANGE = re.compile(r"^bytes=(?P<start>\d+)-(?P<end>\d*)$")


def safetensors_file(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    """A safetensors file of zeros: `tensors` maps each name to (dtype, shape)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        count = 1
        for dim in shape:
            count *= dim
        size = count * _DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + bytes(offset)


def json_file(content: dict[str, Any]) -> bytes:
    """A JSON file as a repo holds it."""
    return json.dumps(content, indent=2).encode()


@dataclass
class HubRepo:
    """One model repo at one commit; a gated one answers its files only to `granted` tokens."""

    files: dict[str, bytes]
    commit: str
    gated: bool = False
    granted: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Seen:
    """One request the server answered."""

    method: str
    path: str
    authorization: str | None


@dataclass
class HubServer:
    """The repos served (by id), the requests seen, and the rate-limit switch."""

    repos: dict[str, HubRepo]
    url: str = ""
    requests: list[Seen] = field(default_factory=list)
    rate_limit_path: str | None = None  # answer 429 to every path containing this


@contextmanager
def running_hub(repos: dict[str, HubRepo]) -> Iterator[HubServer]:
    """Serve `repos` on a free loopback port until the block ends."""
    hub = HubServer(repos=repos)
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        token = self.headers.get("Authorization")
        self.hub.requests.append(Seen(self.command, path, token))
        if self.hub.rate_limit_path is not None and self.hub.rate_limit_path in path:
            self._send(429, b'{"error": "rate limited"}', body=body, headers={"Retry-After": "7"})
        elif api := _API.match(path):
            self._model_info(api["repo"], api["rev"], body=body)
        elif tree := _TREE.match(path):
            self._tree(tree["repo"], tree["rev"], body=body)
        elif resolve := _RESOLVE.match(path):
            self._file(resolve["repo"], resolve["rev"], resolve["file"], body=body)
        else:
            self._send(404, b'{"error": "no such route"}', body=body)

    def _repo(self, repo_id: str, revision: str, *, body: bool) -> HubRepo | None:
        """The repo if it and the revision exist; otherwise answer the error and give None."""
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            status = 404 if self.headers.get("Authorization") else 401
            self._error(status, "RepoNotFound", "Repository not found", body=body)
            return None
        if revision not in (repo.commit, "main"):
            self._error(404, "RevisionNotFound", "Invalid rev id", body=body)
            return None
        return repo

    def _model_info(self, repo_id: str, revision: str, *, body: bool) -> None:
        if (repo := self._repo(repo_id, revision, body=body)) is None:
            return
        info = {"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": repo.commit,
                "private": False, "gated": "manual" if repo.gated else False,
                "siblings": [{"rfilename": name} for name in sorted(repo.files)]}
        self._send(200, json.dumps(info).encode(), body=body)

    def _tree(self, repo_id: str, revision: str, *, body: bool) -> None:
        if (repo := self._repo(repo_id, revision, body=body)) is None:
            return
        entries = [{"type": "file", "path": name, "size": len(content),
                    "oid": hashlib.sha1(content).hexdigest()}
                   for name, content in sorted(repo.files.items())]
        self._send(200, json.dumps(entries).encode(), body=body)

    def _file(self, repo_id: str, revision: str, name: str, *, body: bool) -> None:
        if (repo := self._repo(repo_id, revision, body=body)) is None:
            return
        commit = {"X-Repo-Commit": repo.commit}
        if repo.gated:
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            if token not in repo.granted:
                status = 403 if token else 401
                self._error(status, "GatedRepo", "Access to this model is restricted",
                            body=body, headers=commit)
                return
        content = repo.files.get(name)
        if content is None:
            self._error(404, "EntryNotFound", "Entry not found", body=body, headers=commit)
            return
        etag = hashlib.sha256(content).hexdigest()
        headers = {**commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if name.endswith(".safetensors"):
            headers |= {"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(content))}
        wanted = _RANGE.match(self.headers.get("Range") or "")
        if not name.endswith(".json"):
            headers["Content-Type"] = "application/octet-stream"
        if wanted is None:
            self._send(200, content, body=body, headers=headers)
            return
        start = int(wanted["start"])
        end = min(int(wanted["end"] or len(content) - 1), len(content) - 1)
        headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
        self._send(206, content[start:end + 1], body=body, headers=headers)

    def _error(self, status: int, code: str, message: str, *, body: bool,
               headers: dict[str, str] | None = None) -> None:
        marks = {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})}
        self._send(status, json.dumps({"error": message}).encode(), body=body, headers=marks)

    def _send(self, status: int, content: bytes, *, body: bool,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        # One request per connection: a test's next server may get this port, and a pooled
        # keep-alive connection would then reach the old one.
        headers = {"Content-Type": "application/json", "Connection": "close", **(headers or {})}
        self.send_header("Content-Length", str(len(content)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(content)
