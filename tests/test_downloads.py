"""clipviz.hub.download against a local HTTP server that misbehaves on purpose.

Every test talks to 127.0.0.1 only. The server's answer for each path is a function the test
chooses; the server counts the requests it gets, which is how we see that a cache hit or a lock
saved a transfer. Network waits are bounded by short timeouts so the file runs in seconds.
"""

import hashlib
import http.server
import multiprocessing
import os
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from clipviz import cache, hub
from clipviz.errors import ClipvizError

PAYLOAD = os.urandom(3 * (1 << 20) + 12345)  # more than one download chunk
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class LocalServer:
    """ThreadingHTTPServer on 127.0.0.1:<free port>; ``routes[path](handler)`` writes the answer,
    ``fallback(handler)`` for other paths (default: 404). HEAD goes the same way as GET."""

    def __init__(self):
        self.routes, self.requests, self.stop = {}, [], threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                outer.routes.get(self.path, outer.fallback)(self)

            do_HEAD = do_GET

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    @staticmethod
    def fallback(handler):
        handler.send_error(404)

    def close(self):
        self.stop.set()  # wakes handlers that stall on purpose
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = LocalServer()
    yield s
    s.close()


def send_file(data, *, length=None, delay=0.0, pieces=1, stop=None):
    """A route answering 200 with ``data``; ``length`` overrides Content-Length (None: correct,
    False: header left out); ``delay`` seconds between ``pieces`` slices of the body."""

    def route(handler):
        handler.send_response(200)
        if length is not False:
            handler.send_header("Content-Length", str(len(data) if length is None else length))
        handler.end_headers()
        step = -(-len(data) // pieces)
        for start in range(0, len(data), step):
            if delay and stop is not None and stop.wait(delay):
                return
            handler.wfile.write(data[start:start + step])
            handler.wfile.flush()
        handler.close_connection = True

    return route


def leftovers(folder):
    """Every name in ``folder`` (temporary ``.part`` files and ``.lock`` files included)."""
    return sorted(p.name for p in Path(folder).iterdir())


def test_good_file_lands_in_cache_with_progress_on_stderr(server, tmp_path, capsys):
    server.routes["/w/model.pt"] = send_file(PAYLOAD)
    destination = tmp_path / "cache" / "model.pt"  # the folder does not exist yet

    result = hub.download(server.url("/w/model.pt"), destination, PAYLOAD_SHA)

    assert result == destination
    assert destination.read_bytes() == PAYLOAD
    assert leftovers(destination.parent) == ["model.pt"]
    err = capsys.readouterr().err
    assert "model.pt" in err and "100%" in err


def test_progress_counts_bytes_up_to_the_file_size(server, tmp_path, capsys):
    """The one progress bar (clipviz.progress) shows the file's name and its size in bytes at 100%."""
    server.routes["/model.pt"] = send_file(PAYLOAD)

    hub.download(server.url("/model.pt"), tmp_path / "model.pt", PAYLOAD_SHA)

    err = capsys.readouterr().err
    total = f"{len(PAYLOAD) / (1 << 20):.2f}M"  # 3.01 MiB, as tqdm writes it when scaling by 1024
    assert "model.pt: 100%" in err and f"{total}/{total}" in err


def test_progress_false_is_silent(server, tmp_path, capsys):
    server.routes["/model.pt"] = send_file(PAYLOAD)
    hub.download(server.url("/model.pt"), tmp_path / "model.pt", PAYLOAD_SHA, progress=False)
    assert capsys.readouterr().err == ""


def test_valid_cached_file_is_used_without_a_request(server, tmp_path):
    destination = tmp_path / "model.pt"
    destination.write_bytes(PAYLOAD)
    before = destination.stat().st_mtime_ns
    server.routes["/model.pt"] = send_file(b"something else entirely")

    assert hub.download(server.url("/model.pt"), destination, PAYLOAD_SHA) == destination
    assert server.requests == []
    assert destination.stat().st_mtime_ns == before


def test_truncated_transfer_is_refused_and_leaves_nothing(server, tmp_path):
    server.routes["/model.pt"] = send_file(PAYLOAD[:100_000], length=len(PAYLOAD))
    url = server.url("/model.pt")

    with pytest.raises(ClipvizError, match="ended after 100000 of") as error:
        hub.download(url, tmp_path / "model.pt", PAYLOAD_SHA, timeout=5)

    assert url in str(error.value) and str(tmp_path / "model.pt") in str(error.value)
    assert leftovers(tmp_path) == []


def test_truncated_transfer_without_content_length_is_caught_by_the_checksum(server, tmp_path):
    server.routes["/model.pt"] = send_file(PAYLOAD[:-1], length=False)
    with pytest.raises(ClipvizError, match="SHA256"):
        hub.download(server.url("/model.pt"), tmp_path / "model.pt", PAYLOAD_SHA, timeout=5)
    assert leftovers(tmp_path) == []


def test_wrong_checksum_keeps_the_previous_file_untouched(server, tmp_path):
    destination = tmp_path / "model.pt"
    destination.write_bytes(b"previous version")  # not the expected file: a download is attempted
    wrong = PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 1])
    server.routes["/model.pt"] = send_file(wrong)

    with pytest.warns(UserWarning, match="downloading it again"), \
            pytest.raises(ClipvizError, match=f"has SHA256 {hashlib.sha256(wrong).hexdigest()}, "
                                              f"not {PAYLOAD_SHA}"):
        hub.download(server.url("/model.pt"), destination, PAYLOAD_SHA)

    assert destination.read_bytes() == b"previous version"
    assert leftovers(tmp_path) == ["model.pt"]


def test_server_down_names_the_url_and_where_to_put_the_file(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on once the socket is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/clip/ViT-B-32.pt"

    with pytest.raises(ClipvizError) as error:
        hub.download(url, tmp_path / "ViT-B-32.pt", PAYLOAD_SHA, timeout=5)

    message = str(error.value)
    assert url in message and "refused" in message.lower()
    assert f"save it as {tmp_path / 'ViT-B-32.pt'}" in message
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("status", [404, 500])
def test_http_errors_are_reported_with_their_status(server, tmp_path, status):
    server.routes["/model.pt"] = lambda handler: handler.send_error(status)
    with pytest.raises(ClipvizError, match=f"HTTP {status}"):
        hub.download(server.url("/model.pt"), tmp_path / "model.pt", PAYLOAD_SHA, timeout=5)
    assert leftovers(tmp_path) == []


def test_redirect_loop_ends_with_an_error(server, tmp_path):
    def bounce(handler):
        handler.send_response(302)
        handler.send_header("Location", "/b" if handler.path == "/a" else "/a")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    server.routes["/a"] = server.routes["/b"] = bounce
    with pytest.raises(ClipvizError, match="redirect"):
        hub.download(server.url("/a"), tmp_path / "model.pt", PAYLOAD_SHA, timeout=5)
    assert 2 <= len(server.requests) <= 12
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("when", ["before headers", "after headers"])
def test_stalled_server_times_out_cleanly(server, tmp_path, when):
    def stall(handler):
        if when == "after headers":
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(PAYLOAD)))
            handler.end_headers()
            handler.wfile.write(PAYLOAD[:1000])
            handler.wfile.flush()
        server.stop.wait(20)

    server.routes["/model.pt"] = stall
    start = time.monotonic()
    with pytest.raises(ClipvizError, match="timed out"):
        hub.download(server.url("/model.pt"), tmp_path / "model.pt", PAYLOAD_SHA, timeout=1)
    assert time.monotonic() - start < 5
    assert leftovers(tmp_path) == []


def temp_files_that(monkeypatch, fail_with, after_bytes):
    """Make hub's temporary files raise ``fail_with`` once ``after_bytes`` have been written."""
    real = cache.tempfile.NamedTemporaryFile

    class Failing:
        def __init__(self, *args, **kwargs):
            self.file, self.written = real(*args, **kwargs), 0

        def write(self, data):
            if self.written >= after_bytes:
                raise fail_with
            self.written += len(data)
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

    monkeypatch.setattr(cache, "tempfile", SimpleNamespace(NamedTemporaryFile=Failing))


def test_disk_full_leaves_no_partial_file(server, tmp_path, monkeypatch):
    destination = tmp_path / "model.pt"
    destination.write_bytes(b"previous version")
    temp_files_that(monkeypatch, OSError(28, "No space left on device"), after_bytes=1)
    server.routes["/model.pt"] = send_file(PAYLOAD)

    with pytest.warns(UserWarning), pytest.raises(ClipvizError, match="No space left") as error:
        hub.download(server.url("/model.pt"), destination, PAYLOAD_SHA)

    assert "CLIPVIZ_CACHE" in str(error.value)
    assert destination.read_bytes() == b"previous version"
    assert leftovers(tmp_path) == ["model.pt"]


def test_keyboard_interrupt_cleans_up_and_propagates(server, tmp_path, monkeypatch):
    temp_files_that(monkeypatch, KeyboardInterrupt(), after_bytes=1)
    server.routes["/model.pt"] = send_file(PAYLOAD)

    with pytest.raises(KeyboardInterrupt):
        hub.download(server.url("/model.pt"), tmp_path / "model.pt", PAYLOAD_SHA)
    assert leftovers(tmp_path) == []


def test_bit_flip_in_cache_is_detected_and_downloaded_again(server, tmp_path):
    server.routes["/model.pt"] = send_file(PAYLOAD)
    destination = tmp_path / "model.pt"
    hub.download(server.url("/model.pt"), destination, PAYLOAD_SHA, progress=False)
    damaged = bytearray(destination.read_bytes())
    damaged[len(damaged) // 2] ^= 0x10
    destination.write_bytes(damaged)

    with pytest.warns(UserWarning, match="SHA256"):
        hub.download(server.url("/model.pt"), destination, PAYLOAD_SHA, progress=False)

    assert destination.read_bytes() == PAYLOAD
    assert len(server.requests) == 2
    assert leftovers(tmp_path) == ["model.pt"]


def test_destination_that_is_a_folder_is_refused(server, tmp_path):
    (tmp_path / "model.pt").mkdir()
    with pytest.raises(ClipvizError, match="not a regular file"):
        hub.download(server.url("/model.pt"), tmp_path / "model.pt", PAYLOAD_SHA)
    assert server.requests == []


@pytest.mark.parametrize("lock", ["flock", "O_EXCL fallback"])
def test_waiter_rechecks_destination_after_the_lock(server, tmp_path, monkeypatch, lock):
    """While another holder has the lock, download waits; if the holder left a valid file,
    the waiter returns it without a request of its own."""
    if lock != "flock":
        monkeypatch.setattr(cache, "fcntl", None)
    server.routes["/model.pt"] = send_file(PAYLOAD)
    destination = tmp_path / "model.pt"
    outcome = {}

    def waiter():
        try:
            outcome["path"] = hub.download(server.url("/model.pt"), destination, PAYLOAD_SHA,
                                           progress=False)
        except BaseException as e:  # reported through the assertion below
            outcome["error"] = e

    with cache._exclusive_lock(destination.with_name("model.pt.lock")):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive() and server.requests == []  # blocked on our lock
        destination.write_bytes(PAYLOAD)  # what the holder would have downloaded
    thread.join(10)

    assert outcome == {"path": destination}
    assert server.requests == []
    assert leftovers(tmp_path) == ["model.pt"]


def test_fallback_lock_takes_over_an_abandoned_lock_file(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "fcntl", None)
    lock = tmp_path / "model.pt.lock"
    lock.touch()
    os.utime(lock, (time.time() - 2 * cache._STALE_LOCK_SECONDS,) * 2)  # its process died long ago
    start = time.monotonic()
    with cache._exclusive_lock(lock):
        assert lock.exists()
    assert time.monotonic() - start < 2
    assert not lock.exists()


def test_two_processes_downloading_at_once_end_with_one_valid_file(server, tmp_path, capfd):
    server.routes["/model.pt"] = send_file(PAYLOAD, delay=0.1, pieces=15, stop=server.stop)
    destination = tmp_path / "model.pt"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=hub.download,
                               args=(server.url("/model.pt"), destination, PAYLOAD_SHA),
                               kwargs={"progress": True, "timeout": 10})
               for _ in range(2)]
    for worker in workers:
        worker.start()
    seen_lock = False
    while any(w.is_alive() for w in workers):
        seen_lock |= destination.with_name("model.pt.lock").exists()
        time.sleep(0.02)
    for worker in workers:
        worker.join(20)

    assert [w.exitcode for w in workers] == [0, 0]
    assert destination.read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == ["model.pt"]
    assert seen_lock
    # the children's stderr (fd 2, inherited): one of them found the lock taken and waited
    assert capfd.readouterr().err.count("waiting for another process downloading model.pt") == 1
    assert server.requests == ["/model.pt"]  # ... and then found the file: one transfer in all


def test_load_official_name_downloads_once_and_builds_the_model(server, tmp_path, monkeypatch,
                                                                tiny_vit):
    checkpoint = tmp_path / "made.pt"
    torch.save(tiny_vit.state_dict(), checkpoint)
    data = checkpoint.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    server.routes[f"/clip/models/{digest}/ViT-B-32.pt"] = send_file(data)
    url = server.url(f"/clip/models/{digest}/ViT-B-32.pt")
    monkeypatch.setitem(hub._MODELS, "ViT-B/32",
                        hub.ModelEntry("ViT-B/32", url, digest, None, "local test copy"))
    monkeypatch.setenv("CLIPVIZ_CACHE", str(tmp_path / "cache"))

    model, preprocess = hub.load("ViT-B/32", device="cpu")
    again, _ = hub.load("ViT-B/32", device="cpu")

    assert (tmp_path / "cache" / "ViT-B-32.pt").read_bytes() == data
    assert len(server.requests) == 1  # the second load used the cache
    assert preprocess.size == tiny_vit.visual.input_resolution
    pixels = torch.randn(2, 3, preprocess.size, preprocess.size,
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.encode_image(pixels), tiny_vit.encode_image(pixels))
        assert torch.equal(again.encode_image(pixels), tiny_vit.encode_image(pixels))
