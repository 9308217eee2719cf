"""explain(), the recorder and the methods against plain re-implementations from the papers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clipviz
from clipviz.errors import ClipvizError
from clipviz.hooks import AttentionRecorder
from clipviz.methods import attention as attention_method
from clipviz.methods.base import Records
from clipviz.maps import map_to_photo, normalise_maps
from clipviz.preprocess import preprocess_image

import reference_clip as ref


PROMPTS5 = ["a photo of a dog", "a red car", "two people dancing", "a bowl of soup", "the night sky"]


def photo(height=180, width=240, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def double_state_dict(model):
    """fp64 copies that require grad, so the plain computation has an autograd graph."""
    return {k: v.double().requires_grad_(True) if v.is_floating_point() else v for k, v in model.state_dict().items()}


# --- plain re-implementations, written from the papers' equations --------------------------------

_PLAIN = {}


def plain_scores_and_probs(model, image, prompts):
    """S [P] = logit_scale · cos, and the image attention probabilities per block, in fp64.

    Cached per (model, image, prompts): the fp64 pass is the slow part of these tests.
    """
    key = (id(model), image.tobytes(), tuple(prompts))
    if key not in _PLAIN:
        _PLAIN[key] = _plain_scores_and_probs(model, image, prompts)
    return _PLAIN[key]


def _plain_scores_and_probs(model, image, prompts):
    sd = double_state_dict(model)
    pixels, _ = preprocess_image(image, model.visual.input_resolution)
    ids = clipviz.tokenize(prompts)
    emb, probs, _ = ref.vit_image(sd, pixels[None].double())
    text_emb, text_probs = ref.text(sd, ids)
    cos = F.normalize(emb, dim=-1) @ F.normalize(text_emb, dim=-1).t()
    return sd["logit_scale"].exp() * cos[0], probs, text_probs, ids


_GRADS = {}


def plain_gradients(scores, which, probs):
    """∂S/∂A_l for every block, S = scores[which] or scores[a] − scores[b] for which = (a, b).

    Cached (several tests reuse the same score); the cache holds the tensors, so ids stay unique."""
    key = (id(scores), which, id(probs))
    if key not in _GRADS:
        score = scores[which] if isinstance(which, int) else scores[which[0]] - scores[which[1]]
        _GRADS[key] = (scores, probs, torch.autograd.grad(score, probs, retain_graph=True))
    return _GRADS[key][2]


def plain_relevance(scores, which, probs, start, row=0):
    """Chefer et al. 2021, eq. (5)-(6): R = I; R += mean_h((∇A ⊙ A)⁺) R for blocks ≥ start.

    ``row`` picks the batch entry (the prompt, for text attention)."""
    grads = plain_gradients(scores, which, probs)
    n = probs[0].shape[-1]
    relevance = torch.eye(n, dtype=torch.float64)
    for layer in range(start, len(probs)):
        a_bar = (grads[layer][row] * probs[layer][row]).clamp(min=0).mean(dim=0)
        relevance = relevance + a_bar @ relevance
    return relevance


def plain_rollout(probs, start):
    """Abnar & Zuidema 2020: Â = rownorm(0.5·mean_h A + 0.5·I); J = Â_L ⋯ Â_start."""
    joint = None
    for layer in range(start, len(probs)):
        a = 0.5 * probs[layer][0].mean(dim=0) + 0.5 * torch.eye(probs[layer].shape[-1], dtype=torch.float64)
        a = a / a.sum(dim=-1, keepdim=True)
        joint = a if joint is None else a @ joint
    return joint


def grid(vector):
    side = int(round(vector.shape[-1] ** 0.5))
    return vector.reshape(side, side).detach().numpy()


def rel_err(actual, expected):
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


# --- equality with the plain implementations --------------------------------------------------------

@pytest.mark.parametrize("fixture", ["vit_b32", "vit_b16"])
@pytest.mark.parametrize("start_layer", [0, -1])
@pytest.mark.parametrize("count", [1, 5])
def test_relevance_matches_plain_chefer(fixture, start_layer, count, request):
    model = request.getfixturevalue(fixture)
    image, prompts = photo(), PROMPTS5[:count]
    exp = clipviz.explain(model, image, prompts, method="relevance", start_layer=start_layer)
    scores, probs, _, _ = plain_scores_and_probs(model, image, PROMPTS5)
    start = start_layer % len(probs)
    for p in range(count):
        expected = grid(plain_relevance(scores, p, probs, start)[0, 1:])
        assert exp.token_maps[p].shape == expected.shape
        assert rel_err(exp.token_maps[p], expected) <= 1e-5


@pytest.mark.parametrize("fixture", ["vit_b32", "vit_b16"])
@pytest.mark.parametrize("start_layer", [0, -1])
@pytest.mark.parametrize("count", [1, 5])
def test_rollout_matches_plain_abnar_zuidema(fixture, start_layer, count, request):
    model = request.getfixturevalue(fixture)
    image, prompts = photo(), PROMPTS5[:count]
    exp = clipviz.explain(model, image, prompts, method="rollout", start_layer=start_layer)
    _, probs, _, _ = plain_scores_and_probs(model, image, PROMPTS5)
    expected = grid(plain_rollout(probs, start_layer % len(probs))[0, 1:])
    for p in range(count):
        assert rel_err(exp.token_maps[p], expected) <= 1e-5


def test_scores_and_probs_are_clip_logits(vit_b32):
    image = photo()
    exp = clipviz.explain(vit_b32, image, PROMPTS5, method="rollout")
    logits, _, _, _ = plain_scores_and_probs(vit_b32, image, PROMPTS5)
    scale = vit_b32.logit_scale.exp().item()
    np.testing.assert_allclose(exp.scores, (logits / scale).detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(exp.probs, logits.softmax(-1).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_text_token_relevance_matches_plain_rule(vit_b32):
    image, prompts = photo(), PROMPTS5[:2]
    exp = clipviz.explain(vit_b32, image, prompts, method="relevance")
    scores, _, text_probs, ids = plain_scores_and_probs(vit_b32, image, PROMPTS5)
    for p, prompt in enumerate(prompts):
        relevance = plain_relevance(scores, p, text_probs, len(text_probs) - 1, row=p)
        eot = int(ids[p].argmax())
        expected = relevance[eot, 1:eot].detach().numpy()
        assert exp.text_tokens[p] == [t.strip() for t in exp.text_tokens[p]]
        assert len(exp.text_tokens[p]) == eot - 1
        assert rel_err(exp.text_relevance[p], expected) <= 1e-5


def test_contrastive_target_explains_the_difference(vit_b32):
    image = photo()
    exp = clipviz.explain(vit_b32, image, "a red car", against="a bowl of soup", method="relevance")
    scores, probs, _, _ = plain_scores_and_probs(vit_b32, image, PROMPTS5)
    expected = grid(plain_relevance(scores, (1, 3), probs, len(probs) - 1)[0, 1:])
    assert rel_err(exp.token_maps[0], expected) <= 1e-5
    assert exp.against == ["a bowl of soup"]


# --- prompt sensitivity ---------------------------------------------------------------------------

def test_relevance_depends_on_the_prompt_and_rollout_does_not(vit_b16):
    image = photo(seed=5)
    relevance = clipviz.explain(vit_b16, image, ["a dog", "a skyscraper at night"], method="relevance")
    rollout = clipviz.explain(vit_b16, image, ["a dog", "a skyscraper at night"], method="rollout")
    assert not np.allclose(relevance.token_maps[0], relevance.token_maps[1], rtol=1e-3)
    assert np.array_equal(rollout.token_maps[0], rollout.token_maps[1])


# --- the recorder leaves no trace ----------------------------------------------------------------

def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_recorder_leaves_outputs_bit_identical(vit_b32):
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = vit_b32.encode_image(pixels)
        with AttentionRecorder(vit_b32.visual) as recorder:
            during = vit_b32.encode_image(pixels)
            assert hook_count(vit_b32) > 0
        after = vit_b32.encode_image(pixels)
    assert hook_count(vit_b32) == 0
    assert torch.equal(before, after)
    # recording switches to explicit softmax attention: same function, rounding may differ
    torch.testing.assert_close(during, before, rtol=1e-5, atol=1e-5)
    assert recorder.layers[11].probs.shape == (2, 12, 50, 50)


def test_recorder_removes_hooks_after_an_exception(vit_b32):
    with pytest.raises(RuntimeError, match="boom"):
        with AttentionRecorder(vit_b32.visual, gradients=lambda p, g: g, tokens=True):
            assert hook_count(vit_b32) > 0
            raise RuntimeError("boom")
    assert hook_count(vit_b32) == 0


def test_recorder_keeps_callers_need_weights_contract(tiny_vit):
    attn = tiny_vit.visual.transformer.resblocks[0].attn
    x = torch.randn(1, 17, 128)
    with torch.no_grad():
        plain_out, plain_weights = attn(x, x, x, need_weights=True)
        with AttentionRecorder(tiny_vit.visual, layers=[0]):
            out, weights = attn(x, x, x, need_weights=True)
            out2, none = attn(x, x, x, need_weights=False)
    assert weights.shape == plain_weights.shape == (1, 17, 17)  # head-averaged, as asked
    torch.testing.assert_close(weights, plain_weights)
    assert none is None


def test_recorder_works_under_no_grad_and_records_probabilities(vit_b32):
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad(), AttentionRecorder(vit_b32.visual, layers=[0, -1]) as recorder:
        vit_b32.encode_image(pixels)
    _, probs, _ = ref.vit_image(double_state_dict(vit_b32), pixels.double())
    assert sorted(recorder.layers) == [0, 11]
    for layer in (0, 11):
        torch.testing.assert_close(recorder.layers[layer].probs.double(), probs[layer], rtol=1e-4, atol=1e-6)


# --- regressions for bugs seen in earlier tools ----------------------------------------------------

def test_rollout_rows_sum_to_one(vit_b32):
    from clipviz.methods.rollout import augmented
    with torch.no_grad(), AttentionRecorder(vit_b32.visual) as recorder:
        vit_b32.encode_image(torch.randn(1, 3, 224, 224))
    joint = None
    for layer in range(12):
        for fusion in ("mean", "max", "min"):
            a_hat = augmented(recorder.layers[layer].probs, fusion, discard_ratio=0.9)
            torch.testing.assert_close(a_hat.sum(-1), torch.ones(1, 50))
            assert (a_hat[:, 0, :] > 0).sum() > 1  # the CLS row survives discarding
        a_hat = augmented(recorder.layers[layer].probs)
        joint = a_hat if joint is None else a_hat @ joint
    torch.testing.assert_close(joint.sum(-1), torch.ones(1, 50))


def test_gradients_are_paired_with_their_own_layer(vit_b32):
    """Each recorded gradient equals ∂S/∂A of the same block (not, e.g., the reversed list)."""
    image, prompts = photo(), PROMPTS5[:1]
    pixels, _ = preprocess_image(image, 224)
    ids = clipviz.tokenize(prompts)
    with AttentionRecorder(vit_b32.visual, gradients=lambda probs, grad: grad.detach()) as recorder:
        emb = vit_b32.encode_image(pixels[None])
        txt = vit_b32.encode_text(ids)
        score = vit_b32.logit_scale.exp() * F.cosine_similarity(emb, txt)[0]
        recorder.backward(score, slot=0)
    scores, probs, _, _ = plain_scores_and_probs(vit_b32, image, PROMPTS5)
    grads = plain_gradients(scores, 0, probs)
    for layer in range(12):
        got = recorder.layers[layer].grads[0].double()
        assert rel_err(got.numpy(), grads[layer].numpy()) < 1e-4
        if layer != 11 - layer:
            assert rel_err(got.numpy(), grads[11 - layer].numpy()) > 0.1


def test_a_fused_attention_path_is_a_clear_error_not_a_silent_map(tiny_vit, monkeypatch):
    block = tiny_vit.visual.transformer.resblocks[-1]

    def fused(x):  # bypasses nn.MultiheadAttention, as a fused kernel would
        q, k, v = F.linear(x, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
        return block.attn.out_proj(F.scaled_dot_product_attention(q, k, v))

    monkeypatch.setattr(block, "attention", fused)
    with pytest.raises(ClipvizError, match="no attention was recorded for block"):
        clipviz.explain(tiny_vit, photo(64, 64), "a dog", method="relevance")
    with pytest.raises(ClipvizError, match="no attention was recorded for block"):
        clipviz.explain(tiny_vit, photo(64, 64), "a dog", method="rollout")


# --- the patch grid comes from the model ------------------------------------------------------------

@pytest.mark.parametrize("name, grid_side", [("ViT-B/32", 7), ("ViT-B/16", 14), ("ViT-L/14@336px", 24)])
def test_patch_grid_comes_from_the_model(name, grid_side):
    from clipviz.adapters import adapt
    from clipviz.model import random_model
    model = random_model(name, vision_layers=1, transformer_layers=1)  # the grid depends on patch and resolution only
    adapter = adapt(model)
    assert adapter.patch_grid == grid_side
    exp = clipviz.explain(model, photo(), "a dog", method="attention")
    assert exp.token_maps.shape == (1, grid_side, grid_side)


# --- alignment with the original photo ------------------------------------------------------------

@pytest.mark.parametrize("height, width", [(300, 200), (200, 300), (250, 250), (97, 401)])
def test_peak_lands_on_the_right_photo_pixels(height, width):
    """A hand-set attention record pointing at patch (row 2, col 5) of a 7×7 grid peaks there."""
    size, side, row, col = 224, 7, 2, 5
    n = 1 + side * side
    probs = torch.full((1, 1, n, n), 1.0 / n)
    probs[0, 0, 0] = 0.0
    probs[0, 0, 0, 1 + row * side + col] = 1.0
    records = Records(num_layers=1, patch_grid=side, batch=1, targets=1, probs={0: probs})
    token_map = attention_method.compute(records).token_maps[0].numpy()
    _, box = preprocess_image(photo(height, width), size)
    photo_map = map_to_photo(normalise_maps(token_map), box)[0]
    # by hand: short side scaled to 224, the long side truncated, centre crop rounded like torchvision
    scale_x = width / (size if width <= height else int(size * width / height))
    scale_y = height / (size if height <= width else int(size * height / width))
    crop_left = round(((size if width <= height else int(size * width / height)) - size) / 2)
    crop_top = round(((size if height <= width else int(size * height / width)) - size) / 2)
    patch = size / side
    x0, x1 = (crop_left + col * patch) * scale_x, (crop_left + (col + 1) * patch) * scale_x
    y0, y1 = (crop_top + row * patch) * scale_y, (crop_top + (row + 1) * patch) * scale_y
    peak_y, peak_x = np.unravel_index(np.nanargmax(photo_map), photo_map.shape)
    assert x0 <= peak_x + 0.5 <= x1 and y0 <= peak_y + 0.5 <= y1
    # pixels outside the crop square are marked unseen
    seen = ~np.isnan(photo_map)
    assert seen.sum(axis=1).max() <= round(size * scale_x) + 1
    assert seen.sum(axis=0).max() <= round(size * scale_y) + 1
    assert np.nanmin(photo_map) >= 0 and np.nanmax(photo_map) <= 1


# --- errors users can cause ---------------------------------------------------------------------------

def test_bad_calls_are_clear_errors(tiny_vit):
    image = photo(64, 64)
    with pytest.raises(ClipvizError, match="unknown method 'magic'"):
        clipviz.explain(tiny_vit, image, "a dog", method="magic")
    with pytest.raises(ClipvizError, match="prompt is empty"):
        clipviz.explain(tiny_vit, image, "   ")
    with pytest.raises(ClipvizError, match="no prompt given"):
        clipviz.explain(tiny_vit, image, [])
    with pytest.raises(ClipvizError, match="has no option discard_ratio"):
        clipviz.explain(tiny_vit, image, "a dog", method="relevance", discard_ratio=0.5)
    with pytest.raises(ClipvizError, match="start_layer=7 is out of range"):
        clipviz.explain(tiny_vit, image, "a dog", start_layer=7)
    with pytest.raises(ClipvizError, match="too long|tokens"):
        clipviz.explain(tiny_vit, image, "word " * 100)


def test_many_images_equal_one_at_a_time(tiny_vit):
    images = [photo(64, 80, seed=s) for s in range(3)]
    together = clipviz.explain(tiny_vit, images, ["a dog", "a cat"], batch_size=2, start_layer=0)
    for image, batched in zip(images, together):
        alone = clipviz.explain(tiny_vit, image, ["a dog", "a cat"], start_layer=0)
        np.testing.assert_allclose(batched.token_maps, alone.token_maps, rtol=1e-5, atol=1e-7)
        for a, b in zip(batched.text_relevance, alone.text_relevance):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
