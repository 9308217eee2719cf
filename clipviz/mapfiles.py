"""Maps as files for big runs: one compressed ``.npz`` per image, or an 8-bit PNG per prompt.

    save_maps_npz("out/b--maps.npz", exp)     token maps [T, g, g] float32, crop box, prompts, scores
    load_maps("out/b--maps.npz")["maps"]      float32 [T, H, W]: exp.maps again (NaN where unseen)
    save_map_png("out/b--a-dog--map.png", exp.maps[0])   grey = round(255 · map), alpha 0 where unseen

The .npz keeps the method's raw output at patch resolution (a few KB, where the maps on the photo
take 4 bytes a pixel per prompt); the maps on the photo are recomputed from it exactly as
``clipviz.explain`` made them (clipviz.maps: per-map min–max, then bilinear onto the photo).
Written atomically through clipviz.outputs, like every other output.
"""

import numpy as np

from .maps import map_to_photo, normalise_maps
from .outputs import check_target, write_atomically

NPZ_SUFFIXES = (".npz",)
MAP_PNG_SUFFIXES = (".png",)


def save_maps_npz(path, explanation, *, protect=(), force=True):
    """Write one Explanation's maps as a compressed .npz → Path. Arrays: token_maps float32
    [T, g, g] (raw, before normalisation), scores and probs float32 [T], prompts str [T], method
    str, crop_box float64 [left, top, width, height, size, photo_width, photo_height]."""
    path = check_target(path, NPZ_SUFFIXES, protect)
    box = explanation.crop_box
    arrays = dict(token_maps=np.asarray(explanation.token_maps, dtype=np.float32),
                  scores=np.asarray(explanation.scores, dtype=np.float32),
                  probs=np.asarray(explanation.probs, dtype=np.float32),
                  prompts=np.asarray(explanation.prompts, dtype=str), method=np.asarray(explanation.method),
                  prompt_specific=np.asarray(not _same_map_for_all(explanation)),
                  crop_box=np.asarray([box.left, box.top, box.width, box.height, box.size, box.photo_width,
                                       box.photo_height], dtype=np.float64))
    return write_atomically(path, lambda handle: np.savez_compressed(handle, **arrays), force=force)


def load_maps(path):
    """A .npz of save_maps_npz → dict of its arrays plus ``maps`` float32 [T, H, W] on the photo
    (equal to the Explanation's ``maps``) and ``crop_box`` as a clipviz.preprocess.CropBox."""
    from .preprocess import CropBox

    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    left, top, width, height, size, photo_width, photo_height = arrays["crop_box"].tolist()
    box = CropBox(left, top, width, height, int(size), int(photo_width), int(photo_height))
    grids = arrays["token_maps"]
    if not bool(arrays["prompt_specific"]):  # one map for every prompt, as explain maps it
        maps = np.repeat(map_to_photo(normalise_maps(grids[:1]), box), grids.shape[0], axis=0)
    else:
        maps = map_to_photo(normalise_maps(grids), box)
    return {**arrays, "crop_box": box, "maps": maps}


def map_png_pixels(photo_map):
    """float [H, W] in [0, 1] (NaN unseen) → uint8 [H, W, 2]: grey round(255 · map), alpha 255
    where the model saw the pixel and 0 where not."""
    seen = ~np.isnan(photo_map)
    grey = np.zeros(photo_map.shape, dtype=np.uint8)
    grey[seen] = np.round(255.0 * np.clip(photo_map[seen], 0.0, 1.0)).astype(np.uint8)
    return np.stack([grey, np.where(seen, 255, 0).astype(np.uint8)], axis=-1)


def save_map_png(path, photo_map, *, protect=(), force=True):
    """Write one map on the photo as an 8-bit grey + alpha PNG (map_png_pixels) → Path."""
    from PIL import Image

    from .render.colours import PNG_PHOTO_OPTIONS

    path = check_target(path, MAP_PNG_SUFFIXES, protect)
    image = Image.fromarray(map_png_pixels(np.asarray(photo_map)))  # [H, W, 2] uint8: mode LA
    return write_atomically(path, lambda handle: image.save(handle, format="PNG", **PNG_PHOTO_OPTIONS),
                            force=force)


def _same_map_for_all(explanation):
    from .methods import get_method
    return not get_method(explanation.method).prompt_specific
