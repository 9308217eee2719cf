"""The self-contained HTML report: one file with everything embedded, its maps equal to direct
``explain`` maps, and — in a real headless Chromium (Debian's package, driven by selenium) —
switching a prompt, a method, a block and the opacity changes what the page shows."""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import clipviz
from clipviz.maps import map_to_photo, normalise_maps
from clipviz.model import CLIP
from clipviz.preprocess import CropBox
from clipviz.render import colorize
from clipviz.report import MAP_SIDE, report_html

from conftest import TINY_VIT, perturbed

PROMPTS = ["a red car", "a green tree"]
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1000,1200"]


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(3).integers(0, 256, (60, 96, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def page(tiny_vit, image):
    return report_html(tiny_vit, image, PROMPTS, alpha=0.4)


def embedded(page):
    return json.loads(re.search(r'<script type="application/json" id="clipviz-data">(.*?)</script>', page, re.S)
                      .group(1).replace("<\\/", "</"))


def decode(data_url):
    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as png:
        return np.asarray(png)


def test_the_page_is_one_file_with_every_map_embedded(tiny_vit, image, page):
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing to fetch: no server, no network
    assert "http" not in page.replace('lang="en"', "")
    data = embedded(page)
    methods = {m["name"]: m for m in data["methods"]}
    assert list(methods) == [m for m in clipviz.available_methods() if m != "attention_pool"]
    assert methods["relevance"]["layers"] == [0, 1, 2] and methods["relevance"]["default"] == 2
    assert methods["rollout"]["default"] == 0 and methods["legrad"]["default"] == 1
    assert len(data["maps"]) == len(PROMPTS) * len(methods) * 3
    for method, layer, option in (("relevance", 0, "start_layer"), ("gradcam", 1, "layer"), ("legrad", 2, "start_layer")):
        exp = clipviz.explain(tiny_vit, image, PROMPTS[1], method=method, **{option: layer})
        square = CropBox(0.0, 0.0, float(MAP_SIDE), float(MAP_SIDE), MAP_SIDE, MAP_SIDE, MAP_SIDE)
        heat = map_to_photo(normalise_maps(exp.token_maps), square)[0]
        expected = np.floor(colorize(heat) + 0.5)
        rgba = decode(data["maps"][f"1|{method}|{layer}"])
        # opacity k / 255 at colour level k = floor(256 v): overlay's blend, the photo where v = 0
        levels = np.minimum(np.floor(heat * 256), 255)
        assert rgba.shape == (MAP_SIDE, MAP_SIDE, 4) and (rgba[..., 3] == levels).all()
        assert np.abs(rgba[..., :3].astype(int) - expected).max() <= 1, method
    both = clipviz.explain(tiny_vit, image, PROMPTS)  # scores and softmax over the report's prompts
    assert np.allclose([p["cos"] for p in data["prompts"]], both.scores, atol=1e-5)
    assert np.allclose([p["prob"] for p in data["prompts"]], both.probs, atol=1e-5)
    photo = decode(re.search(r'id="photo"[^>]*src="(data:[^"]+)"', page).group(1))
    assert photo.shape == image.shape and np.array_equal(photo, image)  # small photos are embedded as they are
    assert 'id="photo" width="480" height="300"' in page  # ... and shown at least 480 px wide


def test_a_contrast_report_shows_both_scores_and_only_prompt_specific_methods(tiny_vit, image):
    data = embedded(report_html(tiny_vit, image, PROMPTS[0], against=PROMPTS[1]))
    assert "rollout" not in {m["name"] for m in data["methods"]}
    contrast = data["prompts"][0]["contrast"]
    expected = clipviz.explain(tiny_vit, image, PROMPTS[0], against=PROMPTS[1]).contrast()[0]
    assert contrast == pytest.approx(expected, rel=1e-5)


# --- in a real browser ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    if not os.path.exists(CHROMEDRIVER) or not shutil.which("chromium"):
        pytest.fail("Chromium is not installed: apt-get install chromium chromium-driver (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def visible(driver):
    """What the page shows: the state line, the heat image, its opacity, the block slider."""
    return driver.execute_script(
        "const h = document.getElementById('heat');"
        "return {state: document.getElementById('state').textContent, src: h.getAttribute('src'),"
        " opacity: getComputedStyle(h).opacity, loaded: h.complete && h.naturalWidth,"
        " layer: document.getElementById('layer').value, layerDisabled: document.getElementById('layer').disabled,"
        " current: document.querySelector('#scores tr.current td').textContent};")


def choose(driver, element_id, value, event="change"):
    driver.execute_script(f"const e = document.getElementById('{element_id}'); e.value = arguments[0];"
                          f"e.dispatchEvent(new Event('{event}'));", value)


def test_switches_work_in_headless_chromium(browser, page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    browser.get(path.as_uri())
    data = embedded(page)
    shown = visible(browser)
    assert shown["state"].startswith(f"“{PROMPTS[0]}” · relevance · start block 2 · opacity 0.40 · cos ")
    assert shown["src"] == data["maps"]["0|relevance|2"] and shown["loaded"] == MAP_SIDE
    assert float(shown["opacity"]) == pytest.approx(0.4) and shown["current"] == PROMPTS[0]

    Select(browser.find_element(By.ID, "prompt")).select_by_visible_text(PROMPTS[1])  # a real user's choice
    shown = visible(browser)
    assert shown["state"].startswith(f"“{PROMPTS[1]}” · relevance · start block 2")
    assert f"cos {data['prompts'][1]['cos']:.3f}, p {data['prompts'][1]['prob']:.2f}" in shown["state"]
    assert shown["src"] == data["maps"]["1|relevance|2"] and shown["current"] == PROMPTS[1]

    choose(browser, "method", "rollout")  # its own default block: 0
    shown = visible(browser)
    assert shown["layer"] == "0" and shown["src"] == data["maps"]["1|rollout|0"]
    choose(browser, "layer", "1", "input")
    choose(browser, "opacity", "0.85", "input")
    shown = visible(browser)
    assert shown["src"] == data["maps"]["1|rollout|1"] and float(shown["opacity"]) == pytest.approx(0.85)
    assert "rollout · start block 1 · opacity 0.85" in shown["state"]
    choose(browser, "method", "attention")
    assert visible(browser)["state"].startswith(f"“{PROMPTS[1]}” · attention · block 2")


# --- the command line -----------------------------------------------------------------------------

def test_cli_writes_one_report_and_nothing_else(tmp_path, image):
    torch.manual_seed(7)
    torch.save(perturbed(CLIP(**TINY_VIT), seed=7).state_dict(), tmp_path / "tiny.pt")
    Image.fromarray(image).save(tmp_path / "p.png")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "clipviz", "explain", "p.png", *PROMPTS, "--model", "tiny.pt",
               "--method", "gradcam", "--html", "r.html", "--json"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["files"] == ["r.html"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "r.html", "tiny.pt"]  # nothing else written
    data = embedded((tmp_path / "r.html").read_text(encoding="utf-8"))
    assert data["methods"][0]["name"] == "gradcam"  # --method is shown first
    again = subprocess.run(command + ["--force"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    Image.fromarray(image).save(tmp_path / "q.png")
    refused = subprocess.run(command + ["--image", "q.png"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and refused.stderr.startswith("clipviz: error: --html writes the report of one image")
