"""Which MLP activation a checkpoint was trained with: QuickGELU or GELU.

No state dict records it, and both run without error, so a wrong choice silently gives other
embeddings and other maps. OpenAI's nine checkpoints use QuickGELU (x·σ(1.702x)); most open_clip
models (LAION, DataComp, ...) use the exact GELU, except those whose open_clip name ends in
``-quickgelu`` (and MetaCLIP, DFN ones listed with ``quick_gelu=True``).

    activation = detect_activation("ckpt/open_clip_model.safetensors")  # "gelu", "quick_gelu" or None

Detection reads, in order: a TorchScript archive (only OpenAI published CLIP as TorchScript:
QuickGELU); ``open_clip_config.json`` beside the file (``model_cfg.quick_gelu``, default False as
in open_clip); transformers' ``config.json`` beside it (``vision_config.hidden_act``, default
``quick_gelu`` as in transformers' CLIPVisionConfig); ``quickgelu`` in the file name. Anything
else returns None: the caller must choose, and clipviz then says it assumed QuickGELU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import ClipvizError

ACTIVATION_NAMES = ("quick_gelu", "gelu")


def check_activation(activation):
    """``activation`` when it is "quick_gelu" or "gelu", else ClipvizError saying which to pick."""
    if activation not in ACTIVATION_NAMES:
        raise ClipvizError(f"unknown activation {activation!r}: use 'quick_gelu' (OpenAI checkpoints, "
                           "open_clip '-quickgelu' models) or 'gelu' (other open_clip models: LAION, "
                           "DataComp, ...)")
    return activation


def detect_activation(path: str | os.PathLike) -> str | None:
    """The activation a checkpoint file needs when something records it, else None (see above)."""
    from .checkpoints import _is_torchscript

    path = Path(path).expanduser()
    if _is_torchscript(path):
        return "quick_gelu"
    open_clip_config = _json(path.parent / "open_clip_config.json")
    if isinstance(open_clip_config.get("model_cfg"), dict):
        return "quick_gelu" if open_clip_config["model_cfg"].get("quick_gelu", False) else "gelu"
    transformers_config = _json(path.parent / "config.json")
    vision = transformers_config.get("vision_config")
    if transformers_config.get("model_type") == "clip" and isinstance(vision, dict):
        hidden_act = vision.get("hidden_act", "quick_gelu")
        return hidden_act if hidden_act in ACTIVATION_NAMES else None
    if "quickgelu" in path.name.lower().replace("_", "").replace("-", ""):
        return "quick_gelu"
    return None


def _json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}
