"""Recording a ViT image tower: clipviz.hooks.AttentionRecorder set up from a method's Needs,
and its records put where methods read them (clipviz.methods.base.Records)."""

from ..hooks import AttentionRecorder


class ViTRecorder(AttentionRecorder):
    """The attention blocks ``needs.layers`` of ``encoder``, with what ``needs`` asks for:
    reduced attention gradients, patch features (the tokens entering the first recorded block,
    CLS left out) with their gradients, queries and keys, block outputs for a readout."""

    def __init__(self, encoder, needs, block_input=False, recompute=False, attention=True, blocks=None):
        """block_input: forward only, keeping the recorded block's input tokens and no gradients
        (clipviz.last_block computes ∂S/∂A of the last block from them, clipviz.pipeline).
        recompute: no graph in the forward; backward_batched recomputes block by block (AttentionRecorder).
        attention: False leaves the blocks' attention alone (no probabilities recorded).
        blocks: find_blocks(encoder), when the caller has it already."""
        gradients = None if block_input else needs.gradient or (_no_attention_gradient if needs.features else None)
        super().__init__(encoder, layers=needs.layers, gradients=gradients, tokens=needs.features or block_input,
                         outputs=needs.readout is not None, qk=needs.qk, recompute=recompute, attention=attention,
                         blocks=blocks)
        self.needs = needs

    def collect(self, records):
        for index, layer in self.layers.items():
            if layer.probs is not None:  # none when the attention was left to its fused path
                records.probs[index] = layer.probs
            records.grads[index] = layer.grads
            if layer.queries is not None:
                records.queries[index], records.keys[index] = layer.queries, layer.keys
        if self.needs.features:
            tokens, grads = self.batch_first_tokens(self.layers[self.indices[0]])
            records.features = tokens[:, 1:]
            records.feature_grads = {t: g[:, 1:] for t, g in grads.items()}


def _no_attention_gradient(probs, grad):
    return None  # features only: the attention gradient is not kept
