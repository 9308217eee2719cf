"""Prompt tokens coloured by their relevance: for terminals (ANSI), notebooks (HTML) and figures.

A token's weight is divided by the largest of its prompt (negatives clip to 0), then coloured as
a heatmap value; the ink is black or white, whichever reads better on that background.
"""

import html

import numpy as np

from ..errors import ClipvizError
from .colours import colorize

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
