"""Issue 17: explain_video's peak memory does not grow with the video; its CPU throughput in frames/s.

    python perf/video.py [--lengths 100 2000] [--frames 48] [--repeats 3]
                               [--models synth-vit-t16 ViT-B/16]
    python perf/video.py --skip-memory --device cuda --dtype bf16 --batch 64 --frames 512  # GPU

Clips: 320×240 at 25 fps, mp4v in .mp4 (what the opencv-python-headless wheel writes), a red circle
moving on a grey background; made once in a temporary folder before anything is measured.

Memory: one fresh process per clip length runs explain_video(synth-vit-t16, relevance, one prompt,
batch 8) writing its overlay video, JSON and CSV, and prints its peak resident set (VmHWM: Python,
torch, the model, OpenCV, everything). Target: peak(2,000 frames) / peak(100 frames) <= 1.2.
The peak above the loaded model (VmHWM - VmRSS after loading, the reading of peak_memory.py) is
printed beside it.

Throughput: 2 torch threads, interleaved rounds (common.interleaved), frames/s of
  explain_video, out=None           batches of 8 frames, every prompt sharing a batch's image pass
  explain_video, writing            the same, plus the overlay video per prompt, JSON and CSV
  one explain call per frame        OpenCV decodes each frame (BGR -> RGB), explain(model, frame, prompts)
on the first ``--frames`` frames, for one and three prompts. Random weights for ViT-B/16.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LIMIT = 1.2
PROMPTS = ["a photo of a red circle", "a photo of a blue square", "a photo of a green star"]


def make_clip(path, frames, size=(320, 240), fps=25.0):
    """A red circle moving left to right and back on grey, ``frames`` frames; returns the path."""
    import cv2
    import numpy as np
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    ys, xs = np.mgrid[0:height, 0:width]
    for k in range(frames):
        phase = (k % 100) / 100
        cx = 40 + (width - 80) * (2 * phase if phase < 0.5 else 2 - 2 * phase)
        frame = np.full((height, width, 3), 128, np.uint8)
        frame[(xs - cx) ** 2 + (ys - height / 2) ** 2 <= 30 ** 2] = (35, 30, 220)  # BGR red
        writer.write(frame)
    writer.release()
    return path


def memory_child(clip, out):
    import clipviz
    from common import setup

    setup()
    model = clipviz.load("synth-vit-t16", device="cpu")[0]
    loaded = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
    result = clipviz.explain_video(model, clip, PROMPTS[0], out=out, force=True)
    print(json.dumps({"frames": len(result.frames), "peak_rss": _status("VmHWM"),
                      "above_model": _status("VmHWM") - loaded}))


def _status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory(lengths, folder):
    from common import report
    peaks = {}
    for length in lengths:
        clip = make_clip(folder / f"clip{length}.mp4", length)
        out = subprocess.run([sys.executable, __file__, "--child", str(clip), "--out", str(folder / "out")],
                             capture_output=True, text=True, check=True)
        reading = json.loads(out.stdout.strip().splitlines()[-1])
        assert reading["frames"] == length, reading
        peaks[length] = reading["peak_rss"]
        print(f"  {length:>5} frames: peak RSS {reading['peak_rss'] / 2**20:7.1f} MiB, "
              f"above the loaded model {reading['above_model'] / 2**20:6.1f} MiB", flush=True)
    short, long = min(lengths), max(lengths)
    return report(f"17 peak RSS {long} frames / {short} frames", peaks[long] / peaks[short], LIMIT)


def throughput(models, frames, repeats, folder, device="cpu", dtype="fp32", batch=8):
    import cv2

    import clipviz
    from clipviz.model import random_model
    from common import interleaved, print_times

    clip = make_clip(folder / "throughput.mp4", frames)

    def per_frame(model, prompts):
        capture = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            clipviz.explain(model, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), prompts)
        capture.release()

    import torch
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    for name in models:
        model = clipviz.load(name, device="cpu")[0] if name.startswith("synth") else random_model(name)
        model = model.to(device=device, dtype=torch_dtype)
        for count in (1, 3):
            prompts = PROMPTS[:count]
            variants = {
                "explain_video, out=None": lambda: clipviz.explain_video(model, clip, prompts, batch_size=batch),
                "explain_video, writing": lambda: clipviz.explain_video(model, clip, prompts, out=folder / "tp",
                                                                        force=True, batch_size=batch),
                "one explain call per frame": lambda: per_frame(model, prompts)}
            clipviz.explain(model, _first(clip), prompts)  # warm-up: thread pools, vocabulary
            times = interleaved(variants, repeats, warmup=0)
            print(f"{name} ({device}, {dtype}, batch {batch}), {count} prompt{'s' * (count > 1)}, {frames} frames:")
            print_times(times)
            base = statistics.median(times["one explain call per frame"])
            for variant, seconds in times.items():
                rate = frames / statistics.median(seconds)
                print(f"INFO 17 frames/s {name} {device} {dtype} {count}p {variant}: {rate:.2f} "
                      f"({base / statistics.median(seconds):.2f} x one call per frame)", flush=True)


def _first(clip):
    import cv2
    capture = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    ok, bgr = capture.read()
    capture.release()
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs=2, default=[100, 2000])
    parser.add_argument("--frames", type=int, default=48, help="frames per throughput run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["synth-vit-t16", "ViT-B/16"])
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--device", default="cpu", help="cuda for the GPU figures (with --dtype bf16 --batch 64)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch", type=int, default=8, help="frames per forward pass")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        memory_child(args.child, args.out)
        return 0
    from common import header, setup
    setup()
    met = True
    with tempfile.TemporaryDirectory() as folder:
        if not args.skip_memory:
            header("explain_video peak RSS, fresh process per clip length")
            met = memory(args.lengths, Path(folder))
        if not args.skip_throughput:
            header("explain_video throughput (frames/s)")
            throughput(args.models, args.frames, args.repeats, Path(folder), args.device, args.dtype, args.batch)
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
