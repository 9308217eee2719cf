"""LeGrad and Grad-ECLIP against plain re-implementations written from the papers' equations.

The plain side runs the image tower in fp64 from the state dict (reference_clip's pieces plus an
explicit attention that exposes q, k, v and the pre-projection output o), so every quantity the
equations name is a tensor here, differentiated directly.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clipviz
from clipviz.methods import available_methods, get_method
from clipviz.preprocess import preprocess_image

import reference_clip as ref
from conftest import make_model


# 4 blocks, 2 heads, 5×5 patches: small, but every index (layer, head, token) is exercised
CONFIG = dict(embed_dim=64, image_resolution=80, vision_layers=4, vision_width=128, vision_patch_size=16,
              context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2, transformer_layers=2)
PROMPTS = ["a photo of a dog", "a red car", "two people dancing"]


@pytest.fixture(scope="module")
def model():
    return make_model(CONFIG, seed=11)


def photo(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (90, 120, 3), dtype=np.uint8)


def rel_err(actual, expected):
    """max |actual − expected| / max |expected|."""
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.abs(np.asarray(actual, dtype=np.float64) - expected).max() / np.abs(expected).max())


# --- the plain fp64 tower -------------------------------------------------------------------------

def plain_tower(model, image, prompts):
    """Everything the two papers' equations refer to, per block l, in fp64 with autograd.

    Returns dict: blocks [{probs [H,N,N], q, k, v, o [N,D] (o = A·V, heads side by side), out [N,D]}],
    image_emb [E], text_emb [P, E], logit_scale, sd."""
    sd = {k: v.double().requires_grad_(True) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    pixels, _ = preprocess_image(image, CONFIG["image_resolution"])
    width, patch = CONFIG["vision_width"], CONFIG["vision_patch_size"]
    heads, hd = width // 64, 64
    x = F.conv2d(pixels[None].double(), sd["visual.conv1.weight"], stride=patch).reshape(width, -1).t()
    x = torch.cat([sd["visual.class_embedding"][None], x]) + sd["visual.positional_embedding"]
    x = ref.layer_norm(x, sd, "visual.ln_pre")  # [N, D]
    n = x.shape[0]
    blocks = []
    for i in range(CONFIG["vision_layers"]):
        p = f"visual.transformer.resblocks.{i}"
        h = ref.layer_norm(x, sd, p + ".ln_1")
        q, k, v = (h @ sd[p + ".attn.in_proj_weight"].t() + sd[p + ".attn.in_proj_bias"]).split(width, dim=-1)
        per_head = [t.reshape(n, heads, hd).transpose(0, 1) for t in (q, k, v)]  # [H, N, hd]
        probs = (per_head[0] @ per_head[1].transpose(1, 2) / math.sqrt(hd)).softmax(dim=-1)
        o = (probs @ per_head[2]).transpose(0, 1).reshape(n, width)
        x = x + o @ sd[p + ".attn.out_proj.weight"].t() + sd[p + ".attn.out_proj.bias"]
        m = ref.layer_norm(x, sd, p + ".ln_2") @ sd[p + ".mlp.c_fc.weight"].t() + sd[p + ".mlp.c_fc.bias"]
        x = x + (m * torch.sigmoid(1.702 * m)) @ sd[p + ".mlp.c_proj.weight"].t() + sd[p + ".mlp.c_proj.bias"]
        blocks.append(dict(probs=probs, q=q, k=k, v=v, o=o, out=x))
    image_emb = head(sd, x[0])
    text_emb = ref.text(sd, clipviz.tokenize(prompts))[0]
    return dict(blocks=blocks, image_emb=image_emb, text_emb=text_emb, scale=sd["logit_scale"].exp(), sd=sd)


def head(sd, token):
    return ref.layer_norm(token, sd, "visual.ln_post") @ sd["visual.proj"]


def cosine(a, b):
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


def plain_legrad(tower, weights, start):
    """LeGrad §3 with the authors' CLIP readout: s^l = Σ_p W_p cos(proj(ln_post(mean_i Z^l_i)), text_p);
    Ê^l = mean over heads and query rows of ReLU(∂s^l/∂A^l); map = mean_l Ê^l over patches."""
    layer_maps = []
    for block in tower["blocks"][start:]:
        embedding = head(tower["sd"], block["out"].mean(dim=0))
        score = sum(w * cosine(embedding, tower["text_emb"][p]) for p, w in enumerate(weights) if w)
        grad, = torch.autograd.grad(score, block["probs"], retain_graph=True)
        layer_maps.append(grad.clamp(min=0).mean(dim=(0, 1))[1:])
    return torch.stack(layer_maps).mean(dim=0).detach().numpy().reshape(5, 5)


def plain_gradeclip(tower, weights, start):
    """Grad-ECLIP: w = ∂S/∂o_CLS, λ_i = minmax cos(q_CLS, k_i), H_i = ReLU(Σ_c w_c λ_i v_i[c]),
    summed over the blocks used; S = logit_scale · cos (Σ_p W_p S_p)."""
    score = sum(w * tower["scale"] * cosine(tower["image_emb"], tower["text_emb"][p]) for p, w in enumerate(weights) if w)
    total = 0
    for block in tower["blocks"][start:]:
        grad_o, = torch.autograd.grad(score, block["o"], retain_graph=True)
        w = grad_o[0]  # the CLS token's channel weights [D]
        cos_qk = cosine(block["q"][:1], block["k"][1:])
        lam = (cos_qk - cos_qk.min()) / (cos_qk.max() - cos_qk.min())
        total = total + torch.relu((w[None, :] * lam[:, None] * block["v"][1:]).sum(dim=-1))
    return total.detach().numpy().reshape(5, 5)


_TOWERS = {}


def tower_for(model, image):
    key = (id(model), image.tobytes())
    if key not in _TOWERS:
        _TOWERS[key] = plain_tower(model, image, PROMPTS)
    return _TOWERS[key]


# --- equality -------------------------------------------------------------------------------------

@pytest.mark.parametrize("start_layer", [-2, 0])
def test_legrad_matches_plain_equations(model, start_layer):
    image = photo()
    exp = clipviz.explain(model, image, PROMPTS, method="legrad", start_layer=start_layer)
    tower = tower_for(model, image)
    start = start_layer % CONFIG["vision_layers"]
    for p in range(len(PROMPTS)):
        expected = plain_legrad(tower, np.eye(len(PROMPTS))[p], start)
        assert np.abs(expected).max() > 0
        assert rel_err(exp.token_maps[p], expected) <= 1e-5
    assert exp.layer_indices == tuple(range(start, CONFIG["vision_layers"]))
    assert exp.layer_maps.shape == (len(PROMPTS), CONFIG["vision_layers"] - start, 5, 5)
    np.testing.assert_allclose(exp.layer_maps.mean(axis=1), exp.token_maps, rtol=1e-6)


@pytest.mark.parametrize("start_layer", [-1, -3])
def test_gradeclip_matches_plain_equations(model, start_layer):
    image = photo()
    exp = clipviz.explain(model, image, PROMPTS, method="gradeclip", start_layer=start_layer)
    tower = tower_for(model, image)
    for p in range(len(PROMPTS)):
        expected = plain_gradeclip(tower, np.eye(len(PROMPTS))[p], start_layer % CONFIG["vision_layers"])
        assert (expected > 0).sum() >= 3  # a map with structure, not an all-ReLU'd-away one
        assert rel_err(exp.token_maps[p], expected) <= 1e-5


@pytest.mark.parametrize("method, plain", [("legrad", plain_legrad), ("gradeclip", plain_gradeclip)])
def test_contrast_explains_the_difference(model, method, plain):
    image = photo()
    exp = clipviz.explain(model, image, PROMPTS[1], against=PROMPTS[2], method=method)
    weights = [0.0, 1.0, -1.0]
    start = (-2 if method == "legrad" else -1) % CONFIG["vision_layers"]
    assert rel_err(exp.token_maps[0], plain(tower_for(model, image), weights, start)) <= 1e-5


def test_batch_of_images_matches_one_by_one(model):
    images = [photo(1), photo(2)]
    for method in ("legrad", "gradeclip"):
        batch = clipviz.explain(model, images, PROMPTS[:2], method=method)
        for image, exp in zip(images, batch):
            single = clipviz.explain(model, image, PROMPTS[:2], method=method)
            assert rel_err(exp.token_maps, single.token_maps) <= 1e-5


def test_gradeclip_channel_term_is_the_head_summed_cls_gradient(model):
    """The identity Grad-ECLIP's implementation rests on: Σ_c w_c v_i[c] = Σ_h ∂S/∂A_h[CLS, i]."""
    tower = tower_for(model, photo())
    block = tower["blocks"][-1]
    score = tower["scale"] * cosine(tower["image_emb"], tower["text_emb"][0])
    grad_o, grad_a = torch.autograd.grad(score, [block["o"], block["probs"]], retain_graph=True)
    direct = (grad_o[0][None, :] * block["v"]).sum(dim=-1)
    assert rel_err(grad_a[:, 0, :].sum(dim=0).detach().numpy(), direct.detach().numpy()) <= 1e-10


def test_registered_with_the_authors_defaults_and_explained_on_vits(model, small_resnet):
    """Both are prompt-specific ViT methods whose one option defaults to the authors' choice
    (LeGrad's reference code: the last two blocks; Grad-ECLIP's paper: the last block)."""
    for name, first_block in (("legrad", -2), ("gradeclip", -1)):
        method = get_method(name)
        assert name in available_methods() and get_method(name).prompt_specific
        assert method.options == {"start_layer": first_block} and method.families == ("vit",)
        with pytest.raises(clipviz.ClipvizError, match="explains vit models; this is a resnet"):
            clipviz.explain(small_resnet, photo(), "a dog", method=name)
    exp = clipviz.explain(model, photo(), PROMPTS, method="legrad")
    assert not np.allclose(exp.token_maps[0], exp.token_maps[1])  # the prompt matters
    assert exp.maps.shape == (len(PROMPTS), 90, 120)
    assert np.nanmin(exp.maps) == 0.0 and np.nanmax(exp.maps) == 1.0


def test_bad_options_are_clear_errors(model):
    with pytest.raises(clipviz.ClipvizError, match="start_layer"):
        clipviz.explain(model, photo(), "a dog", method="legrad", start_layer=9)
    with pytest.raises(clipviz.ClipvizError, match="no option"):
        clipviz.explain(model, photo(), "a dog", method="gradeclip", head_fusion="max")


def test_every_method_has_one_explicit_signature():
    """needs() and compute() of each registered method take the same options, written out (no
    **kwargs), and Method.options is exactly those; a misspelt option is refused by name."""
    import inspect
    for name in available_methods():
        method = get_method(name)
        for function, first in ((method.module.needs, "model"), (method.module.compute, "records")):
            parameters = list(inspect.signature(function).parameters.values())
            assert parameters[0].name == first, name
            assert all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty for p in parameters[1:]), name
            assert {p.name: p.default for p in parameters[1:]} == method.options, name
        with pytest.raises(clipviz.ClipvizError, match=f"method '{name}' has no option strat_layer"):
            method.check_options({"strat_layer": 0})
