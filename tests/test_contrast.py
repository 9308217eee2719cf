"""Contrastive explanations say what they explain: S(prompt), S(against) and their difference in
the API, the printed table, the figure title and the JSON, each checked against scores computed
here from the model's own encoders; prompt-agnostic methods refuse a contrast."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import clipviz
from clipviz import render
from clipviz.errors import ClipvizError
from clipviz.preprocess import preprocess_image

PROMPT, AGAINST = "a red square", "a blue circle"


def photo(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (70, 100, 3), dtype=np.uint8)


def plain_logits(model, image, prompts):
    """S = exp(logit_scale) · cos(image, text), straight from the model's encoders."""
    pixels, _ = preprocess_image(image, model.visual.input_resolution)
    with torch.no_grad():
        image_emb = model.encode_image(pixels[None].float())
        text_emb = model.encode_text(clipviz.tokenize(prompts))
    cos = torch.nn.functional.normalize(image_emb, dim=-1) @ torch.nn.functional.normalize(text_emb, dim=-1).t()
    return (model.logit_scale.exp() * cos)[0].detach().double().numpy()


@pytest.fixture(scope="module")
def bundled():
    return clipviz.load("synth-vit-t16")[0]


@pytest.fixture(scope="module")
def contrast(bundled):
    return clipviz.explain(bundled, photo(), [PROMPT, "a green cross"], against=AGAINST, method="relevance")


def test_contrast_reports_both_scores_and_their_difference(bundled, contrast):
    s_prompt, s_cross, s_against = plain_logits(bundled, photo(), [PROMPT, "a green cross", AGAINST])
    rows = contrast.contrast()
    assert [(r["prompt"], r["against"]) for r in rows] == [(PROMPT, AGAINST), ("a green cross", AGAINST)]
    assert np.allclose([r["S_prompt"] for r in rows], [s_prompt, s_cross], rtol=1e-4, atol=1e-4)
    assert np.allclose([r["S_against"] for r in rows], [s_against] * 2, rtol=1e-4, atol=1e-4)
    assert np.allclose([r["S_difference"] for r in rows], [s_prompt - s_against, s_cross - s_against], atol=1e-4)
    # the probability is the prompt's against its own contrast prompt, not a softmax over one prompt
    expected = 1 / (1 + np.exp(-(np.array([s_prompt, s_cross]) - s_against)))
    assert np.allclose(contrast.probs, expected, atol=1e-5)
    assert contrast.to_dict()["contrast"] == rows
    assert clipviz.explain(bundled, photo(), PROMPT, method="relevance").contrast() is None


def test_figure_title_shows_both_scores_and_the_difference(contrast):
    texts = [t.get_text().replace("\u00a0", " ") for t in contrast.figure(width="double").texts]
    for row in contrast.contrast():
        line = f"S {row['S_prompt']:.2f} − {row['S_against']:.2f} = {row['S_difference']:+.2f}"
        assert line in texts, (line, texts)
    assert f"“{PROMPT}” vs. “{AGAINST}”" in texts
    strip = [t.get_text() for t in render.layer_strip(contrast).texts]
    assert any("= " in t and "vs." in t for t in strip)


@pytest.mark.parametrize("method", ["rollout", "attention"])
def test_prompt_agnostic_methods_refuse_a_contrast(bundled, method):
    with pytest.raises(ClipvizError, match=f"method '{method}' ignores the prompt.*relevance"):
        clipviz.explain(bundled, photo(), PROMPT, against=AGAINST, method=method)
    clipviz.explain(bundled, photo(), PROMPT, method=method)  # without a contrast it is fine


def run_cli(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "clipviz", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_table_and_json_show_the_contrast(bundled, tmp_path):
    Image.fromarray(photo()).save(tmp_path / "p.png")
    s_prompt, s_against = plain_logits(bundled, photo(), [PROMPT, AGAINST])
    table = run_cli("explain", "p.png", PROMPT, "--against", AGAINST, "--out", "o", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[1:3]
    assert header.split() == ["prompt", "S(prompt)", "S(against)", "difference", "p(prompt|pair)", "peak", "(x,", "y)"]
    numbers = row[len(f"  {PROMPT}"):].split()[:4]
    assert np.allclose([float(n) for n in numbers[:3]], [s_prompt, s_against, s_prompt - s_against], atol=2e-3)
    assert abs(float(numbers[3].rstrip("%")) - 100 / (1 + np.exp(s_against - s_prompt))) <= 0.051  # 0.1 %
    listed = run_cli("explain", "p.png", PROMPT, "--against", AGAINST, "--out", "j", "--json", cwd=tmp_path)
    result = json.loads(listed.stdout)["results"][0]
    assert np.allclose([result["contrast"][0][k] for k in ("S_prompt", "S_against", "S_difference")],
                       [s_prompt, s_against, s_prompt - s_against], atol=1e-4)


def test_cli_refuses_a_contrast_for_rollout_in_one_line(tmp_path):
    Image.fromarray(photo()).save(tmp_path / "p.png")
    result = run_cli("explain", "p.png", PROMPT, "--against", AGAINST, "--method", "rollout", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("clipviz: error: method 'rollout' ignores the prompt")
    assert not (tmp_path / "clipviz-out").exists() or not any((tmp_path / "clipviz-out").iterdir())


def test_one_prompt_shows_no_softmax_over_itself(bundled):
    exp = clipviz.explain(bundled, photo(), PROMPT, method="relevance")
    assert exp.probs.tolist() == [1.0]  # a softmax over one prompt: always 1, so the title leaves it out
    texts = [t.get_text().replace("\u00a0", " ") for t in exp.figure().texts]  # no-break spaces
    assert f"cos {exp.scores[0]:.3f}" in texts and not any("· p " in t for t in texts)
