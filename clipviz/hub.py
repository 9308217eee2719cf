"""Model registry and ``load``: a name or a path becomes a model and its preprocessing.

    model, preprocess = load("ViT-B/16")           # registry name -> cached download
    model, preprocess = load("~/ckpt/my-clip.pt")  # or any checkpoint file
    state_dict = read_checkpoint("ViT-B-16.pt")    # {name: Tensor}, OpenAI key names

A registered name maps to a URL plus the SHA256 of the file behind it (OpenAI puts the digest in
the URL itself), or to a file shipped inside the package. Fetching and caching live in
``clipviz.cache``, reading weights (never code) in ``clipviz.checkpoints``; both are re-exported
here.

torch and the model code are imported inside the functions that need them, so importing this
module (the CLI's ``models`` command, the tokenizer's vocabulary download) stays cheap.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from .cache import SHA256_PATTERN, cache_dir, checked_sha256, download, file_sha256
from .checkpoints import read_checkpoint
from .errors import ClipvizError

__all__ = [
    "ModelEntry", "available_models", "model_info", "register_model", "cache_dir",
    "download", "read_checkpoint", "load", "WEIGHTS_DIR",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # package data: bundled checkpoints
ADAPTER_PREFIXES = ("openclip:", "hf:")  # names handled by clipviz.adapters.load_spec


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
        if not SHA256_PATTERN.fullmatch(embedded):
            raise ClipvizError(f"cannot register {name!r}: {url} has no SHA256 path component; "
                               "pass sha256= so the download can be checked")
        sha256 = embedded
    if path is not None:
        path = Path(path).expanduser()
        path = path if path.is_absolute() else WEIGHTS_DIR / path
    entry = ModelEntry(name, url, None if sha256 is None else checked_sha256(sha256), path,
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
    except ClipvizError as error:  # say which file
        raise ClipvizError(f"{weights_file}: {error}") from None
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
