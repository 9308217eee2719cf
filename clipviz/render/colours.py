"""Colours and overlays: a value in [0, 1] → a colour of a matplotlib colour map → a blend over the photo.

Colour of a value v in [0, 1], as matplotlib draws it with a 256-entry colour map:

    k = min(floor(256 · v), 255)        colour(v) = 255 · table[k]      (table: [256, 3] in [0, 1])
    opacity(v) = α · k / 255            (α: the ``alpha`` switch, the opacity of the strongest value)
    overlay = floor((1 − opacity(v)) · photo + opacity(v) · colour(v) + 0.5)   where the model saw the pixel

The opacity grows with the relevance, so a zero-relevance pixel (k = 0) is exactly the photo and
weak regions stay close to it: with a constant opacity every low value of jet tinted the whole
square the model saw dark blue, a hard rectangle on every overlay. Only the top of the scale gets
the full ``alpha``. (clipviz.report's HTML page composites the same blend in the browser.)

Any name in matplotlib's colour-map registry works (jet, viridis, turbo, magma, Reds, ...);
matplotlib is imported when a table is first needed, never at ``import clipviz.render``.
"""

import math
import numbers
import zlib
from functools import lru_cache

import numpy as np

from ..errors import ClipvizError
from ..outputs import check_target, write_atomically
from ..suffixes import OVERLAY_SUFFIXES


@lru_cache(maxsize=None)
def colormap_table(cmap="jet"):
    """The colour map as float64 [256, 3] in [0, 1]: entry k is the colour of values in
    [k/256, (k+1)/256), read from matplotlib's registry (``matplotlib.colormaps[cmap]``)."""
    if not isinstance(cmap, str):
        raise ClipvizError(f"cmap must be a colour-map name such as 'jet', got {type(cmap).__name__}")
    import matplotlib  # here, not at import: start-up stays fast

    try:
        colour_map = matplotlib.colormaps[cmap]
    except KeyError:
        raise ClipvizError(f"unknown colormap {cmap!r}: use any matplotlib colour-map name, e.g. 'jet', "
                           "'viridis', 'turbo', 'magma' or 'Reds'") from None
    return colour_map(np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float64)


def colour_levels(values):
    """Table index of each value: k = min(floor(256 · clip(v, 0, 1)), 255), int [...]. No NaN allowed."""
    return np.minimum(np.floor(np.clip(values, 0.0, 1.0) * 256.0), 255).astype(np.intp)


def colorize(values, cmap="jet"):
    """float [...] in [0, 1] → float64 [..., 3] in [0, 255] (NaN rows give NaN)."""
    values = np.asarray(values, dtype=np.float64)
    seen = ~np.isnan(values)
    colours = np.full(values.shape + (3,), np.nan)
    colours[seen] = 255.0 * colormap_table(cmap)[colour_levels(values[seen])]
    return colours


# zlib level 1 instead of PIL's 6: PNG encoding was half the CLI's CPU time; files about 10% larger
PNG_COMPRESS_LEVEL = 1
# overlays and maps (photo-like, filtered rows): level 1 with zlib's run-length strategy, which on
# them is faster than level 1's default and makes smaller files (a 1600×1200 overlay: 160 vs 225 ms,
# 3.19 vs 3.27 MB; a map: 3× smaller). Figures keep the default: text and lines need its matches.
PNG_PHOTO_OPTIONS = {"compress_level": PNG_COMPRESS_LEVEL, "compress_type": zlib.Z_RLE}
# pixels blended at a time: the block's scratch arrays (21 bytes a pixel) stay in the CPU's cache
BLEND_PIXELS = 1 << 16


def overlay(photo, heatmap, cmap="jet", alpha=0.5):
    """Blend a heatmap over the photo at the photo's full resolution → uint8 [H, W, 3].

    photo:   uint8 [H, W, 3] (or [H, W] grey, [H, W, 4] whose alpha is ignored)
    heatmap: float [H, W] in [0, 1] (values outside are clipped); NaN = the model never saw the
             pixel, which stays exactly the photo; so does a pixel of relevance below 1/256
    alpha:   opacity of the strongest value; a value's opacity is alpha · k / 255 (module docstring)
    out = floor((1 − alpha · k/255) · photo + alpha · k/255 · colour(heatmap) + 0.5),  k = colour level
    """
    photo = _rgb(photo)
    heat = np.asarray(heatmap)
    if heat.shape != photo.shape[:2]:
        raise ClipvizError(f"the heatmap is {heat.shape} but the photo is {photo.shape[:2]}: map patch grids "
                           "onto the photo first with clipviz.map_to_photo(grid, crop_box)")
    alpha = float(alpha) if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool) else math.nan
    if not 0.0 <= alpha <= 1.0:
        raise ClipvizError(f"alpha must be between 0 (photo only) and 1 (heatmap only), got {alpha}")
    # every blend looked up, one channel at a time: tables[c, k · 256 + p] for level k, photo value p
    tables = np.ascontiguousarray(blend_table(255.0 * colormap_table(cmap), alpha).transpose(1, 0, 2)).reshape(3, -1)
    out = np.empty_like(photo)
    rows = max(1, BLEND_PIXELS // max(1, photo.shape[1]))
    for top in range(0, photo.shape[0], rows):
        # colour_levels without a float64 copy or a mask: 256 · v is exact in float32 too (a power
        # of two); fmax turns NaN into level 0, whose opacity is 0: the photo itself
        scaled = np.multiply(heat[top:top + rows], np.float32(256.0))
        np.fmax(scaled, 0.0, out=scaled)
        np.minimum(scaled, 255.0, out=scaled)
        levels = scaled.astype(np.intp)  # = min(floor(256 · clip(v, 0, 1)), 255)
        levels <<= 8
        index, looked_up = np.empty_like(levels), np.empty(levels.shape, np.uint8)
        for c in range(3):  # a plane at a time: an index per pixel, not per pixel and channel
            np.bitwise_or(levels, photo[top:top + rows, :, c], out=index)
            np.take(tables[c], index, out=looked_up)
            out[top:top + rows, :, c] = looked_up
    return out


def level_opacity(alpha):
    """Opacity of each colour level, float64 [256]: alpha · k / 255 (0 for the lowest level, so a
    zero-relevance pixel is the photo; alpha for the highest)."""
    return float(alpha) * np.arange(256, dtype=np.float64) / 255.0


def blend_table(table, alpha):
    """Every blend the overlay can produce, looked up instead of computed per pixel.

    table: float [256, 3] colours in [0, 255]. Returns uint8 [256, 3, 256]:
    out[k, c, p] = floor((1 − a_k) · p + a_k · table[k, c] + 0.5) with a_k = level_opacity(alpha)[k],
    the same float64 expression as a per-pixel blend, so the lookup is bit-identical to it (and
    5-10× faster on a photo).
    """
    photo_values = np.arange(256, dtype=np.float64)
    opacity = level_opacity(alpha)[:, None, None]
    blend = (1.0 - opacity) * photo_values[None, None, :] + opacity * table[:, :, None]
    return np.clip(np.floor(blend + 0.5), 0, 255).astype(np.uint8)


def save_overlay(path, photo, heatmap, cmap="jet", alpha=0.5, *, protect=(), force=True):
    """Write ``overlay(photo, heatmap)`` as a .png (or .jpg) with PIL; returns the Path written.

    protect: paths never to overwrite (the input photo). force=True (the default of this
    low-level writer) replaces a file already at ``path``; force=False refuses one clipviz did
    not write (clipviz.outputs.write_atomically).
    """
    from PIL import Image
    path = check_target(path, OVERLAY_SUFFIXES, protect)
    image = Image.fromarray(overlay(photo, heatmap, cmap=cmap, alpha=alpha))
    options = {"format": "PNG", **PNG_PHOTO_OPTIONS} if path.suffix.lower() == ".png" \
        else {"format": "JPEG"}
    return write_atomically(path, lambda handle: image.save(handle, **options), force=force)


def _rgb(photo):
    if hasattr(photo, "convert"):  # a PIL image
        photo = photo.convert("RGB")
    photo = np.asarray(photo)
    if photo.dtype != np.uint8:
        raise ClipvizError(f"the photo must be uint8, got {photo.dtype}: load it with clipviz.load_image")
    if photo.ndim == 2:
        photo = np.repeat(photo[:, :, None], 3, axis=2)
    if photo.ndim != 3 or photo.shape[2] not in (3, 4):
        raise ClipvizError(f"the photo must be [H, W, 3] RGB, got shape {photo.shape}")
    return np.ascontiguousarray(photo[:, :, :3])
