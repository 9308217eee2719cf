"""Every notebook under notebooks/ runs top to bottom offline, and every figure cell shows its
figure: exactly one inline PNG per cell that ends in a figure, none elsewhere."""

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# a cell ends in a figure when its last line is one of these expressions
FIGURE_LINE = re.compile(r"^(exp|figure|exp\.figure\(.*\))\s*(#.*)?$")
# figure cells each notebook must have (so a notebook cannot pass by losing its figures)
FIGURE_CELLS = {"01_quickstart": 2, "02_methods": 2, "03_layers_and_heads": 2, "04_build_clip_blocks": 0}


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4, [n.name for n in NOTEBOOKS]
    assert set(FIGURE_CELLS) == {p.stem for p in NOTEBOOKS}


def execute(notebook, folder, tmp_path, monkeypatch):
    # no MPLBACKEND: the kernel's own default (matplotlib-inline), as a user's Jupyter has it
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("CLIPVIZ_NOTEBOOK_OUT", str(tmp_path))  # notebooks save figures here
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(folder)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    return notebook


def images(cell):
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_shows_its_figures(path, tmp_path, monkeypatch):
    notebook = execute(nbformat.read(path, as_version=4), path.parent, tmp_path, monkeypatch)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [o for cell in code for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    figure_cells = [cell for cell in code if FIGURE_LINE.match(cell.source.strip().splitlines()[-1])]
    assert len(figure_cells) == FIGURE_CELLS[path.stem]
    assert [images(cell) for cell in figure_cells] == [1] * len(figure_cells)  # shown, and only once
    assert sum(images(cell) for cell in code) == len(figure_cells)  # nothing shown twice elsewhere
    for cell in figure_cells:  # the plain-text fallback is one short line, not an array dump
        for output in cell.outputs:
            text = output.get("data", {}).get("text/plain", "")
            assert len(text) < 200 and "\n" not in text, text[:300]


CELLS = [
    "import clipviz, numpy as np\n"
    "from clipviz.render import comparison_grid, layer_strip, head_grid\n"
    "photo = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)\n"
    "model, _ = clipviz.load('synth-vit-t16')\n"
    "exp = clipviz.explain(model, photo, ['a red square', 'a blue circle'], start_layer=0)",
    "exp",
    "exp.figure()",
    "comparison_grid({'relevance': exp})",
    "layer_strip(exp)",
    "head_grid(exp)",
    "print(repr(exp))",
]


@pytest.mark.parametrize("setup", ["", "import matplotlib.pyplot as plt", "%matplotlib inline"])
def test_each_figure_displays_once_with_or_without_pyplot(setup, tmp_path, monkeypatch):
    """With pyplot imported (the inline backend's PNG printer registered) or not, each figure
    expression gives one PNG; a bare ``exp`` too, and its repr is one short line."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(setup)] +
                                        [nbformat.v4.new_code_cell(source) for source in CELLS])
    cells = execute(notebook, tmp_path, tmp_path, monkeypatch).cells[1:]
    assert [images(cell) for cell in cells] == [0, 1, 1, 1, 1, 1, 0]
    printed = cells[-1].outputs[0]["text"].strip()
    assert re.fullmatch(r"<Explanation relevance, 90×60 photo, cos \{'a red square': -?[0-9.]+, "
                        r"'a blue circle': -?[0-9.]+\}>", printed), printed
