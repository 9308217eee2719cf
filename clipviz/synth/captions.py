"""Captions for synthetic scenes, and the canonical prompts for zero-shot queries.

Training captions name every object in the scene, in random order, with a random template and
optional size and position words:

    "a red circle"
    "a photo of a blue square and a yellow star"
    "a small green triangle on the left"
    "a picture with a large purple heart in the top right, a white ring and an orange cross"

Queries use one fixed template, object_prompt(shape, colour): "a photo of a red circle".
Every caption is far shorter than CLIP's 77-token context (at most about 40 tokens).
"""

import numpy as np

from .scenes import SHAPES, COLOURS

TEMPLATES = (
    "{}",
    "a photo of {}",
    "a picture of {}",
    "a picture with {}",
    "an image of {}",
    "there is {}",
    "a scene with {}",
)
P_SIZE_WORD = 0.5  # chance that a caption gives every object its size word
P_POSITION = 0.35  # chance that a caption gives every object its position


def with_article(phrase):
    """'orange cross' -> 'an orange cross'; 'red circle' -> 'a red circle'."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def position_phrase(centre, image_size):
    """Where a point lies in a 3×3 split of the image: 'on the left', 'in the top right', ...

    centre: (x, y) in pixels, x to the right, y down."""
    x, y = centre
    column = ("left", "center", "right")[min(2, int(3 * x / image_size))]
    row = ("top", "center", "bottom")[min(2, int(3 * y / image_size))]
    if row == "center" and column == "center":
        return "in the center"
    if row == "center":
        return f"on the {column}"
    if column == "center":
        return f"at the {row}"
    return f"in the {row} {column}"


def object_phrase(obj, image_size, size_word=False, position=False):
    """Noun phrase for one SceneObject: 'a red circle', 'a small red circle on the left'."""
    words = ([obj.size] if size_word else []) + [obj.colour, obj.shape]
    phrase = with_article(" ".join(words))
    return f"{phrase} {position_phrase(obj.centre, image_size)}" if position else phrase


def join_phrases(phrases):
    """['a', 'b', 'c'] -> 'a, b and c'."""
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption_settings(rng, n):
    """The random wording of a caption naming n objects: (size words?, positions?, order of the
    n objects (int array), template index). Drawn in this order from rng."""
    size_word = rng.random() < P_SIZE_WORD
    position = rng.random() < P_POSITION
    return size_word, position, rng.permutation(n), int(rng.integers(len(TEMPLATES)))


def describe(objects, image_size, settings):
    """The caption naming ``objects`` (SceneObjects, or altered copies of them) worded by
    ``settings`` (from caption_settings) -> str."""
    size_word, position, order, template = settings
    phrases = [object_phrase(objects[k], image_size, size_word, position) for k in order]
    return TEMPLATES[template].format(join_phrases(phrases))


def caption_for(scene, rng):
    """A random caption naming every object of `scene` once, in random order.

    rng: np.random.Generator or a seed. Returns str."""
    rng = np.random.default_rng(rng)
    return describe(scene.objects, scene.size, caption_settings(rng, len(scene.objects)))


def object_prompt(shape, colour):
    """The canonical query for one class: 'a photo of a red circle', 'a photo of an orange star'."""
    return "a photo of " + with_article(f"{colour} {shape}")


def all_class_prompts():
    """object_prompt for every (shape, colour) in the order of all_classes() -> list of S*C str."""
    return [object_prompt(shape, colour) for shape in SHAPES for colour in COLOURS]
