"""Pictures of explanations: overlays, colour maps, coloured text tokens, figures, export.

    rgb = overlay(photo, heat)                      # uint8 [H, W, 3]; NaN pixels stay the photo
    maps = photo_maps([exp_a, exp_b], shared=True)  # one colour scale for every map (clipviz.maps)
    fig = explanation_figure(exp, width="single")   # matplotlib Figure (no pyplot)
    save_figure(fig, "out.pdf")                     # .png / .pdf / .svg, written atomically

One module per job: ``colours`` (colour maps from matplotlib's registry, overlays), ``tokens``
(coloured prompt tokens), ``layout`` (inches from measured text), ``figures`` (what is drawn),
``export`` (files and Jupyter). Nothing here imports matplotlib until a colour map or figure is
first needed.
"""

from ..maps import photo_maps, scaling_label, shared_scale
from .colours import colorize, colormap_table, colour_levels, overlay, save_overlay
from .export import save_explanation, save_figure
from .figures import comparison_grid, explanation_figure, head_grid, layer_strip
from .tokens import TOKEN_SCALE, text_tokens_ansi, text_tokens_html, token_colours, token_weights

__all__ = ["colorize", "colormap_table", "colour_levels", "comparison_grid", "explanation_figure",
           "head_grid", "layer_strip", "overlay", "photo_maps", "save_explanation",
           "save_figure", "save_overlay", "scaling_label", "shared_scale", "text_tokens_ansi", "text_tokens_html",
           "token_colours", "token_weights", "TOKEN_SCALE"]
