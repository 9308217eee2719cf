"""∂S/∂A of the image encoder's last block in closed form, for every prompt at once.

A CLS-pooled ViT reads its image embedding off the CLS token of the last block's output, so in the
last block only the CLS *row* of the attention matters. For a pre-norm block

    h   = ln_1(x)                 x [N, D] the block input, v = h W_vᵀ + b_v  (heads side by side)
    o_h = Σ_j A_h[CLS, j] v_{h,j}  [D/H] per head h: the CLS output of the attention, before out_proj
    m   = x_CLS + ls_1(out_proj(o))                        (ls = layer scale; identity in CLIP)
    y   = m + ls_2(mlp(ln_2(m)))                           the CLS token leaving the block
    S_t = Σ_p W[t, p] · logit_scale · cos(head(y), text_p)  head = ln_post, then proj

A enters S through o only, and o is linear in A, so (Chefer, Gur & Wolf 2021, eq. 5 needs
∇A = ∂S/∂A):

    ∂S_t/∂A_h[CLS, j] = ⟨∂S_t/∂o_h, v_{h,j}⟩        ∂S_t/∂A_h[i, j] = 0 for every row i ≠ CLS

∂S_t/∂o [D] is the gradient of a function of one token: the tail above is run on the CLS output
alone, repeated once per target ([B, T, D]), and one backward gives every target's ∂S_t/∂o. No
backward runs through the block's other N − 1 tokens, its MLP on them, or its q/k projections.
The result is the same number the general autograd path computes (up to float rounding), for any
gradient reducer of ``clipviz.methods`` that reads ∂S/∂A of the last block only (relevance and
Grad-ECLIP with ``start_layer=-1``).

Supported blocks: OpenAI/clipviz and open_clip ``ResidualAttentionBlock`` (``nn.MultiheadAttention``,
optional ``ls_1``/``ls_2``) and Hugging Face ``CLIPEncoderLayer``. ``block_parts`` returns None for
anything else, and ``clipviz.pipeline`` then takes the general path.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .adapters import scores_from_embeddings


@dataclass
class BlockParts:
    """The functions of a pre-norm block that the closed form runs (each maps [..., D] → [..., D])."""

    ln_1: object
    values: object      # ln_1(x) → v [..., D]
    out_proj: object
    ls_1: object
    ln_2: object
    mlp: object
    ls_2: object
    heads: int


def block_parts(block):
    """The pieces of a recognised pre-norm attention block, or None (then use the general path)."""
    attention = getattr(block, "attn", None)
    if type(block).__name__ == "ResidualAttentionBlock" and isinstance(attention, nn.MultiheadAttention):
        if any(not isinstance(getattr(block, name, nn.Identity()), nn.Identity) for name in ("ln_attn", "ln_1_kv")):
            return None  # open_clip's variants with extra norms: not the formula above
        identity = nn.Identity()
        return BlockParts(ln_1=block.ln_1, values=lambda h: _mha_values(attention, h), out_proj=attention.out_proj,
                          ls_1=getattr(block, "ls_1", identity), ln_2=block.ln_2, mlp=block.mlp,
                          ls_2=getattr(block, "ls_2", identity), heads=attention.num_heads)
    attention = getattr(block, "self_attn", None)
    if type(block).__name__ == "CLIPEncoderLayer" and attention is not None:
        identity = nn.Identity()
        return BlockParts(ln_1=block.layer_norm1, values=attention.v_proj, out_proj=attention.out_proj,
                          ls_1=identity, ln_2=block.layer_norm2, mlp=block.mlp, ls_2=identity,
                          heads=attention.num_heads)
    return None


def _mha_values(attention, h):
    d = attention.embed_dim
    weight = attention.in_proj_weight[2 * d:] if attention.in_proj_weight is not None else attention.v_proj_weight
    bias = None if attention.in_proj_bias is None else attention.in_proj_bias[2 * d:]
    return nn.functional.linear(h, weight, bias)


def cls_row_gradients(parts, image_head, tokens, probs, text_emb, logit_scale, target_weights):
    """Every target's ∂S_t/∂A[CLS, :] of the last block, in one small backward.

    parts:          block_parts(last block)
    image_head:     the tower's head on a token (adapter.image_head) [..., D] → [..., E]
    tokens:         x [B, N, D], the last block's input (batch-first, the model's dtype)
    probs:          A [B, H, N, N], its attention probabilities
    text_emb:       [P, E] (detached); logit_scale: a scalar tensor; target_weights [T, P]
    Returns [B, T, H, N]: row CLS of ∂S_t/∂A per image, target and head (fp32).
    """
    batch, n, width = tokens.shape
    targets, heads = target_weights.shape[0], parts.heads
    with torch.no_grad():
        values = parts.values(parts.ln_1(tokens)).view(batch, n, heads, width // heads)  # [B, N, H, d]
        cls_out = torch.einsum("bhj,bjhc->bhc", probs[:, :, 0, :].to(values.dtype), values).reshape(batch, width)
    with torch.enable_grad():
        o = cls_out[:, None, :].expand(batch, targets, width).clone().requires_grad_(True)  # [B, T, D]
        middle = tokens[:, :1, :] + parts.ls_1(parts.out_proj(o))
        leaving = middle + parts.ls_2(parts.mlp(parts.ln_2(middle)))
        embedding = image_head(leaving).reshape(batch * targets, -1)
        _, logits = scores_from_embeddings(embedding, text_emb, logit_scale)  # [B·T, P]
        scores = (logits.view(batch, targets, -1) * target_weights.to(logits)[None]).sum()  # row t of copy t
        grad_o, = torch.autograd.grad(scores, o)
    grad_o = grad_o.float().view(batch, targets, heads, width // heads)
    return torch.einsum("bthc,bjhc->bthj", grad_o, values.float())


def full_gradient(cls_rows, n):
    """CLS rows [B, H, N] → the whole ∂S/∂A [B, H, N, N] (zero off the CLS row), for a reducer."""
    grad = cls_rows.new_zeros(*cls_rows.shape[:2], n, n)
    grad[:, :, 0, :] = cls_rows
    return grad
