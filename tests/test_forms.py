"""Every way people hold a CLIP model (issue 12): model family × form × method.

Each cell explains one photo with two prompts and must either give the plain fp32 model's token
maps (Pearson r ≥ 0.999 per map; ≥ 0.99 in fp16/bf16) or raise a ClipvizError that names the form
(errors by design: ``EXPECTED_ERRORS``). Where the plain model itself refuses a method (a ViT
method on a ResNet, ``attention_pool`` on a ViT) the cell must refuse it the same way. No cell may
raise anything else, and every cell — failing ones too — leaves the model with exactly the hooks
it had before (none): module hooks of every kind, global module hooks and parameter hooks.

Families: clipviz's ViT and ResNet, open_clip's ViT (converted from the clipviz ViT), Hugging
Face CLIPModel (converted too), all with random weights (tests/test_adapters.py's converters).
"""

import copy
import warnings
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clipviz
from clipviz.adapters import adapt
from clipviz.errors import ClipvizError
from clipviz.methods import available_methods

from conftest import SMALL_RESNET, TINY_VIT, make_model
from test_adapters import libraries, models, photo, to_hf, to_openclip  # noqa: F401  (libraries: autouse fixture)

PROMPTS = ["a photo of a dog", "a red car"]
METHODS = available_methods()
FAMILIES = ["clipviz-vit", "clipviz-resnet", "open_clip-vit", "hf"]
PROMPT_FREE = {"rollout", "attention", "attention_pool"}

_BASE = {}


def base(family):
    """The family's plain fp32 model (built once; cells get deep copies)."""
    if family not in _BASE:
        _BASE[family] = build(family)
    return _BASE[family]


def build(family):
    if family == "clipviz-resnet":
        return make_model(SMALL_RESNET, seed=3)
    vit = make_model(TINY_VIT, seed=4)
    if family == "open_clip-vit":
        return to_openclip(vit, TINY_VIT)
    return to_hf(vit, TINY_VIT) if family == "hf" else vit


def image_tower(model):
    return model.vision_model if hasattr(model, "vision_model") else model.visual


def tower_attribute(model):
    return "vision_model" if hasattr(model, "vision_model") else "visual"


def compile_tower(model):
    side, name = adapt(model).input_resolution, tower_attribute(model)
    compiled = torch.compile(getattr(model, name), backend="eager")
    setattr(model, name, compiled)
    pixels = torch.zeros(1, 3, side, side)
    with torch.no_grad():  # run the compiled graph once, so a traced forward exists and would be used
        compiled(pixel_values=pixels) if name == "vision_model" else compiled(pixels)
    return model


def checkpointed(model):
    if hasattr(model, "set_grad_checkpointing"):  # open_clip
        model.set_grad_checkpointing(True)
        return model
    # Hugging Face (gradient_checkpointing_enable before transformers 5): active in training mode only
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    return model.train()


def non_square(family):
    """An open_clip ViT whose input is 64×96 (a 4×6 patch grid)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=2, width=128, head_width=64, patch_size=16, image_size=(64, 96))
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1)
    return CLIP(64, vision, text, quick_gelu=True).eval()


def inference_weights(family):
    with torch.inference_mode():
        return build(family)


def ddp(model):
    return nn.parallel.DistributedDataParallel(model)


# form -> (make the held model from a copy of the plain one, or None to build it from the family;
#          the autograd context the call runs in)
FORMS = {
    "fp32": (lambda m: m, nullcontext),
    "fp16": (lambda m: m.half(), nullcontext),
    "bf16": (lambda m: m.bfloat16(), nullcontext),
    "autocast bf16": (lambda m: m, lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
    "DataParallel": (nn.DataParallel, nullcontext),
    "DistributedDataParallel": (ddp, nullcontext),
    "compiled model": (lambda m: torch.compile(m, backend="eager"), nullcontext),
    "compiled tower": (compile_tower, nullcontext),
    "tower compiled in place": (lambda m: (image_tower(m).compile(backend="eager"), m)[1], nullcontext),
    "no_grad": (lambda m: m, torch.no_grad),
    "enable_grad": (lambda m: m, torch.enable_grad),
    "inference_mode": (lambda m: m, torch.inference_mode),
    "weights made in inference_mode": (None, nullcontext),
    "gradient checkpointing": (checkpointed, nullcontext),
    "image tower alone": (image_tower, nullcontext),
    "non-square tower": (None, nullcontext),
    "meta device": (lambda m: m.to("meta"), nullcontext),
}
BUILDERS = {"weights made in inference_mode": inference_weights, "non-square tower": non_square}
# forms a family cannot take: clipviz's models have no checkpointing switch; only open_clip builds
# non-square towers (clipviz's and Hugging Face's image_size is one side)
NOT_APPLICABLE = {("clipviz-vit", "gradient checkpointing"), ("clipviz-resnet", "gradient checkpointing")} | {
    (family, "non-square tower") for family in FAMILIES if family != "open_clip-vit"}

# (form, method or None for every method) -> what the ClipvizError must say: the errors by design
EXPECTED_ERRORS = {
    ("meta device", None): "meta device",
    ("non-square tower", None): "not square",
    **{("weights made in inference_mode", m): "inference_mode" for m in set(METHODS) - PROMPT_FREE},
    **{("image tower alone", m): "image tower alone" for m in set(METHODS) - PROMPT_FREE},
}


def expected_error(form, method):
    return EXPECTED_ERRORS.get((form, None)) or EXPECTED_ERRORS.get((form, method))


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    """A one-process gloo group, so DistributedDataParallel can be built on the CPU."""
    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    if dist.is_initialized():
        yield
        return
    store = dist.FileStore(str(tmp_path_factory.mktemp("ddp") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def hook_count(*models):
    """Every hook reachable from the models: module hooks of each kind, global module hooks, and
    hooks on parameters and buffers (intermediate tensors' hooks die with their graph)."""
    from torch.nn.modules import module as torch_module
    count = sum(len(getattr(torch_module, name)) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"))
    for model in models:
        for m in model.modules():
            count += sum(len(getattr(m, name) or {}) for name in (
                "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))
        for tensor in list(model.parameters()) + list(model.buffers()):
            count += len(tensor._backward_hooks or {}) + len(getattr(tensor, "_post_accumulate_grad_hooks", None) or {})
    return count


_REFERENCE = {}


def reference(family, method):
    """The plain fp32 model's Explanation, or the ClipvizError it raises."""
    key = (family, method)
    if key not in _REFERENCE:
        try:
            _REFERENCE[key] = clipviz.explain(base(family), photo(), PROMPTS, method=method)
        except ClipvizError as error:
            _REFERENCE[key] = error
    return _REFERENCE[key]


_HELD = {}


def held(family, form):
    key = (family, form)
    if key not in _HELD:
        make, _ = FORMS[form]
        _HELD[key] = BUILDERS[form](family) if make is None else make(copy.deepcopy(base(family)))
    return _HELD[key]


def pearson(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.std() == 0 or b.std() == 0:  # a flat map (Grad-CAM's ReLU can zero one) correlates with a flat one
        return 1.0 if np.allclose(a, b, atol=1e-6 * max(1.0, np.abs(b).max())) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


CELLS = [(f, form, m) for f in FAMILIES for form in FORMS for m in METHODS if (f, form) not in NOT_APPLICABLE]


@pytest.mark.parametrize("family, form, method", CELLS)
def test_every_form_explains_like_the_plain_model_or_names_itself(family, form, method, request):
    if form == "DistributedDataParallel":
        request.getfixturevalue("process_group")
    model = held(family, form)
    plain = reference(family, method)
    inner = base(family)
    before = hook_count(model, inner)  # 0, but for Hugging Face checkpointing's own 2 hooks
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. DataParallel on a machine without GPUs
        try:
            with FORMS[form][1]():
                result = clipviz.explain(model, photo(), PROMPTS, method=method)
        except ClipvizError as error:
            result = error
    assert hook_count(model, inner) == before  # also after a failing cell
    message = expected_error(form, method)
    if isinstance(plain, ClipvizError) and (form, None) not in EXPECTED_ERRORS:
        # the method does not apply to this family at all: refused as on the plain model
        assert isinstance(result, ClipvizError) and str(result) == str(plain)
        return
    if message is not None:
        assert isinstance(result, ClipvizError), f"{form}/{method} should be refused"
        assert message in str(result)
        return
    assert not isinstance(result, ClipvizError), f"{form}/{method}: {result}"
    minimum = 0.99 if form in ("fp16", "bf16") else 0.999
    assert result.token_maps.shape == plain.token_maps.shape
    for ours, theirs in zip(result.token_maps, plain.token_maps):
        assert pearson(ours, theirs) >= minimum
    if form == "image tower alone":
        assert np.isnan(result.scores).all()  # no text tower: nothing to score against
    else:
        tolerance = 2e-2 if form in ("fp16", "bf16") else 1e-5
        np.testing.assert_allclose(result.scores, plain.scores, atol=tolerance)


def test_forms_are_restored_after_explaining(process_group):
    """Checkpointing flags, the compile stance and the grad mode are as the caller left them."""
    model = held("open_clip-vit", "gradient checkpointing")
    clipviz.explain(model, photo(), PROMPTS[0], method="relevance")
    assert model.visual.transformer.grad_checkpointing and model.transformer.grad_checkpointing
    hf = held("hf", "gradient checkpointing")
    clipviz.explain(hf, photo(), PROMPTS[0], method="relevance")
    assert hf.vision_model.encoder.gradient_checkpointing and hf.training
    with torch.inference_mode():
        clipviz.explain(base("clipviz-vit"), photo(), PROMPTS[0], method="relevance")
        assert torch.is_inference_mode_enabled()
    with torch.no_grad():
        clipviz.explain(base("clipviz-vit"), photo(), PROMPTS[0], method="relevance")
        assert not torch.is_grad_enabled()


# --- the pieces under the matrix, against hand computations --------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_layernorm_computes_in_fp32_and_returns_the_input_dtype(dtype):
    from clipviz.model import LayerNorm
    generator = torch.Generator().manual_seed(0)
    norm = LayerNorm(32)
    with torch.no_grad():
        norm.weight.copy_(1 + torch.randn(32, generator=generator))
        norm.bias.copy_(torch.randn(32, generator=generator))
    norm = norm.to(dtype)
    x = (3 * torch.randn(4, 32, generator=generator)).to(dtype)
    out = norm(x)
    # by hand, in fp64 from the same half-precision numbers
    x64, w64, b64 = x.double(), norm.weight.double(), norm.bias.double()
    mean, var = x64.mean(-1, keepdim=True), x64.var(-1, unbiased=False, keepdim=True)
    expected = (x64 - mean) / torch.sqrt(var + norm.eps) * w64 + b64
    assert out.dtype == dtype
    assert torch.equal(out, expected.to(dtype)) or (out.double() - expected).abs().max() <= 2 * torch.finfo(dtype).eps * expected.abs().max()


def test_need_weights_passed_positionally_to_a_recorded_attention():
    from clipviz.hooks import AttentionRecorder
    model = copy.deepcopy(base("clipviz-vit"))
    block = model.visual.transformer.resblocks[0]
    x = torch.randn(2, 17, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain_out, plain_weights = block.attn(x, x, x, None, True, None, False)  # per-head weights, positionally
        with AttentionRecorder(model.visual, layers=[0]) as recorder:
            out, weights = block.attn(x, x, x, None, True, None, False)
            quiet_out, none = block.attn(x, x, x, None, False)  # need_weights=False, positionally
    # by hand: softmax(QKᵀ/√d) per head from the packed projection
    q, k, _ = F.linear(x, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
    heads = block.attn.num_heads
    q, k = (t.reshape(2, 17, heads, -1).transpose(1, 2) for t in (q, k))
    expected = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain_weights, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, plain_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(quiet_out, plain_out, rtol=1e-5, atol=1e-6)
    assert none is None and recorder.layers[0].probs.shape == (2, 2, 17, 17)
    assert hook_count(model) == 0


def test_unwrap_sees_through_nested_wrappers():
    from clipviz.forms import unwrap
    model = base("clipviz-vit")
    assert unwrap(nn.DataParallel(torch.compile(nn.DataParallel(model), backend="eager"))) is model


@pytest.mark.parametrize("form", ["autocast bf16", "inference_mode", "compiled tower", "fp16"])
def test_zero_shot_sees_the_model_as_explain_does(form):
    plain = clipviz.classify(base("clipviz-vit"), photo(), PROMPTS)
    with FORMS[form][1]():
        result = clipviz.classify(held("clipviz-vit", form), photo(), PROMPTS)
    np.testing.assert_allclose(result.probs, plain.probs, atol=2e-2 if form == "fp16" else 1e-5)


def test_hugging_face_vision_model_with_projection_alone():
    """CLIPVisionModelWithProjection holding the CLIPModel's vision weights: the full model's
    gradient-free maps, NaN scores, and prompt methods refused by name."""
    import transformers
    full = base("hf")
    config = copy.deepcopy(full.config.vision_config)
    config.projection_dim = full.config.projection_dim  # the vision config's own default differs
    tower = transformers.CLIPVisionModelWithProjection(config)
    state = {k: v for k, v in full.state_dict().items() if k.startswith(("vision_model.", "visual_projection."))}
    result = tower.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all("position_ids" in k for k in result.missing_keys)
    tower.eval()
    for method in ("rollout", "attention"):
        ours, plain = clipviz.explain(tower, photo(), PROMPTS, method=method), reference("hf", method)
        for a, b in zip(ours.token_maps, plain.token_maps):
            assert pearson(a, b) >= 0.999
        assert np.isnan(ours.scores).all()
    with pytest.raises(ClipvizError, match="image tower alone"):
        clipviz.explain(tower, photo(), PROMPTS, method="relevance")
    assert hook_count(tower) == 0


def test_something_that_is_not_a_model_is_still_refused_clearly():
    with pytest.raises(ClipvizError, match="cannot explain a str"):
        clipviz.explain("ViT-B/32", photo(), PROMPTS)


def test_submodules_lists_what_modules_lists(models):
    """clipviz.forms.submodules is list(module.modules()), faster: the same modules in the same
    order, a module shared by two parents once, and no endless walk through a module made its own
    descendant."""
    from clipviz.forms import submodules
    shared = nn.Linear(2, 2)
    tree = nn.Sequential(nn.Sequential(shared, nn.ReLU()), nn.ModuleDict({"a": shared, "b": nn.Identity()}))
    tree.add_module("gap", None)
    looped = nn.Sequential(nn.Sequential(nn.Linear(2, 2)))
    looped[0].back = looped
    for module in (tree, looped, *models.values()):
        assert submodules(module) == list(module.modules())
    assert [type(m).__name__ for m in submodules(tree)] == ["Sequential", "Sequential", "Linear", "ReLU",
                                                            "ModuleDict", "Identity"]
