"""The prompts' side of an explanation: what does not depend on the images, computed once.

    encoded = encode_prompts(adapter, ids, needs)      the text embedding [P, E]; for text-token
                                                       relevance also the last text block's EOT
                                                       rows (clipviz.last_block.pooled_row)
    run_method(..., prompts=encoded)                   any number of batches of images

A run of many batches (clipviz.folder) encodes its prompts once; one ``explain`` call encodes them
once for its batch. Text-token relevance needs ∂S[b, p]/∂A_text, which differs per image b, but
with ``text_start_layer=-1`` (the default) only the last text block is read, and there only the
EOT row matters: its closed form needs the prompts' EOT rows, computed here without autograd, and
a tail of one token per (prompt, image) pair in each batch (clipviz.last_block.eot_row_gradients).
Where that does not hold (an earlier ``text_start_layer``, a text tower that does not read one
token, a block of another layout) ``encode_prompts`` returns None and each batch encodes the
prompts again with autograd (clipviz.pipeline's general path).
"""

from dataclasses import dataclass

import torch

from .forms import explaining, submodules
from .hooks import AttentionRecorder, CausalPrefix, find_blocks
from .last_block import block_parts, eot_row_jacobian, pooled_row

JACOBIAN_BYTES = 256 * 2**20  # the text Jacobian kept for a run at most (16 prompts of 20 tokens: 5 MiB)


@dataclass
class EncodedPrompts:
    """P prompts, encoded.

    ids:       [P, Lt] their token ids (what was encoded: a run checks it encodes these)
    embedding: [P, E] the text embedding, detached, in the model's dtype
    layer:     the text block whose EOT rows are kept (the last), or None (no text gradients asked)
    parts:     that block's clipviz.last_block.BlockParts
    row:       its PooledRow on the prompts, rows = each prompt's EOT position
    probs:     [P, H, L, L] its attention probabilities (fp32), L = 1 + the last EOT position
    jacobian:  [P, H, L, E] ∂t̂_p/∂A_p[EOT_p, :] (clipviz.last_block.eot_row_jacobian), or None
               when it would exceed JACOBIAN_BYTES (each batch then runs the text tail itself)
    """

    ids: torch.Tensor
    embedding: torch.Tensor
    layer: int = None
    parts: object = None
    row: object = None
    probs: torch.Tensor = None
    jacobian: torch.Tensor = None

    def encodes(self, ids):
        """True when these are the prompts of ``ids`` [P, Lt]."""
        return self.ids is ids or (self.ids.shape == ids.shape and bool(torch.equal(self.ids, ids.to(self.ids.device))))


def encode_prompts(adapter, ids, needs, images=None):
    """Encode ``ids`` [P, Lt] once for every batch of images a method explains with them.

    adapter: clipviz.adapters.adapt(model); needs: the method's Needs (clipviz.methods.base).
    images: how many images will be explained with them (None: one batch). For text-token
    relevance the prompts' Jacobian (EncodedPrompts.jacobian) is kept when images ≥ E, the
    embedding size: it costs the text tail on E rows once, where each batch otherwise runs it on
    one row per image.
    Returns an EncodedPrompts, or None when the method asks for text gradients the closed form
    does not give (see the module docstring), or the model has no text tower.
    """
    if adapter.text_encoder is None:
        return None
    layer, parts = _closed_form_text_block(adapter, needs)
    if needs.text is not None and layer is None:
        return None
    recorder = AttentionRecorder(adapter.text_encoder, layers=[layer], tokens=True) if layer is not None else None
    eot = adapter.eot_positions(ids)
    with explaining(adapter.model), torch.no_grad(), adapter.running(), \
            CausalPrefix(adapter.text_encoder, int(eot.max()) + 1):
        if recorder is None:
            return EncodedPrompts(ids, adapter.encode_text(ids).detach())
        with recorder:
            embedding = adapter.encode_text(ids).detach()
        recorder.check_recorded()
        record = recorder.layers[layer]
        tokens, _ = recorder.batch_first_tokens(record)
        row = pooled_row(parts, tokens.to(adapter.dtype), record.probs, eot)
        heads, length, size = record.probs.shape[1], record.probs.shape[-1], embedding.shape[-1]
        jacobian = eot_row_jacobian(parts, adapter.text_head, row) \
            if (images or 0) >= size and len(ids) * heads * length * size * 4 <= JACOBIAN_BYTES else None
    return EncodedPrompts(ids, embedding, layer, parts, row, record.probs, jacobian)


def _closed_form_text_block(adapter, needs):
    """(index, BlockParts) of the last text block when the method reads that block alone with
    gradients and the closed form applies to it, else (None, None). Asked before any recorder
    hooks the block (block_parts refuses hooked blocks)."""
    last = adapter.text_layers - 1
    if needs.text is None or tuple(needs.text) != (last,) or needs.gradient is None or needs.readout is not None \
            or not getattr(adapter, "text_reads_one_token", False):
        return None, None
    modules = submodules(adapter.text_encoder)
    parts = block_parts(find_blocks(adapter.text_encoder, modules, "text")[last], adapter.text_head_modules(), modules)
    return (last, parts) if parts is not None else (None, None)
