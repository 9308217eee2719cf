"""Issue 19: explanations against the true floor — a no-grad image forward (and, for rollout, a
forward that returns every block's attention weights).

    python perf/floor.py [--repeats 9] [--model ViT-B/16]

CPU, 2 torch threads, random weights, one 360×480 photo, the prompts of common.py. Every side
starts from the same photo array (preprocessing is paid by all):

    floor:           preprocess_image(photo), then model.encode_image(pixels) under torch.no_grad()
    attention floor: the same forward with every block's nn.MultiheadAttention asked for its
                     per-head weights (need_weights=True, average_attn_weights=False) by a
                     forward pre-hook, the weights kept — what any rollout must compute
    relevance:       clipviz.explain(model, photo, prompts, method="relevance") with its defaults
                     (start_layer=-1, text-token relevance on, maps mapped onto the photo), P=1 and 16
    rollout:         clipviz.explain(model, photo, prompt, method="rollout")
    general path:    relevance P=16 with the closed form switched off (what clipviz ran before
                     issue 19), for information

Variants run interleaved (one of each per round, order rotated) and each ratio is the median over
rounds of method ÷ baseline (see common.py). Prints RESULT lines; exits 1 when a limit is missed.
"""

import argparse
import functools

import torch

import clipviz
import clipviz.explanation as explanation
from clipviz.model import random_model
from clipviz.preprocess import preprocess_image

from common import PROMPTS, header, interleaved, photo, print_ratio, print_times, report_ratio, setup

LIMITS = {"relevance P=1": 1.10, "relevance P=16": 1.35, "rollout": 1.10}


def floor(model, image):
    pixels, _ = preprocess_image(image, model.visual.input_resolution)
    with torch.no_grad():
        return model.encode_image(pixels[None])


def attention_floor(model, image):
    """The no-grad forward, every block returning its per-head attention weights [B, H, N, N]."""
    kept, handles = [], []

    def ask(module, args, kwargs):
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def keep(module, args, output):
        kept.append(output[1])

    for block in model.visual.transformer.resblocks:
        handles += [block.attn.register_forward_pre_hook(ask, with_kwargs=True), block.attn.register_forward_hook(keep)]
    try:
        return floor(model, image), kept
    finally:
        for handle in handles:
            handle.remove()


def general_path(model, image, prompts, **options):
    """explain() as before issue 19: one backward per target (run_method(fast=False))."""
    saved = explanation.run_method
    explanation.run_method = functools.partial(saved, fast=False)
    try:
        return clipviz.explain(model, image, prompts, method="relevance", **options)
    finally:
        explanation.run_method = saved


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--model", default="ViT-B/16")
    args = parser.parse_args(argv)
    setup()
    header(f"issue 19 floor, {args.model}")
    model, image = random_model(args.model), photo()
    variants = {
        "floor: no-grad encode_image": lambda: floor(model, image),
        "attention floor": lambda: attention_floor(model, image),
        "relevance P=1": lambda: clipviz.explain(model, image, PROMPTS[0], method="relevance"),
        "relevance P=16": lambda: clipviz.explain(model, image, PROMPTS, method="relevance"),
        "rollout": lambda: clipviz.explain(model, image, PROMPTS[0], method="rollout"),
        "general path P=16 (before issue 19)": lambda: general_path(model, image, PROMPTS),
    }
    times = interleaved(variants, args.repeats)
    print_times(times)
    met = report_ratio(f"19 relevance P=1 / no-grad encode_image {args.model}", times, "relevance P=1",
                       "floor: no-grad encode_image", LIMITS["relevance P=1"])
    met &= report_ratio(f"19 relevance P=16 / no-grad encode_image {args.model}", times, "relevance P=16",
                        "floor: no-grad encode_image", LIMITS["relevance P=16"])
    met &= report_ratio(f"19 rollout / forward returning attention weights {args.model}", times, "rollout",
                        "attention floor", LIMITS["rollout"])
    print_ratio(f"19 general path P=16 / no-grad encode_image {args.model}", times,
                "general path P=16 (before issue 19)", "floor: no-grad encode_image")
    print_ratio(f"19 relevance P=16 / general path P=16 {args.model}", times, "relevance P=16",
                "general path P=16 (before issue 19)")
    print(f"load average at the end: {__import__('os').getloadavg()[0]:.1f}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
