"""The device a model is loaded on: checked against this machine before any weight moves.

    device = resolve_device("cuda:1")   # torch.device, or ClipvizError saying what exists here

A device this machine lacks is a user's mistake, not a bug: ``cuda`` without a GPU, ``cuda:7`` on
a two-GPU machine, ``cpu:7`` (torch accepts any CPU index but has one CPU device), ``mps`` off a
Mac, ``xpu`` in a build without it, ``meta`` (no weights at all). Each gets one ClipvizError
naming the devices that do exist.
"""

from .errors import ClipvizError


def available_devices():
    """Devices torch can use here, as strings: ["cpu", "cuda:0", ...] (plus "mps" on Apple GPUs)."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def resolve_device(device):
    """``device`` (None, a name such as "cuda:1", or a torch.device) → torch.device usable here.

    None picks "cuda" when a GPU is visible, else "cpu". Raises ClipvizError for a name torch
    does not know, a device type this machine or this torch build lacks, a GPU index beyond the
    GPUs present, a CPU index other than 0, and "meta" (a device without storage: nothing could
    be explained on it).
    """
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise ClipvizError(f"device must be a name such as 'cpu' or 'cuda:0', got {type(device).__name__} "
                           f"{device!r}")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ClipvizError(f"{device!r} is not a torch device; use one of: {', '.join(available_devices())}") from None
    here = available_devices()
    if chosen.type == "cpu" and chosen.index not in (None, 0):  # torch takes cpu:7, but there is one CPU device
        raise ClipvizError(f"device {str(chosen)!r} does not exist: torch has one CPU device (cpu, or cpu:0); "
                           f"use one of: {', '.join(here)}")
    if chosen.type == "cpu" or str(chosen) in here or (chosen.type in ("cuda", "mps") and chosen.index is None
                                                       and any(d.startswith(chosen.type) for d in here)):
        return chosen
    if chosen.type == "cuda" and torch.cuda.is_available():
        count = torch.cuda.device_count()
        raise ClipvizError(f"device {str(chosen)!r} does not exist: this machine has {count} CUDA GPU"
                           f"{'s' if count != 1 else ''} (cuda:0 … cuda:{count - 1})")
    if chosen.type not in ("cuda", "mps", "meta") and _works(chosen):  # xpu, hpu ... where the build has them
        return chosen
    if chosen.type == "meta":
        raise ClipvizError("device 'meta' holds no weights, so nothing can be explained on it; use one of: "
                           + ", ".join(here))
    if chosen.type == "cuda":
        reason = "torch sees no CUDA GPU here"
    elif chosen.type == "mps":
        reason = "mps is Apple's GPU and is not available here"
    else:
        reason = f"this machine or this torch build has no {chosen.type} device"
    raise ClipvizError(f"device {str(chosen)!r} was asked for but {reason}; use one of: {', '.join(here)}")


def _works(device):
    import torch
    try:
        torch.empty(1, device=device)
        return True
    except Exception:  # torch raises RuntimeError, AssertionError ... for a device it cannot use
        return False
