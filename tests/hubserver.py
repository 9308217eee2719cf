"""A local stand-in for the two hosts clipviz downloads official weights from.

One ThreadingHTTPServer on 127.0.0.1 plays

* OpenAI's dead host: every path it was not given answers 404, as openaipublic.azureedge.net's
  ``/clip/models/...`` have since late 2025;
* the Hugging Face Hub's file endpoint ``/<owner>/<repo>/resolve/<revision>/<file>``, for the real
  ``huggingface_hub`` client (point HF_ENDPOINT at ``url``). HEAD and GET answer 200 with the
  headers the client reads (huggingface_hub 2.x ``file_download.get_hf_file_metadata``):
  ``X-Repo-Commit`` (the commit a revision resolves to), ``X-Linked-Etag`` (an LFS file's SHA256,
  quoted), ``X-Linked-Size``, ``ETag`` and ``Content-Length``; GET honours ``Range: bytes=N-``
  with 206 and ``Content-Range`` (the client resumes interrupted downloads that way).

``requests`` logs ``(method, path)`` of every request, which is how tests see that a cache hit
made no network call.
"""

import hashlib
import http.server
import re
import threading

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_RESOLVE = re.compile(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)")


class FakeHub:
    def __init__(self):
        self.files, self.requests = {}, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_HEAD(self):
                outer._answer(self, send_body=False)

            def do_GET(self):
                outer._answer(self, send_body=True)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, repo_id, filename, data, declared_sha256=None):
        """Serve ``data`` as ``repo_id``'s ``filename`` at every revision. ``declared_sha256``:
        what the Hub claims the file's SHA256 is (default: the true one)."""
        self.files[(repo_id, filename)] = (data, declared_sha256 or hashlib.sha256(data).hexdigest())

    def hub_paths(self):
        """The paths of requests that reached the Hub's resolve endpoint."""
        return [path for _, path in self.requests if "/resolve/" in path]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def _answer(self, handler, send_body):
        self.requests.append((handler.command, handler.path))
        match = _RESOLVE.fullmatch(handler.path.split("?")[0])
        found = self.files.get((match.group(1), match.group(3))) if match else None
        if found is None:
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        data, sha256 = found
        start = 0
        ranged = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range", ""))
        if ranged and send_body:
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
        if send_body:
            handler.wfile.write(data[start:])
