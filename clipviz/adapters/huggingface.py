"""Hugging Face ``CLIPModel`` (``pip install clipviz[hf]``): ``hf:REPO_ID`` specs and an adapter
(SigLIP and SigLIP 2 checkpoints are handed to clipviz.adapters.siglip).

The recorder hooks each ``CLIPEncoderLayer``'s ``self_attn`` through the AttentionLayout
registered here (``HuggingFaceLayout``; clipviz.hooks knows only nn.MultiheadAttention). Its probabilities
exist only on the eager attention path — SDPA and flash kernels never materialise them — so every
forward pass the adapter runs switches the model's configs to eager attention and restores the
previous setting afterwards, also when the pass raises. On the eager path the probabilities HF
returns are the very tensor multiplied with the values (dropout is the identity in eval mode), so
gradients taken with respect to them are ∂S/∂A.

Text: clipviz's tokenizer produces the same ids as HF's CLIPTokenizer for the OpenAI vocabulary;
padding is 0 and masked out with ``attention_mask``. The pooled token follows HF's own rule:
the highest id (EOT) when ``eos_token_id == 2`` (older configs), else the first ``eos_token_id``.

    model, preprocess = clipviz.load("hf:openai/clip-vit-base-patch32")
"""

import logging
from contextlib import contextmanager

import torch

from ..errors import ClipvizError
from ..forms import unwrap
from ..hooks import AttentionLayout, register_layout
from . import ClipAdapter, import_extra


class HuggingFaceLayout(AttentionLayout):
    """A ``*EncoderLayer`` whose ``self_attn`` has q/k/v/out projections (CLIPEncoderLayer)."""

    input_name = "hidden_states"

    def attention_of(self, block):
        if not type(block).__name__.endswith("EncoderLayer"):  # cheap, before any missing attribute
            return None
        attn = getattr(block, "self_attn", None)
        if all(isinstance(getattr(attn, name, None), torch.nn.Linear) for name in ("q_proj", "k_proj", "v_proj", "out_proj")):
            return attn
        return None

    def ask_for_weights(self, module, args, kwargs):
        """transformers < 5 returns the probabilities only when asked; 5.x always does on the eager path."""
        import inspect
        if "output_attentions" in inspect.signature(module.forward).parameters:
            return args, {**kwargs, "output_attentions": True}
        return None

    def queries_keys(self, attention, inputs):
        return attention.q_proj(inputs), attention.k_proj(inputs)


register_layout(HuggingFaceLayout())


@contextmanager
def _quiet_hub_retries():
    """Mute huggingface_hub's per-retry warnings ("... thrown while requesting HEAD ... Retrying in
    1s [Retry 1/5]", a dozen lines offline): a failure still ends in clipviz's one-line error."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


def load_hf(repo_id, device):
    """Download (on first use) and build a Hugging Face CLIPModel: returns ``(model, preprocess)``."""
    from ..preprocess import Preprocess

    transformers = import_extra("transformers", "hf:", "hf")
    repo_id = repo_id.strip()
    if not repo_id:
        raise ClipvizError("'hf:' needs a repository id, e.g. 'hf:openai/clip-vit-base-patch32'")
    try:
        with _quiet_hub_retries():
            config = transformers.AutoConfig.from_pretrained(repo_id)
        if config.model_type in ("siglip", "siglip2"):  # SigLIP and SigLIP 2: clipviz.adapters.siglip
            from .siglip import SiglipAdapter, load_siglip
            model = load_siglip(transformers, repo_id, config, device)
            adapter = SiglipAdapter(model)
            return model, Preprocess(adapter.input_resolution, crop=adapter.crop)
        model = transformers.CLIPModel.from_pretrained(repo_id)
    except (OSError, ValueError) as error:  # unknown repo, no network, not a CLIP checkpoint
        raise ClipvizError(f"could not load Hugging Face model {repo_id!r}: {error}") from None
    model = model.to(device).eval()
    adapter = HuggingFaceAdapter(model)
    return model, Preprocess(adapter.input_resolution)


class HuggingFaceAdapter(ClipAdapter):
    """``transformers.CLIPModel`` behind clipviz's adapter interface (see ClipAdapter)."""

    family_name = "this Hugging Face model"

    def __init__(self, model):
        self.model = model
        vision, text = model.config.vision_config, model.config.text_config
        self.image_encoder = unwrap(model.vision_model)
        self.text_encoder = unwrap(model.text_model)
        self.family = "vit"
        self.input_resolution, self.patch_grid = self._geometry(vision)
        self.num_layers = len(self.image_encoder.encoder.layers)
        self.text_layers = len(self.text_encoder.encoder.layers)
        self.context_length = int(text.max_position_embeddings)
        self.vocab_size = int(text.vocab_size)
        self.eos_token_id = getattr(self.text_encoder, "eos_token_id", text.eos_token_id)

    def _geometry(self, vision):
        """(input side S, patch grid g) from the vision config."""
        size = int(vision.image_size)
        return size, size // int(vision.patch_size)

    def eot_positions(self, ids):
        """HF CLIPTextModel's pooling rule (argmax for eos_token_id == 2, else the first eos)."""
        if self.eos_token_id == 2:
            return ids.argmax(dim=-1)
        return (ids == self.eos_token_id).int().argmax(dim=-1)

    def encode_image(self, pixels):
        with eager_attention(self.model):
            return _features(self.model.get_image_features(pixel_values=pixels))

    def running(self):
        """Eager attention (the only path that returns the probabilities), also for recomputed blocks."""
        return eager_attention(self.model)

    def encode_text(self, ids):
        positions = torch.arange(ids.shape[-1], device=ids.device)
        mask = (positions[None, :] <= self.eot_positions(ids)[:, None]).long()  # SOT … EOT
        with eager_attention(self.model):
            return _features(self.model.get_text_features(input_ids=ids, attention_mask=mask))

    def image_head(self, tokens):
        """post_layernorm, then visual_projection: [..., D] → [..., E]."""
        return self.model.visual_projection(self.image_encoder.post_layernorm(tokens))

    def image_head_modules(self):
        return [self.image_encoder.post_layernorm, self.model.visual_projection]

    def text_head_modules(self):
        return [self.text_encoder.final_layer_norm, self.model.text_projection]

    def text_head(self, tokens):
        """final_layer_norm, then text_projection: [..., D] → [..., E] (CLIPTextModel pools the EOT
        token of the normalised states)."""
        return self.model.text_projection(self.text_encoder.final_layer_norm(tokens))


def _features(output):
    """transformers < 5 returns the projected features; 5.x a model output holding them."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@contextmanager
def eager_attention(model):
    """Run ``model`` (any transformers model) with eager attention; restore every config after.

    Each distinct config reachable from the model's modules is switched on its internal field,
    so nothing recurses or validates behind our back and the restore is exact.
    """
    configs = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            configs[id(config)] = config
            for name in getattr(config, "sub_configs", {}) or {}:
                sub = getattr(config, name, None)
                if sub is not None and hasattr(sub, "_attn_implementation"):
                    configs[id(sub)] = sub
    field = "_attn_implementation_internal"
    saved = {key: getattr(c, field) if hasattr(c, field) else c._attn_implementation for key, c in configs.items()}
    try:
        for config in configs.values():
            _set_implementation(config, "eager")
        yield
    finally:
        for key, config in configs.items():
            _set_implementation(config, saved[key])


def _set_implementation(config, value):
    if hasattr(config, "_attn_implementation_internal"):
        config._attn_implementation_internal = value
    else:
        config._attn_implementation = value
