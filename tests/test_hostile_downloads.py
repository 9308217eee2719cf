"""More hostile downloads than tests/test_downloads.py covers (whose server and helpers this file
reuses): transfers cut at many points, connection resets, lying Content-Length, more HTTP
errors, redirects elsewhere, disk full at every stage, a downloader killed mid-transfer, and three
processes at once with a server that fails one of them. The rule checked each time: a clean
ClipvizError (or the right file), and nothing partial or wrong left in the cache folder.
"""

import contextlib
import errno
import hashlib
import multiprocessing
import os
import signal
import socket
import struct
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipviz import cache, hub
from clipviz.errors import ClipvizError
from hostile import tally
from test_downloads import LocalServer, leftovers, send_file

CASES, _report = tally("downloads")
PAYLOAD = os.urandom((1 << 20) + 300_000)  # crosses one 1 MiB read chunk
SHA = hashlib.sha256(PAYLOAD).hexdigest()
EXAMPLES = settings(max_examples=10, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def server():
    s = LocalServer()
    yield s
    s.close()


def fetch(server, folder, route, **options):
    """Download /model.pt served by ``route`` into ``folder``; returns the destination."""
    server.routes["/model.pt"] = route
    destination = Path(folder) / "model.pt"
    hub.download(server.url("/model.pt"), destination, SHA, progress=False, **options)
    return destination


def refused(server, folder, route, words, **options):
    """The download raises ClipvizError holding ``words`` and leaves ``folder`` as it was."""
    before = {p.name: p.read_bytes() for p in Path(folder).iterdir()}
    with pytest.raises(ClipvizError) as error:
        fetch(server, folder, route, timeout=options.pop("timeout", 5), **options)
    message = str(error.value)
    assert all(word in message for word in words), message
    assert "\n" not in message and server.url("/model.pt") in message
    assert {p.name: p.read_bytes() for p in Path(folder).iterdir()} == before  # nothing new, nothing changed
    return message


# ----------------------------------------------------------------------------- cut, reset, lying headers

@EXAMPLES
@given(cut=st.one_of(st.sampled_from([0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, len(PAYLOAD) - 1]),
                     st.integers(0, len(PAYLOAD) - 1)),
       previous=st.booleans())
def test_transfer_cut_at_any_point(server, cut, previous):
    with tempfile.TemporaryDirectory() as folder, CASES.case():
        if previous:  # an older file at the destination survives the failed attempt
            (Path(folder) / "model.pt").write_bytes(b"an older, different file")
        with pytest.warns(UserWarning, match="downloading it again") if previous else contextlib.nullcontext():
            refused(server, folder, send_file(PAYLOAD[:cut], length=len(PAYLOAD)),
                    [f"ended after {cut} of {len(PAYLOAD)} bytes"])


@EXAMPLES
@given(where=st.integers(0, len(PAYLOAD) - 1), bit=st.integers(0, 7))
def test_bit_flip_in_transit_at_any_position(server, where, bit):
    damaged = bytearray(PAYLOAD)
    damaged[where] ^= 1 << bit
    with tempfile.TemporaryDirectory() as folder, CASES.case():
        refused(server, folder, send_file(bytes(damaged)), [f"not {SHA}", "damaged file"])


def reset_after(sent):
    """A route that sends ``sent`` bytes, then resets the connection (RST, not a clean close)."""
    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(PAYLOAD)))
        handler.end_headers()
        handler.wfile.write(PAYLOAD[:sent])
        handler.wfile.flush()
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()
        handler.close_connection = True
    return route


@pytest.mark.parametrize("sent", [0, 5000, 1 << 20])
def test_connection_reset_mid_transfer(server, tmp_path, sent):
    with CASES.case():
        refused(server, tmp_path, reset_after(sent), ["could not download"])


def test_body_longer_than_content_length_is_caught_by_the_checksum(server, tmp_path):
    with CASES.case():  # the client reads what the header promises; the digest shows it is short
        refused(server, tmp_path, send_file(PAYLOAD, length=len(PAYLOAD) - 10), ["SHA256"])


def test_non_numeric_content_length(server, tmp_path):
    with CASES.case():
        refused(server, tmp_path, send_file(PAYLOAD[:-3], length="lots"), ["SHA256"])
    with CASES.case():  # ... while the right bytes under a nonsense header are simply accepted
        assert fetch(server, tmp_path, send_file(PAYLOAD, length="lots")).read_bytes() == PAYLOAD


def test_server_that_stalls_near_the_end_times_out(server, tmp_path):
    def stall(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(PAYLOAD)))
        handler.end_headers()
        handler.wfile.write(PAYLOAD[:-100])
        handler.wfile.flush()
        server.stop.wait(10)

    start = time.monotonic()
    with CASES.case():
        refused(server, tmp_path, stall, ["timed out"], timeout=0.5)
        assert time.monotonic() - start < 5


@pytest.mark.parametrize("status", [301, 403, 410, 429, 502, 503])
def test_more_http_errors(server, tmp_path, status):
    def answer(handler):
        if status == 301:  # a redirect without a Location header
            handler.send_response(301)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        else:
            handler.send_error(status)

    with CASES.case():
        refused(server, tmp_path, answer, [f"HTTP {status}"])


def redirect_to(location):
    def route(handler):
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return route


def test_redirect_to_a_local_file_is_not_followed(server, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(PAYLOAD)  # even a file with the right digest must not be read this way
    folder = tmp_path / "cache"
    folder.mkdir()
    with CASES.case():
        refused(server, folder, redirect_to(secret.as_uri()), ["could not download", "file:"])


def test_redirect_to_a_dead_port(server, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with CASES.case():
        refused(server, tmp_path, redirect_to(f"http://127.0.0.1:{port}/model.pt"), ["refused"])


def test_a_chain_of_redirects_that_ends_is_followed(server, tmp_path):
    server.routes["/hop1"] = redirect_to("/hop2")
    server.routes["/hop2"] = redirect_to("/final")
    server.routes["/final"] = send_file(PAYLOAD)
    with CASES.case():
        assert fetch(server, tmp_path, redirect_to("/hop1")).read_bytes() == PAYLOAD
        assert leftovers(tmp_path) == ["model.pt"]


# ----------------------------------------------------------------------------- disk full

def disk_that_fills_at(patch, capacity):
    """hub's temporary files take ``capacity`` bytes, then fail with ENOSPC: a partial write, as
    a real full disk gives (test_downloads' helper fails whole writes only)."""
    real = cache.tempfile.NamedTemporaryFile

    class Filling:
        def __init__(self, *args, **kwargs):
            self.file, self.written = real(*args, **kwargs), 0

        def write(self, data):
            room = capacity - self.written
            self.written += self.file.write(data[:max(room, 0)])
            if room < len(data):
                raise OSError(errno.ENOSPC, "No space left on device")
            return len(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

    patch.setattr(cache, "tempfile", SimpleNamespace(NamedTemporaryFile=Filling))


@EXAMPLES
@given(capacity=st.one_of(st.sampled_from([0, 1 << 20, len(PAYLOAD) - 1]), st.integers(0, len(PAYLOAD) - 1)))
def test_disk_full_at_any_byte(server, capacity):
    with tempfile.TemporaryDirectory() as folder, CASES.case(), pytest.MonkeyPatch.context() as patch:
        disk_that_fills_at(patch, capacity)
        refused(server, folder, send_file(PAYLOAD), ["No space left", "CLIPVIZ_CACHE"])


@pytest.mark.parametrize("stage", ["fsync", "rename"])
def test_disk_full_when_the_file_is_flushed_or_renamed(server, tmp_path, monkeypatch, stage):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "fsync" if stage == "fsync" else "replace", full)
    with CASES.case():
        refused(server, tmp_path, send_file(PAYLOAD), ["No space left"])


# ----------------------------------------------------------------------------- killed, concurrent

def test_a_downloader_killed_mid_transfer_leaves_nothing_that_lasts(server, tmp_path):
    """SIGKILL skips every cleanup. The next download must still end with one valid file and no
    leftover temporary file from the dead process."""
    server.routes["/model.pt"] = send_file(PAYLOAD, delay=0.2, pieces=20, stop=server.stop)
    destination = tmp_path / "model.pt"
    context = multiprocessing.get_context("spawn")
    victim = context.Process(target=hub.download, args=(server.url("/model.pt"), destination, SHA),
                             kwargs={"progress": False, "timeout": 10})
    victim.start()
    deadline = time.monotonic() + 60
    while not any(name.endswith(".part") and (tmp_path / name).stat().st_size for name in leftovers(tmp_path)):
        assert time.monotonic() < deadline and victim.is_alive(), "the download never started"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    assert not destination.exists()  # the destination is never partial, even now
    with CASES.case():
        server.routes["/model.pt"] = send_file(PAYLOAD)
        assert hub.download(server.url("/model.pt"), destination, SHA, progress=False).read_bytes() == PAYLOAD
        assert leftovers(tmp_path) == ["model.pt"]


def flaky_then_good(server):
    """The first request gets HTTP 500, every later one the file (slowly, so others must wait)."""
    answered = []

    def route(handler):
        answered.append(handler.path)
        if len(answered) == 1:
            handler.send_error(500)
        else:
            send_file(PAYLOAD, delay=0.05, pieces=10, stop=server.stop)(handler)
    return route, answered


@pytest.mark.parametrize("flaky", [False, True], ids=["good server", "first request fails"])
def test_three_processes_at_once_end_with_one_valid_file(server, tmp_path, flaky):
    route, answered = flaky_then_good(server) if flaky else (None, [])
    if flaky:
        server.routes["/model.pt"] = route
    else:
        server.routes["/model.pt"] = send_file(PAYLOAD, delay=0.05, pieces=10, stop=server.stop)
    destination = tmp_path / "model.pt"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=hub.download, args=(server.url("/model.pt"), destination, SHA),
                               kwargs={"progress": False, "timeout": 10}) for _ in range(3)]
    server.requests.clear()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    with CASES.case():
        codes = sorted(worker.exitcode for worker in workers)
        assert codes == ([0, 0, 1] if flaky else [0, 0, 0])  # the one that met the 500 failed cleanly
        assert destination.read_bytes() == PAYLOAD
        assert leftovers(tmp_path) == ["model.pt"]
        assert len(server.requests) == (2 if flaky else 1)  # the others waited and found the file
