"""Figure layout in inches, from measured text: titles, panels, token strips, colour bar, captions.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never pyplot, so making one
changes no backend and leaks no open figure. Titles and token strips never overlap at
single-column (3.5 in) or double-column (7.16 in) width.
"""

import math

import numpy as np

from ..errors import ClipvizError
from .colours import colormap_table

WIDTHS = {"single": 3.5, "double": 7.16}  # inches: one and two columns of a two-column paper
# panels sample the photo at this many pixels per inch, and figures are saved at this dpi or more
# (clipviz.render.export: the resolution rule); bigger photos are downsized, which keeps PDFs small
FIGURE_DPI = 300
_GAP = 0.06           # inches between panels
_MARGIN = 0.04        # inches around the figure
_BAR = 0.07           # colorbar thickness in inches (a horizontal bar under the panels)
MIN_FONT = 4.0        # points: labels shrink to fit a long word, never below this


def width_inches(width):
    if isinstance(width, str) and width in WIDTHS:
        return WIDTHS[width]
    if isinstance(width, (int, float)) and not isinstance(width, bool) and 1.0 <= width <= 40.0:
        return float(width)
    raise ClipvizError(f"width must be 'single' (3.5 in), 'double' (7.16 in) or inches between 1 and 40, got {width!r}")


def font_size(fontsize, width):
    return float(fontsize) if fontsize else 7.0 if width_inches(width) < 5 else 8.0


def column_count(columns, count, width_in, panel=1.2):
    if columns is None:  # as many as fit at ``panel`` inches, then balanced: 6 panels in 3 + 3, not 5 + 1
        fit = max(1, min(count, int((width_in - 2 * _MARGIN + _GAP) // (panel + _GAP))))
        return math.ceil(count / math.ceil(count / fit))
    if not isinstance(columns, int) or isinstance(columns, bool) or columns < 1:
        raise ClipvizError(f"columns must be a positive whole number, got {columns!r}")
    return min(columns, count)


def panel_width(width_in, columns):
    room = width_in - 2 * _MARGIN - (columns - 1) * _GAP
    if room / columns < 0.3:
        raise ClipvizError(f"{columns} columns do not fit in {width_in} in: use fewer columns or a wider figure")
    return room / columns


def draw(cells, columns, width_in, panel_w, fontsize, key, captions, header=(), row_titles=None):
    """Lay the cells out in rows of ``columns`` (inches, from measured text) and draw them.

    cell: dict(image=uint8 [h, w, 3], title=[lines], tokens=[(text, rgb, ink)] or None, box=CropBox or None)
    key: the colour scale: a horizontal colorbar under the panels, labelled with the scaling, or
         (key["show"] False) a caption line naming the scaling. captions: lines under everything;
    header: lines above everything; row_titles: per row, lines above that row (left-aligned,
    across every column). All three wrap to the figure's width; cell titles to the panel's.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.font_manager import FontProperties

    from ..display import DisplayFigure

    fig = DisplayFigure(figsize=(width_in, 1.0))  # a Figure that also displays itself in Jupyter
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    font = FontProperties(size=fontsize)
    token_font = FontProperties(size=fontsize - 1)

    def measure(text, size):  # inches, as the Agg renderer draws it
        return renderer.get_text_width_height_descent(text, FontProperties(size=size), ismath=False)[0] / fig.dpi

    def text_width(text, prop=font):
        return measure(text, prop.get_size_in_points())

    def line_height(size):
        return size * 1.3 / 72.0

    line_h = line_height(fontsize)
    token_h = (fontsize - 1) * 1.6 / 72.0
    pad = (fontsize - 1) * 0.25 / 72.0
    captions = ([] if key["show"] else [f"colours: {key['label']}"]) + list(captions)
    captions, caption_size = fit_text(captions, width_in - 2 * _MARGIN, measure, fontsize, max_lines=4)
    header, header_size = fit_text(header, width_in - 2 * _MARGIN, measure, fontsize, max_lines=4)
    ticks = _tick_labels(key["low"], key["high"])
    bar_x = _MARGIN + max(0.05, text_width(ticks[0], token_font) / 2)  # room for the first tick label
    bar_w = min(2.0, 0.45 * (width_in - 2 * _MARGIN))
    label_x = bar_x + bar_w + max(0.1, text_width(ticks[-1], token_font) / 2 + 0.05)
    label_beside = label_x + text_width(key["label"]) <= width_in - _MARGIN  # else under the ticks
    bar_h = (_BAR + (fontsize - 1) * 1.5 / 72.0 + _GAP + (0 if label_beside else line_h)) if key["show"] else 0.0

    # measure: wrapped titles (each cell's font shrunk to fit its longest word), token lines, image heights
    layout = []
    for cell in cells:
        lines, size = fit_text(cell["title"], panel_w, measure, fontsize, max_lines=3)
        texts = [text for text, _, _ in cell.get("tokens") or []]
        token_size = fit_text(texts, panel_w - 2 * pad, measure, fontsize - 1)[1]  # a long token shrinks too
        flows = _flow([measure(text, token_size) + 2 * pad for text in texts], panel_w)
        image_h = panel_w * cell["image"].shape[0] / cell["image"].shape[1]
        layout.append((lines, size, flows, token_size, image_h))
    rows = [layout[i:i + columns] for i in range(0, len(layout), columns)]
    row_heads = [fit_text(lines, width_in - 2 * _MARGIN, measure, fontsize) for lines in row_titles or [[]] * len(rows)]
    row_sizes = [(len(head) * line_height(head_size) + max(len(c[0]) * line_height(c[1]) for c in row),
                  max(c[4] for c in row), max((max((f[0] for f in c[2]), default=-1) + 1) * (token_h + pad) for c in row))
                 for row, (head, head_size) in zip(rows, row_heads)]
    height = (2 * _MARGIN + sum(t + i + k + _GAP for t, i, k in row_sizes) + bar_h
              + len(captions) * line_height(caption_size) + len(header) * line_height(header_size))
    fig.set_size_inches(width_in, height)

    def place(x, y, w, h):  # inches from the top-left → figure fraction rectangle
        return [x / width_in, 1 - (y + h) / height, w / width_in, h / height]

    for k, line in enumerate(header):
        fig.text(0.5, 1 - (_MARGIN + (k + 0.5) * line_height(header_size)) / height, line, ha="center", va="center",
                 fontproperties=FontProperties(size=header_size))
    y = _MARGIN + len(header) * line_height(header_size)
    for r, (row, (title_h, image_h, tokens_h)) in enumerate(zip(rows, row_sizes)):
        head, head_size = row_heads[r]
        for k, line in enumerate(head):  # the row's title, across every column
            fig.text(_MARGIN / width_in, 1 - (y + (k + 0.5) * line_height(head_size)) / height, line, ha="left",
                     va="center", fontproperties=FontProperties(size=head_size))
        for c, (lines, size, flows, token_size, cell_h) in enumerate(row):
            cell = cells[r * columns + c]
            x = _MARGIN + c * (panel_w + _GAP)
            for k, line in enumerate(lines):  # titles sit right above the image
                fig.text((x + panel_w / 2) / width_in, 1 - (y + title_h - (len(lines) - k - 0.5) * line_height(size)) / height,
                         line, ha="center", va="center", fontproperties=FontProperties(size=size))
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
                         ha="center", va="center", fontproperties=FontProperties(size=token_size))
        y += title_h + image_h + tokens_h + _GAP
    if key["show"]:
        _colorbar(fig, place(bar_x, y, bar_w, _BAR), key, ticks, fontsize)
        x, label_y = (label_x, y + _BAR / 2) if label_beside else (_MARGIN, y + bar_h - _GAP - line_h / 2)
        fig.text(x / width_in, 1 - label_y / height, key["label"], ha="left", va="center", fontproperties=font)
        y += bar_h
    for k, line in enumerate(captions):
        fig.text(_MARGIN / width_in, 1 - (y + (k + 0.5) * line_height(caption_size)) / height, line, ha="left",
                 va="center", fontproperties=FontProperties(size=caption_size), color="0.3")
    return fig


def fit_text(texts, room, measure, size, max_lines=3):
    """Lines of ``texts`` wrapped to ``room`` inches at a font size that lets every word fit → (lines, size).

    Labels never break inside a word: they wrap at spaces (measured in the font, since a
    character count — textwrap's rule — misjudges proportional type), and when one word is wider
    than the room the font shrinks until it fits, down to MIN_FONT points. Only a word still too
    wide at MIN_FONT is shortened, ending in "…"; a label longer than max_lines ends in "…" after
    its last whole word. measure(text, size) → inches.
    """
    words = [w for text in texts for w in text.split(" ") if w]
    widest = max(words, key=lambda w: measure(w, size), default="")
    while size > MIN_FONT and measure(widest, size) > room:  # widths scale about linearly with the size
        size = max(MIN_FONT, min(size * room / measure(widest, size), size - 0.1))
    lines = []
    for text in texts:  # split at spaces only: a no-break space (U+00A0) keeps "p 0.42" together
        lines += _wrap(text, room, lambda t: measure(t, size), max_lines)
    return lines, size


def _wrap(text, room, text_width, max_lines):
    """Greedy wrap at spaces to ``room`` inches; at most max_lines, the last ending in … after a whole word."""
    lines, current = [], ""
    for word in (w for w in text.split(" ") if w):
        candidate = f"{current} {word}" if current else word
        if text_width(candidate) <= room or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
        if text_width(current) > room:  # one word wider than the room even at MIN_FONT
            current = _shorten(current, room, text_width)
    lines.append(current)
    if len(lines) > max_lines:
        words = lines[max_lines - 1].split(" ")
        while len(words) > 1 and text_width(" ".join(words) + " …") > room:
            words.pop()
        lines = lines[:max_lines - 1] + [_shorten(" ".join(words) + " …", room, text_width)]
    return lines


def _shorten(text, room, text_width):
    """``text`` cut to fit ``room``, ending in … (only a word too wide at the smallest font)."""
    if text_width(text) <= room:
        return text
    text = text.rstrip(" …")
    while len(text) > 1 and text_width(text + "…") > room:
        text = text[:-1]
    return text + "…"


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
