"""Cascading randomisation (Adebayo et al. 2018): how a method's map changes as the image
encoder's blocks are re-drawn, from the last down."""

import copy

from ..progress import bar as progress_bar
from ..errors import ClipvizError
from .common import explain_tokens
from .report import stats


def cascading_randomisation(model, modules, items, seed, progress=False):
    """Spearman of each method's map with the original as blocks L-1, L-2, …, 0 are re-drawn.

    items: [{pixels [3,S,S], prompts [query, absent], maps {method: [g,g]}}]. Block l's tensors are
    each replaced by normal noise with the tensor's own mean and std (generator seed [seed, l]),
    cumulatively, on a copy of the model. Returns ({method: {blocks, spearman [L], n}}, notes).
    """
    import torch
    from ..adapters import adapt
    from ..hooks import find_blocks
    from ..metrics import spearman

    if not items or not modules:
        return {}, []
    randomised = copy.deepcopy(model)
    adapter = adapt(randomised)
    try:
        blocks = find_blocks(adapter.image_encoder)
    except ClipvizError:
        return {}, ["cascading randomisation skipped: the image encoder has no transformer blocks"]
    order = list(range(len(blocks) - 1, -1, -1))
    result = {m: {"blocks": order, "spearman": [], "ci95": [], "n": []} for m in modules}
    with progress_bar(len(order), "randomised blocks", progress) as bar:
        for layer in order:
            _randomise(blocks[layer], torch.Generator().manual_seed(seed * 100_003 + layer))
            for method, module in modules.items():
                rhos = [spearman(item["maps"][method],
                                 explain_tokens(adapter, module, item["pixels"], item["prompts"][:1])[0][0])
                        for item in items]
                summary = stats(rhos)
                result[method]["spearman"].append(summary["mean"])
                result[method]["ci95"].append(summary["ci95"])
                result[method]["n"].append(summary["n"])
            bar.update(1)
    return result, []


def _randomise(block, generator):
    """Re-draw every parameter of ``block`` from a normal with that tensor's own mean and std."""
    import torch

    with torch.no_grad():
        for parameter in block.parameters():
            values = parameter.double()
            std = float(values.std()) if parameter.numel() > 1 else 0.0
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.copy_((float(values.mean()) + std * noise).to(parameter.dtype))
