"""Issue 13, item 4: every command's outputs follow one rule.

Planned output paths are unique before anything is written (the same work given twice is done
once; different inputs whose names coincide get distinct names), writes are atomic, links and
existing files are never followed or replaced without --force / overwrite=True, a bad output
path fails before any long work and a failed run leaves no empty folder, and temporary files are
removed on SIGINT, SIGTERM and SIGHUP (exit 128 + the signal number). Each case is checked
against the files on disk, not against "it ran".
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clipviz
from clipviz import cli, outputs
from clipviz.errors import ClipvizError

from conftest import tiny_cli_folder
from hostile import counted, one_error_line, tally

CASES, _report = tally("outputs")
SIGNALS, _report_signals = tally("signals")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """tiny.pt (a random TINY_VIT CLIP, marked QuickGELU) and photo.png (56×40)."""
    return tiny_cli_folder(tmp_path_factory.mktemp("outputs"), seed=3)


def explain_cli(work, *args, capsys=None):
    """cli.main for explain with the tiny model → (status, stdout, stderr)."""
    status = cli.main(["explain", *map(str, args), "--model", str(work / "tiny.pt"), "--device", "cpu"])
    captured = capsys.readouterr() if capsys is not None else None
    return status, captured


def names(folder):
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else None


# ----------------------------------------------------------------------------- unique names

def colliding_prompts():
    """Two different prompts whose slugs are equal (same readable body, same 6-hex sha1 prefix):
    found by a birthday search over punctuation that the slug drops."""
    seen = {}
    marks = "!?.,;:'()"
    for number in range(200_000):
        text = "a dog " + "".join(marks[int(d)] for d in np.base_repr(number, 9))
        key = outputs.slug(text)
        if key in seen:
            return seen[key], text
        seen[key] = text
    raise AssertionError("no collision found")


@counted(CASES)
def test_a_crafted_slug_collision_exists_and_gets_distinct_names():
    first, second = colliding_prompts()
    assert first != second and outputs.slug(first) == outputs.slug(second)
    assert outputs.distinct_names([outputs.slug(first), outputs.slug(second), "b"]) == \
        [outputs.slug(first), outputs.slug(first) + "-2", "b"]


@pytest.mark.parametrize("case", ["same prompt twice", "same prompt twice with --force", "same image twice",
                                  "same image through a link", "colliding slugs", "colliding slugs with --force"])
@counted(CASES)
def test_two_inputs_with_one_output_name_never_die_half_way_nor_replace_each_other(work, tmp_path, case, capsys):
    photo = work / "photo.png"
    out = tmp_path / "out"
    (tmp_path / "link.png").symlink_to(photo)
    a, b = colliding_prompts() if "colliding" in case else ("a dog", "a dog")
    images = [photo, tmp_path / "link.png"] if "link" in case else [photo, photo] if "image" in case else [photo]
    prompts = ["a dog"] if "image" in case else [a, b]
    force = ["--force"] if "force" in case else []
    status, captured = explain_cli(work, *images, *[f"--prompt={p}" for p in prompts], "--out", out, "--json",
                                   *force, capsys=capsys)
    assert status == 0, captured.err
    result = json.loads(captured.out)
    files = result["files"]
    if "colliding" in case:  # different prompts: both explained, two distinct files
        assert result["prompts"] == [a, b] and len(set(files)) == 2 == len(names(out))
    else:  # the same work given twice: done once, said once on stderr
        assert len(result["results"]) == 1 and len(result["prompts"]) == 1 and len(names(out)) == 1
        assert "given twice" in captured.err and "explained once" in captured.err
    for path in files:  # each file holds its own prompt's map (none replaced by the other's)
        assert Path(path).stat().st_size > 0
    if "colliding" in case:
        assert hashlib.sha256(Path(files[0]).read_bytes()).digest() != hashlib.sha256(Path(files[1]).read_bytes()).digest()


@counted(CASES)
def test_video_outputs_of_coinciding_prompts_get_distinct_names(tmp_path):
    from clipviz.video import output_names
    first, second = colliding_prompts()
    videos = output_names("clip.mp4", [first, second, first], tmp_path)["videos"]
    assert len(set(videos)) == 3


# ----------------------------------------------------------------------------- bad paths before work

@pytest.mark.parametrize("out,words", [
    ("weird.txt", ["named like a text/plain file", "folder name"]),
    ("results.json", ["named like a application/json file"]),
    ("a-file", ["cannot create the output folder", "it is a file"]),
    ("a-file/sub", ["a file, not a folder"]),
    ("fig.jpg", ["figure file must end in .png, .pdf or .svg"]),
])
@counted(CASES)
def test_a_bad_out_is_refused_before_the_model_loads_and_creates_nothing(work, tmp_path, monkeypatch, capsys, out, words):
    monkeypatch.chdir(tmp_path)
    Path("a-file").write_text("mine")
    loads = []
    monkeypatch.setattr("clipviz.cli.inputs.load", lambda *a, **k: loads.append(a), raising=False)
    monkeypatch.setattr("clipviz.hub.load", lambda *a, **k: loads.append(a))
    status, captured = explain_cli(work, work / "photo.png", "a dog", "--out", out, capsys=capsys)
    line = one_error_line(captured.err)
    assert status == 2 and loads == [] and all(w in line for w in words), line
    assert sorted(os.listdir(tmp_path)) == ["a-file"] and Path("a-file").read_text() == "mine"


@pytest.mark.parametrize("out,words", [("weird.txt", "named like a text/plain file"), ("a-file", "it is a file")])
@counted(CASES)
def test_a_video_run_checks_its_outputs_before_the_model_loads(work, tmp_path, monkeypatch, capsys, out, words):
    monkeypatch.chdir(tmp_path)
    Path("a-file").write_text("mine")
    clip = write_clip(tmp_path / "clip.avi")
    loads = []
    monkeypatch.setattr("clipviz.hub.load", lambda *a, **k: loads.append(a))
    status, captured = explain_cli(work, clip, "a dog", "--out", out, capsys=capsys)
    assert status == 2 and words in one_error_line(captured.err) and loads == []
    assert sorted(os.listdir(tmp_path)) == ["a-file", "clip.avi"]


@pytest.mark.parametrize("failure", ["--device=cuda:99", "--device=meta", "--method=nope", "--model=missing.pt"])
@counted(CASES)
def test_a_run_that_fails_leaves_no_empty_output_folder(work, tmp_path, capsys, failure):
    out = tmp_path / "new" / "folder"
    status = cli.main(["explain", str(work / "photo.png"), "a dog", "--out", str(out),
                       *(["--model", str(work / "tiny.pt")] if "model" not in failure else []), failure])
    assert status == 2 and one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "new").exists()


@counted(CASES)
def test_an_image_that_fails_leaves_no_empty_output_folder(work, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    status, captured = explain_cli(work, broken, "a dog", "--out", tmp_path / "out", capsys=capsys)
    assert status == 2 and "Cannot read" in one_error_line(captured.err)
    assert not (tmp_path / "out").exists()


@counted(CASES)
def test_a_link_planted_at_a_planned_name_is_neither_followed_nor_replaced(work, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    planned = out / f"photo--{outputs.slug('a dog')}.png"
    planned.symlink_to(victim)
    status, captured = explain_cli(work, work / "photo.png", "a dog", "--out", out, capsys=capsys)
    assert status == 2 and "already exists" in one_error_line(captured.err)
    assert planned.is_symlink() and victim.read_text() == "keep me"
    status, captured = explain_cli(work, work / "photo.png", "a dog", "--out", out, "--force", capsys=capsys)
    assert status == 0 and not planned.is_symlink() and victim.read_text() == "keep me"
    assert Image.open(planned).size == (56, 40)


# ----------------------------------------------------------------------------- bench --out

@pytest.fixture
def counted_bench(monkeypatch):
    """clipviz.bench's runners replaced by a stand-in that records its calls (the real benchmark
    takes minutes); the CLI's own checks and writing are what is tested."""
    calls = []

    def fake(model, **kwargs):
        calls.append(kwargs)
        return {"config": {"n": 1}, "summary": {}}
    monkeypatch.setattr("clipviz.bench.run_benchmark", fake)
    monkeypatch.setattr("clipviz.bench.markdown", lambda result: "| table |")
    return calls


@counted(CASES)
def test_bench_never_replaces_a_file_without_force_and_checks_before_the_run(work, tmp_path, counted_bench, capsys):
    out = tmp_path / "bench.json"
    out.write_text("my notes")
    args = ["bench", "--model", str(work / "tiny.pt"), "--n", "1", "--out", str(out)]
    assert cli.main(args) == 2
    assert "already exists" in one_error_line(capsys.readouterr().err)
    assert counted_bench == [] and out.read_text() == "my notes"  # refused before the benchmark ran
    assert cli.main(args + ["--force"]) == 0 and len(counted_bench) == 1
    assert json.loads(out.read_text()) == {"config": {"n": 1}, "summary": {}}
    assert cli.main(args) == 0 and len(counted_bench) == 2  # now clipviz's own: a re-run replaces it
    assert sorted(os.listdir(tmp_path)) == ["bench.json"]  # no temporary file left


@pytest.mark.parametrize("out,words", [(".", "is a folder"), ("results.txt", "unknown file type"),
                                       ("a-file/b.json", "it is a file")])
@counted(CASES)
def test_bench_refuses_a_bad_out_before_the_run(work, tmp_path, counted_bench, monkeypatch, capsys, out, words):
    monkeypatch.chdir(tmp_path)
    Path("a-file").write_text("x")
    assert cli.main(["bench", "--model", str(work / "tiny.pt"), "--out", out]) == 2
    assert words in one_error_line(capsys.readouterr().err) and counted_bench == []


# ----------------------------------------------------------------------------- the API

@pytest.fixture(scope="module")
def explanation(work):
    model = clipviz.load(str(work / "tiny.pt"), device="cpu")[0]
    return clipviz.explain(model, str(work / "photo.png"), "a dog")


@counted(CASES)
def test_save_never_replaces_a_file_it_did_not_write_unless_overwrite(explanation, tmp_path):
    theirs = tmp_path / "figure.png"
    theirs.write_bytes(b"theirs")
    with pytest.raises(ClipvizError, match="overwrite=True"):
        explanation.save(theirs)
    assert theirs.read_bytes() == b"theirs"
    explanation.save(theirs, overwrite=True)
    assert Image.open(theirs).format == "PNG"
    mine = explanation.save(tmp_path / "again.pdf")
    explanation.save(mine)  # a notebook cell run twice: its own unchanged figure is replaced
    assert mine.read_bytes().startswith(b"%PDF") and sorted(os.listdir(tmp_path)) == ["again.pdf", "figure.png"]


@counted(CASES)
def test_write_report_never_replaces_a_file_it_did_not_write_unless_overwrite(tmp_path):
    from clipviz.report import write_report
    theirs = tmp_path / "report.html"
    theirs.write_text("theirs")
    with pytest.raises(ClipvizError, match="overwrite=True"):
        write_report(theirs, "<html></html>")
    assert theirs.read_text() == "theirs"
    write_report(theirs, "<html>1</html>", overwrite=True)
    write_report(theirs, "<html>2</html>")  # its own now
    assert theirs.read_text() == "<html>2</html>"


@counted(CASES)
def test_video_csv_header_names_the_prompts(tmp_path):
    from clipviz.video import VideoExplanation
    result = VideoExplanation(source="v.mp4", prompts=["a dog", "a cat, sitting"], method="relevance", against=None,
                              frames=np.array([0]), times=np.array([0.0]), scores=np.array([[0.1, 0.2]]),
                              probs=np.array([[0.4, 0.6]]), peaks=np.array([[[1, 2], [-1, -1]]]), fps=25.0,
                              output_fps=25.0)
    import csv
    header, row = list(csv.reader(result.csv_text().splitlines()))
    assert header == ["frame", "time_s", "score_0: a dog", "prob_0: a dog", "peak_x_0: a dog", "peak_y_0: a dog",
                      "score_1: a cat, sitting", "prob_1: a cat, sitting", "peak_x_1: a cat, sitting",
                      "peak_y_1: a cat, sitting"]
    assert row == ["0", "0.000000", "0.100000", "0.400000", "1", "2", "0.200000", "0.600000", "", ""]


@counted(CASES)
def test_a_video_sampled_more_sparsely_than_opencv_can_write_still_gets_its_video(explanation, work, tmp_path):
    clip = write_clip(tmp_path / "clip.avi")  # 4 frames at 10 frames/s: one sample, 1e-5 frames/s
    result = clipviz.explain_video(explanation.model, clip, "a dog", every=1_000_000, out=tmp_path / "out")
    assert list(result.frames) == [0] and result.output_fps == pytest.approx(1e-5)
    assert sorted(names(tmp_path / "out")) == ["clip--a-dog-61128e.mp4", "clip.csv", "clip.json"]
    assert result.files["videos"][0].stat().st_size > 0


@counted(CASES)
def test_a_video_writer_that_cannot_open_leaves_no_folder_behind(explanation, tmp_path, monkeypatch):
    import cv2
    clip = write_clip(tmp_path / "clip.avi")

    class Unopened:  # what cv2.VideoWriter is when FFmpeg refuses the codec or the rate
        def __init__(self, *args):
            pass

        def isOpened(self):
            return False

        def release(self):
            pass
    monkeypatch.setattr(cv2, "VideoWriter", Unopened)
    with pytest.raises(ClipvizError, match="OpenCV cannot write"):
        clipviz.explain_video(explanation.model, clip, "a dog", out=tmp_path / "new" / "out")
    assert sorted(os.listdir(tmp_path)) == ["clip.avi"]


# ----------------------------------------------------------------------------- signals

SLOW_SAVE = """
import sys, time
from PIL import Image
def slow(self, fp, *args, **kwargs):  # half a file, then wait: the signal comes now
    fp.write(b"half a png"); fp.flush()
    print("WRITING", file=sys.stderr, flush=True)
    time.sleep(5)  # a writer thread (folder runs) finishes its file; the main thread stops the run
Image.Image.save = slow
from clipviz.cli import main
sys.exit(main(sys.argv[1:]))
"""

SLOW_VIDEO = """
import sys, time
import clipviz.video as video
real = video._Outputs.write
def slow(self, item):  # the overlay videos' temporary files are open now
    real(self, item)
    print("WRITING", file=sys.stderr, flush=True)
    time.sleep(60)
video._Outputs.write = slow
from clipviz.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_until_writing(code, args, cwd, number):
    """Start ``code`` with ``args``, send signal ``number`` once it says WRITING → (status, stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("CLIPVIZ_DEBUG", None)
    process = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    while line and "WRITING" not in line:
        line = process.stderr.readline()
    assert "WRITING" in line, process.communicate()
    process.send_signal(number)
    _, err = process.communicate(timeout=60)
    return process.returncode, err


def write_clip(path, frames=4):
    import cv2
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 40 * i, dtype=np.uint8))
    writer.release()
    return path


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP", "SIGINT"])
@pytest.mark.parametrize("what", ["overlay", "video"])
@counted(SIGNALS)
def test_a_signal_mid_write_removes_every_temporary_file(work, tmp_path, name, what):
    number = getattr(signal, name)
    out = tmp_path / "out"
    if what == "overlay":
        code, source = SLOW_SAVE, work / "photo.png"
    else:
        code, source = SLOW_VIDEO, write_clip(tmp_path / "clip.avi")
    status, err = run_until_writing(code, ["explain", source, "a dog", "--out", out, "--model", work / "tiny.pt",
                                           "--device", "cpu"], tmp_path, number)
    assert status == (130 if name == "SIGINT" else 128 + number), err
    assert err.strip().splitlines()[-1] == ("clipviz: interrupted" if name == "SIGINT" else f"clipviz: stopped by {name}")
    # no temporary file; the main thread stops at once, while a file a writer thread (folder
    # runs) was writing is finished and published whole or not at all
    assert not [name for name in names(out) or [] if name.startswith(".")], names(out)
    if what == "video":
        assert names(out) in (None, [])  # the overlay videos were open: removed
