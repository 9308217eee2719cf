"""Grad-CAM (Selvaraju et al. 2017, eq. 1–2) on the patch tokens entering the last block.

    α_c = (1/K) Σ_k ∂S/∂X[k, c]            channel weights: token mean of the gradient (K patches)
    map_k = ReLU(Σ_c α_c · X[k, c])         X = residual stream entering the last block, patches only
"""

import torch

from .base import MethodOutput, Needs, resolve_layer


def needs(num_layers, layer=-1, **_):
    return Needs(layers=(resolve_layer(layer, num_layers, "layer"),), gradient=_no_attention_gradient, tokens=True)


def _no_attention_gradient(probs, grad):
    return None  # Grad-CAM reads token gradients only


def compute(records, layer=-1, **_):
    """records.tokens[l] [B, N, D], token_grads[l][t] [B, N, D] → token_maps [B, T, g, g]."""
    index = resolve_layer(layer, records.num_layers, "layer")
    patches = records.tokens[index][:, 1:, :]  # [B, g*g, D]
    g = records.patch_grid
    maps = []
    for target in range(records.targets):
        weights = records.token_grads[index][target][:, 1:, :].mean(dim=1, keepdim=True)  # [B, 1, D]
        cam = torch.relu((patches * weights).sum(dim=-1))  # [B, g*g]
        maps.append(cam.reshape(-1, g, g))
    return MethodOutput(token_maps=torch.stack(maps, dim=1))
