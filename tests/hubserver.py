"""A local stand-in for the two hosts clipviz downloads official weights from.

FakeHub, a test_downloads.LocalServer on 127.0.0.1, plays

* OpenAI's dead host: every path it was not given answers 404, as openaipublic.azureedge.net's
  ``/clip/models/...`` have since late 2025;
* the Hugging Face Hub's file endpoint ``/<owner>/<repo>/resolve/<revision>/<file>``, for the real
  ``huggingface_hub`` client (point HF_ENDPOINT at ``base``). HEAD and GET answer 200 with the
  headers the client reads (huggingface_hub 2.x ``file_download.get_hf_file_metadata``):
  ``X-Repo-Commit`` (the commit a revision resolves to), ``X-Linked-Etag`` (an LFS file's SHA256,
  quoted), ``X-Linked-Size``, ``ETag`` and ``Content-Length``; GET honours ``Range: bytes=N-``
  with 206 and ``Content-Range`` (the client resumes interrupted downloads that way).

``calls`` logs ``(method, path)`` of every request, which is how tests see that a cache hit
made no network call.
"""

import hashlib
import re

from test_downloads import LocalServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)")


class FakeHub(LocalServer):
    def __init__(self):
        super().__init__()
        self.files, self.calls = {}, []

    @property
    def base(self):
        return self.url("")

    def add(self, repo_id, filename, data, declared_sha256=None):
        """Serve ``data`` as ``repo_id``'s ``filename`` at every revision. ``declared_sha256``:
        what the Hub claims the file's SHA256 is (default: the true one)."""
        self.files[(repo_id, filename)] = (data, declared_sha256 or hashlib.sha256(data).hexdigest())

    def hub_paths(self):
        """The paths of requests that reached the Hub's resolve endpoint."""
        return [path for _, path in self.calls if "/resolve/" in path]

    def fallback(self, handler):
        self.calls.append((handler.command, handler.path))
        match = _RESOLVE.fullmatch(handler.path.split("?")[0])
        found = self.files.get((match.group(1), match.group(3))) if match else None
        if found is None:
            return LocalServer.fallback(handler)
        data, sha256 = found
        start = 0
        ranged = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range", ""))
        if ranged and handler.command == "GET":
            start = int(ranged.group(1))
        handler.send_response(206 if start else 200)
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("X-Linked-Etag", f'"{sha256}"')
        handler.send_header("X-Linked-Size", str(len(data)))
        handler.send_header("ETag", f'"{sha256}"')
        handler.send_header("Content-Length", str(len(data) - start))
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        if handler.command == "GET":
            handler.wfile.write(data[start:])
