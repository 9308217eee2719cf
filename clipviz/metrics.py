"""Ground-truth metrics for explanation maps, as plain functions (used by ``clipviz.bench``).

Localization (a map against an object's mask, both [H, W]; NaN map pixels were not seen by the
model and are left out of every count):

    pointing game   the peak lies inside the mask (Zhang et al. 2016, without tolerance)
    energy share    Σ_mask m / Σ m of the map's mass (the energy-based pointing game of
                    Score-CAM, Wang et al. 2020); chance for a uniform map = the mask's area share
    mask IoU        |{m > mean(m)} ∩ mask| / |{m > mean(m)} ∪ mask|  (threshold as in Chefer et
                    al. 2021's segmentation test: strictly above the map mean)

Faithfulness (Petsiuk et al. 2018, RISE): patches are removed (deletion) or added (insertion) in
the map's order in k steps; the score curve s_0 … s_k is normalised to
n_i = (s_i − s_empty) / (s_full − s_empty), clipped to [0, 1], and its area over the fraction of
patches changed is reported (deletion: lower is better; insertion: higher is better).

Sanity (Adebayo et al. 2018): Spearman rank correlation between two maps.
"""

import numpy as np
import torch

PEAK_TOLERANCE = 1e-6  # map values this close to the maximum count as the peak (maps are in [0, 1])


# ------------------------------------------------------------------------------- localization

def seen_pixels(photo_map, mask):
    """The pixels the model saw: (map values [M], mask values bool [M]) where the map is not NaN."""
    photo_map = np.asarray(photo_map, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if photo_map.shape != mask.shape:
        raise ValueError(f"map {photo_map.shape} and mask {mask.shape} differ in shape")
    seen = ~np.isnan(photo_map)
    return photo_map[seen], mask[seen]


def pointing_game(photo_map, mask):
    """Share of the map's peak pixels that lie inside the mask: 1.0 / 0.0 for a single peak.

    Every pixel within PEAK_TOLERANCE of the maximum is a peak pixel (bilinear upsampling of a patch
    grid makes a small plateau around a patch centre), so ties get partial credit and a constant
    map scores the mask's area share, the chance level.
    """
    values, inside = seen_pixels(photo_map, mask)
    peak = values >= values.max() - PEAK_TOLERANCE
    return float(inside[peak].mean())


def energy_share(photo_map, mask):
    """Σ_mask m / Σ m over seen pixels, for a map with m ≥ 0. An all-zero map counts as uniform
    (its limit), i.e. the mask's area share."""
    values, inside = seen_pixels(photo_map, mask)
    if np.any(values < 0):
        raise ValueError("energy share needs a non-negative map (normalise it to [0, 1] first)")
    total = values.sum()
    if total == 0:
        return float(inside.mean())
    return float(values[inside].sum() / total)


def mask_iou(photo_map, mask):
    """IoU of {m > mean(m)} with the mask, over seen pixels (0.0 when both are empty)."""
    values, inside = seen_pixels(photo_map, mask)
    hot = values > values.mean()
    union = np.count_nonzero(hot | inside)
    return float(np.count_nonzero(hot & inside) / union) if union else 0.0


def area_share(photo_map, mask):
    """Fraction of the seen pixels inside the mask: the chance level of pointing and energy."""
    _, inside = seen_pixels(photo_map, mask)
    return float(inside.mean())


# ------------------------------------------------------------------------------- rank correlation

def average_ranks(values):
    """Ranks 0 … n-1 of a 1-D array, tied values sharing their mean rank: [n] → float [n]."""
    _, inverse, counts = np.unique(np.asarray(values).ravel(), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2.0)[inverse.ravel()]


def spearman(a, b):
    """Spearman rank correlation of two maps of equal size (flattened); NaN if either is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.shape != rb.shape:
        raise ValueError(f"maps of different sizes: {np.shape(a)} vs {np.shape(b)}")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


# ------------------------------------------------------------------------------- chance maps

def random_map(patch_grid, rng):
    """Uniform random values per patch: [g, g] (the chance row 'random map')."""
    return rng.random((patch_grid, patch_grid))


def centre_gaussian_map(patch_grid, sigma_fraction=0.25):
    """exp(−d² / 2σ²) with d the distance of each patch centre from the image centre and
    σ = sigma_fraction · g patches: [g, g] (the chance row 'centre Gaussian', a centre bias)."""
    centres = np.arange(patch_grid) + 0.5 - patch_grid / 2.0
    squared = centres[:, None] ** 2 + centres[None, :] ** 2
    return np.exp(-squared / (2.0 * (sigma_fraction * patch_grid) ** 2))


# ------------------------------------------------------------------------------- deletion / insertion

def patch_order(token_map):
    """Patch indices (row-major over [g, g]) from most to least relevant; ties keep index order."""
    flat = np.asarray(token_map, dtype=np.float64).ravel()
    return np.argsort(-flat, kind="stable")


def step_counts(n_patches, steps):
    """How many patches are changed after each of the k steps: int [k + 1], 0 first, all last."""
    steps = max(1, min(int(steps), n_patches))
    return np.round(np.linspace(0, n_patches, steps + 1)).astype(int)


def patch_edges(size, patch_grid):
    """Pixel edges of the g patch rows (and columns) of an S-pixel side: int [g + 1]."""
    return np.round(np.linspace(0, size, patch_grid + 1)).astype(int)


def reveal(start, fill, order, counts, patch_grid):
    """Images that take the first counts[i] patches (in ``order``) from ``fill``, the rest from
    ``start``: start, fill [C, S, S] → [len(counts), C, S, S].

    Deletion: reveal(image, baseline, ...); insertion: reveal(baseline, image, ...).
    """
    edges = patch_edges(start.shape[-1], patch_grid)
    rows, cols = np.divmod(np.asarray(order), patch_grid)
    taken = torch.zeros(len(order) + 1, *start.shape[-2:], dtype=torch.bool)  # patches 0..j-1 taken
    for j, (r, c) in enumerate(zip(rows, cols)):
        taken[j + 1] = taken[j]
        taken[j + 1, edges[r]:edges[r + 1], edges[c]:edges[c + 1]] = True
    chosen = taken[torch.as_tensor(counts)].unsqueeze(1).to(start.device)  # [k+1, 1, S, S]
    return torch.where(chosen, fill.unsqueeze(0), start.unsqueeze(0))


def channel_mean_image(pixels):
    """Each channel filled with its own mean: [C, S, S] → [C, S, S] (the deletion baseline)."""
    return pixels.mean(dim=(-2, -1), keepdim=True).expand_as(pixels).clone()


def gaussian_blur(pixels, sigma):
    """Separable Gaussian blur, reflect padding, kernel radius ⌈3σ⌉: [C, S, S] → [C, S, S]
    (the insertion baseline)."""
    radius = min(int(np.ceil(3 * sigma)), pixels.shape[-1] - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(pixels)
    channels = pixels.shape[0]
    x = pixels.unsqueeze(0)
    x = torch.nn.functional.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    x = torch.nn.functional.pad(x, (0, 0, radius, radius), mode="reflect")
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return x[0]


def normalised_curve(scores, full, empty, min_gap=0.0):
    """n_i = clip((s_i − empty) / (full − empty), 0, 1): [k+1] → [k+1]; all NaN when
    full − empty ≤ min_gap (the image scores no higher than its baseline: nothing to delete or insert).

    Clipping keeps one scene from dominating a mean: a half-deleted image can score far above the
    full one (or below the baseline), and a small gap would blow that up without bound.
    """
    scores = np.asarray(scores, dtype=np.float64)
    gap = full - empty
    if not gap > min_gap:
        return np.full_like(scores, np.nan)
    return np.clip((scores - empty) / gap, 0.0, 1.0)


def curve_auc(curve, counts):
    """Trapezoidal area under a curve over the fraction of patches changed (counts / counts[-1])."""
    fractions = np.asarray(counts, dtype=np.float64) / counts[-1]
    curve = np.asarray(curve, dtype=np.float64)
    return float(np.sum((curve[1:] + curve[:-1]) * np.diff(fractions)) / 2.0)


def deletion_insertion(score_fn, pixels, token_maps, steps, deletion_baseline, insertion_baseline,
                       min_gap=0.0):
    """Deletion and insertion curves and AUCs for R maps of one image, scored in one call.

    score_fn: images [M, C, S, S] → scores [M] (e.g. the cosine with the queried prompt)
    pixels: the model input [C, S, S]; token_maps: [R, g, g]; steps: k
    The three end images (the input, the deletion baseline, the insertion baseline) are shared by
    every map and scored once. Returns one dict per map: deletion and insertion (AUCs),
    deletion_curve and insertion_curve ([k + 1] normalised scores), counts ([k + 1]).
    """
    token_maps = np.asarray(token_maps, dtype=np.float64)
    patch_grid = token_maps.shape[-1]
    counts = step_counts(patch_grid * patch_grid, steps)
    inner = counts[1:-1]  # the steps that differ between maps
    images = [torch.stack([pixels, deletion_baseline, insertion_baseline])]
    for token_map in token_maps:
        order = patch_order(token_map)
        images.append(reveal(pixels, deletion_baseline, order, inner, patch_grid))
        images.append(reveal(insertion_baseline, pixels, order, inner, patch_grid))
    scores = np.asarray(score_fn(torch.cat(images)), dtype=np.float64)
    full, deleted_all, blurred = scores[:3]
    results, k = [], len(inner)
    for r in range(len(token_maps)):
        offset = 3 + 2 * k * r
        deleted = np.concatenate([[full], scores[offset:offset + k], [deleted_all]])
        inserted = np.concatenate([[blurred], scores[offset + k:offset + 2 * k], [full]])
        deletion_curve = normalised_curve(deleted, full=full, empty=deleted_all, min_gap=min_gap)
        insertion_curve = normalised_curve(inserted, full=full, empty=blurred, min_gap=min_gap)
        results.append({"deletion": curve_auc(deletion_curve, counts),
                        "insertion": curve_auc(insertion_curve, counts),
                        "deletion_curve": deletion_curve, "insertion_curve": insertion_curve,
                        "counts": counts})
    return results
