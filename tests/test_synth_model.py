"""The bundled offline model synth-vit-t16: checksum-checked loading, architecture, real knowledge."""

import dataclasses
import json
import shutil

import pytest
import torch

import clipviz
from clipviz import hub
from clipviz.preprocess import preprocess_image
from clipviz.synth import scene_from_index
from clipviz.synth.evaluate import EVAL_SEEDS, present_vs_absent, zero_shot
from clipviz.synth.train import BindingExamples, learning_rate, normalise

WEIGHTS = hub.WEIGHTS_DIR / "synth-vit-t16.pt"
# synth-vit-t16's sizes, as its .json records them (it was trained by train.py as of commit 9e4a206)
ARCH = dict(embed_dim=256, image_resolution=224, vision_layers=6, vision_width=256, vision_patch_size=16,
            context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2, transformer_layers=4)


@pytest.fixture(scope="module")
def synth_model():
    return clipviz.load("synth-vit-t16", device="cpu")


def test_bundled_file_is_registered_small_fp16_and_documented():
    entry = hub.model_info("synth-vit-t16")
    assert entry.path == WEIGHTS and hub.file_sha256(WEIGHTS) == entry.sha256
    assert WEIGHTS.stat().st_size <= 25_000_000
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert {t.dtype for t in state.values()} == {torch.float16}
    record = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert record["sha256"] == entry.sha256 and record["arch"] == ARCH and record["seed"] not in EVAL_SEEDS
    assert record["metrics"]["zero_shot_accuracy"] >= 0.95 and record["metrics"]["present_beats_absent"] >= 0.95


def test_architecture_is_the_documented_one(synth_model):
    model, preprocess = synth_model
    assert model.visual.patch_grid == 14 and model.visual.input_resolution == 224 and preprocess.size == 224
    assert len(model.visual.transformer.resblocks) == ARCH["vision_layers"]
    assert model.visual.conv1.out_channels == ARCH["vision_width"]
    assert model.token_embedding.num_embeddings == 49408 and model.context_length == 77
    assert model.transformer.width == ARCH["transformer_width"]
    assert model.logit_scale.exp().item() <= 100.0 + 1e-3


def test_zero_shot_on_held_out_scenes(synth_model):
    model, preprocess = synth_model
    accuracy, mistakes = zero_shot(model, preprocess, n=10)  # stream 1, never trained on
    assert accuracy >= 0.9, mistakes
    won, comparisons = present_vs_absent(model, preprocess, n=10)  # stream 2, two objects each
    assert comparisons == 20 and won >= 0.85


def test_tampered_checkpoint_is_refused(synth_model, tmp_path, monkeypatch):
    tampered = tmp_path / "synth-vit-t16.pt"
    shutil.copy(WEIGHTS, tampered)
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit inside the weights: the file still unpickles fine
    tampered.write_bytes(bytes(data))
    assert len(torch.load(tampered)) == len(synth_model[0].state_dict())  # torch alone reads it silently
    with pytest.raises(clipviz.ClipvizError, match="fails its CRC-32 check"):  # the zip's CRC-32 tells
        hub.read_checkpoint(tampered)
    entry = hub.model_info("synth-vit-t16")
    monkeypatch.setitem(hub._MODELS, "synth-vit-t16", dataclasses.replace(entry, path=tampered))
    with pytest.raises(clipviz.ClipvizError, match="damaged"):
        clipviz.load("synth-vit-t16", device="cpu")


def test_training_input_matches_preprocess_and_is_deterministic():
    scene = scene_from_index(0, 3)
    expected, _ = preprocess_image(scene.image, 224)
    assert torch.equal(normalise(torch.from_numpy(scene.image)[None])[0], expected)
    data = BindingExamples(seed=0, repeats=2, negatives=3)
    first, second = data[7], data[7]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    image, ids, present, named, labels = first
    assert image.shape == (224, 224, 3) and ids.shape == (2, 4, 77) and present.shape == (64,) and named.shape == (2, 64)
    assert labels.shape == (196,) and labels.dtype == torch.int64


def test_learning_rate_schedule():
    """Warm-up over 10 steps, constant 1.0, linear decay from step 80 to 0 at step 100."""
    assert learning_rate(0, 1.0, 10, 80, 100) == pytest.approx(0.1)
    assert learning_rate(9, 1.0, 10, 80, 100) == pytest.approx(1.0)
    assert learning_rate(50, 1.0, 10, 80, 100) == pytest.approx(1.0)
    assert learning_rate(90, 1.0, 10, 80, 100) == pytest.approx(0.5)
    assert learning_rate(100, 1.0, 10, 80, 100) == pytest.approx(0.0)
    assert learning_rate(500, 1.0, 10, None, 100) == pytest.approx(1.0)  # no decay scheduled yet
    assert learning_rate(52, 1.0, 10, None, 100, rewarm_from=50) == pytest.approx(0.3)  # weights-only resume
