"""Measure the offline CLIP's training targets on held-out synthetic scenes.

    python -m clipviz.synth.evaluate                          # the bundled synth-vit-t16
    python -m clipviz.synth.evaluate --model ckpt.pt --n 1000 --device cuda

(a) zero-shot accuracy: scenes 0..n-1 of stream 1 with one object each
    (``scene_from_index(1, i, n_objects=1)``), classified among all 64 shape × colour prompts
    ``object_prompt(shape, colour)`` ("a photo of a red circle"). Target ≥ 95% (chance 1/64).
(b) present beats absent: scenes 0..n-1 of stream 2 with two objects each; every present object's
    prompt is compared with the prompt of one absent class drawn at random (2n comparisons).
    Target ≥ 95% (chance 50%).

Training uses stream 0 (train.py refuses every stream of EVAL_SEEDS), so every scene here is held out.
The model is loaded through ``clipviz.load`` and images go through the preprocess it returns,
so the whole user-facing chain (registry, checksum, reader, build_model, preprocessing,
tokenizer) is exercised.
"""

import argparse
import json
import os
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from .captions import all_class_prompts
from .scenes import COLOURS, SHAPES, scene_from_index

SINGLE_SEED, PAIR_SEED = 1, 2
SAME_SHAPE_SEED, OUTLINE_SEED, PHOTO_SEED = 3, 4, 5  # clipviz.synth.targets' suites
EVAL_SEEDS = (SINGLE_SEED, PAIR_SEED, SAME_SHAPE_SEED, OUTLINE_SEED, PHOTO_SEED)
TARGETS = {"zero_shot_accuracy": 0.95, "present_beats_absent": 0.95}


def class_index(obj):
    """Row of all_class_prompts() naming this SceneObject."""
    return SHAPES.index(obj.shape) * len(COLOURS) + list(COLOURS).index(obj.colour)


@torch.no_grad()
def class_text_features(model):
    """Normalised text embeddings of all_class_prompts() -> [64, embed_dim]."""
    from ..tokenizer import tokenize

    device = next(model.parameters()).device
    return F.normalize(model.encode_text(tokenize(all_class_prompts()).to(device)).float(), dim=-1)


@torch.no_grad()
def class_scores(model, preprocess, scenes, batch=100):
    """Cosine similarity of every scene with every class prompt -> float32 [len(scenes), 64]."""
    device = next(model.parameters()).device
    text = class_text_features(model)
    scores = []
    for start in range(0, len(scenes), batch):
        images = torch.stack([preprocess(s.image) for s in scenes[start:start + batch]]).to(device)
        scores.append(F.normalize(model.encode_image(images).float(), dim=-1) @ text.t())
    return torch.cat(scores).cpu()


def zero_shot(model, preprocess, n, seed=SINGLE_SEED):
    """(accuracy, Counter of (true, predicted) mistakes) on n held-out single-object scenes."""
    scenes = [scene_from_index(seed, i, n_objects=1) for i in range(n)]
    truth = torch.tensor([class_index(s.objects[0]) for s in scenes])
    predicted = class_scores(model, preprocess, scenes).argmax(dim=1)
    prompts = all_class_prompts()
    mistakes = Counter((prompts[t][11:], prompts[p][11:]) for t, p in zip(truth.tolist(), predicted.tolist()) if t != p)
    return (predicted == truth).float().mean().item(), mistakes


def present_vs_absent(model, preprocess, n, seed=PAIR_SEED):
    """(share of comparisons won, number of comparisons) on n held-out two-object scenes.

    For each present object, one absent class is drawn from np.random.default_rng([seed, i, 2])."""
    scenes = [scene_from_index(seed, i, n_objects=2) for i in range(n)]
    scores = class_scores(model, preprocess, scenes)
    wins = []
    for i, scene in enumerate(scenes):
        present = [class_index(obj) for obj in scene.objects]
        absent = [c for c in range(scores.shape[1]) if c not in present]
        rng = np.random.default_rng([seed, i, 2])
        for c in present:
            wins.append(bool(scores[i, c] > scores[i, absent[rng.integers(len(absent))]]))
    return float(np.mean(wins)), len(wins)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="synth-vit-t16", help="registered name or checkpoint path")
    parser.add_argument("--n", type=int, default=1000, help="held-out scenes per measurement")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--json", help="also write the figures into this JSON file (merged under 'metrics')")
    args = parser.parse_args(argv)

    import clipviz

    model, preprocess = clipviz.load(args.model, device=args.device)
    accuracy, mistakes = zero_shot(model, preprocess, args.n)
    won, comparisons = present_vs_absent(model, preprocess, args.n)
    metrics = {"zero_shot_accuracy": round(accuracy, 4), "present_beats_absent": round(won, 4),
               "single_object_scenes": args.n, "two_object_comparisons": comparisons,
               "eval_streams": {"single_object": SINGLE_SEED, "two_object": PAIR_SEED}}

    print(f"model {args.model}, held-out streams {SINGLE_SEED} (single object) and {PAIR_SEED} (two objects)")
    print("| measure | measured | target | |")
    print("| --- | --- | --- | --- |")
    for key, label in [("zero_shot_accuracy", f"(a) zero-shot accuracy, {args.n} scenes, 64 prompts"),
                       ("present_beats_absent", f"(b) present beats absent, {comparisons} comparisons")]:
        ok = "met" if metrics[key] >= TARGETS[key] else "MISSED"
        print(f"| {label} | {100 * metrics[key]:.1f}% | ≥ {100 * TARGETS[key]:.0f}% | {ok} |")
    if mistakes:
        print("most common zero-shot mistakes (true -> predicted):",
              ", ".join(f"{t} -> {p} ×{k}" for (t, p), k in mistakes.most_common(5)))
    if args.json:
        record = {}
        if os.path.exists(args.json):
            with open(args.json) as f:
                record = json.load(f)
        record["metrics"] = metrics
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return metrics


if __name__ == "__main__":
    main()
