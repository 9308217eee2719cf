"""Target 5: N images x P prompts in one call; the batch splits itself when memory runs out, and
the results equal one image at a time.

    python perf/batches.py [--images 8] [--prompts 4] [--fits 3] [--model ViT-B/32]

A memory limit is simulated: the image encoder raises the CPU allocator's out-of-memory error for
batches larger than ``--fits`` images, so ``explain(..., batch_size=N)`` has to halve its way down
(N -> N/2 -> ...). Every map, score and text-token weight is compared with explaining each image
alone; the limit is float32 rounding (BLAS blocks a batch differently from a single image, so the
last bits may differ): max |difference| <= 1e-5 x the largest value. Times are for information.
"""

import argparse
import time

import numpy as np

import clipviz
from clipviz.model import random_model

from common import PROMPTS, header, photo, report, setup

LIMIT = 1e-5


class SimulatedMemory:
    """Wraps ``model.visual.forward``: batches above ``fits`` images fail like the CPU allocator."""

    def __init__(self, visual, fits):
        self.visual, self.fits, self.batches = visual, fits, []
        self.forward = visual.forward

    def __call__(self, pixels):
        self.batches.append(pixels.shape[0])
        if pixels.shape[0] > self.fits:
            raise RuntimeError(f"[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                               f"you tried to allocate {pixels.shape[0] << 30} bytes")
        return self.forward(pixels)

    def __enter__(self):
        self.visual.forward = self
        return self

    def __exit__(self, *exc):
        del self.visual.forward  # the class's forward again


def largest_difference(together, alone):
    """max |a - b| / max |b| over token maps, scores, probabilities and text relevance."""
    worst = 0.0
    for batched, single in zip(together, alone):
        pairs = [(batched.token_maps, single.token_maps), (batched.scores, single.scores),
                 (batched.probs, single.probs)]
        pairs += list(zip(batched.text_relevance or [], single.text_relevance or []))
        for a, b in pairs:
            worst = max(worst, float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)))
        assert np.array_equal(np.isnan(batched.maps), np.isnan(single.maps))
    return worst


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--fits", type=int, default=3)
    parser.add_argument("--model", default="ViT-B/32")
    args = parser.parse_args(argv)
    setup()
    header(f"{args.images} images x {args.prompts} prompts in one call, {args.model}, memory for {args.fits}")
    model = random_model(args.model)
    images = [photo(200 + 20 * i, 300 - 10 * i, seed=i) for i in range(args.images)]
    prompts = PROMPTS[:args.prompts]
    start = time.perf_counter()
    with SimulatedMemory(model.visual, args.fits) as memory:
        together = clipviz.explain(model, images, prompts, batch_size=args.images)
    batched_seconds = time.perf_counter() - start
    start = time.perf_counter()
    alone = [clipviz.explain(model, image, prompts) for image in images]
    alone_seconds = time.perf_counter() - start
    print(f"  encoder batches tried: {memory.batches}")
    print(f"  one call, split automatically: {batched_seconds:.2f} s;  one image at a time: {alone_seconds:.2f} s")
    explained = [b for b in memory.batches if b <= args.fits]
    assert sum(explained) == args.images and len(together) == args.images, "every image explained once"
    return 0 if report(f"5 batched vs one-at-a-time relative difference {args.model}",
                       largest_difference(together, alone), LIMIT) else 1


if __name__ == "__main__":
    raise SystemExit(main())
