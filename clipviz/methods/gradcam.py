"""Grad-CAM (Selvaraju et al. 2017, eqs. 1–2), one rule for every family, on patch features F [K, C]
(K = g·g positions, row-major; C channels) and their gradient ∂S/∂F:

    α_c   = (1/K) Σ_k ∂S/∂F[k, c]           channel weights: position mean of the gradient
    map_k = ReLU(Σ_c α_c · F[k, c])

What F is comes from the adapter (Needs.features): for a ViT the patch tokens entering block
``layer`` (the residual stream, CLS left out; default the last block), for a ResNet CLIP the
output of its last stage (``layer4``, before the attention pool) — the layer Grad-CAM uses for
CNNs. A ResNet adapter offers that one stage (num_layers = 1), so ``layer`` is -1 or 0 there.
"""

import torch

from .base import MethodOutput, Needs, resolve_layer

FAMILIES = ("vit", "resnet")


def needs(model, layer=-1):
    return Needs(layers=(resolve_layer(layer, model.num_layers, "layer"),), features=True)


def compute(records, layer=-1):
    """records.features [B, K, C], feature_grads {t: [B, K, C]} → token_maps [B, T, g, g]."""
    features, g = records.features, records.patch_grid
    maps = []
    for target in range(records.targets):
        weights = records.feature_grads[target].mean(dim=1, keepdim=True)  # α [B, 1, C]
        maps.append(torch.relu((features * weights).sum(dim=-1)).reshape(-1, g, g))
    return MethodOutput(token_maps=torch.stack(maps, dim=1))
