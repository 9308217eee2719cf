"""Saving figures (PNG, PDF, SVG) and showing explanations in Jupyter."""

import base64
import html

from ..errors import ClipvizError
from ..outputs import check_target, write_atomically
from ..suffixes import FIGURE_SUFFIXES
from .figures import explanation_figure
from .tokens import TOKEN_SCALE, text_tokens_html


def save_figure(fig, path, dpi=200, *, protect=(), force=True):
    """Write a Figure to ``path``; the format comes from the suffix (.png, .pdf, .svg). Returns the Path.

    dpi: pixels per inch for PNG (and for images inside PDF/SVG). Missing folders are created.
    protect: paths never to overwrite (the input photo). force=False: refuse to replace a file
    that exists when the figure is ready (clipviz.outputs.write_atomically).
    """
    if not isinstance(dpi, (int, float)) or isinstance(dpi, bool) or not 10 <= dpi <= 2400:
        raise ClipvizError(f"dpi must be a number between 10 and 2400, got {dpi!r}")
    path = check_target(path, FIGURE_SUFFIXES, protect)
    fmt = path.suffix.lower()[1:]
    return write_atomically(path, lambda handle: fig.savefig(handle, format=fmt, dpi=dpi), force=force)


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
