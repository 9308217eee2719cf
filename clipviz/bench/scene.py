"""Every metric of one synthetic scene: localization against the object's mask, deletion and
insertion curves, prompt randomisation, and the chance rows."""

import numpy as np

from ..maps import map_to_photo, normalise_maps
from .common import explain_tokens

BLUR_PATCHES = 1.0  # insertion baseline: Gaussian blur with σ = this many patch sides
MIN_GAP = 0.01  # probability: a full image scoring less than this above its baseline has no curve
CHANCE_ROWS = ("random map", "centre Gaussian")
LOCALIZATION = ("pointing", "energy", "iou")
METRICS = LOCALIZATION + ("deletion", "insertion", "prompt_spearman")


def query_for(scene, seed, index):
    """(queried object index, absent (shape, colour)) for scene ``index``: rng [seed, index, 1]."""
    from ..synth import all_classes

    rng = np.random.default_rng([seed, index, 1])
    queried = int(rng.integers(len(scene.objects)))
    present = {(o.shape, o.colour) for o in scene.objects}
    absent = [c for c in all_classes() if c not in present]
    return queried, absent[int(rng.integers(len(absent)))]


def bench_scene(adapter, modules, scene, seed, index, steps, class_text):
    """Every metric for one scene → (record, maps for the sanity check, seconds, curves)."""
    from ..metrics import area_share, channel_mean_image, deletion_insertion, gaussian_blur, spearman
    from ..preprocess import preprocess_image
    from ..synth import object_prompt

    queried, absent = query_for(scene, seed, index)
    target = scene.objects[queried]
    mask = scene.masks[queried]
    prompts = [object_prompt(target.shape, target.colour), object_prompt(*absent)]
    pixels, box = preprocess_image(scene.image, adapter.input_resolution, crop=adapter.crop)

    token_maps, seconds, prompt_rho = {}, {}, {}
    for method, module in modules.items():
        maps, seconds[method] = explain_tokens(adapter, module, pixels, prompts)
        token_maps[method] = maps[0]
        prompt_rho[method] = spearman(maps[0], maps[1])
    token_maps.update(chance_maps(adapter.patch_grid, np.random.default_rng([seed, index, 2])))
    photo_maps = on_photo(token_maps, box)

    rows = list(token_maps)
    scorer = class_probability_scorer(adapter, class_text, scene, queried)
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
    from ..metrics import energy_share, mask_iou, pointing_game

    return {"pointing": pointing_game(photo_map, mask), "energy": energy_share(photo_map, mask),
            "iou": mask_iou(photo_map, mask)}


def chance_maps(patch_grid, rng):
    from ..metrics import centre_gaussian_map, random_map

    return {CHANCE_ROWS[0]: random_map(patch_grid, rng), CHANCE_ROWS[1]: centre_gaussian_map(patch_grid)}


def on_photo(token_maps, box):
    """{row: [g, g]} → {row: [H, W]} in [0, 1], NaN outside the crop (as Explanation.maps)."""
    names = list(token_maps)
    photo = map_to_photo(normalise_maps(np.stack([token_maps[n] for n in names])), box)
    return dict(zip(names, photo))


def class_text_embeddings(adapter):
    """Unit-norm embeddings of every synthetic class prompt (order of ``all_classes()``): [C, E]."""
    import torch
    from ..synth import all_class_prompts

    with torch.inference_mode():
        embeddings = adapter.encode_text(adapter.tokenize(all_class_prompts()).to(adapter.device)).float()
    return torch.nn.functional.normalize(embeddings, dim=-1)


def class_probability_scorer(adapter, class_text, scene, queried, batch_size=64):
    """images [M, 3, S, S] → [M] numpy: softmax(logit_scale · cosine) over the queried object's class
    and every class absent from ``scene``, read at the queried class."""
    import torch
    from ..synth import all_classes

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
