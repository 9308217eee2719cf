"""Figures that show themselves in Jupyter, once, without ``%matplotlib`` or pyplot.

clipviz draws on ``matplotlib.figure.Figure`` with an Agg canvas and never touches pyplot, so
IPython's inline backend (which registers its PNG printer only once pyplot is imported) may not
know the figure: the cell then shows ``<Figure size 716x355 with 15 Axes>``. ``DisplayFigure``
is an ordinary Figure that also answers IPython's ``_repr_png_``. Where the inline backend *is*
active its printer takes precedence (IPython looks up type printers before ``_repr_png_``), and
because clipviz figures are not pyplot-managed the backend's end-of-cell flush never shows them a
second time: either way one ``image/png`` output per displayed figure, in nbclient-executed
notebooks, classic Jupyter and JupyterLab alike.
"""

import io

from matplotlib.figure import Figure

DISPLAY_DPI = 150  # pixels per inch of inline PNGs: a 7.16 in double-column figure is 1074 px wide


def png_bytes(fig, dpi=DISPLAY_DPI):
    """The figure as PNG bytes at ``dpi`` (the figure's own size, no tight-bbox cropping)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


class DisplayFigure(Figure):
    """A matplotlib Figure (save it, add axes, ... as usual) that Jupyter displays inline as one PNG."""

    def _repr_png_(self):
        return png_bytes(self)

    def __repr__(self):
        width, height = self.get_size_inches()
        return f"<clipviz figure {width:.2f}×{height:.2f} in, {len(self.axes)} axes>"
