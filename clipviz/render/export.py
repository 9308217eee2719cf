"""Saving figures (PNG, PDF, SVG); Jupyter display is clipviz.display's.

The resolution rule (one for every output of clipviz):

* overlays (``save_overlay``, the CLI's per-prompt PNGs) are written at the photo's own
  resolution, pixel for pixel;
* figures are laid out in inches (``width="single"`` 3.5 in, ``"double"`` 7.16 in), their panels
  sample the photo at ``FIGURE_DPI`` (300) pixels per inch, and they are saved at ``dpi`` ≥ 300
  (default 300) — PNG, PDF and SVG alike; a lower dpi is refused. (Inline Jupyter previews are
  not files and use clipviz.display's 150 dpi.)

Text stays text: PDFs embed their fonts as TrueType (``pdf.fonttype`` 42; matplotlib's default
Type 3 fonts fail IEEE PDF eXpress and similar checks) and SVGs keep ``<text>`` elements
(``svg.fonttype`` "none") that an editor can change. These settings hold only while clipviz
saves (``matplotlib.rc_context``); the user's rcParams are left as they were.
"""

from ..errors import ClipvizError
from ..outputs import OVERWRITE_HINT, check_target, refuse_existing, require_folder, write_atomically
from ..suffixes import FIGURE_SUFFIXES
from .colours import PNG_COMPRESS_LEVEL
from .figures import explanation_figure
from .layout import FIGURE_DPI

MAX_DPI = 2400
# TrueType (42) fonts in PDF and PostScript, text as <text> in SVG: editable, accepted by publishers
TEXT_AS_TEXT = {"pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none"}


def save_figure(fig, path, dpi=FIGURE_DPI, *, protect=(), force=True):
    """Write a Figure to ``path``; the format comes from the suffix (.png, .pdf, .svg). Returns the Path.

    dpi: pixels per inch of a PNG and of the images inside a PDF or SVG, from 300 (FIGURE_DPI,
    the default) to 2400 (module docstring: the resolution rule). Fonts are embedded as TrueType
    in PDF and kept as text in SVG. Missing folders are created. protect: paths never to
    overwrite (the input photo). force=True (the default of this low-level writer) replaces a
    file already at ``path``; force=False refuses one clipviz did not write
    (clipviz.outputs.write_atomically). Explanation.save refuses by default.
    """
    check_dpi(dpi)
    path = check_target(path, FIGURE_SUFFIXES, protect)
    fmt = path.suffix.lower()[1:]
    options = {"pil_kwargs": {"compress_level": PNG_COMPRESS_LEVEL}} if fmt == "png" else {}

    def write(handle):
        import matplotlib
        with matplotlib.rc_context(TEXT_AS_TEXT):  # read by the PDF and SVG backends while saving
            fig.savefig(handle, format=fmt, dpi=dpi, **options)

    return write_atomically(path, write, force=force)


def check_dpi(dpi):
    """Refuse a figure resolution outside [FIGURE_DPI, MAX_DPI] (300 to 2400) with ClipvizError."""
    if not isinstance(dpi, (int, float)) or isinstance(dpi, bool) or not FIGURE_DPI <= dpi <= MAX_DPI:
        raise ClipvizError(f"dpi must be a number from {FIGURE_DPI} to {MAX_DPI}, got {dpi!r}: figures are saved "
                           f"at {FIGURE_DPI} dpi or more (print resolution); for a smaller file use width='single'")


def save_explanation(exp, path, dpi=FIGURE_DPI, overwrite=False, **kwargs):
    """``explanation_figure(exp, **kwargs)`` saved to ``path`` at ``dpi`` (≥ 300, see save_figure)
    → Path; never over the input photo.

    An existing file is replaced only with ``overwrite=True``, or when clipviz wrote it and it is
    unchanged since (clipviz.outputs.is_own_output: re-running a notebook cell replaces its own
    figure); otherwise ClipvizError, checked before the figure is drawn. A missing folder is
    refused, as by matplotlib's savefig (clipviz.outputs.require_folder)."""
    protect = [exp.source] if exp.source else ()
    target = check_target(path, FIGURE_SUFFIXES, protect)
    require_folder(target)
    refuse_existing([target], overwrite, OVERWRITE_HINT)
    fig = explanation_figure(exp, **kwargs)
    return save_figure(fig, path, dpi=dpi, protect=protect, force=overwrite)
