"""Images as ``explain`` and ``classify`` take them → the model's input pixels, the photo, the crop box.

    images, single = image_list(image)
    photos, pixels, boxes = model_inputs(images, resolution)   # uint8 [H, W, 3]s, [B, 3, S, S], CropBoxes
    notice_unseen_photos(model, images)                        # one line when the model never saw photos

Two kinds of image:

* a photo — a path, file object, PIL image or array (clipviz.preprocess.load_image) — goes
  through CLIP's transform (preprocess_image); its maps are put back on the whole photo through
  the CropBox of the square the model saw;
* a preprocessed tensor, what openai/clip's ``preprocess(img)`` gives: float [3, S, S] for one
  image, [B, 3, S, S] for B images, normalised with CLIP's MEAN and STD, S the model's input
  resolution. It is used as it is: its maps are on that S×S square (a CropBox covering all of it,
  no crop outline) and the photo shown is the tensor de-normalised,
  uint8 round(255 · clip(x · STD + MEAN, 0, 1)). Tensors normalised with other statistics (some
  open_clip checkpoints' preprocess) must be given as photos instead.
"""

import warnings

import numpy as np
import torch

from .errors import ClipvizError
from .preprocess import MEAN, STD, CropBox, load_image, preprocess_image


def image_list(image):
    """One image or several → (list of images, whether one was given); none is an error.

    A list or tuple holds several images; so does a tensor [B, 3, S, S] (B images, as a batch
    from openai/clip's preprocess), while [3, S, S] is one."""
    if isinstance(image, torch.Tensor) and image.ndim == 4:
        images, single = list(image.unbind(0)), False
    else:
        single = not isinstance(image, (list, tuple))
        images = [image] if single else list(image)
    if not images:
        raise ClipvizError("no image given: pass a path, a PIL image, an array, a preprocessed tensor, or a list of them")
    return images, single


def model_inputs(images, resolution, crop=True):
    """Photos and tensors → (photos [B] uint8 [H, W, 3], pixels float32 [B, 3, S, S] on the CPU,
    boxes [B] CropBox) for a model whose input side is S = ``resolution``. crop: False for models
    that resize the whole photo to the square (SigLIP; clipviz.preprocess.preprocess_image)."""
    photos, pixels, boxes = [], [], []
    for image in images:
        if isinstance(image, torch.Tensor):
            tensor = check_pixels(image, resolution)
            photo, box = denormalise(tensor), square_box(resolution)
        else:
            photo = load_image(image)
            tensor, box = preprocess_image(photo, resolution, crop=crop)
        photos.append(photo)
        pixels.append(tensor)
        boxes.append(box)
    return photos, torch.stack(pixels), boxes


def check_pixels(tensor, resolution):
    """A preprocessed image tensor [3, S, S] (S = resolution), float and finite → float32 on the CPU."""
    shape = list(tensor.shape)
    if not tensor.is_floating_point():
        raise ClipvizError(f"a {tensor.dtype} tensor {shape} is not a preprocessed image: pass floats [3, {resolution}, "
                           f"{resolution}] normalised with CLIP's mean and std (clipviz.Preprocess), or the photo itself "
                           "(a path, PIL image or uint8 array)")
    if shape != [3, resolution, resolution]:
        raise ClipvizError(f"a preprocessed image tensor must be [3, S, S] or [B, 3, S, S] with S = {resolution}, "
                           f"this model's input side; got {shape}: preprocess it for this model "
                           f"(clipviz.Preprocess({resolution}), the preprocess clipviz.load returns) or pass the photo itself")
    tensor = tensor.detach().to("cpu", torch.float32)
    if not bool(torch.isfinite(tensor).all()):
        raise ClipvizError("the image tensor holds NaN or infinite values: preprocess the photo again")
    return tensor


def denormalise(tensor):
    """float [3, S, S] normalised with CLIP's MEAN, STD → the picture it shows, uint8 [S, S, 3]."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1) for v in (MEAN, STD))
    picture = (tensor * std + mean).clamp(0.0, 1.0).mul(255.0).round()
    return np.ascontiguousarray(picture.to(torch.uint8).permute(1, 2, 0).numpy())


def square_box(size):
    """The CropBox of an S×S model input that is its own photo (maps cover all of it)."""
    return CropBox(0.0, 0.0, float(size), float(size), size, size, size)


def notice_unseen_photos(model, images):
    """Warn once per model (warnings.warn; the CLI prints it as one ``clipviz: warning:`` line)
    when a model that has never seen a photo — clipviz.load marks the synthetic-scene models
    (synth-*) with ``synthetic_only`` — is given an image that is not one of clipviz.synth's own
    scenes: its scores look confident on photos ("a bowl" 67% on a dog) and mean little there.
    Once is counted on the model (Python's own once-per-place rule is undone by every
    warnings.catch_warnings on the way)."""
    name = getattr(model, "synthetic_only", None)
    if not name or getattr(model, "photo_notice_given", False):
        return
    from .synth.scenes import is_scene_image
    if all(is_scene_image(image) for image in images):
        return
    model.photo_notice_given = True
    warnings.warn(f"{name} was trained only on synthetic shape scenes (clipviz.synth) and has never seen a photo: "
                  "its scores and maps on photos mean little; load a model trained on photos, e.g. ViT-B/16",
                  stacklevel=3)
