"""Hugging Face transformers' CLIP layout → OpenAI's, so one ``build_model`` reads both.

    state_dict = from_transformers(read_checkpoint("model.safetensors"))   # openai/clip-vit-* repos

transformers' ``CLIPModel`` holds the same numbers as OpenAI's archives under other names, with
the attention's query, key and value as three Linear layers where OpenAI's
``nn.MultiheadAttention`` keeps one ``in_proj`` matrix ``[3·D, D]`` (rows: q, then k, then v),
and both projections stored transposed (``nn.Linear`` weights are ``[out, in]``, OpenAI's
``proj`` / ``text_projection`` are ``[in, out]``). ViT image encoders only: transformers has no
CLIP ResNet.
"""

from __future__ import annotations

import re

from .errors import ClipvizError

TRANSFORMERS_MARKER = "vision_model.embeddings.patch_embedding.weight"

# whole-tensor renames: transformers name -> OpenAI name
_RENAMES = {
    "logit_scale": "logit_scale",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic: transformers' spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
}
_TRANSPOSED = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text_projection"}
# inside one encoder layer: transformers suffix -> OpenAI suffix
_LAYER_RENAMES = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_LAYER = re.compile(r"(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
_IGNORED = re.compile(r"(text|vision)_model\.embeddings\.position_ids")  # a buffer of 0..N-1 in old files


def is_transformers_layout(state_dict) -> bool:
    """True for the key names of transformers' ``CLIPModel`` (``vision_model.embeddings...``)."""
    return TRANSFORMERS_MARKER in state_dict


def from_transformers(state_dict: dict) -> dict:
    """OpenAI-format copy of a transformers ``CLIPModel`` state dict (same tensors, renamed).

    Per encoder layer l of tower T (``visual.transformer`` or ``transformer``):
    ``T.resblocks.l.attn.in_proj_weight = cat(q_proj.weight, k_proj.weight, v_proj.weight)``
    ``[3·D, D]`` (biases likewise ``[3·D]``); the other tensors are renamed one to one, and
    ``visual_projection.weight`` / ``text_projection.weight`` ``[E, D]`` are transposed to
    ``visual.proj`` / ``text_projection`` ``[D, E]``. Raises ClipvizError naming any key it does
    not know (a vision-only or text-only model, another architecture) instead of guessing.
    """
    import torch

    converted, attention, unknown = {}, {}, []
    for key, tensor in state_dict.items():
        if key in _RENAMES:
            converted[_RENAMES[key]] = tensor
        elif key in _TRANSPOSED:
            converted[_TRANSPOSED[key]] = tensor.t().contiguous()
        elif _IGNORED.fullmatch(key):
            continue
        elif match := _LAYER.fullmatch(key):
            tower, layer, part, kind = match.groups()
            prefix = f"{'visual.' if tower == 'vision' else ''}transformer.resblocks.{layer}."
            if part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                attention.setdefault((prefix, kind), {})[part[len("self_attn.")]] = tensor
            elif part in _LAYER_RENAMES:
                converted[f"{prefix}{_LAYER_RENAMES[part]}.{kind}"] = tensor
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    for (prefix, kind), parts in attention.items():
        if set(parts) != {"q", "k", "v"}:
            unknown.append(f"{prefix}attn ({kind}: only {', '.join(sorted(parts))} of q, k, v)")
            continue
        converted[f"{prefix}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    if unknown or "visual.proj" not in converted or "text_projection" not in converted:
        what = f"unknown entries {unknown[:3]}" if unknown else "no visual or text projection"
        raise ClipvizError(f"this transformers state dict is not a two-tower ViT CLIPModel ({what}); "
                           "load it with the 'hf:' spec instead")
    return converted
