"""Fresh eyes, round seven: what changed in 29f3646..4a7f633 — the closed forms' fallback on any
hook in a tower, blocks shared across depth refused, --resume comparing folders as absolute paths,
and token labels of characters split over BPE tokens.

Each test compares clipviz against an independent expectation (the rule the README or the error
guideline states, the first run's files). A finding's test fails until it is fixed; the probes
that passed are listed in the report (the lead's notes), not here.
"""

import json
import os

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


# --- photos named in non-UTF-8 bytes -----------------------------------------------------------------

def test_an_image_list_from_find_naming_a_latin1_photo_explains_it_as_images_does(tmp_path):
    """4e2ee17 made outputs of photos named in non-UTF-8 bytes (a Latin-1 'café.png', as old
    cameras and Windows shares write them) recorded and printed: `--images photos` explains such a
    folder, 'caf\\udce9.png' included, and leaves the same files when run again. The README's
    other way in, `--image-list <(find photos -name '*.png')`, gets that name from find as its raw
    bytes, and the whole list is refused: "--image-list ...: not UTF-8 text; write one image path
    per line" — though each line is one path, exactly as the file system spells it. Expected: the
    list explains the same photos, in the same order, as --images on the folder (paths decoded as
    Python decodes file names, os.fsdecode)."""
    photos, cache = tmp_path / "photos", tmp_path / "cache"
    save_photos(photos, names=("a.png", os.fsdecode(b"caf\xe9.png")))
    by_folder = run_cli("--json", "--images", "photos", "--prompt", "dog", "--out", "out", cwd=tmp_path, cache=cache)
    assert by_folder.returncode == 0, by_folder.stderr
    expected = [r["source"] for r in json.loads(by_folder.stdout)["results"]]
    assert expected == ["photos/a.png", "photos/" + os.fsdecode(b"caf\xe9.png")]
    listing = tmp_path / "list.txt"  # what `find photos -name '*.png' | sort` prints, byte for byte
    listing.write_bytes(b"".join(b"photos/" + os.fsencode(p.name) + b"\n" for p in sorted(photos.iterdir())))
    by_list = run_cli("--json", "--image-list", listing, "--prompt", "dog", "--out", "out2", cwd=tmp_path, cache=cache)
    assert by_list.returncode == 0, by_list.stderr
    assert [r["source"] for r in json.loads(by_list.stdout)["results"]] == expected
