"""Target 3: 16 prompts on one image cost <= 4 x one prompt (the image is encoded once), and
compared with repeating the image once per prompt (Chefer et al.'s CLIP notebook).

    python perf/many_prompts.py [--repeats 7] [--model ViT-B/16] [--prompts 16]

Random weights, 2 torch threads, ``explain`` defaults (start_layer=-1, text-token relevance on).
The repeat-the-image approach, as in the authors' notebook: the image repeated P times, one
forward pass of the [P, 3, S, S] batch against the P prompts, one backward of the summed
diagonal S[p, p] (each pair is independent, so that yields every prompt's image and text
gradients at once). It is given the same recorder (last image and text block, gradients reduced
on arrival, no graph before the recorded block), so the comparison is about the approach only.
"""

import argparse

import torch

import clipviz
from clipviz.hooks import AttentionRecorder
from clipviz.methods.relevance import positive_weighted
from clipviz.model import random_model

from common import PROMPTS, header, inputs, interleaved, photo, print_ratio, print_times, report_ratio, scores, setup

LIMIT = 4.0


def repeat_image_per_prompt(model, image, prompts):
    """Chefer's notebook: [P] copies of the image, one forward, one backward of Σ_p S[p, p]."""
    pixels, ids = inputs(model, image, prompts)
    batch = pixels.expand(len(prompts), -1, -1, -1)
    with AttentionRecorder(model.visual, layers=[-1], gradients=positive_weighted) as image_rec, \
            AttentionRecorder(model.transformer, layers=[-1], gradients=positive_weighted) as text_rec:
        diagonal = scores(model, batch, ids).diagonal().sum()
        image_rec.backward(diagonal, slot=0)
        text_rec.backward(diagonal, slot=0)
    grads = image_rec.layers[len(image_rec.blocks) - 1].grads[0]["mean"]  # [P, N, N]
    return grads[:, 0, 1:]  # relevance at start_layer=-1: (I + Ā)[CLS, patches], I's CLS row is 0 there


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--model", default="ViT-B/16")
    parser.add_argument("--prompts", type=int, default=16)
    args = parser.parse_args(argv)
    setup()
    count = args.prompts
    header(f"{count} prompts vs one prompt, {args.model}")
    model = random_model(args.model)
    image, many = photo(), PROMPTS[:count]
    check = clipviz.explain(model, image, many).token_maps.reshape(count, -1)
    torch.testing.assert_close(torch.as_tensor(check), repeat_image_per_prompt(model, image, many),
                               rtol=1e-4, atol=1e-6)  # both approaches compute the same maps
    times = interleaved({
        "explain, 1 prompt": lambda: clipviz.explain(model, image, many[0]),
        f"explain, {count} prompts": lambda: clipviz.explain(model, image, many),
        f"image repeated per prompt, {count}": lambda: repeat_image_per_prompt(model, image, many),
    }, args.repeats)
    print_times(times)
    met = report_ratio(f"3 {count} prompts/1 prompt {args.model}", times, f"explain, {count} prompts",
                       "explain, 1 prompt", LIMIT)
    print_ratio(f"3 explain {count} prompts / image repeated per prompt", times, f"explain, {count} prompts",
                f"image repeated per prompt, {count}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
