"""open_clip and Hugging Face CLIP models behind the same recorder and methods.

One small clipviz ViT is converted to an open_clip ``CLIP`` (same parameter names) and to a
``transformers.CLIPModel`` (q/k/v split out of ``in_proj``, renamed); all three must give the
same scores and the same maps. Random weights from configs: nothing is downloaded.
"""

import json
import sys

import numpy as np
import pytest
import torch

import clipviz
from clipviz.adapters import adapt, load_spec
from clipviz.errors import ClipvizError

import torchvision_shim
from conftest import make_model
from test_new_methods import rel_err


CONFIG = dict(embed_dim=64, image_resolution=80, vision_layers=3, vision_width=128, vision_patch_size=16,
              context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2, transformer_layers=2)
PROMPTS = ["a photo of a dog", "a red car", "two people dancing"]
METHODS = ["rollout", "relevance", "attention", "gradcam", "legrad", "gradeclip"]


@pytest.fixture(scope="module", autouse=True)
def libraries():
    """transformers, then open_clip on the torchvision shim; both leave sys.modules afterwards, so
    later tests see an open_clip that was never imported (the tokenizer looks for its files
    without importing it)."""
    before = set(sys.modules)
    transformers = pytest.importorskip("transformers")  # before the shim: its torchvision probe sees none
    shimmed = torchvision_shim.install()
    open_clip = pytest.importorskip("open_clip")
    yield transformers, open_clip
    dropped = ("open_clip", "torchvision") if shimmed else ("open_clip",)  # a real torchvision stays
    for name in set(sys.modules) - before:
        if name.split(".")[0] in dropped:
            del sys.modules[name]


# --- converters ---------------------------------------------------------------------------------

def to_openclip(model, config=CONFIG, **text_options):
    """clipviz → open_clip: the parameter names are OpenAI's in both; only the config is spelled out.
    text_options: more CLIPTextCfg fields (pool_type, no_causal_mask)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=config["vision_layers"], width=config["vision_width"], head_width=64,
                           patch_size=config["vision_patch_size"], image_size=config["image_resolution"])
    if isinstance(config["vision_layers"], tuple):
        vision.patch_size = None
    text = CLIPTextCfg(context_length=config["context_length"], vocab_size=config["vocab_size"],
                       width=config["transformer_width"], heads=config["transformer_heads"],
                       layers=config["transformer_layers"], **text_options)
    converted = CLIP(config["embed_dim"], vision, text, quick_gelu=True)
    converted.load_state_dict(model.state_dict(), strict=True)
    return converted.eval()


def hf_state_dict(sd):
    """clipviz (OpenAI names) → transformers CLIPModel names; in_proj split into q, k, v."""
    out = {}

    def block(src, dst):
        for name, w, b in zip("qkv", sd[src + ".attn.in_proj_weight"].chunk(3), sd[src + ".attn.in_proj_bias"].chunk(3)):
            out[f"{dst}.self_attn.{name}_proj.weight"], out[f"{dst}.self_attn.{name}_proj.bias"] = w, b
        for a, b in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            out[f"{dst}.{b}.weight"], out[f"{dst}.{b}.bias"] = sd[f"{src}.{a}.weight"], sd[f"{src}.{a}.bias"]

    def count(prefix):
        return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})

    for i in range(count("visual.transformer.resblocks.")):
        block(f"visual.transformer.resblocks.{i}", f"vision_model.encoder.layers.{i}")
    for i in range(count("transformer.resblocks.")):
        block(f"transformer.resblocks.{i}", f"text_model.encoder.layers.{i}")
    for a, b in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm"),
                 ("ln_final", "text_model.final_layer_norm")):
        out[b + ".weight"], out[b + ".bias"] = sd[a + ".weight"], sd[a + ".bias"]
    out.update({
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "visual_projection.weight": sd["visual.proj"].t(),
        "text_projection.weight": sd["text_projection"].t(),
        "logit_scale": sd["logit_scale"],
    })
    return out


def to_hf(model, config=CONFIG, eos_token_id=2):
    """clipviz → transformers.CLIPModel. eos_token_id=2 is the older configs' value (pool at the
    highest id); 49407 the newer (pool at the first EOT)."""
    import transformers

    text = dict(vocab_size=config["vocab_size"], hidden_size=config["transformer_width"],
                intermediate_size=4 * config["transformer_width"], num_attention_heads=config["transformer_heads"],
                num_hidden_layers=config["transformer_layers"], max_position_embeddings=config["context_length"],
                hidden_act="quick_gelu", eos_token_id=eos_token_id, bos_token_id=49406, pad_token_id=1)
    width = config["vision_width"]
    vision = dict(hidden_size=width, intermediate_size=4 * width, num_attention_heads=width // 64,
                  num_hidden_layers=config["vision_layers"], image_size=config["image_resolution"],
                  patch_size=config["vision_patch_size"], hidden_act="quick_gelu")
    converted = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                               projection_dim=config["embed_dim"]))
    result = converted.load_state_dict(hf_state_dict(model.state_dict()), strict=False)
    assert not result.unexpected_keys and all("position_ids" in k for k in result.missing_keys)
    return converted.eval()


@pytest.fixture(scope="module")
def models():
    model = make_model(CONFIG, seed=21)
    return {"clipviz": model, "open_clip": to_openclip(model), "hf": to_hf(model)}


def photo(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (90, 120, 3), dtype=np.uint8)


# --- cross-family agreement -----------------------------------------------------------------------

_EXPLAINED = {}


def explained(models, family, method):
    key = (family, method)
    if key not in _EXPLAINED:
        _EXPLAINED[key] = clipviz.explain(models[family], photo(), PROMPTS, method=method)
    return _EXPLAINED[key]


@pytest.mark.parametrize("family", ["open_clip", "hf"])
@pytest.mark.parametrize("method", METHODS)
def test_converted_models_explain_like_the_clipviz_model(models, family, method):
    reference, other = explained(models, "clipviz", method), explained(models, family, method)
    assert rel_err(other.scores, reference.scores) <= 1e-5
    assert rel_err(other.probs, reference.probs) <= 1e-5
    assert other.token_maps.shape == reference.token_maps.shape == (len(PROMPTS), 5, 5)
    assert rel_err(other.token_maps, reference.token_maps) <= 1e-5
    if reference.text_relevance is not None:
        for ours, theirs in zip(reference.text_relevance, other.text_relevance):
            assert rel_err(theirs, ours) <= 1e-5


def test_adapters_read_the_right_geometry(models):
    for family in ("open_clip", "hf"):
        adapter = adapt(models[family])
        assert type(adapter).__name__ == {"open_clip": "OpenClipAdapter", "hf": "HuggingFaceAdapter"}[family]
        assert (adapter.family, adapter.input_resolution, adapter.patch_grid) == ("vit", 80, 5)
        assert (adapter.num_layers, adapter.text_layers, adapter.context_length) == (3, 2, 77)


def test_hf_newer_eos_rule_pools_the_same_token(models):
    newer = to_hf(models["clipviz"], eos_token_id=49407)
    ids = clipviz.tokenize(PROMPTS)
    assert torch.equal(adapt(newer).eot_positions(ids), ids.argmax(dim=-1))
    exp = clipviz.explain(newer, photo(), PROMPTS, method="relevance")
    assert rel_err(exp.scores, explained(models, "clipviz", "relevance").scores) <= 1e-5



# --- open_clip text towers pooled at their first token ----------------------------------------------

def plain_text_relevance(model, image, prompts, pool, causal):
    """Per prompt, Chefer's rule (test_explain.plain_relevance) on the last text block of the plain
    fp64 re-computation (reference_clip), read at the pooled row, over the words 1 … EOT − 1."""
    import reference_clip as ref
    from clipviz.preprocess import preprocess_image
    from test_explain import double_state_dict, plain_relevance

    sd = double_state_dict(model)
    ids = clipviz.tokenize(prompts)
    image_emb = ref.vit_image(sd, preprocess_image(image, CONFIG["image_resolution"])[0][None].double())[0]
    text_emb, text_probs = ref.text(sd, ids, pool=pool, causal=causal)
    scores = sd["logit_scale"].exp() * (torch.nn.functional.normalize(image_emb, dim=-1)
                                        @ torch.nn.functional.normalize(text_emb, dim=-1).t())[0]
    rows = [0 if pool == "first" else int(i.argmax()) for i in ids]
    return scores, [plain_relevance(scores, p, text_probs, len(text_probs) - 1, row=p)[rows[p], 1:int(ids[p].argmax())]
                    .detach().numpy() for p in range(len(prompts))]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_a_text_tower_pooled_at_its_first_token_gives_one_relevance_per_word(models, monkeypatch, causal):
    """open_clip's text_pool_type="first": text_relevance has one value per word, as at EOT (it was
    empty). Under a causal mask the first token sees only itself, so the embedding does not depend
    on the words: every prompt scores the same and every word's relevance is exactly 0. Without
    the mask, Chefer's rule at row 0 of the plain fp64 re-computation, on the fast and the general path."""
    import functools

    import clipviz.explanation as explanation
    import clipviz.pipeline as pipeline

    model = to_openclip(models["clipviz"], pool_type="first", no_causal_mask=not causal)
    assert adapt(model).text_pool == "first"
    fast = clipviz.explain(model, photo(), PROMPTS, method="relevance")
    with monkeypatch.context() as patch:
        patch.setattr(explanation, "run_method", functools.partial(pipeline.run_method, fast=False))
        general = clipviz.explain(model, photo(), PROMPTS, method="relevance")
    scores, expected = plain_text_relevance(models["clipviz"], photo(), PROMPTS, "first", causal)
    np.testing.assert_allclose(fast.scores, scores.detach().numpy() / model.logit_scale.exp().item(), rtol=1e-5)
    for exp in (fast, general):
        assert [len(r) for r in exp.text_relevance] == [len(t) for t in exp.text_tokens] == [5, 3, 3]
        for ours, theirs in zip(exp.text_relevance, expected):
            if causal:
                assert np.all(ours == 0) and np.all(theirs == 0)
            else:
                assert np.abs(theirs).max() > 0 and rel_err(ours, theirs) <= 1e-5
    if causal:
        assert np.ptp(fast.scores) <= 1e-6 * np.abs(fast.scores).max()  # one embedding for every prompt

# --- Hugging Face attention implementation: eager while recording, restored after ----------------

def implementations(model):
    return [model.config._attn_implementation, model.config.vision_config._attn_implementation,
            model.config.text_config._attn_implementation]


def test_hf_runs_eager_while_encoding_and_restores_the_setting(models):
    model = models["hf"]
    if hasattr(model, "set_attn_implementation"):  # transformers ≥ 4.48 switch at run time
        model.set_attn_implementation("sdpa")
        assert "eager" not in implementations(model)  # so recording has to switch
    before = implementations(model)
    seen = []
    layer = model.vision_model.encoder.layers[0].self_attn
    handle = layer.register_forward_hook(lambda module, args, output: seen.append(module.config._attn_implementation))
    try:
        clipviz.explain(model, photo(), PROMPTS[:1], method="relevance")
    finally:
        handle.remove()
    assert seen == ["eager"] and implementations(model) == before

    def fail(module, args, output):
        raise KeyboardInterrupt  # a forward pass stopped half-way (Ctrl-C in a notebook)

    handle = model.vision_model.encoder.layers[1].register_forward_hook(fail)
    try:
        with pytest.raises(KeyboardInterrupt):
            adapt(model).encode_image(torch.zeros(1, 3, 80, 80))
    finally:
        handle.remove()
    assert implementations(model) == before


def test_recorder_leaves_hf_outputs_unchanged(models):
    from clipviz.adapters.huggingface import eager_attention
    from clipviz.hooks import AttentionRecorder

    model, pixels = models["hf"], torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), eager_attention(model):
        plain = model.get_image_features(pixel_values=pixels)
        with AttentionRecorder(model.vision_model) as recorder:
            recorded = model.get_image_features(pixel_values=pixels)
    plain, recorded = (x if isinstance(x, torch.Tensor) else x.pooler_output for x in (plain, recorded))
    # on transformers < 4.48 asking for the probabilities moves SDPA layers to the eager path:
    # the same function, rounding may differ
    torch.testing.assert_close(recorded, plain, rtol=1e-5, atol=1e-6)
    assert recorder.layers[2].probs.shape == (2, 2, 26, 26)
    torch.testing.assert_close(recorder.layers[2].probs.sum(-1), torch.ones(2, 2, 26))


# --- open_clip ResNet: the ResNet methods on the other family ------------------------------------

def test_openclip_resnet_matches_clipviz(small_resnet):
    from conftest import SMALL_RESNET

    converted = to_openclip(small_resnet, SMALL_RESNET)
    assert adapt(converted).family == "resnet"
    for method, contrasts in (("gradcam", ({}, {"against": "a red car"})), ("attention_pool", ({},))):
        for kwargs in contrasts:  # attention_pool ignores the prompt, so it refuses a contrast
            ours = clipviz.explain(small_resnet, photo(3), "a photo of a dog", method=method, **kwargs)
            theirs = clipviz.explain(converted, photo(3), "a photo of a dog", method=method, **kwargs)
            assert rel_err(theirs.scores, ours.scores) <= 1e-5
            if np.abs(ours.token_maps).max() > 0:
                assert rel_err(theirs.token_maps, ours.token_maps) <= 1e-5
            else:
                assert np.abs(theirs.token_maps).max() <= 1e-12


# --- loading specs offline: a registered open_clip config with a checkpoint file, an HF folder -----

@pytest.fixture(scope="module")
def saved(models, tmp_path_factory):
    import open_clip

    folder = tmp_path_factory.mktemp("specs")
    name = "clipviz-test-vit"
    (folder / "configs").mkdir()
    (folder / "configs" / f"{name}.json").write_text(json.dumps({
        "embed_dim": CONFIG["embed_dim"], "quick_gelu": True,
        "vision_cfg": {"image_size": CONFIG["image_resolution"], "layers": CONFIG["vision_layers"],
                       "width": CONFIG["vision_width"], "patch_size": CONFIG["vision_patch_size"]},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": CONFIG["transformer_width"],
                     "heads": CONFIG["transformer_heads"], "layers": CONFIG["transformer_layers"]}}))
    open_clip.add_model_config(folder / "configs")
    torch.save(models["open_clip"].state_dict(), folder / "weights.pt")
    models["hf"].save_pretrained(folder / "hf")
    return {"openclip": f"openclip:{name}/{folder / 'weights.pt'}", "hf": f"hf:{folder / 'hf'}"}


@pytest.mark.parametrize("kind", ["openclip", "hf"])
def test_specs_load_through_clipviz_load(models, saved, kind):
    model, preprocess = clipviz.load(saved[kind], device="cpu")
    assert preprocess.size == 80 and not model.training
    exp = clipviz.explain(model, photo(), PROMPTS, method="relevance")
    reference = explained(models, "clipviz", "relevance")
    assert rel_err(exp.scores, reference.scores) <= 1e-5
    assert rel_err(exp.token_maps, reference.token_maps) <= 1e-5


def test_cli_explains_an_hf_model(models, saved, tmp_path, capsys):
    cli = pytest.importorskip("clipviz.cli")
    from PIL import Image

    image = tmp_path / "photo.png"
    Image.fromarray(photo()).save(image)
    code = cli.main(["explain", str(image), PROMPTS[0], PROMPTS[1], "--model", saved["hf"], "--json",
                     "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code in (0, None)
    result = json.loads(capsys.readouterr().out)
    reference = explained(models, "clipviz", "relevance")
    assert rel_err(result["results"][0]["scores"], reference.scores[:2]) <= 1e-5


# --- clear errors ---------------------------------------------------------------------------------

def test_missing_extras_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip now fails as if absent
    with pytest.raises(ClipvizError, match=r"pip install clipviz\[openclip\]"):
        load_spec("openclip:ViT-B-16/laion2b_s34b_b88k", "cpu")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ClipvizError, match=r"pip install clipviz\[hf\]"):
        load_spec("hf:openai/clip-vit-base-patch32", "cpu")


@pytest.mark.parametrize("spec, message", [
    ("openclip:ViT-B-16", "names no weights"),
    ("openclip:ViT-B-61/laion2b_s34b_b88k", "did you mean ViT-B-16"),
    ("openclip:ViT-B-16/no_such_tag", "laion2b_s34b_b88k"),
    ("hf:", "repository id"),
])
def test_bad_specs_fail_before_any_download(spec, message):
    with pytest.raises(ClipvizError, match=message):
        load_spec(spec, "cpu")


def test_unsupported_open_clip_tower_is_refused_clearly():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    pooled = CLIP(64, CLIPVisionCfg(layers=1, width=64, patch_size=16, image_size=32, pool_type="avg"),
                  CLIPTextCfg(width=64, heads=1, layers=1))
    with pytest.raises(ClipvizError, match="CLS token"):
        clipviz.explain(pooled, photo(), "a dog")


def test_hub_retry_warnings_are_muted_while_loading_and_restored_after(caplog):
    """Offline, huggingface_hub logs a warning per retry (a dozen lines before clipviz's one-line
    error); they are muted during the load only."""
    import logging

    from clipviz.adapters.huggingface import _quiet_hub_retries

    retry_logger = logging.getLogger("huggingface_hub.utils._http")
    with caplog.at_level(logging.WARNING):
        with _quiet_hub_retries():
            retry_logger.warning("'[Errno -2] Name or service not known' thrown while requesting HEAD ... Retrying in 1s")
        assert not caplog.records
        retry_logger.warning("after the load")
    assert [r.getMessage() for r in caplog.records] == ["after the load"]
