"""Measure a synthetic model against issue 14's targets: maps that point at the named object.

    python -m clipviz.synth.targets --model synth-vit-s16.pt --n 500 --device cuda --json targets.json
    python -m clipviz.synth.targets --model ckpt.pt --n 100 --methods relevance --photos ../shared/images

Every measurement runs on held-out streams (training uses stream 0 and refuses these) through
``clipviz.bench.run_benchmark`` with default method settings, and reads its pointing game:

- ``bench``: the ``clipviz bench`` scenes (stream 2, 2–4 objects; ``objects_2`` is the 2-object row);
- ``same_shape``: stream 3, two objects of one shape in different colours
  (``make_scene(rng [3, i], classes=[(s, c1), (s, c2)])``), one queried: does the map for
  "a photo of a red cross" peak on the red cross and not on the black one;
- ``outline_pastel``: stream 4, two outlined objects on a pastel background (a style the default
  scenes never show);
- ``photo``: stream 5, two objects on a photo crop (only with --photos).

plus zero-shot accuracy and present-beats-absent (clipviz.synth.evaluate, streams 1 and 2), and
the ``clipviz demo`` scene (does every prompt's peak land on its object).
"""

import argparse
import json

import numpy as np

from .evaluate import OUTLINE_SEED, PAIR_SEED, PHOTO_SEED, SAME_SHAPE_SEED, present_vs_absent, zero_shot
from .scenes import COLOURS, SHAPES, make_scene, scene_from_index



def same_shape_scene(index, seed=SAME_SHAPE_SEED):
    """Two objects of one shape in two different colours, drawn from rng [seed, index] -> Scene."""
    rng = np.random.default_rng([seed, index])
    shape = SHAPES[rng.integers(len(SHAPES))]
    first, second = rng.choice(len(COLOURS), 2, replace=False)
    colours = list(COLOURS)
    return make_scene(rng, classes=[(shape, colours[first]), (shape, colours[second])])


def outline_pastel_scene(index, seed=OUTLINE_SEED):
    """Two outlined objects on a pastel background, from rng [seed, index] -> Scene."""
    return scene_from_index(seed, index, n_objects=2, background="pastel", outline=1.0)


def photo_scene(index, photos, seed=PHOTO_SEED):
    """Two objects on a crop of one of ``photos``, from rng [seed, index] -> Scene."""
    from .photos import photo_crop

    rng = np.random.default_rng([seed, index])
    return make_scene(rng, n_objects=2, background=photo_crop(rng, photos, 224))


def demo_check(model, seed=0, method="relevance"):
    """Does each prompt's map peak on its object in ``clipviz demo``'s scene? -> list of bool."""
    from ..explanation import explain
    from .captions import object_prompt

    scene = scene_from_index(seed, 0, n_objects=(2, 3))  # the scene run_demo draws
    exp = explain(model, scene.image, [object_prompt(o.shape, o.colour) for o in scene.objects], method=method)
    hits = []
    for photo_map, mask in zip(exp.maps, scene.masks):
        y, x = np.unravel_index(np.nanargmax(photo_map), photo_map.shape)
        hits.append(bool(mask[y, x]))
    return hits


def peak_pointing(model, n, method="relevance"):
    """A quick pointing game for training logs: share of explain() maps whose peak lies on the
    queried object, over the first n ``clipviz bench`` scenes (the object bench queries) and the
    first n same-shape scenes -> (bench share, same-shape share). Ties go to the first peak, so
    this can differ slightly from bench's pointing_game."""
    from ..bench.scene import query_for
    from ..bench.synthetic import OBJECT_RANGE
    from ..explanation import explain
    from .captions import object_prompt

    shares = []
    for seed, make in ((PAIR_SEED, lambda i: scene_from_index(PAIR_SEED, i, n_objects=OBJECT_RANGE)),
                       (SAME_SHAPE_SEED, same_shape_scene)):
        hits = []
        for index in range(n):
            scene = make(index)
            target = query_for(scene, seed, index)[0]
            obj = scene.objects[target]
            photo_map = explain(model, scene.image, [object_prompt(obj.shape, obj.colour)], method=method).maps[0]
            y, x = np.unravel_index(np.nanargmax(photo_map), photo_map.shape)
            hits.append(bool(scene.masks[target][y, x]))
        shares.append(float(np.mean(hits)))
    return tuple(shares)


def pointing(result, key="all"):
    """{method: pointing-game mean} of one run_benchmark result's summary row ``key``."""
    return {row: values["pointing"]["mean"] for row, values in result["summary"][key].items()}


def measure(model, n, methods=None, photos=None, progress=False):
    """Every figure of the module doc -> JSON-ready dict."""
    from ..bench import run_benchmark

    out = {}
    bench = run_benchmark(model, methods=methods, n=n, seed=PAIR_SEED, progress=progress, sanity=True)
    out["bench"] = {key: pointing(bench, key) for key in bench["summary"]}
    out["bench_result"] = bench
    suites = {"same_shape": ([same_shape_scene(i) for i in range(n)], SAME_SHAPE_SEED),
              "outline_pastel": ([outline_pastel_scene(i) for i in range(n)], OUTLINE_SEED)}
    if photos:
        suites["photo"] = ([photo_scene(i, photos) for i in range(n)], PHOTO_SEED)
    for name, (scenes, seed) in suites.items():
        result = run_benchmark(model, scenes=scenes, methods=methods, seed=seed, progress=progress, sanity=False)
        out[name] = pointing(result)
    out["demo_peaks_on_object"] = demo_check(model)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="registered name or checkpoint path")
    parser.add_argument("--n", type=int, default=500, help="scenes per suite (zero-shot: 2n)")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every method)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--photos", default=None, help="folder of photos for the photo-background suite")
    parser.add_argument("--json", default=None, help="write every figure (and the full bench result) here")
    args = parser.parse_args(argv)

    import clipviz
    from .photos import load_photos

    model, preprocess = clipviz.load(args.model, device=args.device)
    methods = None if args.methods is None else args.methods.split(",")
    figures = measure(model, args.n, methods, load_photos(args.photos) if args.photos else None)
    accuracy, mistakes = zero_shot(model, preprocess, 2 * args.n)
    won, _ = present_vs_absent(model, preprocess, 2 * args.n)
    figures.update(zero_shot_accuracy=accuracy, present_beats_absent=won,
                   zero_shot_mistakes=[f"{t} -> {p} x{k}" for (t, p), k in mistakes.most_common(5)])
    print(f"model {args.model}: pointing game (share of maps whose peak is on the queried object)")
    for key, row in figures["bench"].items():
        print(f"  bench {key:10s} " + "  ".join(f"{m} {v:.3f}" for m, v in row.items()))
    for suite in ("same_shape", "outline_pastel", "photo"):
        if suite in figures:
            print(f"  {suite:16s} " + "  ".join(f"{m} {v:.3f}" for m, v in figures[suite].items()))
    print(f"  zero-shot {accuracy:.4f}  present beats absent {won:.4f}  demo {figures['demo_peaks_on_object']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    return figures


if __name__ == "__main__":
    main()
