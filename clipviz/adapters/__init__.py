"""One interface over the CLIP model families clipviz explains.

``adapt(model)`` returns an object with what ``explain`` needs (listed on ``ClipAdapter``). The
built-in adapter serves clipviz's own models and anything with OpenAI's module layout
(``visual.transformer.resblocks``, text ``transformer``, ``encode_image``/``encode_text``,
``logit_scale``), which includes the official OpenAI code. Other families register a matcher.
"""

import contextlib
import weakref

import torch

from ..errors import ClipvizError
from ..forms import check_materialised, unwrap

_FAMILIES = []  # (matches(model) -> bool, adapter class)
_TOKENIZERS = weakref.WeakKeyDictionary()  # model → tokenize(prompts) → ids, from its own library


def attach_tokenizer(model, tokenize):
    """Tokenize ``model``'s prompts with ``tokenize(list of str) → ids [P, context_length]`` (its own
    library's tokenizer; the loaders attach it, clipviz.load('hf:…' | 'openclip:…'))."""
    _TOKENIZERS[unwrap(model)] = tokenize


def attached_tokenizer(model):
    """The tokenizer attached to ``model`` (attach_tokenizer), or None."""
    return _TOKENIZERS.get(unwrap(model))


def register_family(matches, adapter_class):
    """Teach ``adapt`` a new model family; later registrations are tried first."""
    _FAMILIES.insert(0, (matches, adapter_class))


def adapt(model):
    """The adapter for ``model`` (an adapter passes through unchanged).

    Wrappers (DataParallel, DistributedDataParallel, torch.compile) are seen through, see
    clipviz.forms; an image tower alone gets a ``TowerAdapter`` (gradient-free methods only).
    """
    if isinstance(model, ClipAdapter):
        return model
    model = unwrap(model)
    check_materialised(model)
    for matches, adapter_class in _FAMILIES:
        if matches(model):
            return adapter_class(model)
    if hasattr(model, "visual") and hasattr(model, "encode_text") and hasattr(model, "logit_scale"):
        return ClipAdapter(model)
    from .tower import TowerAdapter, is_image_tower
    if is_image_tower(model):
        return TowerAdapter(model)
    raise ClipvizError(
        f"clipviz cannot explain a {type(model).__name__}: pass a model from clipviz.load() "
        "(official names, checkpoint paths, 'openclip:...' or 'hf:...' specs)")


class ClipAdapter:
    """OpenAI-layout CLIP (clipviz's own, OpenAI's code).

    image_encoder / text_encoder: modules whose ResidualAttentionBlocks the recorder hooks.
    family: "vit" or "resnet". patch_grid: g (tokens N = 1 + g*g). input_resolution: S.
    num_layers: what a method may record of the image tower: its blocks (ViT), or its one
    last stage (ResNet: 1). text_layers: the text tower's blocks.
    """

    def __init__(self, model):
        self.model = model
        visual = unwrap(model.visual)
        self.image_encoder = visual
        self.text_encoder = unwrap(model.transformer)
        self.family = "vit" if hasattr(visual, "transformer") else "resnet"
        self.input_resolution = _resolution(visual)
        if self.family == "vit":
            patch = visual.conv1.kernel_size[0]
            self.patch_grid = self.input_resolution // patch
            self.num_layers = len(visual.transformer.resblocks)
        else:
            self.patch_grid = self.input_resolution // 32
            self.num_layers = 1  # the last stage
        self.text_layers = len(self.text_encoder.resblocks)
        self.context_length = getattr(model, "context_length", 77)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.image_encoder.parameters()).dtype

    family_name = "this model"  # how errors name the model family
    pooling = "cls"  # or "probe": an attention-pooling head (clipviz.adapters.probe)
    crop = True      # images resized and centre-cropped (CLIP); False: resized to S × S
    vocab_size = 49408  # CLIP's BPE; families read their text tower's own size

    def tokenize(self, prompts):
        """Prompts → ids [P, context_length] (raises ClipvizError for over-long prompts, or for a
        text tower built for another tokenizer)."""
        attached = attached_tokenizer(self.model)
        if attached is not None:
            return _checked_ids(attached, list(prompts), self.context_length)
        if self.vocab_size != 49408:
            raise ClipvizError(f"{self.family_name}'s text tower uses another tokenizer (vocabulary of "
                               f"{self.vocab_size}); clipviz tokenizes with CLIP's BPE (49408 tokens)")
        from ..tokenizer import tokenize
        return tokenize(prompts, context_length=self.context_length)

    def eot_positions(self, ids):
        """Index of the token the text embedding is read at, each row of ``ids`` [P, Lt] → [P]:
        CLIP's EOT (the highest id)."""
        return ids.argmax(dim=-1)

    def text_end_positions(self, ids):
        """Index of each prompt's end-of-text token [P]: its word tokens are 1 … end − 1. The
        pooled token (eot_positions) unless a tower reads another one (open_clip's "first")."""
        return self.eot_positions(ids)

    def encode_image(self, pixels):
        """[B, 3, S, S] → [B, E]."""
        return self.model.encode_image(pixels)

    def running(self):
        """A context manager for the setting the model's blocks run in, also when one block is run
        again on its own (a recomputing backward): nothing to set for OpenAI's layout."""
        return contextlib.nullcontext()

    def encode_text(self, ids):
        """[P, Lt] → [P, E]."""
        return self.model.encode_text(ids)

    def logit_scale(self):
        return self.model.logit_scale.exp()

    def logit_bias(self):
        """The constant added to logit_scale · cos (SigLIP's logit_bias), or None (CLIP)."""
        return None

    def image_recorder(self, needs, recompute=False):
        """A recorder of the image tower for a method's ``needs`` (clipviz.methods.base.Needs): a
        context manager with check_recorded(), backward(score, slot) and collect(records).
        recompute: a ViT's blocks recomputed one at a time in backward_batched (clipviz.hooks.
        AttentionRecorder); a ResNet's recorder ignores it."""
        if self.family == "resnet":
            from .resnet import ResNetRecorder
            return ResNetRecorder(self.image_encoder, needs)
        if needs.layers is None and not needs.features:
            return None
        from .vit import ViTRecorder
        return ViTRecorder(self.image_encoder, needs, recompute=recompute)

    def image_head(self, tokens):
        """The ViT's head on a token: ln_post, then proj. [..., D] → [..., E] (LeGrad reads block
        outputs through it)."""
        visual = self.image_encoder
        return visual.ln_post(tokens) @ visual.proj

    def image_head_modules(self):
        """The modules image_head calls (a hook on one keeps the closed form off, clipviz.last_block)."""
        return [self.image_encoder.ln_post]

    def text_head_modules(self):
        """The modules text_head calls."""
        return [self.model.ln_final]

    # True when the text embedding is text_head(the last block's output at one token, the EOT of
    # eot_positions): text-token relevance then has a closed form (clipviz.last_block)
    text_reads_one_token = True

    def text_head(self, tokens):
        """What the text tower does to its EOT token: ln_final, then text_projection. [..., D] → [..., E]."""
        return self.model.ln_final(tokens) @ self.model.text_projection


def _checked_ids(tokenize, prompts, context_length):
    """``tokenize`` (a library's tokenizer, padding to its max_length without truncating) over
    ``prompts`` → a [P, context_length] long tensor; for over-long prompts one ClipvizError naming
    the longest and its length in this tokenizer's tokens. Each prompt is tokenized alone: a batch
    with a long prompt among short ones is ragged, which a tokenizer cannot make one tensor."""
    rows = [torch.as_tensor(tokenize([prompt]), dtype=torch.long).reshape(1, -1) for prompt in prompts]
    lengths = [row.shape[-1] for row in rows]
    longest = max(range(len(prompts)), key=lengths.__getitem__)
    if lengths[longest] > context_length:
        raise too_long(prompts[longest], lengths[longest], context_length)
    return torch.cat(rows)


def too_long(prompt, length, context_length):
    """The ClipvizError for ``prompt``, ``length`` tokens of the model's own tokenizer, where its
    text tower takes ``context_length``."""
    text = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    return ClipvizError(f"prompt {text!r} is {length} tokens long, more than the {context_length} that this "
                        "model's text tower takes; shorten it")


def _resolution(visual):
    size = getattr(visual, "input_resolution", None) or getattr(visual, "image_size", None)
    if isinstance(size, (tuple, list)):
        size = size[0]
    if not size:
        raise ClipvizError("cannot tell the model's input resolution (no visual.input_resolution)")
    return int(size)


def import_extra(name, spec_prefix, extra):
    """Import an optional model library, or raise a ClipvizError saying what to install.

    A library that is installed but fails to import (a dependency missing, or a torchvision
    build that does not match torch) gets its own message: reinstalling clipviz would not help.
    """
    from importlib import import_module
    try:
        return import_module(name)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] == name:
            raise ClipvizError(f"'{spec_prefix}' models need the {name} package: pip install clipviz[{extra}]") from None
        raise ClipvizError(f"{name} is installed but cannot be imported: it needs {error.name!r}; "
                           "install that, then retry") from None
    except (ImportError, RuntimeError, OSError) as error:
        raise ClipvizError(f"{name} is installed but cannot be imported ({type(error).__name__}: {error}); "
                           "if it names torchvision, install the build that matches your torch") from None


def _optional_family(module_name, class_name):
    """An adapter factory that imports its module (and so its library) only when a model matches."""
    def make(model):
        from importlib import import_module
        return getattr(import_module(module_name, __name__), class_name)(model)
    return make


def _library(model):
    return type(model).__module__.split(".")[0]


# matched by the model class's home, so that matching imports neither open_clip nor transformers
register_family(lambda model: _library(model) == "open_clip" and hasattr(model, "visual"),
                _optional_family(".openclip", "OpenClipAdapter"))
register_family(lambda model: _library(model) == "transformers" and hasattr(model, "vision_model")
                and hasattr(model, "text_model"),
                _optional_family(".huggingface", "HuggingFaceAdapter"))
register_family(lambda model: _library(model) == "transformers" and type(model).__name__ in ("SiglipModel", "Siglip2Model"),
                _optional_family(".siglip", "SiglipAdapter"))


# model families loaded through their own library (not registered names), as ``clipviz models`` lists them
LIBRARY_SPECS = (
    ("openclip:ViT-B-16/laion2b_s34b_b88k", "open_clip CLIP ViTs and ResNets (pip install clipviz[openclip])"),
    ("openclip:ViT-B-16-SigLIP/webli", "open_clip SigLIP / SigLIP 2 on timm towers, attention-pooled"),
    ("hf:openai/clip-vit-base-patch32", "Hugging Face CLIPModel (pip install clipviz[hf])"),
    ("hf:google/siglip-base-patch16-224", "Hugging Face SiglipModel, attention-pooled"),
    ("hf:google/siglip2-base-patch16-naflex", "Hugging Face Siglip2Model (NaFlex), attention-pooled"),
)


def load_spec(spec, device):
    """Load an 'openclip:...' or 'hf:...' model spec; the family modules come with their extras."""
    if spec.startswith("openclip:"):
        from .openclip import load_openclip
        return load_openclip(spec[len("openclip:"):], device)
    if spec.startswith("hf:"):
        from .huggingface import load_hf
        return load_hf(spec[len("hf:"):], device)
    raise ClipvizError(f"unknown model spec {spec!r}: use 'openclip:ARCH/PRETRAINED' or 'hf:REPO_ID'")


def scores_from_embeddings(image_emb, text_emb, logit_scale, logit_bias=None):
    """cosine [B, P] and logit_scale · cosine (+ logit_bias) [B, P] (CLIP's and SigLIP's logits_per_image)."""
    cosine = torch.nn.functional.normalize(image_emb.float(), dim=-1) @ torch.nn.functional.normalize(text_emb.float(), dim=-1).t()
    logits = logit_scale.float() * cosine
    return cosine, logits if logit_bias is None else logits + logit_bias.float()
