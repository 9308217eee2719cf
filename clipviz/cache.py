"""The weights cache and checked downloads.

    path = download(url, cache_dir() / "ViT-B-16.pt", sha256)

Downloads go to a temporary file next to the destination, are checked against the SHA256 (and
the Content-Length), and only then renamed into place, so the cache never holds a partial or
wrong file. A lock file serialises processes fetching the same file; a cached file whose digest
is wrong (bit rot, tampering) is fetched again.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import os
import re
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from .errors import ClipvizError
from .progress import bar as progress_bar

try:
    import fcntl
except ImportError:  # Windows: _exclusive_lock falls back to an O_EXCL lock file
    fcntl = None

_CHUNK = 1 << 20  # bytes per read while downloading and hashing
_STALE_LOCK_SECONDS = 300  # fallback lock only: a lock file untouched this long is abandoned
SHA256_PATTERN = re.compile(r"[0-9a-fA-F]{64}")


def checked_sha256(sha256: str) -> str:
    """``sha256`` lower-cased, after checking it is 64 hex characters."""
    if not isinstance(sha256, str) or not SHA256_PATTERN.fullmatch(sha256):
        raise ClipvizError(f"{sha256!r} is not a SHA256 digest: expected 64 hex characters")
    return sha256.lower()


def cache_dir() -> Path:
    """Where downloads are kept: ``$CLIPVIZ_CACHE``, else ``$XDG_CACHE_HOME/clipviz``, else
    ``~/.cache/clipviz``. Empty variables count as unset. The folder is not created here."""
    if os.environ.get("CLIPVIZ_CACHE"):
        return Path(os.environ["CLIPVIZ_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "clipviz"
    return Path.home() / ".cache" / "clipviz"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, destination: str | os.PathLike, sha256: str, progress: bool = True,
             timeout: float = 30) -> Path:
    """Fetch ``url`` into ``destination`` unless a file with the right SHA256 is already there.

    A destination with the wrong digest (damaged cache) is warned about and replaced. The bytes go
    to a temporary file in the same folder, are checked (length against Content-Length, digest
    against ``sha256``) and then renamed over ``destination`` in one step. On any failure the
    temporary file is removed, an earlier ``destination`` stays as it was, and ClipvizError says
    what happened and where to put the file by hand (KeyboardInterrupt is cleaned up after and
    re-raised as itself). ``timeout``: seconds without data before giving up. ``progress``: show
    a progress bar on stderr (clipviz.progress). Processes fetching the same destination take
    turns through ``<destination>.lock``; a process that waited finds the file done and returns.
    """
    destination = Path(destination).expanduser()
    expected = checked_sha256(sha256)
    if destination.exists() and not destination.is_file():
        raise ClipvizError(f"cannot download {url} to {destination}: it exists and is not a "
                           "regular file; move it away and retry")

    def note_wait():
        if progress:
            print(f"waiting for another process downloading {destination.name} ...",
                  file=sys.stderr, flush=True)

    try:
        seen = _signature(destination)
        if seen is not None and file_sha256(destination) == expected:
            return destination
        destination.parent.mkdir(parents=True, exist_ok=True)
        lock_path = destination.with_name(destination.name + ".lock")
        with _exclusive_lock(lock_path, on_wait=note_wait) as keep_alive:
            now = _signature(destination)
            if now is not None and now != seen and file_sha256(destination) == expected:
                return destination  # another process finished it while we waited
            if now is not None:
                warnings.warn(f"{destination} exists but its SHA256 is not {expected} (damaged "
                              "or incomplete file); downloading it again", stacklevel=2)
            _remove_orphans(destination)
            _fetch(url, destination, expected, progress, timeout, keep_alive)
    except OSError as e:  # _fetch raises only ClipvizError: this is the folder, lock or old file
        raise ClipvizError(f"cannot use {destination.parent} to store {url} ({e}); set "
                           "CLIPVIZ_CACHE (or download_root) to a writable folder") from e
    return destination


def _remove_orphans(destination: Path) -> None:
    """Delete temporary files that earlier downloads of ``destination`` left behind. Only the lock
    holder writes one, and we hold the lock: any found belongs to a process that was killed
    (SIGKILL, power loss) before its cleanup could run."""
    for orphan in destination.parent.glob(glob.escape(f".{destination.name}.") + "*.part"):
        with contextlib.suppress(OSError):
            orphan.unlink()


def _signature(path: Path):
    """(inode, size, mtime) of a regular file, or None: tells whether a file changed since."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _fetch(url: str, destination: Path, expected: str, progress: bool, timeout: float,
           keep_alive) -> None:
    """Stream ``url`` to a temporary file beside ``destination``, check it, rename it in place."""
    by_hand = f"or download {url} yourself and save it as {destination}"

    def failure(reason: str) -> ClipvizError:
        return ClipvizError(f"could not download {url}: {reason}. Check the address and your "
                            f"connection and retry, {by_hand}")

    def save_failure(error: OSError) -> ClipvizError:
        return ClipvizError(f"could not save {url} into {destination.parent}: "
                            f"{error.strerror or error}. Free some disk space or set "
                            f"CLIPVIZ_CACHE to another folder and retry, {by_hand}")

    tmp = None
    try:
        tmp = tempfile.NamedTemporaryFile(dir=destination.parent, prefix=f".{destination.name}.",
                                          suffix=".part", delete=False)
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            digest, received = hashlib.sha256(), 0
            with progress_bar(total, "B", progress, desc=destination.name, unit_scale=True, unit_divisor=1024) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    try:
                        tmp.write(chunk)
                    except OSError as e:
                        raise save_failure(e) from e
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                    keep_alive()
        if total is not None and received != total:
            raise failure(f"the transfer ended after {received} of {total} bytes")
        if digest.hexdigest() != expected:
            raise failure(f"the received file has SHA256 {digest.hexdigest()}, not {expected}; "
                          "the server sent a different or damaged file")
        try:
            tmp.flush()
            os.fsync(tmp.fileno())
            tmp.close()
        except OSError as e:
            raise save_failure(e) from e
        os.replace(tmp.name, destination)
        tmp = None
    except ClipvizError:
        raise
    except urllib.error.HTTPError as e:
        raise failure(f"the server answered HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise failure(_network_reason(e.reason, timeout)) from e
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise failure(_network_reason(e, timeout)) from e
    finally:  # also on KeyboardInterrupt: never leave a partial file behind
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.close()  # may fail flushing the rest of a full disk; it closes anyway
            with contextlib.suppress(OSError):
                os.unlink(tmp.name)


def _network_reason(error, timeout: float) -> str:
    if isinstance(error, (TimeoutError, socket.timeout)):  # distinct classes before Python 3.10
        return f"no data from the server for {timeout} s (timed out)"
    if isinstance(error, http.client.IncompleteRead):
        return "the connection closed before the whole file arrived"
    return str(error) or type(error).__name__


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path, on_wait=lambda: None):
    """Hold an inter-process lock named by ``lock_path``; the file is deleted on release.

    Yields ``keep_alive()``, to be called while working (it matters only for the fallback).
    With fcntl: flock the file, then check the path still names the file we locked (a holder
    deletes it just before unlocking; a waiter that locked the deleted file tries again).
    Without fcntl: create the file with O_EXCL; a file whose mtime is older than
    _STALE_LOCK_SECONDS belongs to a dead process and is removed.
    """
    fd = _take_flock(lock_path, on_wait) if fcntl is not None else _take_excl(lock_path, on_wait)
    touched = [time.monotonic()]

    def keep_alive():
        if fcntl is None and time.monotonic() - touched[0] > 5:
            with contextlib.suppress(OSError):
                os.utime(lock_path)
            touched[0] = time.monotonic()

    try:
        yield keep_alive
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        if fd is not None:
            os.close(fd)  # closing releases the flock


def _take_flock(lock_path: Path, on_wait) -> int:
    waited = False
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    on_wait()
                    waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            current = os.stat(lock_path)
            if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
                return fd
        except FileNotFoundError:
            pass  # the holder deleted the file between our flock and stat: try again
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _take_excl(lock_path: Path, on_wait) -> None:
    waited = False
    while True:
        try:  # the file's existence is the lock; closed at once so Windows can delete it later
            os.close(os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644))
            return None
        except FileExistsError:
            pass
        with contextlib.suppress(FileNotFoundError):
            if time.time() - os.stat(lock_path).st_mtime > _STALE_LOCK_SECONDS:
                os.unlink(lock_path)
                continue
        if not waited:
            on_wait()
            waited = True
        time.sleep(0.05)


