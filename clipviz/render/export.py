"""Saving figures (PNG, PDF, SVG); Jupyter display is clipviz.display's."""

from ..errors import ClipvizError
from ..outputs import OVERWRITE_HINT, check_target, refuse_existing, write_atomically
from ..suffixes import FIGURE_SUFFIXES
from .colours import PNG_COMPRESS_LEVEL
from .figures import explanation_figure


def save_figure(fig, path, dpi=200, *, protect=(), force=True):
    """Write a Figure to ``path``; the format comes from the suffix (.png, .pdf, .svg). Returns the Path.

    dpi: pixels per inch for PNG (and for images inside PDF/SVG). Missing folders are created.
    protect: paths never to overwrite (the input photo). force=True (the default of this
    low-level writer) replaces a file already at ``path``; force=False refuses one clipviz did
    not write (clipviz.outputs.write_atomically). Explanation.save refuses by default.
    """
    if not isinstance(dpi, (int, float)) or isinstance(dpi, bool) or not 10 <= dpi <= 2400:
        raise ClipvizError(f"dpi must be a number between 10 and 2400, got {dpi!r}")
    path = check_target(path, FIGURE_SUFFIXES, protect)
    fmt = path.suffix.lower()[1:]
    options = {"pil_kwargs": {"compress_level": PNG_COMPRESS_LEVEL}} if fmt == "png" else {}
    return write_atomically(path, lambda handle: fig.savefig(handle, format=fmt, dpi=dpi, **options), force=force)


def save_explanation(exp, path, dpi=200, overwrite=False, **kwargs):
    """``explanation_figure(exp, **kwargs)`` saved to ``path`` → Path; never over the input photo.

    An existing file is replaced only with ``overwrite=True``, or when clipviz wrote it and it is
    unchanged since (clipviz.outputs.is_own_output: re-running a notebook cell replaces its own
    figure); otherwise ClipvizError, checked before the figure is drawn."""
    protect = [exp.source] if exp.source else ()
    refuse_existing([check_target(path, FIGURE_SUFFIXES, protect)], overwrite, OVERWRITE_HINT)
    fig = explanation_figure(exp, **kwargs)
    return save_figure(fig, path, dpi=dpi, protect=protect, force=overwrite)
