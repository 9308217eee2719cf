"""Peak memory of `clipviz explain --images DIR` at 10 vs 1,000 images (issue 8, long runs).

    python perf/cli_long_run.py                 # 10 and 1000 images
    python perf/cli_long_run.py --counts 10 100 --bad 2

Makes small random PNGs (64×64 by default) in a temporary folder, a random-weight tiny ViT CLIP
(64 px input, 3 blocks) saved as a checkpoint, then runs the CLI in a fresh subprocess per count
and reads that child's peak resident set size from os.wait4 (ru_maxrss). With ``--bad K`` the
folder also holds K corrupt files: the run must still finish, list them, and exit 1.
A flat peak RSS from 10 to 1,000 images means nothing of an image outlives its turn.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

TINY_VIT = dict(embed_dim=64, image_resolution=64, vision_layers=3, vision_width=128, vision_patch_size=16,
                context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=2)


def make_images(folder, count, size, bad):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i:05d}.png")
    for i in range(bad):
        (folder / f"bad{i:03d}.png").write_bytes(b"\x89PNG\r\n\x1a\n corrupt")


def run_cli(images, checkpoint, out, prompts, threads):
    """(exit code, peak RSS in MiB, seconds, stderr) of one CLI run in a fresh process."""
    command = [sys.executable, "-m", "clipviz", "explain", "--images", str(images), *prompts,
               "--model", str(checkpoint), "--out", str(out), "--quiet", "--device", "cpu"]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    seconds = time.perf_counter() - start
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return child.returncode, usage.ru_maxrss * 1024 / scale / 1024, seconds, stderr


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--bad", type=int, default=0, help="corrupt files added to each folder")
    parser.add_argument("--prompts", nargs="+", default=["a photo of a dog", "a red car"])
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS of the CLI (default 1: a tiny model gains nothing from more)")
    args = parser.parse_args()

    import torch
    from clipviz.model import CLIP

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        torch.save(CLIP(**TINY_VIT).state_dict(), root / "tiny.pt")
        rows = []
        for count in args.counts:
            make_images(root / f"in{count}", count, args.size, args.bad)
            code, peak, seconds, stderr = run_cli(root / f"in{count}", root / "tiny.pt", root / f"out{count}",
                                                  args.prompts, args.threads)
            written = len(list((root / f"out{count}").iterdir()))
            rows.append((count, code, peak, seconds, written))
            print(f"{count:6d} images (+{args.bad} bad): exit {code}, peak RSS {peak:7.1f} MiB, {seconds:6.1f} s, "
                  f"{seconds / count * 1000:6.1f} ms/image, {written} files", flush=True)
            if code != (1 if args.bad else 0):
                print(stderr[-2000:], file=sys.stderr)
        if len(rows) >= 2:
            print(f"peak RSS ratio {rows[-1][0]} vs {rows[0][0]} images: {rows[-1][2] / rows[0][2]:.3f}")


if __name__ == "__main__":
    main()
