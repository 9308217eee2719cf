"""The CLIP architecture against an independent functional re-computation from the state dict."""

import pytest
import torch

from clipviz.errors import ClipvizError
from clipviz.model import CLIP, OFFICIAL_CONFIGS, build_model, model_config

import reference_clip as ref
from conftest import random_ids


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("fixture", ["vit_b32", "vit_b16", "small_resnet"])
def test_state_dict_round_trips_strictly(fixture, request):
    model = request.getfixturevalue(fixture)
    state_dict = model.state_dict()
    rebuilt = CLIP(**model_config(state_dict))
    rebuilt.load_state_dict(state_dict, strict=True)  # raises on any name or shape mismatch
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, state_dict[key]), key


@pytest.mark.parametrize("fixture", ["vit_b32", "vit_b16", "small_resnet"])
def test_encoders_match_plain_recomputation(fixture, request):
    model = request.getfixturevalue(fixture)
    sd = {k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    resolution = model.visual.input_resolution
    pixels = torch.randn(2, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    ids = random_ids(3, seed=1)
    with torch.no_grad():
        image = model.encode_image(pixels)
        text = model.encode_text(ids)
        logits_per_image, logits_per_text = model(pixels, ids)
        expected_image = ref.image(sd, pixels.double())
        expected_text = ref.text(sd, ids)[0]
        expected_logits = ref.logits(sd, pixels.double(), ids)
    assert image.shape == (2, model.visual.output_dim)
    assert relative_error(image.double(), expected_image) <= 1e-5
    assert relative_error(text.double(), expected_text) <= 1e-5
    assert relative_error(logits_per_image.double(), expected_logits) <= 1e-5
    assert torch.equal(logits_per_text, logits_per_image.t())


def test_build_model_reads_official_sizes(vit_b16):
    config = model_config(vit_b16.state_dict())
    assert config == OFFICIAL_CONFIGS["ViT-B/16"]
    assert vit_b16.visual.patch_grid == 14


def test_fp16_checkpoint_runs_in_fp32(tiny_vit):
    half = {k: v.half() for k, v in tiny_vit.state_dict().items()}
    model = build_model(half)
    assert model.dtype == torch.float32
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model.encode_image(pixels)
        expected = build_model({k: v.float() for k, v in half.items()}).encode_image(pixels)
    assert torch.equal(out, expected)


def test_mismatched_state_dict_names_first_keys(tiny_vit):
    sd = dict(tiny_vit.state_dict())
    del sd["visual.ln_post.weight"]
    sd["visual.extra.weight"] = torch.zeros(3)
    with pytest.raises(ClipvizError, match=r"missing 1 keys \(first: visual\.ln_post\.weight\).*unexpected keys \(first: visual\.extra\.weight\)"):
        build_model(sd)


def test_wrong_shapes_and_foreign_dicts_are_clear_errors(tiny_vit):
    sd = dict(tiny_vit.state_dict())
    sd["visual.ln_post.bias"] = torch.zeros(7)
    with pytest.raises(ClipvizError, match="visual.ln_post.bias"):
        build_model(sd)
    with pytest.raises(ClipvizError, match="not an OpenAI-format CLIP state dict"):
        build_model({"fc.weight": torch.zeros(2, 2)})


def test_built_model_owns_its_weights(tiny_vit):
    """build_model copies: changing the built model never changes the caller's state dict."""
    state_dict = tiny_vit.state_dict()
    before = state_dict["visual.proj"].clone()
    model = build_model(state_dict)
    with torch.no_grad():
        model.visual.proj.add_(1.0)
    assert torch.equal(state_dict["visual.proj"], before)
    assert model.transformer.resblocks[0].attn_mask.device.type == "cpu"
    assert torch.equal(model.transformer.resblocks[0].attn_mask, torch.full((77, 77), float("-inf")).triu(1))


def test_a_vit_without_its_projection_names_that_key(tiny_vit):
    sd = dict(tiny_vit.state_dict())
    del sd["visual.proj"]
    with pytest.raises(ClipvizError, match=r"no visual\.proj entry"):
        build_model(sd)


def test_impossible_shapes_are_clear_errors(tiny_vit):
    sd = dict(tiny_vit.state_dict())
    sd["ln_final.weight"] = torch.ones(3)  # a 3-wide text tower: heads = 3 // 64 = 0
    with pytest.raises(ClipvizError):
        build_model(sd)
