"""Raw attention: the last block's CLS→patch attention probabilities.

    map = mean_h A_L[h, CLS, patches]          (head maps: A_L[h, CLS, patches])

The simplest baseline; prompt-agnostic. On an attention-pooled tower (SigLIP) the last layer is
the pooling head and the map is its probe's attention (clipviz.adapters.probe); its other blocks
have no CLS row, so their maps are zero (the explorer's block slider shows them blank).
"""

from .base import MethodOutput, Needs, cls_to_patches, per_target, resolve_layer

FAMILIES = ("vit",)


def needs(model, layer=-1):
    return Needs(layers=(resolve_layer(layer, model.num_layers, "layer"),))


def compute(records, layer=-1):
    """records.probs[layer] [B, H, N, N] → token_maps [B, T, g, g], head_maps [B, T, H, g, g]."""
    probs = records.probs[resolve_layer(layer, records.num_layers, "layer")]
    heads = cls_to_patches(probs, records.patch_grid)  # [B, H, g, g]
    return MethodOutput(token_maps=per_target(heads.mean(dim=1), records.targets),
                        head_maps=per_target(heads, records.targets))
