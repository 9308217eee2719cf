"""Rendering: overlays against hand-computed blends, the two colour scales, coloured tokens,
figures laid out without overlaps, and PNG / PDF / SVG files that open."""

import base64
import io
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

import clipviz
from clipviz import outputs, render
from clipviz.errors import ClipvizError
from clipviz.explanation import Explanation
from clipviz.maps import map_to_photo, normalise_maps
from clipviz.preprocess import preprocess_image


PROMPTS = ["a dog on the <b>beach</b>", "two cats"]


def photo(height=90, width=130, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def exp(tiny_vit):
    """A real explanation (relevance, with per-block, per-head and text-token maps) of a wide photo."""
    return clipviz.explain(tiny_vit, photo(), PROMPTS, start_layer=0)


def hand_explanation(token_maps, image=None):
    """An Explanation built by hand from raw patch maps [T, g, g] (64-pixel model input)."""
    image = photo() if image is None else image
    _, box = preprocess_image(image, 64)
    token_maps = np.asarray(token_maps, dtype=np.float32)
    count = token_maps.shape[0]
    return Explanation(photo=image, prompts=[f"prompt {t}" for t in range(count)], scores=np.linspace(0.1, 0.3, count),
                       probs=np.full(count, 1.0 / count), token_maps=token_maps,
                       maps=map_to_photo(normalise_maps(token_maps), box), crop_box=box, method="hand")


# --- golden overlay ---------------------------------------------------------------------------

def jet_by_hand(x):
    """matplotlib's jet at x, from its segment data, exactly (Fractions): (r, g, b) in [0, 1]."""
    def piece(knots):
        for (x0, y0), (x1, y1) in zip(knots, knots[1:]):
            if x0 <= x <= x1:
                return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    F = Fraction
    red = [(F(0), F(0)), (F(35, 100), F(0)), (F(66, 100), F(1)), (F(89, 100), F(1)), (F(1), F(1, 2))]
    green = [(F(0), F(0)), (F(125, 1000), F(0)), (F(375, 1000), F(1)), (F(64, 100), F(1)), (F(91, 100), F(0)), (F(1), F(0))]
    blue = [(F(0), F(1, 2)), (F(11, 100), F(1)), (F(34, 100), F(1)), (F(65, 100), F(0)), (F(1), F(0))]
    return piece(red), piece(green), piece(blue)


def test_overlay_equals_hand_computed_blend():
    # value v is coloured by table entry k = min(floor(256 v), 255), i.e. jet at x = k / 255
    values = [0.0, 51 / 256, 153 / 256, 1.0, 1.7, np.nan]  # x = 0, 0.2, 0.6, 1, 1 (clipped), unseen
    xs = [Fraction(0), Fraction(1, 5), Fraction(3, 5), Fraction(1), Fraction(1)]
    # by hand: jet(0) = (0, 0, ½); jet(0.2) = (0, 0.3, 1); jet(0.6) = (25/31, 1, 5/31); jet(1) = (½, 0, 0)
    assert jet_by_hand(Fraction(3, 5)) == (Fraction(25, 31), 1, Fraction(5, 31))
    assert jet_by_hand(Fraction(1, 5)) == (0, Fraction(3, 10), 1)
    image = np.array([[[10, 200, 31], [255, 0, 128], [77, 77, 77], [0, 255, 3], [201, 99, 12], [5, 6, 7]]], np.uint8)
    heat = np.array([values])
    for alpha in (Fraction(1, 2), Fraction(3, 10)):
        out = render.overlay(image, heat, cmap="jet", alpha=float(alpha))
        assert out.dtype == np.uint8 and out.shape == image.shape
        for i, x in enumerate(xs):  # level k = 255 x, so its opacity alpha · k / 255 = alpha · x
            colour = [255 * c for c in jet_by_hand(x)]
            a = alpha * x
            expected = [int((1 - a) * int(p) + a * c + Fraction(1, 2)) for p, c in zip(image[0, i], colour)]
            assert out[0, i].tolist() == expected, (i, alpha)
        assert out[0, 5].tolist() == [5, 6, 7]  # NaN: the photo, untouched
    assert (render.overlay(image, heat, alpha=0.0) == image).all()


def test_zero_relevance_leaves_the_photo_as_it_is():
    """No tinted square: where the map is 0 (or below the first colour level, 1/256) the overlay is
    the photo's own pixel, for every colour map and opacity; the opacity grows with the value."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for cmap in ("jet", "viridis", "magma", "turbo"):
        for alpha in (0.3, 0.5, 1.0):
            assert (render.overlay(image, np.zeros((20, 30)), cmap=cmap, alpha=alpha) == image).all()
            faint = np.full((20, 30), 0.99 / 256)
            assert (render.overlay(image, faint, cmap=cmap, alpha=alpha) == image).all()
    grey = np.full((1, 4, 3), 128, np.uint8)
    out = render.overlay(grey, np.array([[0.0, 0.25, 0.5, 1.0]]), cmap="gray", alpha=1.0)  # gray(x) = (x, x, x)
    # gray at level k is k/255 white; opacity k/255: 128 + (k/255)(k − 128), k = 0, 64, 128, 255
    assert out[0, :, 0].tolist() == [int(128 + k / 255 * (k - 128) + 0.5) for k in (0, 64, 128, 255)]


# Published end points of matplotlib's listed maps (viridis: van der Walt & Smith 2015, the first and
# last rows of _viridis_data; turbo: Mikhailov 2019, the first and last rows of _turbo_data).
GOLDEN = {"viridis": ((0.267004, 0.004874, 0.329415), (0.993248, 0.906157, 0.143936)),
          "turbo": ((0.18995, 0.07176, 0.23217), (0.4796, 0.01583, 0.01055))}


def test_colour_levels_and_any_registry_name_against_independent_numbers():
    """Values pick table entry k = min(floor(256 v), 255), checked on jet's hand-worked curve at
    the entry boundaries; any registry name works (viridis, turbo) and equals its published end
    points; an unknown name says what to do."""
    values = np.array([0.0, 1 / 256 - 1e-9, 1 / 256, 128 / 256 - 1e-9, 128 / 256, 255 / 256, 1.0])
    entries = [0, 0, 1, 127, 128, 255, 255]
    assert render.colour_levels(values).tolist() == entries
    by_hand = np.array([[float(c) for c in jet_by_hand(Fraction(k, 255))] for k in entries]) * 255
    assert np.abs(render.colorize(values, "jet") - by_hand).max() < 1e-9
    for name, (low, high) in GOLDEN.items():
        ends = render.colorize([0.0, 1.0], name) / 255
        assert np.abs(ends - np.array([low, high])).max() < 5e-6, name
        image = np.array([[[100, 100, 100], [0, 0, 0]]], np.uint8)
        out = render.overlay(image, np.array([[0.0, 1.0]]), cmap=name, alpha=0.5)
        # value 0: opacity 0, the photo itself; value 1: the full alpha 0.5
        expected = [[100, 100, 100], [int(0.5 * 0 + 0.5 * 255 * c + 0.5) for c in high]]
        assert out[0].tolist() == expected, name
    with pytest.raises(ClipvizError, match="unknown colormap 'nope'.*matplotlib"):
        render.colormap_table("nope")


def test_overlay_on_a_real_explanation_keeps_unseen_pixels(exp):
    import matplotlib
    out = render.overlay(exp.photo, exp.maps[0], alpha=0.4)
    assert out.shape == exp.photo.shape  # the photo's full resolution
    unseen = np.isnan(exp.maps[0])
    assert unseen.any() and (out[unseen] == exp.photo[unseen]).all()  # the wide photo's sides
    values = exp.maps[0][~unseen]
    colour = matplotlib.colormaps["jet"](values)[:, :3] * 255
    opacity = 0.4 * np.minimum(np.floor(values * 256), 255)[:, None] / 255  # grows with the relevance
    expected = np.floor((1 - opacity) * exp.photo[~unseen] + opacity * colour + 0.5)
    assert np.abs(out[~unseen].astype(float) - expected).max() <= 1  # rounding at exact ties only
    assert (exp.overlay(0, alpha=0.4) == out).all()


def test_overlay_rejects_what_it_cannot_draw():
    image = photo(4, 5)
    with pytest.raises(ClipvizError, match="map_to_photo"):
        render.overlay(image, np.zeros((2, 2)))
    with pytest.raises(ClipvizError, match="alpha"):
        render.overlay(image, np.zeros((4, 5)), alpha=1.5)
    with pytest.raises(ClipvizError, match="uint8"):
        render.overlay(image.astype(np.float32), np.zeros((4, 5)))


def test_matplotlib_is_imported_only_when_a_colour_is_needed(tmp_path):
    """Importing clipviz.render (and the CLI) stays fast: matplotlib loads with the first colour map."""
    code = (
        "import sys, numpy as np\n"
        "import clipviz.render as r, clipviz.cli\n"
        "assert 'matplotlib' not in sys.modules\n"
        "p = np.zeros((6, 8, 3), np.uint8); h = np.full((6, 8), 0.5); h[0] = np.nan\n"
        f"r.save_overlay({str(tmp_path / 'o.png')!r}, p, h, cmap='turbo')\n"
        "assert 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    with Image.open(tmp_path / "o.png") as written:
        assert written.size == (8, 6)


# --- scaling ----------------------------------------------------------------------------------

def ramp(top):
    """A 4×4 patch map rising from 0 to ``top`` at the top-left corner (edge cells hold their
    value to the photo's edge, so the photo map reaches the grid's maximum exactly)."""
    i, j = np.mgrid[0:4, 0:4]
    return top * (6 - i - j) / 6


def test_per_map_scaling_reaches_one_in_every_map():
    e = hand_explanation([ramp(1.0), ramp(0.5) + 0.25])
    maps = render.photo_maps(e)
    assert [float(np.nanmax(m)) for m in maps] == [1.0, 1.0]
    assert [float(np.nanmin(m)) for m in maps] == [0.0, 0.0]
    (grids,), scale = render.shared_scale([e.token_maps])  # what figures draw
    assert scale == (0.0, 1.0) and np.allclose(grids, [ramp(1.0), ramp(1.0)])


def test_shared_scale_of_figures_spans_every_map():
    (first,), scale = render.shared_scale([[ramp(2.0), ramp(1.0) + 0.5]], shared=True)
    assert scale == (0.0, 2.0) and np.allclose(first, [ramp(1.0), ramp(0.5) + 0.25])
    assert np.allclose(render.shared_scale([np.ones((2, 3, 3))], shared=True)[0][0], 0)  # constant: no colour


def test_shared_scale_lets_only_the_larger_map_reach_one():
    e = hand_explanation([ramp(1.0), ramp(0.5)])
    first, second = render.photo_maps(e, shared=True)
    assert np.nanmax(first) == pytest.approx(1.0) and np.nanmax(second) == pytest.approx(0.5)
    assert np.allclose(second, first / 2, equal_nan=True)  # one scale: the ratio survives
    assert (np.isnan(first) == np.isnan(e.maps[0])).all()
    # across explanations: the second photo's maps are half as strong
    a, b = hand_explanation([ramp(2.0)]), hand_explanation([ramp(1.0)], photo(70, 50, seed=1))
    maps = render.photo_maps([a, b], shared=True)
    assert [m.shape for m in maps] == [(90, 130), (70, 50)]
    assert np.nanmax(maps[0]) == pytest.approx(1.0) and np.nanmax(maps[1]) == pytest.approx(0.5)


def figure_texts(fig):
    """Every visible string of a figure: figure texts, axis labels and tick labels."""
    fig.canvas.draw()
    strings = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        strings += [ax.get_xlabel(), ax.get_ylabel()] + [t.get_text() for t in ax.get_xticklabels()]
    return strings


def test_every_figure_names_its_scaling():
    e = hand_explanation([ramp(1.0), ramp(0.5)])
    assert any("per-map min–max" in s for s in figure_texts(render.explanation_figure(e)))
    e = hand_explanation([ramp(2.0), ramp(1.0)])
    shared = figure_texts(render.explanation_figure(e, shared=True))
    assert any("shared scale" in s for s in shared)
    assert {"0", "1", "2"} <= set(shared)  # shared: ticks in raw units, from the grids' min 0 to max 2
    uncoloured = figure_texts(render.explanation_figure(e, colorbar=False))
    assert any(s.startswith("colours:") and "per-map min–max" in s for s in uncoloured)


# --- coloured text tokens ---------------------------------------------------------------------

def test_text_tokens_html_escapes_markup():
    out = render.text_tokens_html(["a", "<script>", "alert('x')", "&"], [0.1, 0.9, 0.2, 0.0])
    assert "<script>" not in out and "&lt;script&gt;" in out and "&amp;" in out
    assert out.count("<span") == 4
    assert 'background:#800000' in out  # the heaviest token: jet(1) = (½, 0, 0)


def test_ansi_tokens_have_one_colour_code_each():
    tokens, weights = ["a", "red", "car"], [0.0, 2.0, 1.0]
    out = render.text_tokens_ansi(tokens, weights)
    codes = re.findall(r"\x1b\[([0-9;]*)m", out)
    backgrounds = [c for c in codes if "48;2;" in c]
    assert len(backgrounds) == len(tokens) and codes.count("0") == len(tokens)
    # weights ÷ max: 0 → jet(0) = (0, 0, 127.5), 1 → (127.5, 0, 0), 0.5 → table entry 128
    assert backgrounds[0].endswith("48;2;0;0;128") and backgrounds[1].endswith("48;2;128;0;0")
    assert backgrounds[2].endswith("48;2;%d;%d;%d" % tuple(np.floor(render.colorize(0.5) + 0.5).astype(int)))
    assert re.sub(r"\x1b\[[0-9;]*m", "", out) == "a red car"
    with pytest.raises(ClipvizError, match="one weight per token"):
        render.text_tokens_ansi(tokens, [1.0])


# --- figures ----------------------------------------------------------------------------------

def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


def assert_no_overlapping_text(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in fig.texts if t.get_text()]
    width, height = fig.bbox.width, fig.bbox.height
    for k, (text, box) in enumerate(boxes):
        assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1, f"{text!r} leaves the figure"
        for other, second in boxes[k + 1:]:
            overlap_w = min(box.x1, second.x1) - max(box.x0, second.x0)
            overlap_h = min(box.y1, second.y1) - max(box.y0, second.y0)
            assert overlap_w <= 0.5 or overlap_h <= 0.5, f"{text!r} overlaps {other!r}"


@pytest.mark.parametrize("width, inches", [("single", 3.5), ("double", 7.16)])
def test_explanation_figure_titles_sizes_and_layout(exp, width, inches):
    fig = exp.figure(width=width)
    assert fig.get_size_inches()[0] == pytest.approx(inches)
    assert len(image_axes(fig)) == 1 + len(PROMPTS)
    texts = " ".join(t.get_text().replace("\u00a0", " ") for t in fig.texts)  # no-break spaces tie "cos 0.1"
    for t in range(len(PROMPTS)):
        assert f"cos {exp.scores[t]:.3f} · p {exp.probs[t]:.2f}" in texts
    assert "two cats" in texts and "method: relevance" in texts
    assert sum(t.get_text() in ("dog", "cats", "<", "beach") for t in fig.texts) >= 4  # the token strips
    assert_no_overlapping_text(fig)


def test_comparison_layer_and_head_figures(exp, tiny_vit):
    rollout = clipviz.explain(tiny_vit, exp.photo, PROMPTS, method="rollout")
    grid = render.comparison_grid({"relevance": exp, "rollout": rollout}, width="single")
    assert len(image_axes(grid)) == len(PROMPTS) * 3
    assert {"relevance", "rollout"} <= {t.get_text() for t in grid.texts}
    assert_no_overlapping_text(grid)

    strip = render.layer_strip(exp, prompt=1)
    titles = [t.get_text() for t in strip.texts]
    assert [f"block {i}" for i in exp.layer_indices] == [t for t in titles if t.startswith("block")]
    assert len(exp.layer_indices) == 3 and len(image_axes(strip)) == 1 + 3
    assert_no_overlapping_text(strip)

    heads = render.head_grid(exp, width="single")
    assert len(image_axes(heads)) == 1 + exp.head_maps.shape[1]
    assert_no_overlapping_text(heads)
    with pytest.raises(ClipvizError, match="no per-head maps"):
        render.head_grid(rollout)
    with pytest.raises(ClipvizError, match="out of range"):
        render.layer_strip(exp, prompt=5)


LONG = ["a photograph of an extraordinarily photogenic golden retriever puppy sitting on a windowsill",
        "incomprehensibilities", "a cat"]


def test_labels_wrap_between_words_and_shrink_for_a_long_word(tiny_vit):
    """Every grid's labels: each drawn line is whole words of what was asked for (a long label
    ends in "…" after a whole word), and it fits its cell — a word wider than the cell shrinks the
    cell's font (never below MIN_FONT) instead of being cut."""
    from clipviz.render.layout import MIN_FONT
    image = photo(120, 120)
    exps = {m: clipviz.explain(tiny_vit, image, LONG, method=m, **({"start_layer": 0} if m == "relevance" else {}))
            for m in ("relevance", "rollout", "gradcam", "legrad")}
    source_words = {w for text in LONG for w in text.split()}
    figures = [render.comparison_grid(exps, width="double"), render.comparison_grid(exps, width="single"),
               exps["relevance"].figure(width="single", columns=3, show_text=False), render.layer_strip(exps["relevance"], 0, width="single"),
               render.head_grid(exps["relevance"], 1, width="single")]
    for fig in figures:
        renderer = fig.canvas.get_renderer()
        for text in fig.texts:
            line = text.get_text().replace("\u00a0", " ")
            for word in (w.strip("“”…") for w in line.split()):
                broken = [s for s in source_words if len(word) >= 3 and word not in source_words | {"photo"}
                          and (s.startswith(word) or s.endswith(word))]
                assert not broken, f"{line!r}: {word!r} is a piece of {broken}"  # whole words only
            width = text.get_window_extent(renderer).width / fig.dpi
            assert width <= fig.get_size_inches()[0], line
            assert text.get_fontsize() >= MIN_FONT
        assert_no_overlapping_text(fig)
    for fig in figures[:3]:
        assert "incomprehensibilities" in " ".join(t.get_text() for t in fig.texts)  # never cut
    # “incomprehensibilities” does not fit a 1.1 in column at 7 pt: that title shrinks, the others keep 7 pt
    sizes = {t.get_text(): t.get_fontsize() for t in figures[2].texts}
    assert MIN_FONT <= sizes["“incomprehensibilities”"] < 7.0 and sizes["“a cat”"] == 7.0


def test_wrap_keeps_words_whole_by_hand():
    """fit_text on a fixed-width 'font' (0.1 in per character at 10 pt, scaling with the size)."""
    from clipviz.render.layout import MIN_FONT, fit_text
    measure = lambda text, size: 0.01 * size * len(text)  # noqa: E731
    assert fit_text(["a dog on the beach"], 0.8, measure, 10) == (["a dog on", "the", "beach"], 10)
    lines, size = fit_text(["an incomprehensible dog"], 0.8, measure, 10)  # 16 letters > 8: shrink to 10 · 8/16
    assert lines == ["an", "incomprehensible", "dog"] and size == pytest.approx(5.0, rel=1e-2)
    lines, size = fit_text(["one two three four five six seven"], 1.0, measure, 10, max_lines=2)
    assert lines == ["one two", "three …"] and size == 10
    lines, size = fit_text(["x" * 100], 0.8, measure, 10)  # too wide even at MIN_FONT: shortened, says so
    assert size == MIN_FONT and lines[0].endswith("…") and measure(lines[0], size) <= 0.8


# --- files ------------------------------------------------------------------------------------

def test_png_pdf_and_svg_are_written_and_open(exp, tmp_path):
    fig = exp.figure()
    w_in, h_in = fig.get_size_inches()
    for dpi in (300, 450):
        path = render.save_figure(fig, tmp_path / f"fig{dpi}.png", dpi=dpi)
        with Image.open(path) as png:
            assert png.format == "PNG" and png.size == (int(w_in * dpi), int(h_in * dpi))  # Agg truncates
    with Image.open(render.save_figure(fig, tmp_path / "default.png")) as png:
        assert png.size == (int(w_in * 300), int(h_in * 300))  # the resolution rule's default
    pdf = render.save_figure(fig, tmp_path / "fig.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b", pdf)) == 1
    if shutil.which("pdftoppm"):
        subprocess.run(["pdftoppm", "-png", "-r", "50", str(tmp_path / "fig.pdf"), str(tmp_path / "page")], check=True)
    root = ET.parse(render.save_figure(fig, tmp_path / "fig.svg")).getroot()
    assert root.tag.endswith("svg") and root.get("width", "").startswith(f"{w_in * 72:.0f}")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary files left


def pdf_fonts(path):
    """pdffonts' table of a PDF (poppler-utils): [(name, type)] — the type column read by its
    position under the dashed header, since a type such as "CID TrueType" has a space."""
    text = subprocess.run(["pdffonts", str(path)], check=True, capture_output=True, text=True).stdout.splitlines()
    start = text[0].index("type")
    dashes = text[1].split(" ")
    end = start + len(dashes[1]) if len(dashes) > 1 else None
    return [(line.split()[0], line[start:end].strip()) for line in text[2:]]


def test_pdf_embeds_truetype_fonts_and_svg_keeps_text(exp, tmp_path):
    """PDF fonts are TrueType (pdffonts lists no Type 3, which IEEE PDF eXpress rejects), embedded;
    SVG text is <text> elements with the figure's words; the user's rcParams are left as they were."""
    import matplotlib
    before = {k: matplotlib.rcParams[k] for k in ("pdf.fonttype", "ps.fonttype", "svg.fonttype")}
    fig = exp.figure()
    pdf_path = render.save_figure(fig, tmp_path / "fig.pdf")
    pdf = pdf_path.read_bytes()
    assert b"/Type3" not in pdf.replace(b" ", b"") and b"/FontFile2" in pdf  # embedded TrueType programs
    if shutil.which("pdffonts"):
        fonts = pdf_fonts(pdf_path)
        assert fonts and all("TrueType" in kind and "Type 3" not in kind for _, kind in fonts), fonts
    elif os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail("pdffonts is not installed: apt-get install poppler-utils (.ci/run does)")
    root = ET.parse(render.save_figure(fig, tmp_path / "fig.svg")).getroot()
    texts = ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "photo" in texts and any("two cats" in t for t in texts), texts[:10]
    assert {k: matplotlib.rcParams[k] for k in before} == before


def test_figures_are_saved_at_300_dpi_or_more(exp, tmp_path):
    from clipviz.cli.parser import FIGURE_DPI
    from clipviz.render.layout import FIGURE_DPI as RULE
    assert FIGURE_DPI == RULE == 300  # the CLI's copy (kept import-free) is the rule's
    fig = exp.figure()
    for dpi in (150, 299, 2401, True, "300"):
        with pytest.raises(ClipvizError, match="dpi must be a number from 300 to 2400"):
            render.save_figure(fig, tmp_path / "low.png", dpi=dpi)
    assert not (tmp_path / "low.png").exists()
    # panels sample the photo at 300 px per inch: the 130-px photo is not downsized in a 1.1 in panel,
    # a 2000-px one is (to 300 px/in of its panel)
    wide = Explanation(**{**exp.__dict__, "photo": np.zeros((1000, 2000, 3), np.uint8),
                          "crop_box": preprocess_image(np.zeros((1000, 2000, 3), np.uint8), 64)[1]})
    fig = render.explanation_figure(wide, columns=1, width="single")
    shown = [ax.get_images()[0].get_array().shape for ax in fig.axes if ax.get_images()]
    panel_in = 3.5 - 2 * 0.04
    assert shown[0][1] == round(panel_in * 300)


def test_saving_refuses_bad_paths(exp, tmp_path):
    fig = exp.figure()
    with pytest.raises(ClipvizError, match=r"\.png, \.pdf, \.svg"):
        render.save_figure(fig, tmp_path / "fig.jpg")
    with pytest.raises(ClipvizError, match="is a folder"):
        render.save_figure(fig, tmp_path)
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(ClipvizError, match="cannot create the output folder"):
        render.save_figure(fig, blocker / "out.png")
    made = render.save_figure(fig, tmp_path / "new" / "deeper" / "out.svg")
    assert made.exists()
    # never overwrite the input photo
    source = tmp_path / "photo.png"
    Image.fromarray(exp.photo).save(source)
    before = source.read_bytes()
    mine = Explanation(**{**exp.__dict__, "source": str(source)})
    with pytest.raises(ClipvizError, match="input photo"):
        mine.save(tmp_path / "." / "photo.png")
    assert source.read_bytes() == before


def test_saving_into_a_read_only_folder_says_so(exp, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with monkeypatch.context() as patch:
            if os.geteuid() == 0:  # root writes anywhere: let the permission check see what a user would
                patch.setattr(outputs.os, "access", lambda *args, **kwargs: False)
            with pytest.raises(ClipvizError, match="locked' is not writable"):
                render.save_figure(exp.figure(), locked / "out.png")
    finally:
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


def test_notebook_display_is_one_png_and_a_one_line_repr(exp):
    bundle = exp._repr_mimebundle_()
    assert set(bundle) == {"image/png", "text/plain"}  # the PNG once: no HTML copy of it
    png = base64.b64decode(bundle["image/png"])
    assert png == exp._repr_png_()  # the same drawing, deterministic
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size[0] == 525  # single column (3.5 in) at 150 dpi
    assert bundle["text/plain"] == repr(exp) and "\n" not in repr(exp) and len(repr(exp)) < 200
    assert repr(exp).startswith(f"<Explanation {exp.method}, 130×90 photo, cos {{'a dog on the <b>beach</b>': ")