"""Models whose image tower pools its tokens by attention (SigLIP's MAP head) instead of a CLS token.

An attention-pooling head holds a learned probe q (no token of the image): the embedding is
read off ``probe_out = Σ_j A_pool[probe, j] v_j`` over the N patch tokens leaving the last block
(then the head's MLP). There is no CLS row in any block. The rule, for every method: **the probe
plays the CLS token**. The recorder counts the pool as one more block (``num_layers`` = encoder
blocks + 1) and lays every record out as a CLS-pooled ViT's, token 0 being the probe:

    encoder block l:  A [B, H, N, N]      → [B, H, 1+N, 1+N], the probe's row and column zero
                                             (the probe takes no part in the encoder)
    pool:             A [B, H, 1, N]      → [B, H, 1+N, 1+N], row 0 = the probe's attention over
                                             the patches, every other row zero (patches pass the
                                             pool unchanged)
    gradients ∂S/∂A:  laid out the same way, before the method's reducer sees them
    q, k (Grad-ECLIP): the pool's probe query at row 0 and its patch keys at rows 1 … N
    patch features:   the N tokens as they are (nothing to drop)

What each method then computes, with nothing family-specific in the methods:

- attention: the probe's attention over the patches (head mean) — the MAP head's own map.
- rollout:   Â = rownorm(½A + ½I) leaves the probe row e_0 through the encoder blocks, and the
             pool's row ½e_0 + ½a: map = ½ · a · Â_L ⋯ Â_start (a = the probe's attention).
- relevance: Chefer et al.'s R = Π(I + Ā_l) with the pool as the last step: map =
             Ā_pool[probe] · R_encoder, the pool's gradient-weighted probe row carried back through
             the encoder's relevance (eq. 6, the probe's row read where CLS's was).
- gradeclip: the paper's CLS query becomes the probe's query: w = ∂S/∂o of the probe's attention
             output o, λ_i = cos(q_probe, k_i) over the pool's keys. Encoder blocks have no probe
             row, so with ``start_layer`` before the pool they add nothing.
- gradcam:   the patch tokens entering the pool (``layer=-1``) or an encoder block.
- legrad:    the authors' SigLIP rule (``compute_legrad_siglip``): each encoder block's output is
             pooled by the head itself, and the gradient is taken of that pool's attention
             (clipviz.methods.legrad, clipviz.pipeline).

Attention kinds (each a clipviz.hooks.AttentionLayout, registered by its family's adapter):
Hugging Face's ``*MultiheadAttentionPoolingHead`` (adapters/siglip.py), timm's
``AttentionPoolLatent`` and ``Attention`` (adapters/timm.py).
"""

import torch

from ..errors import ClipvizError
from .vit import ViTRecorder


def square_to_cls_layout(matrix):
    """An encoder block's [B, H, N, N] → [B, H, 1+N, 1+N], the probe's row and column zero."""
    out = matrix.new_zeros(*matrix.shape[:-2], matrix.shape[-2] + 1, matrix.shape[-1] + 1)
    out[..., 1:, 1:] = matrix
    return out


def pool_to_cls_layout(matrix):
    """The pool's [B, H, 1, N] → [B, H, 1+N, 1+N], row 0 = the probe's row, other rows zero."""
    if matrix.shape[-2] != 1:
        raise ClipvizError(f"this attention pool has {matrix.shape[-2]} queries; clipviz explains one probe")
    out = matrix.new_zeros(*matrix.shape[:-2], matrix.shape[-1] + 1, matrix.shape[-1] + 1)
    out[..., 0, 1:] = matrix[..., 0, :]
    return out


def _with_probe_row(tokens, row=None):
    """[B, N, D] → [B, 1+N, D] with ``row`` [B, 1, D] (or zeros) at position 0."""
    first = tokens.new_zeros(tokens.shape[0], 1, tokens.shape[-1]) if row is None else row
    return torch.cat([first, tokens], dim=1)


class ProbeRecorder(ViTRecorder):
    """A ViTRecorder over an image tower whose last "block" is its attention pool (found by the
    pool's registered AttentionLayout), with every record in the CLS layout of the module
    docstring. ``self.pool_index`` is the pool's block index."""

    def __init__(self, encoder, needs):
        super().__init__(encoder, needs)
        self.pool_index = len(self.blocks) - 1

    def reduce(self, index, probs, grad):
        layout = pool_to_cls_layout if index == self.pool_index else square_to_cls_layout
        return self.gradients(layout(probs), layout(grad))

    def collect(self, records):
        for index, layer in self.layers.items():
            pool = index == self.pool_index
            records.probs[index] = (pool_to_cls_layout if pool else square_to_cls_layout)(layer.probs)
            records.grads[index] = layer.grads
            if layer.queries is not None:
                if pool:  # the probe's query at row 0, the patch keys at rows 1 … N
                    records.queries[index] = _with_probe_row(torch.zeros_like(layer.keys), layer.queries[:, :1])
                else:
                    records.queries[index] = _with_probe_row(layer.queries)
                records.keys[index] = _with_probe_row(layer.keys)
        if self.needs.features:
            tokens, grads = self.batch_first_tokens(self.layers[self.indices[0]])
            records.features = tokens
            records.feature_grads = dict(grads)


def probe_readout_gradients(recorder, adapter, text_emb, target_weights):
    """LeGrad on an attention-pooled tower, as the authors' ``compute_legrad_siglip``: for each
    recorded encoder block l, e^l = head(Z^l) (the attention pool run on the block's output, its
    attention A_pool(Z^l) explicit), s^l_t = Σ_p W[t, p] · cos(e^l, text_p), and the reducer of
    ∂s^l_t/∂A_pool(Z^l) (pool layout) is stored under block l, target t."""
    text = torch.nn.functional.normalize(text_emb.float(), dim=-1)
    for index, record in recorder.layers.items():
        image, probs = adapter.probe_readout(recorder.block_output(index))
        cosine = torch.nn.functional.normalize(image.float(), dim=-1) @ text.t()  # [B, P]
        scores = cosine @ target_weights.to(cosine).t()  # [B, T]
        for t in range(scores.shape[1]):
            grad, = torch.autograd.grad(scores[:, t].sum(), probs, retain_graph=True)
            record.grads[t] = recorder.reduce(recorder.pool_index, probs.detach().float(), grad.float())
