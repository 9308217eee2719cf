"""Checkpoint readers: weights only, never code.

    state_dict = read_checkpoint("ViT-B-16.pt")    # {name: Tensor}, OpenAI key names

TorchScript archives are read by our own restricted unpickler (never ``torch.jit.load``, which
runs the archive's code), pickles through ``torch.load(weights_only=True)``, and ``.safetensors``.
The model itself is always rebuilt by ``clipviz.model.build_model``.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import struct
import warnings
import zipfile
from pathlib import Path

from .errors import ClipvizError
from .files import open_regular

_DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Read the weights in a checkpoint file: ``{parameter name: Tensor}``, dtypes as stored.

    Understands OpenAI's TorchScript archives (weights only: the archive's code never runs),
    plain ``torch.save`` state dicts (read with ``weights_only=True``; ``{"state_dict": ...}`` and
    ``{"model": ...}`` wrappers and a ``module.`` key prefix are undone) and ``.safetensors``.
    Anything else (missing, empty, truncated, a folder, a pickle that carries code) raises
    ClipvizError.
    """
    path = Path(path).expanduser()
    with open_regular(path, "checkpoint"):  # a FIFO or device is refused here, without blocking
        pass
    if path.stat().st_size == 0:
        raise ClipvizError(f"checkpoint {path} is empty (0 bytes); download or save it again")

    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        state = _read_safetensors(path)
    else:
        if zipfile.is_zipfile(path):
            _check_archive(path)  # declared sizes and CRC-32s, before torch or we inflate anything
        state = _read_torchscript(path) if _is_torchscript(path) else _read_pickle(path)
    return _state_dict_from(state, path)


def _damaged(path: Path, error: BaseException) -> ClipvizError:
    first = re.split(r"(?<=\.)\s|\n", str(error).strip(), maxsplit=1)[0][:200]
    reason = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return ClipvizError(f"could not read checkpoint {path}: it is damaged, truncated or not a "
                        f"model checkpoint ({reason}); download or save it again")


# A zip checkpoint may declare at most this many times its own size in member bytes (plus a
# little), so a small file cannot ask for gigabytes. torch.save and torch.jit.save store every
# member uncompressed (declared size = bytes in the file); a re-zipped checkpoint deflates weights
# to ~90 % and pickles to ~1/10, while a deflate bomb inflates ~1000:1.
MAX_INFLATION = 32
_INFLATION_SLACK = 16 << 20


def _check_archive(path: Path) -> None:
    """Refuse a zip checkpoint whose members declare more bytes than it can hold, then check
    every member's CRC-32 (Python's zipfile reads each member in 1 MiB pieces, so memory stays
    flat; torch's own reader checks no CRC). Raises ClipvizError naming the member."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            for info in members:
                if info.header_offset + info.compress_size > size:
                    raise zipfile.BadZipFile(f"member {info.filename} claims {info.compress_size:,} bytes past "
                                             f"offset {info.header_offset:,}, beyond the file's {size:,} bytes")
                if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
                    raise zipfile.BadZipFile(f"stored member {info.filename} declares {info.file_size:,} bytes "
                                             f"but holds {info.compress_size:,}")
            declared = sum(info.file_size for info in members)
            if declared > MAX_INFLATION * size + _INFLATION_SLACK:
                largest = max(members, key=lambda info: info.file_size)
                raise ClipvizError(
                    f"refusing checkpoint {path}: its members would inflate to {declared:,} bytes from a "
                    f"{size:,}-byte file (member {largest.filename}: {largest.file_size:,} bytes from "
                    f"{largest.compress_size:,}), more than {MAX_INFLATION}x its size; it is damaged or "
                    "a decompression bomb. Save the weights again with torch.save")
            damaged = archive.testzip()
    except ClipvizError:
        raise
    except Exception as e:  # BadZipFile, OSError, zlib.error, NotImplementedError (unknown compression)
        raise _damaged(path, e) from e
    if damaged is not None:
        raise ClipvizError(f"checkpoint {path} is damaged: member {damaged} fails its CRC-32 check (bytes changed "
                           "after it was written); download or save it again")


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
            data = _read_member(self.archive, f"{self.root}data/{key}")
            flat = self.torch.frombuffer(data, dtype=self.torch.uint8) if data else \
                self.torch.empty(0, dtype=self.torch.uint8)
            self.storages[key] = flat.view(dtype)
        if self.storages[key].numel() != numel:
            raise pickle.UnpicklingError(f"storage {key} holds {self.storages[key].numel()} "
                                         f"values, not {numel}")
        return self.storages[key]

    def _tensor(self, flat, offset, size, stride, *_requires_grad_hooks_metadata):
        return flat.as_strided(tuple(size), tuple(stride), offset)


def _read_member(archive: zipfile.ZipFile, name: str) -> bytearray:
    """A member's bytes in one writable buffer, filled 1 MiB at a time (read() then bytearray()
    would hold two copies at once)."""
    data = bytearray(archive.getinfo(name).file_size)
    view = memoryview(data)
    with archive.open(name) as member:
        filled = 0
        while filled < len(data):
            chunk = member.read(min(1 << 20, len(data) - filled))
            if not chunk:
                raise EOFError(f"member {name} ends after {filled:,} of {len(data):,} bytes")
            view[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
    return data


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
    for name, tensor in state.items():
        _check_extent(name, tensor, path)
    return dict(state)


def _check_extent(name: str, tensor, path: Path) -> None:
    """A weight may not claim more values than its storage holds: sizes with zero or overlapping
    strides over a few bytes would turn into gigabytes when the model copies them. (Torch itself
    refuses views that reach past the storage.)"""
    held = tensor.untyped_storage().nbytes() // max(1, tensor.element_size())
    if tensor.numel() > held:
        raise ClipvizError(f"refusing checkpoint {path}: tensor {name} claims shape {tuple(tensor.shape)} "
                           f"({tensor.numel():,} values) over a storage of {held:,} values (strides "
                           f"{tuple(tensor.stride())}); it is damaged or crafted. Save the weights again "
                           "with torch.save(model.state_dict())")


