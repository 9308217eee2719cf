"""transformers' CLIPModel layout → OpenAI's (clipviz.convert), checked against transformers itself.

The configs are those of the public ``openai/clip-vit-*`` repositories' config.json (text and
vision sizes, QuickGELU, layer-norm eps 1e-5, projection dims); the weights are random.
"""

import json

import pytest
import torch
from safetensors.torch import save_file

transformers = pytest.importorskip("transformers")

import clipviz
from clipviz.convert import from_transformers
from clipviz.errors import ClipvizError
from clipviz.model import OFFICIAL_CONFIGS, architecture_mismatch, build_model, model_config
from conftest import random_ids

_TEXT_B = dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12)
_TEXT_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
_VISION_B = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                 image_size=224)
_VISION_L = dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24)
PUBLIC_CONFIGS = {  # repo -> (official name, projection_dim, text_config, vision_config)
    "openai/clip-vit-base-patch32": ("ViT-B/32", 512, _TEXT_B, dict(_VISION_B, patch_size=32)),
    "openai/clip-vit-base-patch16": ("ViT-B/16", 512, _TEXT_B, dict(_VISION_B, patch_size=16)),
    "openai/clip-vit-large-patch14": ("ViT-L/14", 768, _TEXT_L, dict(_VISION_L, patch_size=14, image_size=224)),
    "openai/clip-vit-large-patch14-336": ("ViT-L/14@336px", 768, _TEXT_L,
                                          dict(_VISION_L, patch_size=14, image_size=336)),
}


def public_config(repo):
    _, projection_dim, text, vision = PUBLIC_CONFIGS[repo]
    common = dict(hidden_act="quick_gelu", layer_norm_eps=1e-5, attention_dropout=0.0)
    return transformers.CLIPConfig(
        text_config=dict(text, vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2, **common),
        vision_config=dict(vision, num_channels=3, **common),
        projection_dim=projection_dim, logit_scale_init_value=2.6592)


@pytest.fixture(scope="module")
def hf_b32():
    torch.manual_seed(0)
    model = transformers.CLIPModel(public_config("openai/clip-vit-base-patch32")).eval()
    with torch.no_grad():  # transformers initialises biases to zero: make them count
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0, 0.02)
    return model


def test_converted_b32_gives_transformers_outputs(hf_b32):
    ours = build_model(from_transformers(hf_b32.state_dict()))
    assert model_config(ours.state_dict()) == OFFICIAL_CONFIGS["ViT-B/32"]
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ids = random_ids(3)
    with torch.no_grad():
        theirs_image = hf_b32.visual_projection(hf_b32.vision_model(pixel_values=pixels).pooler_output)
        theirs_text = hf_b32.text_projection(hf_b32.text_model(input_ids=ids).pooler_output)
        image, text = ours.encode_image(pixels), ours.encode_text(ids)
    assert (image - theirs_image).abs().max() <= 1e-5
    assert (text - theirs_text).abs().max() <= 1e-5
    assert torch.equal(ours.logit_scale, hf_b32.logit_scale)


@pytest.mark.parametrize("repo", list(PUBLIC_CONFIGS))
def test_every_public_config_converts_to_its_official_architecture(repo):
    with torch.device("meta"):  # shapes only: no memory for ViT-L
        state_dict = transformers.CLIPModel(public_config(repo)).state_dict()
    converted = from_transformers(state_dict)
    assert architecture_mismatch(converted, PUBLIC_CONFIGS[repo][0]) is None


def test_q_k_v_are_stacked_in_that_order(hf_b32):
    converted = from_transformers(hf_b32.state_dict())
    attention = hf_b32.vision_model.encoder.layers[3].self_attn
    stacked = converted["visual.transformer.resblocks.3.attn.in_proj_weight"]
    assert torch.equal(stacked[:768], attention.q_proj.weight)
    assert torch.equal(stacked[768:1536], attention.k_proj.weight)
    assert torch.equal(stacked[1536:], attention.v_proj.weight)
    assert torch.equal(converted["visual.proj"], hf_b32.visual_projection.weight.T)


def test_load_reads_a_transformers_file_with_its_config(hf_b32, tmp_path):
    save_file({k: v.contiguous() for k, v in hf_b32.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": {"hidden_act": "quick_gelu"}}))
    model, preprocess = clipviz.load(tmp_path / "model.safetensors", device="cpu")
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = hf_b32.visual_projection(hf_b32.vision_model(pixel_values=pixels).pooler_output)
        assert (model.encode_image(pixels) - theirs).abs().max() <= 1e-5
    assert preprocess.size == 224


def test_a_vision_only_state_dict_is_refused_by_name(hf_b32):
    vision_only = {k: v for k, v in hf_b32.state_dict().items() if not k.startswith("text_")}
    with pytest.raises(ClipvizError, match="not a two-tower ViT CLIPModel .*'hf:' spec"):
        from_transformers(vision_only)
