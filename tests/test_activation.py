"""The MLP activation: build_model(activation=), what load detects, and what it says when it cannot."""

import json
import math
import warnings

import pytest
import torch
from torch import nn

import clipviz
from clipviz import hub
from clipviz.activation import detect_activation
from clipviz.errors import ClipvizError
from clipviz.model import QuickGELU, build_model
from conftest import TINY_VIT, make_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def tiny_state(tmp_path_factory):
    return make_model(TINY_VIT, seed=5).state_dict()


def mlp_by_hand(block, x, activation):
    """c_proj(act(c_fc(x))) written out: QuickGELU x·σ(1.702x), GELU ½x(1 + erf(x/√2))."""
    hidden = x @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
    if activation == "gelu":
        hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
    else:
        hidden = hidden / (1 + torch.exp(-1.702 * hidden))
    return hidden @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_build_model_uses_the_chosen_activation_in_every_block(tiny_state, activation):
    model = build_model(tiny_state, activation=activation)
    blocks = list(model.visual.transformer.resblocks) + list(model.transformer.resblocks)
    kind = nn.GELU if activation == "gelu" else QuickGELU
    assert all(type(block.mlp.gelu) is kind for block in blocks)
    x = torch.randn(2, 5, TINY_VIT["vision_width"], generator=torch.Generator().manual_seed(0))
    block = model.visual.transformer.resblocks[1]
    with torch.no_grad():
        assert torch.allclose(block.mlp(x), mlp_by_hand(block, x, activation), atol=1e-5)


def test_activation_changes_the_embeddings_and_defaults_to_quick_gelu(tiny_state):
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        default = build_model(tiny_state).encode_image(pixels)
        quick = build_model(tiny_state, activation="quick_gelu").encode_image(pixels)
        gelu = build_model(tiny_state, activation="gelu").encode_image(pixels)
    assert torch.equal(default, quick)
    assert (gelu - quick).abs().max() > 1e-4  # the wrong choice is silently different


def test_unknown_activation_is_a_clear_error(tiny_state, tmp_path):
    with pytest.raises(ClipvizError, match="unknown activation 'relu': use 'quick_gelu'"):
        build_model(tiny_state, activation="relu")
    torch.save(tiny_state, tmp_path / "m.pt")
    with pytest.raises(ClipvizError, match="unknown activation"):
        clipviz.load(tmp_path / "m.pt", device="cpu", activation="GELU")


def test_open_clip_config_beside_the_file_decides(tiny_state, tmp_path):
    torch.save(tiny_state, tmp_path / "open_clip_pytorch_model.bin")
    config = {"model_cfg": {"embed_dim": 64, "vision_cfg": {}, "text_cfg": {}}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))  # LAION-style: no quick_gelu
    assert detect_activation(tmp_path / "open_clip_pytorch_model.bin") == "gelu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # detected: nothing to warn about
        model, _ = clipviz.load(tmp_path / "open_clip_pytorch_model.bin", device="cpu")
    assert type(model.transformer.resblocks[0].mlp.gelu) is nn.GELU

    config["model_cfg"]["quick_gelu"] = True  # the timm/*.openai repos say so
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    assert detect_activation(tmp_path / "open_clip_pytorch_model.bin") == "quick_gelu"


def test_transformers_config_and_file_names_decide(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": {"hidden_act": "gelu"}}))
    assert detect_activation(tmp_path / "model.safetensors") == "gelu"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": {}}))
    assert detect_activation(tmp_path / "model.safetensors") == "quick_gelu"  # transformers' default
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert detect_activation(other / "ViT-B-32-quickgelu_laion400m_e32.pt") == "quick_gelu"
    assert detect_activation(other / "ViT-B-32_laion2b.pt") is None


def test_a_plain_file_warns_and_an_explicit_choice_wins(tiny_state, tmp_path):
    torch.save(tiny_state, tmp_path / "plain.pt")
    with pytest.warns(UserWarning, match="assuming QuickGELU .*activation='gelu'"):
        model, _ = clipviz.load(tmp_path / "plain.pt", device="cpu")
    assert type(model.transformer.resblocks[0].mlp.gelu) is QuickGELU
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, _ = clipviz.load(tmp_path / "plain.pt", device="cpu", activation="gelu")
    assert type(model.visual.transformer.resblocks[0].mlp.gelu) is nn.GELU


def test_torchscript_archives_are_quick_gelu(tmp_path):
    scripted = torch.jit.script(nn.Linear(2, 2))
    torch.jit.save(scripted, str(tmp_path / "archive.pt"))
    assert detect_activation(tmp_path / "archive.pt") == "quick_gelu"


def test_official_names_are_registered_with_quick_gelu():
    for name in clipviz.available_models()[:9]:
        assert hub.model_info(name).activation == "quick_gelu"
