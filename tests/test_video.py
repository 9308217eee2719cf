"""clipviz.video on clips the tests write with OpenCV (mp4v in .mp4, MJPG in .avi: both writable by
the headless wheel here; it has no H.264 encoder).

Checked against independent numbers: where the moving object really is (drawn by construction),
``explain`` on each decoded frame saved as a PNG, hand-worked frame choices and EMA, and an
independent OpenCV read of every file written.
"""

import csv
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

cv2 = pytest.importorskip("cv2")

import clipviz
from clipviz import ClipvizError, video
from clipviz.maps import map_to_photo, normalise_maps, peak_xy
from clipviz.synth import COLOURS, SceneObject, object_mask, object_prompt
from clipviz.video import ScoreCurve, explain_frames, explain_video, open_video, read_frames

from test_cli import assert_user_error, run_cli  # `python -m clipviz` in a subprocess; exit 2, one line

GREY = (128, 128, 128)
RADIUS = 36.0


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)  # two cores shared by several test runs
    return clipviz.load("synth-vit-t16", device="cpu")[0]


def write_clip(path, frames, fourcc="mp4v", fps=10.0):
    """RGB uint8 [H, W, 3] frames → a video file through cv2.VideoWriter; returns the path."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened(), fourcc
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def decoded_frames(path):
    """Every frame of a file as OpenCV decodes it, RGB, read independently of clipviz."""
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def moving_object(count, shape="circle", colour="red"):
    """One object on a plain grey 224×224 background, moving along a parabola from the top left to
    the bottom right: (frames, masks bool [count, 224, 224], centres [(x, y)])."""
    frames, masks, centres = [], [], []
    for k in range(count):
        s = k / (count - 1)
        centre = (48.0 + 128.0 * s, 56.0 + 112.0 * s * s)
        obj = SceneObject(shape, colour, "large", centre, RADIUS, 0.0, COLOURS[colour])
        mask = object_mask(obj)
        image = np.empty((224, 224, 3), np.uint8)
        image[:] = GREY
        image[mask] = COLOURS[colour]
        frames.append(image)
        masks.append(mask)
        centres.append(centre)
    return frames, np.stack(masks), centres


def distance_to_mask(point, mask):
    rows, cols = np.nonzero(mask)
    return float(np.min(np.hypot(cols - point[0], rows - point[1])))


# ----------------------------------------------------------------------------- must show

def test_peak_follows_a_moving_object(model, tmp_path):
    """The map's peak stays on a red circle moving along a known path in >= 90% of frames."""
    frames, masks, _ = moving_object(30)
    path = write_clip(tmp_path / "moving.mp4", frames)
    prompt = object_prompt("circle", "red")
    result = explain_video(model, path, prompt, method="relevance", batch_size=8)
    assert list(result.frames) == list(range(30))
    # on the object, or within half a patch (8 px) of it: the map's resolution is one 16-px patch
    near = [distance_to_mask(result.peaks[f, 0], masks[f]) <= 8.0 for f in range(30)]
    inside = [bool(masks[f][result.peaks[f, 0][1], result.peaks[f, 0][0]]) for f in range(30)]
    print(f"peak within half a patch of the object: {np.mean(near):.1%}; inside its mask: {np.mean(inside):.1%}")
    assert np.mean(near) >= 0.9
    # and it moves with the object: the peaks' x goes from the left third to the right third
    assert result.peaks[:5, 0, 0].mean() < 224 / 3 < 2 * 224 / 3 < result.peaks[-5:, 0, 0].mean()


def test_frame_k_equals_explain_on_that_frame_saved_as_png(model, tmp_path):
    """Non-square frames (crop box off the edges), two prompts, batches of 3 over 7 frames."""
    rng = np.random.default_rng(3)
    frames = []
    for k in range(7):
        frame = np.empty((150, 200, 3), np.uint8)
        frame[:] = rng.integers(60, 200, 3)
        obj = SceneObject("square", "blue", "large", (60.0 + 12 * k, 75.0), 30.0, 0.0, COLOURS["blue"])
        frame[object_mask(obj, 224)[:150, :200]] = COLOURS["blue"]
        frames.append(frame)
    path = write_clip(tmp_path / "clip.avi", frames, fourcc="MJPG")
    prompts = ["a photo of a blue square", "a photo of a red circle"]
    decoded = decoded_frames(path)
    got = list(explain_frames(model, path, prompts, batch_size=3))
    result = explain_video(model, path, prompts, batch_size=3)
    assert [g.index for g in got] == list(range(7)) and len(decoded) == 7
    for k, item in enumerate(got):
        png = tmp_path / f"frame{k}.png"
        Image.fromarray(decoded[k]).save(png)
        alone = clipviz.explain(model, str(png), prompts)
        np.testing.assert_array_equal(item.explanation.photo, alone.photo)
        assert item.time == pytest.approx(k / 10.0)
        seen = ~np.isnan(alone.maps)
        assert np.array_equal(seen, ~np.isnan(item.explanation.maps)) and (~seen).any()  # crop box
        assert np.max(np.abs(item.explanation.maps[seen] - alone.maps[seen])) <= 1e-5
        assert np.max(np.abs(item.explanation.scores - alone.scores)) <= 1e-5
        assert np.max(np.abs(result.scores[k] - alone.scores)) <= 1e-5
        assert np.max(np.abs(result.probs[k] - alone.probs)) <= 1e-5


def test_methods_and_against_are_those_of_images(model, tmp_path):
    frames, _, _ = moving_object(3)
    path = write_clip(tmp_path / "clip.avi", frames, fourcc="MJPG")
    decoded = decoded_frames(path)
    options = dict(method="gradeclip", against="a photo of a blue square")
    result = explain_video(model, path, ["a photo of a red circle", "a photo of a red star"], **options)
    for k, item in enumerate(explain_frames(model, path, ["a photo of a red circle", "a photo of a red star"],
                                            **options)):
        alone = clipviz.explain(model, decoded[k], ["a photo of a red circle", "a photo of a red star"], **options)
        assert np.nanmax(np.abs(item.explanation.maps - alone.maps)) <= 1e-5
        assert result.peaks[k].tolist() == [peak_xy(m) for m in alone.maps]
    assert result.against == ["a photo of a blue square"] and result.method == "gradeclip"


def test_truncated_file_explains_the_frames_that_decode_and_says_where_it_stopped(model, tmp_path):
    frames, _, _ = moving_object(30)
    full = write_clip(tmp_path / "full.avi", frames, fourcc="MJPG")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    decodable = len(decoded_frames(cut))
    assert 0 < decodable < 30
    result = explain_video(model, cut, "a photo of a red circle", out=tmp_path / "out")
    assert list(result.frames) == list(range(decodable))
    assert result.stopped.startswith(f"decoding stopped at frame {decodable} ({decodable / 10:.2f} s) of 30")
    written = decoded_frames(result.files["videos"][0])
    assert len(written) == decodable
    assert json.loads(result.files["json"].read_text())["stopped"] == result.stopped

    cli = run_cli("explain", cut, "a photo of a red circle", "--out", tmp_path / "cli", cwd=tmp_path)
    assert cli.returncode == 1
    assert f"decoding stopped at frame {decodable}" in cli.stderr and "Traceback" not in cli.stderr
    assert len(list((tmp_path / "cli").glob("*.mp4"))) == 1


def test_zero_frame_files_give_one_clear_error(model, tmp_path):
    empty_avi = _empty_clip(tmp_path / "empty.avi", "MJPG")  # opens, header says 0 frames
    with pytest.raises(ClipvizError, match="holds no video frames"):
        explain_video(model, empty_avi, "a cat", out=tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    empty_mp4 = _empty_clip(tmp_path / "empty.mp4", "mp4v")  # its MP4 index is never written
    with pytest.raises(ClipvizError, match="cannot read .* as a video"):
        explain_video(model, empty_mp4, "a cat")
    cli = run_cli("explain", empty_avi, "a cat", "--out", tmp_path / "cli", cwd=tmp_path)
    assert_user_error(cli, "holds no video frames")


def _empty_clip(path, fourcc):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (64, 48))
    writer.release()
    return path


def test_a_non_video_file_named_mp4_gives_one_clear_error(model, tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("these are meeting notes, not a video\n" * 20)
    with pytest.raises(ClipvizError, match="cannot read .*notes.mp4.* as a video"):
        explain_video(model, fake, "a cat", out=tmp_path / "out")
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(ClipvizError, match="as a video"):
        explain_video(model, noise, "a cat")
    assert_user_error(run_cli("explain", fake, "a cat", "--out", tmp_path / "cli", cwd=tmp_path),
                      "cannot read", "as a video")
    assert_user_error(run_cli("explain", tmp_path / "missing.mp4", "a cat", cwd=tmp_path), "missing.mp4")


# ----------------------------------------------------------------------------- options

@pytest.fixture(scope="module")
def thirty_frames(tmp_path_factory):
    """30 frames at 10 fps whose frame k is filled with grey level 8·k (readable after MJPG)."""
    frames = [np.full((48, 64, 3), 8 * k, np.uint8) for k in range(30)]
    return write_clip(tmp_path_factory.mktemp("clip") / "levels.avi", frames, fourcc="MJPG")


def sampled(path, **kwargs):
    capture, info = open_video(path)
    frames, _ = read_frames(capture, info, **kwargs)
    items = [(index, time, int(np.round(rgb.mean() / 8))) for index, time, rgb in frames]
    capture.release()
    return items


@pytest.mark.parametrize("kwargs, expected", [
    ({}, list(range(30))),
    ({"every": 4, "start": 0.5, "end": 2.2}, [5, 9, 13, 17, 21]),      # frames 5..21 (time < 2.2 s)
    ({"fps": 2.5}, [0, 4, 8, 12, 16, 20, 24, 28]),                      # a frame every 0.4 s
    ({"fps": 3.0}, [0, 4, 7, 10, 14, 17, 20, 24, 27]),                  # first frame at or after k/3 s
    ({"fps": 3.0, "start": 1.0}, [10, 14, 17, 20, 24, 27]),
    ({"fps": 50.0}, list(range(30))),                                   # above the source rate: all
])
def test_every_fps_start_end_choose_the_hand_worked_frames(thirty_frames, kwargs, expected):
    items = sampled(thirty_frames, **kwargs)
    assert [i for i, _, _ in items] == expected
    assert [t for _, t, _ in items] == pytest.approx([i / 10 for i in expected])
    assert [level for _, _, level in items] == expected  # the pixels are frame i's, not a neighbour's


@pytest.mark.parametrize("kwargs, words", [
    ({"every": 2, "fps": 5.0}, "not both"),
    ({"every": 0}, "every must be"),
    ({"fps": -1.0}, "fps must be"),
    ({"start": -1.0}, "start must be"),
    ({"start": 2.0, "end": 1.0}, "must come after start"),
    ({"start": 3.5}, "past the end of the video (3.00 s)"),
])
def test_bad_sampling_options_are_user_errors(thirty_frames, kwargs, words):
    with pytest.raises(ClipvizError, match=re.escape(words)):
        sampled(thirty_frames, **kwargs)


def test_smoothing_is_the_documented_ema_of_the_min_max_maps(model, tmp_path):
    frames, _, _ = moving_object(6)
    path = write_clip(tmp_path / "ema.avi", [f[:, :200] for f in frames], fourcc="MJPG")
    prompt = "a photo of a red circle"
    raw = list(explain_frames(model, path, prompt))
    beta = 0.6
    smooth = list(explain_frames(model, path, prompt, smoothing=beta))
    average = None
    for plain, smoothed in zip(raw, smooth):
        current = normalise_maps(plain.explanation.token_maps).astype(np.float64)
        average = current if average is None else (1 - beta) * current + beta * average  # by hand
        expected = map_to_photo(average, plain.explanation.crop_box)
        seen = ~np.isnan(expected)
        assert np.max(np.abs(smoothed.explanation.maps[seen] - expected[seen])) <= 1e-5
        np.testing.assert_allclose(smoothed.explanation.token_maps, plain.explanation.token_maps, atol=1e-6)
    with pytest.raises(ClipvizError, match="smoothing must be in"):
        next(explain_frames(model, path, prompt, smoothing=1.0))


# ----------------------------------------------------------------------------- outputs

def test_outputs_videos_json_csv_and_no_temporary_files(model, tmp_path):
    frames, _, _ = moving_object(12)
    path = write_clip(tmp_path / "clip.mp4", [f[:, :210] for f in frames])
    prompts = ["a photo of a red circle", "a photo of a blue square"]
    out = tmp_path / "out"
    result = explain_video(model, path, prompts, every=3, out=out)
    assert list(result.frames) == [0, 3, 6, 9] and result.output_fps == pytest.approx(10 / 3)
    files = result.files
    assert sorted(out.iterdir()) == sorted(files["videos"] + [files["json"], files["csv"]])  # nothing else
    for t, video in enumerate(files["videos"]):
        written = decoded_frames(video)
        capture, info = open_video(video)
        capture.release()
        assert len(written) == 4 and info.fps == pytest.approx(10 / 3, rel=1e-3)  # the container rounds
        assert written[0].shape == (224 + 48, 210, 3)  # frame + strip: max(48, round(0.2 · 224))
        # the top is the overlay of frame f's map (mp4v is lossy: compare on average)
        for f, item in enumerate(explain_frames(model, path, prompts, every=3)):
            expected = clipviz.overlay(item.explanation.photo, item.explanation.maps[t])
            assert np.abs(written[f][:224].astype(int) - expected).mean() < 6
    rows = list(csv.DictReader(files["csv"].read_text().splitlines()))
    assert [int(r["frame"]) for r in rows] == [0, 3, 6, 9]
    for f, row in enumerate(rows):
        for t in range(2):
            named = f"{t}: {prompts[t]}"  # each column names its prompt
            assert float(row[f"score_{named}"]) == pytest.approx(result.scores[f, t], abs=1e-6)
            assert [int(row[f"peak_x_{named}"]), int(row[f"peak_y_{named}"])] == list(result.peaks[f, t])
    summary = json.loads(files["json"].read_text())
    assert [fr["frame"] for fr in summary["frames"]] == [0, 3, 6, 9]
    best = int(np.argmax(result.scores[:, 0]))
    assert summary["best"][0] == {"prompt": prompts[0], "frame": 3 * best, "time": pytest.approx(0.3 * best),
                                  "score": pytest.approx(float(result.scores[best, 0]))}
    explain_video(model, path, prompts, every=3, out=out)  # a re-run replaces clipviz's own files
    files["csv"].write_text("my own notes")  # changed by the user: no longer clipviz's to replace
    with pytest.raises(ClipvizError, match="already exists"):
        explain_video(model, path, prompts, every=3, out=out)
    assert files["csv"].read_text() == "my own notes"
    explain_video(model, path, prompts, every=6, out=out, force=True)
    assert len(decoded_frames(files["videos"][0])) == 2


def test_an_interrupt_leaves_no_temporary_or_partial_file(model, tmp_path, monkeypatch):
    frames, _, _ = moving_object(10)
    path = write_clip(tmp_path / "clip.avi", frames, fourcc="MJPG")
    real, calls = video.explain_frames, []

    def interrupted(*args, **kwargs):
        for item in real(*args, **kwargs):
            calls.append(item.index)
            if len(calls) == 5:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(video, "explain_frames", interrupted)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        explain_video(model, path, "a photo of a red circle", batch_size=2, out=out)
    assert calls == [0, 1, 2, 3, 4] and not out.exists()  # the folder it made is gone too


def test_score_curve_keeps_one_mean_per_column_and_doubles_its_window():
    curve = ScoreCurve(width=4, height=48, t0=0.0, t1=4.0)
    for time, score in [(0.0, 1.0), (0.5, 3.0), (1.0, 2.0), (3.9, 5.0)]:
        curve.add(time, score)
    assert list(curve.counts) == [2, 1, 0, 1] and list(curve.sums) == [4.0, 2.0, 0.0, 5.0]
    curve.add(6.0, 7.0)  # past t1 = 4: the window becomes [0, 8), columns 2 s wide
    assert curve.t1 == 8.0 and list(curve.counts) == [3, 1, 0, 1] and list(curve.sums) == [6.0, 5.0, 0.0, 7.0]
    strip = curve.draw("a prompt", 6.0)
    assert strip.shape == (48, 4, 3) and strip.dtype == np.uint8


# ----------------------------------------------------------------------------- command line

def test_cli_explains_a_video_with_the_api_numbers(model, tmp_path):
    frames, _, _ = moving_object(8)
    path = write_clip(tmp_path / "clip.mp4", frames)
    result = run_cli("explain", path, "a photo of a red circle", "--every", "2", "--smoothing", "0.5",
                     "--out", tmp_path / "out", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    api = explain_video(model, path, "a photo of a red circle", every=2, smoothing=0.5)
    assert [f["frame"] for f in summary["frames"]] == [0, 2, 4, 6]
    assert [f["scores"][0] for f in summary["frames"]] == pytest.approx(list(api.scores[:, 0]), abs=1e-6)
    assert [f["peaks"][0] for f in summary["frames"]] == api.peaks[:, 0].tolist()
    assert len(decoded_frames(summary["files"]["videos"][0])) == 4
    assert_user_error(run_cli("explain", path, "a cat", "--figure", cwd=tmp_path), "--figure is for images")
    assert_user_error(run_cli("explain", path, "a cat", "--every", "0", cwd=tmp_path), "--every")
