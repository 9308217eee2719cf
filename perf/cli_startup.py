"""Target 7: `clipviz explain` on one image with the bundled offline model takes <= 1.5 x
(`python -c "import torch"` + one bare forward + backward of the same model).

    python perf/cli_startup.py [--repeats 5] [--model synth-vit-t16]

Three kinds of fresh process, interleaved, each timed from the outside (wall clock, median):

    import torch:  python -c "import torch"
    bare:          python: import torch, build the model's architecture, one forward + backward
                   (S = logit_scale · cos to the pixels; only that call is timed, in the process:
                   it is cold, like the CLI's)
    CLI:           python -m clipviz explain scene.png "a red circle" --out DIR --force --quiet
                   (what the `clipviz` entry point runs, without an installer's launcher)

ratio = CLI / (import torch + bare). The image is a 224 x 224 synthetic scene (PNG) of the kind
the offline model was trained on; 2 threads everywhere (OMP_NUM_THREADS=2).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT = 1.5

BARE = r"""
import json, sys, time
import torch
import torch.nn.functional as F
from clipviz.model import CLIP
from clipviz.tokenizer import tokenize
from clipviz.preprocess import load_image, preprocess_image
arch = json.loads(sys.argv[1])
model = CLIP(**arch).eval()
pixels = preprocess_image(load_image(sys.argv[2]), arch["image_resolution"])[0][None].requires_grad_(True)
ids = tokenize([sys.argv[3]])
start = time.perf_counter()
image = F.normalize(model.encode_image(pixels), dim=-1)
text = F.normalize(model.encode_text(ids), dim=-1)
score = (model.logit_scale.exp() * image @ text.t()).sum()
torch.autograd.grad(score, pixels)
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def architecture(model_name):
    """The bundled model's constructor arguments (its sidecar JSON), without importing torch."""
    import clipviz
    sidecar = Path(clipviz.__file__).parent / "weights" / f"{model_name}.json"
    return json.loads(sidecar.read_text())["arch"]


def scene_png(folder):
    from PIL import Image

    from clipviz.synth import scene_from_index
    path = Path(folder) / "scene.png"
    Image.fromarray(scene_from_index(0, 0).image).save(path)
    return path


def wall(command, env):
    start = time.perf_counter()
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{out.stderr}")
    return seconds, out.stdout


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="synth-vit-t16")
    parser.add_argument("--prompt", default="a red circle")
    args = parser.parse_args(argv)
    from common import load_average, report

    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2")
    arch = json.dumps(architecture(args.model))
    print(f"== CLI start-up, {args.model}, fresh processes (load average {load_average():.1f})", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        image = scene_png(folder)
        commands = {
            "import torch": [sys.executable, "-c", "import torch"],
            "bare (process)": [sys.executable, "-c", BARE, arch, str(image), args.prompt],
            "clipviz explain": [sys.executable, "-m", "clipviz", "explain", str(image), args.prompt, "--model", args.model,
                                "--out", str(Path(folder) / "out"), "--force", "--quiet"],
        }
        times = {name: [] for name in commands}
        times["bare forward + backward"] = []
        for round_ in range(args.repeats):
            names = list(commands)[round_ % 3:] + list(commands)[:round_ % 3]
            for name in names:
                seconds, stdout = wall(commands[name], env)
                times[name].append(seconds)
                if name == "bare (process)":
                    times["bare forward + backward"].append(json.loads(stdout.strip().splitlines()[-1])["seconds"])
    for name, seconds in times.items():
        ms = sorted(s * 1e3 for s in seconds)
        print(f"  {name:<26} median {statistics.median(ms):8.0f} ms   min {ms[0]:8.0f}   max {ms[-1]:8.0f}")
    baseline = statistics.median(times["import torch"]) + statistics.median(times["bare forward + backward"])
    cli = statistics.median(times["clipviz explain"])
    print(f"  baseline = import torch + bare forward + backward = {baseline * 1e3:.0f} ms")
    return 0 if report(f"7 CLI explain / (import torch + bare forward + backward), {args.model}", cli / baseline, LIMIT) else 1


if __name__ == "__main__":
    raise SystemExit(main())
