"""What every method shares: the recording it asks for, the records it reads, the maps it returns.

Shapes: B images, T targets (one per prompt, or a contrast), L blocks, H heads, N = 1 + g*g
tokens (CLS first), g = patch grid side, D width. Text: Lt tokens per prompt (77).
"""

import numbers
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Needs:
    """The recording a method asks for.

    layers:     image blocks whose attention probabilities to record (None = all)
    gradient:   reduce(probs [B,H,N,N], ∂S/∂probs [B,H,N,N]) kept per target, or None (forward only)
    features:   record patch features F [B, K, C] and their gradients ∂S/∂F (K = g·g positions): for a
                ViT the patch tokens entering block ``layers[0]``, for a ResNet its last stage's output
    pool:       record a ResNet's attention-pool probabilities
    text:       text blocks to record for text-token relevance (None = no text recording)
    qk:         record the attention queries and keys of the recorded blocks
    readout:    None, or ``readout(block_output [B, N, D], head) → [B, E]``: how to read an image
                embedding off each recorded block's output (``head`` = the model's ln_post + proj).
                The gradients kept are then those of the per-block scores
                s^l_t = Σ_p W[t, p] · cos(readout(Z^l), text_p) with respect to that block's own
                attention A^l, instead of those of the model's score S (LeGrad)
    """

    layers: tuple = None
    gradient: object = None
    features: bool = False
    pool: bool = False
    text: tuple = None
    qk: bool = False
    readout: object = None

    @property
    def wants_gradient(self):
        return self.gradient is not None or self.features


@dataclass
class Records:
    """Everything a method may read. All tensors are detached.

    probs:        {layer: [B, H, N, N]}
    grads:        {layer: {target: reduce(probs, ∂S_target/∂probs)}}
    features:     [B, K, C] patch features (Needs.features), K = g·g positions, row-major
    feature_grads:{target: [B, K, C]} ∂S_target/∂features
    pool_probs:   [B, H, 1, 1 + g·g] a ResNet's attention-pool probabilities (Needs.pool)
    queries, keys:{layer: [B, N, D]}           attention q and k, heads side by side (Needs.qk)
    text_probs:   {layer: [P, H, Lt, Lt]}      P = prompts actually encoded
    text_grads:   {layer: reduce(probs, grad)} over the B·P (image, prompt) pairs, image-major
                  (pair (b, p) at b·P + p), grad = ∂S[b, p]/∂probs of prompt p (a target reads
                  its own prompt's pair)
    pooling:      "cls", or "probe" for an attention-pooled tower: then block num_layers - 1 is
                  the pool and every record is laid out with the probe as token 0
                  (clipviz.adapters.probe)
    eot:          [T] position of the token each target's text embedding is read at (CLIP: its EOT)
    text_end:     [T] position of each target's end-of-text token: its words are 1 … text_end − 1
                  (= eot unless the tower pools another token, e.g. open_clip's text_pool_type "first")
    target_prompt:[T] index of each target's prompt in the encoded prompts
    """

    num_layers: int
    patch_grid: int
    batch: int
    targets: int
    probs: dict = field(default_factory=dict)
    grads: dict = field(default_factory=dict)
    features: torch.Tensor = None
    feature_grads: dict = field(default_factory=dict)
    pool_probs: torch.Tensor = None
    queries: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)
    text_layers: int = 0
    pooling: str = "cls"
    text_probs: dict = field(default_factory=dict)
    text_grads: dict = field(default_factory=dict)
    eot: torch.Tensor = None
    text_end: torch.Tensor = None
    target_prompt: torch.Tensor = None


@dataclass
class MethodOutput:
    """token_maps [B, T, g, g] (raw, before any normalisation); optional extras.

    layer_maps: [B, T, L', g, g] one map per recorded block (its contribution)
    head_maps:  [B, T, H, g, g] one map per head of the last block
    text_relevance: [B, T, Lt] weight per prompt token (zero outside SOT+1 … EOT-1)
    """

    token_maps: torch.Tensor
    layer_maps: torch.Tensor = None
    layer_indices: tuple = None
    head_maps: torch.Tensor = None
    text_relevance: torch.Tensor = None


def cls_to_patches(matrix, patch_grid):
    """The CLS row over patch tokens: [..., N, N] → [..., g, g] (on an attention-pooled tower the
    probe's row: clipviz.adapters.probe lays its records out with the probe as token 0)."""
    row = matrix[..., 0, 1:]
    return row.reshape(*row.shape[:-1], patch_grid, patch_grid)


def target_rows(records, layer):
    """Each target's reduced gradient of ``layer`` over the patch tokens, stacked: [B, T, N-1].

    For methods whose gradient reducer keeps one value per token ([B, N] per target)."""
    return torch.stack([records.grads[layer][t][:, 1:] for t in range(records.targets)], dim=1)


def per_target(map_bgg, targets):
    """A prompt-agnostic map [B, ...] repeated for every target: [B, T, ...]."""
    return map_bgg.unsqueeze(1).expand(map_bgg.shape[0], targets, *map_bgg.shape[1:]).contiguous()


def resolve_layer(layer, num_layers, name="start_layer"):
    """A block index in [0, L); negative indices count from the end (-1 = last block)."""
    from ..errors import ClipvizError
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral):
        raise ClipvizError(f"{name} must be a whole number (a block index), got {layer!r}")
    layer = int(layer)
    if not -num_layers <= layer < num_layers:
        raise ClipvizError(f"{name}={layer!r} is out of range: the encoder has {num_layers} blocks "
                           f"(use 0 … {num_layers - 1}, or -1 for the last)")
    return layer % num_layers


def blocks_from(start_layer, num_layers, name="start_layer"):
    """The block indices start_layer … L-1 (start_layer resolved as in ``resolve_layer``): tuple."""
    return tuple(range(resolve_layer(start_layer, num_layers, name), num_layers))
