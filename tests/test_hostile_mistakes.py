"""Issue 13, item 5: a user's mistake is never called a bug.

Every command and the public API tried with odd arguments: devices this machine lacks, seeds out
of range, degenerate prompts, special files named as images, a file named like a prompt, a closed
or full standard output, and odd Python types. The CLI must answer with exactly one line
``clipviz: error: ...`` and exit 2; the API with one ClipvizError; neither may say "bug" nor leak
a Python repr (``<_io.BufferedReader name=3>``) or another library's limit.
"""

import json
import os
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import clipviz
from clipviz import cli
from clipviz.errors import ClipvizError

from conftest import tiny_cli_folder
from hostile import counted, one_error_line, tally

CASES, _report = tally("user mistakes")
REPO = Path(__file__).resolve().parents[1]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """tiny.pt (a random TINY_VIT CLIP, marked QuickGELU), photo.png, a FIFO and a folder."""
    root = tiny_cli_folder(tmp_path_factory.mktemp("mistakes"), seed=4)
    os.mkfifo(root / "pipe.png")
    os.mkfifo(root / "pipe")
    (root / "folder").mkdir()
    (root / "a dog").write_text("a note that happens to be named like a prompt")
    import cv2
    writer = cv2.VideoWriter(str(root / "v.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(3):
        writer.write(np.full((48, 64, 3), 60 * i, dtype=np.uint8))
    writer.release()
    return root


@pytest.fixture(scope="module")
def model(work):
    return clipviz.load(str(work / "tiny.pt"), device="cpu")[0]


# ----------------------------------------------------------------------------- the CLI, in process

LONG = "a" * 10_000
WORDY = " ".join(["dog"] * 80)  # 82 tokens with start and end

CLI_CASES = {
    # devices
    "explain --device cuda (no GPU)": (["explain", "{photo}", "a cat", "--device", "cuda"], ["no CUDA GPU"], [NO_GPU]),
    "explain --device cuda:99": (["explain", "{photo}", "a cat", "--device", "cuda:99"], ["cuda:99"], []),
    "explain --device mps": (["explain", "{photo}", "a cat", "--device", "mps"], ["mps", "use one of: cpu"], []),
    "explain --device meta": (["explain", "{photo}", "a cat", "--device", "meta"], ["holds no weights"], []),
    "explain --device xpu": (["explain", "{photo}", "a cat", "--device", "xpu"], ["xpu"], []),
    "explain --device banana": (["explain", "{photo}", "a cat", "--device", "banana"], ["not a torch device"], []),
    "explain --device ''": (["explain", "{photo}", "a cat", "--device", ""], ["not a torch device"], []),
    "classify --device mps": (["classify", "{photo}", "a", "b", "--device", "mps"], ["mps"], []),
    "demo --device cuda:99": (["demo", "--device", "cuda:99", "--out", "{tmp}/d.png"], ["cuda:99"], []),
    "bench --device mps": (["bench", "--device", "mps", "--out", "{tmp}/b.json"], ["mps"], []),
    "random: model on cuda:99": (["explain", "{photo}", "a cat", "--model", "random:ViT-B/32", "--device", "cuda:99"],
                                 ["cuda:99"], []),
    # seeds
    "demo --seed -1": (["demo", "--seed", "-1", "--out", "{tmp}/d.png"], ["--seed", "0 to 4294967295"], []),
    "demo --seed 2**70": (["demo", "--seed", str(2 ** 70), "--out", "{tmp}/d.png"], ["--seed"], []),
    "demo --seed 1.5": (["demo", "--seed", "1.5", "--out", "{tmp}/d.png"], ["--seed"], []),
    "bench --seed -1": (["bench", "--seed", "-1", "--out", "{tmp}/b.json"], ["--seed"], []),
    "bench --seed 2**64": (["bench", "--seed", str(2 ** 64), "--out", "{tmp}/b.json"], ["--seed"], []),
    # degenerate targets
    "empty prompt": (["explain", "{photo}", ""], ["prompt is empty"], []),
    "prompt of spaces": (["explain", "{photo}", "   "], ["prompt is empty"], []),
    "prompt of control characters": (["explain", "{photo}", "--prompt", "\x1b\x07"], ["empty"], []),
    "prompt of a zero-width space": (["explain", "{photo}", "--prompt", "\u200b"], ["prompt is empty", "'\\u200b'"],
                                     []),
    "classify prompt of joiners": (["classify", "{photo}", "a cat", "\u200d\u2060"], ["'\\u200d\\u2060'"], []),
    "10,000-character prompt": (["explain", "{photo}", LONG], ["1253 tokens", "77"], []),
    "82-token prompt": (["explain", "{photo}", WORDY], ["82 tokens"], []),
    "empty --against": (["explain", "{photo}", "a cat", "--against", ""], ["empty"], []),
    "long --against": (["explain", "{photo}", "a cat", "--against", LONG], ["tokens"], []),
    "classify 82-token prompt": (["classify", "{photo}", "a", WORDY], ["82 tokens"], []),
    "no prompt": (["explain", "{photo}"], ["no prompt given"], []),
    "no image": (["explain", "a cat"], ["no image given"], []),
    # special files and names
    "FIFO with an image suffix": (["explain", "{work}/pipe.png", "a cat"], ["FIFO"], []),
    "FIFO without suffix": (["explain", "{photo}", "{work}/pipe", "a cat"], ["FIFO", "--prompt"], []),
    "/dev/null": (["explain", "/dev/null", "a cat"], ["character device"], []),
    "folder as image": (["explain", "{work}/folder", "a cat"], ["folder", "--images"], []),
    "missing image": (["explain", "{work}/missing.png", "a cat"], ["no image file"], []),
    "prompt named like a file here": (["explain", "{photo}", "a dog"], ["names a file here", "--prompt 'a dog'"], []),
    "download ''": (["download", ""], ["unknown model"], []),
    "models with an option it lacks": (["models", "--device", "cpu"], ["unrecognized arguments"], []),
    "unknown option after a positional": (["explain", "{photo}", "a cat", "--colour", "red"], ["--colour"], []),
    # numbers
    "--alpha 2": (["explain", "{photo}", "a cat", "--alpha", "2"], ["--alpha"], []),
    "--dpi 0": (["explain", "{photo}", "a cat", "--dpi", "0"], ["--dpi"], []),
    "--start-layer 99": (["explain", "{photo}", "a cat", "--start-layer", "99"], ["start_layer=99"], []),
    "--start-layer x": (["explain", "{photo}", "a cat", "--start-layer", "x"], ["--start-layer"], []),
    "--every 0 on a video": (["explain", "{work}/v.mp4", "a cat", "--every", "0"], ["--every"], []),
    "bench --n -1": (["bench", "--n", "-1", "--out", "{tmp}/b.json"], ["--n"], []),
    "bench --methods nope": (["bench", "--methods", "nope", "--out", "{tmp}/b.json"], ["unknown method"], []),
}


@pytest.mark.parametrize("case", [pytest.param(name, marks=marks) for name, (_, _, marks) in CLI_CASES.items()])
@counted(CASES)
def test_a_cli_mistake_is_one_line_and_exit_2(work, tmp_path, monkeypatch, capsys, case):
    args, words, _ = CLI_CASES[case]
    monkeypatch.chdir(work)  # "a dog" names a file here
    fill = {"photo": str(work / "photo.png"), "work": str(work), "tmp": str(tmp_path)}
    args = [a.format(**fill) if "{" in a else a for a in args]
    if args[0] in ("explain", "classify", "demo", "bench") and "--model" not in args:
        args += ["--model", str(work / "tiny.pt")]
    try:
        status = cli.main(args)
    except SystemExit as stop:  # argparse's own usage errors
        status = stop.code
    captured = capsys.readouterr()
    assert status == 2, captured.err
    one_error_line(captured.err, *words)
    assert captured.out == ""


@counted(CASES)
def test_positionals_may_follow_options(work, tmp_path, capsys):
    out = tmp_path / "out"
    status = cli.main(["explain", str(work / "photo.png"), "--out", str(out), "--model", str(work / "tiny.pt"),
                       "--device", "cpu", "a dog", "--json", "a cat"])
    assert status == 0
    assert json.loads(capsys.readouterr().out)["prompts"] == ["a dog", "a cat"]


@counted(CASES)
def test_a_file_named_like_a_prompt_is_said_to_be_taken_for_an_image(work, monkeypatch, capsys):
    monkeypatch.chdir(work)
    status = cli.main(["classify", "photo.png", "a dog", "a cat", "--model", "tiny.pt", "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 1  # the note file is tried as an image and fails; photo.png is classified
    assert "'a dog' is taken for an image because a file of that name exists here" in err
    assert "--prompt 'a dog'" in err and "bug" not in err


# ----------------------------------------------------------------------------- standard output

def run_shell(command, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("CLIPVIZ_DEBUG", None)
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case,command,words", [
    ("models | head -0", "python -m clipviz models | head -0; exit ${PIPESTATUS[0]}", ["closed"]),
    ("explain | head -0", "python -m clipviz explain photo.png 'a cat' --model tiny.pt --device cpu --out o1 "
                          "| head -0; exit ${PIPESTATUS[0]}", ["closed"]),
    ("explain --json | head -0", "python -m clipviz explain photo.png 'a cat' --model tiny.pt --device cpu "
                                 "--out o2 --json | head -0; exit ${PIPESTATUS[0]}", ["closed"]),
    ("classify >&-", "python -m clipviz classify photo.png a b --model tiny.pt --device cpu >&-", ["closed"]),
    ("models > /dev/full", "python -m clipviz models > /dev/full", ["No space left"]),
])
@counted(CASES)
def test_a_closed_or_full_stdout_is_one_line_and_exit_2(work, case, command, words):
    result = run_shell(command, work)
    assert result.returncode == 2, result.stderr
    one_error_line(result.stderr, *words)


@counted(CASES)
def test_quiet_with_stdout_closed_still_writes_its_files(work, tmp_path):
    result = run_shell(f"python -m clipviz explain photo.png 'a cat' --model tiny.pt --device cpu --quiet "
                       f"--out {tmp_path} >&-", work)
    assert result.returncode == 0 and result.stderr == ""
    assert len(list(tmp_path.glob("photo--a-cat-*.png"))) == 1


# ----------------------------------------------------------------------------- the API

def png_header(width, height):
    """A PNG that declares width × height pixels and holds none (PIL opens the header only)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


API_CASES = {
    "explain(m, path, 5)": (lambda m, w: clipviz.explain(m, w / "photo.png", 5), ["string or a list of strings"]),
    "explain(m, path, None)": (lambda m, w: clipviz.explain(m, w / "photo.png", None), ["no prompt"]),
    "explain(m, path, [])": (lambda m, w: clipviz.explain(m, w / "photo.png", []), ["no prompt"]),
    "explain(m, path, b'bytes')": (lambda m, w: clipviz.explain(m, w / "photo.png", b"a dog"), ["decode"]),
    "prompts of mixed types": (lambda m, w: clipviz.explain(m, w / "photo.png", ["a dog", 5]), ["must be strings"]),
    "prompts with None": (lambda m, w: clipviz.explain(m, w / "photo.png", ["a dog", None]), ["must be strings"]),
    "against=3": (lambda m, w: clipviz.explain(m, w / "photo.png", "a dog", against=3), ["string"]),
    "against=''": (lambda m, w: clipviz.explain(m, w / "photo.png", "a dog", against=""), ["empty"]),
    "prompt of spaces": (lambda m, w: clipviz.explain(m, w / "photo.png", "   "), ["empty"]),
    "10,000-character prompt": (lambda m, w: clipviz.explain(m, w / "photo.png", LONG), ["tokens"]),
    "82-token prompt": (lambda m, w: clipviz.explain(m, w / "photo.png", WORDY), ["82 tokens"]),
    "image 5": (lambda m, w: clipviz.explain(m, 5, "a dog"), ["Cannot load an image from an int"]),
    "image bytes": (lambda m, w: clipviz.explain(m, b"\x89PNG", "a dog"), ["bytes"]),
    "images of mixed types": (lambda m, w: clipviz.explain(m, [str(w / "photo.png"), 5], "a dog"), ["int"]),
    "tensor of the wrong side": (lambda m, w: clipviz.explain(m, torch.zeros(3, 8, 8), "a dog"), ["[3, S, S]"]),
    "int64 array": (lambda m, w: clipviz.explain(m, np.zeros((8, 8, 3), np.int64), "a dog"), ["int64", "uint8"]),
    "complex array": (lambda m, w: clipviz.explain(m, np.zeros((8, 8, 3), complex), "a dog"), ["complex"]),
    "object array": (lambda m, w: clipviz.explain(m, np.array([["a"]], object), "a dog"), ["object"]),
    "1-d array": (lambda m, w: clipviz.explain(m, np.zeros(8, np.uint8), "a dog"), ["shape (8,)"]),
    "batch of arrays in one": (lambda m, w: clipviz.explain(m, np.zeros((2, 8, 8, 3), np.uint8), "a dog"), ["shape"]),
    "channels first": (lambda m, w: clipviz.explain(m, np.zeros((3, 8, 8), np.uint8), "a dog"), ["transpose"]),
    "5 channels": (lambda m, w: clipviz.explain(m, np.zeros((8, 8, 5), np.uint8), "a dog"), ["shape"]),
    "empty array": (lambda m, w: clipviz.explain(m, np.zeros((0, 8, 3), np.uint8), "a dog"), ["empty"]),
    "floats over 1": (lambda m, w: clipviz.explain(m, np.full((8, 8, 3), 200.0), "a dog"), ["[0, 1]"]),
    "NaN array": (lambda m, w: clipviz.explain(m, np.full((8, 8, 3), np.nan), "a dog"), ["NaN"]),
    "model a string": (lambda m, w: clipviz.explain("ViT-B/32", w / "photo.png", "a dog"), ["clipviz.load"]),
    "model None": (lambda m, w: clipviz.explain(None, w / "photo.png", "a dog"), ["clipviz.load"]),
    "method 3": (lambda m, w: clipviz.explain(m, w / "photo.png", "a dog", method=3), ["unknown method"]),
    "unknown option": (lambda m, w: clipviz.explain(m, w / "photo.png", "a dog", colour=1), ["no option colour"]),
    "start_layer='x'": (lambda m, w: clipviz.explain(m, w / "photo.png", "a dog", start_layer="x"), ["start_layer"]),
    "classify(m, path, 5)": (lambda m, w: clipviz.classify(m, w / "photo.png", 5), ["string or a list"]),
    "explain_video(m, v, 5)": (lambda m, w: clipviz.explain_video(m, w / "v.mp4", 5), ["string or a list"]),
    "load(5)": (lambda m, w: clipviz.load(5), ["registered name", "int 5"]),
    "load(None)": (lambda m, w: clipviz.load(None), ["NoneType"]),
    "load(device='mps')": (lambda m, w: clipviz.load(str(w / "tiny.pt"), device="mps"), ["mps"]),
    "load(device='xpu')": (lambda m, w: clipviz.load(str(w / "tiny.pt"), device="xpu"), ["xpu"]),
    "load(device='cuda:99')": (lambda m, w: clipviz.load(str(w / "tiny.pt"), device="cuda:99"), ["cuda:99"]),
    "load(device='meta')": (lambda m, w: clipviz.load(str(w / "tiny.pt"), device="meta"), ["meta"]),
    "load(device=1.5)": (lambda m, w: clipviz.load(str(w / "tiny.pt"), device=1.5), ["device"]),
    "random_model(seed=-1)": (lambda m, w: clipviz.random_model("ViT-B/32", seed=-1), ["seed"]),
    "random_model(seed=2**64)": (lambda m, w: clipviz.random_model("ViT-B/32", seed=2 ** 64), ["seed"]),
    "random_model(seed=0.5)": (lambda m, w: clipviz.random_model("ViT-B/32", seed=0.5), ["seed"]),
    "tokenize(5)": (lambda m, w: clipviz.tokenize(5), ["string"]),
    "tokenize(context_length='a')": (lambda m, w: clipviz.tokenize("a", context_length="a"), ["context_length"]),
    "batch_size='a'": (lambda m, w: clipviz.explain(m, w / "photo.png", "a dog", batch_size="a"), ["batch_size"]),
    "batch_size=0": (lambda m, w: clipviz.explain(m, w / "photo.png", "a dog", batch_size=0), ["batch_size"]),
    "explain_video batch_size=-1": (lambda m, w: clipviz.explain_video(m, w / "v.avi", "a dog", batch_size=-1),
                                    ["batch_size"]),
    "explain_video out=5": (lambda m, w: clipviz.explain_video(m, w / "v.avi", "a dog", out=5), ["out must be"]),
    "exp.overlay(5) of one prompt": (lambda m, w: clipviz.explain(m, w / "photo.png", "a dog").overlay(5),
                                     ["out of range", "1 prompt"]),
    "overlay(alpha='a')": (lambda m, w: clipviz.overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), alpha="a"),
                           ["alpha"]),
    "load_image('')": (lambda m, w: clipviz.load_image(""), ["empty"]),
    "text file as image": (lambda m, w: clipviz.load_image(w / "a dog"), ["not in a format clipviz reads"]),
    "text file object as image": (lambda m, w: clipviz.load_image(open(w / "a dog", "rb")), ["not in a format"]),
    "FIFO as image": (lambda m, w: clipviz.load_image(w / "pipe.png"), ["FIFO"]),
    "20000² header over PIL's limit": (lambda m, w: clipviz.load_image(w / "huge.png"),
                                       ["400,000,000 pixels", "67,108,864"]),
}


@pytest.mark.parametrize("case", list(API_CASES))
@counted(CASES)
def test_an_api_mistake_is_one_clipviz_error(work, model, case):
    (work / "huge.png").write_bytes(png_header(20_000, 20_000))
    call, words = API_CASES[case]
    with pytest.raises(ClipvizError) as raised:
        call(model, work)
    message = str(raised.value)
    for leak in ("<_io.", "178,956,970", "178956970", "bug"):
        assert leak not in message, message
    for word in words:
        assert word in message, (word, message)
