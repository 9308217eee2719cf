"""Attention rollout (Abnar & Zuidema 2020, eq. in §3), with jacobgil's head-fusion options.

    Â_l = rownorm(0.5 · fuse_h(A_l) + 0.5 · I)          fuse = mean | max | min over heads
    J   = Â_L · Â_{L-1} ⋯ Â_start                        (start_layer = first block used)
    map = J[CLS, patches]

``discard_ratio`` zeroes that fraction of the smallest fused attention entries of each layer
before adding I; entries in the CLS row and column are never discarded (discarding them can
disconnect the CLS token and produce an empty map). Rows of Â_l sum to 1, so rows of J do too.
Prompt-agnostic by definition: every target gets the same map.
"""

import torch

from ..errors import ClipvizError
from .base import MethodOutput, Needs, blocks_from, cls_to_patches, per_target

FAMILIES = ("vit",)
HEAD_FUSIONS = ("mean", "max", "min")


def needs(model, start_layer=0, head_fusion="mean", discard_ratio=0.0):
    if head_fusion not in HEAD_FUSIONS:  # checked before the model runs, as in compute
        raise ClipvizError(f"head_fusion={head_fusion!r} is not one of {', '.join(HEAD_FUSIONS)}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ClipvizError(f"discard_ratio={discard_ratio!r} must be in [0, 1)")
    return Needs(layers=blocks_from(start_layer, model.num_layers))


def fuse_heads(probs, head_fusion):
    """[B, H, N, N] → [B, N, N]."""
    if head_fusion == "mean":
        return probs.mean(dim=1)
    if head_fusion == "max":
        return probs.amax(dim=1)
    if head_fusion == "min":
        return probs.amin(dim=1)
    raise ClipvizError(f"head_fusion={head_fusion!r} is not one of {', '.join(HEAD_FUSIONS)}")


def discard_smallest(fused, discard_ratio):
    """Zero the ``discard_ratio`` smallest entries of each [N, N] map, sparing CLS row and column."""
    if not 0.0 <= discard_ratio < 1.0:
        raise ClipvizError(f"discard_ratio={discard_ratio!r} must be in [0, 1)")
    if discard_ratio == 0.0:
        return fused
    batch, n, _ = fused.shape
    patch_block = fused[:, 1:, 1:].reshape(batch, -1)
    count = int(patch_block.shape[-1] * discard_ratio)
    if count == 0:
        return fused
    smallest = patch_block.topk(count, dim=-1, largest=False).indices
    kept = patch_block.scatter(-1, smallest, 0.0).reshape(batch, n - 1, n - 1)
    fused = fused.clone()
    fused[:, 1:, 1:] = kept
    return fused


def augmented(probs, head_fusion="mean", discard_ratio=0.0):
    """Â_l = rownorm(0.5 · fuse(A_l) + 0.5 · I): [B, H, N, N] → [B, N, N]."""
    fused = discard_smallest(fuse_heads(probs, head_fusion), discard_ratio)
    eye = torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)
    a_hat = 0.5 * fused + 0.5 * eye
    return a_hat / a_hat.sum(dim=-1, keepdim=True)


def compute(records, start_layer=0, head_fusion="mean", discard_ratio=0.0):
    """records.probs {l: [B, H, N, N]} → token_maps [B, T, g, g]; layer_maps = CLS row of each Â_l."""
    layers = blocks_from(start_layer, records.num_layers)
    a_hats = [augmented(records.probs[layer], head_fusion, discard_ratio) for layer in layers]
    # only J's CLS row is read: e_CLSᵀ Â_L ⋯ Â_start, a row vector times each matrix (last block
    # first) instead of N×N matrix products
    joint_row = a_hats[-1][:, :1, :]  # [B, 1, N]
    for a_hat in reversed(a_hats[:-1]):
        joint_row = joint_row @ a_hat
    per_layer = [cls_to_patches(a_hat, records.patch_grid) for a_hat in a_hats]
    return MethodOutput(
        token_maps=per_target(cls_to_patches(joint_row, records.patch_grid), records.targets),
        layer_maps=per_target(torch.stack(per_layer, dim=1), records.targets),
        layer_indices=layers)
