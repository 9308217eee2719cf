"""``clipviz bench``: a ground-truth benchmark of the explanation methods on synthetic scenes.

    python -m clipviz bench --n 500                        # synth-vit-t16, held-out stream 2
    python -m clipviz bench --model random:ViT-B/16 --n 3  # pipeline check on random weights
    python -m clipviz bench --data ../shared/coco-val-mini # localization on real photos + masks

    result = run_benchmark(model, n=500, seed=2)           # the same from Python: a JSON-ready dict

Scenes: ``clipviz.synth.scene_from_index(seed, i, n_objects=(2, 4))`` for i = 0 … n-1; the default
seed 2 is a held-out stream (training uses stream 0 and refuses streams 1 and 2). In each scene
one present object is queried with ``object_prompt(shape, colour)``, chosen with
``np.random.default_rng([seed, i, 1])``, which also draws one absent (shape, colour) for the
prompt-randomisation check. Both prompts share one forward pass per method.

Maps: each method's raw token map [g, g] is min-max normalised and upsampled onto the scene
with ``map_to_photo`` — exactly ``Explanation.maps`` — and compared with the object's mask of
visible pixels at scene resolution (the 224×224 scenes are the model input, so the crop box is
the identity). ``--data`` compares the same maps with real photos' masks at photo resolution,
counting only the pixels inside the crop the model saw.

Metrics (clipviz.metrics): pointing game, energy share (chance = the mask's area share, reported),
mask IoU at the map-mean threshold, deletion and insertion AUC. Deletion replaces patches, in the
map's order, with the per-channel mean of the input; insertion starts from the input blurred with
a Gaussian of σ = one patch side and puts the original patches back; ``steps`` steps (default 8,
about 25 patches a step on a 14×14 grid). The score is the probability of the queried prompt in a
softmax (logit_scale · cosine) over it and the prompts of every class absent from the scene: the
other objects present do not compete, and a contrastive model's raw cosine means little on its
own (a grey image is as "similar" to every prompt as the scene is). The curve is normalised by the
scores of the full and of the fully replaced image and clipped to [0, 1]; scenes whose full image
scores less than 0.01 above that baseline are left out (counted in ``n``). Chance rows: a uniform
random map per scene and a centre Gaussian (σ = g/4 patches).

Sanity (Adebayo et al. 2018): (a) cascading randomisation — the image encoder's blocks are
re-drawn from the last down (each tensor from a normal with its own mean and std), cumulatively,
and the Spearman correlation of the queried object's token map with the original is reported
after each block, on the first ``sanity_scenes`` scenes; (b) prompt randomisation — Spearman
between the maps for the queried and the absent prompt, every scene. Prompt-agnostic methods
(rollout, attention) give 1.0 there by construction. Both correlate the raw token maps [g, g]
(upsampling adds no information).

Time per explanation: one ``run_method`` call (forward, backward, method) for one image and its
two prompts, text-token relevance off; the thread count is in the JSON. Methods that do not
apply to the model family are tried once on a grey image, skipped, and named in the notes.

Determinism: the same seed gives the same scenes, choices, chance maps and randomised weights;
deterministic torch algorithms are switched on during a run. Timings (the ``timing`` key of the
JSON) are the only numbers that change between runs.
"""

import argparse
import copy
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from .errors import ClipvizError

DEFAULT_MODEL = "synth-vit-t16"
BENCH_SEED = 2
OBJECT_RANGE = (2, 4)
DEFAULT_N = 500
DEFAULT_STEPS = 8
DEFAULT_SANITY_SCENES = 16
BLUR_PATCHES = 1.0  # insertion baseline: Gaussian blur with σ = this many patch sides
MIN_GAP = 0.01  # probability: a full image scoring less than this above its baseline has no curve
CHANCE_ROWS = ("random map", "centre Gaussian")
LOCALIZATION = ("pointing", "energy", "iou")
METRICS = LOCALIZATION + ("deletion", "insertion", "prompt_spearman")
HEADERS = {"pointing": "pointing ↑", "energy": "energy ↑", "iou": "IoU ↑", "deletion": "deletion AUC ↓",
           "insertion": "insertion AUC ↑", "prompt_spearman": "prompt-rand. ρ"}
PHOTO_QUERY = "a photo of a {}"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


# ----------------------------------------------------------------------------------- Python API

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
    from .adapters import adapt
    from .synth import scene_from_index

    adapter = adapt(model)
    modules, notes = _usable_methods(adapter, methods)
    scene_list = list(scenes) if scenes is not None else None
    count = len(scene_list) if scene_list is not None else int(n)
    if count < 1:
        raise ClipvizError(f"--n must be at least 1, got {count}")
    started = time.perf_counter()
    class_text = class_text_embeddings(adapter)
    records, seconds, sanity_items, curves = [], {name: [] for name in modules}, [], {}
    with _deterministic():
        with _progress(count, "scenes", progress) as bar:
            for index in range(count):
                scene = scene_list[index] if scene_list is not None else \
                    scene_from_index(seed, index, n_objects=OBJECT_RANGE)
                record, maps, elapsed, scene_curves = _bench_scene(adapter, modules, scene, seed, index, steps,
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
    return _clean({
        "kind": "synthetic",
        "config": {"model": model_name or _model_label(model), "n": count, "seed": seed,
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
        "area_share": _mean_by_objects(records),
        "cascade": cascade,
        "curves": _mean_curves(curves),
        "scenes": records,
        "timing": {"ms_per_explanation": {name: 1000 * float(np.mean(v)) for name, v in seconds.items()},
                   "runtime_s": time.perf_counter() - started, "torch_threads": torch.get_num_threads()},
    })


def run_data_benchmark(model, folder, methods=None, seed=BENCH_SEED, progress=True, *, model_name=None,
                       knows_photos=None):
    """Localization metrics (pointing, energy, IoU) on real photos with masks; a JSON-ready dict.

    folder: ``images/<stem>.<ext>`` and ``masks/<stem>__<category>.png`` (uint8 0/255, image-sized;
    ``_`` in a category stands for a space), the layout of ../shared/coco-val-mini. Each category
    is queried as "a photo of a {category}"; all of a photo's queries share one forward pass.
    Maps are compared on the photo (``Explanation.maps``), over the pixels the model saw only.
    knows_photos: override the check of whether the model could know real photos.
    """
    import torch
    from .adapters import adapt
    from .preprocess import load_image, preprocess_image

    adapter = adapt(model)
    modules, notes = _usable_methods(adapter, methods)
    name = model_name or _model_label(model)
    known, reason = photo_knowledge(name) if knows_photos is None else (knows_photos, "")
    warning = photo_warning(name, known, reason)
    items = data_items(folder)
    started = time.perf_counter()
    records, seconds, skipped = [], {m: [] for m in modules}, []
    with _deterministic(), _progress(len(items), "photos", progress) as bar:
        for image_index, (image_path, categories) in enumerate(items):
            photo = load_image(image_path)
            pixels, box = preprocess_image(photo, adapter.input_resolution)
            prompts = [PHOTO_QUERY.format(category) for category, _ in categories]
            token_maps = {}
            for method, module in modules.items():
                token_maps[method], elapsed = explain_tokens(adapter, module, pixels, prompts)
                seconds[method].append(elapsed)
            for c, (category, mask_path) in enumerate(categories):
                rows = {m: maps[c] for m, maps in token_maps.items()}
                rows.update(_chance_maps(adapter.patch_grid, np.random.default_rng([seed, image_index, c, 7])))
                record = _photo_record(_photo_maps(rows, box), _read_mask(mask_path, photo.shape[:2]))
                if record is None:
                    skipped.append(f"{image_path.name} {category}")
                    continue
                records.append({"image": image_path.name, "category": category, "query": prompts[c], **record})
            bar.update(1)
    rows = list(modules) + list(CHANCE_ROWS)
    return _clean({
        "kind": "photos",
        "config": {"model": name, "data": str(folder), "seed": seed, "methods": list(modules),
                   "query": PHOTO_QUERY.format("{category}"), "pixels": "seen pixels only (inside the crop)",
                   "patch_grid": adapter.patch_grid, "input_resolution": adapter.input_resolution},
        "model_knows_photos": known,
        "warning": warning,
        "notes": notes + ([f"{len(skipped)} (photo, category) pairs skipped: the object lies wholly outside "
                            "the centre crop the model saw (listed under 'skipped')"] if skipped else []),
        "skipped": skipped,
        "summary": {"all": summarise(records, rows, LOCALIZATION)},
        "area_share": float(np.mean([r["area_share"] for r in records])) if records else None,
        "items": records,
        "timing": {"ms_per_explanation": {m: 1000 * float(np.mean(v)) for m, v in seconds.items()},
                   "runtime_s": time.perf_counter() - started, "torch_threads": torch.get_num_threads()},
    })


def _photo_record(photo_maps, mask):
    """Localization of {row: map [H, W] (NaN = unseen)} against a bool mask [H, W], over the seen
    pixels; None when no pixel of the mask was seen."""
    from .metrics import area_share

    first = next(iter(photo_maps.values()))
    seen = ~np.isnan(first)
    if not mask[seen].any():
        return None
    return {"area_share": area_share(first, mask), "mask_seen_fraction": float(mask[seen].sum() / mask.sum()),
            "metrics": {row: localization(photo_map, mask) for row, photo_map in photo_maps.items()}}


# ----------------------------------------------------------------------------------- one scene

def explain_tokens(adapter, module, pixels, prompts):
    """Token maps of one image for P prompts in one forward pass: pixels [3, S, S] →
    (float64 [P, g, g] raw maps, seconds taken). Text-token relevance is switched off."""
    import torch
    from .explanation import run_method

    options = {"text": False} if "text" in _option_names(module) else {}
    ids = adapter.tokenize(prompts).to(adapter.device)
    count = len(prompts)
    start = time.perf_counter()
    _, _, _, output = run_method(adapter, pixels.unsqueeze(0).to(adapter.device, adapter.dtype), ids,
                                 torch.eye(count), torch.arange(count), module, options)
    maps = output.token_maps[0].double().cpu().numpy()
    if adapter.device.type == "cuda":
        torch.cuda.synchronize()
    return maps, time.perf_counter() - start


def query_for(scene, seed, index):
    """(queried object index, absent (shape, colour)) for scene ``index``: rng [seed, index, 1]."""
    from .synth import all_classes

    rng = np.random.default_rng([seed, index, 1])
    queried = int(rng.integers(len(scene.objects)))
    present = {(o.shape, o.colour) for o in scene.objects}
    absent = [c for c in all_classes() if c not in present]
    return queried, absent[int(rng.integers(len(absent)))]


def _bench_scene(adapter, modules, scene, seed, index, steps, class_text):
    """Every metric for one scene → (record, maps for the sanity check, seconds, curves)."""
    from .metrics import area_share, channel_mean_image, deletion_insertion, gaussian_blur, spearman
    from .preprocess import preprocess_image
    from .synth import object_prompt

    queried, absent = query_for(scene, seed, index)
    target = scene.objects[queried]
    mask = scene.masks[queried]
    prompts = [object_prompt(target.shape, target.colour), object_prompt(*absent)]
    pixels, box = preprocess_image(scene.image, adapter.input_resolution)

    token_maps, seconds, prompt_rho = {}, {}, {}
    for method, module in modules.items():
        maps, seconds[method] = explain_tokens(adapter, module, pixels, prompts)
        token_maps[method] = maps[0]
        prompt_rho[method] = spearman(maps[0], maps[1])
    token_maps.update(_chance_maps(adapter.patch_grid, np.random.default_rng([seed, index, 2])))
    photo_maps = _photo_maps(token_maps, box)

    rows = list(token_maps)
    scorer = _class_probability_scorer(adapter, class_text, scene, queried)
    sigma = BLUR_PATCHES * adapter.input_resolution / adapter.patch_grid
    perturbed = deletion_insertion(scorer, pixels, np.stack([token_maps[r] for r in rows]),
                                   steps, channel_mean_image(pixels), gaussian_blur(pixels, sigma), MIN_GAP)
    metrics, curves = {}, {}
    for row, result in zip(rows, perturbed):
        metrics[row] = {**localization(photo_maps[row], mask),
                        "deletion": result["deletion"], "insertion": result["insertion"]}
        if row in prompt_rho:
            metrics[row]["prompt_spearman"] = prompt_rho[row]
        curves[row] = (result["deletion_curve"], result["insertion_curve"])
    record = {"index": index, "objects": len(scene.objects), "query": prompts[0], "absent": prompts[1],
              "area_share": area_share(photo_maps[rows[0]], mask), "metrics": metrics}
    sanity = {"pixels": pixels, "prompts": prompts, "maps": {m: token_maps[m] for m in modules}}
    return record, sanity, seconds, curves


def localization(photo_map, mask):
    """Pointing, energy and IoU of one map [H, W] (NaN = unseen) against a bool mask [H, W]."""
    from .metrics import energy_share, mask_iou, pointing_game

    return {"pointing": pointing_game(photo_map, mask), "energy": energy_share(photo_map, mask),
            "iou": mask_iou(photo_map, mask)}


def _chance_maps(patch_grid, rng):
    from .metrics import centre_gaussian_map, random_map

    return {CHANCE_ROWS[0]: random_map(patch_grid, rng), CHANCE_ROWS[1]: centre_gaussian_map(patch_grid)}


def _photo_maps(token_maps, box):
    """{row: [g, g]} → {row: [H, W]} in [0, 1], NaN outside the crop (as Explanation.maps)."""
    from .explanation import normalise_maps
    from .preprocess import map_to_photo

    names = list(token_maps)
    photo = map_to_photo(normalise_maps(np.stack([token_maps[n] for n in names])), box)
    return dict(zip(names, photo))


def class_text_embeddings(adapter):
    """Unit-norm embeddings of every synthetic class prompt (order of ``all_classes()``): [C, E]."""
    import torch
    from .synth import all_class_prompts

    with torch.inference_mode():
        embeddings = adapter.encode_text(adapter.tokenize(all_class_prompts()).to(adapter.device)).float()
    return torch.nn.functional.normalize(embeddings, dim=-1)


def _class_probability_scorer(adapter, class_text, scene, queried, batch_size=64):
    """images [M, 3, S, S] → [M] numpy: softmax(logit_scale · cosine) over the queried object's class
    and every class absent from ``scene``, read at the queried class."""
    import torch
    from .synth import all_classes

    classes = all_classes()
    query = classes.index((scene.objects[queried].shape, scene.objects[queried].colour))
    others = {classes.index((o.shape, o.colour)) for k, o in enumerate(scene.objects) if k != queried}
    candidates = [c for c in range(len(classes)) if c not in others]
    text = class_text[candidates]
    position = candidates.index(query)
    scale = adapter.logit_scale().float()

    def score(images):
        out = []
        with torch.inference_mode():
            for chunk in images.split(batch_size):
                embedding = torch.nn.functional.normalize(
                    adapter.encode_image(chunk.to(adapter.device, adapter.dtype)).float(), dim=-1)
                out.append((scale * embedding @ text.t()).softmax(dim=-1)[:, position])
        return torch.cat(out).double().cpu().numpy()
    return score


# ----------------------------------------------------------------------------------- sanity

def cascading_randomisation(model, modules, items, seed, progress=False):
    """Spearman of each method's map with the original as blocks L-1, L-2, …, 0 are re-drawn.

    items: [{pixels [3,S,S], prompts [query, absent], maps {method: [g,g]}}]. Block l's tensors are
    each replaced by normal noise with the tensor's own mean and std (generator seed [seed, l]),
    cumulatively, on a copy of the model. Returns ({method: {blocks, spearman [L], n}}, notes).
    """
    import torch
    from .adapters import adapt
    from .hooks import find_blocks
    from .metrics import spearman

    if not items or not modules:
        return {}, []
    randomised = copy.deepcopy(model)
    adapter = adapt(randomised)
    try:
        blocks = find_blocks(adapter.image_encoder)
    except ClipvizError:
        return {}, ["cascading randomisation skipped: the image encoder has no transformer blocks"]
    order = list(range(len(blocks) - 1, -1, -1))
    result = {m: {"blocks": order, "spearman": [], "ci95": [], "n": []} for m in modules}
    with _progress(len(order), "randomised blocks", progress) as bar:
        for layer in order:
            _randomise(blocks[layer], torch.Generator().manual_seed(seed * 100_003 + layer))
            for method, module in modules.items():
                rhos = [spearman(item["maps"][method],
                                 explain_tokens(adapter, module, item["pixels"], item["prompts"][:1])[0][0])
                        for item in items]
                stats = _stats(rhos)
                result[method]["spearman"].append(stats["mean"])
                result[method]["ci95"].append(stats["ci95"])
                result[method]["n"].append(stats["n"])
            bar.update(1)
    return result, []


def _randomise(block, generator):
    """Re-draw every parameter of ``block`` from a normal with that tensor's own mean and std."""
    import torch

    with torch.no_grad():
        for parameter in block.parameters():
            values = parameter.double()
            std = float(values.std()) if parameter.numel() > 1 else 0.0
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.copy_((float(values.mean()) + std * noise).to(parameter.dtype))


# ----------------------------------------------------------------------------------- summaries

def summarise(records, rows, metrics=METRICS):
    """{row: {metric: {mean, ci95, n}}} over records' ``metrics`` (NaN values left out)."""
    return {row: {metric: _stats([r["metrics"][row].get(metric, math.nan) for r in records])
                  for metric in metrics if any(metric in r["metrics"][row] for r in records)}
            for row in rows}


def _stats(values):
    """Mean, 95% normal-approximation half-width and count of the non-NaN values."""
    values = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if values.size == 0:
        return {"mean": math.nan, "ci95": math.nan, "n": 0}
    ci = 1.96 * values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else math.nan
    return {"mean": float(values.mean()), "ci95": float(ci), "n": int(values.size)}


def _mean_curves(curves):
    """{row: [(deletion [k+1], insertion [k+1]) per scene]} → {row: mean curves} over scenes whose
    curves could be normalised."""
    out = {}
    for row, pairs in curves.items():
        valid = [pair for pair in pairs if not np.isnan(pair[0]).all()]
        out[row] = {"deletion": np.mean([p[0] for p in valid], axis=0) if valid else None,
                    "insertion": np.mean([p[1] for p in valid], axis=0) if valid else None}
    return out


def _mean_by_objects(records):
    out = {"all": float(np.mean([r["area_share"] for r in records]))}
    for objects in sorted({r["objects"] for r in records}):
        out[f"objects_{objects}"] = float(np.mean([r["area_share"] for r in records if r["objects"] == objects]))
    return out


def markdown(result):
    """The benchmark result as markdown tables (what ``clipviz bench`` prints)."""
    lines = []
    config = result["config"]
    if result.get("warning"):
        lines += [f"**{result['warning']}**", ""]
    if result["kind"] == "photos":
        lines += [f"Localization on {len(result['items'])} (photo, category) pairs from {config['data']} "
                  f"— model {config['model']}; seen pixels only.", ""]
        lines += _table(result["summary"]["all"], LOCALIZATION, result["area_share"])
    else:
        lines += [f"clipviz bench — model {config['model']}, {config['n']} scenes "
                  f"({config['scenes']}); one present object queried per scene.", ""]
        timing = result.get("timing", {}).get("ms_per_explanation", {})
        lines += _table(result["summary"]["all"], METRICS, result["area_share"]["all"], timing)
        counts = {m: next(iter(result["summary"]["all"].values()))[m]["n"] for m in ("deletion", "insertion")}
        if any(count < config["n"] for count in counts.values()):
            lines += ["", f"Deletion / insertion AUC over {counts['deletion']} / {counts['insertion']} of the "
                          f"{config['n']} scenes: in the others the full image scores less than {MIN_GAP} above "
                          "the fully replaced one."]
        for key, summary in result["summary"].items():
            if key.startswith("objects_"):
                k = key.split("_")[1]
                count = next(iter(next(iter(summary.values())).values()))["n"]
                lines += ["", f"{k}-object scenes only (n = {count}):", ""]
                lines += _table(summary, METRICS, result["area_share"][key])
        if result.get("cascade"):
            lines += ["", f"Cascading randomisation (Spearman ρ with the original map; blocks re-drawn from the "
                          f"last down, cumulatively; {config['sanity_scenes']} scenes). Near 1 = the map ignores "
                          "the weights.", ""]
            blocks = next(iter(result["cascade"].values()))["blocks"]
            last = blocks[0]
            lines.append("| method | " + " | ".join(f"blocks {b}–{last}" if b != last else f"block {b}"
                                                     for b in blocks) + " |")
            lines.append("|---" * (len(blocks) + 1) + "|")
            for method, row in result["cascade"].items():
                lines.append(f"| {method} | " + " | ".join(_number(v) for v in row["spearman"]) + " |")
    if result.get("notes"):
        lines += [""] + [f"note: {note}" for note in result["notes"]]
    return "\n".join(lines)


def _table(summary, metrics, area, timing=None):
    columns = [m for m in metrics if any(m in row for row in summary.values())]
    header = ["method"] + [HEADERS[m] for m in columns] + (["ms / expl."] if timing else [])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row, values in summary.items():
        name = row if row not in CHANCE_ROWS else f"*{row}* (chance)"
        cells = [_cell(values.get(m)) for m in columns]
        if timing:
            cells.append(f"{timing[row]:.1f}" if row in timing else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    area_cells = [_number(area) if m in ("pointing", "energy") else "—" for m in columns]
    lines.append("| *mask area share* (chance of a uniform map) | " + " | ".join(area_cells)
                 + (" | — |" if timing else " |"))
    return lines


def _cell(stats):
    if not stats or stats["n"] == 0:
        return "—"
    ci = "" if stats["ci95"] is None or math.isnan(stats["ci95"]) else f" ± {stats['ci95']:.3f}"
    return f"{stats['mean']:.3f}{ci}"


def _number(value):
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


# ----------------------------------------------------------------------------------- models

def load_model(spec, device=None):
    """``random:ARCH`` (random weights of an official architecture, seed 0) or anything
    ``clipviz.load`` takes → (model, name)."""
    if spec.startswith("random:"):
        import torch
        from .model import random_model
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return random_model(spec[len("random:"):], seed=0).to(device), spec
    from .hub import load
    model, _ = load(spec, device=device)
    return model, spec


def photo_knowledge(name):
    """(could the model named ``name`` know real photos: True / False / None, why not)."""
    from .hub import ADAPTER_PREFIXES, available_models, model_info

    label = str(name)
    if label.startswith("random:"):
        return False, "has random weights"
    if "synth" in Path(label).name.lower():
        return False, "was trained only on synthetic shape scenes (clipviz.synth)"
    if label.startswith(ADAPTER_PREFIXES):
        return True, ""
    if label in available_models() and (model_info(label).url or "").startswith("https://openaipublic"):
        return True, ""
    return None, "is not a model clipviz knows to be trained on photos"


def photo_warning(name, known, reason):
    """The warning line for a photo benchmark with a model that cannot (or may not) know photos."""
    if known:
        return None
    if known is None:
        return (f"WARNING: model {name} {reason or 'is of unknown origin'}: these numbers mean something "
                "only if it was trained on real photos.")
    return (f"WARNING: model {name} {reason}, so it cannot know real photos: these numbers test the "
            "pipeline, not the methods.")


def _model_label(model):
    return getattr(model, "clipviz_name", None) or type(model).__name__


# ----------------------------------------------------------------------------------- data folder

def data_items(folder):
    """[(image path, [(category, mask path), ...]), ...] of a folder with images/ and masks/."""
    root = Path(folder).expanduser()
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise ClipvizError(f"{root} needs an images/ and a masks/ folder (masks/<image stem>__<category>.png, "
                           "uint8 0/255, image-sized), as in ../shared/coco-val-mini")
    items = []
    for image_path in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        masks = sorted(masks_dir.glob(f"{image_path.stem}__*.png"))
        categories = [(m.stem[len(image_path.stem) + 2:].replace("_", " "), m) for m in masks]
        if categories:
            items.append((image_path, categories))
    if not items:
        raise ClipvizError(f"no image in {images_dir} has a mask in {masks_dir} (named <image stem>__<category>.png)")
    return items


def _read_mask(path, shape):
    from PIL import Image

    with Image.open(path) as image:
        mask = np.asarray(image.convert("L")) > 127
    if mask.shape != tuple(shape):
        raise ClipvizError(f"mask {path} is {mask.shape[1]}×{mask.shape[0]} but its photo is "
                           f"{shape[1]}×{shape[0]}: masks must have the photo's size")
    return mask


# ----------------------------------------------------------------------------------- plumbing

def _usable_methods(adapter, methods):
    """{name: module} of the methods that apply to this model, and a note for each one skipped.

    Each method is tried once on a grey image: one that refuses this model family (a ClipvizError,
    e.g. 'attention_pool' on a ViT, 'relevance' on a ResNet) is skipped, with its reason.
    """
    import torch
    from .methods import available_methods, get_method

    names = available_methods() if methods is None else list(methods)
    if not names:
        raise ClipvizError("no method to benchmark: name at least one of " + ", ".join(available_methods()))
    probe = torch.zeros(3, adapter.input_resolution, adapter.input_resolution)
    usable, notes = {}, []
    for name in names:
        module = get_method(name)
        try:
            explain_tokens(adapter, module, probe, ["a photo"])
        except ClipvizError as error:
            notes.append(f"{name} skipped: {error}")
            continue
        usable[name] = module
    if not usable:
        raise ClipvizError("none of the methods applies to this model: " + "; ".join(notes))
    return usable, notes


def _option_names(module):
    import inspect
    return {name for function in (module.needs, module.compute)
            for name in inspect.signature(function).parameters}


@contextlib.contextmanager
def _deterministic():
    """Deterministic torch algorithms for the duration of a run (previous setting restored)."""
    import torch

    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@contextlib.contextmanager
def _progress(total, unit, enabled):
    """A tqdm bar on stderr (a plain counter line when tqdm is not installed)."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        with tqdm(total=total, unit=unit.split()[-1], desc=unit, file=sys.stderr, disable=not enabled) as bar:
            yield bar
        return

    class Counter:
        done = 0

        def update(self, k):
            self.done += k
            if enabled:
                print(f"\r{unit}: {self.done}/{total}", end="\n" if self.done >= total else "", file=sys.stderr)
    yield Counter()


def _clean(value):
    """JSON-ready: numpy → Python numbers, NaN → None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else float(value)
    return value


# ----------------------------------------------------------------------------------- CLI

def add_arguments(parser):
    """Options of ``clipviz bench`` on an argparse parser."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"registered name, checkpoint path, or random:ARCH (default {DEFAULT_MODEL})")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"number of scenes (default {DEFAULT_N})")
    parser.add_argument("--seed", type=int, default=BENCH_SEED,
                        help=f"scene stream (default {BENCH_SEED}, held out from training)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated method names (default: every registered method)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--out", default="bench.json", help="JSON output file (default bench.json)")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="localization on real photos: DIR/images and DIR/masks/<stem>__<category>.png")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"deletion/insertion steps (default {DEFAULT_STEPS})")
    parser.add_argument("--sanity-scenes", type=int, default=DEFAULT_SANITY_SCENES,
                        help=f"scenes for cascading randomisation (default {DEFAULT_SANITY_SCENES})")
    parser.add_argument("--no-sanity", action="store_true", help="skip cascading weight randomisation")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run(args):
    """Run ``clipviz bench`` from parsed ``args``: print the tables, write the JSON; returns 0.
    Raises ClipvizError for problems the user can fix."""
    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    model, name = load_model(args.model, args.device)
    progress = not args.quiet
    if args.data:
        result = run_data_benchmark(model, args.data, methods=methods, seed=args.seed, progress=progress,
                                    model_name=name)
    else:
        result = run_benchmark(model, methods=methods, n=args.n, seed=args.seed, progress=progress,
                               steps=args.steps, sanity=not args.no_sanity, sanity_scenes=args.sanity_scenes,
                               model_name=name)
    print(markdown(result))
    out = Path(args.out).expanduser()
    try:
        out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    except OSError as error:
        raise ClipvizError(f"cannot write {out}: {error.strerror}; pass --out with a writable path") from None
    print(f"\nwrote {out}")
    return 0


def main(argv=None):
    """``python -m clipviz.bench``: the same as ``clipviz bench``."""
    parser = add_arguments(argparse.ArgumentParser(prog="clipviz bench", description=__doc__.split("\n")[0]))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ClipvizError as error:
        print(f"clipviz bench: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
