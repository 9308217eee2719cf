"""clipviz: see which image regions drove a CLIP model's answer to a text query.

    import clipviz
    model, preprocess = clipviz.load("ViT-B/32")
    exp = clipviz.explain(model, "img.jpg", ["woman dribbling", "a runner"])
    exp.save("out.png")

Public names are imported lazily so that ``import clipviz`` (and the CLI) stays fast:
torch, matplotlib and the model code load only when first used.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ClipvizError": "errors",
    "CLIP": "model",
    "build_model": "model",
    "tokenize": "tokenizer",
    "token_strings": "tokenizer",
    "decode": "tokenizer",
    "load_image": "preprocess",
    "Preprocess": "preprocess",
    "CropBox": "preprocess",
    "preprocess_image": "preprocess",
    "map_to_photo": "maps",
    "available_models": "hub",
    "load": "hub",
    "classify": "zeroshot",
    "random_model": "model",
    "register_model": "hub",
    "AttentionRecorder": "hooks",
    "explain": "explanation",
    "explain_video": "video",
    "Explanation": "explanation",
    "available_methods": "methods",
    "overlay": "render",
    "explore": "explorer",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clipviz' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # cache: the next lookup skips __getattr__
    return value


def __dir__():
    return __all__
