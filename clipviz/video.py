"""Explain a video: stream its frames through ``explain`` → overlay videos + per-frame scores.

    result = clipviz.explain_video(model, "clip.mp4", ["a person dribbling", "a ball"], every=5,
                                   out="clipviz-out")
    result.scores          # float [F, T] cosine of sampled frame f with prompt t
    result.files           # {"videos": [one overlay .mp4 per prompt], "json": ..., "csv": ...}

    for frame in explain_frames(model, "clip.mp4", "a ball"):   # one FrameExplanation at a time
        frame.index, frame.time, frame.explanation.maps

Data flow (nothing grows with the video's length but a few numbers per sampled frame):

    cv2.VideoCapture ─► BGR uint8 [H, W, 3] ─► RGB ─► sampled (every / fps, start … end)
        ─► batches of ``batch_size`` frames ─► clipviz.explain(list of frames)  (one image pass
           per batch shared by all prompts; the same preprocessing, crop box and maps as images)
        ─► optional EMA of the maps ─► overlay (clipviz.render) + score curve ─► cv2.VideoWriter

Frames are decoded with OpenCV's FFmpeg backend (``opencv-python-headless``, the extra
``clipviz[video]``). A frame explained here equals ``explain`` on that decoded frame saved as a PNG.
"""

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ClipvizError
from .outputs import (FORCE_HINT, check_folder, distinct_names, prepare_folder, publish, refuse_existing,
                      refuse_inputs, slug, write_atomically)
from .signals import raising_on_termination

API_HINT = "pass force=True to replace it, or another out= folder"  # explain_video's wording of --force
from .progress import bar as progress_bar

OUTPUT_FOURCC = "mp4v"  # MPEG-4 Part 2: the opencv wheels' FFmpeg has no H.264 encoder
# OpenCV's MPEG-4 writer fails to open below some rate (1e-4 frames/s did, 0.01 works): a sparser
# sampling (--every 1000000 on a short clip) is written at this rate, its timing otherwise kept
MIN_WRITER_FPS = 0.01
CURVE_FRACTION = 0.2    # the score strip under each overlay, as a share of the frame height


# ----------------------------------------------------------------------------- reading

def _cv2():
    # FFmpeg and OpenCV log every damaged packet to stderr; clipviz reports what matters itself
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    try:
        import cv2
    except ImportError:
        raise ClipvizError("explaining a video needs OpenCV: pip install 'clipviz[video]' "
                           "(or pip install opencv-python-headless)") from None
    return cv2


@dataclass
class VideoInfo:
    """What the container says: fps (frames per second), frame_count (0 when unknown), size in pixels."""

    path: str
    fps: float
    frame_count: int
    width: int
    height: int

    @property
    def duration(self):
        """Seconds, from the header (None when the frame count is unknown)."""
        return self.frame_count / self.fps if self.frame_count > 0 else None


def open_video(path):
    """Open ``path`` with OpenCV's FFmpeg backend → (cv2.VideoCapture, VideoInfo).

    Raises ClipvizError for a missing file, a folder, or a file FFmpeg cannot open (not a video, an
    MP4 cut short before its index, a codec this build cannot decode).
    """
    cv2 = _cv2()
    path = Path(path).expanduser()
    if path.is_dir():
        raise ClipvizError(f"'{path}' is a folder, not a video file: pass the path of one video")
    if not path.is_file():
        raise ClipvizError(f"no video file at '{path}': check the spelling and the working directory ({os.getcwd()})")
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)  # FFmpeg only: never an image-sequence pattern
    if not capture.isOpened():
        raise ClipvizError(f"cannot read '{path}' as a video: it is not a video file, is cut short (an MP4 "
                           "whose end is missing has lost its index), or uses a codec this OpenCV cannot "
                           "decode; re-export it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)")
    fps = capture.get(cv2.CAP_PROP_FPS)
    info = VideoInfo(str(path), fps if math.isfinite(fps) and fps > 0 else 0.0,
                     max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))),
                     int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    if info.fps == 0.0:
        capture.release()
        raise ClipvizError(f"'{path}' gives no frame rate, so frame times are unknown; re-export it "
                           "with a constant frame rate (e.g. ffmpeg -i IN -r 30 OUT.mp4)")
    return capture, info


def _sampling(info, every, fps):
    """Which source frames to explain: returns keep(index) → bool and the output frame rate."""
    if every is not None and fps is not None:
        raise ClipvizError("give --every N or --fps F, not both")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0):
        raise ClipvizError(f"fps must be a positive number of frames per second, got {fps!r}")
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ClipvizError(f"every must be a whole number of frames >= 1, got {every!r}")
        return (lambda index: index % every == 0), info.fps / every
    if fps is None or fps >= info.fps:
        return (lambda index: True), info.fps
    # frame i is kept when it is the first frame at or after a sample time k / fps
    step = info.fps / fps
    return (lambda index: math.floor(index / step) != math.floor((index - 1) / step)), fps


def _window(info, start, end):
    """(first frame, end time in seconds or inf) for --start / --end in seconds."""
    start = 0.0 if start is None else start
    end = math.inf if end is None else end
    for name, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
            raise ClipvizError(f"{name} must be a time in seconds >= 0, got {value!r}")
    if end <= start:
        raise ClipvizError(f"end ({end} s) must come after start ({start} s)")
    if info.duration is not None and start >= info.duration:
        raise ClipvizError(f"start ({start} s) is past the end of the video ({info.duration:.2f} s)")
    return math.ceil(start * info.fps - 1e-9), end


def read_frames(capture, info, every=None, fps=None, start=None, end=None, state=None):
    """Decode the sampled frames one at a time → (generator of (frame index, time in s, RGB uint8
    [H, W, 3]), DecodeState).

    Frame i's time is i / fps (the container's nominal rate). Frames before ``start`` are grabbed
    without colour conversion. When decoding fails before the header's frame count (a truncated or
    damaged file), the generator ends and the DecodeState (``state``, or a new one) says where.
    """
    cv2 = _cv2()
    keep, _ = _sampling(info, every, fps)
    first, end_time = _window(info, start, end)
    state = state if state is not None else DecodeState()

    def frames():
        index = 0
        while index < first:  # grab() decodes but skips the BGR conversion; seeking is not frame-exact
            if not capture.grab():
                state.stop(index, info)
                return
            index += 1
            state.decoded = index
        while index / info.fps < end_time:
            ok, bgr = capture.read()
            if not ok:
                state.stop(index, info)
                return
            state.decoded = index + 1
            if keep(index - first):
                yield index, index / info.fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1

    return frames(), state


@dataclass
class DecodeState:
    """Where decoding ended: ``stopped`` is None, or a sentence naming the frame and time where a
    damaged or truncated file stopped decoding before its header's frame count."""

    decoded: int = 0
    stopped: str = None
    stopped_frame: int = None

    def stop(self, index, info):
        if info.frame_count and index < info.frame_count:
            self.stopped_frame = index
            self.stopped = (f"decoding stopped at frame {index} ({index / info.fps:.2f} s) of "
                            f"{info.frame_count} ({info.duration:.2f} s): the file is truncated or damaged")


# ----------------------------------------------------------------------------- explaining

@dataclass
class FrameExplanation:
    """One explained frame: source frame ``index``, ``time`` in seconds, and its Explanation (with
    smoothing on, ``explanation.maps`` are the smoothed maps and ``token_maps`` the raw ones)."""

    index: int
    time: float
    explanation: object


def explain_frames(model, path, prompts, method=None, *, against=None, every=None, fps=None,
                   start=None, end=None, smoothing=0.0, batch_size=8, progress=False, state=None,
                   **options):
    """Explain the sampled frames of a video, yielding one FrameExplanation at a time (streaming).

    Each batch of ``batch_size`` frames goes through ``clipviz.explain`` as a list, so every prompt
    shares the batch's image pass and each frame gets exactly the preprocessing, crop box and maps
    of an image. Arguments as for ``explain_video``. ``state``: a DecodeState to fill (where
    decoding stopped). Raises ClipvizError when no frame decodes at all.
    """
    from .explanation import check_batch_size, explain
    from .maps import map_to_photo, normalise_maps

    smoothing = _check_smoothing(smoothing)
    capture, info = open_video(path)
    state = state if state is not None else DecodeState()
    bar = progress_bar(_expected_samples(info, every, fps, start, end), "frame", progress)
    try:
        frames, _ = read_frames(capture, info, every=every, fps=fps, start=start, end=end, state=state)
        smoothed, explained = None, 0
        for batch in _batches(frames, check_batch_size(batch_size)):
            results = explain(model, [rgb for _, _, rgb in batch], prompts, method=method, against=against,
                              batch_size=len(batch), **options)
            for (index, time, _), exp in zip(batch, results):
                if smoothing:
                    # EMA of the per-frame min-max maps on the patch grid (map_to_photo is linear)
                    current = normalise_maps(exp.token_maps)
                    smoothed = current if smoothed is None else (1 - smoothing) * current + smoothing * smoothed
                    exp.maps = map_to_photo(smoothed, exp.crop_box)
                explained += 1
                yield FrameExplanation(index, time, exp)
            bar.update(len(batch))
        if explained == 0:
            raise ClipvizError(_no_frames(path, info, state, start))
    finally:
        bar.close()
        capture.release()


def _no_frames(path, info, decode, start):
    """Why nothing was explained, in one sentence that says what to do."""
    if decode.stopped:
        return f"no frame of '{path}' decodes: {decode.stopped}; re-download or re-export it"
    if decode.decoded == 0 and not start:
        return (f"'{path}' holds no video frames (the container opens but is empty); check that the "
                "recording or export finished")
    return (f"no frame of '{path}' falls between --start and --end (it has {decode.decoded} frames, "
            f"{decode.decoded / info.fps:.2f} s); choose a window inside the video")


def _batches(frames, size):
    batch = []
    for item in frames:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_smoothing(smoothing):
    value = 0.0 if smoothing is None else smoothing
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ClipvizError(f"smoothing must be in [0, 1) (the weight of the previous smoothed map; 0 = off), "
                           f"got {smoothing!r}")
    return float(value)


def _expected_samples(info, every, fps, start, end):
    """How many frames the sampling should give (None when the header has no frame count)."""
    if not info.frame_count:
        return None
    keep, _ = _sampling(info, every, fps)
    first, end_time = _window(info, start, end)
    stop = min(info.frame_count, math.ceil(end_time * info.fps - 1e-9) if math.isfinite(end_time) else info.frame_count)
    return sum(1 for index in range(first, stop) if keep(index - first))


# ----------------------------------------------------------------------------- the result

@dataclass
class VideoExplanation:
    """The result of ``explain_video``: per sampled frame f and prompt t.

    frames:  int [F] source frame indices;  times: float [F] seconds (index / fps)
    scores:  float [F, T] cosine similarity;  probs: float [F, T] softmax over the prompts
    peaks:   int [F, T, 2] (x, y) photo pixel of each map's maximum (after smoothing), -1 if none
    fps:     the source's frames per second;  output_fps: the overlay videos' rate
    stopped: None, or where a truncated or damaged file stopped decoding
    files:   {"videos": [Path per prompt], "json": Path, "csv": Path} ({} when out is None)
    """

    source: str
    prompts: list
    method: str
    against: list
    frames: np.ndarray
    times: np.ndarray
    scores: np.ndarray
    probs: np.ndarray
    peaks: np.ndarray
    fps: float
    output_fps: float
    smoothing: float = 0.0
    stopped: str = None
    files: dict = field(default_factory=dict)

    def best(self):
        """Per prompt, the frame with the highest score: [{prompt, frame, time, score}]."""
        rows = []
        for t, prompt in enumerate(self.prompts):
            f = int(np.argmax(self.scores[:, t]))
            rows.append({"prompt": prompt, "frame": int(self.frames[f]), "time": float(self.times[f]),
                         "score": float(self.scores[f, t])})
        return rows

    def to_dict(self):
        """JSON-ready: settings, one entry per sampled frame, the best frame per prompt, files."""
        return {
            "source": self.source, "method": self.method, "prompts": list(self.prompts), "against": self.against,
            "fps": self.fps, "output_fps": self.output_fps, "smoothing": self.smoothing, "stopped": self.stopped,
            "frames": [{"frame": int(i), "time": round(float(s), 6), "scores": [float(v) for v in sc],
                        "probs": [float(v) for v in pr], "peaks": [None if p[0] < 0 else [int(p[0]), int(p[1])] for p in pk]}
                       for i, s, sc, pr, pk in zip(self.frames, self.times, self.scores, self.probs, self.peaks)],
            "best": self.best(),
            "files": {key: [str(p) for p in value] if isinstance(value, list) else str(value)
                      for key, value in self.files.items()},
        }

    def csv_text(self):
        """One row per sampled frame: frame, time_s, then per prompt t its score, prob, peak_x and
        peak_y, headed "score_t: <prompt>" and so on (the prompt on one line), so the file says
        which column is which prompt."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["frame", "time_s"] + [f"{name}_{t}: {' '.join(prompt.split())}"
                                                for t, prompt in enumerate(self.prompts)
                                                for name in ("score", "prob", "peak_x", "peak_y")])
        for f in range(len(self.frames)):
            row = [int(self.frames[f]), f"{self.times[f]:.6f}"]
            for t in range(len(self.prompts)):
                x, y = self.peaks[f, t]
                row += [f"{self.scores[f, t]:.6f}", f"{self.probs[f, t]:.6f}",
                        "" if x < 0 else int(x), "" if y < 0 else int(y)]
            writer.writerow(row)
        return buffer.getvalue()


def explain_video(model, path, prompts, method=None, *, against=None, every=None, fps=None, start=None,
                  end=None, smoothing=0.0, batch_size=8, out=None, cmap="jet", alpha=0.5, progress=False,
                  force=False, **options):
    """Explain every sampled frame of a video; write an overlay video per prompt and the scores.

    model:      from ``clipviz.load`` (any model ``explain`` takes)
    path:       a video file OpenCV's FFmpeg can read (.mp4 .avi .mov .mkv .webm .m4v ...)
    prompts:    one string or a list of T strings (all share each batch's image pass)
    method, against, options: as for ``clipviz.explain`` (method None: the model family's default)
    every:      explain every N-th frame (from ``start``);  fps: or about this many frames per
                second (the first frame at or after each k / fps); default: every frame
    start, end: the time window in seconds (frame i is at i / the container's fps)
    smoothing:  β in [0, 1): exponential moving average of the maps over the sampled frames,
                m̄_f = (1 − β) · m_f + β · m̄_{f−1} on the per-frame min-max patch maps (so values
                stay in [0, 1]); 0 (default) is off and each frame equals ``explain`` on it
    batch_size: frames per forward pass (halved on out-of-memory, as in ``explain``)
    out:        a folder: writes ``<video>--<prompt>.mp4`` (mp4v; the frame, its overlay and the
                score curve so far underneath, at the sampled frame rate), ``<video>.json`` and
                ``<video>.csv``; each written to a temporary file and renamed when complete (removed
                on an error, Ctrl-C, SIGTERM or SIGHUP). None: write nothing. Existing files need
                ``force=True`` (clipviz's own earlier outputs are replaced, see outputs.is_own_output);
                the folder is checked before any frame is decoded and created with the first file.
    cmap, alpha: the overlay's colours (see clipviz.render.overlay)
    progress:   a tqdm bar on stderr (frames, frames/s)

    Memory does not grow with the video: frames are decoded and dropped one batch at a time; only
    a few numbers per sampled frame are kept (and a fixed-width curve per prompt).
    Returns a VideoExplanation. A truncated or damaged file gives the frames that decode, with
    ``stopped`` saying where it ended. Raises ClipvizError for an unreadable or non-video file, a
    video with no frames (in the window), or bad options.
    """
    from .explanation import clean_prompts
    from .maps import peak_xy

    prompt_list = clean_prompts(prompts)
    _check_smoothing(smoothing)
    capture, info = open_video(path)  # fail early, before any output file is made
    capture.release()
    _, output_fps = _sampling(info, every, fps)
    _window(info, start, end)
    writers = None
    if out is not None:
        names = check_outputs(path, prompt_list, out, force, API_HINT)
        writers = _Outputs(names, output_fps, info, start, end, cmap, alpha, force)
    state = DecodeState()
    frames, times, scores, probs, peaks = [], [], [], [], []
    try:
        with raising_on_termination():  # SIGTERM / SIGHUP too reach abort() below
            for item in explain_frames(model, path, prompt_list, method, against=against, every=every, fps=fps,
                                       start=start, end=end, smoothing=smoothing, batch_size=batch_size,
                                       progress=progress, state=state, **options):
                exp = item.explanation
                frames.append(item.index)
                times.append(item.time)
                scores.append(exp.scores.astype(np.float64))
                probs.append(exp.probs.astype(np.float64))
                peaks.append([peak_xy(m) or [-1, -1] for m in exp.maps])
                if writers is not None:
                    writers.write(item)
            result = VideoExplanation(
                source=str(path), prompts=prompt_list, method=method or exp.method,  # explain's own choice (unwrapped model)
                against=None if against is None else clean_prompts(against),
                frames=np.asarray(frames, dtype=np.int64), times=np.asarray(times, dtype=np.float64),
                scores=np.stack(scores), probs=np.stack(probs), peaks=np.asarray(peaks, dtype=np.int64),
                fps=info.fps, output_fps=output_fps, smoothing=float(smoothing or 0.0), stopped=state.stopped)
            if writers is not None:
                result.files = writers.finish(result)
    except BaseException:
        if writers is not None:
            writers.abort()
        raise
    return result


# ----------------------------------------------------------------------------- writing

def output_names(path, prompts, out):
    """{"videos": [Path per prompt], "json": Path, "csv": Path} inside the folder ``out``; prompts
    whose names coincide (the same prompt twice, a slug collision) get distinct ones."""
    folder = Path(out).expanduser()
    stem = slug(Path(path).stem).rsplit("-", 1)[0]  # the file-name rule: prompts can never leave the folder
    return {"videos": [folder / f"{stem}--{s}.mp4" for s in distinct_names([slug(p) for p in prompts])],
            "json": folder / f"{stem}.json", "csv": folder / f"{stem}.csv"}


def check_outputs(path, prompts, out, force, hint=FORCE_HINT):
    """The output names (output_names), checked before any frame is decoded and creating nothing:
    ``out`` is (or can become) a writable folder, no output is the input video, and none exists
    unless ``force`` or clipviz wrote it (ClipvizError ending in ``hint`` otherwise)."""
    if not isinstance(out, (str, os.PathLike)) or not str(out):
        raise ClipvizError(f"out must be a folder path (or None to write nothing), got {out!r:.60}")
    names = output_names(path, prompts, out)
    check_folder(names["json"].parent)
    paths = names["videos"] + [names["json"], names["csv"]]
    refuse_inputs(paths, [path], "the input video")
    refuse_existing(paths, force, hint)
    return names


class _Outputs:
    """One cv2.VideoWriter per prompt into temporary files beside the targets; renamed by finish(),
    deleted by abort()."""

    def __init__(self, names, output_fps, info, start, end, cmap, alpha, force):
        self.names, self.cmap, self.alpha, self.force = names, cmap, alpha, force
        self.fps, self.writers, self.temps, self.curves = max(output_fps, MIN_WRITER_FPS), [], [], None
        self.made_folder = None  # the output folder, when _open created it (abort removes it if still empty)
        first, end_time = _window(info, start, end)
        stop = info.duration if info.duration is not None else math.inf
        self.span = (first / info.fps, min(end_time, stop))

    def write(self, item):
        cv2 = _cv2()
        exp = item.explanation
        if not self.writers:
            self._open(exp.photo.shape[1], exp.photo.shape[0], len(exp.prompts))
        from .render import overlay
        for t, (writer, curve) in enumerate(zip(self.writers, self.curves)):
            curve.add(item.time, float(exp.scores[t]))
            picture = np.concatenate([overlay(exp.photo, exp.maps[t], cmap=self.cmap, alpha=self.alpha),
                                      curve.draw(exp.prompts[t], item.time)], axis=0)
            writer.write(cv2.cvtColor(_even(picture), cv2.COLOR_RGB2BGR))

    def _open(self, width, height, prompts):
        cv2 = _cv2()
        strip = max(48, int(round(height * CURVE_FRACTION)))
        self.curves = [ScoreCurve(width, strip, *self.span, fps=self.fps) for _ in range(prompts)]
        size = (width + width % 2, height + strip + (height + strip) % 2)
        folder = self.names["json"].parent
        if not folder.is_dir():
            self.made_folder = folder
            while not self.made_folder.parent.exists():  # the outermost folder this run creates
                self.made_folder = self.made_folder.parent
        prepare_folder(folder)  # created now, with the first file
        for target in self.names["videos"]:
            handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".mp4")
            os.close(handle)
            self.temps.append(temp)
            writer = cv2.VideoWriter(temp, cv2.VideoWriter_fourcc(*OUTPUT_FOURCC), self.fps, size)
            if not writer.isOpened():
                raise ClipvizError(f"OpenCV cannot write an {OUTPUT_FOURCC} video to {target.parent}; check "
                                   "that the folder is writable and that OpenCV was built with FFmpeg")
            self.writers.append(writer)

    def finish(self, result):
        """Publish the videos, then write the CSV and JSON; a file that appeared at a target since
        the check is not replaced without force (ClipvizError)."""
        for writer in self.writers:
            writer.release()
        for temp, target in zip(self.temps, self.names["videos"]):
            publish(temp, target, self.force, API_HINT)
        self.temps = []
        files = dict(self.names)
        write_atomically(self.names["csv"], lambda handle: handle.write(result.csv_text().encode()), self.force,
                         API_HINT)
        result.files = files
        text = json.dumps(result.to_dict(), indent=1) + "\n"
        write_atomically(self.names["json"], lambda handle: handle.write(text.encode()), self.force, API_HINT)
        return files

    def abort(self):
        for writer in self.writers:
            writer.release()
        for temp in self.temps:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
        self.temps = []
        if self.made_folder is not None:  # a failed run leaves no empty folder behind
            folder = self.names["json"].parent
            for empty in [folder, *folder.parents]:  # innermost first, up to the first one made
                try:
                    empty.rmdir()
                except OSError:  # not empty (someone wrote there meanwhile) or gone
                    break
                if empty == self.made_folder:
                    break


def _even(picture):
    """Pad uint8 [H, W, 3] with black to even sides (the MPEG-4 encoder works on 2×2 chroma blocks)."""
    pad_h, pad_w = picture.shape[0] % 2, picture.shape[1] % 2
    return np.pad(picture, ((0, pad_h), (0, pad_w), (0, 0))) if pad_h or pad_w else picture


class ScoreCurve:
    """A score-over-time strip, uint8 [height, width, 3], drawn with OpenCV.

    The x axis spans the time window [t0, t1]; each pixel column keeps the mean score of the frames
    that fall in it, so memory is fixed whatever the video's length. When t1 is unknown (no frame
    count in the header) or passed, the window doubles and columns merge pairwise. The y axis runs
    from the lowest to the highest score so far.
    """

    def __init__(self, width, height, t0, t1, fps=25.0):
        self.width, self.height, self.t0 = width, height, t0
        self.t1 = t1 if math.isfinite(t1) and t1 > t0 else t0 + width / fps  # a column per frame at first
        self.sums, self.counts = np.zeros(width), np.zeros(width, dtype=np.int64)
        self.low, self.high, self.last = math.inf, -math.inf, None

    def add(self, time, score):
        while time >= self.t1 + 1e-9 and time > self.t0:
            self._merge()
        column = min(self.width - 1, int((time - self.t0) / (self.t1 - self.t0) * self.width))
        self.sums[column] += score
        self.counts[column] += 1
        self.low, self.high, self.last = min(self.low, score), max(self.high, score), (column, score)

    def _merge(self):
        """Double the time window: column c takes columns 2c and 2c + 1."""
        half = (self.width + 1) // 2
        for values in (self.sums, self.counts):
            merged = np.add.reduceat(values, np.arange(0, self.width, 2))
            values[:] = 0
            values[:half] = merged
        self.t1 = self.t0 + 2 * (self.t1 - self.t0)

    def draw(self, label, time):
        cv2 = _cv2()
        strip = np.full((self.height, self.width, 3), 32, dtype=np.uint8)
        filled = np.flatnonzero(self.counts)
        span = self.high - self.low if self.high > self.low else 1.0
        margin = 4

        def y_of(value):
            return int(round(self.height - margin - (value - self.low) / span * (self.height - 2 * margin - 14)))

        if len(filled):
            points = np.stack([filled, [y_of(v) for v in self.sums[filled] / self.counts[filled]]], axis=1)
            cv2.polylines(strip, [points.astype(np.int32).reshape(-1, 1, 2)], False, (255, 255, 255), 1, cv2.LINE_AA)
        if self.last is not None:
            column, value = self.last
            cv2.circle(strip, (int(column), y_of(value)), 3, (255, 64, 64), -1, cv2.LINE_AA)
            text = f"{value:+.4f}  {time:.2f} s  {_ascii(label)}"
            while len(text) > 1 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.35, 1)[0][0] > self.width - 8:
                text = text[:-2] + "~"  # cut to the strip's width: the score and time come first
            cv2.putText(strip, text, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (220, 220, 220), 1, cv2.LINE_AA)
        return strip


def _ascii(text):
    """OpenCV's Hershey fonts draw ASCII only."""
    return text.encode("ascii", "replace").decode()
