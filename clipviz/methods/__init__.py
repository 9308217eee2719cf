"""Explanation methods, by name. Each is a module with ``needs(...)`` and ``compute(records, ...)``.

Adding a method is one file in this folder plus one line in ``_REGISTRY``.
"""

from importlib import import_module

from ..errors import ClipvizError

# name -> (module, one-line description, prompt-specific?)
_REGISTRY = {
    "relevance": ("relevance", "gradient-weighted attention relevance (Chefer et al. 2021)", True),
    "rollout": ("rollout", "attention rollout (Abnar & Zuidema 2020)", False),
    "attention": ("attention", "last-block CLS attention", False),
    "gradcam": ("gradcam", "Grad-CAM on the tokens entering the last block (ResNet: on the last stage)", True),
    "legrad": ("legrad", "layer-wise gradient of each block's own prediction w.r.t. its attention (Bousselham et al. 2024)", True),
    "gradeclip": ("gradeclip", "Grad-ECLIP: output-gradient channel weights x loosened attention on values (Zhao et al. 2024)", True),
    "attention_pool": ("resnet", "ResNet CLIP: the attention pool's mean-token query over positions", False),
}


def available_methods():
    """Names of the registered methods."""
    return list(_REGISTRY)


def is_prompt_specific(name):
    return _REGISTRY[name][2]


def get_method(name):
    """The method module for ``name`` (has ``needs`` and ``compute``)."""
    if name not in _REGISTRY:
        raise ClipvizError(f"unknown method {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return import_module(f".{_REGISTRY[name][0]}", __name__)


def register(name, module_name, description, prompt_specific=True):
    """Register a method module living in this package (used by optional method families)."""
    _REGISTRY[name] = (module_name, description, prompt_specific)


# The method used when none is named, per image-encoder family: relevance needs attention maps
# inside the encoder, which only ViTs have; on ResNets Grad-CAM on the last stage works.
DEFAULT_METHODS = {"vit": "relevance", "resnet": "gradcam"}


def default_method(model):
    """``DEFAULT_METHODS`` entry for the model's image encoder: "resnet" when it has CLIP's
    attention pool (``visual.attnpool``, OpenAI's and open_clip's ModifiedResNet), else "vit"."""
    family = "resnet" if hasattr(getattr(model, "visual", None), "attnpool") else "vit"
    return DEFAULT_METHODS[family]
