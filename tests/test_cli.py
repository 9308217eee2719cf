"""The `clipviz` command end to end, through `python -m clipviz` in a subprocess.

Numbers printed or written by the CLI are checked against clipviz.explain / clipviz.classify run
here on the same checkpoint; every user error must exit 2 with exactly one line on stderr.
"""

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clipviz
from clipviz import cli, outputs, progress
from clipviz.cli import explain as explain_command, inputs, models as models_command, plan, policy
from clipviz.cli.parser import DEFAULT_METHOD_HELP, DEFAULT_MODEL, build_parser

from conftest import save_tiny_checkpoint



def run_cli(*args, cwd, env=None):
    # one torch thread: the tiny model gains nothing from more, and on a busy shared CPU
    # OpenMP threads waiting on each other made these runs up to 9x slower
    environment = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    environment.pop("CLIPVIZ_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "clipviz", *map(str, args)], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


def assert_user_error(result, *words):
    """Exit 2, nothing on stdout, exactly one stderr line 'clipviz: error: ...' containing words."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("clipviz: error: ") and "Traceback" not in result.stderr
    assert result.stdout == ""
    for word in words:
        assert word in lines[0], (word, lines[0])


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def files_under(folder):
    return {p for p in Path(folder).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with tiny.pt (a random TINY_VIT CLIP) and photos/ holding three small images."""
    root = tmp_path_factory.mktemp("cli")
    save_tiny_checkpoint(root, seed=7)
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(photos / "a.png")
    Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(photos / "b.jpg", quality=95)
    Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8)).save(photos / "c.png")
    (photos / "notes.txt").write_text("not an image, and not listed: no image suffix")
    return root


@pytest.fixture(scope="module")
def model(work):
    return clipviz.load(str(work / "tiny.pt"), device="cpu")[0]


# ----------------------------------------------------------------------------- explain: results

def test_one_prompt_json_equals_explain_and_force(work, model):
    """--json scores/probs/peak equal clipviz.explain; the file is overlay(photo, map) exactly;
    an existing output is refused without --force (left untouched) and replaced with it."""
    photo = work / "photos" / "a.png"
    before = sha(photo)
    target = work / "out1" / f"a--{plan.slug('a red dog')}.png"
    target.parent.mkdir()
    target.write_bytes(b"an earlier result")

    refused = run_cli("explain", photo, "a red dog", "--model", "tiny.pt", "--out", "out1", cwd=work)
    assert_user_error(refused, str(target.relative_to(work)), "--force")
    assert target.read_bytes() == b"an earlier result"

    result = run_cli("explain", photo, "a red dog", "--model", "tiny.pt", "--out", "out1", "--json", "--force", cwd=work)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout holds the JSON document and nothing else
    exp = clipviz.explain(model, str(photo), ["a red dog"])
    (entry,) = report["results"]
    np.testing.assert_allclose(entry["scores"], exp.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(entry["probs"], exp.probs, rtol=1e-5, atol=1e-6)
    assert entry["peak_xy"] == exp.to_dict()["peak_xy"]
    assert entry["files"] == report["files"] == [str(target.relative_to(work))]
    from clipviz.render import overlay
    np.testing.assert_array_equal(np.asarray(Image.open(target)), overlay(exp.photo, exp.maps[0]))
    assert sha(photo) == before and report["failures"] == []


def test_three_prompts_table_and_unsafe_prompt_stays_in_folder(work, model):
    """Printed table matches explain; '../../x' becomes a plain name inside --out."""
    prompts = ["a dog", "../../x", "a red car"]
    everything_before = files_under(work.parent)
    result = run_cli("explain", "photos/b.jpg", *prompts, "--model", "tiny.pt", "--out", "deep/out2", cwd=work)
    assert result.returncode == 0, result.stderr
    new = files_under(work.parent) - everything_before
    out = work / "deep" / "out2"
    assert new == {out / f"b--{plan.slug(p)}.png" for p in prompts}
    assert re.fullmatch(r"x-[0-9a-f]{6}", plan.slug("../../x"))

    exp = clipviz.explain(model, str(work / "photos" / "b.jpg"), prompts)
    for t, prompt in enumerate(prompts):
        row = next(line for line in result.stdout.splitlines() if line.strip().startswith(prompt + " "))
        score, prob = row.split()[-4:-2]
        assert float(score) == pytest.approx(exp.scores[t], abs=1e-4)
        assert float(prob.rstrip("%")) == pytest.approx(100 * exp.probs[t], abs=0.05)
        assert f"-> deep/out2/b--{plan.slug(prompt)}.png" in result.stdout
        image = np.asarray(Image.open(out / f"b--{plan.slug(prompt)}.png"))
        assert image.shape == exp.photo.shape  # full photo resolution
    assert "text tokens:" in result.stdout and "\x1b[" not in result.stdout  # no colour codes when piped


def test_folder_of_images_json(work, model):
    result = run_cli("explain", "--images", "photos", "a dog", "--prompt", "a cat.jpg", "--model", "tiny.pt",
                     "--out", "out3", "--json", cwd=work)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    names = ["a.png", "b.jpg", "c.png"]  # notes.txt has no image suffix: not listed
    assert [Path(r["image"]).name for r in report["results"]] == names
    assert report["prompts"] == ["a dog", "a cat.jpg"]  # --prompt keeps an image-like prompt a prompt
    exps = clipviz.explain(model, [str(work / "photos" / n) for n in names], ["a dog", "a cat.jpg"])
    for entry, exp in zip(report["results"], exps):
        np.testing.assert_allclose(entry["scores"], exp.scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(entry["probs"], exp.probs, rtol=1e-5, atol=1e-6)
    assert len(report["files"]) == 6 and all((work / f).is_file() for f in report["files"])


def test_folder_with_bad_files_keeps_going_and_exits_1(work):
    folder = work / "mixed"
    folder.mkdir()
    for name in ["a.png", "b.jpg", "c.png"]:
        (folder / name).write_bytes((work / "photos" / name).read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 these bytes are no JPEG")
    (folder / "cut.png").write_bytes((work / "photos" / "a.png").read_bytes()[:150])
    result = run_cli("explain", "--images", folder, "a dog", "--model", "tiny.pt", "--out", "out4", "--json", cwd=work)
    assert result.returncode == 1, result.stderr
    assert "2 of 5 images failed" in result.stderr and "broken.jpg:" in result.stderr and "cut.png:" in result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert sorted(Path(f["image"]).name for f in report["failures"]) == ["broken.jpg", "cut.png"]
    written = sorted(p.name for p in (work / "out4").iterdir())
    assert written == sorted(f"{stem}--{plan.slug('a dog')}.png" for stem in "abc")


def test_pdf_figure_layers_heads(work):
    result = run_cli("explain", "photos/c.png", "a dog", "--model", "tiny.pt", "--out", "out5", "--format", "pdf",
                     "--layers", "--heads", "--quiet", cwd=work)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # --quiet
    stem = f"c--{plan.slug('a dog')}"
    expected = {"c.pdf", f"{stem}--layers.pdf", f"{stem}--heads.pdf"}
    assert {p.name for p in (work / "out5").iterdir()} == expected
    for name in expected:
        assert (work / "out5" / name).read_bytes().startswith(b"%PDF")


# ----------------------------------------------------------------------------- explain: user errors

def test_user_errors_exit_2_with_one_line(work):
    (work / "file.txt").write_text("a regular file")
    (work / "fake.png").write_text("text pretending to be a PNG")
    cases = [
        (["photos/nope.jpg", "a dog"], ["no image file", "photos/nope.jpg"]),            # missing file
        (["photos/a.png", "a dog", "--model", "ViT-B/33"], ["unknown model", "ViT-B/16"]),
        (["photos/a.png", "a dog", "--method", "smoothgrad"], ["unknown method", "relevance"]),
        (["photos/a.png", "  "], ["prompt is empty"]),
        (["photos/a.png", "--prompt", ""], ["prompt is empty"]),
        (["photos/a.png"], ["no prompt"]),
        (["a dog"], ["no image"]),
        (["photos", "a dog"], ["--images photos"]),                                       # a folder, positionally
        (["photos/a.png", "a dog", "--out", "file.txt/sub"], ["cannot create the output folder", "file.txt"]),
        (["photos/a.png", "a dog", "--out", "file.txt/x.png"], ["cannot create the output folder"]),
        (["photos/a.png", "a dog", "--out", "photos/a.png", "--force"], ["input image"]),  # never the input
        (["photos/a.png", "a dog", "--cmap", "nope"], ["unknown colormap 'nope'", "matplotlib"]),
        (["photos/a.png", "photos/b.jpg", "a dog", "--out", "one.png"], ["one file", "2 images"]),
        (["photos/a.png", "a dog", "--alpha", "2"], ["--alpha"]),                         # argparse, one line too
        (["photos/a.png", "a dog", "--bogus"], ["--bogus"]),
    ]
    for args, words in cases:
        assert_user_error(run_cli("explain", *args, "--model", "tiny.pt", cwd=work)
                          if "--model" not in args else run_cli("explain", *args, cwd=work), *words)
    # these two load torch (tokenizer, model): one run each
    assert_user_error(run_cli("explain", "photos/a.png", "word " * 80, "--model", "tiny.pt", cwd=work), "tokens")
    assert_user_error(run_cli("explain", "fake.png", "a dog", "--model", "tiny.pt", "--out", "o", cwd=work), "fake.png")
    assert not (work / "o").exists() or not any((work / "o").iterdir())


def test_output_folder_never_overwrites_an_input(work):
    """--out is the images folder and an input has the name an output would get: refused even with --force."""
    folder = work / "same"
    folder.mkdir()
    (folder / "a.png").write_bytes((work / "photos" / "a.png").read_bytes())
    victim = folder / f"a--{plan.slug('a dog')}.png"
    victim.write_bytes((work / "photos" / "c.png").read_bytes())
    before = {p: sha(p) for p in folder.iterdir()}
    result = run_cli("explain", "--images", folder, "a dog", "--out", folder, "--force", "--model", "tiny.pt", cwd=work)
    assert_user_error(result, "input image", victim.name)
    assert {p: sha(p) for p in folder.iterdir()} == before


# ----------------------------------------------------------------------------- other commands

def test_classify_prints_sorted_probabilities(work, model):
    prompts = ["a diagram", "a dog", "a cat"]
    result = run_cli("classify", "photos/a.png", *prompts, "--model", "tiny.pt", cwd=work)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "photos/a.png"
    printed = [(line.split(maxsplit=1)[1], float(line.split()[0].rstrip("%"))) for line in lines[1:]]
    expected = clipviz.classify(model, str(work / "photos" / "a.png"), prompts).ranked()
    assert [p for p, _ in printed] == [p for p, _ in expected]
    for (_, shown), (_, prob) in zip(printed, expected):
        assert shown == pytest.approx(100 * prob, abs=0.006)


def test_models_says_per_name_whether_present_and_from_where(work):
    cache, home = work / "cache", work / "home"
    cache.mkdir()
    (cache / "ViT-B-32.pt").write_bytes(b"x")
    (home / ".cache" / "clip").mkdir(parents=True)
    (home / ".cache" / "clip" / "RN50.pt").write_bytes(b"x")
    env = {"CLIPVIZ_CACHE": str(cache), "HOME": str(home), "HF_HUB_CACHE": str(work / "hf")}
    result = run_cli("models", "--json", cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)["models"]}
    assert set(clipviz.available_models()) <= set(rows)
    assert rows["ViT-B/32"]["present"] and rows["ViT-B/32"]["status"] == "cached"
    assert rows["ViT-B/32"]["from"] == f"clipviz cache {cache / 'ViT-B-32.pt'}"
    assert rows["RN50"]["from"] == f"openai/clip cache {home / '.cache' / 'clip' / 'RN50.pt'}"
    assert not rows["ViT-B/16"]["present"] and rows["ViT-B/16"]["status"] == "download on first use"
    assert rows["ViT-B/16"]["from"] == ("OpenAI URL openaipublic.azureedge.net/.../ViT-B-16.pt, then Hugging Face "
                                        "Hub timm/vit_base_patch16_clip_224.openai, then Hugging Face Hub "
                                        "openai/clip-vit-base-patch16")
    if DEFAULT_MODEL in rows:  # the small offline model ships inside the package
        assert rows[DEFAULT_MODEL]["status"] == "bundled"
    text = run_cli("models", cwd=work, env=env).stdout
    assert re.search(r"^ViT-B/32\s+cached", text, re.M) and "ViT-L/14@336px" in text
    assert re.search(r"^\s+from: Hugging Face Hub|from: OpenAI URL .*timm/resnet50x64_clip.openai", text, re.M)


def test_a_plain_checkpoint_warns_on_one_line_and_the_flag_silences_it(work, tmp_path):
    torch.save(torch.load(work / "tiny.pt"), tmp_path / "plain.pt")  # no config beside it
    photo = work / "photos" / "a.png"
    result = run_cli("classify", photo, "a dog", "--model", tmp_path / "plain.pt", cwd=work)
    assert result.returncode == 0 and result.stderr.splitlines() == [
        f"clipviz: warning: {tmp_path / 'plain.pt'} does not say which MLP activation it was trained with; "
        "assuming QuickGELU (OpenAI). If it is an open_clip model trained with GELU (LAION, DataComp, ...), "
        "pass activation='gelu' (CLI: --activation gelu), or its maps will be wrong"]
    quiet = run_cli("classify", photo, "a dog", "--model", tmp_path / "plain.pt", "--activation", "quick_gelu",
                    cwd=work)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == result.stdout


def test_download_of_an_unknown_name_fails_before_any_transfer(work, capsys):
    assert cli.main(["download", "ViT-B/16", "ViT-Q/99"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "unknown model 'ViT-Q/99'" in err


def test_default_method_follows_the_model_family(work, tmp_path, small_resnet, capsys):
    from clipviz.methods import DEFAULT_METHODS

    torch.save(small_resnet.state_dict(), tmp_path / "resnet.pt")
    photo = work / "photos" / "a.png"
    assert cli.main(["explain", str(photo), "a dog", "--model", str(tmp_path / "resnet.pt"), "--json",
                     "--out", str(tmp_path / "r"), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == DEFAULT_METHODS["resnet"] == "gradcam"
    assert cli.main(["explain", str(photo), "a dog", "--model", str(work / "tiny.pt"), "--json",
                     "--out", str(tmp_path / "v"), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == DEFAULT_METHODS["vit"] == "relevance"
    assert DEFAULT_METHOD_HELP.startswith(f"{DEFAULT_METHODS['vit']} for ViT models, "
                                              f"{DEFAULT_METHODS['resnet']} for ResNet")
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["explain"].format_help().split())
    assert DEFAULT_METHOD_HELP in help_text


def test_activation_flag_reaches_load(work, monkeypatch, capsys):
    from clipviz import hub

    seen = []
    real = hub.load

    def spy(name, **options):
        seen.append(options.get("activation"))
        return real(name, **options)

    monkeypatch.setattr(hub, "load", spy)
    photo = work / "photos" / "a.png"
    for flag in ([], ["--activation", "gelu"]):
        assert cli.main(["classify", str(photo), "a", "b", "--model", str(work / "tiny.pt"), "--device", "cpu",
                         *flag]) == 0
    assert seen == [None, "gelu"]
    with pytest.raises(SystemExit) as exit_status:  # argparse's choices: one line, exit 2
        cli.main(["classify", str(photo), "a", "--activation", "relu"])
    assert exit_status.value.code == 2 and "invalid choice: 'relu'" in capsys.readouterr().err


def test_demo_draws_the_synthetic_scene(work):
    from clipviz.synth import object_prompt, scene_from_index

    result = run_cli("demo", "--model", "tiny.pt", "--out", "demo.png", cwd=work)
    assert result.returncode == 0, result.stderr
    scene = scene_from_index(0, 0, n_objects=(2, 3))
    for obj in scene.objects:
        assert object_prompt(obj.shape, obj.colour) in result.stdout
    with Image.open(work / "demo.png") as figure:
        assert figure.format == "PNG" and figure.width > 300
    again = run_cli("demo", "--model", "tiny.pt", "--out", "demo.png", cwd=work)  # a re-run replaces its own file
    assert again.returncode == 0 and again.stdout == result.stdout, again.stderr
    (work / "demo.png").write_bytes(b"edited by hand")  # no longer clipviz's own: kept without --force
    assert_user_error(run_cli("demo", "--model", "tiny.pt", "--out", "demo.png", cwd=work), "already exists")
    assert (work / "demo.png").read_bytes() == b"edited by hand"
    if DEFAULT_MODEL not in clipviz.available_models():
        assert_user_error(run_cli("demo", "--out", "demo2.png", cwd=work), "--model")


def test_help_version_and_bench(work):
    result = run_cli("explain", "--help", cwd=work)
    assert result.returncode == 0 and "examples:" in result.stdout and "--images DIR" in result.stdout
    assert "image suffix" in result.stdout  # the image-or-prompt rule is documented
    assert run_cli("--version", cwd=work).stdout.strip() == f"clipviz {clipviz.__version__}"
    bench = run_cli("bench", "--help", cwd=work)
    assert bench.returncode == 0 and "--sanity-scenes" in bench.stdout


# ----------------------------------------------------------------------------- in-process pieces

def test_unexpected_errors_exit_1_and_ask_for_a_report(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(models_command, "run", broken)
    monkeypatch.delenv("CLIPVIZ_DEBUG", raising=False)
    assert cli.main(["models"]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err and "please report" in err and "Traceback" not in err
    assert cli.main(["--debug", "models"]) == 1  # before the command, not undone by its default
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("CLIPVIZ_DEBUG", "1")
    assert cli.main(["models"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_printed_text_is_terminal_safe(monkeypatch):
    """Prompts and tokens reach the terminal on one line with escape sequences defused; in a
    terminal the tokens are render.text_tokens_ansi's colours, elsewhere plain weights."""
    assert policy.one_line("a \x1b[2Jdog\n\tcat \udcff") == "a \\x1b[2Jdog cat \\udcff"
    from clipviz.render import text_tokens_ansi
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert explain_command.tokens_text(["a", "dog"], [0.5, 2.0]) == text_tokens_ansi(["a", "dog"], [0.5, 2.0])
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert explain_command.tokens_text(["a", "dog"], [0.5, 2.0]) == "a(0.25) dog(1.00)"


def test_slug_and_split_rule(tmp_path):
    assert plan.slug("A Photo of a Café!")[:-7] == "a-photo-of-a-cafe"
    assert plan.slug("a dog") != plan.slug("a dog ") and plan.slug("/").startswith("x-")
    long = plan.slug("word " * 50)
    assert len(long) <= outputs.SLUG_LENGTH + 7 and re.fullmatch(r"[a-z0-9-]+", long)
    existing = tmp_path / "README"
    existing.write_text("x")
    images, prompts = inputs.split_inputs([str(existing), "a dog", "a cat"])
    assert images == [str(existing)] and prompts == ["a dog", "a cat"]
    with pytest.raises(clipviz.ClipvizError, match="with --prompt"):
        inputs.split_inputs(["a photo of a cat.jpg", "a dog"])
    assert plan.image_labels(["x/a.png", "y/a.png", "b.jpg"])[2] == "b"
    assert len(set(plan.image_labels(["x/a.png", "y/a.png"]))) == 2



def test_a_folder_named_twice_under_other_spellings_is_listed_once_with_one_note(work, monkeypatch):
    """--images photos --images photos/ --images ./photos --images <link to it>: one folder, its
    three photos once each (the folder's own listing, in order), one short note and no per-image
    warning (once_each had one for every photo of every repeat)."""
    import warnings

    monkeypatch.chdir(work)
    link = work / "photos-link"
    if not link.exists():
        link.symlink_to("photos")
    expected = sorted(str(Path("photos") / name) for name in ("a.png", "b.jpg", "c.png"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, prompts = plan.once_each(*inputs.split_inputs(
            [], folders=["photos", "photos/", "./photos", "photos-link"], prompts=["a dog"]), clip_tokens=True)
    assert images == expected and prompts == ["a dog"]
    assert len(caught) == 1 and issubclass(caught[0].category, policy.Note), [str(w.message) for w in caught]
    assert "'photos/' (= 'photos'), './photos' (= 'photos'), 'photos-link' (= 'photos')" in str(caught[0].message)
    (work / "list.txt").write_text("photos/a.png\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, _ = inputs.split_inputs([], lists=["list.txt", "./list.txt"], prompts=["a dog"])
    assert images == ["photos/a.png"] and len(caught) == 1  # read once: a pipe could not be read twice

def test_one_progress_bar_counts_and_keeps_notes_whole():
    """clipviz.progress: tqdm counts the images on its stream; notes go to stdout whole, drawn or not."""
    stream, notes = io.StringIO(), io.StringIO()
    with progress.bar(3, "image", enabled=True, stream=stream) as bar:
        for _ in range(3):
            bar.write("a.png done", file=notes)
            bar.update(1)
    assert "3/3" in stream.getvalue() and "image" in stream.getvalue()
    assert notes.getvalue() == "a.png done\n" * 3
    quiet = io.StringIO()
    with progress.bar(3, "image", enabled=False, stream=quiet) as bar:
        bar.update(1)
    assert quiet.getvalue() == ""

def test_a_rerun_replaces_its_own_outputs_but_never_a_file_clipviz_did_not_write(work):
    """Issue 16 item 6: the same command twice succeeds; files of the user's need --force; --json
    prints JSON also for an error."""
    photo = work / "photos" / "a.png"
    command = ["explain", photo, "a red dog", "a cat", "--model", "tiny.pt", "--out", "again"]
    first = run_cli(*command, cwd=work)
    assert first.returncode == 0, first.stderr
    written = sorted((work / "again").glob("*.png"))
    assert len(written) == 2
    contents = [path.read_bytes() for path in written]
    second = run_cli(*command, cwd=work)
    assert second.returncode == 0, second.stderr
    assert [path.read_bytes() for path in written] == contents  # the same bytes, written again
    record = outputs.record_path(work / "again").read_text().splitlines()  # in the cache, not beside the files
    assert {line.split("  ")[1] for line in record} == {path.name for path in written}
    assert all(line.split("  ")[0] == sha(work / "again" / line.split("  ")[1]) for line in record[-2:])

    written[0].write_bytes(b"the user's own notes")  # changed since clipviz wrote it
    refused = run_cli(*command, cwd=work)
    assert_user_error(refused, written[0].name, "--force")
    assert written[0].read_bytes() == b"the user's own notes" and photo.exists()
    as_json = run_cli(*command, "--json", cwd=work)
    assert as_json.returncode == 2 and "already exists" in json.loads(as_json.stdout)["error"]
    forced = run_cli(*command, "--force", cwd=work)
    assert forced.returncode == 0 and written[0].read_bytes() == contents[0]


def test_a_folder_run_into_its_own_folder_explains_the_same_photos_when_run_again(work):
    """--images d --out d twice: the second run lists only the photos (not the first run's overlays,
    which clipviz recorded as its own), replaces its outputs and leaves the photos byte for byte.
    An output the user changed is a photo again, and is never written over."""
    folder = work / "inplace"
    folder.mkdir()
    for name in ("a.png", "b.jpg", "c.png"):
        (folder / name).write_bytes((work / "photos" / name).read_bytes())
    photos = {path.name: sha(path) for path in folder.iterdir()}
    command = ["explain", "--images", folder, "--prompt", "a dog", "--model", "tiny.pt", "--out", folder, "--json"]
    first = run_cli(*command, cwd=work)
    assert first.returncode == 0, first.stderr
    explained = [result["image"] for result in json.loads(first.stdout)["results"]]
    assert sorted(Path(p).name for p in explained) == sorted(photos)
    outputs_first = {path.name: sha(path) for path in folder.iterdir() if path.name not in photos}
    assert len(outputs_first) == 3

    second = run_cli(*command, cwd=work)
    assert second.returncode == 0, second.stderr
    assert [result["image"] for result in json.loads(second.stdout)["results"]] == explained
    assert "left out 3 files" in second.stderr and "note:" in second.stderr
    assert {path.name: sha(path) for path in folder.iterdir() if path.name in photos} == photos
    assert {path.name: sha(path) for path in folder.iterdir() if path.name not in photos} == outputs_first

    changed = folder / sorted(outputs_first)[0]  # the user draws on an overlay: now it is their photo
    Image.fromarray(np.full((20, 30, 3), 7, np.uint8)).save(changed)
    mine = sha(changed)
    third = run_cli(*command[:-1], "--quiet", cwd=work)
    assert_user_error(third, changed.name, "input")  # a.png's overlay would replace it: refused
    assert sha(changed) == mine and {p.name: sha(p) for p in folder.iterdir() if p.name in photos} == photos
