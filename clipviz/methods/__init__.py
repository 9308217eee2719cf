"""Explanation methods, by name. Adding a method is one file in this folder plus one registry line.

A method is a module with

    FAMILIES = ("vit",)                          the model families it explains (adapter.family)
    needs(model, <options>) → Needs              the records it asks for; model: the adapter
                                                 (num_layers, text_layers, patch_grid)
    compute(records, <options>) → MethodOutput   the maps, from the records alone

``needs`` and ``compute`` take the same keyword options with the same defaults, written out in
their signatures (no ``**kwargs``, so a misspelt option is an error, not silently ignored). They
are read here, once, into ``Method.options``; every caller checks options through
``Method.check_options``. Methods never look at the model family: the adapter records what
``needs`` asks for on any family (clipviz.adapters), and ``FAMILIES`` says where that makes sense.
"""

import inspect
from dataclasses import dataclass
from functools import lru_cache
from importlib import import_module

from ..errors import ClipvizError

# name -> (module, one-line description, prompt-specific?)
_REGISTRY = {
    "relevance": ("relevance", "gradient-weighted attention relevance (Chefer et al. 2021)", True),
    "rollout": ("rollout", "attention rollout (Abnar & Zuidema 2020)", False),
    "attention": ("attention", "last-block CLS attention", False),
    "gradcam": ("gradcam", "Grad-CAM on the patch features entering the last block (ResNet: of the last stage)", True),
    "legrad": ("legrad", "layer-wise gradient of each block's own prediction w.r.t. its attention (Bousselham et al. 2024)", True),
    "gradeclip": ("gradeclip", "Grad-ECLIP: output-gradient channel weights x loosened attention on values (Zhao et al. 2024)", True),
    "attention_pool": ("attention_pool", "ResNet CLIP: the attention pool's mean-token query over positions", False),
}


def available_methods():
    """Names of the registered methods."""
    return list(_REGISTRY)


def is_prompt_specific(name):
    """True when the method's map depends on the prompt (so a contrast prompt can change it)."""
    return get_method(name).prompt_specific


@lru_cache(maxsize=None)
def get_method(name):
    """The Method registered as ``name`` (ClipvizError listing the names for an unknown one)."""
    if name not in _REGISTRY:
        raise ClipvizError(f"unknown method {name!r}; choose one of: {', '.join(_REGISTRY)}")
    module_name, description, prompt_specific = _REGISTRY[name]
    module = import_module(f".{module_name}", __name__)
    return Method(name, module, description, prompt_specific, tuple(module.FAMILIES), _options(module))


@dataclass(frozen=True)
class Method:
    """A registered method: its module, what it is, the families it explains, its options {name: default}."""

    name: str
    module: object
    description: str
    prompt_specific: bool
    families: tuple
    options: dict

    def check_options(self, options):
        """ClipvizError naming any option this method does not take, and the ones it does."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            accepted = ", ".join(f"{k}={v!r}" for k, v in self.options.items()) or "none"
            raise ClipvizError(f"method {self.name!r} has no option {', '.join(unknown)}; its options are: {accepted}")

    def check_family(self, model):
        """ClipvizError if this method does not explain ``model``'s family (an adapter)."""
        if model.family not in self.families:
            others = [n for n in _REGISTRY if model.family in get_method(n).families]
            raise ClipvizError(f"method {self.name!r} explains {' and '.join(self.families)} models; this is a "
                               f"{model.family} CLIP: use method={' or '.join(repr(n) for n in others)}")

    def needs(self, model, options):
        return self.module.needs(model, **options)

    def compute(self, records, options):
        return self.module.compute(records, **options)


def _options(module):
    """{option: default} of a method module, read from ``compute``; ``needs`` must take the same."""
    def keywords(function):
        parameters = list(inspect.signature(function).parameters.values())[1:]  # after model / records
        return {p.name: p.default for p in parameters}
    options = keywords(module.compute)
    if keywords(module.needs) != options:
        raise TypeError(f"{module.__name__}: needs() and compute() must take the same options with the same defaults")
    return options


# The method used when none is named, per image-encoder family: relevance needs attention maps
# inside the encoder, which only ViTs have; on ResNets Grad-CAM on the last stage works.
DEFAULT_METHODS = {"vit": "relevance", "resnet": "gradcam"}


def default_method(model):
    """``DEFAULT_METHODS`` entry for the family of ``model``'s image encoder (clipviz.adapters)."""
    from ..adapters import adapt

    return DEFAULT_METHODS[adapt(model).family]
