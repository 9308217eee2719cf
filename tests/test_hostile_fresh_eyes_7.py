"""Fresh eyes, round seven: what changed in 29f3646..4a7f633 — the closed forms' fallback on any
hook in a tower, blocks shared across depth refused, --resume comparing folders as absolute paths,
and token labels of characters split over BPE tokens.

Each test compares clipviz against an independent expectation (the rule the README or the error
guideline states, the first run's files). A finding's test fails until it is fixed; the probes
that passed are listed in the report (the lead's notes), not here.
"""

import numpy as np
import pytest
import torch

import clipviz
import clipviz.model
from clipviz.errors import ClipvizError

from test_hostile_fresh_eyes_6 import file_bytes, run_cli, save_photos


# --- blocks shared only in the text tower ------------------------------------------------------------

def test_text_tower_with_shared_blocks_refusal_names_the_text_tower_and_text_false():
    """A CLIP whose *image* tower is as built but whose text tower repeats one block (weights shared
    across depth) explains its image with every method, and with relevance under text=False. The
    default call `explain(model, image, prompts)` (relevance, text-token relevance on) refuses:
    fine, but the message says "block 0 of Transformer is the same module at more than one place
    ... explain a copy whose blocks are separate modules" — the OpenAI image tower's class is
    also `Transformer`, so the user cannot tell which tower it means, and the one-flag way out
    (text=False, the image map needs no text blocks) is not named. Expected (one ClipvizError
    that says what was wrong and what to do): the message names the text tower and text=False."""
    torch.manual_seed(0)
    model = clipviz.model.random_model("ViT-B/32", vision_layers=2, transformer_layers=2)
    model.transformer.resblocks[1] = model.transformer.resblocks[0]
    photo = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image_only = clipviz.explain(model, photo, ["a dog", "a cat"], method="relevance", text=False)
    assert image_only.text_relevance is None  # the image map needs no text blocks: it is explained
    with pytest.raises(ClipvizError) as refused:
        clipviz.explain(model, photo, ["a dog", "a cat"])
    message = str(refused.value)
    assert "text" in message.lower() and "text=False" in message, message


# --- --resume from another folder --------------------------------------------------------------------

def test_resume_from_a_subfolder_naming_the_same_folders_continues_the_run(tmp_path):
    """A run `--images photos --out out --manifest run.jsonl` in work/, resumed from work/sub/ as
    `--images ../photos --out ../out --manifest ../run.jsonl --resume`: the same photos, the same
    output folder, the same manifest (4fd1dfd/397c353 made absolute and relative spellings one
    folder). The record keeps the relative names as given and _resolved/done_images take them
    against the *resuming* run's folder, so `out` becomes work/sub/out and the resume is refused
    as another setting. Expected: exit 0, nothing redone, the manifest and out/ unchanged."""
    save_photos(tmp_path / "photos")
    first = run_cli("--images", "photos", "--prompt", "dog", "--out", "out", "--manifest", "run.jsonl",
                    cwd=tmp_path, cache=tmp_path / "cache")
    assert first.returncode == 0, first.stderr
    (tmp_path / "sub").mkdir()
    lines, files = (tmp_path / "run.jsonl").read_text(), file_bytes(tmp_path / "out")
    again = run_cli("--images", "../photos", "--prompt", "dog", "--out", "../out", "--manifest", "../run.jsonl",
                    "--resume", cwd=tmp_path / "sub", cache=tmp_path / "cache")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "run.jsonl").read_text() == lines
    assert file_bytes(tmp_path / "out") == files
