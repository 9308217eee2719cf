"""What openai/clip users already hold: preprocessed tensors as images, token ids as prompts,
``random:`` models in clipviz.load, every method in --help, and the notice when a model that
never saw a photo is given one."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import clipviz
from clipviz.errors import ClipvizError
from clipviz.maps import map_to_photo, normalise_maps
from clipviz.preprocess import MEAN, STD, CropBox

PROMPTS = ["a photo of a dog.", "a red car", "two people dancing"]


def photo(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def wide_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "wide.png"
    Image.fromarray(photo(90, 130, seed=1)).save(path)
    return str(path)


# --- preprocessed tensors ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["relevance", "gradcam", "rollout"])
def test_a_preprocessed_tensor_explains_as_its_photo_does(tiny_vit, wide_file, method):
    """tensor = preprocess(path): the same raw maps and scores as the path (≤ 1e-6); its maps lie on
    the S×S square (computed here from the raw maps with a square box) and no crop box is drawn."""
    size = tiny_vit.visual.input_resolution
    tensor = clipviz.Preprocess(size)(wide_file)
    by_path = clipviz.explain(tiny_vit, wide_file, PROMPTS, method=method)
    by_tensor = clipviz.explain(tiny_vit, tensor, PROMPTS, method=method)
    assert np.abs(by_tensor.token_maps - by_path.token_maps).max() <= 1e-6
    assert np.abs(by_tensor.scores - by_path.scores).max() <= 1e-6
    assert np.abs(by_tensor.probs - by_path.probs).max() <= 1e-6
    square = CropBox(0.0, 0.0, float(size), float(size), size, size, size)
    assert by_tensor.crop_box == square and by_tensor.maps.shape == (len(PROMPTS), size, size)
    expected = map_to_photo(normalise_maps(by_path.token_maps), square)
    assert np.abs(by_tensor.maps - expected).max() <= 1e-6 and not np.isnan(by_tensor.maps).any()
    assert by_tensor.source is None
    fig = by_tensor.figure()
    assert not [p for ax in fig.axes for p in ax.patches]  # the whole square was seen: no dashed box


def test_the_photo_shown_is_the_tensor_de_normalised(tiny_vit):
    """A photo already S×S is not resized by CLIP's transform, so de-normalising its tensor must give
    back exactly its pixels; by hand: round(255 · (x · std + mean))."""
    size = tiny_vit.visual.input_resolution
    square = photo(size, size, seed=2)
    tensor = clipviz.Preprocess(size)(square)
    exp = clipviz.explain(tiny_vit, tensor, "a dog")
    assert exp.photo.dtype == np.uint8 and np.array_equal(exp.photo, square)
    by_hand = np.round(255 * (tensor.numpy().transpose(1, 2, 0) * np.array(STD) + np.array(MEAN)))
    assert np.array_equal(exp.photo, np.clip(by_hand, 0, 255).astype(np.uint8))


def test_a_batch_tensor_gives_one_explanation_per_image(tiny_vit):
    size = tiny_vit.visual.input_resolution
    preprocess = clipviz.Preprocess(size)
    images = [photo(70, 110, seed=s) for s in (3, 4)]
    batch = torch.stack([preprocess(i) for i in images])  # [B, 3, S, S], as openai/clip users batch
    results = clipviz.explain(tiny_vit, batch, PROMPTS[:2])
    assert isinstance(results, list) and len(results) == 2
    for image, result in zip(batch, results):
        alone = clipviz.explain(tiny_vit, image, PROMPTS[:2])
        assert np.abs(result.token_maps - alone.token_maps).max() <= 1e-5
    one = clipviz.explain(tiny_vit, batch[:1], PROMPTS[:2])  # [1, 3, S, S]: still a batch, a list of one
    assert isinstance(one, list) and len(one) == 1


def test_classify_takes_tensors_as_its_photo(tiny_vit, wide_file):
    size = tiny_vit.visual.input_resolution
    tensor = clipviz.Preprocess(size)(wide_file)
    by_path = clipviz.classify(tiny_vit, wide_file, PROMPTS)
    by_tensor = clipviz.classify(tiny_vit, tensor, PROMPTS)
    assert np.abs(by_tensor.probs - by_path.probs).max() <= 1e-6
    batch = clipviz.classify(tiny_vit, torch.stack([tensor, tensor]), PROMPTS)
    assert len(batch) == 2 and np.abs(batch[1].probs - by_path.probs).max() <= 1e-6


def test_tensors_that_are_not_preprocessed_images_are_refused(tiny_vit):
    size = tiny_vit.visual.input_resolution
    with pytest.raises(ClipvizError, match=rf"\[3, S, S\] or \[B, 3, S, S\] with S = {size}.*got \[3, 32, 32\]"):
        clipviz.explain(tiny_vit, torch.zeros(3, 32, 32), "a dog")
    with pytest.raises(ClipvizError, match="torch.uint8 tensor .* is not a preprocessed image"):
        clipviz.explain(tiny_vit, torch.zeros(3, size, size, dtype=torch.uint8), "a dog")
    with pytest.raises(ClipvizError, match="NaN or infinite"):
        clipviz.classify(tiny_vit, torch.full((3, size, size), float("nan")), "a dog")


# --- token prompts -------------------------------------------------------------------------------

def test_token_ids_explain_as_their_text_does(tiny_vit, wide_file):
    """clipviz.tokenize(prompts) (what clip.tokenize gives) as prompts: the same prompts, maps and
    scores as the text; punctuation BPE split off is put back ("dog ." → "dog.")."""
    ids = clipviz.tokenize(PROMPTS)
    by_text = clipviz.explain(tiny_vit, wide_file, PROMPTS)
    by_ids = clipviz.explain(tiny_vit, wide_file, ids)
    assert by_ids.prompts == PROMPTS
    assert np.abs(by_ids.token_maps - by_text.token_maps).max() <= 1e-6
    assert np.abs(by_ids.scores - by_text.scores).max() <= 1e-6
    assert [list(map(str, t)) for t in by_ids.text_tokens] == [list(map(str, t)) for t in by_text.text_tokens]
    one = clipviz.explain(tiny_vit, wide_file, ids[1])  # one row [77]
    assert one.prompts == [PROMPTS[1]]
    contrast = clipviz.explain(tiny_vit, wide_file, ids[:1], against=clipviz.tokenize("a cat"))
    assert contrast.against == ["a cat"]
    result = clipviz.classify(tiny_vit, wide_file, ids.numpy())  # numpy ids too
    assert result.prompts == PROMPTS
    assert np.abs(result.probs - clipviz.classify(tiny_vit, wide_file, PROMPTS).probs).max() <= 1e-6


def test_token_ids_that_no_text_gives_are_refused(tiny_vit):
    ids = clipviz.tokenize("a dog")
    with pytest.raises(ClipvizError, match="integer ids"):
        clipviz.explain(tiny_vit, photo(64, 64), ids.float())
    with pytest.raises(ClipvizError, match="does not start with CLIP's start token"):
        clipviz.explain(tiny_vit, photo(64, 64), ids[:, 1:])
    from clipviz.tokenizer import EOT_ID, SOT_ID, get_tokenizer
    encoder = get_tokenizer().encoder
    split = torch.tensor([[SOT_ID, encoder["do"], encoder["g</w>"], EOT_ID]])  # "dog" is one token, dog</w>
    with pytest.raises(ClipvizError, match="not what CLIP's tokenizer gives"):
        clipviz.classify(tiny_vit, photo(64, 64), split)
    cut = clipviz.tokenize("a very long prompt " * 30, truncate=True)  # cut at a token: still a text's ids
    text = clipviz.classify(tiny_vit, photo(64, 64), cut).prompts[0]
    assert torch.equal(clipviz.tokenize(text), cut)


# --- random: models, method help -----------------------------------------------------------------

def test_load_takes_random_architectures():
    model, preprocess = clipviz.load("random:RN50", device="cpu")
    reference = clipviz.random_model("RN50", seed=0)
    assert preprocess.size == 224 and not model.training
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())  # seed 0, every call
    with pytest.raises(ClipvizError, match="unknown architecture 'ViT-Z/99'"):
        clipviz.load("random:ViT-Z/99")


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "clipviz", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_every_command_lists_every_method(tmp_path):
    for command in ("explain", "demo", "bench"):
        shown = " ".join(run_cli(command, "--help", cwd=tmp_path).stdout.split())
        for method in clipviz.available_methods():
            assert method in shown, (command, method)
        assert "random:ARCH" in shown, command


# --- the notice for a model that never saw a photo -----------------------------------------------

def notices(call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if "never seen a photo" in str(w.message)]


def test_the_bundled_model_says_once_that_it_never_saw_a_photo(tiny_vit):
    from clipviz.synth import object_prompt, scene_from_index
    scene = scene_from_index(0, 0)
    prompt = object_prompt(scene.objects[0].shape, scene.objects[0].colour)
    bundled = clipviz.load("synth-vit-t16", device="cpu")[0]
    assert not notices(lambda: clipviz.explain(bundled, scene.image, prompt))  # its own scenes: no notice
    assert not notices(lambda: clipviz.classify(bundled, [scene.image], [prompt, "a photo of a dog"]))
    assert not notices(lambda: clipviz.explain(tiny_vit, photo(64, 64), "a dog"))  # not marked synthetic
    for call in (lambda model: clipviz.explain(model, photo(80, 100), "a dog"),
                 lambda model: clipviz.classify(model, [scene.image, photo(80, 100)], ["a dog", "a cat"]),
                 lambda model: clipviz.explain(model, scene.image.copy(), prompt)):  # a copy may be anything
        model = clipviz.load("synth-vit-t16", device="cpu")[0]
        said = notices(lambda: call(model))
        assert len(said) == 1 and said[0].startswith("synth-vit-t16 was trained only on synthetic shape scenes")
        assert not notices(lambda: call(model))  # once per model


def test_the_cli_prints_the_notice_once_per_run(tmp_path):
    for seed in (5, 6):
        Image.fromarray(photo(60, 80, seed)).save(tmp_path / f"p{seed}.png")
    result = run_cli("classify", "p5.png", "p6.png", "a dog", "a cat", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "never seen a photo" in line]
    assert len(lines) == 1 and lines[0].startswith("clipviz: warning: synth-vit-t16 was trained only")
    demo = run_cli("demo", "--out", "demo.png", cwd=tmp_path)
    assert demo.returncode == 0 and "never seen a photo" not in demo.stderr  # its own synthetic scene
