"""Test-only stand-in for the few torchvision names open_clip imports at module level.

torchvision has no CPU build beside the CPU-only torch on these machines, and open_clip imports
it (transforms, ``ops.misc.FrozenBatchNorm2d``) even though building and running a model never
calls it. ``install()`` registers placeholder modules under ``sys.modules`` so that the real
open_clip code imports; every placeholder class raises if it is ever used, so a test can never
silently depend on it. Used by tests only — the library itself never touches torchvision.
"""

import enum
import importlib.machinery
import importlib.util
import sys
import types


class _Unavailable:
    """A torchvision class that must not be used in tests."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{type(self).__name__} comes from the test shim of torchvision and cannot be used")


class InterpolationMode(enum.Enum):
    # open_clip reads these as default arguments when its transform module is imported
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


_TRANSFORMS = ("Normalize", "Compose", "RandomResizedCrop", "ToTensor", "Resize", "CenterCrop",
               "ColorJitter", "Grayscale")


def _unavailable_function(name):
    def function(*args, **kwargs):
        raise RuntimeError(f"{name} comes from the test shim of torchvision and cannot be used")
    return function


def _module(name, placeholders=None, **attributes):
    """A placeholder module; ``placeholders`` = "classes" or "functions" answers any other public
    name with a class / function that raises when used (timm imports many at module level)."""
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    if placeholders:
        def attribute(key):
            if key.startswith("_"):
                raise AttributeError(key)
            made = type(key, (_Unavailable,), {}) if placeholders == "classes" else _unavailable_function(key)
            setattr(module, key, made)
            return made
        module.__getattr__ = attribute
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec() must not fail on it
    module.__clipviz_test_shim__ = True
    return module


def install():
    """Register the placeholder torchvision modules unless a real torchvision imports.

    Returns True if the shim is in use."""
    if "torchvision" in sys.modules:
        return getattr(sys.modules["torchvision"], "__clipviz_test_shim__", False)
    if importlib.util.find_spec("torchvision") is not None:
        try:
            import torchvision  # noqa: F401  (a working install wins)
            return False
        except Exception:
            for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
                del sys.modules[name]
    classes = {name: type(name, (_Unavailable,), {}) for name in _TRANSFORMS}
    # timm (open_clip's SigLIP towers) imports many more transforms, functions and datasets
    functional = _module("torchvision.transforms.functional", "functions", InterpolationMode=InterpolationMode)
    transforms = _module("torchvision.transforms", "classes", InterpolationMode=InterpolationMode,
                         functional=functional, **classes)
    misc = _module("torchvision.ops.misc", FrozenBatchNorm2d=type("FrozenBatchNorm2d", (_Unavailable,), {}))
    ops = _module("torchvision.ops", misc=misc)
    datasets = _module("torchvision.datasets", "classes")
    # no version and no __file__: transformers' availability probe reads that as "not installed"
    root = _module("torchvision", transforms=transforms, ops=ops, datasets=datasets)
    sys.modules.update({"torchvision": root, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional,
                        "torchvision.ops": ops, "torchvision.ops.misc": misc, "torchvision.datasets": datasets})
    return True
