"""Hugging Face SigLIP and SigLIP 2 (``SiglipModel``, ``Siglip2Model``; ``pip install clipviz[hf]``).

What differs from CLIP, and lives here:

- The image embedding comes from an attention-pooling head (``*MultiheadAttentionPoolingHead``:
  a learned probe, ``nn.MultiheadAttention`` over the patch tokens, no CLS token). Its layout
  (``PoolingHeadLayout``) lets the recorder read it; clipviz.adapters.probe says how every method
  treats it. The encoder blocks are recorded through clipviz.adapters.huggingface's layout, on the
  eager attention path: a model configured for ``sdpa`` (or flash attention) runs eager for the
  explanation and gets its setting back afterwards (``eager_attention``).
- The score explained is the model's own logit ``S = logit_scale · cos(image, text) + logit_bias``
  (SigLIP's ``logits_per_image``). The sigmoid is not applied: σ(S) would multiply every gradient
  of one prompt by σ'(S) > 0, a per-prompt constant that normalisation removes, and the reported
  scores stay in logit units as for CLIP.
- Text: SigLIP's own tokenizer (``AutoTokenizer`` of the checkpoint: SentencePiece for SigLIP,
  Gemma's for SigLIP 2), padded to ``max_length`` = 64 as the model was trained; the text tower
  pools the last position. Text-token relevance is not offered (``text_layers = 0``).
- Images: resized to S × S without a crop (SigLIP's processor), mean = std = 0.5; the maps cover
  the whole photo. SigLIP 2 (NaFlex) takes patches: the S × S image, S = patch · √num_patches,
  is cut into its g × g patches in the processor's order (row-major; each patch p × p × 3). Its
  processor would instead keep the photo's aspect ratio (a non-square grid of at most num_patches);
  clipviz's maps and methods are square, so SigLIP 2 sees the photo squashed to the square grid.

    model, preprocess = clipviz.load("hf:google/siglip-base-patch16-224")
"""

import math

import torch

from ..errors import ClipvizError
from ..hooks import AttentionLayout, attention_keywords, register_layout
from . import _checked_ids, attach_tokenizer, attached_tokenizer
from .huggingface import HuggingFaceAdapter, _features, eager_attention
from .openclip import renormalise
from .probe import ProbeRecorder

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


class PoolingHeadLayout(AttentionLayout):
    """Hugging Face's ``*MultiheadAttentionPoolingHead``: ``attention(probe, tokens, tokens)``, an
    ``nn.MultiheadAttention`` asked for its per-head probabilities [B, H, 1, N]."""

    input_name = "hidden_state"

    def attention_of(self, block):
        attention = getattr(block, "attention", None)
        if type(block).__name__.endswith("MultiheadAttentionPoolingHead") and isinstance(
                attention, torch.nn.MultiheadAttention) and hasattr(block, "probe"):
            return attention
        return None

    def ask_for_weights(self, module, args, kwargs):
        args, kwargs = attention_keywords(args, kwargs)
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def queries_keys_of_call(self, attention, args, kwargs):
        args, kwargs = attention_keywords(args, kwargs)
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs["key"]
        d = attention.embed_dim
        weight, bias = attention.in_proj_weight, attention.in_proj_bias
        return (torch.nn.functional.linear(query, weight[:d], None if bias is None else bias[:d]),
                torch.nn.functional.linear(key, weight[d:2 * d], None if bias is None else bias[d:2 * d]))


register_layout(PoolingHeadLayout())


def pooling_head_forward(head, tokens):
    """The head's forward on tokens [B, N, D] with its attention explicit: (pooled [B, D],
    probabilities [B, H, 1, N] in the graph). The same computation as ``nn.MultiheadAttention``
    (q = probe W_q, k = tokens W_k, v = tokens W_v, softmax(q kᵀ/√d), out_proj), then the head's
    residual MLP."""
    attention = head.attention
    batch, count, width = tokens.shape
    heads, d = attention.num_heads, attention.embed_dim
    weight, bias = attention.in_proj_weight, attention.in_proj_bias
    q, k, v = (torch.nn.functional.linear(x, weight[i * d:(i + 1) * d], None if bias is None else bias[i * d:(i + 1) * d])
               for i, x in enumerate((head.probe.expand(batch, -1, -1), tokens, tokens)))
    split = lambda x: x.reshape(batch, x.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    probs = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)).softmax(dim=-1)  # [B, H, 1, N]
    out = attention.out_proj((probs @ split(v)).transpose(1, 2).reshape(batch, 1, d))
    out = out + head.mlp(head.layernorm(out))
    return out[:, 0], probs


def hf_tokenize(tokenizer, context_length, lower=False):
    """A transformers tokenizer as clipviz calls one: prompts → ids [P, context_length], padded to
    max_length as SigLIP was trained (SigLIP 2's processor lower-cases: ``lower``)."""
    def tokenize(prompts):
        texts = [p.lower() for p in prompts] if lower else prompts
        return tokenizer(texts, padding="max_length", max_length=context_length, truncation=False,
                         return_tensors="pt")["input_ids"]
    return tokenize


def load_siglip(transformers, repo_id, config, device):
    """A SigLIP or SigLIP 2 checkpoint (``config.model_type`` 'siglip' / 'siglip2') and its tokenizer."""
    model_class = transformers.Siglip2Model if config.model_type == "siglip2" else transformers.SiglipModel
    try:
        model = model_class.from_pretrained(repo_id)
        tokenizer = transformers.AutoTokenizer.from_pretrained(repo_id)
    except (OSError, ValueError, ImportError) as error:  # no network, missing sentencepiece …
        raise ClipvizError(f"could not load Hugging Face model {repo_id!r}: {error}") from None
    text = config.text_config
    attach_tokenizer(model, hf_tokenize(tokenizer, int(text.max_position_embeddings), config.model_type == "siglip2"))
    return model.to(device).eval()


class SiglipAdapter(HuggingFaceAdapter):
    """``transformers.SiglipModel`` / ``Siglip2Model`` behind clipviz's adapter interface."""

    family_name = "this Hugging Face SigLIP model"
    pooling = "probe"   # an attention-pooling head (clipviz.adapters.probe)
    crop = False        # resized to S × S, not cropped
    pixel_mean, pixel_std = SIGLIP_MEAN, SIGLIP_STD
    text_reads_one_token = False  # no text-token relevance (text_layers = 0)

    def __init__(self, model):
        super().__init__(model)
        if getattr(self.image_encoder, "head", None) is None:
            raise ClipvizError("this SigLIP vision tower has no attention-pooling head (vision_use_head=False)")
        self.num_layers += 1  # the pooling head counts as the last block
        self.text_layers = 0
        self.pad_id = getattr(model.config.text_config, "pad_token_id", None)

    def _geometry(self, vision):
        """SigLIP: from image_size; SigLIP 2 (NaFlex, patches in): S = patch · √num_patches."""
        self.naflex = hasattr(vision, "num_patches")
        self.patch = int(vision.patch_size)
        if not self.naflex:
            return super()._geometry(vision)
        grid = math.isqrt(int(vision.num_patches))
        return grid * self.patch, grid

    def tokenize(self, prompts):
        """Prompts → ids [P, 64] with the checkpoint's own tokenizer (attached by the loader, else
        ``AutoTokenizer`` of ``config._name_or_path``), padded to max_length."""
        tokenize = attached_tokenizer(self.model)
        if tokenize is None:
            name = getattr(self.model.config, "_name_or_path", "")
            if not name:
                raise ClipvizError("this SigLIP model has no tokenizer: load it with clipviz.load('hf:REPO') or call "
                                   "clipviz.adapters.attach_tokenizer(model, tokenize)")
            from transformers import AutoTokenizer
            try:
                tokenize = hf_tokenize(AutoTokenizer.from_pretrained(name), self.context_length, self.naflex)
            except (OSError, ValueError, ImportError) as error:
                raise ClipvizError(f"could not load the tokenizer of {name!r}: {error}") from None
            attach_tokenizer(self.model, tokenize)
        return _checked_ids(tokenize, list(prompts), self.context_length)

    def eot_positions(self, ids):
        """SigLIP's text tower pools its last position."""
        return torch.full(ids.shape[:1], ids.shape[-1] - 1, dtype=torch.long, device=ids.device)

    def encode_image(self, pixels):
        """[B, 3, S, S] normalised with CLIP's statistics → [B, E] (re-normalised to SigLIP's first)."""
        pixels = renormalise(pixels, self.pixel_mean, self.pixel_std)
        with eager_attention(self.model):
            if not self.naflex:
                return _features(self.model.get_image_features(pixel_values=pixels))
            batch, g, p = pixels.shape[0], self.patch_grid, self.patch
            patches = pixels.reshape(batch, 3, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(batch, g * g, p * p * 3)
            shapes = torch.tensor([[g, g]] * batch, device=pixels.device)
            mask = torch.ones(batch, g * g, dtype=torch.long, device=pixels.device)
            return _features(self.model.get_image_features(pixel_values=patches, pixel_attention_mask=mask,
                                                           spatial_shapes=shapes))

    def encode_text(self, ids):
        """[P, 64] → [P, E]; SigLIP 2 masks its padding as its processor does, SigLIP reads it all."""
        mask = None if not self.naflex or self.pad_id is None else (ids != self.pad_id).long()
        with eager_attention(self.model):
            return _features(self.model.get_text_features(input_ids=ids, attention_mask=mask))

    def logit_bias(self):
        return self.model.logit_bias.reshape(())

    def image_recorder(self, needs, recompute=False):
        """The probe recorder; recompute is ignored: the pooling head is not one more residual block,
        so the one-graph backward is used."""
        if needs.layers is None and not needs.features:
            return None
        return ProbeRecorder(self.image_encoder, needs)

    def probe_readout(self, tokens):
        """The pooling head on a block's tokens [B, N, D] → (embedding [B, E], its probe attention
        [B, H, 1, N] in the graph). As the authors' LeGrad for SigLIP, the tower's last LayerNorm
        is not applied before the head."""
        return pooling_head_forward(self.image_encoder.head, tokens)
