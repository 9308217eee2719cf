"""Synthetic scenes: determinism, exact masks, class coverage, sizes, captions."""

import collections
import hashlib
import re
import subprocess
import sys

import numpy as np
import pytest

from clipviz.errors import ClipvizError
from clipviz.synth import (
    COLOURS,
    MAX_OBJECTS,
    MIN_VISIBLE,
    SHAPES,
    SIZES,
    all_class_prompts,
    all_classes,
    caption_for,
    make_scene,
    make_single_object_scene,
    object_mask,
    object_prompt,
    position_phrase,
    scene_from_index,
)


def scene_hash(scene):
    digest = hashlib.sha256(scene.image.tobytes())
    digest.update(np.packbits(scene.masks).tobytes())
    digest.update(repr(scene.objects).encode())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def many_scenes():
    """1,000 scenes without pixel noise (faster; objects and masks are the same as with noise)."""
    return [scene_from_index(11, i, noise=False) for i in range(1000)]


def test_same_seed_and_index_give_identical_scenes():
    first, second = scene_from_index(3, 42), scene_from_index(3, 42)
    assert first.image.dtype == np.uint8 and first.image.shape == (224, 224, 3)
    assert first.masks.dtype == bool and first.masks.shape == (len(first.objects), 224, 224)
    assert scene_hash(first) == scene_hash(second)
    scene_from_index(3, 41)  # drawing other scenes in between changes nothing
    assert scene_hash(scene_from_index(3, 42)) == scene_hash(first)


def test_scene_is_identical_in_a_fresh_process():
    code = (
        "import hashlib, numpy as np; from clipviz.synth import scene_from_index\n"
        "s = scene_from_index(3, 42); d = hashlib.sha256(s.image.tobytes())\n"
        "d.update(np.packbits(s.masks).tobytes()); d.update(repr(s.objects).encode())\n"
        "print(d.hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == scene_hash(scene_from_index(3, 42))


def test_different_indices_and_seeds_differ():
    hashes = {scene_hash(scene_from_index(seed, i)) for seed in (0, 1) for i in range(20)}
    assert len(hashes) == 40


def test_masks_are_exact_visible_pixels(many_scenes):
    for scene in many_scenes[:200]:
        masks = scene.masks
        assert masks.sum(0).max() <= 1, "masks overlap"
        for obj, mask in zip(scene.objects, masks):
            full = object_mask(obj, scene.size)
            assert not (mask & ~full).any(), "mask leaves the object's footprint"
            assert (scene.image[mask] == obj.rgb).all(), "a mask pixel is not the object's colour"
            assert mask.sum() >= MIN_VISIBLE * full.sum(), "object hidden too much"
        # pixels outside every mask are background: not exactly any object's colour in bulk
        covered = masks.any(0)
        for obj in scene.objects:
            stray = (scene.image == obj.rgb).all(-1) & ~covered
            assert stray.sum() < 20


def test_later_objects_occlude_earlier_ones(many_scenes):
    seen_overlap = False
    for scene in many_scenes[:150]:
        fulls = [object_mask(obj, scene.size) for obj in scene.objects]
        for k in range(len(fulls)):
            on_top = np.zeros_like(fulls[k])
            for later in fulls[k + 1:]:
                on_top |= later
            np.testing.assert_array_equal(scene.masks[k], fulls[k] & ~on_top)
            seen_overlap |= bool((fulls[k] & on_top).any())
    assert seen_overlap


def test_objects_of_one_colour_keep_apart(many_scenes):
    pairs = 0
    for scene in many_scenes:
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1:]:
                if a.colour == b.colour:
                    pairs += 1
                    gap = np.hypot(a.centre[0] - b.centre[0], a.centre[1] - b.centre[1])
                    assert gap > a.radius + b.radius
    assert pairs > 20


def test_noise_changes_only_pixels():
    noisy, clean = scene_from_index(5, 9), scene_from_index(5, 9, noise=False)
    assert noisy.objects == clean.objects and noisy.background == clean.background
    np.testing.assert_array_equal(noisy.masks, clean.masks)
    diff = noisy.image.astype(int) - clean.image.astype(int)
    assert 1.0 < np.abs(diff).mean() < 8.0 and np.abs(diff).max() < 50


def test_counts_cover_all_classes(many_scenes):
    shapes, colours, sizes, counts, backgrounds = (collections.Counter() for _ in range(5))
    for scene in many_scenes:
        counts[len(scene.objects)] += 1
        backgrounds[scene.background] += 1
        for obj in scene.objects:
            shapes[obj.shape] += 1
            colours[obj.colour] += 1
            sizes[obj.size] += 1
    assert set(counts) == set(range(1, MAX_OBJECTS + 1))
    assert set(shapes) == set(SHAPES) and len(SHAPES) >= 6
    assert set(colours) == set(COLOURS) and len(COLOURS) >= 8
    assert set(sizes) == set(SIZES) and len(SIZES) >= 2
    assert min(shapes.values()) > 0.5 * max(shapes.values())  # roughly balanced
    assert min(colours.values()) > 0.5 * max(colours.values())
    assert len(backgrounds) >= 4


def test_objects_are_distinct_by_default(many_scenes):
    for scene in many_scenes:
        pairs = [(obj.shape, obj.colour) for obj in scene.objects]
        assert len(set(pairs)) == len(pairs)
    same = make_scene(0, n_objects=3, shapes=["ring"], colours=["red"], distinct=False)
    assert [(o.shape, o.colour) for o in same.objects] == [("ring", "red")] * 3
    with pytest.raises(ClipvizError, match="distinct"):
        make_scene(0, n_objects=2, shapes=["ring"], colours=["red"])


def test_object_sizes_in_pixels(many_scenes):
    for scene in many_scenes[:200]:
        for obj in scene.objects:
            lo, hi = SIZES[obj.size]
            assert lo <= obj.radius <= hi
            ys, xs = np.nonzero(object_mask(obj, scene.size))
            dist = np.hypot(xs - obj.centre[0], ys - obj.centre[1])
            # the shape fills its circle: within the radius, and reaching near it
            assert dist.max() <= obj.radius + 0.5
            assert dist.max() >= 0.85 * obj.radius
            assert min(xs.min(), ys.min()) >= 0 and max(xs.max(), ys.max()) < scene.size


def test_n_objects_and_restrictions():
    assert all(len(make_scene(i, n_objects=4).objects) == 4 for i in range(5))
    assert {len(make_scene(i, n_objects=(2, 3)).objects) for i in range(40)} == {2, 3}
    scene = make_scene(1, n_objects=2, shapes=["star", "heart"], colours=["blue"], sizes=["small"])
    assert {o.shape for o in scene.objects} <= {"star", "heart"}
    assert {(o.colour, o.size) for o in scene.objects} == {("blue", "small")}
    with pytest.raises(ClipvizError, match="hexagon|unknown"):
        make_scene(0, shapes=["hexagon"])
    with pytest.raises(ClipvizError):
        make_scene(0, n_objects=0)


def test_image_size_scales_objects():
    scene = make_scene(4, n_objects=2, size=112, sizes=["large"])
    assert scene.image.shape == (112, 112, 3) and scene.masks.shape == (2, 112, 112)
    lo, hi = SIZES["large"]
    assert all(lo / 2 <= o.radius <= hi / 2 for o in scene.objects)


def test_single_object_scenes_differ_only_in_class():
    scenes = [make_single_object_scene(7, 2, shape, colour) for shape, colour in all_classes()]
    assert len(scenes) == len(SHAPES) * len(COLOURS)
    first = scenes[0].objects[0]
    for scene, (shape, colour) in zip(scenes, all_classes()):
        (obj,) = scene.objects
        assert (obj.shape, obj.colour) == (shape, colour)
        assert (obj.centre, obj.radius, obj.size) == (first.centre, first.radius, first.size)
    # same background behind every object
    outside = ~np.logical_or.reduce([s.masks[0] for s in scenes[:8]])
    np.testing.assert_array_equal(scenes[0].image[outside], scenes[5].image[outside])


def test_captions_name_every_object(many_scenes):
    rng = np.random.default_rng(0)
    captions = set()
    for scene in many_scenes[:400]:
        caption = caption_for(scene, rng)
        captions.add(caption)
        for obj in scene.objects:
            assert re.search(rf"\b{obj.colour} {obj.shape}\b", caption), (caption, obj)
        assert not re.search(r"\ba [aeiou]", caption) and not re.search(r"\ban [^aeiou\s]", caption)
        # CLIP's BPE gives these plain words one token each; punctuation is a token too
        assert len(re.findall(r"\w+|[^\w\s]", caption)) + 2 <= 77
    assert len(captions) > 350  # varied templates, orders, size and position words
    assert any(" small " in c or " large " in c for c in captions)
    assert any(" on the left" in c for c in captions)
    assert caption_for(many_scenes[0], 5) == caption_for(many_scenes[0], 5)


def test_position_phrase():
    assert position_phrase((10, 112), 224) == "on the left"
    assert position_phrase((220, 112), 224) == "on the right"
    assert position_phrase((112, 5), 224) == "at the top"
    assert position_phrase((112, 223), 224) == "at the bottom"
    assert position_phrase((112, 112), 224) == "in the center"
    assert position_phrase((200, 10), 224) == "in the top right"


def test_prompts():
    assert object_prompt("circle", "red") == "a photo of a red circle"
    assert object_prompt("star", "orange") == "a photo of an orange star"
    prompts = all_class_prompts()
    assert len(prompts) == len(set(prompts)) == len(all_classes())
    assert prompts[3] == object_prompt(*all_classes()[3])
