"""LeGrad (Bousselham et al. 2024, "LeGrad: An Explainability Method for Vision Transformers via
Feature Formation Sensitivity", arXiv:2404.03214): the gradient of a layer's own prediction
with respect to that layer's attention map is the explanation signal, averaged over layers.

For every block l ≥ start_layer, with Z^l [B, N, D] its output tokens and A^l [B, H, N, N] its
attention probabilities:

    e^l   = proj(ln_post(mean_i Z^l_i))          the embedding the model's head reads off block l
    s^l_t = cos(e^l, text_t)                     (a contrast A − B: cos(e^l, text_A) − cos(e^l, text_B))
    ∇A^l  = ∂s^l_t / ∂A^l                         [B, H, N, N]
    Ê^l   = (1/(H·N)) Σ_h Σ_i (∇A^l_{h,i,·})⁺      §3, the layer map: positive part of the gradient,
                                                  averaged over heads and over query tokens
    Ē     = (1/L') Σ_l Ê^l                        §3, the merged map over the L' blocks used
    map   = Ē[patches]                            (the paper then min-max normalises, as explain() does)

Choices follow the authors' reference code for CLIP (github.com/WalBouss/LeGrad,
``compute_legrad_clip``): the intermediate tokens are pooled by their mean over all N tokens
before ln_post and proj, s^l is a cosine similarity (no logit scale), and by default only the
last two blocks are used (their ``layer_index=-2``); ``start_layer=0`` uses every block, as in
the paper's equations. Each Ê^l comes from its own backward pass, which stops at A^l.

Attention-pooled towers (SigLIP; ``records.pooling == "probe"``, clipviz.adapters.probe) follow
the authors' ``compute_legrad_siglip``: blocks l are the encoder's (the pool is not one of them:
``start_layer=-2`` = its last two blocks), e^l = pool(Z^l) is the model's own attention-pooling
head run on the raw block output (no final LayerNorm, as theirs), and ∇A^l is the gradient of
s^l_t with respect to *that pool's* attention A_pool(Z^l) [B, H, 1, N]; Ê^l is the head mean of
its positive part on the probe's row (here over the probe layout's 1 + N rows, a constant factor
1/(1 + N) that normalisation removes). Their default ``apply_correction=True`` (zero the patches
where the map of the prompt "a photo of a" exceeds 0.8) is not applied: clipviz explains the prompt
as given. Their sum over layers and clipviz's mean differ by the constant L'.
"""

import torch

from .base import MethodOutput, Needs, blocks_from, target_rows

FAMILIES = ("vit",)


def token_mean_readout(block_output, head):
    """The authors' CLIP readout: head(mean over all tokens). [B, N, D] → [B, E]."""
    return head(block_output.mean(dim=1))


def positive_mean(probs, grad):
    """Ê^l before the patch selection: mean over heads and query rows of (∇A)⁺. [B, H, N, N] → [B, N]."""
    return grad.clamp(min=0).mean(dim=(1, 2))


def _encoder_blocks(num_layers, pooling):
    """Blocks whose outputs LeGrad reads: all of them, or all but an attention pool (the last)."""
    return num_layers - 1 if pooling == "probe" else num_layers


def needs(model, start_layer=-2):
    return Needs(layers=blocks_from(start_layer, _encoder_blocks(model.num_layers, model.pooling)),
                 gradient=positive_mean, readout=token_mean_readout)


def compute(records, start_layer=-2):
    """records.grads {l: {t: Ê^l [B, N]}} → token_maps [B, T, g, g] = Ē; layer_maps = each Ê^l."""
    layers = blocks_from(start_layer, _encoder_blocks(records.num_layers, records.pooling))
    g = records.patch_grid
    per_layer = torch.stack([target_rows(records, l) for l in layers], dim=2)  # [B, T, L', g*g]
    per_layer = per_layer.reshape(*per_layer.shape[:3], g, g)
    return MethodOutput(token_maps=per_layer.mean(dim=2), layer_maps=per_layer, layer_indices=layers)
