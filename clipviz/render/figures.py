"""Figures of explanations: the photo and one overlay per prompt, methods side by side, a map per
block, a map per head.

    fig = explanation_figure(exp, width="single")   # matplotlib Figure (no pyplot)

Scaling: ``Explanation.maps`` are min-max scaled per map, so every map reaches 1 ("per-map
min–max"); ``shared=True`` scales a set of maps by one min and max over all of them ("shared
scale", clipviz.maps.shared_scale), so only the strongest reaches 1 and maps can be compared.
Every figure names its scaling in the colorbar label (or in a caption when there is no colorbar).
"""

import numpy as np

from ..errors import ClipvizError
from ..maps import PER_MAP, SHARED, map_to_photo, scaling_label, shared_scale
from .colours import overlay
from .layout import FIGURE_DPI, column_count, draw, font_size, panel_width, width_inches
from .tokens import TOKEN_SCALE, token_colours

_SEEN_NOTE = "dashed box: the square the model saw; pixels outside it are not coloured"


def explanation_figure(exp, columns=None, width="single", show_text=True, shared=False, cmap="jet",
                       alpha=0.5, colorbar=True, fontsize=None):
    """The photo and one overlay per prompt, titled with the prompt, cosine score and probability.

    width: "single" (3.5 in), "double" (7.16 in) or inches. columns: panels per row (default: as many
    as fit at about 1.2 in each). show_text: a strip of coloured prompt tokens under each overlay when
    the explanation has text relevance. shared: one colour scale over all prompts' maps.
    Maps are redrawn from ``token_maps`` at the panel's resolution.
    """
    width_in, fontsize = width_inches(width), font_size(fontsize, width)
    columns = column_count(columns, 1 + len(exp.prompts), width_in)
    panel_w = panel_width(width_in, columns)
    scaled, (low, high) = shared_scale([exp.token_maps], shared)
    photo, overlays, box = _panel_images(exp, scaled[0], panel_w, cmap, alpha)
    cells = [dict(image=photo, title=["photo", f"method: {exp.method}"], box=box)]
    texts = show_text and exp.text_relevance is not None
    for t, image in enumerate(overlays):
        tokens = _token_cell(exp.text_tokens[t], exp.text_relevance[t], cmap) if texts else None
        cells.append(dict(image=image, title=[_prompt_title(exp, t), _score_line(exp, t)], tokens=tokens))
    captions = _captions(box) + ([f"tokens: {TOKEN_SCALE} per prompt"] if texts else [])
    return draw(cells, columns, width_in, panel_w, fontsize, _key(cmap, shared, low, high, colorbar), captions)


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
    width_in, fontsize = width_inches(width), font_size(fontsize, width)
    columns = 1 + len(exps)
    panel_w = panel_width(width_in, columns)
    same_scores = all(np.allclose(e.scores, first.scores) and np.allclose(e.probs, first.probs) for e in exps)
    overlays = []
    for exp in exps:
        scaled, _ = shared_scale([exp.token_maps], shared)
        photo, images, box = _panel_images(exp, scaled[0], panel_w, cmap, alpha)
        overlays.append(images)
    cells, row_titles = [], []
    for t in range(len(first.prompts)):  # the prompt spans its row: one column is too narrow for it
        row_titles.append([_prompt_title(first, t) + (f" · {_score_line(first, t)}" if same_scores else "")])
        cells.append(dict(image=photo, title=["photo"] if t == 0 else [], box=box))
        for name, exp, images in zip(names, exps, overlays):
            title = ([name] if t == 0 else []) + ([] if same_scores else [_score_line(exp, t)])
            cells.append(dict(image=images[t], title=title))
    label = f"{SHARED} within each method" if shared else PER_MAP
    return draw(cells, columns, width_in, panel_w, fontsize, _key(cmap, False, 0.0, 1.0, colorbar, label=label),
                _captions(box), row_titles=row_titles)


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
    width_in, fontsize = width_inches(width), font_size(fontsize, width)
    columns = column_count(columns, 1 + len(titles), width_in, panel=0.75)
    panel_w = panel_width(width_in, columns)
    scaled, (low, high) = shared_scale([stack[prompt]], shared)
    photo, overlays, _ = _panel_images(exp, scaled[0], panel_w, cmap, alpha, crop=True)
    cells = [dict(image=photo, title=["photo"])] + [dict(image=i, title=[t]) for i, t in zip(overlays, titles)]
    header = [f"{_prompt_title(exp, prompt)} · {_score_line(exp, prompt)} · {exp.method}" + (f" · {what}" if what else "")]
    return draw(cells, columns, width_in, panel_w, fontsize, _key(cmap, shared, low, high, colorbar),
                 ["panels show the square the model saw"], header=header)


def _panel_images(exp, grids, panel_w, cmap, alpha, crop=False):
    """The photo and overlays of grids [K, g, g] (already in [0, 1]), sized for panels panel_w inches wide.

    crop: keep only the square the model saw. Returns (photo uint8, [K overlays], the crop box to
    outline on the photo — None when cropping or when it covers the whole photo).
    """
    from PIL import Image
    from ..preprocess import CropBox
    box, (height, width) = exp.crop_box, exp.photo.shape[:2]
    target = int(round(panel_w * FIGURE_DPI * (width / box.width if crop else 1.0)))
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
    # no-break spaces (U+00A0) tie each number to its name: lines wrap between "cos 0.056" and "p 0.42"
    if exp.against:  # the map explains S(prompt) − S(against): show both scores and the difference
        c = exp.contrast()[t]
        return f"S\u00a0{c['S_prompt']:.2f}\u00a0−\u00a0{c['S_against']:.2f} = {c['S_difference']:+.2f}"
    if len(exp.prompts) == 1:  # a softmax over one prompt is always 1: it says nothing
        return f"cos\u00a0{float(exp.scores[t]):.3f}"
    return f"cos\u00a0{float(exp.scores[t]):.3f} · p\u00a0{float(exp.probs[t]):.2f}"


def _token_cell(tokens, weights, cmap):
    background, ink = token_colours(weights, cmap)
    return list(zip([str(t) for t in tokens], background / 255.0, ink / 255.0))


def _key(cmap, shared, low, high, colorbar, label=None):
    return dict(cmap=cmap, low=low, high=high, label=f"relevance ({label or scaling_label(shared)})", show=colorbar)
