"""Gradient-weighted relevance: Chefer, Gur & Wolf 2021 (ICCV), the bi-modal rule used for CLIP.

    Ā_l = E_h[(∇A_l ⊙ A_l)⁺]                 eq. (5): gradient-weighted, head-averaged, positive part
    R  ← I;   R ← R + Ā_l · R  for l ≥ start_layer     eq. (6), self-attention update
    map = R[CLS, patches]

with ∇A_l = ∂S/∂A_l and S = logits_per_image of the image–prompt pair (logit_scale · cosine),
or S_A − S_B for a contrastive target. ``start_layer`` defaults to -1 (the last block only), as
in the authors' CLIP notebook after its ViT-B/16 artifact fix; 0 uses every block.

Text-token relevance applies the same rule to the text encoder and reads the EOT row:
``R_text[EOT, 1:EOT]`` (SOT and EOT excluded).

Layer maps are each block's contribution (Ā_l · R_{l-1})[CLS, patches]; head maps are the
last block's per-head (∇A ⊙ A)⁺[CLS, patches].
"""

import torch

from .base import MethodOutput, Needs, blocks_from, cls_to_patches

FAMILIES = ("vit",)


def positive_weighted(probs, grad):
    """(∇A ⊙ A)⁺ kept per head on the CLS row, and its head mean everywhere.

    Returns a dict: ``mean`` [B, N, N] = E_h[(∇A ⊙ A)⁺]; ``cls_heads`` [B, H, N] its CLS row per head.
    Reducing as soon as the gradient exists keeps memory at one [B, N, N] per layer.
    """
    weighted = (grad * probs).clamp(min=0)
    # clone: a view of the CLS row would keep the whole [B, H, N, N] product alive for every layer
    return {"mean": weighted.mean(dim=1), "cls_heads": weighted[:, :, 0, :].clone()}


def _positive_weighted_on_row(row_probs, row_grad, rows):
    """positive_weighted(probs, grad) for a gradient that is zero outside one row per sequence
    (clipviz.last_block), from that row alone: row_probs, row_grad [S, H, N] (row ``rows[s]`` of
    A and of ∂S/∂A), rows [S] long → the same dict, without touching the [S, H, N, N] zeros."""
    weighted = (row_grad * row_probs).clamp(min=0)  # [S, H, N]
    count, n = weighted.shape[0], weighted.shape[-1]
    mean = weighted.new_zeros(count, n, n)
    mean.scatter_(1, rows.view(count, 1, 1).expand(count, 1, n), weighted.mean(dim=1, keepdim=True))
    return {"mean": mean, "cls_heads": weighted * (rows == 0).view(count, 1, 1)}


positive_weighted.on_row = _positive_weighted_on_row


def needs(model, start_layer=-1, text_start_layer=-1, text=True):
    text_blocks = None
    if text and model.text_layers:
        text_blocks = blocks_from(text_start_layer, model.text_layers, "text_start_layer")
    return Needs(layers=blocks_from(start_layer, model.num_layers), gradient=positive_weighted, text=text_blocks)


def propagate(weighted_means):
    """R = Π (I + Ā_l) applied in order: list of [B, N, N] → (R [B, N, N], contributions list)."""
    n = weighted_means[0].shape[-1]
    relevance = torch.eye(n, dtype=weighted_means[0].dtype, device=weighted_means[0].device)
    relevance = relevance.expand_as(weighted_means[0])
    contributions = []
    for a_bar in weighted_means:
        step = a_bar @ relevance if contributions else a_bar  # Ā · I = Ā, without the product
        contributions.append(step)
        relevance = relevance + step
    return relevance, contributions


def compute(records, start_layer=-1, text_start_layer=-1, text=True):
    """records.grads {l: {t: positive_weighted(...)}} → token_maps [B, T, g, g] and extras
    (text relevance when ``text`` and the text blocks were recorded)."""
    layers = blocks_from(start_layer, records.num_layers)
    g = records.patch_grid
    maps, layer_maps, head_maps = [], [], []
    for target in range(records.targets):
        relevance, contributions = propagate([records.grads[l][target]["mean"] for l in layers])
        maps.append(cls_to_patches(relevance, g))
        layer_maps.append(torch.stack([cls_to_patches(c, g) for c in contributions], dim=1))
        cls_heads = records.grads[layers[-1]][target]["cls_heads"][..., 1:]  # [B, H, g*g]
        head_maps.append(cls_heads.reshape(*cls_heads.shape[:-1], g, g))
    return MethodOutput(
        token_maps=torch.stack(maps, dim=1),
        layer_maps=torch.stack(layer_maps, dim=1),
        layer_indices=layers,
        head_maps=torch.stack(head_maps, dim=1),
        text_relevance=text_relevance(records, text_start_layer) if text and records.text_grads else None)


def text_relevance(records, text_start_layer=-1):
    """R_text[pooled, 1:EOT] per (image, target): [B, T, Lt], zero outside the prompt's word tokens.

    The row is the token the text embedding is read at (records.eot: CLIP's EOT). A tower pooled
    at its first token (open_clip's "first") reads row 0: under a causal mask that token sees only
    itself, so every word's relevance is 0 (the embedding does not depend on the words); without
    one the relevance spreads over the words as at EOT. Every (image, target) pair is propagated
    at once, as a batch of B·T matrices."""
    layers = blocks_from(text_start_layer, records.text_layers, "text_start_layer")
    first = records.text_grads[layers[0]]["mean"]  # [B·P, Lt, Lt], pair (b, p) at b·P + p
    device, prompts = first.device, first.shape[0] // records.batch
    pairs = (torch.arange(records.batch, device=device)[:, None] * prompts
             + records.target_prompt.to(device)[None, :]).reshape(-1)  # [B·T]: each target's own prompt
    relevance, _ = propagate([records.text_grads[l]["mean"][pairs] for l in layers])  # [B·T, Lt, Lt]
    eot = records.eot.to(device).repeat(records.batch)  # [B·T]
    eot_rows = relevance[torch.arange(len(pairs), device=device), eot]  # [B·T, Lt]
    end = (records.eot if records.text_end is None else records.text_end).to(device).repeat(records.batch)
    positions = torch.arange(eot_rows.shape[-1], device=device)
    words = (positions >= 1) & (positions < end[:, None])  # SOT and EOT excluded
    out = torch.where(words, eot_rows, torch.zeros_like(eot_rows))
    return out.float().cpu().reshape(records.batch, records.targets, -1)
