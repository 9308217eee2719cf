"""Explanation maps as numbers: one home for scaling and for mapping patch grids onto the photo.

    normalise_maps(token_maps)           [T, g, g] → [T, g, g] in [0, 1], each map by its own min and max
    shared_scale(grids)                  one min and max over every map of several arrays
    map_to_photo(grid, crop_box)         [g, g] or [P, g, g] → float32 [P, H, W] on the original photo
    photo_maps(explanations, shared)     what figures draw: maps on the photo, per-map or shared scale
    peak_xy(photo_map)                   (x, y) photo pixel of the maximum

Numpy only (no torch, no matplotlib): explanation, render and bench all read these, and none of
them needs another's module for it. The matrix products run on one BLAS thread (clipviz.threads).
"""

import numpy as np

from .errors import ClipvizError
from .threads import single_threaded_blas

PER_MAP = "per-map min–max"
SHARED = "shared scale"


def normalise_maps(token_maps):
    """Min-max each map to [0, 1]: [T, g, g] → float32 [T, g, g]. A constant map becomes all zeros."""
    token_maps = np.asarray(token_maps)
    flat = token_maps.reshape(token_maps.shape[0], -1).astype(np.float64)
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    scaled = np.where(span > 0, (flat - low) / np.where(span > 0, span, 1), 0.0)
    return scaled.reshape(token_maps.shape).astype(np.float32)


def scaling_label(shared):
    """How maps were scaled, as figures name it in their colorbar label."""
    return SHARED if shared else PER_MAP


def shared_scale(grids, shared=False):
    """Patch maps → [0, 1]: a list of float [K, g, g] → (list of float32 [K, g, g], (low, high)).

    Per map (shared=False): each map by its own min and max (low, high = 0, 1). Shared: every map
    of every array by one min and max over all of them, returned as (low, high) in raw units.
    A constant map (or set) becomes all zeros.
    """
    grids = [np.asarray(g, dtype=np.float64) for g in grids]
    if not shared:
        return [normalise_maps(g) for g in grids], (0.0, 1.0)
    low = min(float(g.min()) for g in grids)
    high = max(float(g.max()) for g in grids)
    span = high - low
    return [((g - low) / span if span > 0 else np.zeros_like(g)).astype(np.float32) for g in grids], (low, high)


def photo_maps(explanations, shared=False):
    """Maps on the photo, float [H, W] each, one per prompt of each explanation (in order).

    explanations: one Explanation or a sequence of them.
    shared=False: ``exp.maps`` as they are (each min-max scaled by itself, so each reaches 1).
    shared=True:  recomputed from the raw ``token_maps`` with one min and max over all of them,
                  so only the map with the largest raw value reaches 1.
    NaN where the model never saw the photo.
    """
    exps = [explanations] if hasattr(explanations, "token_maps") else list(explanations)
    if not exps:
        raise ClipvizError("no explanation given")
    if not shared:
        return [m for exp in exps for m in exp.maps]
    scaled, _ = shared_scale([exp.token_maps for exp in exps], shared=True)
    return [m for exp, grid in zip(exps, scaled) for m in map_to_photo(grid, exp.crop_box)]


def peak_xy(photo_map):
    """[x, y] photo pixel of a map's maximum, ignoring NaN; None when nothing was seen."""
    if np.all(np.isnan(photo_map)):
        return None
    y, x = np.unravel_index(np.nanargmax(photo_map), photo_map.shape)
    return [int(x), int(y)]


def map_to_photo(grid_map, box):
    """Upsample patch-grid maps onto the original photo: [g, g] or [P, g, g] -> float32 [P, H, W].

    grid_map: values per patch, row-major like the image ([P, gh, gw] also works); a numpy array
    or a CPU torch tensor. Cell (i, j) covers model-input pixels [j*S/gw, (j+1)*S/gw) ×
    [i*S/gh, (i+1)*S/gh) and its value sits at that patch's centre (align_corners=False
    semantics; beyond the outermost centres the edge value is held, as torch's interpolate does).

    Each photo pixel's centre is mapped into model-input coordinates through the CropBox and the
    grid is sampled there bilinearly, so sub-pixel box offsets are exact. Photo pixels whose
    centre lies outside the crop box were not seen by the model and are NaN.
    """
    if hasattr(grid_map, "detach"):  # a torch tensor (torch itself is not needed here)
        grid_map = grid_map.detach().cpu().numpy()
    grid = np.asarray(grid_map, dtype=np.float32)
    if grid.ndim == 2:
        grid = grid[None]
    if grid.ndim != 3 or 0 in grid.shape:
        raise ClipvizError(f"A patch map must be [g, g] or [P, g, g] and non-empty; got shape {grid.shape}.")
    row_weights, row_seen = _bilinear_weights(box.photo_height, box.top, box.height, grid.shape[1])
    col_weights, col_seen = _bilinear_weights(box.photo_width, box.left, box.width, grid.shape[2])
    with single_threaded_blas():  # small products: BLAS's threads would only wait for PyTorch's
        photo = row_weights @ grid @ col_weights.T  # [H, gh] @ [P, gh, gw] @ [gw, W] -> [P, H, W]
    photo[:, ~row_seen, :] = np.nan
    photo[:, :, ~col_seen] = np.nan
    return photo


def _bilinear_weights(n_pixels, start, length, cells):
    """Interpolation along one photo axis: weights float32 [n_pixels, cells] and seen bool [n_pixels].

    start, length: the crop box along this axis in photo pixels; cells: grid cells across it.
    """
    t = (np.arange(n_pixels) + 0.5 - start) / length  # pixel centre as a fraction across the box
    seen = (t >= 0) & (t < 1)
    g = np.clip(t * cells - 0.5, 0, cells - 1)  # grid coordinate: cell i's centre is at i
    low = np.floor(g).astype(np.int64)
    high = np.minimum(low + 1, cells - 1)
    frac = g - low
    weights = np.zeros((n_pixels, cells), dtype=np.float64)
    pixels = np.arange(n_pixels)
    np.add.at(weights, (pixels, low), 1 - frac)
    np.add.at(weights, (pixels, high), frac)
    return weights.astype(np.float32), seen
