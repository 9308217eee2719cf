"""An image tower held alone (``model.visual``, Hugging Face ``CLIPVisionModel``): what it can explain.

Without a text tower there is no prompt embedding, so no image–text score S to differentiate:
the prompt-specific methods (relevance, gradcam, legrad, gradeclip) are refused with a
ClipvizError, and the gradient-free ones — ``rollout`` and ``attention`` on a ViT,
``attention_pool`` on a ResNet — give the same maps as on the whole model (they read the image
forward pass only). Scores and probabilities are NaN: there is nothing to compare the image with.

Towers recognised: clipviz's / OpenAI's / open_clip's ``VisionTransformer`` and ``ModifiedResNet``,
and Hugging Face ``CLIPVisionModel``, ``CLIPVisionModelWithProjection`` and ``CLIPVisionTransformer``.
"""

import torch

from ..errors import ClipvizError
from ..forms import unwrap
from . import ClipAdapter, _library, _resolution

_HF_TOWERS = ("CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPVisionTransformer")


def is_image_tower(model):
    """True for an image tower without its CLIP around it (see the module docstring)."""
    kind = type(model).__name__
    if _library(model) == "transformers":
        return kind in _HF_TOWERS
    return kind in ("VisionTransformer", "ModifiedResNet") and hasattr(model, "conv1")


def text_tower_needed(method):
    """The ClipvizError for a prompt-specific ``method`` asked of an image tower alone."""
    return ClipvizError(
        f"method {method!r} explains the match with a prompt, but this is an image tower alone (no text tower "
        "to encode the prompt): pass the whole CLIP model, or use a prompt-free method ('rollout', 'attention'; "
        "'attention_pool' on a ResNet)")


class TowerAdapter(ClipAdapter):
    """An image tower alone behind the adapter interface; ``text_encoder`` is None."""

    family_name = "this image tower"
    text_encoder = None
    text_layers = 0
    context_length = 77

    def __init__(self, model):
        self.model = model
        self.library = _library(model)
        if self.library == "transformers":
            vision = unwrap(getattr(model, "vision_model", model))
            self.image_encoder, self.family = vision, "vit"
            self.input_resolution = int(vision.config.image_size)
            self.patch_grid = self.input_resolution // int(vision.config.patch_size)
            self.num_layers = len(vision.encoder.layers)
            return
        self.image_encoder = model
        if self.library == "open_clip":
            from .openclip import pixel_statistics, tower_family, tower_geometry
            self.family = tower_family(model)
            self.input_resolution, self.patch_grid = tower_geometry(model, self.family)
            self.pixel_mean, self.pixel_std = pixel_statistics(model)
        else:
            self.family = "vit" if hasattr(model, "transformer") else "resnet"
            self.input_resolution = _resolution(model)
            self.patch_grid = self.input_resolution // (model.conv1.kernel_size[0] if self.family == "vit" else 32)
        self.num_layers = len(model.transformer.resblocks) if self.family == "vit" else 1  # ResNet: its last stage

    def encode_image(self, pixels):
        """[B, 3, S, S] → the tower's output (its pooled, projected embedding)."""
        if self.library == "transformers":
            from .huggingface import eager_attention
            with eager_attention(self.model):
                output = self.model(pixel_values=pixels)
            embeds = getattr(output, "image_embeds", None)
            return output.pooler_output if embeds is None else embeds
        if self.library == "open_clip":
            from .openclip import renormalise
            pixels = renormalise(pixels, self.pixel_mean, self.pixel_std)
        output = self.model(pixels.type(self.dtype))
        return output[0] if isinstance(output, tuple) else output

    def encode_text(self, ids):
        raise ClipvizError("this is an image tower alone: it has no text tower to encode prompts with; "
                           "pass the whole CLIP model")

    def logit_scale(self):
        return torch.tensor(float("nan"))
