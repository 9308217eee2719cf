"""ResNet CLIP (RN50 … RN50x64): Grad-CAM on the last stage, and the attention pool's own attention.

A ResNet CLIP has no attention blocks to record: its last stage (``layer4``) gives features
F [B, C, h, w] (h = w = S/32: 7 for RN50 at 224, 9 for RN50x4 at 288, 12 for RN50x16 at 384,
14 for RN50x64 at 448), and ``attnpool`` turns them into the embedding by one attention step in
which the spatial mean token queries every position. Forward hooks on those two modules of the
unmodified model record what the maps need.

    gradcam (Selvaraju et al. 2017, eqs. 1–2), on F:
        α_c = (1/hw) Σ_xy ∂S/∂F[c, x, y]              channel weights: spatial mean of the gradient
        map = ReLU(Σ_c α_c F[c])                        [h, w]

    attention_pool (prompt-agnostic), recomputed from the pool's input exactly as AttentionPool2d:
        t_0 = mean_xy F,  t_j = F[:, j],   t ← t + P    (P = the pool's positional embedding)
        q = W_q t_0 + b_q,  k_j = W_k t_j + b_k,  split into H heads of d = C/H
        A_h = softmax_j(q_h · k_{h,j} / √d),  j = 0 … hw
        map = mean_h A_h[1:]                            the mean token's attention to each position

S is the score explained: logit_scale · cos(image, prompt), or S_A − S_B for a contrast. Works on
clipviz's, OpenAI's and open_clip's ModifiedResNet (same module names).
"""

import math

import torch

from ..errors import ClipvizError
from ..forms import check_trainable
from ..hooks import remove_hooks
from .base import MethodOutput, Records, per_target

SUPPORTS_RESNET = True
SUPPORTS_VIT = False  # this module is the ``attention_pool`` method: a ResNet's pool has no ViT counterpart

FEATURES, POOL = "layer4", "attnpool"  # keys of this module's entries in Records.tokens / .probs


def needs(num_layers, **_):
    raise ClipvizError("method 'attention_pool' explains ResNet CLIPs (their attention-pooling layer); "
                       "this is a ViT: use 'attention' for the last block's CLS attention")


def compute(records, **_):
    """attention_pool: records.probs['attnpool'] [B, H, 1, 1 + hw] → token_maps [B, T, h, w]."""
    probs = records.probs[POOL]
    heads = probs[:, :, 0, 1:].reshape(probs.shape[0], probs.shape[1], records.patch_grid, records.patch_grid)
    return MethodOutput(token_maps=per_target(heads.mean(dim=1), records.targets),
                        head_maps=per_target(heads, records.targets))


def compute_gradcam(records, **_):
    """records.tokens['layer4'] F [B, C, h, w], token_grads['layer4'][t] ∂S_t/∂F → token_maps [B, T, h, w]."""
    features = records.tokens[FEATURES]
    maps = []
    for target in range(records.targets):
        weights = records.token_grads[FEATURES][target].mean(dim=(2, 3), keepdim=True)  # α [B, C, 1, 1]
        maps.append(torch.relu((weights * features).sum(dim=1)))
    return MethodOutput(token_maps=torch.stack(maps, dim=1))


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


class ResNetRecorder:
    """Forward hooks on ``visual.layer4`` (features, kept in the graph) and ``visual.attnpool``
    (its attention, recomputed from its input without gradient). Removed on exit."""

    def __init__(self, visual):
        if not (hasattr(visual, "layer4") and hasattr(visual, "attnpool")):
            raise ClipvizError(f"{type(visual).__name__} is not a CLIP ModifiedResNet (no layer4/attnpool)")
        self.visual = visual
        self.features = self.probs = None
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


def run_resnet(adapter, pixels, ids, target_weights, target_prompt, module, options):
    """``run_method`` for ResNet CLIPs: 'gradcam' or 'attention_pool' (see the module docstring)."""
    from ..adapters import scores_from_embeddings

    name = module.__name__.rsplit(".", 1)[-1]
    if name not in ("gradcam", __name__.rsplit(".", 1)[-1]):
        raise ClipvizError(f"method {name!r} explains ViT models; this is a ResNet CLIP: "
                           "use method='gradcam' or 'attention_pool'")
    if options:
        raise ClipvizError(f"on a ResNet CLIP, {'gradcam' if name == 'gradcam' else 'attention_pool'} takes no "
                           f"options (got {', '.join(sorted(options))})")
    gradcam = name == "gradcam"
    if gradcam and adapter.text_encoder is None:
        from ..adapters.tower import text_tower_needed
        raise text_tower_needed(name)
    if gradcam:
        check_trainable(adapter.model, name)
    batch, targets = pixels.shape[0], target_weights.shape[0]
    records = Records(num_layers=0, patch_grid=adapter.patch_grid, batch=batch, targets=targets,
                      eot=adapter.eot_positions(ids)[target_prompt].cpu(), target_prompt=target_prompt)
    with torch.set_grad_enabled(gradcam), ResNetRecorder(adapter.image_encoder) as recorder:
        image_emb = adapter.encode_image(pixels)
        if adapter.text_encoder is None:  # an image tower alone: nothing to score against
            cosine = logits = torch.full((batch, ids.shape[0]), float("nan"))
        else:
            cosine, logits = scores_from_embeddings(image_emb, adapter.encode_text(ids), adapter.logit_scale())
        records.tokens[FEATURES] = recorder.features.detach().float()  # maps accumulate in fp32
        records.probs[POOL] = recorder.probs
        if gradcam:
            target_scores = logits @ target_weights.to(logits).t()  # [B, T]
            records.token_grads[FEATURES] = {
                t: torch.autograd.grad(target_scores[:, t].sum(), recorder.features, retain_graph=True)[0].float()
                for t in range(targets)}  # images are independent: one backward serves the batch
    output = compute_gradcam(records) if gradcam else compute(records)
    return records, cosine.detach(), logits.detach(), output
