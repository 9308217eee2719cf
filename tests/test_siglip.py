"""SigLIP and SigLIP 2: Hugging Face ``SiglipModel`` / ``Siglip2Model`` and open_clip's
``ViT-B-16-SigLIP`` (a timm tower), all with random weights from their exact public configs.

The SigLIP tokenizers (SentencePiece, Gemma) cannot be had offline, so the prompts go through a
small hand-built tokenizer with the loaders' interface (prompts → ids [P, 64], padded to
max_length; ``clipviz.adapters.attach_tokenizer``). Real users get the checkpoint's own.

What is checked against independent numbers:
- scores: the library's own forward (HF's SDPA path, timm's fused kernels) gives the cosines and
  the logits logit_scale · cos + logit_bias that clipviz explains;
- attention: the probe's attention from the head's own ``nn.MultiheadAttention(need_weights=True)``;
- LeGrad: the authors' ``compute_legrad_siglip`` re-implemented below (≤ 1e-5 after min-max);
- the same weights in HF and open_clip give the same maps for every method;
- a hand-built toy whose relevance map is known in closed form;
- preprocessing: SigLIP's and SigLIP 2's own image processors.
"""

import math
import sys

import numpy as np
import pytest
import torch

import clipviz
from clipviz.adapters import adapt, attach_tokenizer
from clipviz.methods import get_method
from clipviz.pipeline import run_method
from clipviz.preprocess import preprocess_image

import torchvision_shim

METHODS = ["rollout", "relevance", "attention", "gradcam", "legrad", "gradeclip"]
PROMPTS = ["a photo of a dog", "a red car"]


@pytest.fixture(scope="module", autouse=True)
def libraries():
    """transformers (its SigLIP modules loaded before the torchvision shim), then open_clip and
    timm on the shim; removed from sys.modules afterwards, as in test_adapters."""
    before = set(sys.modules)
    transformers = pytest.importorskip("transformers")
    for name in ("SiglipModel", "Siglip2Model", "SiglipImageProcessor", "Siglip2ImageProcessor"):
        getattr(transformers, name)
    shimmed = torchvision_shim.install()
    pytest.importorskip("timm")
    open_clip = pytest.importorskip("open_clip")
    yield transformers, open_clip
    dropped = ("open_clip", "timm", "torchvision") if shimmed else ("open_clip", "timm")
    for name in set(sys.modules) - before:
        if name.split(".")[0] in dropped:
            del sys.modules[name]


def tokenize(prompts, length=64, vocab=32000, pad=1):
    """A hand-built stand-in for SigLIP's tokenizer: one id per word (a fixed hash), then EOS, padded."""
    rows = [[2 + sum(ord(c) * 31 ** i for i, c in enumerate(w)) % (vocab - 3) for w in p.split()] + [pad] for p in prompts]
    return torch.tensor([r + [pad] * (length - len(r)) for r in rows])


def photo(seed=0, size=(180, 240)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def openclip_siglip(libraries):
    _, open_clip = libraries
    torch.manual_seed(3)
    # the published config, random weights, and the preprocessing open_clip gives the webli weights
    model = open_clip.create_model("ViT-B-16-SigLIP", force_preprocess_cfg=dict(
        mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash")).eval()
    with torch.no_grad():  # open_clip initialises the text projection and pool weights plainly; spread them
        model.logit_bias.fill_(-3.0)
    attach_tokenizer(model, tokenize)
    return model


def openclip_to_hf(model, transformers, act="gelu"):
    """open_clip ViT-B-16-SigLIP → transformers.SiglipModel with the same weights. open_clip builds
    both towers with exact GELU where HF's config says gelu_pytorch_tanh: ``act`` makes them equal."""
    sd = model.state_dict()
    out = {"logit_scale": sd["logit_scale"].reshape(1), "logit_bias": sd["logit_bias"].reshape(1)}

    def copy(src, dst):
        out[dst + ".weight"], out[dst + ".bias"] = sd[src + ".weight"], sd[src + ".bias"]

    def qkv(weight, bias, dst):
        for name, w, b in zip("qkv", weight.chunk(3), bias.chunk(3)):
            out[f"{dst}.{name}_proj.weight"], out[f"{dst}.{name}_proj.bias"] = w, b

    v, t = "visual.trunk", "text"
    towers = (  # (blocks, open_clip block prefix, HF layer prefix, fused q|k|v, {open_clip: HF} for the rest)
        (model.visual.trunk.blocks, f"{v}.blocks", "vision_model.encoder.layers", "attn.qkv",
         {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
          "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}),
        (model.text.transformer.resblocks, f"{t}.transformer.resblocks", "text_model.encoder.layers", "attn.in_proj_",
         {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
          "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}))
    for blocks, src_prefix, dst_prefix, fused, names in towers:
        for i in range(len(blocks)):
            src, dst = f"{src_prefix}.{i}", f"{dst_prefix}.{i}"
            joiner = "" if fused.endswith("_") else "."
            qkv(sd[f"{src}.{fused}{joiner}weight"], sd[f"{src}.{fused}{joiner}bias"], dst + ".self_attn")
            for a, b in names.items():
                copy(f"{src}.{a}", f"{dst}.{b}")
    copy(f"{v}.patch_embed.proj", "vision_model.embeddings.patch_embedding")
    out["vision_model.embeddings.position_embedding.weight"] = sd[f"{v}.pos_embed"][0]
    copy(f"{v}.norm", "vision_model.post_layernorm")
    out["vision_model.head.probe"] = sd[f"{v}.attn_pool.latent"]
    out["vision_model.head.attention.in_proj_weight"] = torch.cat([sd[f"{v}.attn_pool.q.weight"], sd[f"{v}.attn_pool.kv.weight"]])
    out["vision_model.head.attention.in_proj_bias"] = torch.cat([sd[f"{v}.attn_pool.q.bias"], sd[f"{v}.attn_pool.kv.bias"]])
    copy(f"{v}.attn_pool.proj", "vision_model.head.attention.out_proj")
    copy(f"{v}.attn_pool.norm", "vision_model.head.layernorm")
    copy(f"{v}.attn_pool.mlp.fc1", "vision_model.head.mlp.fc1")
    copy(f"{v}.attn_pool.mlp.fc2", "vision_model.head.mlp.fc2")
    out["text_model.embeddings.token_embedding.weight"] = sd[f"{t}.token_embedding.weight"]
    out["text_model.embeddings.position_embedding.weight"] = sd[f"{t}.positional_embedding"]
    copy(f"{t}.ln_final", "text_model.final_layer_norm")
    copy(f"{t}.text_projection", "text_model.head")
    config = transformers.SiglipConfig()  # google/siglip-base-patch16-224's architecture
    config.vision_config.hidden_act = config.text_config.hidden_act = act
    hf = transformers.SiglipModel(config)
    result = hf.load_state_dict(out, strict=False)
    assert not result.unexpected_keys and all("position_ids" in k for k in result.missing_keys), result
    attach_tokenizer(hf, tokenize)
    return hf.eval()


@pytest.fixture(scope="module")
def hf_siglip(libraries, openclip_siglip):
    transformers, _ = libraries
    return openclip_to_hf(openclip_siglip, transformers)


@pytest.fixture(scope="module")
def hf_siglip_public(libraries):
    """SiglipConfig()'s defaults unchanged: google/siglip-base-patch16-224's architecture (tanh GELU)."""
    transformers, _ = libraries
    torch.manual_seed(5)
    model = transformers.SiglipModel(transformers.SiglipConfig()).eval()
    attach_tokenizer(model, tokenize)
    return model


@pytest.fixture(scope="module")
def hf_siglip2(libraries):
    transformers, _ = libraries
    torch.manual_seed(4)
    model = transformers.Siglip2Model(transformers.Siglip2Config()).eval()  # SigLIP 2 base (NaFlex) defaults
    attach_tokenizer(model, lambda prompts: tokenize(prompts, pad=0))
    return model


_EXPLAINED = {}


def explained(model, key, method, image=None):
    if (key, method) not in _EXPLAINED:
        _EXPLAINED[key, method] = clipviz.explain(model, photo() if image is None else image, PROMPTS, method=method)
    return _EXPLAINED[key, method]


# --- every method, every model; the scores are the model's own ---------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("key", ["openclip", "hf", "hf2"])
def test_every_method_runs(key, method, openclip_siglip, hf_siglip_public, hf_siglip2):
    model = {"openclip": openclip_siglip, "hf": hf_siglip_public, "hf2": hf_siglip2}[key]
    explanation = explained(model, key, method)
    assert explanation.maps.shape == (2, 180, 240)
    assert np.isfinite(explanation.maps).all()  # no crop: every photo pixel is seen
    assert explanation.token_maps.shape == ((2, 16, 16) if key == "hf2" else (2, 14, 14))
    assert np.ptp(explanation.token_maps) > 0


def test_openclip_scores_are_the_models_own_logits(openclip_siglip):
    """open_clip's own forward (timm's fused attention, unhooked) gives the logits clipviz explains:
    logit_scale · cos + logit_bias."""
    model = openclip_siglip
    adapter = adapt(model)
    pixels, _ = preprocess_image(photo(), adapter.input_resolution, crop=False)
    ids = tokenize(PROMPTS)
    _, cosine, logits, _ = run_method(adapter, pixels[None], ids, torch.eye(2), torch.arange(2),
                                      get_method("relevance"), {})
    with torch.no_grad():
        image, text, scale, bias = model(_siglip_normalised(pixels[None]), ids)
    assert torch.allclose(logits, scale * image @ text.t() + bias, atol=1e-4)
    assert torch.allclose(logits, scale * cosine + bias, atol=1e-5)


def _siglip_normalised(pixels):
    from clipviz.adapters.openclip import renormalise
    return renormalise(pixels, (0.5,) * 3, (0.5,) * 3)


def test_hf_siglip_logits_match_its_forward(hf_siglip):
    """SiglipModel.forward's logits_per_image (the model's own, incl. logit_bias) are what is explained."""
    adapter = adapt(hf_siglip)
    pixels, _ = preprocess_image(photo(), 224, crop=False)
    ids = tokenize(PROMPTS)
    _, _, logits, _ = run_method(adapter, pixels[None], ids, torch.eye(2), torch.arange(2), get_method("attention"), {})
    with torch.no_grad():
        own = hf_siglip(input_ids=ids, pixel_values=_siglip_normalised(pixels[None])).logits_per_image
    assert torch.allclose(logits, own, atol=1e-4)


# --- the attention-pooling head: independent numbers ------------------------------------------

def test_attention_is_the_probe_attention_of_the_head(hf_siglip):
    """'attention' = the head's own nn.MultiheadAttention weights (probe row, head mean)."""
    pixels, _ = preprocess_image(photo(), 224, crop=False)
    explanation = explained(hf_siglip, "hf-converted", "attention")
    with torch.no_grad():
        tokens = hf_siglip.vision_model(pixel_values=_siglip_normalised(pixels[None])).last_hidden_state
        head = hf_siglip.vision_model.head
        _, weights = head.attention(head.probe, tokens, tokens, need_weights=True)  # [1, 1, N], head mean
    assert np.allclose(explanation.token_maps[0], weights.reshape(14, 14).numpy(), atol=1e-6)


def test_relevance_and_gradeclip_on_the_pool_from_a_plain_computation(hf_siglip):
    """start_layer=-1 reads the pool alone. Recomputed here by hand from the tower's output tokens:
    q = probe W_q, k = tokens W_k, v = tokens W_v (the head's in_proj), A = softmax(q kᵀ/√d) as a
    leaf, the head's out_proj and MLP, S = logit_scale · cos + logit_bias, ∇A = ∂S/∂A. Then
    relevance = mean_h (∇A ⊙ A)⁺ on the probe's row and Grad-ECLIP = ReLU(Σ_h ∇A_h · minmax cos(q, k_i))."""
    model = hf_siglip
    pixels, _ = preprocess_image(photo(), 224, crop=False)
    head = model.vision_model.head
    attention, width, heads = head.attention, 768, 12
    with torch.no_grad():
        tokens = model.vision_model(pixel_values=_siglip_normalised(pixels[None])).last_hidden_state
        text = torch.nn.functional.normalize(model.text_model(input_ids=tokenize(PROMPTS)).pooler_output, dim=-1)
    w, b = attention.in_proj_weight.detach(), attention.in_proj_bias.detach()
    q, k, v = (x @ w[i * width:(i + 1) * width].t() + b[i * width:(i + 1) * width]
               for i, x in enumerate((head.probe.detach(), tokens, tokens)))
    split = lambda x: x.reshape(1, -1, heads, width // heads).transpose(1, 2)  # noqa: E731
    probs = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(width // heads)).softmax(dim=-1).requires_grad_(True)
    y = attention.out_proj((probs @ split(v)).transpose(1, 2).reshape(1, 1, width))
    embedding = torch.nn.functional.normalize((y + head.mlp(head.layernorm(y)))[:, 0], dim=-1)
    scores = model.logit_scale.exp() * embedding @ text.t() + model.logit_bias  # [1, P]
    cosine = torch.nn.functional.cosine_similarity(q, k, dim=-1)[0]  # [N]
    spatial = (cosine - cosine.min()) / (cosine.max() - cosine.min())
    relevance = explained(model, "hf-converted", "relevance").token_maps
    gradeclip = explained(model, "hf-converted", "gradeclip").token_maps
    for p in range(len(PROMPTS)):
        grad, = torch.autograd.grad(scores[0, p], probs, retain_graph=True)  # [1, H, 1, N]
        expected = (grad * probs).clamp(min=0).mean(dim=1)[0, 0].detach().reshape(14, 14).numpy()
        assert np.allclose(relevance[p], expected, rtol=1e-3, atol=1e-6 * np.abs(expected).max())
        expected = torch.relu(grad.sum(dim=1)[0, 0] * spatial).detach().reshape(14, 14).numpy()
        assert np.allclose(gradeclip[p], expected, rtol=1e-3, atol=1e-6 * np.abs(expected).max())


def compute_legrad_siglip(model, text_embedding, image, layer_index=-2):
    """The authors' LeGrad for SigLIP, re-implemented from github.com/WalBouss/LeGrad at commit
    8c2ca901a0dd185fba22314c32fa7857e24c5425 (legrad/wrapper.py: LeWrapper.compute_legrad_siglip
    with apply_correction=False; legrad/utils.py: hooked_resblock_timm_forward,
    hooked_attentional_pooler_timm_forward), on open_clip's TimmModel without patching it: the
    block outputs are taken by forward hooks and the pool is re-run as their hooked forward does.
    Returns the min-max normalised map on the patch grid [B, 1, g, g] (before their bilinear
    upsampling to pixels)."""
    trunk = model.visual.trunk
    blocks = list(trunk.blocks)
    start = len(blocks) + layer_index
    feats = {}
    handles = [b.register_forward_hook(lambda m, a, o, i=i: feats.__setitem__(i, o)) for i, b in enumerate(blocks)]
    try:
        model.encode_image(image)
    finally:
        for h in handles:
            h.remove()
    pool = trunk.attn_pool
    accum = 0
    for i in range(start, len(blocks)):
        x = feats[i]
        batch, count, width = x.shape
        q = pool.q(pool.latent.expand(batch, -1, -1)).reshape(batch, 1, pool.num_heads, pool.head_dim).transpose(1, 2)
        k, v = pool.kv(x).reshape(batch, count, 2, pool.num_heads, pool.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * pool.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # their self.attn_probs
        y = pool.proj((attn @ v).transpose(1, 2).reshape(batch, 1, width))
        y = (y + pool.mlp(pool.norm(y)))[:, 0]
        pooled = torch.nn.functional.normalize(y, dim=-1)
        sim = text_embedding @ pooled.transpose(-1, -2)
        grad = torch.autograd.grad(sim.sum(), [attn], retain_graph=True)[0].clamp(min=0)
        relevance = grad.mean(dim=1)[:, 0]  # heads, then the probe's row
        side = int(math.sqrt(count))
        accum = accum + relevance.reshape(batch, 1, side, side)  # their rearrange 'b (w h) -> b 1 w h'
    return (accum - accum.min()) / (accum.max() - accum.min())


def test_legrad_equals_the_authors_compute_legrad_siglip(openclip_siglip):
    model = openclip_siglip
    pixels, _ = preprocess_image(photo(), 224, crop=False)
    for prompt in PROMPTS:
        with torch.no_grad():
            text = torch.nn.functional.normalize(model.encode_text(tokenize([prompt])), dim=-1)
        theirs = compute_legrad_siglip(model, text, _siglip_normalised(pixels[None]))[0, 0]
        ours = clipviz.explain(model, photo(), [prompt], method="legrad").token_maps[0]
        ours = (ours - ours.min()) / (ours.max() - ours.min())
        assert np.abs(ours - theirs.numpy()).max() <= 1e-5
    # the model is as before: no hook left, timm's fused attention untouched
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert model.visual.trunk.blocks[0].attn.fused_attn == model.visual.trunk.attn_pool.fused_attn


# --- the same weights through Hugging Face and open_clip --------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_hf_and_openclip_give_equal_maps(method, openclip_siglip, hf_siglip):
    square = photo(size=(224, 224))
    ours = explained(openclip_siglip, "openclip-square", method, square)
    theirs = explained(hf_siglip, "hf-square", method, square)
    assert np.allclose(ours.scores, theirs.scores, atol=1e-5)
    scale = np.abs(theirs.token_maps).max()
    assert np.abs(ours.token_maps - theirs.token_maps).max() <= 1e-4 * scale


# --- eager and SDPA: the same maps, the setting restored ----------------------------------------

def test_sdpa_model_explained_on_eager_path_and_restored(hf_siglip):
    hf_siglip.set_attn_implementation("sdpa")
    try:
        sdpa = clipviz.explain(hf_siglip, photo(), PROMPTS, method="relevance")
        assert hf_siglip.config.vision_config._attn_implementation == "sdpa"
    finally:
        hf_siglip.set_attn_implementation("eager")
    eager = clipviz.explain(hf_siglip, photo(), PROMPTS, method="relevance")
    assert np.allclose(sdpa.token_maps, eager.token_maps, rtol=1e-5, atol=1e-9)


# --- a toy whose relevance map is known by construction ----------------------------------------

def test_toy_attention_pool_relevance_is_known_in_closed_form(libraries):
    """One encoder block that changes nothing (its out_proj and MLP output are zero), a probe that
    attends uniformly (q = 0), values = the tokens, out_proj = I, no MLP after the pool, a text
    tower that always returns t̂. Red patches (the set T) carry t̂, green ones b̂ ⊥ t̂ (each up to the
    LayerNorm's common factor). Then the embedding is e ∝ p t̂ + (1 − p) b̂ (p = |T|/N) and
    ∂S/∂A[probe, j] = s ⟨∂cos/∂e, v_j⟩ = s (1 − p)² / |e|³ on T, −s p (1 − p) / |e|³ off T
    (s = logit_scale; |e| for unit t̂, b̂). With A = 1/N and H heads of which only head 0 sees t̂, b̂,
    Chefer's map (the encoder adds Ā = 0) is R[probe, j] = s (1 − p)² / (|e|³ H N) on T and 0 off T."""
    transformers, _ = libraries
    width, heads, grid, patch = 32, 4, 4, 8
    config = transformers.SiglipConfig(
        text_config=dict(hidden_size=width, intermediate_size=64, num_hidden_layers=1, num_attention_heads=heads,
                         vocab_size=100, max_position_embeddings=8, hidden_act="gelu"),
        vision_config=dict(hidden_size=width, intermediate_size=64, num_hidden_layers=1, num_attention_heads=heads,
                           image_size=grid * patch, patch_size=patch, hidden_act="gelu"))
    model = transformers.SiglipModel(config).eval()
    t_hat = torch.zeros(width)
    t_hat[0], t_hat[1] = 1 / math.sqrt(2), -1 / math.sqrt(2)
    b_hat = torch.zeros(width)
    b_hat[2], b_hat[3] = 1 / math.sqrt(2), -1 / math.sqrt(2)
    vision, head = model.vision_model, model.vision_model.head
    with torch.no_grad():
        # token = ((1 + R)/2) t̂ + ((1 + G)/2) b̂ for SigLIP-normalised R, G ∈ {−1, 1}: red → t̂, green → b̂
        conv = vision.embeddings.patch_embedding
        conv.weight.zero_()
        conv.weight[:, 0] = t_hat[:, None, None] / (2 * patch * patch)
        conv.weight[:, 1] = b_hat[:, None, None] / (2 * patch * patch)
        conv.bias.copy_((t_hat + b_hat) / 2)
        vision.embeddings.position_embedding.weight.zero_()
        layer = vision.encoder.layers[0]
        for linear in (layer.self_attn.out_proj, layer.mlp.fc2):
            linear.weight.zero_(), linear.bias.zero_()
        d = width
        head.attention.in_proj_weight.zero_(), head.attention.in_proj_bias.zero_()
        head.attention.in_proj_weight[2 * d:] = torch.eye(d)  # v = token; q = 0: uniform attention
        head.attention.out_proj.weight.copy_(torch.eye(d)), head.attention.out_proj.bias.zero_()
        head.mlp.fc2.weight.zero_(), head.mlp.fc2.bias.zero_()
        model.text_model.head.weight.zero_(), model.text_model.head.bias.copy_(t_hat)
        model.logit_scale.fill_(math.log(7.0)), model.logit_bias.fill_(-2.0)
    attach_tokenizer(model, lambda prompts: tokenize(prompts, length=8, vocab=100))
    image = np.zeros((grid * patch, grid * patch, 3), np.uint8)
    image[..., 1] = 255  # green
    red = np.zeros((grid, grid), bool)
    red[1:3, 0:3] = True  # T: six patches
    for r, c in zip(*np.nonzero(red)):
        image[r * patch:(r + 1) * patch, c * patch:(c + 1) * patch] = (255, 0, 0)
    relevance = clipviz.explain(model, image, ["anything"], method="relevance").token_maps[0]
    n, p = grid * grid, red.sum() / (grid * grid)
    norm = math.sqrt(p ** 2 + (1 - p) ** 2)
    expected = np.where(red, 7.0 * (1 - p) ** 2 / (norm ** 3 * heads * n), 0.0)
    assert np.allclose(relevance, expected, rtol=1e-4, atol=1e-7), (relevance, expected)
    attention = clipviz.explain(model, image, ["anything"], method="attention").token_maps[0]
    assert np.allclose(attention, 1 / n, atol=1e-7)  # the probe's own attention: uniform


# --- preprocessing: the models' own processors ---------------------------------------------------

def test_resize_without_crop_matches_siglip_image_processor(libraries):
    transformers, _ = libraries
    image = photo(seed=2)
    ours, box = preprocess_image(image, 224, crop=False)
    theirs = transformers.SiglipImageProcessor()(images=image, return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(_siglip_normalised(ours[None])[0], theirs, atol=1e-5)
    assert (box.left, box.top, box.width, box.height) == (0.0, 0.0, 240.0, 180.0)  # the whole photo


def test_siglip2_patches_match_its_image_processor(libraries, hf_siglip2):
    """The square S × S image cut into patches as Siglip2ImageProcessor does (max_num_patches=256)."""
    transformers, _ = libraries
    image = photo(seed=5, size=(256, 256))
    processed = transformers.Siglip2ImageProcessor(max_num_patches=256, patch_size=16)(images=image, return_tensors="pt")
    assert processed["spatial_shapes"].tolist() == [[16, 16]]
    adapter = adapt(hf_siglip2)
    pixels, _ = preprocess_image(image, adapter.input_resolution, crop=False)
    seen = {}
    handle = hf_siglip2.vision_model.embeddings.register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    try:
        with torch.no_grad():
            adapter.encode_image(pixels[None])
    finally:
        handle.remove()
    assert torch.allclose(seen["x"], processed["pixel_values"], atol=1e-5)


# --- loading: 'hf:' specs of SigLIP checkpoints, the listing ---------------------------------------

def test_hf_spec_loads_siglip_with_its_own_tokenizer(tmp_path, libraries):
    """A SigLIP checkpoint folder (config model_type 'siglip') loads as SiglipModel with the folder's
    tokenizer, padded to max_length; resize without crop. The tokenizer is a word-level fast
    tokenizer saved beside it (SigLIP's SentencePiece model cannot be had offline)."""
    transformers, _ = libraries
    from tokenizers import Tokenizer, models, pre_tokenizers

    config = transformers.SiglipConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=16, max_position_embeddings=8),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8))
    transformers.SiglipModel(config).save_pretrained(tmp_path / "siglip")
    words = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "dog": 4, "red": 5, "car": 6}
    raw = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="</s>",
                                         unk_token="<unk>").save_pretrained(tmp_path / "siglip")
    model, preprocess = clipviz.load(f"hf:{tmp_path / 'siglip'}")
    adapter = adapt(model)
    assert type(model).__name__ == "SiglipModel" and type(adapter).__name__ == "SiglipAdapter"
    assert adapter.tokenize(["a red car"]).tolist() == [[3, 5, 6, 0, 0, 0, 0, 0]]
    assert not preprocess.crop and preprocess.size == 32
    explanation = clipviz.explain(model, photo(), ["a dog"], method="relevance")
    assert np.isfinite(explanation.maps).all()


def test_models_command_lists_siglip_specs(capsys):
    import argparse
    from clipviz.cli import models as models_command

    models_command.run(argparse.Namespace(json=True))
    import json
    specs = [s["spec"] for s in json.loads(capsys.readouterr().out)["specs"]]
    assert "hf:google/siglip-base-patch16-224" in specs and "openclip:ViT-B-16-SigLIP/webli" in specs


def test_openclip_spec_with_a_checkpoint_file_loads_the_siglip_tower(tmp_path, openclip_siglip):
    """'openclip:ViT-B-16-SigLIP/<file>': open_clip builds the timm tower, clipviz adapts it (the
    pool counts as a 13th block) and explains with the loaded weights."""
    torch.save(openclip_siglip.state_dict(), tmp_path / "siglip.pt")
    model, preprocess = clipviz.load(f"openclip:ViT-B-16-SigLIP/{tmp_path / 'siglip.pt'}")
    adapter = adapt(model)
    assert (adapter.pooling, adapter.num_layers, adapter.patch_grid, adapter.text_layers) == ("probe", 13, 14, 0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), openclip_siglip.state_dict().values()))
    attach_tokenizer(model, tokenize)  # open_clip's own (SigLIP's SentencePiece) needs the Hub
    assert preprocess.crop  # a bare file carries no preprocessing config: open_clip's defaults (crop, CLIP's stats)
    model.visual.preprocess_cfg = dict(openclip_siglip.visual.preprocess_cfg)  # as the webli tag sets it
    square = photo(size=(224, 224))
    loaded = clipviz.explain(model, square, PROMPTS, method="gradcam")
    assert np.allclose(loaded.token_maps, explained(openclip_siglip, "openclip-square", "gradcam", square).token_maps,
                       rtol=1e-5, atol=1e-9)
