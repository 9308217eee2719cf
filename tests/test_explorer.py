"""The notebook explorer driven without a browser: set each widget's value, check that the image
shown changed and equals a direct ``clipviz.explain`` with those options, and count the model's
forward passes to prove which switches re-run it (clipviz.explorer's table)."""

import io
import sys

import numpy as np
import pytest
from PIL import Image

import clipviz
from clipviz.errors import ClipvizError
from clipviz.maps import map_to_photo, normalise_maps
from clipviz.render import overlay

pytest.importorskip("ipywidgets")

PROMPT = "a red car"


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(7).integers(0, 256, (50, 80, 3), dtype=np.uint8)


@pytest.fixture
def runs(tiny_vit):
    """A list that grows by one at every forward pass of the image encoder."""
    calls = []
    handle = tiny_vit.visual.register_forward_pre_hook(lambda module, inputs: calls.append(1))
    yield calls
    handle.remove()


def direct(model, image, prompt, method, head=None, **options):
    """The map a plain explain() gives for these options: [H, W] on the photo."""
    exp = clipviz.explain(model, image, prompt, method=method, **options)
    if head is None:
        return exp.maps[0]
    return map_to_photo(normalise_maps(exp.head_maps[0, head][None]), exp.crop_box)[0]


def shown(explorer):
    """The image widget's PNG, decoded: uint8 [h, w, 3]."""
    with Image.open(io.BytesIO(explorer.image.value)) as png:
        return np.asarray(png.convert("RGB"))


def assert_shows(explorer, image, heat, alpha, cmap):
    """The explorer's overlay is the direct map blended with these switches (±1 level: float
    summation order may differ between one recording from block 0 and a direct one)."""
    expected = overlay(image, heat, cmap=cmap, alpha=alpha)
    assert np.abs(explorer.overlay.astype(int) - expected).max() <= 1
    assert np.allclose(explorer.explanation.maps[0], heat, atol=1e-5, equal_nan=True)


def test_switches_match_direct_explain_and_only_prompt_and_method_rerun(tiny_vit, image, runs):
    explorer = clipviz.explore(tiny_vit, image, PROMPT, method="relevance")
    c = explorer.controls
    assert len(runs) == 1  # one recording, from block 0
    assert c["layer"].value == 2 and c["layer"].max == 2  # relevance's default start: the last of 3 blocks
    before = shown(explorer)
    assert_shows(explorer, image, direct(tiny_vit, image, PROMPT, "relevance"), 0.5, "jet")

    runs.clear()
    for name, value in (("opacity", 0.8), ("cmap", "viridis"), ("layer", 0), ("head", 1), ("layer", 1)):
        c[name].value = value
    assert runs == []  # none of these ran the model
    assert not np.array_equal(shown(explorer), before)
    heat = direct(tiny_vit, image, PROMPT, "relevance", head=1, start_layer=1)
    runs.clear()
    assert_shows(explorer, image, heat, 0.8, "viridis")

    c["head"].value = None  # the method's map from block 0: recomputed from the same records
    c["layer"].value = 0
    assert_shows(explorer, image, direct(tiny_vit, image, PROMPT, "relevance", start_layer=0), 0.8, "viridis")
    runs.clear()

    c["prompt"].value = "a green tree"  # a new prompt: one run
    assert len(runs) == 1
    assert_shows(explorer, image, direct(tiny_vit, image, "a green tree", "relevance", start_layer=0), 0.8, "viridis")
    runs.clear()
    c["prompt"].value = PROMPT  # back: cached
    assert runs == []

    c["method"].value = "rollout"  # a new method: one run, its own default start block (0)
    assert len(runs) == 1 and c["layer"].value == 0 and c["head"].disabled
    c["layer"].value = 2
    assert len(runs) == 1  # rollout's start block is recomputed from the records
    runs.clear()
    assert_shows(explorer, image, direct(tiny_vit, image, PROMPT, "rollout", start_layer=2), 0.8, "viridis")


@pytest.mark.parametrize("method", ["attention", "gradcam"])
def test_block_methods_record_every_block_in_one_pass(tiny_vit, image, runs, method):
    explorer = clipviz.explore(tiny_vit, image, PROMPT, method=method, alpha=0.3, cmap="inferno")
    c = explorer.controls
    assert c["layer"].description == "block" and c["head"].disabled == (method == "gradcam")
    for block in (0, 1):
        c["layer"].value = block
        if method == "attention":
            c["head"].value = 1
        # attention's blocks and heads come from the first recording; Grad-CAM's features are the
        # tokens entering one block, so each new block is one more pass
        assert len(runs) == (1 if method == "attention" else 2)  # Grad-CAM: the opening pass + this block's
        heat = direct(tiny_vit, image, PROMPT, method, head=1 if method == "attention" else None, layer=block)
        assert_shows(explorer, image, heat, 0.3, "inferno")
        runs[1:] = []  # drop the direct explain's pass
    assert "block 1" in " ".join(t.get_text() for t in explorer.figure().texts)  # what the widget shows


def test_exp_explore_starts_from_the_explanation(tiny_vit, image, runs):
    exp = clipviz.explain(tiny_vit, image, [PROMPT, "a green tree"], method="rollout", start_layer=1)
    explorer = exp.explore(alpha=0.7)
    state = explorer.state()
    assert state == dict(prompt=PROMPT, method="rollout", layer=1, head=None, alpha=0.7, cmap="jet")
    assert list(explorer.controls["prompt"].options) == [PROMPT, "a green tree"]
    assert_shows(explorer, image, exp.maps[0], 0.7, "jet")
    assert repr(explorer).startswith("<clipviz Explorer 'a red car', rollout, block 1")


def test_a_contrast_offers_only_prompt_specific_methods(tiny_vit, image):
    explorer = clipviz.explore(tiny_vit, image, PROMPT, against="a green tree", method="gradcam")
    assert "rollout" not in explorer.controls["method"].options
    assert "gradcam" in explorer.controls["method"].options
    assert explorer.explanation.against == ["a green tree"]


def test_an_empty_prompt_is_reported_in_the_widget_not_raised(tiny_vit, image, runs):
    explorer = clipviz.explore(tiny_vit, image, PROMPT)
    before = explorer.image.value
    explorer.controls["prompt"].value = "   "
    assert "prompt is empty" in explorer.status.value
    assert explorer.image.value == before


def test_without_ipywidgets_the_error_says_how_to_install(tiny_vit, image, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(ClipvizError, match=r"pip install 'clipviz\[widgets\]'"):
        clipviz.explore(tiny_vit, image, PROMPT)
