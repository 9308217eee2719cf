"""Issue 13, round three: what a fresh-eyes tester still found (nine low-severity findings).

Each test states the finding and checks the behaviour against the files on disk, the manifest and
the exact message: a user's mistake is one line (exit 2 in the CLI), nothing is lost or
half-written, and outputs follow one rule (clipviz.outputs).
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import clipviz
import clipviz.hub  # monkeypatched below: clipviz imports its submodules lazily
from clipviz import cli, manifest
from clipviz.errors import ClipvizError

from conftest import tiny_cli_folder
from hostile import counted, one_error_line, tally

CASES, _report = tally("fresh eyes")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
ENV.pop("CLIPVIZ_DEBUG", None)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """tiny.pt (a random TINY_VIT CLIP) and photo.png (56×40); photos/ with a.png, b.png."""
    root = tiny_cli_folder(tmp_path_factory.mktemp("fresh"), seed=5)
    (root / "photos").mkdir()
    for name in ("a.png", "b.png"):
        (root / "photos" / name).write_bytes((root / "photo.png").read_bytes())
    return root


def run_cli(*args, cwd, **options):
    """``python -m clipviz ARGS`` in ``cwd`` → CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "clipviz", *map(str, args)], cwd=cwd, env=ENV, text=True,
                          timeout=600, **{"capture_output": True, **options})


def explain_in_process(work, *args, capsys):
    """cli.main for explain with the tiny model → (status, stdout, stderr)."""
    status = cli.main(["explain", *map(str, args), "--model", str(work / "tiny.pt"), "--device", "cpu"])
    out, err = capsys.readouterr()
    return status, out, err


def manifest_run(work, name):
    """A finished run over photos/ (a.png, b.png) into out-<name>/ with --manifest <name>.jsonl
    → (its arguments, to resume it; its records)."""
    args = ["explain", "--images", "photos", "a dog", "--model", "tiny.pt", "--out", f"out-{name}", "--manifest",
            f"{name}.jsonl", "--quiet", "--workers", "0"]
    assert run_cli(*args, cwd=work).returncode == 0
    return args, manifest.read_file(work / f"{name}.jsonl")


def _tiny_siglip():
    """A small SiglipModel (random) with a one-id-per-word tokenizer padded to 64 (test_siglip's stand-in)."""
    transformers = pytest.importorskip("transformers")
    from clipviz.adapters import attach_tokenizer

    def tokenize(prompts, length=64, pad=1):
        rows = [[2 + sum(ord(c) * 31 ** i for i, c in enumerate(w)) % 31997 for w in p.split()] + [pad]
                for p in prompts]
        return torch.tensor([r + [pad] * (length - len(r)) for r in rows])

    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = transformers.SiglipConfig(text_config=dict(tower, vocab_size=32000, max_position_embeddings=64,
                                                        bos_token_id=None, eos_token_id=1, pad_token_id=1),
                                       vision_config=dict(tower, image_size=32, patch_size=8))
    model = transformers.SiglipModel(config).eval()
    attach_tokenizer(model, tokenize)
    return model


# ------------------------------------------------ 1. a manifest line that is not JSON is named

def _record_line(image, index):
    return json.dumps({"index": index, "image": image, "size": 1, "mtime_ns": 1, "status": "done",
                       "outputs": [], "settings": None})


@counted(CASES)
def test_lines_that_are_not_records_are_warned_about_once_with_their_numbers(tmp_path):
    path = tmp_path / "run.jsonl"
    lines = [_record_line("a.png", 0), "not json at all", _record_line("b.png", 1), "[1, 2]",
             '{"index": 2, "image": "c.p']  # the last: torn by a kill mid-write, skipped quietly
    path.write_text("\n".join(lines))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = manifest.read_file(path)
    assert [r["image"] for r in records] == ["a.png", "b.png"]
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert str(path) in message and "lines 2, 4" in message and "5" not in message.split("lines")[1]
    assert "not done" in message


@counted(CASES)
def test_a_torn_line_ended_by_an_earlier_resume_is_not_warned_about(tmp_path):
    """A resume ends a torn last line with a newline before appending (manifest.Writer): that torn
    record is then inside the file, and stays a known, quiet case."""
    path = tmp_path / "run.jsonl"
    path.write_text(_record_line("a.png", 0) + "\n" + '{"index": 1, "ima')
    manifest.Writer(path, resume=True).close()
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(_record_line("b.png", 1) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["image"] for r in manifest.read_file(path)] == ["a.png", "b.png"]


@counted(CASES)
def test_resume_over_a_damaged_line_warns_and_redoes_that_image(work):
    args, _ = manifest_run(work, "m1")
    lines = (work / "m1.jsonl").read_text().splitlines()
    assert len(lines) == 2
    (work / "m1.jsonl").write_text("garbage\n" + lines[1] + "\n")
    resumed = run_cli(*[a for a in args if a != "--quiet"], "--resume", cwd=work)  # --quiet hides warnings
    assert resumed.returncode == 0, resumed.stderr
    warned = [line for line in resumed.stderr.splitlines() if "warning" in line]
    assert len(warned) == 1 and "m1.jsonl" in warned[0] and "line 1" in warned[0], resumed.stderr
    with pytest.warns(UserWarning, match="line 1 is not a record"):
        again = manifest.read_file(work / "m1.jsonl")
    assert [r["image"] for r in again] == ["photos/b.png", "photos/a.png"]  # a.png redone, b.png kept


# ------------------------------------------------ 2. cpu:7 is not a device here

@counted(CASES)
@pytest.mark.parametrize("name", ["cpu:7", "cpu:1"])
def test_a_cpu_index_other_than_0_is_refused(name):
    from clipviz.devices import resolve_device
    with pytest.raises(ClipvizError, match=rf"'{name}'.*use one of: cpu"):
        resolve_device(name)
    assert resolve_device("cpu:0") == torch.device("cpu:0") and resolve_device("cpu") == torch.device("cpu")


@counted(CASES)
def test_cli_cpu_7_is_one_line_before_anything_is_written(work, capsys):
    status, _, err = explain_in_process(work, work / "photo.png", "a dog", "--out", work / "out-2", capsys=capsys)
    assert status == 0
    status = cli.main(["explain", str(work / "photo.png"), "a dog", "--model", str(work / "tiny.pt"), "--device",
                       "cpu:7", "--out", str(work / "out-2b")])
    line = one_error_line(capsys.readouterr().err)
    assert status == 2 and "cpu:7" in line and not (work / "out-2b").exists()


# ------------------------------------------------ 3. prompts that CLIP's tokenizer makes equal

@counted(CASES)
def test_prompts_differing_in_case_or_spaces_are_one_query_for_clip(work, capsys):
    out = work / "out-3"
    status, stdout, err = explain_in_process(work, work / "photo.png", "a dog", "A  Dog", " a DOG", "a cat",
                                             "--out", out, capsys=capsys)
    assert status == 0, err
    assert len(sorted(out.iterdir())) == 2  # "a dog" and "a cat"
    warned = [line for line in err.splitlines() if "warning" in line]
    assert len(warned) == 2 and all("'a dog'" in line for line in warned), err
    assert stdout.count("a dog") == 1 and "A  Dog" not in stdout


@counted(CASES)
def test_a_case_sensitive_tokenizer_keeps_them_apart(work, capsys, monkeypatch):
    """'hf:' and 'openclip:' models bring their own tokenizer (SigLIP's SentencePiece tells case
    apart): "a dog" and "A dog" stay two queries there, two files, no warning."""
    monkeypatch.setattr(clipviz.hub, "load", lambda *args, **kwargs: (_tiny_siglip(), None))
    out = work / "out-3s"
    status = cli.main(["explain", str(work / "photo.png"), "a dog", "A dog", "--model", "hf:example/siglip",
                       "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 0, err
    assert len(list(out.iterdir())) == 2 and "warning" not in err


# ------------------------------------------------ 4. a dangling link as --out

@counted(CASES)
@pytest.mark.parametrize("name", ["gone", "gone.png"])
def test_a_dangling_link_as_out_is_called_a_link(work, capsys, name):
    link = work / f"link-{name}"
    link.symlink_to(work / "missing" / name)
    status, _, err = explain_in_process(work, work / "photo.png", "a dog", "--out", link, capsys=capsys)
    line = one_error_line(err)
    assert status == 2 and "symbolic link" in line and "missing" in line and "a file" not in line, line
    assert link.is_symlink() and not (work / "missing").exists()


# ------------------------------------------------ 5. a folder named like an image inside --images

@counted(CASES)
def test_a_folder_named_like_an_image_is_mentioned(work, capsys):
    from clipviz.cli.inputs import list_images
    folder = work / "with-dir"
    folder.mkdir()
    (folder / "x.png").mkdir()
    (folder / "a.png").write_bytes((work / "photo.png").read_bytes())
    with pytest.warns(UserWarning) as caught:  # the CLI prints it as one "clipviz: warning:" line
        assert list_images(folder) == [str(folder / "a.png")]
    (note,) = [str(w.message) for w in caught]
    assert "x.png (a directory)" in note and "\n" not in note, note


# ------------------------------------------------ 6. exp.save into a missing folder

@counted(CASES)
def test_save_into_a_missing_folder_is_refused_as_savefig_would(work, tmp_path):
    model = clipviz.load(str(work / "tiny.pt"), device="cpu")[0]
    exp = clipviz.explain(model, str(work / "photo.png"), "a dog")
    with pytest.raises(ClipvizError, match=r"'[^']*d/s' does not exist.*create it") as caught:
        exp.save(tmp_path / "d" / "s" / "x.png")
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "d" / "s").mkdir(parents=True)
    assert exp.save(tmp_path / "d" / "s" / "x.png").stat().st_size > 0


@counted(CASES)
def test_cli_out_still_creates_its_folder(work, capsys):
    status, _, err = explain_in_process(work, work / "photo.png", "a dog", "--out", work / "new" / "deep",
                                        capsys=capsys)
    assert status == 0, err and len(list((work / "new" / "deep").iterdir())) == 1


# ------------------------------------------------ 7. a closed stdout is noticed before the work

@counted(CASES)
def test_a_pipe_without_reader_stops_the_run_before_any_file(work):
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -0` that has already exited
    try:
        result = run_cli("explain", "photo.png", "a dog", "--model", "tiny.pt", "--out", "out-7", cwd=work,
                         stdout=write_end, stderr=subprocess.PIPE, capture_output=False)
    finally:
        os.close(write_end)
    line = one_error_line(result.stderr)
    assert result.returncode == 2 and "standard output" in line
    assert not (work / "out-7").exists()


@counted(CASES)
def test_quiet_needs_no_stdout(work):
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = run_cli("explain", "photo.png", "a dog", "--model", "tiny.pt", "--out", "out-7q", "--quiet",
                         cwd=work, stdout=write_end, stderr=subprocess.PIPE, capture_output=False)
    finally:
        os.close(write_end)
    assert result.returncode == 0, result.stderr
    assert len(list((work / "out-7q").iterdir())) == 1


# ------------------------------------------------ 8. --resume redoes a damaged output of its own

@counted(CASES)
def test_resume_replaces_its_own_damaged_output_without_force(work):
    args, records = manifest_run(work, "m8")
    damaged = work / records[0]["outputs"][0]["path"]
    original = damaged.read_bytes()
    damaged.write_bytes(original[:100])  # cut short: no longer the manifest's sha256
    resumed = run_cli(*args, "--resume", cwd=work)
    assert resumed.returncode == 0, resumed.stderr
    assert damaged.read_bytes() == original  # redone: the same model and photo give the same bytes
    new = manifest.read_file(work / "m8.jsonl")[len(records):]
    assert [r["image"] for r in new] == [records[0]["image"]]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        assert manifest.verified(new[0])


@counted(CASES)
def test_resume_still_refuses_a_link_or_a_file_the_manifest_does_not_record(work):
    args, records = manifest_run(work, "m8b")
    recorded = work / records[0]["outputs"][0]["path"]
    target = work / "precious.txt"
    target.write_text("the user's")
    recorded.unlink()
    recorded.symlink_to(target)  # a link planted at a recorded name: never followed nor replaced
    refused = run_cli(*args, "--resume", cwd=work)
    line = one_error_line(refused.stderr)
    assert refused.returncode == 2 and "--force" in line and recorded.is_symlink()
    assert target.read_text() == "the user's"
    # a file at a name the manifest does not record (a.png's record lists no outputs and counts as
    # changed, so a.png is redone) is refused too
    recorded.unlink()
    recorded.write_bytes(b"user data")
    lines = (work / "m8b.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["outputs"] = []
    first["size"] = -1  # and the image counts as changed, so it is redone
    (work / "m8b.jsonl").write_text(json.dumps(first) + "\n" + "\n".join(lines[1:]) + "\n")
    refused = run_cli(*args, "--resume", cwd=work)
    assert refused.returncode == 2 and "--force" in one_error_line(refused.stderr)
    assert recorded.read_bytes() == b"user data"


# ------------------------------------------------ 9. SigLIP's 64 tokens, not CLIP's 77

@counted(CASES)
@pytest.mark.parametrize("words, refused", [(70, True), (80, True), (40, False)])
def test_siglip_prompts_are_measured_with_its_own_tokenizer(work, capsys, monkeypatch, words, refused):
    """70 and 80 words are 71 and 81 SigLIP tokens: refused in one line naming 64 (not CLIP's 77).
    40 long words are 41 SigLIP tokens but far more than 77 of CLIP's: accepted."""
    monkeypatch.setattr(clipviz.hub, "load", lambda *args, **kwargs: (_tiny_siglip(), None))
    prompt = " ".join(["dog"] * words) if words != 40 else " ".join(["zqxjkvbwpfgh"] * words)
    from clipviz.tokenizer import count_tokens
    assert (count_tokens(prompt) > 77) == (words != 70)
    out = work / f"out-9-{words}"
    status = cli.main(["explain", str(work / "photo.png"), prompt, "--model", "hf:example/siglip", "--device", "cpu",
                       "--out", str(out)])
    err = capsys.readouterr().err
    if refused:
        line = one_error_line(err)
        assert status == 2 and "64" in line and "77" not in line and f"{words + 1} tokens" in line, line
        assert not out.exists()
    else:
        assert status == 0, err
        assert len(list(out.iterdir())) == 1



@counted(CASES)
def test_classify_measures_siglip_prompts_with_its_tokenizer_too(work, capsys, monkeypatch):
    """Every command loads through cli.inputs.load_model: classify takes 40 long words (41 SigLIP
    tokens, far more than 77 of CLIP's) and refuses 70 words (71) in one line naming 64."""
    monkeypatch.setattr(clipviz.hub, "load", lambda *args, **kwargs: (_tiny_siglip(), None))
    long_words, many_words = " ".join(["zqxjkvbwpfgh"] * 40), " ".join(["dog"] * 70)
    for prompt, expected in ((long_words, 0), (many_words, 2)):
        status = cli.main(["classify", str(work / "photo.png"), prompt, "a cat", "--model", "hf:example/siglip",
                           "--device", "cpu"])
        out, err = capsys.readouterr()
        assert status == expected, err
        if expected:
            line = one_error_line(err)
            assert "71 tokens" in line and "64" in line and not out


@counted(CASES)
def test_openclip_hub_tokenizer_no_longer_cuts_a_long_prompt_silently(tmp_path, monkeypatch):
    """open_clip's HFTokenizer (SigLIP's in 'openclip:ViT-B-16-SigLIP') truncates to 64 without a
    word; the adapter measures each prompt uncut and refuses one that does not fit. The tokenizer
    here is a real HFTokenizer over a small word-level vocabulary saved to disk (offline)."""
    pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    import torchvision_shim
    before = set(sys.modules)
    shimmed = torchvision_shim.install()
    try:
        open_clip = pytest.importorskip("open_clip")
        from transformers import PreTrainedTokenizerFast
        from clipviz.adapters.openclip import _lazy_tokenizer

        vocab = {"[PAD]": 0, "[UNK]": 1, "</s>": 2, "a": 3, "dog": 4}
        core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
        core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
        core.post_processor = tokenizers.processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
        PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                eos_token="</s>").save_pretrained(tmp_path / "tok")
        made = open_clip.tokenizer.HFTokenizer(str(tmp_path / "tok"), context_length=64)
        assert made([" ".join(["dog"] * 70)]).shape == (1, 64)  # open_clip alone: cut to 64, no error
        monkeypatch.setattr(open_clip, "get_tokenizer", lambda arch: made)
        tokenize = _lazy_tokenizer(open_clip, "ViT-B-16-SigLIP")
        ids = tokenize(["a dog", " ".join(["dog"] * 63)])  # 64 with </s>: fits exactly
        assert ids.shape == (2, 64) and ids[0, :3].tolist() == [3, 4, 2] and ids[1, 63] == 2
        with pytest.raises(ClipvizError, match=r"is 71 tokens long, more than the 64"):
            tokenize(["a dog", " ".join(["dog"] * 70)])
    finally:
        dropped = ("open_clip", "timm", "torchvision") if shimmed else ("open_clip", "timm")
        for name in set(sys.modules) - before:
            if name.split(".")[0] in dropped:
                del sys.modules[name]


# ------------------------------------------------ session 3 tester: API nits

@counted(CASES)
@pytest.mark.parametrize("layer", [1.5, True, "0"])
def test_a_start_layer_that_is_not_a_whole_number_says_so(layer):
    from clipviz.methods.base import resolve_layer
    with pytest.raises(ClipvizError, match="must be a whole number"):
        resolve_layer(layer, 12)
    assert resolve_layer(np.int64(3), 12) == 3 and resolve_layer(-1, 12) == 11


@counted(CASES)
def test_the_image_type_message_reads_as_english():
    from clipviz.preprocess import load_image
    with pytest.raises(ClipvizError, match="from an int\\."):
        load_image(5)
