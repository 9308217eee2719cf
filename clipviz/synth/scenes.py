"""Synthetic scenes: flat-coloured shapes on textured backgrounds, with exact object masks.

A scene is a 224×224 RGB image holding 1–4 objects. Each object is one of SHAPES, painted in one
of COLOURS, at one of SIZES, at a random position and a small random tilt. Later objects occlude
earlier ones; every object keeps at least MIN_VISIBLE of its own area visible, and objects of one
colour never touch (their border would be invisible). The masks say which pixels show each
object, and they are exact: objects are drawn without anti-aliasing, so before pixel noise is
added (``noise=False``) every mask pixel has exactly the object's ``rgb`` and no other object's
pixels do.

Backgrounds are muted (low saturation, mid brightness, so white and black objects stand out too)
and varied: plain, linear gradient, stripes, checkerboard or smooth blotches, plus mild Gaussian
pixel noise over the whole image.

Scenes are addressed by (seed, index): ``scene_from_index(seed, index)`` builds its generator from
``np.random.default_rng([seed, index])``, so a scene does not depend on which scenes were drawn
before it, in which process or in which DataLoader worker.

    scene = scene_from_index(0, 17)
    scene.image    # uint8 [224, 224, 3]
    scene.masks    # bool  [K, 224, 224], K = len(scene.objects)
    scene.objects  # [SceneObject(shape='star', colour='red', size='large', ...), ...]
"""

from dataclasses import dataclass
import math
import weakref

import numpy as np
from PIL import Image

from ..errors import ClipvizError

IMAGE_SIZE = 224

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart", "diamond", "ring")

# name -> base RGB. Each object jitters its colour by at most COLOUR_JITTER per channel.
COLOURS = {
    "red": (220, 30, 35),
    "green": (30, 165, 50),
    "blue": (35, 70, 225),
    "yellow": (245, 215, 25),
    "purple": (135, 45, 190),
    "orange": (250, 125, 10),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
COLOUR_JITTER = 10

# name -> (smallest, largest) circumradius in pixels for a 224×224 image (scaled for other sizes).
# Every shape fits inside the circle of its radius around its centre and reaches close to it.
SIZES = {"small": (16.0, 22.0), "large": (30.0, 42.0)}

MAX_OBJECTS = 4
MIN_VISIBLE = 0.5  # each object keeps at least this fraction of its own pixels visible
MAX_TILT = 10.0  # degrees; small, so a square never turns into a diamond
BACKGROUNDS = ("plain", "gradient", "stripes", "checker", "blotches")
OUTLINE_WIDTH = 0.22  # outlined objects: line width as a share of the radius (4-9 px at 224 px)


@dataclass(frozen=True)
class SceneObject:
    """One painted object. centre is (x, y) in pixels, x to the right, y down; radius in pixels."""

    shape: str
    colour: str
    size: str
    centre: tuple  # (x, y) floats
    radius: float
    angle: float  # tilt in degrees, counter-clockwise on screen
    rgb: tuple  # (r, g, b) ints actually painted: COLOURS[colour] plus a little jitter


@dataclass
class Scene:
    """image uint8 [S, S, 3]; objects in painting order; masks bool [K, S, S] of visible pixels."""

    image: np.ndarray
    objects: list
    masks: np.ndarray
    background: str = "plain"

    def __post_init__(self):
        _MADE[id(self.image)] = self.image  # explain() gives no "never seen a photo" notice for it

    @property
    def size(self):
        return self.image.shape[0]


# images of the scenes made here, while they live (id → array; an array's id is reused only after it dies)
_MADE = weakref.WeakValueDictionary()


def is_scene_image(image):
    """Whether ``image`` is the very array of a Scene made by clipviz.synth (not a copy)."""
    return _MADE.get(id(image)) is image


# ---------------------------------------------------------------------------------- shapes


def _unit_polygon(points):
    """Vertices [V, 2] (x right, y down) rescaled so the farthest one lies on the unit circle."""
    points = np.asarray(points, dtype=np.float64)
    points = points - (points.max(0) + points.min(0)) / 2  # centre the bounding box
    return points / np.sqrt((points**2).sum(1)).max()


def _star(n_points, inner):
    angles = -np.pi / 2 + np.arange(2 * n_points) * np.pi / n_points
    radii = np.where(np.arange(2 * n_points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)


_ARM = 0.32  # half-width of the cross's arms
_POLYGONS = {
    "square": _unit_polygon([(-1, -1), (1, -1), (1, 1), (-1, 1)]),
    "diamond": _unit_polygon([(0, -1), (0.7, 0), (0, 1), (-0.7, 0)]),  # taller than wide
    "triangle": _unit_polygon([(0, -1), (1.1547, 1), (-1.1547, 1)]),  # equilateral, apex up
    "star": _unit_polygon(_star(5, 0.45)),
    "cross": _unit_polygon(
        [(-_ARM, -1), (_ARM, -1), (_ARM, -_ARM), (1, -_ARM), (1, _ARM), (_ARM, _ARM),
         (_ARM, 1), (-_ARM, 1), (-_ARM, _ARM), (-1, _ARM), (-1, -_ARM), (-_ARM, -_ARM)]
    ),
}


def _in_polygon(x, y, vertices):
    """Even-odd point-in-polygon test. x, y float [h, w]; vertices [V, 2] -> bool [h, w]."""
    inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
    x0, y0 = vertices[-1]
    for x1, y1 in vertices:
        if y1 != y0:  # horizontal edges cross no horizontal ray
            crosses = (y0 > y) != (y1 > y)
            x_cross = x0 + (y - y0) * ((x1 - x0) / (y1 - y0))
            inside ^= crosses & (x < x_cross)
        x0, y0 = x1, y1
    return inside


def _in_shape(shape, u, v):
    """Is the point inside `shape` drawn in the unit circle? u, v float [h, w] (v down) -> bool."""
    if shape in _POLYGONS:
        return _in_polygon(u, v, _POLYGONS[shape])
    r2 = u * u + v * v
    if shape == "circle":
        return r2 <= 0.92**2
    if shape == "ring":
        return (r2 <= 0.95**2) & (r2 >= 0.52**2)
    if shape == "heart":  # (x² + y² - 1)³ - x² y³ <= 0, y up; its enclosing circle has
        x, y = u * 1.27, 0.26 - v * 1.27  # centre (0, 0.26) and radius 1.26
        q = x * x + y * y - 1
        return q * q * q - x * x * y * y * y <= 0
    raise ClipvizError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")


def _object_box(obj, size):
    """Pixel box (x0, y0, x1, y1), end-exclusive, clipped to the image, that holds the object."""
    (cx, cy), r = obj.centre, obj.radius
    x0, y0 = max(0, math.floor(cx - r)), max(0, math.floor(cy - r))
    x1, y1 = min(size, math.ceil(cx + r) + 1), min(size, math.ceil(cy + r) + 1)
    return x0, y0, x1, y1


def _object_patch(obj, box, inset=0.0):
    """The object's full (unoccluded) footprint inside box -> bool [y1 - y0, x1 - x0].

    inset: draw the shape that many pixels smaller (same centre and tilt); an outline is the
    footprint minus its inset copy. Pixel (row i, column j) has its centre at (x, y) = (j, i)."""
    x0, y0, x1, y1 = box
    (cx, cy), r = obj.centre, obj.radius - inset
    dx = (np.arange(x0, x1) - cx)[None, :] / r
    dy = (np.arange(y0, y1) - cy)[:, None] / r
    a = math.radians(obj.angle)  # undo the tilt: rotate the pixel into the shape's own frame
    u = math.cos(a) * dx - math.sin(a) * dy
    v = math.sin(a) * dx + math.cos(a) * dy
    return _in_shape(obj.shape, u, v)


def object_mask(obj, size=IMAGE_SIZE):
    """The object's full footprint, ignoring occlusion -> bool [size, size]."""
    mask = np.zeros((size, size), dtype=bool)
    x0, y0, x1, y1 = box = _object_box(obj, size)
    mask[y0:y1, x0:x1] = _object_patch(obj, box)
    return mask


# ------------------------------------------------------------------------------ backgrounds


def _muted_colour(rng, lo=70, hi=185, max_tint=22):
    """A low-saturation colour: grey level in [lo, hi] plus a small tint -> float32 [3]."""
    grey = rng.uniform(lo, hi)
    tint = rng.uniform(-max_tint, max_tint, 3)
    return (grey + tint - tint.mean()).astype(np.float32)


def _pastel_colour(rng, lo=195, hi=245, max_tint=45):
    """A light, softly tinted colour: grey level in [lo, hi] plus a larger tint -> float32 [3]."""
    return _muted_colour(rng, lo, hi, max_tint)


def _background(rng, size, pastel=False):
    """A textured background -> (float32 [size, size, 3] in 0..255, kind name).

    Muted (low saturation, mid brightness) by default; pastel: light and softly tinted, so white,
    yellow and other light objects stand out less (a style the default scenes never show)."""
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    if pastel:
        c1 = _pastel_colour(rng)
        c2 = np.clip(c1 + _muted_colour(rng, -30, 30, 30), 170, 255).astype(np.float32)
    else:
        c1 = _muted_colour(rng)
        c2 = np.clip(c1 + _muted_colour(rng, -45, 45, 18), 55, 200).astype(np.float32)
    angle = rng.uniform(0, np.pi)
    kind_name = "pastel " + kind if pastel else kind
    if kind == "plain":
        return np.broadcast_to(c1, (size, size, 3)).copy(), kind_name
    coords = np.arange(size, dtype=np.float32)
    # distance along a random direction, [size, size]
    along = math.cos(angle) * coords[None, :] + math.sin(angle) * coords[:, None]
    if kind == "gradient":
        t = (along - along.min()) / (along.max() - along.min())
    elif kind == "stripes":
        period = rng.uniform(10, 48) * size / IMAGE_SIZE
        t = np.sin(along * np.float32(2 * np.pi / period) + np.float32(rng.uniform(0, 2 * np.pi)))
        t = t * 0.5 + 0.5 if rng.random() < 0.5 else (t > 0).astype(np.float32)  # soft or hard
    elif kind == "checker":
        cell = rng.uniform(12, 40) * size / IMAGE_SIZE
        across = -math.sin(angle) * coords[None, :] + math.cos(angle) * coords[:, None]
        t = ((np.floor(along / cell) + np.floor(across / cell)) % 2).astype(np.float32)
    else:  # blotches: a coarse random grid of muted colours, smoothly upsampled
        grid = int(rng.integers(3, 9))
        mix = rng.random((grid, grid, 1))
        cells = c1 + mix * (c2 - c1) + rng.uniform(-12, 12, (grid, grid, 3))
        cells = Image.fromarray(np.clip(cells, 0, 255).astype(np.uint8))
        return np.asarray(cells.resize((size, size), Image.BICUBIC), dtype=np.float32), kind_name
    return c1 + t[:, :, None] * (c2 - c1), kind_name


# ----------------------------------------------------------------------------------- scenes


def _pixel_noise(rng, shape, sigma):
    """Near-Gaussian integer noise with standard deviation ~sigma -> int16 [shape].

    Each value sums four uniform 4-bit numbers cut from raw random bytes (Irwin-Hall: bell-shaped,
    std 9.22), then rescales; three times faster than rng.standard_normal, which would otherwise
    be the slowest step of a scene."""
    b = np.frombuffer(rng.bytes(2 * math.prod(shape)), np.uint8).reshape(2, *shape)
    total = (b[0] & 15) + (b[0] >> 4) + (b[1] & 15) + (b[1] >> 4)  # 0..60, mean 30
    scale = np.int16(round(256 * sigma / 9.22))
    return ((total.astype(np.int16) - 30) * scale + 128) >> 8


def _check_names(given, known, what):
    if given is None:
        return list(known)
    given = list(given)
    unknown = [name for name in given if name not in known]
    if unknown or not given:
        raise ClipvizError(f"unknown {what} {unknown or given!r}; choose from {', '.join(known)}")
    return given


def _object_count(rng, n_objects):
    if n_objects is None:
        n_objects = (1, MAX_OBJECTS)
    lo, hi = (n_objects, n_objects) if isinstance(n_objects, (int, np.integer)) else n_objects
    if not 1 <= lo <= hi:
        raise ClipvizError(f"n_objects must be an int >= 1 or a range (lo, hi), got {n_objects!r}")
    return int(rng.integers(lo, hi + 1))


def _pick_classes(rng, n, shapes, colours, distinct):
    """n (shape, colour) pairs; all different pairs when distinct."""
    n_pairs = len(shapes) * len(colours)
    if distinct:
        if n > n_pairs:
            raise ClipvizError(
                f"cannot draw {n} objects with distinct (shape, colour) from {n_pairs} pairs; "
                "allow more shapes or colours, or pass distinct=False"
            )
        picks = rng.choice(n_pairs, n, replace=False)
    else:
        picks = rng.integers(n_pairs, size=n)
    return [(shapes[p // len(colours)], colours[p % len(colours)]) for p in picks]


def _too_close(a, b, gap=2.0):
    """Do the circles around two objects come within `gap` pixels? Objects of one colour are kept
    this far apart: touching, they would merge into one blob with no visible border."""
    return math.dist(a.centre, b.centre) < a.radius + b.radius + gap


def make_scene(rng_or_seed, n_objects=None, size=IMAGE_SIZE, shapes=None, colours=None,
               sizes=None, distinct=True, noise=True, *, classes=None, background=None, outline=0.0,
               min_visible=MIN_VISIBLE):
    """Draw one random scene.

    rng_or_seed: np.random.Generator, or anything np.random.default_rng accepts.
    n_objects: None (uniform 1..MAX_OBJECTS), an int, or an inclusive (lo, hi) range.
    size: side of the square image in pixels; object radii scale with size / 224.
    shapes, colours, sizes: restrict the names drawn from (default: all of SHAPES, COLOURS, SIZES).
    distinct: objects all differ in (shape, colour), so a class is either present or absent.
    noise: add mild near-Gaussian pixel noise (std 2..6). Turning it off changes only the pixel
        values: objects, masks and background stay the same, and mask pixels are exactly obj.rgb.
    Keyword-only style options (their defaults draw exactly the scenes of earlier versions):
    classes: the (shape, colour) of each object, in painting order, instead of random ones.
    background: None (muted texture), "pastel" (light texture), or float/uint8 [size, size, 3]
        pixels to paint on (e.g. a photo crop; its kind is "photo").
    outline: chance that each object is drawn as an outline OUTLINE_WIDTH × radius wide around
        its own shape filled with the background — a cut-out that still hides what lies beneath.
        Its mask is its whole visible footprint; only the outline pixels have its rgb.
    min_visible: each object keeps at least this share of its own area visible.
    Returns a Scene: image uint8 [size, size, 3], masks bool [K, size, size].
    """
    rng = np.random.default_rng(rng_or_seed)
    shapes = _check_names(shapes, SHAPES, "shape")
    colours = _check_names(colours, COLOURS, "colour")
    sizes = _check_names(sizes, SIZES, "size")
    if classes is None:
        n = _object_count(rng, n_objects)
        classes = _pick_classes(rng, n, shapes, colours, distinct)
    else:
        classes = [(_check_names([s], SHAPES, "shape")[0], _check_names([c], COLOURS, "colour")[0])
                   for s, c in classes]
        n = len(classes)
    if background is None or isinstance(background, str):
        if background not in (None, "pastel"):
            raise ClipvizError(f"unknown background {background!r}; pass None, 'pastel' or pixels [size, size, 3]")
        image, background_kind = _background(rng, size, pastel=background == "pastel")
    else:
        image = np.asarray(background, dtype=np.float32)
        if image.shape != (size, size, 3):
            raise ClipvizError(f"background pixels must be [{size}, {size}, 3], got {list(image.shape)}")
        image, background_kind = image.copy(), "photo"

    scale = size / IMAGE_SIZE
    owner = np.full((size, size), -1, dtype=np.int16)  # index of the object on top, -1 = none
    ink = np.ones((size, size), dtype=bool)  # False inside outlined objects: background shows
    areas, objects = [], []
    for shape, colour in classes:
        size_name = sizes[rng.integers(len(sizes))]
        radius = float(rng.uniform(*SIZES[size_name])) * scale
        tilt = float(rng.uniform(-MAX_TILT, MAX_TILT))  # drawn for every shape: the stream of
        angle = 0.0 if shape in ("circle", "ring") else tilt  # draws must not depend on the shape
        jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3)
        rgb = tuple(int(c) for c in np.clip(np.array(COLOURS[colour]) + jitter, 0, 255))
        outlined = bool(outline) and rng.random() < outline  # no draw at the default: old scenes stay
        visible = np.bincount(owner.ravel() + 1, minlength=len(objects) + 1)[1:]
        for _ in range(100):  # move the new object until it hides no earlier one too much
            centre = tuple(float(c) for c in rng.uniform(radius, size - 1 - radius, 2))
            obj = SceneObject(shape, colour, size_name, centre, radius, angle, rgb)
            x0, y0, x1, y1 = box = _object_box(obj, size)
            patch = _object_patch(obj, box)
            below = owner[y0:y1, x0:x1]
            hidden = np.bincount(below[patch] + 1, minlength=len(objects) + 1)[1:]
            apart = not any(_too_close(obj, other) for other in objects if other.colour == colour)
            if apart and all(v - h >= min_visible * a for v, h, a in zip(visible, hidden, areas)):
                break
        below[patch] = len(objects)
        ink[y0:y1, x0:x1][patch] = ~_object_patch(obj, box, OUTLINE_WIDTH * radius)[patch] if outlined else True
        areas.append(int(patch.sum()))
        objects.append(obj)

    masks = owner[None] == np.arange(n, dtype=np.int16)[:, None, None]
    image = (image + 0.5).astype(np.int16)  # background in 0..255: rounded
    for k, obj in enumerate(objects):
        image[masks[k] & ink] = obj.rgb
    if noise:
        image += _pixel_noise(rng, image.shape, sigma=rng.uniform(2.0, 6.0))
    return Scene(np.clip(image, 0, 255).astype(np.uint8), objects, masks, background_kind)


def scene_from_index(seed, index, **kwargs):
    """Scene number `index` of the stream `seed`; the same for the same pair in any process.

    kwargs go to make_scene. Returns a Scene."""
    return make_scene(np.random.default_rng([seed, index]), **kwargs)


def make_single_object_scene(seed, index, shape, colour, **kwargs):
    """One `colour` `shape` on background number `index` of stream `seed`.

    For a fixed (seed, index) the background, position, size, tilt and colour jitter are the same
    whatever the shape and colour, so scenes over all classes differ only in the object's class.
    kwargs (size, sizes, noise) go to make_scene. Returns a Scene with one object."""
    return scene_from_index(seed, index, n_objects=1, shapes=[shape], colours=[colour], **kwargs)


def all_classes():
    """Every (shape, colour) pair, shape-major: class i is (SHAPES[i // C], list(COLOURS)[i % C])
    with C = len(COLOURS)."""
    return [(shape, colour) for shape in SHAPES for colour in COLOURS]
