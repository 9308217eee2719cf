"""Grad-ECLIP (Zhao et al. 2024, "Gradient-based Visual Explanation for Transformer-based CLIP",
ICML 2024): channel weights from the gradient at the last attention output, spatial weights from
a loosened (cosine) query–key attention, applied to the value vectors.

In block l, the CLS token's attention output (heads side by side, before out_proj) is
o = Σ_i A[CLS, i] v_i. Linearising the score around it (the paper's §3):

    w_c  = ∂S / ∂o_c                               channel importance  [D]
    λ_i  = minmax_i cos(q_CLS, k_i)                 spatial importance: the "loosened" attention,
                                                    cosine of full-width q and k, min-max over patches
    H_i  = ReLU(Σ_c w_c · λ_i · v_i[c])             the heat map over patches i

Σ_c w_c v_i[c] needs no extra recording: since o_h = Σ_i A_h[CLS, i] v_{h,i} for each head h,
∂S/∂A_h[CLS, i] = Σ_{c ∈ h} w_c v_i[c], so Σ_c w_c v_i[c] = Σ_h ∂S/∂A_h[CLS, i] — the head sum of the
CLS row of the attention gradient the recorder already takes. q and k are recorded (Needs.qk).

``start_layer`` (default -1, the last block, as in the paper) adds the maps of blocks
start_layer … L, each through its own ReLU, as the authors' notebook does for its last-n-layers
variant. Two deliberate differences from that notebook: it recomputes the last block with a
single attention head, which changes the model's output; clipviz explains the model as it runs,
with its own heads. And S is logit_scale · cosine (the notebook differentiates the cosine), which
scales every map by the same positive constant.
"""

import torch

from .base import MethodOutput, Needs, blocks_from, target_rows

FAMILIES = ("vit",)


def cls_gradient(probs, grad):
    """Σ_h ∂S/∂A_h[CLS, :] = Σ_c w_c v_i[c] for every token i: [B, H, N, N] → [B, N]."""
    return grad[:, :, 0, :].sum(dim=1)




def _cls_gradient_on_row(row_probs, row_grad, rows):
    """cls_gradient for a gradient that is zero outside row ``rows[s]`` (clipviz.last_block):
    row_grad [S, H, N] → [S, N]; zero for a sequence whose row is not CLS."""
    return row_grad.sum(dim=1) * (rows == 0).view(-1, 1)


cls_gradient.on_row = _cls_gradient_on_row


def loosened_attention(queries, keys):
    """λ: min-max over patches of cos(q_CLS, k_i). queries, keys [B, N, D] → [B, N-1]."""
    cosine = torch.nn.functional.cosine_similarity(queries[:, :1], keys[:, 1:], dim=-1)
    low = cosine.amin(dim=-1, keepdim=True)
    span = cosine.amax(dim=-1, keepdim=True) - low
    return (cosine - low) / span.clamp(min=torch.finfo(cosine.dtype).tiny)


def needs(model, start_layer=-1):
    return Needs(layers=blocks_from(start_layer, model.num_layers), gradient=cls_gradient, qk=True)


def compute(records, start_layer=-1):
    """records.grads {l: {t: [B, N]}}, queries/keys {l: [B, N, D]} → token_maps [B, T, g, g]."""
    layers = blocks_from(start_layer, records.num_layers)
    g = records.patch_grid
    per_layer = []
    for layer in layers:
        spatial = loosened_attention(records.queries[layer], records.keys[layer])  # [B, g*g]
        channel = target_rows(records, layer)  # [B, T, g*g]
        per_layer.append(torch.relu(channel * spatial[:, None, :]))  # [B, T, g*g]
    per_layer = torch.stack(per_layer, dim=2).reshape(records.batch, records.targets, len(layers), g, g)
    return MethodOutput(token_maps=per_layer.sum(dim=2), layer_maps=per_layer, layer_indices=layers)
