"""Image loading and CLIP preprocessing with PIL + numpy (no torchvision); the crop box.

    rgb = load_image("photo.jpg")               # uint8 [H, W, 3], EXIF orientation applied
    x, box = preprocess_image(rgb, 224)         # float32 [3, 224, 224] and the CropBox
    (clipviz.maps.map_to_photo(patch_map, box) maps a patch grid back onto the photo)

The transform is openai/CLIP's

    Resize(S, BICUBIC) -> CenterCrop(S) -> convert("RGB") -> ToTensor() -> Normalize(MEAN, STD)

done with the same PIL call torchvision makes (Image.resize with BICUBIC, which antialiases when
it shrinks) and torchvision's size and crop arithmetic, so an RGB photo gives bit for bit the
tensor the reference gives with the same Pillow (Pillow 13 changed the order of its two
resampling passes for tall images, which moves some pixels by one level).

One deliberate difference: we convert to RGB *first*, so that every mode is resized as colours.
For RGB and L photos this changes nothing. For other modes the reference does worse: PIL
resizes palette (P) and bilevel (1) images with NEAREST whatever is asked, resizes RGBA with
premultiplied alpha (fully transparent pixels turn black before alpha is dropped), and converts
CMYK after resizing (rounding differs by a level or so).
"""

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .errors import ClipvizError
from .files import open_regular

MEAN = (0.48145466, 0.4578275, 0.40821073)  # per RGB channel, as in openai/CLIP
STD = (0.26862954, 0.26130258, 0.27577711)

# Refuse images with more pixels than this, judged from the file header before any pixel is
# decoded: 2**26 = 8192×8192, above a 61-megapixel camera's 9504×6336. Decoding takes ~7 bytes a
# pixel (PIL holds 4, the RGB array 3), so at most ~470 MB, and each prompt's map 4 bytes a pixel
# (see clipviz.explanation.MAX_MAP_BYTES); a 530 KB PNG can declare 13000×13000 = 1.2 GB of
# decoded pixels. Raise it for a trusted huge file; above 2 * PIL.Image.MAX_IMAGE_PIXELS (where
# PIL raises DecompressionBombError) also raise PIL.Image.MAX_IMAGE_PIXELS.
MAX_PIXELS = 1 << 26
# Refuse photos so elongated that the resized image (short side S) would have more pixels than
# this. That image is never built whole when it outgrows the photo (only the crop is computed, see
# _resize_and_crop), so this only stops absurd proportions; it is PIL's bomb threshold.
MAX_RESIZED_PIXELS = 178_956_970

_MEAN = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)


@dataclass(frozen=True)
class CropBox:
    """Where the model's S×S input square sits in the original photo.

    Coordinates are continuous photo pixels: pixel (x, y) covers [x, x+1) × [y, y+1), so its
    centre is (x + 0.5, y + 0.5) and the photo spans [0, photo_width] × [0, photo_height].

    How it is derived: the photo (W×H) is resized to W'×H' (short side = S, long side =
    int(S * long / short), truncated), then the S×S square at (crop_left, crop_top) of the
    resized image is kept. PIL's resize maps resized coordinate x' to photo coordinate
    x' * W / W' (pixel edges aligned, centres at half pixels), so

        left = crop_left * W / W'    width  = S * W / W'
        top  = crop_top  * H / H'    height = S * H / H'

    Because the long side is truncated, W / W' and H / H' differ slightly; hence a width and a
    height rather than one side length. The short axis is covered exactly (0 to its full length).
    """

    left: float
    top: float
    width: float
    height: float
    size: int  # S, the model input side in pixels
    photo_width: int
    photo_height: int

    @property
    def photo_size(self):
        """(photo_width, photo_height), as PIL's Image.size."""
        return (self.photo_width, self.photo_height)

    def to_photo(self, u, v):
        """Model-input coordinates (u, v) in [0, S] -> photo coordinates (x, y). Works on arrays."""
        return (self.left + u * self.width / self.size, self.top + v * self.height / self.size)

    def to_model(self, x, y):
        """Photo coordinates (x, y) -> model-input coordinates (u, v); inverse of to_photo."""
        return ((x - self.left) * self.size / self.width, (y - self.top) * self.size / self.height)


def load_image(source):
    """Load an image as RGB uint8 [H, W, 3], upright (EXIF orientation applied).

    source: a path (str or Path), a binary file object, a PIL image, or a numpy array
    [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] of uint8, uint16 (scaled by 1/257, rounded),
    float in [0, 1] (scaled by 255, rounded) or bool.

    Alpha is dropped, as PIL's convert("RGB") does and as CLIP's reference transform does; the
    colour stored under transparent pixels is kept. Palette images (with or without transparency)
    become their palette colours. 16-bit images (modes I;16*, and I, which older Pillow gives
    for 16-bit PNGs, clipped to 0..65535) are scaled to 8 bits by /257 with rounding, not PIL's
    clipping convert. Float images (mode F) must hold values in [0, 1], like float arrays.
    Animated GIF / WebP / PNG files give their first frame. Files with more than MAX_PIXELS
    pixels are refused from their header alone. Only regular files are read: a FIFO, device or
    directory raises ClipvizError saying what it is.
    """
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, "the array")
    if isinstance(source, Image.Image):
        return _decode(source, "the PIL image")
    if isinstance(source, (str, os.PathLike)):
        if not os.fspath(source):  # Path("") is ".", the current folder: say what was given
            raise ClipvizError("the image path is empty: pass a file name, a PIL image or an array")
        path = Path(source).expanduser()
        if not os.path.lexists(path):
            raise ClipvizError(
                f"No image file at '{path}'. Check the spelling and the working directory ({os.getcwd()})."
            )
        with open_regular(path, "image") as handle:  # a FIFO, device or directory: ClipvizError, no blocking
            return _open(handle, f"'{path}'")
    if hasattr(source, "read"):
        return _open(source, "the file object")
    raise ClipvizError(
        f"Cannot load an image from {_article(type(source).__name__)} {type(source).__name__}. Pass a file path, a PIL image, "
        "a binary file object, or a numpy array [H, W], [H, W, 3] or [H, W, 4]."
    )


def _open(fp, name):
    """Open a file (path or file object) with PIL and decode it: RGB uint8 [H, W, 3]."""
    with warnings.catch_warnings():
        # Our MAX_PIXELS check replaces PIL's bomb warning. PIL's UserWarnings about damaged
        # metadata (EXIF, TIFF tags) are dropped: the file either decodes or is a ClipvizError.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        try:
            img = Image.open(fp, formats=_safe_formats())
        except Image.DecompressionBombError as e:
            # PIL's own check (above 2 × its MAX_IMAGE_PIXELS) comes first; say it in clipviz's terms
            declared = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(declared.group(1)):,} pixels" if declared else \
                f"more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels"
            raise ClipvizError(
                f"{name} claims to be {size}, more than the limit of {MAX_PIXELS:,} (a guard against "
                "decompression bombs). Downscale it first, or, if you trust it, raise "
                "clipviz.preprocess.MAX_PIXELS and PIL.Image.MAX_IMAGE_PIXELS."
            ) from None
        except MemoryError:
            raise
        except Image.UnidentifiedImageError:  # PIL's text names the file object (<_io.BufferedReader name=3>)
            raise ClipvizError(
                f"Cannot read {name} as an image: its contents are not in a format clipviz reads (PNG, JPEG, "
                "GIF, WebP, TIFF, BMP, ...). Check that it is an image file, not e.g. a text file or a video."
            ) from None
        except Exception as e:  # OSError (PermissionError), plugins' ValueError, ...
            reason = e if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
            raise ClipvizError(
                f"Cannot read {name} as an image ({reason}). Check that it is an image file (PNG, JPEG, GIF, "
                "WebP, TIFF, BMP, ...) and that you may read it."
            ) from None
        with img:
            return _decode(img, name)


def _safe_formats():
    """Every format PIL can open except EPS, which PIL renders by running Ghostscript on the file:
    an external interpreter fed untrusted PostScript. Computed per call so plugins registered
    later (e.g. HEIF) are included."""
    Image.init()
    return [fmt for fmt in Image.ID if fmt != "EPS"]


def _decode(img, name):
    """Check the size of a (possibly not yet decoded) PIL image, decode it, rotate it upright and
    convert it: RGB uint8 [H, W, 3]."""
    width, height = img.size
    if width * height == 0:
        raise ClipvizError(f"{name} is empty ({width}×{height} pixels). Pass an image with at least one pixel.")
    if width * height > MAX_PIXELS:
        raise ClipvizError(
            f"{name} claims to be {width}×{height} = {width * height:,} pixels, more than the limit of "
            f"{MAX_PIXELS:,} (a guard against decompression bombs). Downscale it first, or, if you trust "
            "it, raise clipviz.preprocess.MAX_PIXELS."
        )
    try:
        img.load()  # force the full decode here, so truncated data fails inside this try
        if img.getexif().get(0x0112, 1) != 1:  # exif_transpose copies even an upright image
            img = ImageOps.exif_transpose(img)
    except MemoryError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ... on bad data
        raise ClipvizError(
            f"Cannot decode {name}: it is corrupt, truncated or not a supported image ({type(e).__name__}: {e}). "
            "Re-download or re-export it (e.g. as PNG or JPEG)."
        ) from None
    return _pil_to_rgb(img, name)


def _pil_to_rgb(img, name):
    """Decoded PIL image of any mode -> RGB uint8 [H, W, 3] (see load_image for the rules)."""
    mode = img.mode
    if mode == "I":
        return _array_to_rgb(np.clip(np.asarray(img), 0, 65535).astype(np.uint16), name)
    if mode == "F" or mode.startswith("I;16"):
        return _array_to_rgb(np.asarray(img), name)
    if mode in ("P", "PA"):
        img = img.convert("RGBA")  # palette colours; transparency goes to alpha, which we drop
    try:
        return np.array(img if mode == "RGB" else img.convert("RGB"))  # convert() copies even RGB
    except ValueError as e:
        raise ClipvizError(
            f"{name} has pixel mode {mode!r}, which cannot be converted to RGB ({e}). Convert it to RGB first."
        ) from None


def _array_to_rgb(arr, name):
    """numpy image [H, W], [H, W, 1|3|4] of uint8 / uint16 / float in [0, 1] / bool -> RGB uint8 [H, W, 3]."""
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4))):
        hint = ""
        if arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
            hint = " It looks channels-first: use arr.transpose(1, 2, 0)."
        raise ClipvizError(
            f"{name} has shape {arr.shape}; an image array must be [H, W], [H, W, 3] or [H, W, 4].{hint}"
        )
    if arr.size == 0:
        raise ClipvizError(f"{name} is empty (shape {arr.shape}). Pass an image with at least one pixel.")
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(x / 257): 65535 -> 255
    elif arr.dtype.kind == "f":
        values = arr.astype(np.float64)
        if not np.isfinite(values).all():
            raise ClipvizError(f"{name} holds NaN or infinite values. Replace them, e.g. with np.nan_to_num.")
        if values.min() < 0 or values.max() > 1:
            raise ClipvizError(
                f"{name} holds floats outside [0, 1] (min {values.min():g}, max {values.max():g}). "
                "Scale it to [0, 1] (divide by 255 if it holds 0..255), or pass uint8."
            )
        arr = np.round(values * 255).astype(np.uint8)
    else:
        raise ClipvizError(
            f"{name} has dtype {arr.dtype}; use uint8 (0..255), uint16 (0..65535) or float in [0, 1], "
            "e.g. arr.astype(np.uint8)."
        )
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])  # a copy when alpha is dropped; never a view of PIL memory


def _resized_size(width, height, size):
    """torchvision's Resize(size) output (W', H'): short side -> size, long side int()-truncated."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


# Resized images up to this many pixels are made whole by PIL and then cropped (every ordinary
# photo); beyond it only the crop is computed (see _resize_and_crop).
_WHOLE_RESIZE_PIXELS = 1 << 22


def _resize_and_crop(rgb, new_w, new_h, left, top, size):
    """Image.resize((new_w, new_h), BICUBIC) of RGB uint8 [H, W, 3], then its [S, S] window at
    (left, top): uint8 [S, S, 3], a writable copy. S = size.

    A long thin image whose short side is below S is enlarged on both axes, and the whole resized
    image can be ~S times the photo (a 100-byte 3500×1 PNG would make 784,000×224 pixels, 1.7 GB
    of memory). There only the crop is computed: rows (or columns) of the photo that feed the
    crop, PIL's horizontal pass (which it runs first when both axes grow, in every version)
    restricted to the kept columns, then the vertical pass restricted to the kept rows, in PIL's
    own fixed-point arithmetic, so the result is bit for bit PIL's.
    """
    height, width = rgb.shape[:2]
    if new_w * new_h <= _WHOLE_RESIZE_PIXELS or min(width, height) >= size:
        resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BICUBIC))
        return np.array(resized[top : top + size, left : left + size])
    row_taps, row_weights = _bicubic_coefficients(height, new_h, top, size)
    first, stop = int(row_taps.min()), int(row_taps.max()) + 1
    col_taps, col_weights = _bicubic_coefficients(width, new_w, left, size)
    columns_done = _bicubic_pass(rgb[first:stop], col_taps, col_weights, axis=1)  # [rows, S, 3]
    return _bicubic_pass(columns_done, row_taps - first, row_weights, axis=0)


def _bicubic_coefficients(in_size, out_size, start, count):
    """PIL's bicubic taps along one axis for outputs start .. start+count-1 (Resample.c:
    precompute_coeffs, normalize_coeffs_8bpc). Returns input indices int64 [count, K] and
    weights in 22-bit fixed point int64 [count, K]; taps outside an output's window weigh 0."""
    scale = in_size / out_size
    filter_scale = max(scale, 1.0)  # shrinking widens the kernel: that is the antialiasing
    support = 2.0 * filter_scale
    centre = (np.arange(start, start + count) + 0.5) * scale
    low = np.maximum(np.trunc(centre - support + 0.5), 0).astype(np.int64)
    high = np.minimum(np.trunc(centre + support + 0.5), in_size).astype(np.int64)
    taps = low[:, None] + np.arange(2 * int(np.ceil(support)) + 1)
    x = np.abs((taps - centre[:, None] + 0.5) * (1.0 / filter_scale))
    weights = np.where(x < 1, (1.5 * x - 2.5) * x * x + 1, np.where(x < 2, ((x - 5) * x + 8) * x - 4, 0) * -0.5)
    weights[taps >= high[:, None]] = 0.0
    weights /= np.cumsum(weights, axis=1)[:, -1:]  # summed left to right, as the C loop does
    fixed = np.trunc(weights * (1 << 22) + np.where(weights < 0, -0.5, 0.5)).astype(np.int64)
    return np.minimum(taps, in_size - 1), fixed


def _bicubic_pass(img, taps, weights, axis):
    """One PIL resampling pass over uint8 [H, W, C] along axis (0: rows, 1: columns) with
    coefficients from _bicubic_coefficients: round, shift out the 22 fraction bits, clip."""
    shape = [1, 1, 1]
    shape[axis] = len(taps)
    total = np.int64(1 << 21)
    for k in range(taps.shape[1]):
        total = total + np.take(img, taps[:, k], axis=axis).astype(np.int64) * weights[:, k].reshape(shape)
    return np.clip(total >> 22, 0, 255).astype(np.uint8)


def preprocess_image(image, size, crop=True):
    """CLIP's preprocessing: image -> (float32 tensor [3, S, S], CropBox), S = size.

    image: anything load_image takes. The tensor equals openai/CLIP's preprocess(image) for RGB
    and L images (see the module docstring for other modes); the CropBox says where the S×S square
    sits in the photo. crop=False resizes the whole photo to S×S instead (SigLIP's processors:
    bicubic, no crop; the box is then the whole photo). Normalised with CLIP's mean and std either
    way: adapters of models trained with other statistics re-normalise (clipviz.adapters.openclip).
    """
    size = _check_size(size)
    rgb = load_image(image)
    height, width = rgb.shape[:2]
    if not crop:
        squashed = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC))
        x = torch.from_numpy(np.array(squashed)).permute(2, 0, 1).float().div(255).sub(_MEAN).div(_STD).contiguous()
        return x, CropBox(0.0, 0.0, float(width), float(height), size, width, height)
    new_w, new_h = _resized_size(width, height, size)
    if new_w * new_h > MAX_RESIZED_PIXELS:
        raise ClipvizError(
            f"The image is {width}×{height}: so elongated that resizing its short side to {size} px would "
            f"make {new_w}×{new_h} pixels. Crop it to a less elongated region first."
        )
    # torchvision CenterCrop; Python's round() rounds halves to even, e.g. round(0.5) == 0.
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    crop = _resize_and_crop(rgb, new_w, new_h, left, top, size)
    # ToTensor then Normalize, in float32 exactly as torchvision computes them
    x = torch.from_numpy(crop).permute(2, 0, 1).float().div(255).sub(_MEAN).div(_STD).contiguous()
    box = CropBox(
        left=left * width / new_w,
        top=top * height / new_h,
        width=size * width / new_w,
        height=size * height / new_h,
        size=size,
        photo_width=width,
        photo_height=height,
    )
    return x, box


def _check_size(size):
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ClipvizError(f"The model input size must be a positive integer such as 224; got {size!r}.")
    return int(size)


class Preprocess:
    """openai/CLIP-style preprocess: ``Preprocess(224)(image) -> float32 tensor [3, 224, 224]``.

    image: anything load_image takes (path, PIL image, numpy array, file object).
    with_box(image) also returns the CropBox that maps the model input back onto the photo.
    """

    def __init__(self, size, crop=True):
        self.size = _check_size(size)
        self.crop = bool(crop)  # False: resized to S×S without a crop (SigLIP)

    def __call__(self, image):
        return preprocess_image(image, self.size, self.crop)[0]

    def with_box(self, image):
        """image -> (float32 tensor [3, S, S], CropBox)."""
        return preprocess_image(image, self.size, self.crop)

    def __repr__(self):
        return f"Preprocess(size={self.size})" if self.crop else f"Preprocess(size={self.size}, crop=False)"


def _article(word):
    return "an" if word[:1].lower() in "aeiou" else "a"
