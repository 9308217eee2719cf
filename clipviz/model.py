"""The CLIP architecture (Radford et al. 2021), parameter-for-parameter compatible with OpenAI's.

Every official checkpoint (RN50 ... RN50x64, ViT-B/32 ... ViT-L/14@336px) loads into these classes
with ``strict=True``: parameter names and shapes are identical to openai/CLIP's ``clip/model.py``.
``build_model(state_dict)`` reads every hyper-parameter off the tensors' shapes, so one loader
serves every checkpoint, including the project's own small ``synth-vit-t16``.

Transformers here run batch-first ([B, N, D]); the official code is sequence-first. The layout
changes no parameter, only where the batch axis sits inside ``forward``.
"""

import numbers
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .activation import check_activation
from .errors import ClipvizError


class LayerNorm(nn.LayerNorm):
    """LayerNorm with fp32 statistics, returned in the input's dtype.

    fp16/bf16 statistics lose precision. torch's layer_norm kernels (CPU and CUDA) accumulate
    half inputs in fp32, so an input in the weights' dtype takes one kernel; an input in another
    dtype (fp16 activations with fp32 weights, say) is computed in fp32, weights cast too (a half
    model on the CPU would otherwise mix an fp32 input with fp16 weights, which torch refuses).
    """

    def forward(self, x):
        if self.weight is None or x.dtype == self.weight.dtype:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type(x.dtype)


class QuickGELU(nn.Module):
    """x · σ(1.702 x): the GELU approximation the OpenAI checkpoints were trained with."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


# The MLP activation a checkpoint was trained with (see clipviz.activation): nothing in a state
# dict records it. OpenAI's checkpoints use QuickGELU, most open_clip ones the exact erf GELU.
ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}


class Bottleneck(nn.Module):
    """ResNet bottleneck with anti-aliased downsampling (an avgpool before the strided path)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        # all convolutions have stride 1; an avgpool does the downsampling (anti-aliasing)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """QKV attention pooling: the spatial mean token queries all positions.

    Input ``[B, C, h, w]``; output ``[B, output_dim]``. The key/value sequence is
    ``[mean, pos_1 .. pos_hw]`` plus a learned positional embedding ``[hw + 1, C]``.
    """

    def __init__(self, spacial_dim, embed_dim, num_heads, output_dim=None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spacial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads

    def tokens(self, x):
        """``[B, C, h, w]`` → sequence-first tokens ``[hw + 1, B, C]`` with positions added."""
        x = x.flatten(start_dim=2).permute(2, 0, 1)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        return x + self.positional_embedding[:, None, :].to(x.dtype)

    def forward(self, x):
        x = self.tokens(x)
        x, _ = F.multi_head_attention_forward(
            query=x[:1], key=x, value=x,
            embed_dim_to_check=x.shape[-1], num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight, in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=self.c_proj.weight, out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True, training=self.training, need_weights=False,
        )
        return x.squeeze(0)


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: a 3-conv stem with avgpool, anti-aliased strided blocks, attention pooling."""

    def __init__(self, layers, output_dim, heads, input_resolution=224, width=64):
        super().__init__()
        self.output_dim = output_dim
        self.input_resolution = input_resolution
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)

        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)

        embed_dim = width * 32  # the ResNet feature dimension
        self.attnpool = AttentionPool2d(input_resolution // 32, embed_dim, heads, output_dim)

    def _make_layer(self, planes, blocks, stride=1):
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def forward(self, x):
        x = self.stem(x.type(self.conv1.weight.dtype))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)). ``x``: [B, N, D].

    Attention runs through ``nn.MultiheadAttention`` with ``need_weights=False`` (the fused
    kernel). ``clipviz.hooks.AttentionRecorder`` flips that flag from the outside while it
    records; nothing here knows about recording.
    """

    def __init__(self, d_model, n_head, attn_mask=None, activation="quick_gelu"):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head, batch_first=True)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, d_model * 4)),
            ("gelu", ACTIVATIONS[activation]()),
            ("c_proj", nn.Linear(d_model * 4, d_model)),
        ]))
        self.ln_2 = LayerNorm(d_model)
        self.attn_mask = attn_mask  # a plain attribute, as in the official code: not in the state dict

    def attention(self, x):
        mask = None if self.attn_mask is None else self.attn_mask.to(dtype=x.dtype, device=x.device)
        return self.attn(x, x, x, need_weights=False, attn_mask=mask)[0]

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of ``layers`` ResidualAttentionBlocks; ``[B, N, width]`` in and out."""

    batch_first = True  # read by the recorder to find the token axis

    def __init__(self, width, layers, heads, attn_mask=None, activation="quick_gelu"):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask, activation)
                                         for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """ViT image encoder: patches → [CLS, patches] + positions → blocks → ln_post(CLS) @ proj.

    Input ``[B, 3, R, R]``, output ``[B, output_dim]``. The token sequence has
    ``N = 1 + patch_grid**2`` entries, CLS first.
    """

    def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim,
                 activation="quick_gelu"):
        super().__init__()
        self.input_resolution = input_resolution
        self.patch_size = patch_size
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads, activation=activation)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    @property
    def patch_grid(self):
        """Patches per side: 7 for /32 at 224, 14 for /16, 24 for L/14@336."""
        return self.input_resolution // self.patch_size

    def embed(self, x):
        """Pixels ``[B, 3, R, R]`` → tokens ``[B, 1 + g*g, width]`` entering the first block."""
        x = self.conv1(x.type(self.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def forward(self, x):
        x = self.transformer(self.embed(x))
        return self.ln_post(x[:, 0, :]) @ self.proj


class CLIP(nn.Module):
    """Image encoder (ViT or ModifiedResNet) + causal text transformer, joined by cosine similarity.

    ``activation``: the transformers' MLP non-linearity, "quick_gelu" (OpenAI) or "gelu".
    """

    def __init__(self, embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                 context_length, vocab_size, transformer_width, transformer_heads, transformer_layers,
                 activation="quick_gelu"):
        super().__init__()
        check_activation(activation)
        self.context_length = context_length
        if isinstance(vision_layers, (tuple, list)):
            self.visual = ModifiedResNet(
                layers=vision_layers, output_dim=embed_dim, heads=vision_width * 32 // 64,
                input_resolution=image_resolution, width=vision_width)
        else:
            self.visual = VisionTransformer(
                input_resolution=image_resolution, patch_size=vision_patch_size, width=vision_width,
                layers=vision_layers, heads=vision_width // 64, output_dim=embed_dim,
                activation=activation)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads,
                                       attn_mask=causal_mask(context_length), activation=activation)
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * torch.log(torch.tensor(1 / 0.07)))
        self.initialize_parameters()

    def initialize_parameters(self):
        """The official initialisation (used for random-weight models and training from scratch)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            std = pool.c_proj.in_features ** -0.5
            for linear in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(linear.weight, std=std)
            for stage in (self.visual.layer1, self.visual.layer2, self.visual.layer3, self.visual.layer4):
                for name, param in stage.named_parameters():
                    if name.endswith("bn3.weight"):
                        nn.init.zeros_(param)
        width, layers = self.transformer.width, self.transformer.layers
        proj_std = (width ** -0.5) * ((2 * layers) ** -0.5)
        attn_std = width ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    def encode_image(self, image):
        """``[B, 3, R, R]`` normalised pixels → image embeddings ``[B, embed_dim]`` (not normalised)."""
        return self.visual(image.type(self.dtype))

    def encode_text(self, text):
        """Token ids ``[P, context_length]`` → text embeddings ``[P, embed_dim]`` (not normalised).

        The embedding is read at the EOT token, the highest id in each row.
        """
        x = self.token_embedding(text).type(self.dtype) + self.positional_embedding.type(self.dtype)
        x = self.ln_final(self.transformer(x)).type(self.dtype)
        return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

    def forward(self, image, text):
        """Returns ``(logits_per_image [B, P], logits_per_text [P, B])`` = logit_scale · cosine."""
        image_features = F.normalize(self.encode_image(image), dim=-1)
        text_features = F.normalize(self.encode_text(text), dim=-1)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


def causal_mask(context_length):
    """Additive mask ``[L, L]``: 0 on and below the diagonal, -inf above (text attends leftwards)."""
    return torch.full((context_length, context_length), float("-inf")).triu_(1)


def _count_blocks(state_dict, prefix):
    return len({key.split(".")[2] for key in state_dict if key.startswith(prefix)})


def model_config(state_dict):
    """Read CLIP's constructor arguments off the tensor shapes of an OpenAI-format state dict."""
    if "visual.proj" not in state_dict and "visual.layer1.0.conv1.weight" not in state_dict:
        missing = "visual.proj" if "visual.conv1.weight" in state_dict and state_dict["visual.conv1.weight"].dim() == 4 \
            and state_dict["visual.conv1.weight"].shape[1] == 3 and "visual.class_embedding" in state_dict \
            else "visual.proj (ViT) or visual.layer1.0.conv1.weight (ResNet)"
        raise ClipvizError(
            f"this is not an OpenAI-format CLIP state dict (no {missing} entry); "
            "pass the weights of an official CLIP checkpoint or one saved by clipviz")
    try:
        if "visual.proj" in state_dict:
            vision_width = state_dict["visual.conv1.weight"].shape[0]
            vision_layers = len([k for k in state_dict if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
            vision_patch_size = state_dict["visual.conv1.weight"].shape[-1]
            grid_size = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            image_resolution = vision_patch_size * grid_size
        else:
            vision_layers = tuple(
                len({k.split(".")[2] for k in state_dict if k.startswith(f"visual.layer{stage}.")})
                for stage in (1, 2, 3, 4))
            vision_width = state_dict["visual.layer1.0.conv1.weight"].shape[0]
            output_width = round((state_dict["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            vision_patch_size = None
            image_resolution = output_width * 32
        transformer_width = state_dict["ln_final.weight"].shape[0]
        return dict(
            embed_dim=state_dict["text_projection"].shape[1],
            image_resolution=image_resolution,
            vision_layers=vision_layers,
            vision_width=vision_width,
            vision_patch_size=vision_patch_size,
            context_length=state_dict["positional_embedding"].shape[0],
            vocab_size=state_dict["token_embedding.weight"].shape[0],
            transformer_width=transformer_width,
            transformer_heads=transformer_width // 64,
            transformer_layers=_count_blocks(state_dict, "transformer.resblocks"),
        )
    except (KeyError, IndexError, AttributeError, TypeError, ValueError) as error:
        raise ClipvizError(
            f"this is not an OpenAI-format CLIP state dict (no {error} entry); "
            "pass the weights of an official CLIP checkpoint or one saved by clipviz") from None


# Integers OpenAI's TorchScript archives keep beside the weights; not parameters of the model.
ARCHIVE_CONSTANTS = ("input_resolution", "context_length", "vocab_size")
SMALL_MODEL = 20_000_000  # parameters; below this build_model initialises on the CPU (start-up)


def _vit_parameters(config):
    """About how many parameters a ViT CLIP of ``config`` has (blocks: 12·width² each); ResNets
    count as large. Read off the config, not the state dict, so odd shapes cannot make it small."""
    if config["vision_patch_size"] is None:
        return float("inf")
    vision, text = config["vision_width"], config["transformer_width"]
    grid = config["image_resolution"] // config["vision_patch_size"]
    return (12 * (config["vision_layers"] * vision ** 2 + config["transformer_layers"] * text ** 2)
            + (3 * config["vision_patch_size"] ** 2 + grid ** 2 + 1 + config["embed_dim"]) * vision
            + (config["vocab_size"] + config["context_length"] + config["embed_dim"]) * text)


def check_finite(named_tensors, what="the state dict"):
    """Raise ClipvizError naming the first floating-point tensor that holds NaN or ±inf.

    named_tensors: (name, Tensor) pairs, e.g. ``state_dict.items()`` or ``model.named_parameters()``.
    One such weight makes every score NaN (or a random-looking map), so it is refused up front.
    """
    for name, tensor in named_tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = tensor.detach()[~torch.isfinite(tensor.detach())]
            kinds = " and ".join(k for k, n in (("NaN", bad.isnan().sum()), ("inf", bad.isinf().sum())) if n)
            raise ClipvizError(f"{what} is numerically broken: tensor {name} {tuple(tensor.shape)} holds "
                               f"{bad.numel():,} {kinds} values; the file is damaged or the model diverged "
                               "in training. Use an intact checkpoint")


def build_model(state_dict, dtype=torch.float32, activation="quick_gelu"):
    """Build a CLIP from an OpenAI-format state dict; every size is read off the tensor shapes.

    Like openai/clip's ``build_model``, but the model is returned in ``dtype`` (fp32 by default,
    so fp16 checkpoints run on CPU) and in eval mode. Missing or unexpected keys raise
    ``ClipvizError`` naming the first mismatches, as do weights that hold NaN or ±inf
    (naming the tensor).

    ``activation`` is the MLP non-linearity the weights were trained with, which no state dict
    records: "quick_gelu" (x·σ(1.702x), every OpenAI checkpoint and open_clip's ``-quickgelu``
    models) or "gelu" (exact GELU, most open_clip models: LAION, DataComp, ...). The wrong one
    still runs but gives different embeddings and maps.
    """
    check_activation(activation)
    # own copies in the target dtype: the model must never share storage with the caller's dict
    state_dict = {k: v.to(dtype, copy=True) if v.is_floating_point() else v.clone()
                  for k, v in state_dict.items() if k not in ARCHIVE_CONSTANTS}
    check_finite(state_dict.items())
    config = model_config(state_dict)
    try:
        if _vit_parameters(config) > SMALL_MODEL:
            with torch.device("meta"):  # no random initialisation: every weight comes from the state dict
                model = CLIP(**config, activation=activation)
        else:  # the meta device's first use imports torch._dynamo (~1 s): more than a small model's init
            with torch.random.fork_rng(devices=[]):  # leave the caller's random stream as it was
                model = CLIP(**config, activation=activation)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as error:  # shapes no CLIP can have
        raise ClipvizError(f"the state dict's shapes do not fit the CLIP architecture ({error}); "
                           "is it an OpenAI-format CLIP checkpoint?") from None
    try:
        result = model.load_state_dict(state_dict, strict=False, assign=True)
    except RuntimeError as error:  # shape mismatches
        first = str(error).split("\n\t")[1] if "\n\t" in str(error) else str(error)
        raise ClipvizError(f"the state dict does not match the CLIP architecture: {first.strip()}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} keys (first: {', '.join(result.missing_keys[:3])})")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected keys (first: {', '.join(result.unexpected_keys[:3])})")
    if problems:
        raise ClipvizError(
            "the state dict does not match the CLIP architecture: " + "; ".join(problems)
            + ". Is it an OpenAI-format CLIP checkpoint? open_clip and Hugging Face models load "
            "through the 'openclip:' and 'hf:' specs instead")
    mask = causal_mask(config["context_length"])  # a plain attribute, so not in the state dict
    for block in model.transformer.resblocks:
        block.attn_mask = mask
    return model.eval()


# Constructor arguments of the nine official OpenAI checkpoints (as build_model reads them).
_TEXT = dict(context_length=77, vocab_size=49408, transformer_layers=12)
OFFICIAL_CONFIGS = {
    "RN50": dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64,
                 vision_patch_size=None, transformer_width=512, transformer_heads=8, **_TEXT),
    "RN101": dict(embed_dim=512, image_resolution=224, vision_layers=(3, 4, 23, 3), vision_width=64,
                  vision_patch_size=None, transformer_width=512, transformer_heads=8, **_TEXT),
    "RN50x4": dict(embed_dim=640, image_resolution=288, vision_layers=(4, 6, 10, 6), vision_width=80,
                   vision_patch_size=None, transformer_width=640, transformer_heads=10, **_TEXT),
    "RN50x16": dict(embed_dim=768, image_resolution=384, vision_layers=(6, 8, 18, 8), vision_width=96,
                    vision_patch_size=None, transformer_width=768, transformer_heads=12, **_TEXT),
    "RN50x64": dict(embed_dim=1024, image_resolution=448, vision_layers=(3, 15, 36, 10), vision_width=128,
                    vision_patch_size=None, transformer_width=1024, transformer_heads=16, **_TEXT),
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=32, transformer_width=512, transformer_heads=8, **_TEXT),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=16, transformer_width=512, transformer_heads=8, **_TEXT),
    "ViT-L/14": dict(embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024,
                     vision_patch_size=14, transformer_width=768, transformer_heads=12, **_TEXT),
    "ViT-L/14@336px": dict(embed_dim=768, image_resolution=336, vision_layers=24, vision_width=1024,
                           vision_patch_size=14, transformer_width=768, transformer_heads=12, **_TEXT),
}


def random_model(name, seed=0, **overrides):
    """A random-weight CLIP with the architecture of an official checkpoint (eval mode, fp32).

    For tests, benchmarks and offline notebooks: the real shapes, none of the knowledge.
    ``overrides`` replace constructor arguments (e.g. ``transformer_layers=2`` for a cheap text tower).
    """
    if name not in OFFICIAL_CONFIGS:
        raise ClipvizError(f"unknown architecture {name!r}; choose one of {', '.join(OFFICIAL_CONFIGS)}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 63:
        raise ClipvizError(f"seed must be a whole number from 0 to 2**63 - 1 (torch.manual_seed's range), got {seed!r}")
    torch.manual_seed(seed)
    return CLIP(**{**OFFICIAL_CONFIGS[name], **overrides}).eval()


def architecture_mismatch(state_dict, name):
    """Why ``state_dict`` is not a checkpoint of the official architecture ``name``, or None.

    Compares every key and shape with a CLIP built from ``OFFICIAL_CONFIGS[name]`` on the meta
    device (no memory, no initialisation): a ViT-B/32 file offered as ViT-B/16, a fine-tuned
    model with a different head, a truncated conversion all differ somewhere. Returns a short
    text naming the first differences.
    """
    with torch.device("meta"):
        reference = CLIP(**OFFICIAL_CONFIGS[name])
    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state_dict.items() if key not in ARCHIVE_CONSTANTS}
    problems = []
    missing, extra = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    if missing:
        problems.append(f"{len(missing)} weights missing (first: {', '.join(missing[:2])})")
    if extra:
        problems.append(f"{len(extra)} unexpected weights (first: {', '.join(extra[:2])})")
    wrong = [key for key in expected if key in found and expected[key] != found[key]]
    if wrong:
        problems.append(f"{len(wrong)} weights of the wrong shape (first: {wrong[0]} is "
                        f"{list(found[wrong[0]])}, {name} has {list(expected[wrong[0]])})")
    return "; ".join(problems) or None
