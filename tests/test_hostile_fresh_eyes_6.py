"""Fresh eyes, round six: what changed on the day of e08b023..78f850a — a folder run into its own
folder, lists and folders given twice or through pipes, prompts with nothing visible, and
clipviz.forms.submodules in the hot paths.

Each test compares clipviz against an independent expectation: the first run's files (bytes),
the model's own forward pass, or the rule the README states. A finding's test fails until it is
fixed; the probes that passed are listed in the report (the lead's notes), not here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clipviz
from clipviz.errors import ClipvizError
from clipviz.preprocess import preprocess_image

from conftest import TINY_VIT, make_model

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd, cache, stdin=None):
    """``python -m clipviz explain ARGS`` with the bundled model, one torch thread and its own cache."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), CLIPVIZ_CACHE=str(cache))
    env.pop("CLIPVIZ_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "clipviz", "explain", *map(str, args)], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=300)


def save_photos(folder, names=("a.png", "c.png")):
    folder.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(names):
        pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)


def explained_sources(result):
    assert result.returncode == 0, result.stderr
    return [r["source"] for r in json.loads(result.stdout)["results"]]


def file_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- a folder run into its own folder ----------------------------------------------------------------

def test_an_image_list_from_find_into_its_own_folder_runs_again_on_the_same_photos(tmp_path):
    """`--image-list <(find photos -name '*.png') --out photos` (the README's pipe, into the photos'
    own folder) run twice: the second run lists clipviz's own unchanged overlays too, as find
    does. As with --images DIR they are outputs, not photos: the second run explains the same two
    photos and leaves the same files, byte for byte (it stopped with exit 2: "refusing to write
    photos/a--dog-e49512.png: it is one of the input images")."""
    photos, cache = tmp_path / "photos", tmp_path / "cache"
    save_photos(photos)

    def run():  # what `find photos -name '*.png'` prints at that moment, as a list file outside the folder
        listing = tmp_path / "list.txt"
        listing.write_text("".join(f"photos/{p.name}\n" for p in sorted(photos.glob("*.png"))))
        return run_cli("--json", "--image-list", listing, "--prompt", "dog", "--out", photos, cwd=tmp_path, cache=cache)

    first = explained_sources(run())
    assert first == ["photos/a.png", "photos/c.png"]
    after_first = file_bytes(photos)
    second = run()
    assert second.returncode == 0, second.stderr
    assert explained_sources(second) == first  # the overlays are not explained as photos
    assert file_bytes(photos) == after_first


def test_naming_only_clipvizs_own_output_says_so_instead_of_no_image_given(tmp_path):
    """An own, unchanged overlay named on the command line is left out like a listed one (the
    note); when nothing else was given the error says why and what to do, not "no image given"."""
    photos, cache = tmp_path / "photos", tmp_path / "cache"
    save_photos(photos, ("a.png",))
    first = run_cli("--json", "--images", photos, "--prompt", "dog", "--out", photos, cwd=tmp_path, cache=cache)
    overlay, = [p for p in photos.iterdir() if p.name != "a.png"]
    before = file_bytes(photos)
    again = run_cli(overlay, "a cat", "--out", tmp_path / "elsewhere", cwd=tmp_path, cache=cache)
    assert first.returncode == 0 and again.returncode == 2
    assert "own outputs" in again.stderr and "copy it under another name" in again.stderr
    assert "no image given" not in again.stderr
    assert file_bytes(photos) == before and not (tmp_path / "elsewhere").exists()


def test_a_folder_run_into_itself_after_the_cache_is_cleared_refuses_and_says_why(tmp_path):
    """The record of what clipviz wrote lives in its cache; `rm -rf ~/.cache` (or another user, a
    container, CLIPVIZ_CACHE set elsewhere) loses it. The second `--images photos --out photos`
    then takes a--dog-e49512.png for a photo and refuses to write a.png's overlay over it.
    Design (the lead's decision): without the record an output cannot be told from a user's
    photo (the outputs carry no mark of their own), and skipping or replacing it could lose a
    user's edit, so the refusal stays: exit 2, nothing written over. It was a bare "it is one of
    the input images"; the message must name the file, say what happened (no record: the cache
    was cleared) and what to do (another --out, or move the old outputs away)."""
    photos = tmp_path / "photos"
    save_photos(photos)
    explained_sources(run_cli("--json", "--images", photos, "--prompt", "dog", "--out", photos, cwd=tmp_path,
                              cache=tmp_path / "cache"))
    after_first = file_bytes(photos)
    overlays = sorted(set(after_first) - {"a.png", "c.png"})
    assert len(overlays) == 2
    second = run_cli("--images", photos, "--prompt", "dog", "--out", photos, cwd=tmp_path,
                     cache=tmp_path / "another-cache")
    assert second.returncode == 2, second.stderr
    assert file_bytes(photos) == after_first  # nothing overwritten, nothing new
    errors = [line for line in second.stderr.splitlines() if line.startswith("clipviz: error:")]
    assert len(errors) == 1, second.stderr
    assert any(name in errors[0] for name in overlays), errors[0]  # the file, by name
    assert "no record" in errors[0] and "cache" in errors[0]  # what happened
    assert "--out" in errors[0] and "move" in errors[0]  # what to do


# --- a list given twice ------------------------------------------------------------------------------

def test_standard_input_named_as_dash_and_as_dev_stdin_is_one_list_read_once(tmp_path):
    """`--image-list - --image-list /dev/stdin` names one list twice, under two spellings (as
    `d` and `./d/` name one folder): it is read once, with one note. It was read twice: the second
    read found stdin empty and the run stopped on "--image-list /dev/stdin: no image paths in it"."""
    save_photos(tmp_path / "photos", ("a.png",))
    result = run_cli("--json", "--image-list", "-", "--image-list", "/dev/stdin", "--prompt", "dog",
                     "--out", tmp_path / "out", cwd=tmp_path, cache=tmp_path / "cache", stdin="photos/a.png\n")
    assert explained_sources(result) == ["photos/a.png"]
    assert "read once" in result.stderr


# --- prompts with nothing visible ------------------------------------------------------------------

BRAILLE_BLANK = "\u2800"  # BRAILLE PATTERN BLANK: drawn as an empty cell, the usual "invisible character" pasted


@pytest.fixture(scope="module")
def tiny():
    return make_model(TINY_VIT, seed=6).eval()


def test_a_prompt_of_only_braille_blanks_is_refused_like_other_invisible_prompts(tiny):
    """U+2800 renders as nothing (an empty braille cell) and is what "invisible character"
    generators paste; a prompt made only of it is as empty to the eye as U+3164 HANGUL FILLER,
    which is refused. It was explained (CLIP tokenizes it to a real token)."""
    photo = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    with pytest.raises(ClipvizError, match="empty to the eye"):
        clipviz.explain(tiny, photo, "\u3164")  # the reference: refused today
    with pytest.raises(ClipvizError, match="empty to the eye"):
        clipviz.explain(tiny, photo, BRAILLE_BLANK * 3)


def test_the_cli_refuses_a_braille_blank_prompt_with_exit_2(tmp_path):
    save_photos(tmp_path / "photos", ("a.png",))
    result = run_cli("photos/a.png", "--prompt", BRAILLE_BLANK, "--out", tmp_path / "out", cwd=tmp_path,
                     cache=tmp_path / "cache")
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "empty to the eye" in result.stderr and not (tmp_path / "out").exists()


# --- submodules: a model whose image tower runs one block twice ------------------------------------------

def plain_scores(model, photo, prompts):
    """cos(image, text) of the model's own forward pass (no clipviz hooks), [P]."""
    pixels = preprocess_image(photo, model.visual.input_resolution)[0][None]
    with torch.no_grad():
        image = F.normalize(model.encode_image(pixels), dim=-1)
        text = F.normalize(model.encode_text(clipviz.tokenize(prompts)), dim=-1)
    return (image @ text.t())[0].numpy()


@pytest.mark.parametrize("method", ["relevance", "rollout", "gradcam"])
def test_an_image_tower_that_runs_one_block_twice_is_explained_or_named(tiny, method):
    """Weight tying across depth (blocks 0 and 1 of the image tower one module, as in ALBERT-style
    sharing): submodules() and find_blocks list the module once while the forward runs it twice
    (and block 2 once). Either clipviz explains the model as it runs — its scores the plain forward's
    (≤ 1e-5) — or it says the block is shared. It said "layer 2 does not exist: this encoder has
    2 blocks", about a layer the user never named."""
    shared = make_model(TINY_VIT, seed=6).eval()
    shared.visual.transformer.resblocks[1] = shared.visual.transformer.resblocks[0]
    photo = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    prompts = ["a dog", "a red car"]
    try:
        exp = clipviz.explain(shared, photo, prompts, method=method)
    except ClipvizError as error:
        assert any(word in str(error) for word in ("shared", "twice", "more than once", "same module")), str(error)
    else:
        np.testing.assert_allclose(exp.scores, plain_scores(shared, photo, prompts), atol=1e-5, rtol=0)


# --- the record of clipviz's own outputs: one line per file -------------------------------------------

@pytest.mark.parametrize("name", ["a\nb.png", "a\u2028b.png", "a\x85b.png", "a\rb.png"],
                         ids=["newline", "line-separator", "next-line", "carriage-return"])
def test_an_output_whose_name_holds_a_line_break_is_still_clipvizs_own(tiny, tmp_path, monkeypatch, name):
    """Linux file names may hold any character but '/' and NUL. The record of what clipviz wrote
    ("<sha256>  <name>" lines, read with str.splitlines, which also breaks at \\r, \\x85, U+2028 ...)
    loses such a name: the same save() again was refused ("already exists; pass overwrite=True"),
    though README says clipviz's own unchanged output is replaced, and an --images listing of the
    folder would explain the figure as a photo. Expected: the file is its own (is_own_output,
    own_outputs), and saving again succeeds."""
    from clipviz.outputs import is_own_output, own_outputs

    monkeypatch.setenv("CLIPVIZ_CACHE", str(tmp_path / "cache"))
    exp = clipviz.explain(tiny, np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8), "a dog")
    path = tmp_path / "out" / name
    path.parent.mkdir()
    exp.save(path)
    assert is_own_output(path)
    assert own_outputs(path.parent, [name]) == {name}
    exp.save(path)  # the same figure again: clipviz's own unchanged file


LATIN1_NAME = os.fsdecode(b"caf\xe9.png")  # "café.png" written by a Latin-1 system: not UTF-8, fine on Linux


def test_an_output_named_in_latin_1_is_written_and_recorded_without_a_crash(tiny, tmp_path, monkeypatch):
    """A file name that is not UTF-8 (an old archive, a FAT stick) reaches Python as surrogate
    escapes. save() wrote the file, then recording it ("<sha256>  <name>", opened as UTF-8) raised
    UnicodeEncodeError — no ClipvizError, and the file stayed unrecorded, so saving again was
    refused. Expected: the figure written, clipviz's own, and saved again without overwrite=True."""
    from clipviz.outputs import is_own_output

    monkeypatch.setenv("CLIPVIZ_CACHE", str(tmp_path / "cache"))
    exp = clipviz.explain(tiny, np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8), "a dog")
    path = tmp_path / LATIN1_NAME
    exp.save(path)
    assert is_own_output(path)
    exp.save(path)


def test_the_cli_writes_a_figure_named_in_latin_1(tmp_path):
    """`clipviz explain photo.png --prompt dog --out caf\\xe9.png` (one figure, its name in Latin-1
    bytes): the figure was written, then the run ended in "unexpected error: UnicodeEncodeError ...
    This is a bug in clipviz" (exit 1). Expected: exit 0 and the figure at that name, once."""
    save_photos(tmp_path / "photos", ("a.png",))
    result = run_cli("photos/a.png", "--prompt", "dog", "--out", LATIN1_NAME, cwd=tmp_path, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / LATIN1_NAME).format == "PNG"


# --- --resume: the same question asked in other words -------------------------------------------------

@pytest.fixture()
def first_run(tmp_path):
    """photos/ (two photos), explained into out/ with --manifest run.jsonl and nothing else given."""
    save_photos(tmp_path / "photos")
    result = run_cli("--images", "photos", "--prompt", "dog", "--out", "out", "--manifest", "run.jsonl",
                     cwd=tmp_path, cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    return tmp_path


def resumed(work, *args):
    """The resumed run's result, with the manifest's line count and out/'s bytes before and after."""
    lines, files = (work / "run.jsonl").read_text().count("\n"), file_bytes(work / "out")
    result = run_cli("--prompt", "dog", "--manifest", "run.jsonl", "--resume", *args, cwd=work, cache=work / "cache")
    return result, (lines, files), ((work / "run.jsonl").read_text().count("\n"), file_bytes(work / "out"))


@pytest.mark.parametrize("default", [("--format", "png"), ("--start-layer", "-1")], ids=["format", "start-layer"])
def test_resume_with_a_default_spelled_out_continues_the_run(first_run, tiny, default):
    """Today --resume compares the method run, so `--method relevance` continues a run that left it
    out. The same holds for the other defaults: --format png is the default format and relevance's
    start layer is -1 (the maps are equal: checked here on the API), yet `--resume --format png` or
    `--resume --start-layer -1` was refused ("other settings (--format (not given) → 'png')"). Expected:
    exit 0, every image already done, no line appended, no file rewritten."""
    photo = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    np.testing.assert_array_equal(clipviz.explain(tiny, photo, "a dog").maps,
                                  clipviz.explain(tiny, photo, "a dog", start_layer=-1).maps)
    result, before, after = resumed(first_run, "--images", "photos", "--out", "out", *default)
    assert result.returncode == 0, result.stderr
    assert after == before


def test_resume_with_the_folders_spelled_absolute_continues_the_run(first_run):
    """`--images photos --out out` resumed as `--images /abs/photos --out /abs/out` names the same
    folders (as `./photos/` does, which is accepted): --out was refused as another setting ("--out
    'out' → '/…/out'"), and --images under its absolute name redid both photos, appending
    records. Expected: exit 0, nothing redone, the manifest unchanged."""
    result, before, after = resumed(first_run, "--images", first_run / "photos", "--out", first_run / "out")
    assert result.returncode == 0, result.stderr
    assert after == before


def test_resume_with_the_photo_folder_spelled_absolute_redoes_nothing(first_run):
    """The same with only --images absolute (--out as before): both photos were explained again
    and two records appended, though each is done, unchanged, with its outputs intact."""
    result, before, after = resumed(first_run, "--images", first_run / "photos", "--out", "out")
    assert result.returncode == 0, result.stderr
    assert after == before


# --- hook checks: a hook on the module around the blocks ----------------------------------------------

def gate(x):
    """A per-token function of the features (the same on every token, so applying it to all
    tokens and then taking CLS/EOT equals taking CLS/EOT and then applying it)."""
    return x + 0.5 * torch.tanh(x.roll(1, dims=-1)) * x


@pytest.mark.parametrize("method", ["relevance", "gradeclip"])
def test_a_hook_on_the_image_blocks_container_is_part_of_the_model_explained(method):
    """A forward hook on visual.transformer (the module holding the blocks; e.g. a feature edit
    registered after loading) changes what ln_post reads. The same function as a pre-hook on
    ln_post is the same model: scores and maps must agree. Scores did; the maps differed by up to
    0.33 (relevance) and 0.80 (gradeclip) here (0.40 and 0.21 on a 2-block ViT-B/32): the last block's closed form (clipviz.last_block)
    checks hooks on the block and the head modules only, so it re-implemented the tail without
    the container's hook."""
    photo = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    prompts = ["a dog", "a red car"]
    on_container = make_model(TINY_VIT, seed=6).eval()
    on_container.visual.transformer.register_forward_hook(lambda module, args, output: gate(output))
    on_head = make_model(TINY_VIT, seed=6).eval()
    on_head.visual.ln_post.register_forward_pre_hook(lambda module, args: (gate(args[0]),))
    first, second = (clipviz.explain(m, photo, prompts, method=method) for m in (on_container, on_head))
    np.testing.assert_allclose(first.scores, second.scores, atol=1e-6, rtol=0)
    np.testing.assert_allclose(first.maps, second.maps, atol=1e-5, rtol=0)


def test_a_hook_on_the_text_blocks_container_is_part_of_the_text_relevance():
    """The text side: a forward hook on model.transformer (the text blocks' module) against the
    same function as a pre-hook on ln_final. Scores agreed; text-token relevance differed by
    0.056 here (4e-3 on a 2-block ViT-B/32) (the text tower's closed form skipped the container's hook)."""
    photo = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    prompts = ["a photo of a dog", "a red car"]
    on_container = make_model(TINY_VIT, seed=6).eval()
    on_container.transformer.register_forward_hook(lambda module, args, output: gate(output))
    on_head = make_model(TINY_VIT, seed=6).eval()
    on_head.ln_final.register_forward_pre_hook(lambda module, args: (gate(args[0]),))
    first, second = (clipviz.explain(m, photo, prompts) for m in (on_container, on_head))
    np.testing.assert_allclose(first.scores, second.scores, atol=1e-6, rtol=0)
    for ours, reference in zip(first.text_relevance, second.text_relevance):
        np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["relevance", "gradeclip"])
def test_a_last_block_whose_forward_is_patched_on_the_instance_is_explained_as_patched(method):
    """clipviz.last_block.block_parts says a forward patched on the instance sends the block to the
    general path; it looks only at the attention's. A last block whose own forward is wrapped on
    the instance (`block.forward = ...`, as monkey-patching libraries do) against the same function
    as a forward hook on that block: scores agreed, the maps differed by 0.33 (relevance) and
    0.80 (gradeclip) — the closed form re-implemented the stock block."""
    import types

    photo = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    prompts = ["a dog", "a red car"]
    patched = make_model(TINY_VIT, seed=6).eval()
    block = patched.visual.transformer.resblocks[-1]
    stock = type(block).forward
    block.forward = types.MethodType(lambda self, x, *args, **kwargs: gate(stock(self, x, *args, **kwargs)), block)
    hooked = make_model(TINY_VIT, seed=6).eval()
    hooked.visual.transformer.resblocks[-1].register_forward_hook(lambda module, args, output: gate(output))
    first, second = (clipviz.explain(m, photo, prompts, method=method) for m in (patched, hooked))
    np.testing.assert_allclose(first.scores, second.scores, atol=1e-6, rtol=0)
    np.testing.assert_allclose(first.maps, second.maps, atol=1e-5, rtol=0)


# --- image lists from pipes under torchrun -------------------------------------------------------------

TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "clipviz",
            "explain")


@pytest.mark.parametrize("pipe", ["stdin", "process-substitution", "named-fifo"])
def test_an_image_list_pipe_under_torchrun_is_read_or_refused_in_one_line(tmp_path, pipe):
    """README: --image-list reads a pipe (`<(find ...)`, a named pipe, `-`), and a folder run may
    be launched with torchrun. Together: torchrun's workers inherit neither the shell's stdin nor
    its /dev/fd/63, and only one worker can read a named pipe's one stream. Seen: `-` failed with
    "--image-list -: no image paths in it", `<(...)` with "image list '/dev/fd/63' does not exist"
    (neither names the cause), and a named pipe hung (one worker waits on it for ever). Expected:
    within two minutes, both photos explained (the manifest has two done records), or exit 2 with
    one error that names torchrun."""
    import contextlib
    import shlex
    import signal

    save_photos(tmp_path / "photos")
    listing = "photos/a.png\nphotos/c.png\n"
    command = " ".join(map(shlex.quote, (*TORCHRUN, "--prompt", "dog", "--out", "out", "--manifest", "run.jsonl",
                                         "--workers", "0", "--device", "cpu", "--quiet", "--image-list")))
    if pipe == "stdin":
        shell = f"printf {shlex.quote(listing)} | {command} -"
    elif pipe == "process-substitution":
        shell = f"{command} <(printf {shlex.quote(listing)})"
    else:
        os.mkfifo(tmp_path / "list.fifo")
        shell = f"(printf {shlex.quote(listing)} > list.fifo &); {command} list.fifo"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), CLIPVIZ_CACHE=str(tmp_path / "cache"))
    env.pop("CLIPVIZ_DEBUG", None)
    with open(tmp_path / "stderr.txt", "w") as err_file:  # a file, not a pipe: a stuck worker cannot hold it
        process = subprocess.Popen(["bash", "-c", shell], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                   stderr=err_file, start_new_session=True)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # bash and torchrun (its workers run in their own sessions)
            process.wait()
            if pipe == "named-fifo":  # the worker still waiting on the pipe: give it an end, so it exits
                with contextlib.suppress(OSError):
                    os.close(os.open(tmp_path / "list.fifo", os.O_WRONLY | os.O_NONBLOCK))
            pytest.fail(f"--image-list from a {pipe} under torchrun still running after 120 s")
    err = (tmp_path / "stderr.txt").read_text()
    if process.returncode == 0:
        records = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
        assert sorted(r["image"] for r in records if r["status"] == "done") == ["photos/a.png", "photos/c.png"]
    else:
        errors = [line for line in err.splitlines() if line.startswith("clipviz: error:")]
        assert errors and all("torchrun" in line for line in errors), "\n".join(errors) or err[-2000:]
