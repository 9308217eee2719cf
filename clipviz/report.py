"""A self-contained HTML report: one file, no server, with the explorer's switches in plain JS.

    html = report_html(model, "dog.jpg", ["a dog", "a ball"])     # str
    write_report("report.html", html)                             # clipviz explain ... --html report.html

Every (prompt, method, block) map is computed here, in Python, and embedded as a base64 RGBA PNG
of the square the model saw, coloured with the same table as ``clipviz.render.overlay`` (alpha
0 where the model saw nothing, k / 255 at colour level k). The page stacks it over the embedded
photo at that square's place; the opacity slider sets its CSS opacity α, so the browser composites
(1 − α · k/255) · photo + α · k/255 · colour — ``overlay``'s blend (zero relevance: the photo). Switching prompt, method or block only swaps
which embedded PNG is shown: nothing is computed in the browser and nothing is fetched.

Maps are recorded through ``clipviz.explorer.Session``: the model runs once per (prompt,
method), and every block's map is computed from that one recording.
"""

import base64
import html
import io
import json

import numpy as np

from .errors import ClipvizError
from .explorer import Session, layer_option
from .maps import map_to_photo, normalise_maps
from .preprocess import CropBox
from .outputs import OVERWRITE_HINT
from .render import colorize, colormap_table, colour_levels
from .suffixes import HTML_SUFFIXES

PHOTO_SIDE = 720   # longest side of the embedded photo, in pixels
SHOWN_SIDE = 480   # smaller photos are shown (not stored) at least this large
MAP_SIDE = 224     # side of each embedded map square, in pixels (the browser scales it to the photo)


def report_html(model, image, prompts, methods=None, *, first=None, against=None, alpha=0.5, cmap="jet",
                title=None):
    """The report as one HTML string.

    model, image, prompts (str or list), against: as for ``clipviz.explain``. methods: names to
    include (default: every method the model supports, ``Session.methods()``); first: the one
    shown when the page opens (default the first). alpha: the starting opacity in [0, 1].
    cmap: the colour map of the maps.
    """
    session = Session(model, image, against)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    methods = list(methods or session.methods())
    if first is not None:
        methods = [first] + [m for m in methods if m != first]
    unknown = [m for m in methods if m not in session.methods()]
    if unknown:
        raise ClipvizError(f"method {unknown[0]!r} cannot be shown for this model{' with a contrast' if against else ''}:"
                           f" choose from {', '.join(session.methods())}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ClipvizError(f"alpha must be between 0 (photo only) and 1 (heatmap only), got {alpha}")
    photo_png, (width, height) = _photo(session.photo)
    zoom = max(1.0, SHOWN_SIDE / max(width, height))
    width, height = round(width * zoom), round(height * zoom)
    data = {"prompts": [], "methods": [], "maps": {}, "alpha": float(alpha), "against": against}
    box = None
    for method in methods:
        name = layer_option(method) if session.num_layers else None
        layers = list(range(session.num_layers)) if name else [None]
        default = session.default_layer(method) if name else None
        data["methods"].append({"name": method, "layers": layers, "default": default,
                                "layer_label": {"start_layer": "start block", "layer": "block"}.get(name, "block")})
        for p, prompt in enumerate(prompts):
            for layer in layers:
                exp = session.explanation(prompt, method, layer)
                data["maps"][f"{p}|{method}|{layer}"] = _map_png(exp.token_maps[0], cmap)
                box = exp.crop_box
    for p, prompt in enumerate(prompts):  # scores do not depend on the method: read them off the first
        exp = session.explanation(prompt, methods[0], session.default_layer(methods[0]))
        data["prompts"].append({"text": exp.prompts[0], "cos": float(exp.scores[0]), "logit_scale": exp.logit_scale,
                                "contrast": (exp.contrast() or [None])[0]})
    logits = np.array([d["cos"] * d["logit_scale"] for d in data["prompts"]])
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()  # softmax over the prompts
    for entry, prob in zip(data["prompts"], probs):
        entry["prob"] = float(prob)
    place = {"left": box.left / box.photo_width, "top": box.top / box.photo_height,
             "width": box.width / box.photo_width, "height": box.height / box.photo_height}
    colours = ",".join(f"rgb({r},{g},{b})" for r, g, b in np.round(255 * colormap_table(cmap)[::32]).astype(int))
    return _PAGE.format(
        title=html.escape(title or "clipviz report"), photo=photo_png, width=width, height=height,
        place=";".join(f"{k}:{100 * v:.4f}%" for k, v in place.items()),
        data=json.dumps(data).replace("</", "<\\/"), gradient=colours, cmap=html.escape(cmap))


def write_report(path, page, *, protect=(), overwrite=False):
    """Write the page atomically to ``path`` (.html) → Path; never over ``protect`` (the input
    photo). An existing file is replaced only with ``overwrite=True`` or when clipviz wrote it and
    it is unchanged since (clipviz.outputs.is_own_output); else ClipvizError."""
    from .outputs import check_target, refuse_existing, write_atomically
    path = check_target(path, HTML_SUFFIXES, protect)
    refuse_existing([path], overwrite, OVERWRITE_HINT)
    return write_atomically(path, lambda handle: handle.write(page.encode("utf-8")), overwrite, OVERWRITE_HINT)


def _photo(photo):
    """The photo downsized to PHOTO_SIDE, as a base64 PNG, and its (width, height)."""
    from PIL import Image
    image = Image.fromarray(photo)
    image.thumbnail((PHOTO_SIDE, PHOTO_SIDE), Image.Resampling.LANCZOS)
    return _png(image), image.size


def _map_png(token_map, cmap):
    """A [g, g] map → its min–max scaled, bilinearly upsampled square, coloured: base64 RGBA PNG."""
    from PIL import Image
    square = CropBox(0.0, 0.0, float(MAP_SIDE), float(MAP_SIDE), MAP_SIDE, MAP_SIDE, MAP_SIDE)
    heat = map_to_photo(normalise_maps(np.asarray(token_map)[None]), square)[0]
    rgb = np.floor(colorize(heat, cmap) + 0.5).astype(np.uint8)
    alpha = colour_levels(heat).astype(np.uint8)  # k / 255 of opacity, as overlay's level_opacity
    return _png(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))


def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="generator" content="clipviz">
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }}
#controls {{ display: grid; grid-template-columns: max-content 320px; gap: 6px 12px; align-items: center; }}
#stage {{ position: relative; display: inline-block; margin-top: 12px; max-width: 100%; }}
#photo {{ display: block; max-width: 100%; height: auto; }}
#heat {{ position: absolute; {place}; }}
#box {{ position: absolute; {place}; box-sizing: border-box; border: 1px dashed #fff; pointer-events: none; }}
#bar {{ width: 240px; height: 10px; background: linear-gradient(to right, {gradient}); display: inline-block; vertical-align: middle; }}
table {{ border-collapse: collapse; margin-top: 10px; }} td, th {{ padding: 2px 10px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} tr.current {{ background: #eef; }}
</style></head><body>
<h1 style="font-size:18px">{title}</h1>
<div id="controls">
<label for="prompt">prompt</label><select id="prompt"></select>
<label for="method">method</label><select id="method"></select>
<label for="layer" id="layer-label">start block</label><span><input type="range" id="layer" min="0" max="0" step="1"> <span id="layer-value"></span></span>
<label for="opacity">opacity</label><span><input type="range" id="opacity" min="0" max="1" step="0.05"> <span id="opacity-value"></span></span>
</div>
<p id="state"></p>
<div id="stage"><img id="photo" width="{width}" height="{height}" alt="photo" src="{photo}"><img id="heat" alt="heatmap"><div id="box"></div></div>
<p><span style="font-size:12px">0</span> <span id="bar"></span> <span style="font-size:12px">1</span>
 relevance (per-map min–max, {cmap}); the dashed square is what the model saw.</p>
<table id="scores"></table>
<script type="application/json" id="clipviz-data">{data}</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("clipviz-data").textContent);
const $ = (id) => document.getElementById(id);
const fmt = (x, d) => (x >= 0 ? "+" : "") + x.toFixed(d);
data.prompts.forEach((p, i) => $("prompt").add(new Option(p.text, i)));
data.methods.forEach((m) => $("method").add(new Option(m.name, m.name)));
$("opacity").value = data.alpha;
function method() {{ return data.methods.find((m) => m.name === $("method").value); }}
function score(p) {{
  if (p.contrast) {{
    const c = p.contrast;
    return "S(prompt) " + c.S_prompt.toFixed(2) + ", S(against \\u201c" + c.against + "\\u201d) " + c.S_against.toFixed(2) +
      ", difference " + fmt(c.S_difference, 2);
  }}
  return "cos " + p.cos.toFixed(3) + ", p " + p.prob.toFixed(2);
}}
function methodChanged() {{
  const m = method();
  const slider = $("layer");
  slider.disabled = m.layers[0] === null;
  slider.max = Math.max(0, m.layers.length - 1);
  slider.value = m.default === null ? 0 : m.default;
  $("layer-label").textContent = m.layer_label;
  show();
}}
function show() {{
  const m = method(), p = Number($("prompt").value);
  const layer = m.layers[0] === null ? null : Number($("layer").value);
  const alpha = Number($("opacity").value);
  $("heat").src = data.maps[p + "|" + m.name + "|" + layer];
  $("heat").style.opacity = alpha;
  $("layer-value").textContent = layer === null ? "-" : String(layer);
  $("opacity-value").textContent = alpha.toFixed(2);
  const prompt = data.prompts[p];
  $("state").textContent = "\\u201c" + prompt.text + "\\u201d" + (data.against ? " vs. \\u201c" + data.against + "\\u201d" : "") +
    " \\u00b7 " + m.name + (layer === null ? "" : " \\u00b7 " + m.layer_label + " " + layer) +
    " \\u00b7 opacity " + alpha.toFixed(2) + " \\u00b7 " + score(prompt);
  document.querySelectorAll("#scores tr.row").forEach((row, i) => row.classList.toggle("current", i === p));
}}
const table = $("scores");
table.insertRow().innerHTML = data.against ? "<th>prompt</th><th>S(prompt)</th><th>S(against)</th><th>difference</th>"
                                           : "<th>prompt</th><th>cos</th><th>p (softmax over prompts)</th>";
data.prompts.forEach((p) => {{
  const row = table.insertRow();
  row.className = "row";
  const cells = p.contrast ? [p.text, p.contrast.S_prompt.toFixed(3), p.contrast.S_against.toFixed(3), fmt(p.contrast.S_difference, 3)]
                           : [p.text, p.cos.toFixed(4), p.prob.toFixed(3)];
  cells.forEach((text) => {{ row.insertCell().textContent = text; }});
}});
$("prompt").addEventListener("change", show);
$("method").addEventListener("change", methodChanged);
$("layer").addEventListener("input", show);
$("opacity").addEventListener("input", show);
methodChanged();
</script></body></html>
"""
