"""The photo driver: localization on real photos with masks (the layout of ../shared/coco-val-mini),
and whether a model could know real photos at all."""

import time
from pathlib import Path

import numpy as np

from ..progress import bar as progress_bar
from ..errors import ClipvizError
from ..suffixes import IMAGE_SUFFIXES
from .common import BENCH_SEED, deterministic, explain_tokens, model_label, usable_methods
from .report import clean, summarise
from .scene import CHANCE_ROWS, LOCALIZATION, chance_maps, localization, on_photo

PHOTO_QUERY = "a photo of a {}"


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
    from ..adapters import adapt
    from ..preprocess import load_image, preprocess_image

    adapter = adapt(model)
    modules, notes = usable_methods(adapter, methods)
    name = model_name or model_label(model)
    known, reason = photo_knowledge(name) if knows_photos is None else (knows_photos, "")
    warning = photo_warning(name, known, reason)
    items = data_items(folder)
    started = time.perf_counter()
    records, seconds, skipped = [], {m: [] for m in modules}, []
    with deterministic(), progress_bar(len(items), "photos", progress) as bar:
        for image_index, (image_path, categories) in enumerate(items):
            photo = load_image(image_path)
            pixels, box = preprocess_image(photo, adapter.input_resolution, crop=adapter.crop)
            prompts = [PHOTO_QUERY.format(category) for category, _ in categories]
            token_maps = {}
            for method, module in modules.items():
                token_maps[method], elapsed = explain_tokens(adapter, module, pixels, prompts)
                seconds[method].append(elapsed)
            for c, (category, mask_path) in enumerate(categories):
                rows = {m: maps[c] for m, maps in token_maps.items()}
                rows.update(chance_maps(adapter.patch_grid, np.random.default_rng([seed, image_index, c, 7])))
                record = _photo_record(on_photo(rows, box), _read_mask(mask_path, photo.shape[:2]))
                if record is None:
                    skipped.append(f"{image_path.name} {category}")
                    continue
                records.append({"image": image_path.name, "category": category, "query": prompts[c], **record})
            bar.update(1)
    rows = list(modules) + list(CHANCE_ROWS)
    return clean({
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
    from ..metrics import area_share

    first = next(iter(photo_maps.values()))
    seen = ~np.isnan(first)
    if not mask[seen].any():
        return None
    return {"area_share": area_share(first, mask), "mask_seen_fraction": float(mask[seen].sum() / mask.sum()),
            "metrics": {row: localization(photo_map, mask) for row, photo_map in photo_maps.items()}}


def photo_knowledge(name):
    """(could the model named ``name`` know real photos: True / False / None, why not)."""
    from ..hub import ADAPTER_PREFIXES, available_models, model_info

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
