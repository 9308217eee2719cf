"""Training examples that force binding: which colour belongs to which shape, and where it is.

A model trained only on captions that name every object can match a scene as a bag of colours and
a bag of shapes, and its last block need not say where anything is. These examples remove that
shortcut (the remedy of Yuksekgonul et al. 2023, "When and why vision-language models behave like
bags-of-words", ICLR: hard negatives that keep the words and break their binding):

- scenes: 1–4 objects, often two of one shape in different colours or of one colour in different
  shapes; muted, pastel or photo backgrounds (clipviz.synth.photos); filled or outlined objects;
  sometimes heavier overlap. ``training_scene(seed, index)``.
- captions: most name a random subset of the objects (often just one), so an image must match
  "a red cross" while a black cross sits beside it. ``training_text(scene, rng)``.
- hard negatives per caption: the same words with one binding broken — a named object recoloured
  or reshaped (preferring colours and shapes of the scene's other objects), or two named objects'
  colours swapped. Each negative names at least one (shape, colour) absent from the scene, so it
  is false by construction.
- class sets: the scene's classes and each caption's named classes as multi-hot rows over
  all_classes(), so the loss need not count another scene that also holds the named objects as
  a negative.
- patch labels: which class (or the background) covers each patch, from the scene's masks, for
  the training's patch loss and its class-token attention loss (clipviz.synth.train).

Everything is drawn from ``np.random.default_rng([seed, index])`` (scene) and
``[seed, index, 1 + r]`` (caption r), so an example does not depend on the process or worker.
"""

import dataclasses

import numpy as np

from .captions import caption_settings, describe
from .photos import photo_crop
from .scenes import COLOURS, IMAGE_SIZE, MAX_OBJECTS, SHAPES, make_scene

COLOUR_NAMES = tuple(COLOURS)
N_CLASSES = len(SHAPES) * len(COLOURS)

# scene style: (share of scenes, value) lists; the shares of each list add up to 1
BACKGROUND_STYLES = ((0.5, None), (0.25, "pastel"), (0.25, "photo"))  # "photo" needs photos, else None
OUTLINE_STYLES = ((0.6, 0.0), (0.25, 1.0), (0.15, 0.5))  # chance that each object is outlined
OVERLAP_STYLES = ((0.7, 0.5), (0.3, 0.3))  # min_visible
P_SAME_SHAPE = 0.3  # scenes of 2+ objects holding two of one shape in different colours
P_SAME_COLOUR = 0.15  # ... or two of one colour in different shapes
P_NAME_ALL = 0.35  # captions naming every object; the others name a random non-empty subset
P_NAME_ONE = 0.7  # among subset captions: just one object
P_SCENE_ATTRIBUTE = 0.6  # negatives take a colour / shape of another object in the scene when one fits
NEGATIVES = 3
BACKGROUND = N_CLASSES  # patch label of a background patch; class ids are 0 .. N_CLASSES - 1
IGNORED = -1  # patch label of a patch partly on an object: no target
OBJECT_COVER = 0.5  # a patch is labelled with an object that covers at least this share of it
BACKGROUND_COVER = 0.05  # ... and is background when all objects together cover at most this


def class_id(shape, colour):
    """Row of all_classes() for (shape, colour): shape-major, as clipviz.synth.evaluate.class_index."""
    return SHAPES.index(shape) * len(COLOURS) + COLOUR_NAMES.index(colour)


def multi_hot(pairs):
    """(shape, colour) pairs -> bool [N_CLASSES], True at each pair's class_id."""
    row = np.zeros(N_CLASSES, dtype=bool)
    row[[class_id(s, c) for s, c in pairs]] = True
    return row


def patch_labels(scene, grid):
    """Patch-grid targets of ``scene`` -> int64 [grid * grid], row-major like the ViT's tokens.

    Each patch gets the class_id of the object covering at least OBJECT_COVER of it, BACKGROUND
    when all objects together cover at most BACKGROUND_COVER of it, and IGNORED between (object
    borders). An object that covers no patch that much (a small one straddling patches) still
    gets its best-covered patch, unless another object covers that patch more. The scene side
    must be a multiple of ``grid``."""
    side = scene.size // grid
    if side * grid != scene.size:
        raise ValueError(f"scene size {scene.size} is not a multiple of the patch grid {grid}")
    cover = scene.masks.reshape(len(scene.objects), grid, side, grid, side).mean(axis=(2, 4))
    cover = cover.reshape(len(scene.objects), grid * grid)  # [K, G]
    ids = np.array([class_id(o.shape, o.colour) for o in scene.objects])
    labels = np.full(grid * grid, IGNORED, dtype=np.int64)
    labels[cover.sum(0) <= BACKGROUND_COVER] = BACKGROUND
    top = cover.argmax(0)
    on_object = cover.max(0) >= OBJECT_COVER
    on_object[cover.argmax(1)[top[cover.argmax(1)] == np.arange(len(ids))]] = True  # each object's best patch
    labels[on_object] = ids[top[on_object]]
    return labels


def _pick(rng, table):
    shares, values = zip(*table)
    return values[int(rng.choice(len(values), p=shares))]


def _binding_classes(rng, n):
    """n distinct (shape, colour) pairs, in random order; with n >= 2 often a same-shape or
    same-colour pair among them."""
    first = (SHAPES[rng.integers(len(SHAPES))], COLOUR_NAMES[rng.integers(len(COLOURS))])
    chosen = [first]
    kind = rng.random()
    if n >= 2 and kind < P_SAME_SHAPE:
        chosen.append((first[0], rng.choice([c for c in COLOUR_NAMES if c != first[1]])))
    elif n >= 2 and kind < P_SAME_SHAPE + P_SAME_COLOUR:
        chosen.append((rng.choice([s for s in SHAPES if s != first[0]]), first[1]))
    while len(chosen) < n:
        pair = (SHAPES[rng.integers(len(SHAPES))], COLOUR_NAMES[rng.integers(len(COLOURS))])
        if pair not in chosen:
            chosen.append(pair)
    return [(str(s), str(c)) for s, c in (chosen[k] for k in rng.permutation(n))]


def training_scene(seed, index, photos=None, size=IMAGE_SIZE):
    """Training scene ``index`` of stream ``seed`` in a random style (module doc) -> Scene.

    photos: list of uint8 [H, W, 3] (clipviz.synth.photos.load_photos) for photo backgrounds;
    without them those scenes get the default muted background."""
    rng = np.random.default_rng([seed, index])
    classes = _binding_classes(rng, int(rng.integers(1, MAX_OBJECTS + 1)))
    background = _pick(rng, BACKGROUND_STYLES)
    if background == "photo":
        background = photo_crop(rng, photos, size) if photos else None
    return make_scene(rng, size=size, classes=classes, background=background,
                      outline=_pick(rng, OUTLINE_STYLES), min_visible=_pick(rng, OVERLAP_STYLES))


def _named_subset(rng, n):
    if n == 1 or rng.random() < P_NAME_ALL:
        return list(range(n))
    count = 1 if rng.random() < P_NAME_ONE else int(rng.integers(2, n + 1))
    return sorted(int(k) for k in rng.choice(n, count, replace=False))


def _alternatives(rng, current, scene_values, all_values, absent):
    """Values to replace ``current`` with, each giving an absent class (``absent(value)``):
    those seen elsewhere in the scene first when the rng says so, else any."""
    options = [v for v in all_values if v != current and absent(v)]
    in_scene = [v for v in options if v in scene_values]
    return in_scene if in_scene and rng.random() < P_SCENE_ATTRIBUTE else options


def _negative(rng, scene, named, present):
    """One list of altered copies of ``named`` objects that names at least one class absent from
    the scene (a set of (shape, colour)), or None when no alteration of the drawn kind fits."""
    kinds = ["colour", "shape"] + (["swap"] if len(named) >= 2 else [])
    kind = kinds[rng.integers(len(kinds))]
    altered = list(named)
    if kind == "swap":
        a, b = (int(k) for k in rng.choice(len(named), 2, replace=False))
        x, y = named[a], named[b]
        swapped = [(x.shape, y.colour), (y.shape, x.colour)]
        if x.colour == y.colour or x.shape == y.shape or all(p in present for p in swapped):
            return None
        altered[a] = dataclasses.replace(x, colour=y.colour)
        altered[b] = dataclasses.replace(y, colour=x.colour)
        return altered
    k = int(rng.integers(len(named)))
    obj = named[k]
    if kind == "colour":
        options = _alternatives(rng, obj.colour, {o.colour for o in scene.objects}, COLOUR_NAMES,
                                lambda c: (obj.shape, c) not in present)
        if options:
            altered[k] = dataclasses.replace(obj, colour=str(options[rng.integers(len(options))]))
            return altered
    else:
        options = _alternatives(rng, obj.shape, {o.shape for o in scene.objects}, SHAPES,
                                lambda s: (s, obj.colour) not in present)
        if options:
            altered[k] = dataclasses.replace(obj, shape=str(options[rng.integers(len(options))]))
            return altered
    return None


def training_text(scene, rng, negatives=NEGATIVES):
    """One caption of ``scene`` and its hard negatives (module doc).

    rng: np.random.Generator or a seed. Returns (caption str, [negatives] str,
    named bool [N_CLASSES]: the classes the caption names)."""
    rng = np.random.default_rng(rng)
    named = [scene.objects[k] for k in _named_subset(rng, len(scene.objects))]
    present = {(o.shape, o.colour) for o in scene.objects}
    settings = caption_settings(rng, len(named))
    out = []
    while len(out) < negatives:  # always ends: recolouring any one object always has options
        altered = _negative(rng, scene, named, present)
        if altered is not None:
            out.append(describe(altered, scene.size, settings))
    return describe(named, scene.size, settings), out, multi_hot([(o.shape, o.colour) for o in named])
