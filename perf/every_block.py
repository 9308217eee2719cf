"""Issue 19: `relevance` with start_layer=0 (every block recorded) at 16 prompts — speed against
clipviz before issue 19 (commit a4b4c4e, one full-depth backward per prompt) and peak memory
against a bare forward + backward.

    python perf/every_block.py [--repeats 3] [--memory-repeats 2] [--model ViT-B/16] [--before DIR]

CPU, 2 threads, random weights, one photo, the 16 prompts of common.py, text-token relevance off
(the image side is what start_layer changes). Speed: the code before runs in a child process
(PYTHONPATH=DIR, a tree of a4b4c4e: ``git archive a4b4c4e | tar -x -C DIR``; made in a temporary
folder when --before is not given) that explains on request, interleaved with this process's
runs; the ratio is the median of per-round ratios. Memory: a fresh process per measurement (as
peak_memory.py: VmHWM − VmRSS after resetting the peak) for the batched path, a no-grad image
forward and a bare forward + backward to the pixels (the limit's "forward": what getting the score
with a gradient costs).
"""

import argparse
import contextlib
import subprocess
import sys
import tempfile
from pathlib import Path

BEFORE_COMMIT = "a4b4c4e"
KINDS = ("no-grad encode_image", "bare forward + grad to pixels", "start_layer=0 P=16")
SPEED_LIMIT, MEMORY_LIMIT = 0.5, 1.3
HERE = Path(__file__).resolve().parent

# the child that explains with the code before issue 19: one run per line read, its seconds printed
_BEFORE_CHILD = """
import sys, time
sys.path.insert(1, sys.argv[2])
import clipviz
from clipviz.model import random_model
from common import PROMPTS, photo, setup
setup()
assert clipviz.__file__.startswith(sys.argv[3]), clipviz.__file__
model, image = random_model(sys.argv[1]), photo()
def run():
    clipviz.explain(model, image, PROMPTS, method="relevance", start_layer=0, text=False)
print("ready", flush=True)
for _ in sys.stdin:
    run()
    print("done", flush=True)
"""


def runner(kind, model, image):
    import torch

    import clipviz
    from clipviz.preprocess import preprocess_image
    from common import PROMPTS, bare_forward_backward

    def forward():
        with torch.no_grad():
            return model.encode_image(preprocess_image(image, model.visual.input_resolution)[0][None])

    return {KINDS[0]: forward, KINDS[1]: lambda: bare_forward_backward(model, image, PROMPTS[:1]),
            KINDS[2]: lambda: clipviz.explain(model, image, PROMPTS, method="relevance", start_layer=0, text=False)}[kind]


def child(kind, model_name):
    from clipviz.model import random_model
    from common import photo, print_peak_of, setup
    setup()
    image = photo()
    runner(kind, random_model("ViT-B/32", vision_layers=1, transformer_layers=1), image)()  # warm-up
    print_peak_of(runner(kind, random_model(model_name), image))


@contextlib.contextmanager
def code_before(directory=None):
    """A tree of clipviz at BEFORE_COMMIT: ``directory`` as given, or one exported from this repository."""
    if directory:
        yield Path(directory).resolve()
        return
    with tempfile.TemporaryDirectory(prefix="clipviz-before-") as tree:
        archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", BEFORE_COMMIT], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
        yield Path(tree)


class Before:
    """The child process explaining with the code before; calling it runs one explanation there."""

    def __init__(self, tree, model_name):
        import os
        env = {**os.environ, "PYTHONPATH": str(tree)}
        # cwd=tree: `python -c` puts the working folder first on sys.path, and run from the repository's
        # root that is today's clipviz, not the code before
        self.process = subprocess.Popen([sys.executable, "-c", _BEFORE_CHILD, model_name, str(HERE), str(tree)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
        self._expect("ready")

    def _expect(self, word):
        line = self.process.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"the child running {BEFORE_COMMIT} answered {line!r}, not {word!r}")

    def __call__(self):
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        self._expect("done")

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def measure(model_name, repeats=3, memory_repeats=2, before=None):
    """Speed against the code before and memory against the forward; prints RESULT lines, returns met."""
    from clipviz.model import random_model
    from common import (interleaved, peaks_in_fresh_processes, photo, print_peaks, print_times, report,
                        report_ratio)
    model, image = random_model(model_name), photo()
    with code_before(before) as tree:
        old = Before(tree, model_name)
        try:
            times = interleaved({KINDS[2]: runner(KINDS[2], model, image), f"{KINDS[2]} at {BEFORE_COMMIT}": old},
                                repeats)
        finally:
            old.close()
    print_times(times)
    met = report_ratio(f"19 start_layer=0 P=16 time now/{BEFORE_COMMIT} {model_name}", times, KINDS[2],
                       f"{KINDS[2]} at {BEFORE_COMMIT}", SPEED_LIMIT)
    median = print_peaks(peaks_in_fresh_processes(__file__, KINDS, model_name, memory_repeats))
    met &= report(f"19 start_layer=0 P=16 peak memory / bare forward+backward {model_name}",
                  median[KINDS[2]] / median[KINDS[1]], MEMORY_LIMIT)
    print(f"INFO 19 start_layer=0 P=16 peak memory / no-grad encode_image {model_name}: "
          f"{median[KINDS[2]] / median[KINDS[0]]:.3f}", flush=True)
    return met


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-repeats", type=int, default=2)
    parser.add_argument("--model", default="ViT-B/16")
    parser.add_argument("--before", default=None, help=f"a tree of clipviz at {BEFORE_COMMIT} (default: exported)")
    from common import child_or_arguments, header, load_average, setup
    args = child_or_arguments(parser, KINDS, child, argv)
    if args is None:
        return 0
    setup()
    header(f"issue 19 start_layer=0, 16 prompts, {args.model}")
    met = measure(args.model, args.repeats, args.memory_repeats, args.before)
    print(f"load average at the end: {load_average():.1f}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
