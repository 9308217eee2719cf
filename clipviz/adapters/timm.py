"""timm vision towers (open_clip's ``ViT-B-16-SigLIP`` … on ``TimmModel``): their attention, read by hooks.

timm's ``Attention`` and ``AttentionPoolLatent`` return only their output, and on the fused path
(``F.scaled_dot_product_attention``) never hold the probabilities. Their layouts here
(``recomputes = True``, clipviz.hooks) therefore recompute each recorded call from the module's
own input and weights with the probabilities explicit, in the graph, and a forward hook hands the
model that output instead of its own — the same function of the same input (equal up to float
rounding of the fused kernel), so gradients taken with respect to the probabilities are ∂S/∂A.
Nothing of the model is changed; blocks that are not recorded run their fused path as before.

    Attention:           q, k, v = split(qkv(x)); q, k = q_norm(q), k_norm(k)
                         A = softmax(scale · q kᵀ)          [B, H, N, N]
                         out = proj(norm(A v)) (· gate when gated)
    AttentionPoolLatent: q = q_norm(q(latent)); k, v = split(kv(x + pos_embed)); k = k_norm(k)
                         A = softmax(scale · q kᵀ)          [B, H, 1, N]   (one latent: the probe)
                         out = y + mlp(norm(y)),  y = proj(A v);  the token 0 of out
"""

import torch

from ..errors import ClipvizError
from ..hooks import AttentionLayout, register_layout


def _is_timm(module):
    return type(module).__module__.startswith("timm.")


def _no_mask(args, kwargs):
    mask = kwargs.get("attn_mask", args[1] if len(args) > 1 else None)
    if mask is not None or kwargs.get("is_causal", False):
        raise ClipvizError("clipviz records timm attention without masks (an image tower's blocks take none)")


def _split(x, heads, head_dim):
    """[B, N, heads·head_dim] → [B, heads, N, head_dim]."""
    return x.reshape(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)


def _merge(x):
    """[B, heads, N, head_dim] → [B, N, heads·head_dim]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


class TimmAttentionLayout(AttentionLayout):
    """timm ``Block`` with a standard ``Attention`` (fused qkv)."""

    input_name = "x"
    recomputes = True

    def attention_of(self, block):
        attention = getattr(block, "attn", None)
        if _is_timm(block) and type(attention).__name__ == "Attention" and isinstance(
                getattr(attention, "qkv", None), torch.nn.Linear):
            return attention
        return None

    def _qkv(self, attention, x):
        heads, head_dim = attention.num_heads, attention.head_dim
        q, k, v = attention.qkv(x).reshape(*x.shape[:2], 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return attention.q_norm(q), attention.k_norm(k), v

    def recompute(self, attention, args, kwargs):
        x = args[0] if args else kwargs["x"]
        _no_mask(args, kwargs)
        q, k, v = self._qkv(attention, x)
        probs = attention.attn_drop(((q * attention.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        out = getattr(attention, "norm", torch.nn.Identity())(_merge(probs @ v))
        gate = getattr(attention, "gate", None)
        if gate is not None:
            out = out * gate(x).sigmoid()
        return attention.proj_drop(attention.proj(out)), probs

    def queries_keys(self, attention, inputs):
        q, k, _ = self._qkv(attention, inputs)
        return _merge(q), _merge(k)


class TimmPoolLayout(AttentionLayout):
    """timm ``AttentionPoolLatent`` with one latent query (SigLIP's MAP head): the pool is its own
    block and its own attention."""

    input_name = "x"
    recomputes = True

    def attention_of(self, block):
        if _is_timm(block) and type(block).__name__ == "AttentionPoolLatent":
            if block.latent_len != 1 or block.pool != "token":
                raise ClipvizError("clipviz explains attention pools with one latent query read as the embedding "
                                   f"(this one has {block.latent_len}, pooled by {block.pool!r})")
            return block
        return None

    def _qkv(self, pool, x):
        batch, count, _ = x.shape
        if pool.pos_embed is not None:
            x = x + pool.pos_embed.unsqueeze(0).to(x.dtype)
        q = _split(pool.q(pool.latent.expand(batch, -1, -1)), pool.num_heads, pool.head_dim)
        k, v = pool.kv(x).reshape(batch, count, 2, pool.num_heads, pool.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return pool.q_norm(q), pool.k_norm(k), v

    def recompute(self, pool, args, kwargs):
        _no_mask(args, kwargs)
        return pool_forward(pool, args[0] if args else kwargs["x"], self)

    def queries_keys_of_call(self, pool, args, kwargs):
        q, k, _ = self._qkv(pool, args[0] if args else kwargs["x"])
        return _merge(q), _merge(k)


def pool_forward(pool, tokens, layout=None):
    """AttentionPoolLatent on tokens [B, N, D] with its attention explicit: (embedding [B, D],
    probabilities [B, H, 1, N] in the graph)."""
    q, k, v = (layout or _POOL)._qkv(pool, tokens)
    probs = ((q * pool.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    out = pool.proj_drop(pool.proj(_merge(probs @ v)))
    if pool.mlp is not None:
        out = out + pool.mlp(pool.norm(out))
    return out[:, 0], probs


_POOL = TimmPoolLayout()
register_layout(TimmAttentionLayout())
register_layout(_POOL)


def siglip_trunk(visual):
    """The timm ViT of an open_clip ``TimmModel`` if clipviz can explain it (no prefix tokens, a
    one-latent attention pool), else a ClipvizError."""
    trunk = getattr(visual, "trunk", None)
    pool = getattr(trunk, "attn_pool", None)
    if type(pool).__name__ != "AttentionPoolLatent" or getattr(trunk, "num_prefix_tokens", 1) != 0 \
            or not hasattr(trunk, "blocks"):
        raise ClipvizError(f"clipviz explains timm image towers that are ViTs pooled by attention (SigLIP), not "
                           f"{type(trunk).__name__} with {type(pool).__name__ if pool is not None else 'no'} pool")
    _POOL.attention_of(pool)  # one latent, read as the embedding
    if not all(TimmAttentionLayout().attention_of(block) is not None for block in trunk.blocks):
        raise ClipvizError("this timm tower's blocks use an attention clipviz cannot record (not timm's Attention)")
    return trunk


def trunk_geometry(trunk):
    """(input side S, patch grid g) of a timm ViT; a ClipvizError when not square."""
    size, grid = tuple(trunk.patch_embed.img_size), tuple(trunk.patch_embed.grid_size)
    if size[0] != size[1] or grid[0] != grid[1]:
        raise ClipvizError(f"this timm tower is not square (input {size[0]}×{size[1]}, patch grid "
                           f"{grid[0]}×{grid[1]}); clipviz explains square inputs")
    return int(size[0]), int(grid[0])
