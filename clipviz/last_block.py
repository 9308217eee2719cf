"""∂S/∂A of a tower's last block in closed form, for every prompt (or image) at once.

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

The text tower is the same with EOT for CLS: a causal CLIP text transformer reads its embedding
off the EOT token, so in its last block only prompt p's EOT row of A_p matters, and text-token
relevance's ∂S[b, p]/∂A_p[EOT, j] = ⟨∂S[b, p]/∂o_h, v_{h,j}⟩. Here the copies are the images: the
text tail runs on prompt p's EOT output once per image b ([P, B, D]), since S[b, p] reads image b's
embedding, and one backward gives every (image, prompt) pair. Everything before the tail
(``pooled_row``) depends on the prompts alone, so a run of many batches computes it once.

Supported blocks: OpenAI/clipviz and open_clip ``ResidualAttentionBlock`` (``nn.MultiheadAttention``,
optional ``ls_1``/``ls_2``) and Hugging Face ``CLIPEncoderLayer``. ``block_parts`` returns None for
anything else, and ``clipviz.pipeline`` then takes the general path.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .adapters import scores_from_embeddings
from .forms import submodules


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
    # (h = ln_1(x) [S, N, D], rows [S]) → row ``rows[s]`` of the attention probabilities [S, H, N]
    # (fp32), for a block called without a mask; None where the recorder must read them instead
    row_attention: object = None


def block_parts(block, head_modules=(), tower_modules=None):
    """The pieces of a recognised pre-norm attention block, or None (then use the general path).

    The closed form re-implements the block's tail and the tower's head (``head_modules``: the
    modules the adapter's image_head / text_head call), so it also gives None where that would not
    be the model: an attention class other than the stock one, or a hook or a forward patched on
    the instance of any module of the tower (``tower_modules``: clipviz.forms.submodules of the
    encoder holding the block; the block's own modules when None) or of the head. A hook may
    change what its module returns, also on a module around the blocks, whose output the head
    reads: the closed form would skip it or run it on other tensors."""
    if _altered([*(submodules(block) if tower_modules is None else tower_modules), *head_modules]):
        return None
    attention = getattr(block, "attn", None)
    if type(block).__name__ == "ResidualAttentionBlock" and type(attention) is nn.MultiheadAttention:
        if any(not isinstance(getattr(block, name, nn.Identity()), nn.Identity) for name in ("ln_attn", "ln_1_kv")):
            return None  # open_clip's variants with extra norms: not the formula above
        identity = nn.Identity()
        plain = attention._qkv_same_embed_dim and attention.bias_k is None and not attention.add_zero_attn \
            and getattr(block, "attn_mask", None) is None
        return BlockParts(ln_1=block.ln_1, values=lambda h: _mha_values(attention, h), out_proj=attention.out_proj,
                          ls_1=getattr(block, "ls_1", identity), ln_2=block.ln_2, mlp=block.mlp,
                          ls_2=getattr(block, "ls_2", identity), heads=attention.num_heads,
                          row_attention=(lambda h, rows: _mha_row_attention(attention, h, rows)) if plain else None)
    attention = getattr(block, "self_attn", None)
    if type(block).__name__ == "CLIPEncoderLayer" and type(attention).__name__ in _HF_ATTENTION:
        identity = nn.Identity()
        return BlockParts(ln_1=block.layer_norm1, values=attention.v_proj, out_proj=attention.out_proj,
                          ls_1=identity, ln_2=block.layer_norm2, mlp=block.mlp, ls_2=identity,
                          heads=attention.num_heads,
                          row_attention=lambda h, rows: _row_softmax(attention.q_proj(_at_rows(h, rows)),
                                                                     attention.k_proj(h), attention.num_heads,
                                                                     attention.scale))
    return None


_HF_ATTENTION = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2")  # one formula, other kernels


def _altered(modules):
    """True when any of ``modules`` has a forward, pre-forward or backward hook or a forward set on
    the instance (``module.forward = ...``), or a global module hook is registered
    (torch.nn.modules.module.register_module_forward_hook and kin)."""
    from torch.nn.modules import module as base
    if any(getattr(base, name, None) for name in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                                   "_global_backward_hooks", "_global_backward_pre_hooks")):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None)
               or "forward" in vars(m) for m in modules)


def _mha_row_attention(attention, h, rows):
    """softmax(q_row kᵀ / √d) per head of an nn.MultiheadAttention (packed q, k, v projection, no
    mask) for one row per sequence: h [S, N, D] → [S, H, N] fp32."""
    d = attention.embed_dim
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    q = nn.functional.linear(_at_rows(h, rows), weight[:d], None if bias is None else bias[:d])
    k = nn.functional.linear(h, weight[d:2 * d], None if bias is None else bias[d:2 * d])
    return _row_softmax(q, k, attention.num_heads, (d // attention.num_heads) ** -0.5)


def _at_rows(h, rows):
    """h [S, N, D] at token rows[s] of each sequence: [S, D]."""
    return h[torch.arange(h.shape[0], device=h.device), rows]


def _row_softmax(q, k, heads, scale):
    """Attention probabilities of one query per sequence: q [S, D], k [S, N, D] (heads side by side)
    → softmax over N of scale · q_h · k_h per head, [S, H, N] fp32."""
    count, n, width = k.shape
    scores = torch.einsum("shc,snhc->shn", q.float().view(count, heads, width // heads),
                          k.float().view(count, n, heads, width // heads))
    return (scores * scale).softmax(dim=-1)


def _mha_values(attention, h):
    d = attention.embed_dim
    weight = attention.in_proj_weight[2 * d:] if attention.in_proj_weight is not None else attention.v_proj_weight
    bias = None if attention.in_proj_bias is None else attention.in_proj_bias[2 * d:]
    return nn.functional.linear(h, weight, bias)


@dataclass
class PooledRow:
    """What the closed form reads of one call of a block, per sequence (S sequences, N tokens,
    H heads of width d = D / H), all computed without autograd.

    rows:      [S] long, the token each sequence's embedding is read at
    row_probs: [S, H, N], that row of the attention probabilities A
    values:    [S, N, H, d], the attention values v = ln_1(x) W_vᵀ + b_v
    row_in:    [S, 1, D], the residual stream x at the row
    row_out:   [S, 1, D], o = Σ_j A[row, j] v_j, the attention output before out_proj
    """

    rows: torch.Tensor
    row_probs: torch.Tensor
    values: torch.Tensor
    row_in: torch.Tensor
    row_out: torch.Tensor


def pooled_row(parts, tokens, probs, rows):
    """A PooledRow of one block call: tokens x [S, N, D] (the block's input, batch-first, the
    model's dtype), probs A [S, H, N, N] as recorded, or None to compute their rows here
    (``parts.row_attention``: the block ran its fused attention, which keeps no probabilities),
    rows [S] long."""
    count, n, width = tokens.shape
    sequences = torch.arange(count, device=tokens.device)
    with torch.no_grad():
        h = parts.ln_1(tokens)
        values = parts.values(h).view(count, n, parts.heads, width // parts.heads)
        row_probs = probs[sequences, :, rows, :] if probs is not None else parts.row_attention(h, rows)
        row_out = torch.einsum("shj,sjhc->shc", row_probs.to(values.dtype), values).reshape(count, 1, width)
        return PooledRow(rows, row_probs, values, tokens[sequences, rows][:, None, :], row_out)


def row_gradients(parts, head, row, copies, score):
    """∂score/∂A[s, h, rows[s], :] of the block for every copy of every sequence, in one small backward.

    parts:   block_parts(the block); row: its PooledRow
    head:    what the tower does to its pooled token, [..., D] → [..., E] (ln_post + proj)
    copies:  K, how many scores each sequence's embedding enters (targets, or images)
    score:   embeddings [S, K, E] → a scalar, the sum over copies of the scores whose gradients
             are asked for (copy k of sequence s carries score k's)
    Returns [S, K, H, N]: row ``rows[s]`` of ∂score_k/∂A_s per copy and head (fp32); every other
    row of ∂score_k/∂A_s is zero (see the module docstring).
    """
    count, _, width = row.row_out.shape
    with torch.enable_grad():
        o = row.row_out.expand(count, copies, width).clone().requires_grad_(True)  # [S, K, D]
        grad_o, = torch.autograd.grad(score(head(_tail(parts, row, o))), o)
    grad_o = grad_o.float().view(count, copies, parts.heads, width // parts.heads)
    return torch.einsum("skhc,sjhc->skhj", grad_o, row.values.float())


def _tail(parts, row, o):
    """The block after its attention, on the pooled token: x_row + ls_1(out_proj(o)), then the MLP
    with its residual (the module docstring's m and y). o [S, K, D] → y [S, K, D]."""
    middle = row.row_in + parts.ls_1(parts.out_proj(o))
    return middle + parts.ls_2(parts.mlp(parts.ln_2(middle)))


def cls_row_gradients(parts, image_head, row, text_emb, logit_scale, target_weights):
    """Every target's ∂S_t/∂A[CLS, :] of a CLS-pooled image tower's last block (``row_gradients``).

    image_head:     the tower's head on a token (adapter.image_head) [..., D] → [..., E]
    row:            pooled_row of the last block's call on the B images, rows = 0 (CLS)
    text_emb:       [P, E] (detached); logit_scale: a scalar tensor; target_weights [T, P]
    Returns [B, T, H, N]: row CLS of ∂S_t/∂A per image, target and head (fp32).
    """
    batch, targets = row.rows.shape[0], target_weights.shape[0]

    def score(embedding):  # [B, T, E] → Σ_b Σ_t S_t of copy t of image b
        _, logits = scores_from_embeddings(embedding.reshape(batch * targets, -1), text_emb, logit_scale)  # [B·T, P]
        return (logits.view(batch, targets, -1) * target_weights.to(logits)[None]).sum()

    return row_gradients(parts, image_head, row, targets, score)


def eot_row_gradients(parts, text_head, row, image_emb, logit_scale, jacobian=None):
    """Every image's ∂S[b, p]/∂A_p[EOT_p, :] of a causal text tower's last block (``row_gradients``):
    text-token relevance's gradient, which differs per image (S[b, p] reads image b's embedding).

    text_head:      what the text tower does to its EOT token (ln_final, then the projection)
    row:            pooled_row of the last text block's call on the P prompts, rows = their EOT
                    (image-independent: a run computes it once, clipviz.prompts)
    image_emb:      [B, E] (detached); logit_scale: a scalar tensor
    jacobian:       eot_row_jacobian(parts, text_head, row), or None to run the tail here
    Returns [P, B, H, L]: row EOT_p of ∂S[b, p]/∂A_p per prompt, image and head (fp32). A logit
    bias (SigLIP) is a constant and changes no gradient.
    """
    images = torch.nn.functional.normalize(image_emb.float(), dim=-1)  # [B, E]
    if jacobian is not None:  # S[b, p] = logit_scale · ⟨î_b, t̂_p⟩: linear in î_b
        return logit_scale.float() * torch.einsum("phje,be->pbhj", jacobian, images)

    def score(embedding):  # [P, B, E] → Σ_p Σ_b S[b, p] of copy b of prompt p
        cosine = (torch.nn.functional.normalize(embedding.float(), dim=-1) * images[None]).sum()
        return logit_scale.float() * cosine

    return row_gradients(parts, text_head, row, image_emb.shape[0], score)


def eot_row_jacobian(parts, text_head, row, chunk=128):
    """∂t̂_p[e]/∂A_p[h, EOT_p, j] for the unit text embedding t̂_p of each prompt: [P, H, L, E] fp32.

    S[b, p] = logit_scale · ⟨î_b, t̂_p⟩ is linear in the image's unit embedding î_b, so text-token
    relevance's gradient for any image is this Jacobian applied to î_b (``eot_row_gradients``):
    computed once per run (clipviz.prompts), from E backward passes through the text tail, batched
    ``chunk`` at a time. The tail is that of ``row_gradients`` with the prompt's own EOT output.
    """
    count, _, width = row.row_out.shape
    with torch.enable_grad():
        o = row.row_out.clone().requires_grad_(True)  # [P, 1, D]
        unit = torch.nn.functional.normalize(text_head(_tail(parts, row, o)).float(), dim=-1)  # [P, 1, E]
        size = unit.shape[-1]
        basis = torch.eye(size, dtype=unit.dtype, device=unit.device)[:, None, None, :].expand(size, count, 1, size)
        rows = []  # ∂t̂_p[e]/∂o_p for e in a chunk: [chunk, P, 1, D]
        for start in range(0, size, chunk):
            part, = torch.autograd.grad(unit, o, basis[start:start + chunk], retain_graph=start + chunk < size,
                                        is_grads_batched=True)
            rows.append(part.float())
    grad_o = torch.cat(rows).view(size, count, parts.heads, width // parts.heads)  # [E, P, H, d]
    return torch.einsum("ephc,pjhc->phje", grad_o, row.values.float())


def full_gradient(row_grad, rows, n):
    """Rows [S, H, N] of ∂S/∂A (row ``rows[s]`` of sequence s) → the whole ∂S/∂A [S, H, N, N],
    zero elsewhere, for a reducer without an ``on_row``."""
    grad = row_grad.new_zeros(*row_grad.shape[:2], n, n)
    grad[torch.arange(len(rows), device=rows.device), :, rows, :] = row_grad
    return grad
