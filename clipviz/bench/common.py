"""What both benchmark drivers share: which methods apply, one method's token maps for an
image, deterministic torch, and the model's label."""

import contextlib
import time

from ..errors import ClipvizError

BENCH_SEED = 2


def explain_tokens(adapter, method, pixels, prompts):
    """Token maps of one image for P prompts in one forward pass: pixels [3, S, S] →
    (float64 [P, g, g] raw maps, seconds taken). Text-token relevance is switched off."""
    import torch
    from ..pipeline import run_method

    options = {"text": False} if "text" in method.options else {}
    ids = adapter.tokenize(prompts).to(adapter.device)
    count = len(prompts)
    start = time.perf_counter()
    _, _, _, output = run_method(adapter, pixels.unsqueeze(0).to(adapter.device, adapter.dtype), ids,
                                 torch.eye(count), torch.arange(count), method, options)
    maps = output.token_maps[0].double().cpu().numpy()
    if adapter.device.type == "cuda":
        torch.cuda.synchronize()
    return maps, time.perf_counter() - start


def usable_methods(adapter, methods):
    """{name: Method} of the methods that explain this model's family, and a note for each one
    skipped (e.g. 'attention_pool' on a ViT, 'relevance' on a ResNet)."""
    from ..methods import available_methods, get_method

    names = available_methods() if methods is None else list(methods)
    if not names:
        raise ClipvizError("no method to benchmark: name at least one of " + ", ".join(available_methods()))
    usable, notes = {}, []
    for name in names:
        method = get_method(name)
        try:
            method.check_family(adapter)
        except ClipvizError as error:
            notes.append(f"{name} skipped: {error}")
            continue
        usable[name] = method
    if not usable:
        raise ClipvizError("none of the methods applies to this model: " + "; ".join(notes))
    return usable, notes


@contextlib.contextmanager
def deterministic():
    """Deterministic torch algorithms for the duration of a run (previous setting restored)."""
    import torch

    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def model_label(model):
    return getattr(model, "clipviz_name", None) or type(model).__name__
