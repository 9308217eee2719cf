"""Model registry, weights cache, checked downloads and checkpoint readers.

    model, preprocess = load("ViT-B/16")           # registry name -> cached download
    model, preprocess = load("~/ckpt/my-clip.pt")  # or any checkpoint file
    state_dict = read_checkpoint("ViT-B-16.pt")    # {name: Tensor}, OpenAI key names

A registered name maps to a URL plus the SHA256 of the file behind it (OpenAI puts the digest in
the URL itself), or to a file shipped inside the package. Downloads go to a temporary file next to
the destination, are checked against the digest, and only then renamed into place, so the cache
never holds a partial or wrong file. A lock file serialises processes fetching the same file.

Checkpoints are read as weights only: TorchScript archives by our own restricted unpickler (never
``torch.jit.load``, which runs the archive's code), pickles through ``torch.load(weights_only=True)``,
and ``.safetensors``. The model itself is always rebuilt by ``clipviz.model.build_model``.

torch and the model code are imported inside the functions that need them, so importing this
module (the CLI's ``models`` command, the tokenizer's vocabulary download) stays cheap.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import hashlib
import http.client
import io
import os
import pickle
import pickletools
import re
import socket
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ClipvizError

try:
    import fcntl
except ImportError:  # Windows: _exclusive_lock falls back to an O_EXCL lock file
    fcntl = None

__all__ = [
    "ModelEntry", "available_models", "model_info", "register_model", "cache_dir",
    "download", "read_checkpoint", "load", "WEIGHTS_DIR",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # package data: bundled checkpoints
ADAPTER_PREFIXES = ("openclip:", "hf:")  # names handled by clipviz.adapters.load_spec
_CHUNK = 1 << 20  # bytes per read while downloading and hashing
_STALE_LOCK_SECONDS = 300  # fallback lock only: a lock file untouched this long is abandoned
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


# ----------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class ModelEntry:
    """Where a registered model's weights come from.

    url:    download location (the cache file is named after its last path component), or None.
    sha256: expected digest of the file, 64 lowercase hex characters (None: not checked).
    path:   a local file, tried before ``url`` (bundled package data), or None.
    """

    name: str
    url: str | None
    sha256: str | None
    path: Path | None
    description: str = ""


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, *, url: str | None = None, sha256: str | None = None,
                   path: str | os.PathLike | None = None, description: str = "") -> ModelEntry:
    """Make ``load(name)`` find a model's weights.

    Give ``url`` (downloaded once into ``cache_dir()``), ``path`` (a local file; a relative path
    is taken inside the package's ``weights/`` folder), or both (the file wins when present).
    ``sha256`` defaults to the digest embedded in the URL the way OpenAI's URLs do
    (``.../<sha256>/<file>.pt``); a URL without one needs ``sha256``. Registering the same entry
    twice is harmless; registering a different one under a taken name is an error.
    """
    if not isinstance(name, str) or not name.strip() or name.startswith(ADAPTER_PREFIXES):
        raise ClipvizError(f"cannot register model name {name!r}: use a non-empty name that does "
                           f"not start with {' or '.join(ADAPTER_PREFIXES)}")
    if url is None and path is None:
        raise ClipvizError(f"cannot register {name!r}: give a url to download from or a path")
    if sha256 is None and url is not None:
        embedded = url.rstrip("/").split("/")[-2] if url.count("/") >= 3 else ""
        if not _SHA256.fullmatch(embedded):
            raise ClipvizError(f"cannot register {name!r}: {url} has no SHA256 path component; "
                               "pass sha256= so the download can be checked")
        sha256 = embedded
    if path is not None:
        path = Path(path).expanduser()
        path = path if path.is_absolute() else WEIGHTS_DIR / path
    entry = ModelEntry(name, url, None if sha256 is None else _checked_sha256(sha256), path,
                       description)
    if _MODELS.get(name, entry) != entry:
        raise ClipvizError(f"model name {name!r} is already registered as {_MODELS[name]}; "
                           "pick another name")
    _MODELS[name] = entry
    return entry


def available_models() -> list[str]:
    """Names ``load`` accepts besides file paths: the nine OpenAI models first, then extras."""
    return list(_MODELS)


def model_info(name: str) -> ModelEntry:
    """The registry entry for ``name`` (url, sha256, path, description)."""
    if name not in _MODELS:
        raise ClipvizError(_unknown_model_message(name))
    return _MODELS[name]


def _checked_sha256(sha256: str) -> str:
    """``sha256`` lower-cased, after checking it is 64 hex characters."""
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ClipvizError(f"{sha256!r} is not a SHA256 digest: expected 64 hex characters")
    return sha256.lower()


def _unknown_model_message(name) -> str:
    names = available_models()
    folded = {n.lower(): n for n in names}
    close = [folded[m] for m in difflib.get_close_matches(str(name).lower(), folded, n=3,
                                                          cutoff=0.6)]
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    return (f"unknown model {name!r}: it is neither a registered name nor an existing file.{hint} "
            f"Available models: {', '.join(names)}; or pass the path to a checkpoint file.")


_OPENAI = "https://openaipublic.azureedge.net/clip/models"
for _name, _digest, _file, _about in [
    ("RN50", "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762", "RN50.pt",
     "ResNet-50 image encoder, 224 px"),
    ("RN101", "8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599", "RN101.pt",
     "ResNet-101 image encoder, 224 px"),
    ("RN50x4", "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd", "RN50x4.pt",
     "ResNet-50 scaled 4x, 288 px"),
    ("RN50x16", "52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa", "RN50x16.pt",
     "ResNet-50 scaled 16x, 384 px"),
    ("RN50x64", "be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c", "RN50x64.pt",
     "ResNet-50 scaled 64x, 448 px"),
    ("ViT-B/32", "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "ViT-B-32.pt",
     "ViT-Base, 32 px patches, 224 px (7x7 patch grid)"),
    ("ViT-B/16", "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f", "ViT-B-16.pt",
     "ViT-Base, 16 px patches, 224 px (14x14 patch grid)"),
    ("ViT-L/14", "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "ViT-L-14.pt",
     "ViT-Large, 14 px patches, 224 px (16x16 patch grid)"),
    ("ViT-L/14@336px", "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
     "ViT-L-14-336px.pt", "ViT-Large, 14 px patches, 336 px (24x24 patch grid)"),
]:
    register_model(_name, url=f"{_OPENAI}/{_digest}/{_file}", description=f"OpenAI CLIP {_about}")
del _name, _digest, _file, _about


# ----------------------------------------------------------------------------- cache + download

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
    a progress bar on stderr (tqdm when installed). Processes fetching the same destination take
    turns through ``<destination>.lock``; a process that waited finds the file done and returns.
    """
    destination = Path(destination).expanduser()
    expected = _checked_sha256(sha256)
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
            with _progress_bar(total, destination.name, progress) as bar:
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
def _progress_bar(total: int | None, label: str, enabled: bool):
    """Yield an object with ``update(n_bytes)``: tqdm on stderr, our own line, or nothing."""
    if not enabled:
        yield _NoProgress()
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None:
        with _LineProgress(total, label, sys.stderr) as bar:
            yield bar
    else:
        with tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                  file=sys.stderr) as bar:
            yield bar


class _NoProgress:
    def update(self, n_bytes: int) -> None:
        pass


class _LineProgress:
    """``label:  42% 120.0/286.4 MiB`` redrawn in place with ``\\r``, at most ten times a second."""

    def __init__(self, total: int | None, label: str, stream):
        self.total, self.label, self.stream = total, label, stream
        self.done, self.drawn_at = 0, 0.0

    def __enter__(self):
        self._draw()
        return self

    def update(self, n_bytes: int) -> None:
        self.done += n_bytes
        if time.monotonic() - self.drawn_at >= 0.1:
            self._draw()

    def __exit__(self, *exc):
        self._draw()
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self) -> None:
        mib = 1 << 20
        if self.total:
            text = f"{100 * self.done / self.total:3.0f}% {self.done / mib:.1f}/" \
                   f"{self.total / mib:.1f} MiB"
        else:
            text = f"{self.done / mib:.1f} MiB"
        self.stream.write(f"\r{self.label}: {text}")
        self.stream.flush()
        self.drawn_at = time.monotonic()


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


# ----------------------------------------------------------------------------- checkpoint readers

def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read the weights in a checkpoint file: ``{parameter name: Tensor}``, dtypes as stored.

    Understands OpenAI's TorchScript archives (weights only: the archive's code never runs),
    plain ``torch.save`` state dicts (read with ``weights_only=True``; ``{"state_dict": ...}`` and
    ``{"model": ...}`` wrappers and a ``module.`` key prefix are undone) and ``.safetensors``.
    Anything else (missing, empty, truncated, a folder, a pickle that carries code) raises
    ClipvizError.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ClipvizError(f"checkpoint {path} does not exist; check the path")
    if not path.is_file():
        raise ClipvizError(f"checkpoint {path} is not a file; pass the checkpoint file inside it")
    if path.stat().st_size == 0:
        raise ClipvizError(f"checkpoint {path} is empty (0 bytes); download or save it again")

    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        state = _read_safetensors(path)
    elif _is_torchscript(path):
        state = _read_torchscript(path)
    else:
        state = _read_pickle(path)
    return _state_dict_from(state, path)


def _damaged(path: Path, error: BaseException) -> ClipvizError:
    first = re.split(r"(?<=\.)\s|\n", str(error).strip(), maxsplit=1)[0][:200]
    reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return ClipvizError(f"could not read checkpoint {path}: it is damaged, truncated or not a "
                        f"model checkpoint ({reason}); download or save it again")


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors files start with a little-endian u64 header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= struct.unpack("<Q", head[:8])[0] <= path.stat().st_size - 8


def _read_safetensors(path: Path) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise ClipvizError(f"{path} is a safetensors file, which needs the safetensors package: "
                           "pip install clipviz[safetensors]") from e
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError and OSError
        raise _damaged(path, e) from e


def _is_torchscript(path: Path) -> bool:
    """True for a zip holding ``<root>/constants.pkl`` or ``<root>/code/``: torch.jit.save's layout."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _read_torchscript(path: Path) -> dict:
    """A TorchScript archive's parameters and buffers, ``{dotted name: Tensor}``, read without
    ``torch.jit.load``: that compiles the archive's code and runs any ``__setstate__`` it defines,
    and TorchScript can create and write files (``torch.from_file(..., shared=True)``).

    ``<root>/data.pkl`` is unpickled by _ScriptUnpickler, which builds only tensors (from the
    ``<root>/data/<key>`` records) and inert _ScriptObject placeholders for modules; the names of
    each module's parameters and buffers come from the ``__parameters__`` / ``__buffers__`` lines
    of its class in ``<root>/code/`` (text, never compiled). A module that restores itself with its
    own code (state that is not a plain attribute dict) is refused.
    """
    import torch

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            root = next(n[:-len("data.pkl")] for n in names if n.endswith("/data.pkl") and n.count("/") == 1)
            order = archive.read(root + "byteorder").strip() if root + "byteorder" in names else b"little"
            if order != b"little":  # torch.jit.save has written "little" since the file existed
                raise ClipvizError(f"{path} is a {order.decode(errors='replace')}-endian TorchScript "
                                   "archive; re-save it on a little-endian machine")
            module = _ScriptUnpickler(archive, root, torch).load()
            return _script_weights(module, "", _ScriptClasses(archive, root), path)
    except ClipvizError:
        raise
    except _ForbiddenGlobal as e:
        raise _refusal(path, [e.args[0]], "torch.jit.load(path).state_dict()") from e
    except Exception as e:  # zipfile, pickle, struct, torch and our own checks
        raise _damaged(path, e) from e


class _ScriptObject:
    """Stands in for an object of a TorchScript class: keeps its pickled state, runs nothing.
    The unpickler makes one subclass per class name, since pickle's NEWOBJ wants a type."""

    qualified_name = ""
    state = None

    def __setstate__(self, state):
        self.state = state


# torch.jit._pickle helpers the TorchScript pickler names for typed lists, done by hand
_SCRIPT_HELPERS = {"build_intlist": list, "build_doublelist": list, "build_boollist": list,
                   "build_tensorlist": list, "build_genericlist": list,
                   "restore_type_tag": lambda value, type_name: value}
_STORAGE_DTYPES = {"FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
                   "DoubleStorage": "float64", "LongStorage": "int64", "IntStorage": "int32",
                   "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
                   "BoolStorage": "bool"}


class _ForbiddenGlobal(pickle.UnpicklingError):
    """A TorchScript data.pkl asked for a Python object that weights never need (args[0]: its name)."""


class _ScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl`` into _ScriptObjects and tensors; any other global
    (os.system, builtins.exec, ...) raises _ForbiddenGlobal before anything is called."""

    def __init__(self, archive: zipfile.ZipFile, root: str, torch):
        super().__init__(io.BytesIO(archive.read(root + "data.pkl")))
        self.archive, self.root, self.torch, self.storages, self.classes = archive, root, torch, {}, {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            qualified_name = f"{module}.{name}"
            if qualified_name not in self.classes:
                self.classes[qualified_name] = type("_ScriptObject", (_ScriptObject,),
                                                    {"qualified_name": qualified_name})
            return self.classes[qualified_name]
        if module == "torch" and name in _STORAGE_DTYPES:
            return getattr(self.torch, _STORAGE_DTYPES[name])  # a dtype stands for the storage
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return self._tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda tensor, requires_grad, hooks: tensor
        if module == "torch.jit._pickle" and name in _SCRIPT_HELPERS:
            return _SCRIPT_HELPERS[name]
        if module == "collections" and name == "OrderedDict":
            return dict
        raise _ForbiddenGlobal(f"{module}.{name}")

    def persistent_load(self, record):
        """('storage', dtype, key, location, numel) -> a flat tensor over <root>/data/<key>."""
        kind, dtype, key, _location, numel = record
        if kind != "storage" or not isinstance(dtype, self.torch.dtype):
            raise pickle.UnpicklingError(f"unexpected persistent record {record!r:.80}")
        if key not in self.storages:
            data = bytearray(self.archive.read(f"{self.root}data/{key}"))
            flat = self.torch.frombuffer(data, dtype=self.torch.uint8) if data else \
                self.torch.empty(0, dtype=self.torch.uint8)
            self.storages[key] = flat.view(dtype)
        if self.storages[key].numel() != numel:
            raise pickle.UnpicklingError(f"storage {key} holds {self.storages[key].numel()} "
                                         f"values, not {numel}")
        return self.storages[key]

    def _tensor(self, flat, offset, size, stride, *_requires_grad_hooks_metadata):
        return flat.as_strided(tuple(size), tuple(stride), offset)


class _ScriptClasses:
    """Parameter and buffer names per TorchScript class, read from the archive's code as text."""

    def __init__(self, archive: zipfile.ZipFile, root: str):
        self.archive, self.root, self.found = archive, root, {}

    def weight_names(self, qualified_name: str):
        """Names of the class's parameters and buffers, or None when its code has no such lines."""
        module, _, name = qualified_name.rpartition(".")
        if module not in self.found:
            source_file = f"{self.root}code/{module.replace('.', '/')}.py"
            source = self.archive.read(source_file).decode("utf-8", "replace") \
                if source_file in self.archive.namelist() else ""
            self.found[module] = {
                match[0]: set(re.findall(r'"([^"]*)"', match[1] + match[2]))
                for match in re.findall(r"^class (\w+)\(Module\):\n  __parameters__ = \[(.*)\]\n"
                                        r"  __buffers__ = \[(.*)\]$", source, flags=re.M)}
        return self.found[module].get(name)


def _script_weights(obj, prefix: str, classes: _ScriptClasses, path: Path) -> dict:
    """Flatten a _ScriptObject tree into ``{dotted name: Tensor}`` of parameters and buffers."""
    import torch

    if not isinstance(obj, _ScriptObject) or not isinstance(obj.state, dict):
        raise ClipvizError(f"{path} is a TorchScript archive whose module {prefix.rstrip('.') or '(root)'} "
                           "restores itself with its own code; clipviz reads only archives of plain "
                           "modules. If you trust it, take torch.jit.load(path).state_dict() yourself "
                           "and pass it to clipviz.build_model")
    names = classes.weight_names(obj.qualified_name)  # None: unknown class, keep every tensor
    weights = {}
    for attribute, value in obj.state.items():
        if isinstance(value, _ScriptObject):
            weights.update(_script_weights(value, f"{prefix}{attribute}.", classes, path))
        elif torch.is_tensor(value) and (names is None or attribute in names):
            weights[prefix + attribute] = value
    return weights


def _read_pickle(path: Path):
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it reads fine
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # RuntimeError, EOFError, UnpicklingError, KeyError, ...
        names = _pickle_globals(path) if "Unpickl" in type(e).__name__ else []
        if not names:
            raise _damaged(path, e) from e
        suspects = [n for n in names if not n.startswith(("torch.", "collections."))] or names
        raise _refusal(path, suspects, "torch.load(path, weights_only=False)") from e


def _refusal(path: Path, names: list[str], trusted_reader: str) -> ClipvizError:
    return ClipvizError(
        f"refusing to unpickle code from {path}: it refers to {', '.join(names[:5])}, which "
        "weights-only loading does not allow, and unpickling it could run arbitrary code. If you "
        f"trust this file, load it yourself with {trusted_reader} and pass the state dict to "
        "clipviz.build_model")


def _pickle_globals(path: Path) -> list[str]:
    """Names of the Python objects (``module.qualname``) a pickle file asks to import.

    Reads the opcode stream only; nothing is unpickled. Looks at ``*/data.pkl`` of a torch zip,
    else at every pickle in the file (the legacy torch format stores several in a row).
    Returns [] when the bytes are not a pickle.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                streams = [archive.read(member)] if member else []
        else:
            streams = [path.read_bytes()]
    except (zipfile.BadZipFile, OSError):
        return []
    found = []
    for data in streams:
        stream = io.BytesIO(data)
        while stream.tell() < len(data):
            strings, memo, top = [], {}, None  # top: the string the last opcode pushed, if any
            try:
                for opcode, arg, _ in pickletools.genops(stream):
                    name = opcode.name
                    if name == "GLOBAL":
                        found.append(arg.replace(" ", "."))
                    elif name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
                    if name == "MEMOIZE":
                        memo[len(memo)] = top
                    elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                        memo[arg] = top
                    else:
                        top = arg if "UNICODE" in name else (
                            memo.get(arg) if name in ("GET", "BINGET", "LONG_BINGET") else None)
                        if top is not None:
                            strings.append(top)
            except Exception:  # not (or no longer) a pickle stream: keep what was found
                break
    return [n for n in found if _DOTTED_NAME.fullmatch(n)]  # random bytes can parse as GLOBAL


def _state_dict_from(state, path: Path) -> dict:
    """Unwrap ``{"state_dict": sd}`` / ``{"model": sd}``, drop a ``module.`` prefix, check types."""
    import torch

    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        kind = "an empty dict" if isinstance(state, dict) else type(state).__name__
        raise ClipvizError(f"{path} holds {kind}, not a state dict of named weights; save "
                           "model.state_dict() and retry")
    if all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    odd = [k for k, v in state.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if odd:
        raise ClipvizError(f"{path} is not a state dict: entries {odd[:5]} are not named tensors; "
                           "save model.state_dict() and retry")
    return dict(state)


# ----------------------------------------------------------------------------- load

def load(name_or_path: str | os.PathLike, device=None, download_root: str | os.PathLike | None = None,
         jit: bool = False):
    """Load a CLIP model by registered name or checkpoint path: returns ``(model, preprocess)``.

    name_or_path:  a name from ``available_models()``, a checkpoint file, or an adapter spec
                   ``openclip:<model>`` / ``hf:<repo>`` (handled by ``clipviz.adapters``).
    device:        where the model goes; default "cuda" when available, else "cpu". On CPU the
                   weights are converted to float32; elsewhere they stay as built (OpenAI: fp16).
    download_root: folder for downloads; default ``cache_dir()``.
    jit:           must be False: clipviz always builds its own model from the weights.

    ``model`` is ``clipviz.model.CLIP`` in eval mode; ``preprocess`` is
    ``clipviz.preprocess.Preprocess(model.visual.input_resolution)``.
    """
    if jit:
        raise ClipvizError("jit=True is not supported: clipviz always builds its own model from "
                           "the checkpoint's weights (so hooks can record attention); drop jit=True")
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ClipvizError(f"{device!r} is not a torch device; use 'cpu' or 'cuda'") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ClipvizError("device='cuda' was asked for but torch sees no CUDA GPU here; "
                           "use device='cpu'")
    if isinstance(name_or_path, str) and name_or_path.startswith(ADAPTER_PREFIXES):
        return _load_with_adapter(name_or_path, device)

    weights_file = _weights_file(name_or_path, download_root)
    state_dict = read_checkpoint(weights_file)
    from .model import build_model
    from .preprocess import Preprocess

    try:
        model = build_model(state_dict)
    except (ValueError, TypeError, IndexError, ZeroDivisionError) as e:  # shapes no CLIP can have
        raise ClipvizError(f"the weights in {weights_file} do not fit the CLIP architecture "
                           f"({type(e).__name__}: {e}); pass an OpenAI-format CLIP checkpoint") from e
    model = model.to(device).eval()
    if device.type == "cpu":
        model.float()  # fp16 matmuls are slow or missing on CPU
    return model, Preprocess(model.visual.input_resolution)


def _weights_file(name_or_path, download_root) -> Path:
    """The local checkpoint for a registered name (downloading it if needed) or a path."""
    entry = _MODELS.get(name_or_path) if isinstance(name_or_path, str) else None
    if entry is None:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise ClipvizError(_unknown_model_message(name_or_path))
        return path
    if entry.path is not None and entry.path.is_file():
        if entry.sha256 is not None and file_sha256(entry.path) != entry.sha256:
            raise ClipvizError(f"the weights file {entry.path} for {entry.name!r} is damaged (its "
                               f"SHA256 is not {entry.sha256}); reinstall clipviz")
        return entry.path
    if entry.url is None:
        raise ClipvizError(f"the weights file {entry.path} for {entry.name!r} is missing; "
                           "reinstall clipviz")
    root = Path(download_root).expanduser() if download_root is not None else cache_dir()
    return download(entry.url, root / entry.url.rstrip("/").split("/")[-1], entry.sha256)


def _load_with_adapter(spec: str, device):
    """Hand ``openclip:...`` / ``hf:...`` specs to ``clipviz.adapters.load_spec(spec, device)``.

    The adapters say which optional extra (``clipviz[openclip]``, ``clipviz[hf]``) is missing.
    """
    from . import adapters

    return adapters.load_spec(spec, device)


# ----------------------------------------------------------------------------- bundled offline model
# Owned by clipviz/synth/train.py: the small CLIP trained on synthetic scenes, shipped as package
# data (see docs/model_card_synth.md). Retraining changes the digest: update it with the file.
register_model(
    "synth-vit-t16", path="synth-vit-t16.pt",
    sha256="9d7c6e4cc85fab4788264ac9babc8bfc0b629467631c4b682a72536581fda30b",
    description="small CLIP (ViT, 16 px patches, 14x14 grid) trained offline on clipviz.synth "
                "scenes: 8 shapes x 8 colours, knows nothing of real photos")
