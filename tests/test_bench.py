"""clipviz.metrics against hand-worked numbers; clipviz.bench end to end on a tiny model."""

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from clipviz import metrics
from clipviz.bench import run_benchmark, run_data_benchmark
from clipviz.bench.common import usable_methods
from clipviz.bench.photos import photo_knowledge
from clipviz.bench.scene import CHANCE_ROWS, class_probability_scorer, class_text_embeddings, query_for
from clipviz.cli.bench import add_arguments, run_parsed
from clipviz.errors import ClipvizError
from clipviz.methods import available_methods, get_method
from clipviz.synth import all_class_prompts, object_prompt, scene_from_index


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the shared CI machine runs these 10× faster without thread contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------ localization

def test_pointing_game_peak_inside_outside_and_ties():
    mask = np.zeros((4, 4), bool)
    mask[0:2, 0:2] = True
    inside = np.zeros((4, 4))
    inside[1, 1] = 1.0
    outside = np.zeros((4, 4))
    outside[3, 3] = 1.0
    assert metrics.pointing_game(inside, mask) == 1.0
    assert metrics.pointing_game(outside, mask) == 0.0
    # a 2×2 plateau at the peak with three of its four pixels in the mask: 3/4
    plateau = np.zeros((4, 4))
    plateau[1:3, 0:2] = 1.0
    plateau[1, 0] = 1.0 - 1e-9  # within tolerance: still a peak pixel
    mask_l = mask.copy()
    mask_l[2, 0] = True
    assert metrics.pointing_game(plateau, mask_l) == pytest.approx(3 / 4)
    # a constant map scores the mask's area share (4 of 16 pixels)
    assert metrics.pointing_game(np.full((4, 4), 0.3), mask) == pytest.approx(0.25)
    # a peak on a pixel the model never saw (NaN) does not count
    unseen = outside.copy()
    unseen[3, 3] = np.nan
    unseen[0, 0] = 0.5
    assert metrics.pointing_game(unseen, mask) == 1.0


def test_energy_share_by_hand():
    photo_map = np.array([[1.0, 0.5, 0.0],
                          [0.25, 0.25, 0.0],
                          [0.0, 0.0, np.nan]])
    mask = np.array([[1, 0, 0],
                     [1, 1, 0],
                     [0, 0, 1]], bool)
    # inside: 1 + 0.25 + 0.25 = 1.5 of the seen mass 2.0 (the NaN pixel is not counted)
    assert metrics.energy_share(photo_map, mask) == pytest.approx(0.75)
    # an all-zero map counts as uniform: 3 of 8 seen pixels are in the mask
    zero = np.where(np.isnan(photo_map), np.nan, 0.0)
    assert metrics.energy_share(zero, mask) == pytest.approx(3 / 8)
    assert metrics.area_share(photo_map, mask) == pytest.approx(3 / 8)
    with pytest.raises(ValueError):
        metrics.energy_share(-np.ones((3, 3)), mask)


def test_mask_iou_at_mean_threshold_by_hand():
    photo_map = np.array([[0.9, 0.8, 0.1, 0.0],
                          [0.7, 0.2, 0.1, 0.0],
                          [0.0, 0.0, 0.0, 0.0],
                          [0.0, 0.0, 0.0, 0.6]])
    # mean = 3.4 / 16 = 0.2125: hot pixels are 0.9, 0.8, 0.7, 0.6 (0.2 is below)
    mask = np.zeros((4, 4), bool)
    mask[0:2, 0:2] = True  # 0.9, 0.8, 0.7, 0.2
    # intersection 3 (0.9, 0.8, 0.7); union 4 mask + the hot 0.6 pixel = 5
    assert metrics.mask_iou(photo_map, mask) == pytest.approx(3 / 5)
    # strictly above the mean: a constant map selects nothing
    assert metrics.mask_iou(np.ones((4, 4)), mask) == 0.0


# ------------------------------------------------------------------------------ rank correlation

def test_spearman_by_hand_with_ties():
    # no ties: ρ = 1 − 6 Σd² / (n(n² − 1)) = 1 − 6·2 / 60 = 0.8
    assert metrics.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties share the mean rank: ranks [0.5, 0.5, 2, 3] vs [0, 1, 2, 3] → 4.5 / √(4.5 · 5)
    assert metrics.spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / np.sqrt(22.5))
    assert metrics.spearman(np.arange(9).reshape(3, 3), -np.arange(9).reshape(3, 3)) == pytest.approx(-1.0)
    assert np.isnan(metrics.spearman([2, 2, 2], [1, 2, 3]))


# ------------------------------------------------------------------------------ deletion / insertion

def _mask_sum_score(mask):
    """A fake model: the score is the sum of the kept pixels inside ``mask`` [S, S]."""
    return lambda images: images[:, 0][:, torch.as_tensor(mask)].sum(dim=-1).numpy()


def test_deletion_insertion_auc_for_a_known_score():
    # 16×16 image of ones, 4×4 patches of 4 px; the object is patches 0, 1, 4, 5 (top-left 8×8)
    pixels = torch.ones(1, 16, 16, dtype=torch.float64)
    mask = np.zeros((16, 16), bool)
    mask[:8, :8] = True
    zeros = torch.zeros_like(pixels)
    good = np.zeros((4, 4))
    good[:2, :2] = [[4, 3], [2, 1]]  # object patches first
    bad = 1.0 - (good > 0)  # object patches last
    good_result, bad_result = metrics.deletion_insertion(
        _mask_sum_score(mask), pixels, np.stack([good, bad]), steps=16,
        deletion_baseline=zeros, insertion_baseline=zeros)
    # perfect order: deletion curve 1, .75, .5, .25, 0, … 0 over 16 steps of 1/16:
    #   AUC = (0.5·1 + 0.75 + 0.5 + 0.25) / 16 = 2 / 16
    assert good_result["deletion"] == pytest.approx(2 / 16)
    np.testing.assert_allclose(good_result["deletion_curve"][:6], [1, 0.75, 0.5, 0.25, 0, 0])
    # insertion curve 0, .25, .5, .75, 1, …, 1: AUC = (0.25 + 0.5 + 0.75 + 12 · 1 + 0.5 · 1) / 16 = 14 / 16
    # (the score is additive, so the insertion curve is 1 − the deletion curve)
    assert good_result["insertion"] == pytest.approx(14 / 16)
    # worst order is the mirror image
    assert bad_result["deletion"] == pytest.approx(14 / 16)
    assert bad_result["insertion"] == pytest.approx(2 / 16)
    # 4 steps of 4 patches: deletion 1, 0, 0, 0, 0 → 0.5 · 0.25 = 0.125; insertion 0, 1, 1, 1, 1 → 0.875
    coarse = metrics.deletion_insertion(_mask_sum_score(mask), pixels, good[None], steps=4,
                                        deletion_baseline=zeros, insertion_baseline=zeros)[0]
    assert coarse["deletion"] == pytest.approx(0.125) and coarse["insertion"] == pytest.approx(0.875)
    np.testing.assert_array_equal(coarse["counts"], [0, 4, 8, 12, 16])


def test_reveal_takes_patches_in_order():
    start, fill = torch.zeros(1, 4, 4), torch.ones(1, 4, 4)
    images = metrics.reveal(start, fill, order=[3, 0, 1, 2], counts=[0, 1, 2, 4], patch_grid=2)
    assert images.shape == (4, 1, 4, 4)
    expected_second = torch.zeros(4, 4)
    expected_second[2:, 2:] = 1  # patch 3 = bottom-right
    expected_third = expected_second.clone()
    expected_third[:2, :2] = 1  # then patch 0 = top-left
    assert torch.equal(images[0, 0], torch.zeros(4, 4))
    assert torch.equal(images[1, 0], expected_second)
    assert torch.equal(images[2, 0], expected_third)
    assert torch.equal(images[3, 0], torch.ones(4, 4))


def test_curve_normalisation_needs_a_gap():
    assert np.isnan(metrics.normalised_curve([0.3, 0.2], full=0.3, empty=0.3)).all()
    assert np.isnan(metrics.normalised_curve([0.3, 0.2], full=0.3, empty=0.295, min_gap=0.01)).all()
    np.testing.assert_allclose(metrics.normalised_curve([0.5, 0.3, 0.1], full=0.5, empty=0.1), [1, 0.5, 0])
    # above the full image's score or below the baseline: clipped to [0, 1]
    np.testing.assert_allclose(metrics.normalised_curve([0.5, 0.9, 0.0, 0.1], full=0.5, empty=0.1), [1, 1, 0, 0])


def test_baselines_mean_and_blur():
    rng = torch.Generator().manual_seed(0)
    pixels = torch.rand(3, 20, 20, generator=rng, dtype=torch.float64)
    mean = metrics.channel_mean_image(pixels)
    for c in range(3):
        assert torch.allclose(mean[c], pixels[c].mean().expand(20, 20))
    # an impulse far from the border blurs into the outer product of the 1-D kernel
    impulse = torch.zeros(1, 41, 41, dtype=torch.float64)
    impulse[0, 20, 20] = 1.0
    sigma = 2.0
    x = np.arange(-6, 7)
    kernel = np.exp(-x**2 / (2 * sigma**2))
    kernel /= kernel.sum()
    blurred = metrics.gaussian_blur(impulse, sigma)[0].numpy()
    np.testing.assert_allclose(blurred[14:27, 14:27], np.outer(kernel, kernel), atol=1e-12)
    assert blurred.sum() == pytest.approx(1.0)
    # a constant image stays constant (reflect padding)
    assert torch.allclose(metrics.gaussian_blur(torch.full((1, 9, 9), 0.7), 3.0), torch.full((1, 9, 9), 0.7))


def test_chance_maps():
    centre = metrics.centre_gaussian_map(4)
    assert np.unravel_index(centre.argmax(), centre.shape) in {(1, 1)}
    np.testing.assert_allclose(centre, centre[::-1, ::-1])  # symmetric about the centre
    # d² of the 4 central patches is 0.5; σ = 1: exp(−0.25)
    assert centre[1, 1] == pytest.approx(np.exp(-0.25))
    a = metrics.random_map(14, np.random.default_rng([2, 0, 2]))
    b = metrics.random_map(14, np.random.default_rng([2, 0, 2]))
    assert a.shape == (14, 14) and np.array_equal(a, b)


# ------------------------------------------------------------------------------ the benchmark

def test_perturbation_score_is_the_query_against_absent_classes(tiny_vit):
    from clipviz.adapters import adapt
    from clipviz.preprocess import preprocess_image

    adapter = adapt(tiny_vit)
    scene = scene_from_index(2, 0, n_objects=3)
    pixels, _ = preprocess_image(scene.image, adapter.input_resolution)
    score = class_probability_scorer(adapter, class_text_embeddings(adapter), scene, queried=1)
    # by hand: cosine with every class prompt, the two other present objects dropped, softmax
    with torch.no_grad():
        image = torch.nn.functional.normalize(tiny_vit.encode_image(pixels[None]), dim=-1)[0]
        text = torch.nn.functional.normalize(tiny_vit.encode_text(adapter.tokenize(all_class_prompts())), dim=-1)
    prompts = all_class_prompts()
    other = {object_prompt(o.shape, o.colour) for k, o in enumerate(scene.objects) if k != 1}
    scale = float(tiny_vit.logit_scale.detach().exp())
    logits = {p: scale * float(image @ t) for p, t in zip(prompts, text) if p not in other}
    assert len(logits) == 62
    query = object_prompt(scene.objects[1].shape, scene.objects[1].colour)
    expected = np.exp(logits[query]) / sum(np.exp(v) for v in logits.values())
    assert score(pixels[None])[0] == pytest.approx(expected, rel=1e-5)


def _without_timing(result):
    return json.dumps({k: v for k, v in result.items() if k != "timing"}, sort_keys=True)


def test_benchmark_numbers_agree_with_the_scenes(tiny_vit):
    result = run_benchmark(tiny_vit, n=3, seed=5, progress=False, steps=4, sanity_scenes=2, model_name="tiny")
    vit_methods = [m for m in available_methods() if m != "attention_pool"]  # the ResNet-only method is noted
    assert list(result["summary"]["all"]) == vit_methods + list(CHANCE_ROWS)
    skipped = [m for m in available_methods() if m not in vit_methods]
    assert [n.split(" skipped: ")[0] for n in result["notes"]] == skipped
    for record in result["scenes"]:
        scene = scene_from_index(5, record["index"], n_objects=(2, 4))
        queried, absent = query_for(scene, 5, record["index"])
        target = scene.objects[queried]
        assert record["query"] == object_prompt(target.shape, target.colour)
        assert record["absent"] == object_prompt(*absent) and absent not in {(o.shape, o.colour) for o in scene.objects}
        assert record["objects"] == len(scene.objects)
        assert record["area_share"] == pytest.approx(scene.masks[queried].mean())
        for method in vit_methods:
            if not get_method(method).prompt_specific:  # the same map for any prompt
                assert record["metrics"][method]["prompt_spearman"] == pytest.approx(1.0)
    pointing = [r["metrics"]["relevance"]["pointing"] for r in result["scenes"]]
    assert result["summary"]["all"]["relevance"]["pointing"]["mean"] == pytest.approx(np.mean(pointing))
    cascade = result["cascade"]["relevance"]
    assert cascade["blocks"] == [2, 1, 0] and len(cascade["spearman"]) == 3
    assert result["timing"]["ms_per_explanation"]["relevance"] > 0


def test_benchmark_is_deterministic_through_the_cli(tiny_vit, tmp_path, capsys):
    checkpoint = tmp_path / "tiny-vit.pt"
    torch.save(tiny_vit.state_dict(), checkpoint)
    outputs = []
    for run_number in range(2):
        out = tmp_path / f"bench{run_number}.json"
        args = add_arguments(argparse.ArgumentParser()).parse_args(
            ["--model", str(checkpoint), "--n", "3", "--steps", "4", "--sanity-scenes", "1", "--device", "cpu",
             "--out", str(out), "--quiet"])
        assert run_parsed(args) == 0
        outputs.append(json.loads(out.read_text()))
    printed = capsys.readouterr().out
    assert "| relevance |" in printed and "*random map* (chance)" in printed and "2-object scenes only" in printed
    assert _without_timing(outputs[0]) == _without_timing(outputs[1])
    other = run_benchmark(tiny_vit, n=3, seed=3, progress=False, steps=4, sanity=False)
    assert [r["query"] for r in other["scenes"]] != [r["query"] for r in outputs[0]["scenes"]]


def _fake_photo_folder(root):
    """Two photos with masks: a 64×64 photo (the crop is all of it) and a 100×50 one (the crop drops
    25 columns on each side)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "images" / "a.png")
    Image.fromarray(rng.integers(0, 255, (50, 100, 3), dtype=np.uint8)).save(root / "images" / "b.jpg")
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(root / "masks" / "a__everything.png")
    left_half = np.zeros((50, 100), np.uint8)
    left_half[:, :50] = 255
    Image.fromarray(left_half).save(root / "masks" / "b__dining_table.png")
    left_edge = np.zeros((50, 100), np.uint8)
    left_edge[:, :20] = 255  # entirely outside the centre crop
    Image.fromarray(left_edge).save(root / "masks" / "b__cat.png")


def test_data_folder_end_to_end_warns_about_the_model(tiny_vit, tmp_path, capsys):
    folder = tmp_path / "photos"
    _fake_photo_folder(folder)
    checkpoint = tmp_path / "synth-tiny.pt"
    torch.save(tiny_vit.state_dict(), checkpoint)
    out = tmp_path / "data.json"
    args = add_arguments(argparse.ArgumentParser()).parse_args(
        ["--model", str(checkpoint), "--data", str(folder), "--out", str(out), "--quiet", "--device", "cpu"])
    assert run_parsed(args) == 0
    printed = capsys.readouterr().out
    assert "WARNING" in printed and "synthetic" in printed
    result = json.loads(out.read_text())
    assert result["model_knows_photos"] is False and "synthetic" in result["warning"]
    items = {(i["image"], i["category"]): i for i in result["items"]}
    assert set(items) == {("a.png", "everything"), ("b.jpg", "dining table")}
    assert items[("b.jpg", "dining table")]["query"] == "a photo of a dining table"
    assert result["skipped"] == ["b.jpg cat"] and "1 (photo, category) pairs skipped" in printed
    # a mask covering the whole photo: every map points inside it with all its energy
    for row in result["summary"]["all"]:
        assert items[("a.png", "everything")]["metrics"][row]["pointing"] == 1.0
        assert items[("a.png", "everything")]["metrics"][row]["energy"] == pytest.approx(1.0)
    # the 100×50 photo: the crop spans columns 25 … 74, so half of the seen pixels are in the left half
    assert items[("b.jpg", "dining table")]["area_share"] == pytest.approx(0.5)
    assert items[("b.jpg", "dining table")]["mask_seen_fraction"] == pytest.approx(0.5)
    # the same folder through the API with a random-weight model name
    api = run_data_benchmark(tiny_vit, folder, methods=["rollout"], progress=False, model_name="random:tiny")
    assert api["model_knows_photos"] is False and "random weights" in api["warning"]
    assert json.dumps(api["summary"]["all"]["rollout"]) == json.dumps(result["summary"]["all"]["rollout"])


def test_photo_knowledge_by_name():
    assert photo_knowledge("ViT-B/16")[0] is True
    assert photo_knowledge("openclip:ViT-B-16/laion2b_s34b_b88k")[0] is True
    assert photo_knowledge("synth-vit-t16")[0] is False
    assert photo_knowledge("random:ViT-B/16")[0] is False
    assert photo_knowledge("/tmp/my-model.pt")[0] is None


def test_data_folder_errors(tmp_path, tiny_vit):
    with pytest.raises(ClipvizError, match="images/ and a masks/"):
        run_data_benchmark(tiny_vit, tmp_path, progress=False)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ClipvizError, match="no image"):
        run_data_benchmark(tiny_vit, tmp_path, progress=False)


def test_methods_that_do_not_apply_are_skipped_with_a_note(small_resnet, tiny_vit):
    from clipviz.adapters import adapt

    usable, notes = usable_methods(adapt(small_resnet), None)
    assert "relevance" not in usable and "rollout" not in usable  # attention-block methods: ViT only
    assert sorted(list(usable) + [n.split(" skipped: ")[0] for n in notes]) == sorted(available_methods())
    usable_vit, notes_vit = usable_methods(adapt(tiny_vit), ["relevance", "rollout"])
    assert list(usable_vit) == ["relevance", "rollout"] and notes_vit == []
    result = run_benchmark(small_resnet, n=1, progress=False, steps=2, sanity=False)
    assert list(result["summary"]["all"]) == list(usable) + list(CHANCE_ROWS)
    assert all(" skipped: " in note for note in result["notes"][:len(notes)])
