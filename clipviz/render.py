"""Pictures of explanations: overlays, colour scales, coloured text tokens, figures, export.

    rgb = overlay(photo, heat)                    # uint8 [H, W, 3]; NaN pixels stay the photo
    maps = photo_maps([exp_a, exp_b], shared=True)  # one colour scale for every map
    fig = explanation_figure(exp, width="single") # matplotlib Figure (no pyplot)
    save_figure(fig, "out.pdf")                   # .png / .pdf / .svg

Colour of a value v in [0, 1], as matplotlib draws it with a 256-entry colormap:

    k = min(floor(256 · v), 255)        colour(v) = 255 · table[k]      (table: [256, 3] in [0, 1])
    overlay = floor((1 − α) · photo + α · colour(v) + 0.5)   where the model saw the pixel

The tables for jet (analytic, from matplotlib's segment data), viridis, inferno and turbo are built
in, so an overlay never imports matplotlib; any other matplotlib colormap name is looked up lazily.

Scaling: ``Explanation.maps`` are min-max scaled per map, so every map reaches 1 ("per-map
min–max"); ``shared=True`` scales a set of maps by one min and max over all of them ("shared
scale"), so only the strongest reaches 1 and maps can be compared. Every figure names its scaling
in the colorbar label (or in a caption when there is no colorbar).

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never pyplot, so making one
changes no backend and leaks no open figure. Layout is computed in inches from measured text, so
titles and token strips never overlap at single-column (3.5 in) or double-column (7.16 in) width.
"""

import base64
import html
import math
import os
import tempfile
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import ClipvizError

FIGURE_FORMATS = (".png", ".pdf", ".svg")
OVERLAY_FORMATS = (".png", ".jpg", ".jpeg")
WIDTHS = {"single": 3.5, "double": 7.16}  # inches: one and two columns of a two-column paper
PER_MAP = "per-map min–max"
SHARED = "shared scale"
BUILTIN_CMAPS = ("jet", "viridis", "inferno", "turbo")

# --- colour tables ------------------------------------------------------------------------------

# matplotlib's jet: (x, y) knots of a piecewise-linear curve per channel
_JET = {"red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
        "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
        "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0))}

# viridis, inferno, turbo from matplotlib 3.11 rounded to uint8: [3, 256, 3] row-to-row differences
# (int8), zlib, base64. Made by: np.diff(round(255 · cmap(linspace(0, 1, 256))[:, :3]), prepend=0).
_TABLES = (
    "eNqNlEtyHDEMQ0mqnWSdk2SfbY6Q+59kWgwBkpLGHrtSo0I9QOyPNFT/0b+iFr+lAlU1C5VS+Mx3WJxwzHboAFnhaRcDlFA2"
    "CyQLvHhNSdw54Qyf2F7OvtN129cF28qLms+u3SCfFfjHO1QoK3Q5ps5Qz1nJ5FTM1o52XtuQ+12wOTe4uJUhYQ15aefJoxjh"
    "WIAwk7QzaqBRz5rWqtkF4LxqMncmrGQBLqzE69qCfLqwQAZACaFKVrIRQmPy0to+Q8+h3NjxhKgil247eEIqsUwA1GTcZ9gJ"
    "eDXLJHgdsGbl4wmaLM08ka2mmeeByFzayn/ZCv05zH5o6HO5ytYxPUJ/Zbuv+F80+L58l/nZfruse/ULwK7p1CcbMJNXiOSV"
    "lXPKws6vAfUHA0J37uwdHk/LoauVZH1Xrdvh7AIbh108XHNqZI0Xv9OLQNWL9oJtVsAbVC+ljWHQAbDx6+dvGz90fP8wvmFY"
    "wltaCTBYQGjcMGHwWaEFgxCK96Tlukq56jwZUHwapL8XrXHUvdVLxwyYNudwh07yDd4AdbsjcSR3/FOuBQK9RQEaFt1yG/7T"
    "aZEE41MWyQ1VKMcj9CJQ70sA4ILHJbBUcg4UBMzghFjQ5Te/V1wEtdfqSLBQISzFiw+22JhL8foLshkLtmJ9VDm1xu3NLtwh"
    "Ydjscq8xT+thoci9k4Zif8cTOhtCyTIneQp1gcwnbXDA/QytnpzvOOd+8XMRD4CmfZTqP9XGX0g=")


@lru_cache(maxsize=None)
def colormap_table(cmap="jet"):
    """The colormap as float64 [256, 3] in [0, 1]: entry k is the colour of values in [k/256, (k+1)/256).

    jet, viridis, inferno and turbo are built in; any other name is read from matplotlib.
    """
    if not isinstance(cmap, str):
        raise ClipvizError(f"cmap must be a colormap name such as 'jet', got {type(cmap).__name__}")
    if cmap == "jet":
        x = np.linspace(0.0, 1.0, 256)
        return np.stack([np.interp(x, *zip(*_JET[channel])) for channel in ("red", "green", "blue")], axis=1)
    if cmap in BUILTIN_CMAPS:
        steps = np.frombuffer(zlib.decompress(base64.b64decode(_TABLES)), np.int8).reshape(3, 256, 3)
        return np.cumsum(steps[BUILTIN_CMAPS.index(cmap) - 1].astype(np.int16), axis=0) / 255.0
    import matplotlib
    try:
        table = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3]
    except KeyError:
        raise ClipvizError(f"unknown colormap {cmap!r}: use one of {', '.join(BUILTIN_CMAPS)} "
                           "or any matplotlib colormap name (e.g. 'magma', 'Reds')") from None
    return table.astype(np.float64)


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


# --- overlays -----------------------------------------------------------------------------------

# zlib level 1 instead of PIL's 6: PNG encoding was half the CLI's CPU time; files about 10% larger
PNG_COMPRESS_LEVEL = 1

def overlay(photo, heatmap, cmap="jet", alpha=0.5):
    """Blend a heatmap over the photo at the photo's full resolution → uint8 [H, W, 3].

    photo:   uint8 [H, W, 3] (or [H, W] grey, [H, W, 4] whose alpha is ignored)
    heatmap: float [H, W] in [0, 1] (values outside are clipped); NaN = the model never saw the
             pixel, which stays exactly the photo
    out = floor((1 − alpha) · photo + alpha · colour(heatmap) + 0.5)
    """
    photo = _rgb(photo)
    heat = np.asarray(heatmap, dtype=np.float64)
    if heat.shape != photo.shape[:2]:
        raise ClipvizError(f"the heatmap is {heat.shape} but the photo is {photo.shape[:2]}: map patch grids "
                           "onto the photo first with clipviz.map_to_photo(grid, crop_box)")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ClipvizError(f"alpha must be between 0 (photo only) and 1 (heatmap only), got {alpha}")
    blended = blend_table(255.0 * colormap_table(cmap), alpha)  # [256 levels, 3, 256 photo values]
    channels = np.arange(3)
    out = photo.copy()
    rows = max(1, (1 << 20) // max(1, photo.shape[1]))  # about a million pixels at a time
    for top in range(0, photo.shape[0], rows):
        block = heat[top:top + rows]
        seen = ~np.isnan(block)
        out[top:top + rows][seen] = blended[colour_levels(block[seen])[:, None], channels, photo[top:top + rows][seen]]
    return out


def blend_table(table, alpha):
    """Every blend the overlay can produce, looked up instead of computed per pixel.

    table: float [256, 3] colours in [0, 255]. Returns uint8 [256, 3, 256]:
    out[k, c, p] = floor((1 − alpha) · p + alpha · table[k, c] + 0.5), the same float64 expression
    as a per-pixel blend, so the lookup is bit-identical to it (and 5-10× faster on a photo).
    """
    photo_values = np.arange(256, dtype=np.float64)
    blend = (1.0 - alpha) * photo_values[None, None, :] + alpha * table[:, :, None]
    return np.clip(np.floor(blend + 0.5), 0, 255).astype(np.uint8)


def save_overlay(path, photo, heatmap, cmap="jet", alpha=0.5, *, protect=()):
    """Write ``overlay(photo, heatmap)`` as a .png (or .jpg) with PIL; returns the Path written.

    protect: paths never to overwrite (the input photo).
    """
    from PIL import Image
    path = _target(path, OVERLAY_FORMATS, protect)
    image = Image.fromarray(overlay(photo, heatmap, cmap=cmap, alpha=alpha))
    options = {"format": "PNG", "compress_level": PNG_COMPRESS_LEVEL} if path.suffix.lower() == ".png" else {"format": "JPEG"}
    return _write_atomically(path, lambda handle: image.save(handle, **options))


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


# --- scaling ------------------------------------------------------------------------------------

def scaling_label(shared):
    return SHARED if shared else PER_MAP


def scale_grids(grids, shared=False):
    """Patch maps → [0, 1]: a list of float [K, g, g] → (list of float32 [K, g, g], (low, high)).

    Per map (shared=False): each map by its own min and max (low, high = 0, 1). Shared: every map
    of every array by one min and max over all of them, returned as (low, high) in raw units.
    A constant map (or set) becomes all zeros.
    """
    grids = [np.asarray(g, dtype=np.float64) for g in grids]
    if not shared:
        from .explanation import normalise_maps
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
    exps = _explanations(explanations)
    if not shared:
        return [m for exp in exps for m in exp.maps]
    from .preprocess import map_to_photo
    scaled, _ = scale_grids([exp.token_maps for exp in exps], shared=True)
    return [m for exp, grid in zip(exps, scaled) for m in map_to_photo(grid, exp.crop_box)]


def _explanations(explanations):
    exps = [explanations] if hasattr(explanations, "token_maps") else list(explanations)
    if not exps:
        raise ClipvizError("no explanation given")
    return exps


# --- text tokens --------------------------------------------------------------------------------

TOKEN_SCALE = "token weight ÷ max"


def token_weights(weights):
    """Relevance per token → [0, 1] by dividing by the largest (negatives clip to 0), float [n]."""
    weights = np.nan_to_num(np.asarray(weights, dtype=np.float64).reshape(-1))
    top = weights.max(initial=0.0)
    return np.clip(weights / top, 0.0, 1.0) if top > 0 else np.zeros_like(weights)


def token_colours(weights, cmap="jet"):
    """Background uint8 [n, 3] and ink (black or white, whichever reads better) uint8 [n, 3]."""
    background = np.floor(colorize(token_weights(weights), cmap) + 0.5).astype(np.uint8)
    luminance = background @ np.array([0.2126, 0.7152, 0.0722])  # Rec. 709 weights
    ink = np.where((luminance > 140)[:, None], 0, 255).astype(np.uint8).repeat(3, axis=1)
    return background, ink


def text_tokens_ansi(tokens, weights, cmap="jet"):
    """The tokens with 24-bit background colours for a terminal: one colour code per token."""
    tokens = _check_tokens(tokens, weights)
    background, ink = token_colours(weights, cmap)
    return " ".join(f"\x1b[38;2;{i[0]};{i[1]};{i[2]};48;2;{b[0]};{b[1]};{b[2]}m{token}\x1b[0m"
                    for token, b, i in zip(tokens, background, ink))


def text_tokens_html(tokens, weights, cmap="jet"):
    """The tokens as HTML spans with background colours (text escaped); hover shows the raw weight."""
    tokens = _check_tokens(tokens, weights)
    background, ink = token_colours(weights, cmap)
    spans = [f'<span style="background:#{b[0]:02x}{b[1]:02x}{b[2]:02x};color:#{i[0]:02x}{i[1]:02x}{i[2]:02x};'
             f'padding:1px 3px;margin:1px;border-radius:2px" title="{float(w):.4g}">{html.escape(token)}</span>'
             for token, b, i, w in zip(tokens, background, ink, np.asarray(weights).reshape(-1))]
    return f'<div class="clipviz-tokens" style="font-family:monospace;line-height:1.8">{"".join(spans)}</div>'


def _check_tokens(tokens, weights):
    tokens = [str(t) for t in tokens]
    if len(tokens) != np.asarray(weights).size:
        raise ClipvizError(f"{len(tokens)} tokens but {np.asarray(weights).size} weights: give one weight per token")
    return tokens


# --- figures ------------------------------------------------------------------------------------

_PANEL_DPI = 300      # panel images are downsized to this many pixels per inch of panel (small PDFs)
_GAP = 0.06           # inches between panels
_MARGIN = 0.04        # inches around the figure
_BAR = 0.07           # colorbar thickness in inches (a horizontal bar under the panels)
_SEEN_NOTE = "dashed box: the square the model saw; pixels outside it are not coloured"


def explanation_figure(exp, columns=None, width="single", show_text=True, shared=False, cmap="jet",
                       alpha=0.5, colorbar=True, fontsize=None):
    """The photo and one overlay per prompt, titled with the prompt, cosine score and probability.

    width: "single" (3.5 in), "double" (7.16 in) or inches. columns: panels per row (default: as many
    as fit at about 1.2 in each). show_text: a strip of coloured prompt tokens under each overlay when
    the explanation has text relevance. shared: one colour scale over all prompts' maps.
    Maps are redrawn from ``token_maps`` at the panel's resolution.
    """
    width_in, fontsize = _width(width), _fontsize(fontsize, width)
    columns = _columns(columns, 1 + len(exp.prompts), width_in)
    panel_w = _panel_width(width_in, columns)
    scaled, (low, high) = scale_grids([exp.token_maps], shared)
    photo, overlays, box = _panel_images(exp, scaled[0], panel_w, cmap, alpha)
    cells = [dict(image=photo, title=["photo", f"method: {exp.method}"], box=box)]
    texts = show_text and exp.text_relevance is not None
    for t, image in enumerate(overlays):
        tokens = _token_cell(exp.text_tokens[t], exp.text_relevance[t], cmap) if texts else None
        cells.append(dict(image=image, title=[_prompt_title(exp, t), _score_line(exp, t)], tokens=tokens))
    captions = _captions(box) + ([f"tokens: {TOKEN_SCALE} per prompt"] if texts else [])
    return _draw(cells, columns, width_in, panel_w, fontsize, _key(cmap, shared, low, high, colorbar), captions)


def comparison_grid(explanations_by_method, width="double", shared=False, cmap="jet", alpha=0.5,
                    colorbar=True, fontsize=None):
    """Prompts × methods: one row per prompt (the photo, titled with prompt and scores, first), one
    column per method. shared: one colour scale per method across its prompts (raw values of
    different methods are in different units, so they are never put on one scale).
    """
    if not explanations_by_method:
        raise ClipvizError("comparison_grid needs at least one method: {'relevance': exp, ...}")
    names, exps = list(explanations_by_method), list(explanations_by_method.values())
    first = exps[0]
    for name, exp in zip(names, exps):
        if exp.photo.shape != first.photo.shape or list(exp.prompts) != list(first.prompts):
            raise ClipvizError(f"method {name!r} explains a different photo or prompts: compare explanations "
                               "of one photo with the same prompts")
    width_in, fontsize = _width(width), _fontsize(fontsize, width)
    columns = 1 + len(exps)
    panel_w = _panel_width(width_in, columns)
    same_scores = all(np.allclose(e.scores, first.scores) and np.allclose(e.probs, first.probs) for e in exps)
    overlays = []
    for exp in exps:
        scaled, _ = scale_grids([exp.token_maps], shared)
        photo, images, box = _panel_images(exp, scaled[0], panel_w, cmap, alpha)
        overlays.append(images)
    cells = []
    for t in range(len(first.prompts)):
        title = [_prompt_title(first, t)] + ([_score_line(first, t)] if same_scores else [])
        cells.append(dict(image=photo, title=title, box=box))
        for name, exp, images in zip(names, exps, overlays):
            title = ([name] if t == 0 else []) + ([] if same_scores else [_score_line(exp, t)])
            cells.append(dict(image=images[t], title=title))
    label = f"{SHARED} within each method" if shared else PER_MAP
    return _draw(cells, columns, width_in, panel_w, fontsize,
                 _key(cmap, False, 0.0, 1.0, colorbar, label=label), _captions(box))


def layer_strip(exp, prompt=0, width="double", columns=None, shared=False, cmap="jet", alpha=0.5,
                colorbar=True, fontsize=None):
    """One map per block (exp.layer_maps [T, L', g, g]) over the square the model saw, titled with
    the block index. shared: one scale over the blocks, so blocks that contribute little look faint.
    """
    if exp.layer_maps is None:
        raise ClipvizError(f"this explanation ({exp.method!r}) has no per-block maps: explain with "
                           "method='relevance' or 'rollout'")
    indices = exp.layer_indices or tuple(range(exp.layer_maps.shape[1]))
    titles = [f"block {index}" for index in indices]
    return _stack_figure(exp, prompt, exp.layer_maps, titles, width, columns, shared, cmap, alpha, colorbar, fontsize)


def head_grid(exp, prompt=0, width="double", columns=None, shared=False, cmap="jet", alpha=0.5,
              colorbar=True, fontsize=None):
    """One map per attention head of the last block (exp.head_maps [T, H, g, g]) over the square the model saw."""
    if exp.head_maps is None:
        raise ClipvizError(f"this explanation ({exp.method!r}) has no per-head maps: explain with "
                           "method='relevance' or 'attention'")
    block = f"block {exp.layer_indices[-1]}" if exp.layer_indices else "last block"
    titles = [f"head {h}" for h in range(exp.head_maps.shape[1])]
    return _stack_figure(exp, prompt, exp.head_maps, titles, width, columns, shared, cmap, alpha, colorbar,
                         fontsize, f"heads of {block}")


def _stack_figure(exp, prompt, stack, titles, width, columns, shared, cmap, alpha, colorbar, fontsize, what=None):
    """A header (prompt, scores, method), the photo, then one overlay per map of stack[prompt] [K, g, g];
    every panel shows only the square the model saw, so small panels stay readable."""
    if not isinstance(prompt, int) or not -len(exp.prompts) <= prompt < len(exp.prompts):
        raise ClipvizError(f"prompt index {prompt!r} is out of range: this explanation has {len(exp.prompts)} prompts")
    width_in, fontsize = _width(width), _fontsize(fontsize, width)
    columns = _columns(columns, 1 + len(titles), width_in, panel=0.75)
    panel_w = _panel_width(width_in, columns)
    scaled, (low, high) = scale_grids([stack[prompt]], shared)
    photo, overlays, _ = _panel_images(exp, scaled[0], panel_w, cmap, alpha, crop=True)
    cells = [dict(image=photo, title=["photo"])] + [dict(image=i, title=[t]) for i, t in zip(overlays, titles)]
    header = [f"{_prompt_title(exp, prompt)} · {_score_line(exp, prompt)} · {exp.method}" + (f" · {what}" if what else "")]
    return _draw(cells, columns, width_in, panel_w, fontsize, _key(cmap, shared, low, high, colorbar),
                 ["panels show the square the model saw"], header=header)


def _width(width):
    if isinstance(width, str) and width in WIDTHS:
        return WIDTHS[width]
    if isinstance(width, (int, float)) and not isinstance(width, bool) and 1.0 <= width <= 40.0:
        return float(width)
    raise ClipvizError(f"width must be 'single' (3.5 in), 'double' (7.16 in) or inches between 1 and 40, got {width!r}")


def _fontsize(fontsize, width):
    return float(fontsize) if fontsize else 7.0 if _width(width) < 5 else 8.0


def _columns(columns, count, width_in, panel=1.2):
    if columns is None:  # as many as fit at ``panel`` inches, then balanced: 6 panels in 3 + 3, not 5 + 1
        fit = max(1, min(count, int((width_in - 2 * _MARGIN + _GAP) // (panel + _GAP))))
        return math.ceil(count / math.ceil(count / fit))
    if not isinstance(columns, int) or isinstance(columns, bool) or columns < 1:
        raise ClipvizError(f"columns must be a positive whole number, got {columns!r}")
    return min(columns, count)


def _panel_width(width_in, columns):
    room = width_in - 2 * _MARGIN - (columns - 1) * _GAP
    if room / columns < 0.3:
        raise ClipvizError(f"{columns} columns do not fit in {width_in} in: use fewer columns or a wider figure")
    return room / columns


def _panel_images(exp, grids, panel_w, cmap, alpha, crop=False):
    """The photo and overlays of grids [K, g, g] (already in [0, 1]), sized for panels panel_w inches wide.

    crop: keep only the square the model saw. Returns (photo uint8, [K overlays], the crop box to
    outline on the photo — None when cropping or when it covers the whole photo).
    """
    from PIL import Image
    from .preprocess import CropBox, map_to_photo
    box, (height, width) = exp.crop_box, exp.photo.shape[:2]
    target = int(round(panel_w * _PANEL_DPI * (width / box.width if crop else 1.0)))
    photo = exp.photo
    if width > target:  # downsize first: a 12-megapixel photo in every panel makes huge PDFs
        small_w, small_h = target, max(1, int(round(height * target / width)))
        photo = np.asarray(Image.fromarray(photo).resize((small_w, small_h), Image.Resampling.BOX))
        sx, sy = small_w / width, small_h / height
        box = CropBox(box.left * sx, box.top * sy, box.width * sx, box.height * sy, box.size, small_w, small_h)
    heat = map_to_photo(grids, box)  # [K, h, w], NaN where unseen
    overlays = [overlay(photo, h, cmap=cmap, alpha=alpha) for h in heat]
    if crop:
        rows = np.flatnonzero(~np.isnan(heat[0]).all(axis=1))
        cols = np.flatnonzero(~np.isnan(heat[0]).all(axis=0))
        seen = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        return photo[seen], [o[seen] for o in overlays], None
    covers = not np.isnan(heat[0]).any()
    return photo, overlays, None if covers else box


def _captions(box):
    return [_SEEN_NOTE] if box is not None else []


def _prompt_title(exp, t):
    prompt = f"“{exp.prompts[t]}”"
    if exp.against:
        prompt += f" vs. “{exp.against[t]}”"
    return prompt


def _score_line(exp, t):
    return f"cos {float(exp.scores[t]):.3f} · p {float(exp.probs[t]):.2f}"


def _token_cell(tokens, weights, cmap):
    background, ink = token_colours(weights, cmap)
    return list(zip([str(t) for t in tokens], background / 255.0, ink / 255.0))


def _key(cmap, shared, low, high, colorbar, label=None):
    return dict(cmap=cmap, low=low, high=high, label=f"relevance ({label or scaling_label(shared)})", show=colorbar)


def _draw(cells, columns, width_in, panel_w, fontsize, key, captions, header=()):
    """Lay the cells out in rows of ``columns`` (inches, from measured text) and draw them.

    cell: dict(image=uint8 [h, w, 3], title=[lines], tokens=[(text, rgb, ink)] or None, box=CropBox or None)
    key: the colour scale: a horizontal colorbar under the panels, labelled with the scaling, or
         (key["show"] False) a caption line naming the scaling. captions: lines under everything;
    header: lines above everything. Both wrap to the figure's width.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.font_manager import FontProperties

    fig = Figure(figsize=(width_in, 1.0))
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    font = FontProperties(size=fontsize)
    token_font = FontProperties(size=fontsize - 1)

    def text_width(text, prop=font):
        return renderer.get_text_width_height_descent(text, prop, ismath=False)[0] / fig.dpi

    line_h = fontsize * 1.3 / 72.0
    token_h = (fontsize - 1) * 1.6 / 72.0
    pad = (fontsize - 1) * 0.25 / 72.0
    captions = ([] if key["show"] else [f"colours: {key['label']}"]) + list(captions)
    captions = [piece for line in captions for piece in _wrap(line, width_in - 2 * _MARGIN, text_width, max_lines=4)]
    header = [piece for line in header for piece in _wrap(line, width_in - 2 * _MARGIN, text_width, max_lines=4)]
    ticks = _tick_labels(key["low"], key["high"])
    bar_x = _MARGIN + max(0.05, text_width(ticks[0], token_font) / 2)  # room for the first tick label
    bar_w = min(2.0, 0.45 * (width_in - 2 * _MARGIN))
    label_x = bar_x + bar_w + max(0.1, text_width(ticks[-1], token_font) / 2 + 0.05)
    label_beside = label_x + text_width(key["label"]) <= width_in - _MARGIN  # else under the ticks
    bar_h = (_BAR + (fontsize - 1) * 1.5 / 72.0 + _GAP + (0 if label_beside else line_h)) if key["show"] else 0.0

    # measure: wrapped titles, token lines, image heights — per cell, then per row
    layout = []
    for cell in cells:
        lines = [piece for line in cell["title"] for piece in _wrap(line, panel_w, text_width, max_lines=3)]
        flows = _flow([text_width(text, token_font) + 2 * pad for text, _, _ in cell.get("tokens") or []], panel_w)
        image_h = panel_w * cell["image"].shape[0] / cell["image"].shape[1]
        layout.append((lines, flows, image_h))
    rows = [layout[i:i + columns] for i in range(0, len(layout), columns)]
    row_sizes = [(max(len(c[0]) for c in row) * line_h, max(c[2] for c in row),
                  max((max((f[0] for f in c[1]), default=-1) + 1) * (token_h + pad) for c in row)) for row in rows]
    height = 2 * _MARGIN + sum(t + i + k + _GAP for t, i, k in row_sizes) + bar_h + (len(captions) + len(header)) * line_h
    fig.set_size_inches(width_in, height)

    def place(x, y, w, h):  # inches from the top-left → figure fraction rectangle
        return [x / width_in, 1 - (y + h) / height, w / width_in, h / height]

    for k, line in enumerate(header):
        fig.text(0.5, 1 - (_MARGIN + (k + 0.5) * line_h) / height, line, ha="center", va="center", fontproperties=font)
    y = _MARGIN + len(header) * line_h
    for r, (row, (title_h, image_h, tokens_h)) in enumerate(zip(rows, row_sizes)):
        for c, (lines, flows, cell_h) in enumerate(row):
            cell = cells[r * columns + c]
            x = _MARGIN + c * (panel_w + _GAP)
            for k, line in enumerate(lines):  # titles sit right above the image
                fig.text((x + panel_w / 2) / width_in, 1 - (y + title_h - (len(lines) - k - 0.5) * line_h) / height,
                         line, ha="center", va="center", fontproperties=font)
            top = y + title_h + (image_h - cell_h) / 2
            ax = fig.add_axes(place(x, top, panel_w, cell_h))
            ax.imshow(cell["image"], interpolation="antialiased")
            ax.set_axis_off()
            if cell.get("box") is not None:
                _draw_box(ax, cell["box"])
            for (line, offset, w), (text, rgb, ink) in zip(flows, cell.get("tokens") or []):
                ty = y + title_h + image_h + pad + line * (token_h + pad)
                fig.patches.append(_rectangle(place(x + offset, ty, w, token_h), rgb, fig))
                fig.text((x + offset + w / 2) / width_in, 1 - (ty + token_h / 2) / height, text, color=ink,
                         ha="center", va="center", fontproperties=token_font)
        y += title_h + image_h + tokens_h + _GAP
    if key["show"]:
        _colorbar(fig, place(bar_x, y, bar_w, _BAR), key, ticks, fontsize)
        x, label_y = (label_x, y + _BAR / 2) if label_beside else (_MARGIN, y + bar_h - _GAP - line_h / 2)
        fig.text(x / width_in, 1 - label_y / height, key["label"], ha="left", va="center", fontproperties=font)
        y += bar_h
    for k, line in enumerate(captions):
        fig.text(_MARGIN / width_in, 1 - (y + (k + 0.5) * line_h) / height, line, ha="left", va="center",
                 fontproperties=font, color="0.3")
    return fig


def _wrap(text, room, text_width, max_lines=3):
    """Greedy word wrap to ``room`` inches (long words are cut); at most max_lines, the last one ends in …"""
    lines, current = [], ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if text_width(candidate) <= room or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
        while text_width(current) > room and len(current) > 1:  # a word wider than the panel
            cut = max(1, len(current) - 1)
            while cut > 1 and text_width(current[:cut]) > room:
                cut -= 1
            lines.append(current[:cut])
            current = current[cut:]
    lines.append(current)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and text_width(last + "…") > room:
            last = last[:-1]
        lines = lines[:max_lines - 1] + [last + "…"]
    return lines


def _flow(widths, room):
    """Token boxes of these widths left to right, wrapping at ``room``: [(line, x offset, width)]."""
    placed, line, x = [], 0, 0.0
    for w in widths:
        if x > 0 and x + w > room:
            line, x = line + 1, 0.0
        placed.append((line, x, min(w, room)))
        x += w + 0.02
    return placed


def _rectangle(rect, rgb, fig):
    from matplotlib.patches import Rectangle
    return Rectangle(rect[:2], rect[2], rect[3], transform=fig.transFigure, facecolor=rgb, edgecolor="none")


def _draw_box(ax, box):
    from matplotlib.patches import Rectangle
    # imshow puts pixel centres at integers, so the photo's edge is at -0.5
    ax.add_patch(Rectangle((box.left - 0.5, box.top - 0.5), box.width, box.height, fill=False,
                           edgecolor="white", linestyle=(0, (3, 2)), linewidth=0.8))


def _colorbar(fig, rect, key, ticks, fontsize):
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize
    cax = fig.add_axes(rect)
    mappable = ScalarMappable(norm=Normalize(key["low"], key["high"]), cmap=ListedColormap(colormap_table(key["cmap"])))
    bar = fig.colorbar(mappable, cax=cax, orientation="horizontal")
    bar.set_ticks(np.linspace(key["low"], key["high"], len(ticks)), labels=ticks)
    bar.ax.tick_params(labelsize=fontsize - 1, length=2, pad=1, width=0.5)
    bar.outline.set_linewidth(0.5)


def _tick_labels(low, high):
    """Three colorbar labels in one notation: 0, 0.5, 1 — or 1.6e-05, 1.4e-04, 2.7e-04 for tiny raw values."""
    values = np.linspace(low, high, 3)
    largest = max(abs(low), abs(high))
    if largest and not 1e-2 <= largest < 1e4:
        return [f"{v:.1e}" for v in values]
    return [f"{v:.3g}" for v in values]


# --- export -------------------------------------------------------------------------------------

def save_figure(fig, path, dpi=200, *, protect=()):
    """Write a Figure to ``path``; the format comes from the suffix (.png, .pdf, .svg). Returns the Path.

    dpi: pixels per inch for PNG (and for images inside PDF/SVG). Missing folders are created.
    protect: paths never to overwrite (the input photo).
    """
    if not isinstance(dpi, (int, float)) or isinstance(dpi, bool) or not 10 <= dpi <= 2400:
        raise ClipvizError(f"dpi must be a number between 10 and 2400, got {dpi!r}")
    path = _target(path, FIGURE_FORMATS, protect)
    fmt = path.suffix.lower()[1:]
    options = {"pil_kwargs": {"compress_level": PNG_COMPRESS_LEVEL}} if fmt == "png" else {}
    return _write_atomically(path, lambda handle: fig.savefig(handle, format=fmt, dpi=dpi, **options))


def save_explanation(exp, path, dpi=200, **kwargs):
    """``explanation_figure(exp, **kwargs)`` saved to ``path``; never overwrites the input photo."""
    fig = explanation_figure(exp, **kwargs)
    return save_figure(fig, path, dpi=dpi, protect=[exp.source] if exp.source else ())


def figure_png_bytes(fig, dpi=100):
    """The figure as PNG bytes; closes it (if pyplot manages it) so nothing accumulates."""
    import io
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    if getattr(fig.canvas, "manager", None) is not None:
        import matplotlib.pyplot as plt
        plt.close(fig)
    return buffer.getvalue()


def explanation_html(exp, dpi=100, **kwargs):
    """HTML for Jupyter: the figure as an inline PNG, then each prompt's coloured tokens (if any)."""
    return explanation_bundle(exp, dpi=dpi, **kwargs)["text/html"]


def explanation_bundle(exp, dpi=100, **kwargs):
    """Jupyter's mime bundle from one drawing of the figure (its tokens go in the HTML):
    {"image/png": base64 str (as IPython's own bundles carry it), "text/html": str}."""
    png = figure_png_bytes(explanation_figure(exp, **{**kwargs, "show_text": False}), dpi=dpi)
    png = base64.b64encode(png).decode("ascii")
    parts = [f'<img src="data:image/png;base64,{png}" alt="clipviz explanation"/>']
    if exp.text_relevance is not None:
        cmap = kwargs.get("cmap", "jet")
        parts.append(f'<div style="font-size:smaller;color:#555">tokens: {html.escape(TOKEN_SCALE)} per prompt</div>')
        for prompt, tokens, weights in zip(exp.prompts, exp.text_tokens, exp.text_relevance):
            parts.append(f"<div><b>{html.escape(prompt)}</b>: {text_tokens_html(tokens, weights, cmap)}</div>")
    return {"image/png": png, "text/html": "\n".join(parts)}


def _target(path, formats, protect):
    """Check an output path before drawing anything: suffix, not a folder, not a protected file, folder writable."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ClipvizError(f"the output path must be a file name, got {path!r}")
    path = Path(path).expanduser()
    if path.is_dir():
        raise ClipvizError(f"{str(path)!r} is a folder: give a file name ending in {', '.join(formats)}")
    if path.suffix.lower() not in formats:
        raise ClipvizError(f"cannot save {str(path)!r}: unknown file type {path.suffix or '(none)'!r}; "
                           f"use a name ending in {', '.join(formats)}")
    for other in protect:
        if other and isinstance(other, (str, os.PathLike)) and _same_file(path, Path(other).expanduser()):
            raise ClipvizError(f"refusing to overwrite the input photo {str(other)!r}: choose another output name")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ClipvizError(f"cannot create the output folder {str(folder)!r}: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ClipvizError(f"the output folder {str(folder)!r} is not writable: choose another output path")
    return path


def _same_file(a, b):
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _write_atomically(path, write):
    """write(handle) into a temporary file beside ``path``, then rename: no half-written output."""
    try:
        handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix, delete=False)
    except OSError as error:
        raise ClipvizError(f"cannot write to the folder {str(path.parent)!r}: {error.strerror or error}") from None
    try:
        with handle:
            write(handle)
        os.chmod(handle.name, 0o666 & ~_umask())
        os.replace(handle.name, path)
    except OSError as error:
        os.unlink(handle.name)
        raise ClipvizError(f"cannot write {str(path)!r}: {error.strerror or error}") from None
    except BaseException:
        os.unlink(handle.name)
        raise
    return path


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
