"""ResNet CLIP's own attention: the attention pool's query (the spatial mean token) over positions.

A ResNet CLIP's ``attnpool`` turns its last feature map F [B, C, h, w] into the embedding by one
attention step (see clipviz.adapters.resnet, which records it, for the equations):

    map = mean_h A_h[mean token, positions]       [h, w];  head maps: A_h[mean token, positions]

Prompt-agnostic: every target gets the same map.
"""

from .base import MethodOutput, Needs, per_target

FAMILIES = ("resnet",)


def needs(model):
    return Needs(pool=True)


def compute(records):
    """records.pool_probs [B, H, 1, 1 + hw] → token_maps [B, T, h, w], head_maps [B, T, H, h, w]."""
    probs = records.pool_probs
    heads = probs[:, :, 0, 1:].reshape(probs.shape[0], probs.shape[1], records.patch_grid, records.patch_grid)
    return MethodOutput(token_maps=per_target(heads.mean(dim=1), records.targets),
                        head_maps=per_target(heads, records.targets))
