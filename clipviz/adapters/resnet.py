"""Recording a ResNet CLIP (RN50 … RN50x64): its last feature map and its attention pool.

A ResNet CLIP has no attention blocks to record: its last stage (``layer4``) gives features
F [B, C, h, w] (h = w = S/32: 7 for RN50 at 224, 9 for RN50x4 at 288, 12 for RN50x16 at 384,
14 for RN50x64 at 448), and ``attnpool`` turns them into the embedding by one attention step in
which the spatial mean token queries every position. Forward hooks on those two modules of the
unmodified model record what methods ask for (clipviz.methods.base.Needs):

    features (Grad-CAM): F as [B, hw, C] (positions row-major) and ∂S/∂F per target
    pool (attention_pool), recomputed from the pool's input exactly as AttentionPool2d:
        t_0 = mean_xy F,  t_j = F[:, j],   t ← t + P    (P = the pool's positional embedding)
        q = W_q t_0 + b_q,  k_j = W_k t_j + b_k,  split into H heads of d = C/H
        A_h = softmax_j(q_h · k_{h,j} / √d),  j = 0 … hw

Works on clipviz's, OpenAI's and open_clip's ModifiedResNet (same module names).
"""

import math

import torch

from ..errors import ClipvizError
from ..hooks import remove_hooks


class ResNetRecorder:
    """Forward hooks on ``visual.layer4`` (features, kept in the graph) and ``visual.attnpool``
    (its attention, recomputed from its input without gradient). Removed on exit. The same calls
    as clipviz.hooks.AttentionRecorder: ``backward(score, slot)``, ``check_recorded()``,
    ``collect(records)``."""

    layers = {}  # no attention blocks: nothing for per-block readouts

    def __init__(self, visual, needs):
        if not (hasattr(visual, "layer4") and hasattr(visual, "attnpool")):
            raise ClipvizError(f"{type(visual).__name__} is not a CLIP ModifiedResNet (no layer4/attnpool)")
        self.visual, self.needs = visual, needs
        self.features = self.probs = None
        self.feature_grads = {}
        self._handles = []

    def __enter__(self):
        self._handles = [self.visual.layer4.register_forward_hook(self._features_hook),
                         self.visual.attnpool.register_forward_pre_hook(self._pool_hook)]
        return self

    def __exit__(self, *exc):
        remove_hooks(self._handles)
        return False

    def _features_hook(self, module, args, output):
        if torch.is_grad_enabled() and not output.requires_grad:
            output = output.detach().requires_grad_(True)  # frozen weights: same values, now differentiable
            self.features = output
            return output
        self.features = output
        return None

    def _pool_hook(self, module, args):
        with torch.no_grad():
            self.probs = pool_attention(module, args[0])

    def check_recorded(self):
        if self.features is None:
            raise ClipvizError("the ResNet's last stage (layer4) was not run: encode the image inside the recorder")

    def backward(self, score, slot, retain_graph=True, layers=None):
        """∂score/∂F kept under ``slot`` (images are independent: one backward serves the batch)."""
        self.feature_grads[slot] = torch.autograd.grad(score, self.features, retain_graph=retain_graph)[0].float()

    def collect(self, records):
        """Put what ``needs`` asked for into ``records`` (features as [B, hw, C], fp32: maps accumulate in fp32)."""
        if self.needs.features:
            records.features = _positions_last(self.features.detach().float())
            records.feature_grads = {t: _positions_last(g) for t, g in self.feature_grads.items()}
        if self.needs.pool:
            records.pool_probs = self.probs


def pool_attention(pool, features):
    """AttentionPool2d's query(mean token)→position probabilities: [B, C, h, w] → [B, H, 1, 1 + hw],
    computed in fp32 whatever the model's dtype (an fp16/bf16 softmax over near-equal logits is flat)."""
    tokens = features.float().flatten(start_dim=2).transpose(1, 2)  # [B, hw, C]
    tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
    tokens = tokens + pool.positional_embedding.float()
    batch, count, width = tokens.shape
    heads = pool.num_heads

    def project(linear, x):
        return torch.nn.functional.linear(x, linear.weight.float(), None if linear.bias is None else linear.bias.float())

    query = project(pool.q_proj, tokens[:, :1]).reshape(batch, 1, heads, width // heads).transpose(1, 2)
    keys = project(pool.k_proj, tokens).reshape(batch, count, heads, width // heads).transpose(1, 2)
    return (query @ keys.transpose(-1, -2) / math.sqrt(width // heads)).softmax(dim=-1)


def _positions_last(features):
    """[B, C, h, w] → [B, hw, C], positions row-major (as a ViT's patch tokens)."""
    return features.flatten(start_dim=2).transpose(1, 2)
