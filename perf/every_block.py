"""Issue 19: `relevance` with start_layer=0 (every block recorded) at 16 prompts — speed and memory
of the batched backward against the per-target loop clipviz ran before (run_method(fast=False)).

    python perf/every_block.py [--repeats 5] [--model ViT-B/16]

CPU, 2 threads, random weights, one photo, the 16 prompts of common.py, text-token relevance off
(the text side is the same on both paths). Speed: interleaved rounds in this process, median of
per-round ratios. Memory: a fresh process per measurement (as peak_memory.py: VmHWM − VmRSS after
resetting the peak), for the fast path, the old path, a no-grad image forward and a bare forward +
backward to the pixels.
"""

import argparse
import functools

KINDS = ("no-grad encode_image", "bare forward + grad to pixels", "start_layer=0 P=16 batched",
         "start_layer=0 P=16 per-target loop (before)")
SPEED_LIMIT, MEMORY_LIMIT = 0.5, 1.3


def runner(kind, model, image):
    import torch

    import clipviz
    import clipviz.explanation as explanation
    from clipviz.preprocess import preprocess_image
    from common import PROMPTS, bare_forward_backward

    def forward():
        with torch.no_grad():
            return model.encode_image(preprocess_image(image, model.visual.input_resolution)[0][None])

    def old():
        saved = explanation.run_method
        explanation.run_method = functools.partial(saved, fast=False)
        try:
            return clipviz.explain(model, image, PROMPTS, method="relevance", start_layer=0, text=False)
        finally:
            explanation.run_method = saved

    return {KINDS[0]: forward, KINDS[1]: lambda: bare_forward_backward(model, image, PROMPTS[:1]),
            KINDS[2]: lambda: clipviz.explain(model, image, PROMPTS, method="relevance", start_layer=0, text=False),
            KINDS[3]: old}[kind]


def child(kind, model_name):
    from clipviz.model import random_model
    from common import photo, print_peak_of, setup
    setup()
    image = photo()
    runner(kind, random_model("ViT-B/32", vision_layers=1, transformer_layers=1), image)()  # warm-up
    print_peak_of(runner(kind, random_model(model_name), image))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-repeats", type=int, default=2)
    parser.add_argument("--model", default="ViT-B/16")
    from common import (child_or_arguments, header, interleaved, peaks_in_fresh_processes, photo, print_peaks,
                        print_times, report, report_ratio, setup)
    args = child_or_arguments(parser, KINDS, child, argv)
    if args is None:
        return 0
    from clipviz.model import random_model
    setup()
    header(f"issue 19 start_layer=0, 16 prompts, {args.model}")
    model, image = random_model(args.model), photo()
    times = interleaved({kind: runner(kind, model, image) for kind in KINDS[2:]}, args.repeats)
    print_times(times)
    met = report_ratio(f"19 start_layer=0 P=16 time batched/before {args.model}", times, KINDS[2], KINDS[3], SPEED_LIMIT)
    median = print_peaks(peaks_in_fresh_processes(__file__, KINDS, args.model, args.memory_repeats))
    met &= report(f"19 start_layer=0 P=16 memory batched/no-grad forward {args.model}",
                  median[KINDS[2]] / median[KINDS[0]], MEMORY_LIMIT)
    met &= report(f"19 start_layer=0 P=16 memory batched/bare forward+backward {args.model}",
                  median[KINDS[2]] / median[KINDS[1]], MEMORY_LIMIT)
    print(f"INFO 19 start_layer=0 P=16 memory before/bare forward+backward {args.model}: "
          f"{median[KINDS[3]] / median[KINDS[1]]:.3f}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
