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
    "gradcam": ("gradcam", "Grad-CAM on the tokens entering the last block", True),
}


def available_methods():
    """Names of the registered methods."""
    return list(_REGISTRY)


def describe(name):
    return _REGISTRY[name][1]


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
