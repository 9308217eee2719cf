"""The synthetic driver: held-out scenes of clipviz.synth, every metric, the sanity checks."""

import time

import numpy as np

from ..progress import bar as progress_bar
from ..errors import ClipvizError
from .common import BENCH_SEED, deterministic, model_label, usable_methods
from .report import clean, mean_by_objects, mean_curves, summarise
from .sanity import cascading_randomisation
from .scene import BLUR_PATCHES, CHANCE_ROWS, MIN_GAP, bench_scene, class_text_embeddings

OBJECT_RANGE = (2, 4)
DEFAULT_N = 500
DEFAULT_STEPS = 8
DEFAULT_SANITY_SCENES = 16


def run_benchmark(model, scenes=None, methods=None, n=DEFAULT_N, seed=BENCH_SEED, progress=True, *,
                  steps=DEFAULT_STEPS, sanity=True, sanity_scenes=DEFAULT_SANITY_SCENES, model_name=None):
    """Benchmark every method on held-out synthetic scenes; returns a JSON-ready dict.

    model:   a CLIP from ``clipviz.load`` (or anything ``clipviz.adapters.adapt`` takes)
    scenes:  None (scenes 0 … n-1 of stream ``seed``, 2–4 objects) or a list of clipviz.synth Scenes
    methods: names (default: every registered method; those that do not apply are skipped, noted)
    steps:   deletion/insertion steps; sanity: run the cascading-randomisation check
    Keys: config, notes, summary {"all", "objects_2", ...: {row: {metric: {mean, ci95, n}}}},
    area_share, cascade {method: {blocks, spearman}}, curves, scenes (per-scene numbers), timing.
    """
    import torch
    from ..adapters import adapt
    from ..synth import scene_from_index

    adapter = adapt(model)
    modules, notes = usable_methods(adapter, methods)
    scene_list = list(scenes) if scenes is not None else None
    count = len(scene_list) if scene_list is not None else int(n)
    if count < 1:
        raise ClipvizError(f"--n must be at least 1, got {count}")
    started = time.perf_counter()
    class_text = class_text_embeddings(adapter)
    records, seconds, sanity_items, curves = [], {name: [] for name in modules}, [], {}
    with deterministic():
        with progress_bar(count, "scenes", progress) as bar:
            for index in range(count):
                scene = scene_list[index] if scene_list is not None else \
                    scene_from_index(seed, index, n_objects=OBJECT_RANGE)
                record, maps, elapsed, scene_curves = bench_scene(adapter, modules, scene, seed, index, steps,
                                                                   class_text)
                records.append(record)
                for name, value in elapsed.items():
                    seconds[name].append(value)
                for row, (deletion, insertion) in scene_curves.items():
                    curves.setdefault(row, []).append((deletion, insertion))
                if sanity and len(sanity_items) < sanity_scenes:
                    sanity_items.append(maps)
                bar.update(1)
        cascade, cascade_notes = cascading_randomisation(model, modules, sanity_items, seed, progress) \
            if sanity else ({}, [])
    notes += cascade_notes
    rows = list(modules) + list(CHANCE_ROWS)
    summary = {"all": summarise(records, rows)}
    for objects in range(OBJECT_RANGE[0], OBJECT_RANGE[1] + 1):
        subset = [r for r in records if r["objects"] == objects]
        if subset:
            summary[f"objects_{objects}"] = summarise(subset, rows)
    return clean({
        "kind": "synthetic",
        "config": {"model": model_name or model_label(model), "n": count, "seed": seed,
                   "scenes": "given" if scene_list is not None else
                   f"scene_from_index({seed}, i, n_objects={OBJECT_RANGE}), i = 0 … {count - 1}",
                   "methods": list(modules), "steps": steps, "blur_sigma_patches": BLUR_PATCHES,
                   "deletion_baseline": "per-channel mean of the input",
                   "insertion_baseline": "input blurred with a Gaussian of σ = one patch side",
                   "score": "probability of the queried prompt among it and every absent class's prompt",
                   "min_gap": MIN_GAP,
                   "sanity_scenes": len(sanity_items) if sanity else 0,
                   "patch_grid": adapter.patch_grid, "input_resolution": adapter.input_resolution},
        "notes": notes,
        "summary": summary,
        "area_share": mean_by_objects(records),
        "cascade": cascade,
        "curves": mean_curves(curves),
        "scenes": records,
        "timing": {"ms_per_explanation": {name: 1000 * float(np.mean(v)) for name, v in seconds.items()},
                   "runtime_s": time.perf_counter() - started, "torch_threads": torch.get_num_threads()},
    })
