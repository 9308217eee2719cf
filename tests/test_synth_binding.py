"""Binding training data (clipviz.synth.binding), scene styles, photo crops and the training loop."""

import hashlib
import itertools
import math
import re

import numpy as np
import pytest
import torch

from clipviz.errors import ClipvizError
from clipviz.synth import COLOURS, SHAPES, make_scene, scene_from_index
from clipviz.synth.binding import class_id, multi_hot, training_scene, training_text
from clipviz.synth.photos import load_photos, photo_crop
from clipviz.synth.scenes import OUTLINE_WIDTH
from clipviz.synth.targets import outline_pastel_scene, same_shape_scene
from clipviz.synth.train import _batch_order, binding_loss, main as train_main
from conftest import SHARED

PAIR = re.compile(r"\b(" + "|".join(COLOURS) + r") (" + "|".join(SHAPES) + r")\b")


def named_pairs(text):
    """(colour, shape) pairs a caption names, read off its words: an independent parse."""
    return [(shape, colour) for colour, shape in PAIR.findall(text)]


def skeleton(text):
    """The caption with every (colour, shape) and article blanked: template, sizes, positions."""
    return re.sub(r"\ban?\b", "a", PAIR.sub("X", text))


def scenes_digest(scenes):
    digest = hashlib.sha256()
    for s in scenes:
        digest.update(s.image.tobytes())
        digest.update(np.packbits(s.masks).tobytes())
        digest.update(repr(s.objects).encode())
        digest.update(s.background.encode())
    return digest.hexdigest()


def test_default_scenes_are_those_of_earlier_versions():
    """The style options draw nothing at their defaults: stream 3's first 40 scenes hash as they
    did with clipviz.synth.scenes at commit 9e4a206 (the digest was computed there)."""
    assert scenes_digest(scene_from_index(3, i) for i in range(40)) == \
        "b61eb3708e79412431ef418fc4c0588f246f6ab2705dfb97e3e87ae385846103"


def test_given_classes_are_painted_in_order():
    classes = [("cross", "red"), ("cross", "black"), ("ring", "white")]
    scene = make_scene(5, classes=classes, noise=False)
    assert [(o.shape, o.colour) for o in scene.objects] == classes
    for obj, mask in zip(scene.objects, scene.masks):
        assert (scene.image[mask] == obj.rgb).all()
    with pytest.raises(ClipvizError, match="unknown shape"):
        make_scene(5, classes=[("blob", "red")])


def test_outlined_object_is_a_cut_out_of_the_expected_width():
    """One outlined circle on grey 100: its mask is the whole footprint, its colour only on the
    rim, the background shows inside. Rim share of the disc: 1 - (1 - OUTLINE_WIDTH)² (areas of
    two concentric discs)."""
    grey = np.full((224, 224, 3), 100.0)
    scene = make_scene(2, classes=[("circle", "red")], background=grey, outline=1.0, noise=False, sizes=["large"])
    mask, rgb = scene.masks[0], scene.objects[0].rgb
    rim = (scene.image == rgb).all(axis=2)
    assert scene.background == "photo" and (rim <= mask).all()
    assert (scene.image[mask & ~rim] == 100).all() and (scene.image[~mask] == 100).all()
    assert rim.sum() / mask.sum() == pytest.approx(1 - (1 - OUTLINE_WIDTH) ** 2, rel=0.08)


def test_outlined_object_hides_what_lies_beneath():
    for seed in range(30):
        scene = make_scene(seed, n_objects=3, outline=1.0, noise=False)
        owner_count = scene.masks.sum(axis=0)
        assert owner_count.max() <= 1  # masks stay disjoint: each pixel shows one object at most
        for obj, mask in zip(scene.objects, scene.masks):
            assert not ((scene.image == obj.rgb).all(axis=2) & ~mask & scene.masks.any(axis=0)).any()


def test_pastel_backgrounds_are_light_and_muted_ones_are_not():
    pastel = [make_scene(s, n_objects=1, background="pastel", noise=False) for s in range(20)]
    muted = [make_scene(s, n_objects=1, noise=False) for s in range(20)]
    assert min(s.image[~s.masks[0]].mean() for s in pastel) > 170
    assert max(s.image[~s.masks[0]].mean() for s in muted) < 200
    assert all(s.background.startswith("pastel ") for s in pastel)
    with pytest.raises(ClipvizError, match="background"):
        make_scene(0, background="neon")
    with pytest.raises(ClipvizError, match=r"\[224, 224, 3\]"):
        make_scene(0, background=np.zeros((10, 10, 3)))


@pytest.fixture(scope="module")
def photos():
    return load_photos(SHARED / "images")


def test_photo_crops_are_deterministic_and_in_range(photos):
    a = photo_crop(np.random.default_rng(4), photos, 224)
    b = photo_crop(np.random.default_rng(4), photos, 224)
    assert a.shape == (224, 224, 3) and a.dtype == np.float32 and np.array_equal(a, b)
    assert 0 <= a.min() and a.max() <= 255
    with pytest.raises(ClipvizError, match="no photo"):
        load_photos(SHARED / "no-such-folder")


def test_training_scenes_are_deterministic_and_varied(photos):
    first = [training_scene(0, i, photos) for i in range(60)]
    again = [training_scene(0, i, photos) for i in range(60)]
    assert scenes_digest(first) == scenes_digest(again)
    kinds = {s.background.split()[0] for s in first}
    assert {"photo", "pastel"} <= kinds and kinds - {"photo", "pastel"}
    # an outlined object shows its colour (give or take the pixel noise) on well under 80% of its mask
    inked = [(np.abs(s.image[s.masks[k]].astype(int) - s.objects[k].rgb).max(axis=1) <= 25).mean()
             for s in first for k in range(len(s.objects))]
    assert 0.15 < np.mean(np.array(inked) < 0.8) < 0.6  # OUTLINE_STYLES: 0.25 + 0.15 / 2 of objects
    pairs = []
    for i in range(400):
        objects = training_scene(0, i).objects
        if len(objects) >= 2:
            pairs.append(any(a.shape == b.shape and a.colour != b.colour
                             for a, b in itertools.combinations(objects, 2)))
    assert np.mean(pairs) > 0.25  # P_SAME_SHAPE = 0.3, plus chance pairs


def test_captions_are_true_and_negatives_false_by_construction():
    """Parsed from the words: every class a caption names is in the scene and equals its named
    row; every negative names at least one class absent from the scene, keeps the caption's
    template, size and position words and named-object count."""
    for index in range(300):
        scene = training_scene(0, index)
        present = {(o.shape, o.colour) for o in scene.objects}
        caption, negatives, named = training_text(scene, [0, index, 1])
        pairs = named_pairs(caption)
        assert pairs and set(pairs) <= present
        assert np.array_equal(named, multi_hot(pairs))
        assert len(negatives) == 3
        for negative in negatives:
            altered = named_pairs(negative)
            assert len(altered) == len(pairs) and skeleton(negative) == skeleton(caption)
            assert any(p not in present for p in altered), (caption, negative, present)


def test_negatives_break_bindings_with_the_scene_own_words():
    """Most recolourings and reshapes reuse a colour or shape present elsewhere in the scene
    (P_SCENE_ATTRIBUTE), and with two named objects colour swaps occur."""
    own, swaps = [], 0
    for index in range(300):
        scene = training_scene(0, index)
        caption, negatives, _ = training_text(scene, [0, index, 1])
        words = {o.colour for o in scene.objects} | {o.shape for o in scene.objects}
        before = named_pairs(caption)
        for negative in negatives:
            after = named_pairs(negative)
            changed = [(a, b) for a, b in zip(before, after) if a != b]
            if len(changed) == 1:
                (old_shape, old_colour), (shape, colour) = changed[0]
                if len(scene.objects) > 1:
                    own.append((colour if colour != old_colour else shape) in words)
            elif len(changed) == 2:
                swaps += sorted(c for _, c in before) == sorted(c for _, c in after)
    assert np.mean(own) > 0.4 and swaps > 20  # uniform picks among 7 colours or shapes: ~0.25


def test_text_is_deterministic_by_seed():
    scene = training_scene(0, 9)
    assert training_text(scene, [0, 9, 1]) [:2] == training_text(scene, [0, 9, 1])[:2]
    assert training_text(scene, [0, 9, 1])[:2] != training_text(scene, [0, 9, 2])[:2]


def test_class_ids_follow_all_classes():
    assert class_id("circle", "red") == 0 and class_id("ring", "black") == 63
    assert class_id("square", "green") == 8 + 1


def test_binding_loss_matches_a_hand_computation():
    """Two images, one negative each. Caption 1 names only class 0, which image 0 also holds, so
    (image 0, caption 1) leaves both softmaxes."""
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[[1.0, 0.0], [0.6, 0.8]],     # caption 0, its negative
                         [[0.0, 1.0], [0.8, 0.6]]])    # caption 1, its negative
    present = torch.tensor([[True, True, False], [True, False, False]])
    named = torch.tensor([[False, True, False], [True, False, False]])
    scale = torch.tensor(math.log(10.0))
    loss, accuracy, beats = binding_loss(image, text, present, named, scale)
    # image 0: captions {0: 10·1} (caption 1 masked), negative 10·0.6
    i0 = -10 + math.log(math.exp(10) + math.exp(6))
    # image 1: captions {0: 0, 1: 10}, negative 10·0.6
    i1 = -10 + math.log(math.exp(0) + math.exp(10) + math.exp(6))
    # caption 0 over images {0: 10, 1: 0}; caption 1 over images {1: 10} (image 0 masked)
    t0 = -10 + math.log(math.exp(10) + math.exp(0))
    t1 = 0.0
    assert loss.item() == pytest.approx(((i0 + i1) / 2 + (t0 + t1) / 2) / 2, rel=1e-5)
    assert accuracy.item() == 1.0 and beats.item() == 1.0


def test_batch_order_interleaves_repeats():
    assert [_batch_order(s, 3) for s in range(9)] == [
        (0, 0, 0), (0, 0, 1), (0, 0, 2), (1, 1, 0), (1, 0, 1), (1, 1, 2), (2, 2, 0), (2, 1, 1), (2, 0, 2)]


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """Tiny CPU runs: 4 steps in one go, and 2 steps + checkpoint + 2 resumed steps, give the
    same weights bit for bit."""
    common = ["--batch", "4", "--device", "cpu", "--tiny", "--workers", "0", "--warmup", "2",
              "--repeats", "2", "--negatives", "2", "--steps", "4", "--log-every", "100"]
    train_main(["--out", str(tmp_path / "whole.pt")] + common)
    train_main(["--out", str(tmp_path / "first.pt"), "--time-limit", "1e-9", "--ckpt-dir", str(tmp_path / "ck")]
               + common)
    first = torch.load(tmp_path / "first.pt", weights_only=True)
    train_main(["--out", str(tmp_path / "resumed.pt"), "--resume", str(tmp_path / "ck" / "last.pt")] + common)
    whole = torch.load(tmp_path / "whole.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert any(not torch.equal(first[k], whole[k]) for k in whole)  # the first run really stopped early
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_training_refuses_evaluation_streams(tmp_path):
    with pytest.raises(SystemExit, match="evaluation stream"):
        train_main(["--out", str(tmp_path / "x.pt"), "--seed", "3", "--device", "cpu", "--tiny"])


def test_target_suites_draw_what_they_name():
    for index in range(20):
        scene = same_shape_scene(index)
        (a, b) = scene.objects
        assert a.shape == b.shape and a.colour != b.colour
        assert scenes_digest([scene]) == scenes_digest([same_shape_scene(index)])
        styled = outline_pastel_scene(index)
        assert len(styled.objects) == 2 and styled.background.startswith("pastel ")


def test_patch_labels_hand_worked():
    """A 4×4-pixel scene on a 2×2 patch grid: patch (0, 0) fully red circle, (0, 1) 3/4 blue
    star, (1, 0) one pixel (1/4) of the star, (1, 1) empty; then a small green ring covering a
    quarter of one patch and nothing else gets that patch all the same."""
    from types import SimpleNamespace

    from clipviz.synth.binding import BACKGROUND, IGNORED, class_id, patch_labels

    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0:2, 0:2] = True
    masks[1, 0:2, 2:4] = True
    masks[1, 0, 2] = False  # 3 of 4 pixels
    masks[1, 2, 0] = True  # a quarter of the patch below-left: neither object nor background
    objects = [SimpleNamespace(shape="circle", colour="red"), SimpleNamespace(shape="star", colour="blue")]
    scene = SimpleNamespace(size=4, objects=objects, masks=masks)
    assert patch_labels(scene, 2).tolist() == [class_id("circle", "red"), class_id("star", "blue"), IGNORED, BACKGROUND]
    small = np.zeros((3, 4, 4), dtype=bool)
    small[:2] = masks
    small[2, 3, 3] = True  # 1/4 of patch (1, 1)
    scene = SimpleNamespace(size=4, objects=objects + [SimpleNamespace(shape="ring", colour="green")], masks=small)
    assert patch_labels(scene, 2).tolist() == [class_id("circle", "red"), class_id("star", "blue"), IGNORED,
                                               class_id("ring", "green")]


def test_class_attention_share_equals_the_attention_modules_own_weights():
    """The recomputed CLS attention row equals nn.MultiheadAttention's averaged weights; the share
    counts background and border (IGNORED) patches, not object ones."""
    import torch

    from clipviz.model import ResidualAttentionBlock
    from clipviz.synth.binding import BACKGROUND, IGNORED
    from clipviz.synth.train import class_attention_off_objects

    torch.manual_seed(0)
    block = ResidualAttentionBlock(32, 4).eval()
    x = torch.randn(3, 1 + 9, 32)
    labels = torch.randint(0, 3, (3, 9))
    labels[labels == 2] = BACKGROUND
    labels[labels == 1] = IGNORED
    read = block.ln_1(x)
    _, weights = block.attn(read, read, read, need_weights=True, average_attn_weights=True)  # [B, N, N]
    expected = (weights[:, 0, 1:] * (labels != 0)).sum(-1).mean()
    assert torch.allclose(class_attention_off_objects(block, read, labels), expected, atol=1e-6)


def test_patch_loss_is_cross_entropy_over_prompts_without_ignored_patches():
    import torch

    from clipviz.model import VisionTransformer
    from clipviz.synth.binding import IGNORED
    from clipviz.synth.train import PATCH_SCALE, patch_loss

    torch.manual_seed(0)
    visual = VisionTransformer(32, 16, 24, 1, 2, 8).eval()
    tokens = torch.randn(2, 5, 24)
    prompts = torch.randn(6, 8)
    labels = torch.tensor([[0, 5, IGNORED, 2], [IGNORED, IGNORED, 1, 1]])
    loss, accuracy = patch_loss(visual, tokens, prompts, labels)
    terms = []
    for b in range(2):
        for g in range(4):
            if labels[b, g] == IGNORED:
                continue
            z = visual.ln_post(tokens[b, 1 + g]) @ visual.proj
            cos = torch.nn.functional.cosine_similarity(z[None], prompts, dim=-1)
            terms.append(-torch.log_softmax(PATCH_SCALE * cos, dim=0)[labels[b, g]])
    assert torch.allclose(loss, torch.stack(terms).mean(), atol=1e-5)
    assert 0.0 <= accuracy.item() <= 1.0
