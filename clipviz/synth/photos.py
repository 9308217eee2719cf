"""Photo crops as scene backgrounds, so the model sees objects on real textures, not only its own.

    photos = load_photos("../shared/images")        # list of uint8 [H, W, 3]
    pixels = photo_crop(rng, photos, 224)           # float32 [224, 224, 3], muted toward grey

A crop is a random square (a quarter to all of the photo's short side) of a random photo, resized
to the scene size and flipped left-right half of the time. Its contrast is pulled toward the crop's
mean grey by a random factor so that painted objects stay the most salient things in the scene
(photos hold saturated reds and whites of their own).
"""

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ClipvizError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
MIN_SIDE = 64  # photos smaller than this (pixels) are skipped: their crops would be mush


def load_photos(folder):
    """Every RGB photo in ``folder`` (sorted by name, so the list is the same everywhere) ->
    list of uint8 [H, W, 3]. Raises ClipvizError when the folder holds none."""
    root = Path(folder).expanduser()
    photos = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.suffix.lower() in PHOTO_SUFFIXES:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            if min(pixels.shape[:2]) >= MIN_SIDE:
                photos.append(pixels)
    if not photos:
        raise ClipvizError(f"no photo (.jpg, .png) of at least {MIN_SIDE} px in {root}; "
                           "pass --photos with a folder of photos, e.g. ../shared/images")
    return photos


def photo_crop(rng, photos, size):
    """A random crop of a random photo -> float32 [size, size, 3] in 0..255 (see module doc)."""
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.25, 1.0) * min(h, w))
    y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
    pixels = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    mean = pixels.mean(axis=(0, 1), keepdims=True).mean()
    return mean + rng.uniform(0.4, 0.9) * (pixels - mean)
