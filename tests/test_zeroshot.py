"""clipviz.classify against CLIP's own forward (logits_per_image.softmax) and a functional CLIP."""

import numpy as np
import pytest
import torch

import clipviz
from clipviz.errors import ClipvizError
from clipviz.preprocess import preprocess_image

import reference_clip as ref


PROMPTS = ["a photo of a dog", "a red car", "two people dancing", "the night sky"]


def photo(height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def forward_probs(model, image, prompts):
    """The classic CLIP example: logits_per_image, _ = model(image, text); softmax(-1)."""
    pixels = preprocess_image(image, model.visual.input_resolution)[0][None]
    with torch.no_grad():
        logits_per_image, logits_per_text = model(pixels, clipviz.tokenize(prompts))
    assert torch.allclose(logits_per_text, logits_per_image.t())
    return logits_per_image.softmax(dim=-1)[0].numpy(), logits_per_image[0].numpy()


@pytest.mark.parametrize("fixture", ["tiny_vit", "small_resnet"])
def test_probs_equal_forward_softmax(fixture, request):
    model = request.getfixturevalue(fixture)
    image = photo(90, 130, seed=1)
    result = clipviz.classify(model, image, PROMPTS)
    probs, logits = forward_probs(model, image, PROMPTS)
    np.testing.assert_allclose(result.probs, probs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.logits, logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.scores * model.logit_scale.exp().item(), logits, rtol=1e-5, atol=1e-5)
    assert result.probs.sum() == pytest.approx(1.0, abs=1e-6)


def test_logits_equal_functional_clip(tiny_vit):
    """An independent computation on the state dict (functional ops, written differently)."""
    image = photo(64, 64, seed=2)
    pixels = preprocess_image(image, 64)[0][None]
    with torch.no_grad():
        expected = ref.logits(tiny_vit.state_dict(), pixels, clipviz.tokenize(PROMPTS))[0]
    result = clipviz.classify(tiny_vit, image, PROMPTS)
    np.testing.assert_allclose(result.logits, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_ranked_is_sorted_and_batch_matches_single(tiny_vit):
    images = [photo(70, 50, seed=s) for s in range(3)]
    batch = clipviz.classify(tiny_vit, images, PROMPTS)
    assert len(batch) == 3
    for image, result in zip(images, batch):
        single = clipviz.classify(tiny_vit, image, PROMPTS)
        np.testing.assert_allclose(result.probs, single.probs, rtol=1e-5, atol=1e-7)
        ranked = result.ranked()
        assert [p for p, _ in ranked] == [PROMPTS[i] for i in np.argsort(-result.probs, kind="stable")]
        assert [q for _, q in ranked] == sorted(result.probs.tolist(), reverse=True)
        assert result.ranked(top=2) == ranked[:2]
        assert dict(result) == {p: pytest.approx(float(q)) for p, q in zip(PROMPTS, result.probs)}


def test_source_and_single_prompt(tiny_vit, tmp_path):
    from PIL import Image
    path = tmp_path / "x.png"
    Image.fromarray(photo(40, 60, seed=3)).save(path)
    result = clipviz.classify(tiny_vit, str(path), "a cat")
    assert result.prompts == ["a cat"] and result.probs.tolist() == [pytest.approx(1.0)]
    assert result.to_dict()["source"] == str(path)


@pytest.mark.parametrize("prompts", [[], [""], ["  "], ["word " * 80]])
def test_bad_prompts_raise_clipviz_error(tiny_vit, prompts):
    with pytest.raises(ClipvizError):
        clipviz.classify(tiny_vit, photo(32, 32, seed=0), prompts)
