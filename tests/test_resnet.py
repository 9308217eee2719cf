"""ResNet CLIP: Grad-CAM on the last stage and the attention pool's attention, against an
independent fp64 computation (tests/reference_clip.py's resnet_features / attention_pool)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clipviz
from clipviz.adapters import adapt
from clipviz.model import random_model
from clipviz.preprocess import preprocess_image

import reference_clip as ref
from conftest import SMALL_RESNET
from test_new_methods import rel_err


PROMPTS = ["a photo of a dog", "a red car", "two people dancing"]
GRID = SMALL_RESNET["image_resolution"] // 32  # 3


def photo(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (100, 130, 3), dtype=np.uint8)


_PLAIN = {}


def plain(model, image):
    """fp64: last-stage features F [C, h, w] (in the graph), pool probs [H, 1, 1+hw], scores S [P]."""
    key = (id(model), image.tobytes())
    if key not in _PLAIN:
        sd = {k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        pixels, _ = preprocess_image(image, SMALL_RESNET["image_resolution"])
        features = ref.resnet_features(sd, pixels[None].double()).detach().requires_grad_(True)
        image_emb, probs = ref.attention_pool(sd, features)
        text_emb = ref.text(sd, clipviz.tokenize(PROMPTS))[0]
        scores = sd["logit_scale"].exp() * (F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).t())[0]
        _PLAIN[key] = (features, probs[0], scores)
    return _PLAIN[key]


def plain_gradcam(features, score):
    """Selvaraju et al. 2017: α_c = mean_xy ∂S/∂F_c; ReLU(Σ_c α_c F_c)."""
    grad, = torch.autograd.grad(score, features, retain_graph=True)
    alpha = grad[0].mean(dim=(1, 2))
    return torch.relu((alpha[:, None, None] * features[0]).sum(dim=0)).detach().numpy()


def test_gradcam_matches_independent_computation(small_resnet):
    image = photo()
    exp = clipviz.explain(small_resnet, image, PROMPTS, method="gradcam")
    features, _, scores = plain(small_resnet, image)
    assert exp.token_maps.shape == (len(PROMPTS), GRID, GRID)
    np.testing.assert_allclose(exp.scores * small_resnet.logit_scale.exp().item(), scores.detach().numpy(), rtol=1e-5)
    checked = 0
    for p in range(len(PROMPTS)):
        expected = plain_gradcam(features, scores[p])
        if expected.max() > 0:
            assert rel_err(exp.token_maps[p], expected) <= 1e-5
            checked += 1
        else:  # the ReLU removed everything: so must the library
            assert np.all(exp.token_maps[p] == 0)
    # contrasts in both directions: one of them has a positive map wherever the other is negative
    for a, b in ((0, 1), (1, 0)):
        contrast = clipviz.explain(small_resnet, image, PROMPTS[a], against=PROMPTS[b], method="gradcam")
        expected = plain_gradcam(features, scores[a] - scores[b])
        if expected.max() > 0:
            assert rel_err(contrast.token_maps[0], expected) <= 1e-5
            checked += 1
    assert checked >= 1


def test_attention_pool_matches_independent_computation(small_resnet):
    image = photo()
    exp = clipviz.explain(small_resnet, image, PROMPTS[:2], method="attention_pool")
    _, probs, _ = plain(small_resnet, image)
    expected = probs[:, 0, 1:].mean(dim=0).detach().numpy().reshape(GRID, GRID)
    assert rel_err(exp.token_maps[0], expected) <= 1e-5
    assert np.array_equal(exp.token_maps[0], exp.token_maps[1])  # prompt-agnostic
    assert exp.head_maps.shape == (2, SMALL_RESNET["vision_width"] * 32 // 64, GRID, GRID)


@pytest.mark.parametrize("name, grid", [("RN50", 7), ("RN50x4", 9), ("RN50x16", 12), ("RN50x64", 14)])
def test_every_official_resolution_gives_its_grid(name, grid):
    # the official input resolution and stage layout, with narrow stages so the test stays fast
    model = random_model(name, vision_layers=(1, 1, 1, 1), vision_width=16, embed_dim=64,
                         transformer_width=64, transformer_heads=1, transformer_layers=1)
    adapter = adapt(model)
    assert adapter.family == "resnet" and adapter.patch_grid == grid
    for method in ("gradcam", "attention_pool"):
        exp = clipviz.explain(model, photo(1), ["a dog", "a cat"], method=method)
        assert exp.token_maps.shape == (2, grid, grid)
        assert np.isfinite(exp.maps).any()


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_and_errors_are_clear(small_resnet):
    clipviz.explain(small_resnet, photo(), "a dog", method="gradcam")
    assert hook_count(small_resnet) == 0
    with pytest.raises(clipviz.ClipvizError, match="attention_pool"):
        clipviz.explain(small_resnet, photo(), "a dog", method="relevance")
    with pytest.raises(clipviz.ClipvizError, match="no option start_layer"):
        clipviz.explain(small_resnet, photo(), "a dog", method="gradcam", start_layer=0)
    with pytest.raises(clipviz.ClipvizError, match="layer=2 is out of range"):  # one feature stage: -1 or 0
        clipviz.explain(small_resnet, photo(), "a dog", method="gradcam", layer=2)
    assert hook_count(small_resnet) == 0


def test_attention_pool_on_a_vit_says_what_to_use(tiny_vit):
    with pytest.raises(clipviz.ClipvizError, match="'attention'"):
        clipviz.explain(tiny_vit, photo(), "a dog", method="attention_pool")


def test_frozen_weights_still_give_gradcam(small_resnet):
    image = photo(2)
    before = clipviz.explain(small_resnet, image, PROMPTS[0], against=PROMPTS[1], method="gradcam")
    flags = [p.requires_grad for p in small_resnet.parameters()]
    try:
        for p in small_resnet.parameters():
            p.requires_grad_(False)
        frozen = clipviz.explain(small_resnet, image, PROMPTS[0], against=PROMPTS[1], method="gradcam")
    finally:
        for p, flag in zip(small_resnet.parameters(), flags):
            p.requires_grad_(flag)
    assert before.token_maps.max() > 0 and rel_err(frozen.token_maps, before.token_maps) <= 1e-5


def test_default_method_follows_the_model_family(small_resnet, tiny_vit):
    image = np.random.default_rng(7).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    chosen = clipviz.explain(small_resnet, image, PROMPTS)  # relevance needs attention inside the encoder
    assert chosen.method == "gradcam"
    np.testing.assert_array_equal(chosen.maps, clipviz.explain(small_resnet, image, PROMPTS, method="gradcam").maps)
    assert clipviz.explain(tiny_vit, image, PROMPTS).method == "relevance"
