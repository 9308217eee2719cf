"""open_clip models (``pip install clipviz[openclip]``): ``openclip:ARCH/PRETRAINED`` specs and an adapter.

open_clip's CLIP keeps OpenAI's module layout (``visual.transformer.resblocks`` of
``ResidualAttentionBlock`` with ``nn.MultiheadAttention``, ``visual.ln_post``/``proj``, text
``transformer``), so the recorder hooks it unmodified. What differs, and lives here: loading by
architecture and pretrained tag, the text pooling rule (``argmax`` or ``eos``), the image
normalisation a checkpoint was trained with, and which of its many towers clipviz can explain
(ViT with CLS pooling, ModifiedResNet, and timm ViTs pooled by attention — SigLIP and SigLIP 2,
clipviz.adapters.timm and clipviz.adapters.probe; not Hugging Face towers, open_clip's own
attentional pooling or mean pooling). SigLIP's score is logit_scale · cos + logit_bias; its
tokenizer is open_clip's own for the architecture (``open_clip.get_tokenizer``).

    model, preprocess = clipviz.load("openclip:ViT-B-16/laion2b_s34b_b88k")
    model, preprocess = clipviz.load("openclip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
"""

import difflib
from pathlib import Path

import torch

from ..errors import ClipvizError
from ..forms import unwrap
from ..preprocess import MEAN, STD
from . import ClipAdapter, attach_tokenizer, import_extra, too_long


def parse_spec(spec):
    """'ARCH/PRETRAINED' → (arch, pretrained); 'hf-hub:ORG/REPO' → (that, None)."""
    spec = spec.strip()
    if spec.startswith(("hf-hub:", "local-dir:")):
        return spec, None
    arch, _, pretrained = spec.partition("/")
    if not arch or not pretrained:
        raise ClipvizError(
            f"'openclip:{spec}' names no weights: write 'openclip:ARCH/PRETRAINED', e.g. "
            "'openclip:ViT-B-16/laion2b_s34b_b88k' (open_clip.list_pretrained() lists them)")
    return arch, pretrained


def load_openclip(spec, device):
    """Build (and on first use download) an open_clip model: returns ``(model, preprocess)`` in eval mode.

    spec: 'ARCH/PRETRAINED' (a tag or a checkpoint file) or 'hf-hub:ORG/REPO'.
    """
    from ..preprocess import Preprocess

    open_clip = import_extra("open_clip", "openclip:", "openclip")
    arch, pretrained = parse_spec(spec)
    if pretrained is None:
        model = _create(open_clip, arch, None, device)
    else:
        _check_names(open_clip, arch, pretrained)
        model = _create(open_clip, arch, pretrained, device)
    model.eval()
    adapter = OpenClipAdapter(model)  # refuse towers clipviz cannot explain now, not mid-explanation
    if adapter.vocab_size != 49408:  # not CLIP's BPE: open_clip's tokenizer for the architecture
        attach_tokenizer(model, _lazy_tokenizer(open_clip, arch))
    return model, Preprocess(adapter.input_resolution, crop=adapter.crop)


def _lazy_tokenizer(open_clip, arch):
    """open_clip.get_tokenizer(arch), built on first use (it may fetch its files from the Hub).

    open_clip's HFTokenizer (SigLIP's and other Hub tokenizers) cuts a long prompt to its context
    without a word: each prompt is measured with the library's own tokenizer, uncut, first, and
    one that does not fit is refused (clipviz.adapters.too_long) rather than explained cut."""
    made = []

    def tokenize(prompts):
        if not made:
            try:
                made.append(open_clip.get_tokenizer(arch))
            except (OSError, ValueError, ImportError) as error:
                raise ClipvizError(f"could not load open_clip's tokenizer for {arch}: {error}") from None
        tokenizer = made[0]
        ids = tokenizer(prompts)
        inner = getattr(tokenizer, "tokenizer", None)  # the transformers tokenizer inside an HFTokenizer
        if callable(inner) and getattr(tokenizer, "tokenizer_mode", None) != "clips":
            clean = getattr(tokenizer, "clean_fn", None) or (lambda text: text)
            for prompt, row in zip(prompts, inner([clean(p) for p in prompts], truncation=False)["input_ids"]):
                if len(row) > ids.shape[-1]:
                    raise too_long(prompt, len(row), ids.shape[-1])
        return ids
    return tokenize


def _check_names(open_clip, arch, pretrained):
    models = open_clip.list_models()
    if arch not in models:
        close = difflib.get_close_matches(arch, models, n=5)
        raise ClipvizError(f"open_clip has no architecture {arch!r}"
                           + (f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"))
    if Path(pretrained).expanduser().is_file():
        return
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags:
        raise ClipvizError(f"open_clip has no weights {pretrained!r} for {arch}; "
                           + (f"choose one of: {', '.join(tags)}" if tags else "it publishes none: pass a checkpoint file"))


def _create(open_clip, arch, pretrained, device):
    try:
        return open_clip.create_model(arch, pretrained=pretrained, device=device)
    except (OSError, RuntimeError, ValueError) as error:  # download, cache or checkpoint problems
        raise ClipvizError(f"open_clip could not build {arch}{'/' + pretrained if pretrained else ''}: {error}") from None


class OpenClipAdapter(ClipAdapter):
    """An open_clip ``CLIP`` or ``CustomTextCLIP`` with a ViT (CLS pooling) or ModifiedResNet image tower."""

    family_name = "this open_clip model"

    def __init__(self, model):
        self.model = model
        visual = unwrap(model.visual)
        self.family = tower_family(visual)
        self.image_encoder = visual
        self.input_resolution, self.patch_grid = tower_geometry(visual, self.family)
        if type(visual).__name__ == "TimmModel":  # SigLIP: a timm ViT and its attention pool
            self.pooling = "probe"
            self.num_layers = len(visual.trunk.blocks) + 1  # + the pool (clipviz.adapters.probe)
        else:
            self.num_layers = len(visual.transformer.resblocks) if self.family == "vit" else 1  # ResNet: last stage
        text = unwrap(getattr(model, "text", None))
        self.text_encoder = unwrap(model.transformer if hasattr(model, "transformer") else getattr(text, "transformer", None))
        self.text_layers = len(self.text_encoder.resblocks) if self.text_encoder is not None else 0
        self.context_length = model.context_length
        self.vocab_size = model.vocab_size
        owner = model if hasattr(model, "text_pool_type") else text
        self.text_pool = getattr(owner, "text_pool_type", None) or getattr(owner, "pool_type", "argmax")
        self.eos_id = getattr(owner, "text_eos_id", None) or getattr(owner, "eos_id", None)
        if self.text_pool == "last":  # SigLIP: no EOT row to read text-token relevance from
            self.text_layers = 0
        self._text_owner = owner if hasattr(owner, "ln_final") else model
        # a CoCa-style text tower pools an appended CLS token after its norm: not head(one token)
        self.text_reads_one_token = self.text_pool in ("argmax", "eos", "first") \
            and getattr(self._text_owner, "cls_emb", None) is None
        self.pixel_mean, self.pixel_std = pixel_statistics(visual)
        self.crop = (getattr(visual, "preprocess_cfg", None) or {}).get("resize_mode") != "squash"

    def logit_bias(self):
        bias = getattr(self.model, "logit_bias", None)
        return None if bias is None else bias.reshape(())

    def image_recorder(self, needs, recompute=False):
        """As ClipAdapter's; an attention-pooling tower keeps its one-graph backward (the pool reads
        the last block's output besides the probe: not one residual stream to recompute)."""
        if self.pooling != "probe":
            return super().image_recorder(needs, recompute)
        if needs.layers is None and not needs.features:
            return None
        from .probe import ProbeRecorder
        return ProbeRecorder(self.image_encoder, needs)

    def probe_readout(self, tokens):
        """The attention pool on a block's tokens [B, N, D] → (embedding [B, E], its attention
        [B, H, 1, N] in the graph), as the authors' LeGrad for SigLIP reads it (no final norm)."""
        from .timm import pool_forward
        return pool_forward(self.image_encoder.trunk.attn_pool, tokens)

    def eot_positions(self, ids):
        """The token the text tower pools: EOT by argmax, the first eos id, or first/last position."""
        if self.text_pool == "eos":
            return (ids == self.eos_id).int().argmax(dim=-1)
        if self.text_pool == "last":
            return torch.full(ids.shape[:1], ids.shape[-1] - 1, dtype=torch.long, device=ids.device)
        if self.text_pool == "first":
            return torch.zeros(ids.shape[:1], dtype=torch.long, device=ids.device)
        return ids.argmax(dim=-1)

    def text_end_positions(self, ids):
        """Each prompt's end-of-text token [P]; a tower pooled at its first token still has its words
        up to there: CLIP's EOT (the highest id) with CLIP's BPE, else the first eos id."""
        if self.text_pool != "first":
            return self.eot_positions(ids)
        if self.vocab_size == 49408 or self.eos_id is None:
            return ids.argmax(dim=-1)
        return (ids == self.eos_id).int().argmax(dim=-1)

    def encode_image(self, pixels):
        """[B, 3, S, S] normalised with CLIP's mean/std → [B, E]; re-normalised first if the
        checkpoint was trained with other statistics (an exact affine map of the same pixels)."""
        return self.model.encode_image(renormalise(pixels, self.pixel_mean, self.pixel_std))

    def image_head(self, tokens):
        """What the image tower does to its pooled token: ln_post, then proj. [..., D] → [..., E]."""
        visual = self.image_encoder
        out = visual.ln_post(tokens)
        return out if visual.proj is None else out @ visual.proj

    def text_head_modules(self):
        projection = self._text_owner.text_projection
        return [self._text_owner.ln_final] + ([projection] if isinstance(projection, torch.nn.Module) else [])

    def text_head(self, tokens):
        """What the text tower does to its pooled token: ln_final, then text_projection (a matrix or
        an nn.Linear, or none). [..., D] → [..., E]."""
        owner = self._text_owner
        out = owner.ln_final(tokens)
        projection = owner.text_projection
        if projection is None:
            return out
        return projection(out) if isinstance(projection, torch.nn.Module) else out @ projection


def renormalise(pixels, mean, std):
    """Pixels normalised with CLIP's (MEAN, STD) → the same pixels normalised with (mean, std)."""
    if tuple(mean) == tuple(MEAN) and tuple(std) == tuple(STD):
        return pixels
    view = dict(dtype=pixels.dtype, device=pixels.device)
    raw = pixels * torch.tensor(STD, **view).view(3, 1, 1) + torch.tensor(MEAN, **view).view(3, 1, 1)
    return (raw - torch.tensor(mean, **view).view(3, 1, 1)) / torch.tensor(std, **view).view(3, 1, 1)


def tower_family(visual):
    """"vit" or "resnet" for an open_clip image tower clipviz can explain; a ClipvizError otherwise."""
    kind = type(visual).__name__
    if kind == "VisionTransformer":
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise ClipvizError(
                "this open_clip ViT pools its tokens by attentional or mean pooling, not the CLS token; "
                "clipviz explains CLS-pooled ViTs (CLIP, LAION, DataComp, MetaCLIP …) and ResNets")
        return "vit"
    if kind == "ModifiedResNet":
        return "resnet"
    if kind == "TimmModel":
        from .timm import siglip_trunk
        siglip_trunk(visual)
        return "vit"
    raise ClipvizError(f"clipviz cannot explain open_clip's {kind} image tower (timm / Hugging Face towers); "
                       "use a ViT or ModifiedResNet architecture")


def pixel_statistics(visual):
    """(mean, std) the tower's checkpoint was trained with (CLIP's when it does not say)."""
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    return tuple(cfg.get("mean", MEAN)), tuple(cfg.get("std", STD))


def tower_geometry(visual, family):
    """(input side S, patch grid g) of an open_clip image tower; a ClipvizError for a tower whose
    input or patch grid is not square (clipviz's crops, maps and methods are g × g)."""
    if type(visual).__name__ == "TimmModel":
        from .timm import trunk_geometry
        return trunk_geometry(visual.trunk)
    size = _pair(visual.image_size)
    patch = _pair(visual.patch_size) if family == "vit" else (32, 32)
    grid = (size[0] // patch[0], size[1] // patch[1])
    if size[0] != size[1] or grid[0] != grid[1]:
        raise ClipvizError(
            f"this open_clip image tower is not square (input {size[0]}×{size[1]}, patch grid {grid[0]}×{grid[1]}); "
            "clipviz explains square inputs with a square patch grid: build the tower with a square image_size "
            "and patch_size")
    return size[0], grid[0]


def _pair(size):
    return tuple(int(s) for s in size) if isinstance(size, (tuple, list)) else (int(size), int(size))
