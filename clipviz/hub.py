"""Model registry and ``load``: a name or a path becomes a model and its preprocessing.

    model, preprocess = load("ViT-B/16")           # registry name -> cached download
    model, preprocess = load("~/ckpt/my-clip.pt")  # or any checkpoint file
    state_dict = read_checkpoint("ViT-B-16.pt")    # {name: Tensor}, OpenAI key names

A registered name maps to a URL plus the SHA256 of the file behind it (OpenAI puts the digest in
the URL itself), Hugging Face Hub mirrors of the same weights, or a file shipped inside the
package. The order in which they are tried lives in ``clipviz.sources``, downloads in
``clipviz.cache``, reading weights (never code) in ``clipviz.checkpoints``.

torch and the model code are imported inside the functions that need them, so importing this
module (the CLI's ``models`` command, the tokenizer's vocabulary download) stays cheap.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from .activation import check_activation, detect_activation
from .cache import SHA256_PATTERN, cache_dir, checked_sha256, download, file_sha256
from .checkpoints import read_checkpoint
from .devices import resolve_device
from .errors import ClipvizError
from .sources import Mirror

__all__ = [
    "ModelEntry", "Mirror", "available_models", "model_info", "register_model", "cache_dir",
    "download", "read_checkpoint", "load", "WEIGHTS_DIR",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"  # package data: bundled checkpoints
ADAPTER_PREFIXES = ("openclip:", "hf:")  # names handled by clipviz.adapters.load_spec
RANDOM = "random:"  # random:ARCH, e.g. random:ViT-B/16: an official architecture with random weights


# ----------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class ModelEntry:
    """Where a registered model's weights come from.

    url:          download location (the cache file is named after its last path component), or None.
    sha256:       expected digest of the file, 64 lowercase hex characters (None: not checked).
    path:         a local file, tried before ``url`` (bundled package data), or None.
    architecture: key of ``clipviz.model.OFFICIAL_CONFIGS`` every source's weights must match
                  (None: any CLIP).
    mirrors:      Hugging Face Hub copies of the same weights (``clipviz.sources.Mirror``).
    activation:   the MLP activation the weights were trained with ("quick_gelu" or "gelu").
    """

    name: str
    url: str | None
    sha256: str | None
    path: Path | None
    description: str = ""
    architecture: str | None = None
    mirrors: tuple = ()
    activation: str = "quick_gelu"


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, *, url: str | None = None, sha256: str | None = None,
                   path: str | os.PathLike | None = None, description: str = "",
                   architecture: str | None = None, mirrors=(),
                   activation: str = "quick_gelu") -> ModelEntry:
    """Make ``load(name)`` find a model's weights.

    Give ``url`` (downloaded once into ``cache_dir()``), ``path`` (a local file; a relative path
    is taken inside the package's ``weights/`` folder), ``mirrors`` (Hub copies), or several
    (tried in the order of ``clipviz.sources``). ``architecture`` names the official
    architecture every source must match; ``activation`` the MLP activation to build with.
    ``sha256`` defaults to the digest embedded in the URL the way OpenAI's URLs do
    (``.../<sha256>/<file>.pt``); a URL without one needs ``sha256``. Registering the same entry
    twice is harmless; registering a different one under a taken name is an error.
    """
    if not isinstance(name, str) or not name.strip() or name.startswith(ADAPTER_PREFIXES):
        raise ClipvizError(f"cannot register model name {name!r}: use a non-empty name that does "
                           f"not start with {' or '.join(ADAPTER_PREFIXES)}")
    if url is None and path is None and not mirrors:
        raise ClipvizError(f"cannot register {name!r}: give a url to download from, a path or mirrors")
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
                       description, architecture, tuple(mirrors), check_activation(activation))
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
_OPENCLIP_FILE = "open_clip_model.safetensors"  # open_clip's HF_SAFE_WEIGHTS_NAME
# OpenAI's archive (digest from its URL, as in openai/clip's clip.py), then the Hugging Face Hub
# copies open_clip's pretrained.py names (timm/<arch>_clip.openai: OpenCLIP files with OpenAI's
# parameter names), then for the ViTs the transformers repos. Pins: a repo revision or a file
# SHA256 where a public page gives one (README, "Where the weights come from"); the others are
# checked against the LFS SHA256 the Hub declares.
_MIRRORS = {
    "RN50": [Mirror("timm/resnet50_clip.openai", _OPENCLIP_FILE,
                    revision="00fd56258d8020fda2c9a8b683cf883d477ad3eb")],
    "RN101": [Mirror("timm/resnet101_clip.openai", _OPENCLIP_FILE)],
    "RN50x4": [Mirror("timm/resnet50x4_clip.openai", _OPENCLIP_FILE,
                      sha256="fcd5a494550d0951f314a9d74225887e727ddc20c28c78962b58464705bfb465")],
    "RN50x16": [Mirror("timm/resnet50x16_clip.openai", _OPENCLIP_FILE)],
    "RN50x64": [Mirror("timm/resnet50x64_clip.openai", _OPENCLIP_FILE)],
    "ViT-B/32": [Mirror("timm/vit_base_patch32_clip_224.openai", _OPENCLIP_FILE,
                        revision="ab5b8ef490e86faa07d3523926b842c765de1de5"),
                 Mirror("openai/clip-vit-base-patch32", "model.safetensors", layout="transformers")],
    "ViT-B/16": [Mirror("timm/vit_base_patch16_clip_224.openai", _OPENCLIP_FILE),
                 Mirror("openai/clip-vit-base-patch16", "model.safetensors", layout="transformers")],
    "ViT-L/14": [Mirror("timm/vit_large_patch14_clip_224.openai", _OPENCLIP_FILE),
                 Mirror("openai/clip-vit-large-patch14", "model.safetensors", layout="transformers",
                        sha256="a2bf730a0c7debf160f7a6b50b3aaf3703e7e88ac73de7a314903141db026dcb")],
    "ViT-L/14@336px": [Mirror("timm/vit_large_patch14_clip_336.openai", _OPENCLIP_FILE),
                       Mirror("openai/clip-vit-large-patch14-336", "model.safetensors",
                              layout="transformers")],
}
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
    register_model(_name, url=f"{_OPENAI}/{_digest}/{_file}", description=f"OpenAI CLIP {_about}",
                   architecture=_name, mirrors=_MIRRORS[_name], activation="quick_gelu")
del _name, _digest, _file, _about


# ----------------------------------------------------------------------------- load

def load(name_or_path: str | os.PathLike, device=None, download_root: str | os.PathLike | None = None,
         jit: bool = False, activation: str | None = None):
    """Load a CLIP model by registered name or checkpoint path: returns ``(model, preprocess)``.

    name_or_path:  a name from ``available_models()``, a checkpoint file, an adapter spec
                   ``openclip:<model>`` / ``hf:<repo>`` (handled by ``clipviz.adapters``), or
                   ``random:<architecture>`` (e.g. ``random:ViT-B/16``: that official
                   architecture with random weights, seed 0 — tests and pipeline checks offline).
    device:        where the model goes; default "cuda" when available, else "cpu". On CPU the
                   weights are converted to float32; elsewhere they stay as built (OpenAI: fp16).
    download_root: clipviz's cache folder for this call; default ``cache_dir()``.
    jit:           must be False: clipviz always builds its own model from the weights.
    activation:    the MLP activation, "quick_gelu" or "gelu". Default: the registry's for a
                   name (QuickGELU for OpenAI's nine); for a file what ``detect_activation``
                   finds, else QuickGELU with a warning. Needed for plain-file open_clip
                   checkpoints trained with GELU (LAION, DataComp, ...), which nothing marks.

    A registered name is looked for in the sources of ``clipviz.sources`` (caches first, then
    OpenAI's URL, then the Hugging Face Hub mirrors) and must match its architecture. A file in
    transformers' CLIPModel layout is converted to OpenAI's. ``model`` is ``clipviz.model.CLIP``
    in eval mode; ``preprocess`` is ``clipviz.preprocess.Preprocess(model.visual.input_resolution)``.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ClipvizError(f"load takes a registered name (see clipviz.available_models()), a checkpoint path, "
                           f"or 'openclip:...' / 'hf:...'; got {type(name_or_path).__name__} {name_or_path!r:.60}")
    if jit:
        raise ClipvizError("jit=True is not supported: clipviz always builds its own model from "
                           "the checkpoint's weights (so hooks can record attention); drop jit=True")
    if activation is not None:
        check_activation(activation)
    import torch

    device = resolve_device(device)  # one that exists here, or ClipvizError naming those that do
    if isinstance(name_or_path, str) and name_or_path.startswith(RANDOM):
        return _random(name_or_path[len(RANDOM):], device, activation)
    if isinstance(name_or_path, str) and name_or_path.startswith(ADAPTER_PREFIXES):
        if activation is not None:
            raise ClipvizError("activation= applies to checkpoints clipviz builds itself; "
                               f"{name_or_path} comes with its own model code: drop it")
        return _load_with_adapter(name_or_path, device)

    weights_file, state_dict, activation = _weights(name_or_path, download_root, activation)
    from .model import build_model
    from .preprocess import Preprocess

    try:
        model = build_model(state_dict, activation=activation)
    except ClipvizError as error:  # say which file
        raise ClipvizError(f"{weights_file}: {error}") from None
    model = model.to(device).eval()
    if device.type == "cpu":
        model.float()  # fp16 matmuls are slow or missing on CPU
    if Path(str(name_or_path)).name.startswith("synth-"):  # explain/classify say so on a photo (clipviz.pixels)
        model.synthetic_only = Path(str(name_or_path)).stem
    return model, Preprocess(model.visual.input_resolution)


def _random(architecture, device, activation):
    """``random:ARCH``: an official architecture with random weights (seed 0, the same on every
    call; clipviz.model.random_model) and its preprocess — pipeline checks without any download."""
    from .model import random_model
    from .preprocess import Preprocess

    model = random_model(architecture, seed=0, **({"activation": activation} if activation else {}))
    return model.to(device).eval(), Preprocess(model.visual.input_resolution)


def _weights(name_or_path, download_root, activation):
    """``(file, OpenAI-format state dict, activation)`` for a registered name or a file path."""
    entry = _MODELS.get(name_or_path) if isinstance(name_or_path, str) else None
    if entry is not None:
        from .sources import fetch_weights

        fetched = fetch_weights(entry, download_root)
        return fetched.path, fetched.state_dict, activation or entry.activation
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ClipvizError(_unknown_model_message(name_or_path))
    state_dict = read_checkpoint(path)
    from .convert import from_transformers, is_transformers_layout

    if is_transformers_layout(state_dict):
        state_dict = from_transformers(state_dict)
    if activation is None:
        activation = detect_activation(path)
    if activation is None:
        import warnings

        warnings.warn(f"{path} does not say which MLP activation it was trained with; assuming "
                      "QuickGELU (OpenAI). If it is an open_clip model trained with GELU (LAION, "
                      "DataComp, ...), pass activation='gelu' (CLI: --activation gelu), or its "
                      "maps will be wrong", stacklevel=3)
        activation = "quick_gelu"
    return path, state_dict, activation


def fetch(name: str, download_root: str | os.PathLike | None = None, progress: bool = True):
    """Put a registered model's checked weights into clipviz's cache without building it
    (``clipviz download``); a file found in openai/clip's or the Hugging Face cache is copied
    there, so the cache folder alone serves offline machines.

    Returns the ``clipviz.sources.Fetched`` record: ``path`` of the file in the cache and the
    ``source`` it came from. Raises ClipvizError as ``load`` does.
    """
    from .sources import fetch_weights

    return fetch_weights(model_info(name), download_root, progress=progress, keep=True)


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
