"""clipviz.preprocess against an independent numpy re-implementation of CLIP's reference transform.

The reference here is written from Pillow's libImaging/Resample.c (bicubic, a = -0.5, support
scaled by the shrink factor, coefficients normalised then rounded to 22-bit fixed point,
8-bit rounding and clipping after each pass, Pillow's choice of which pass goes first) and torchvision's Resize /
CenterCrop arithmetic (long side int()-truncated, crop offset rounded half to even). It shares
no code with clipviz.preprocess.
"""

import io
import math
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import PIL
from PIL import Image

from clipviz import preprocess as pp
from clipviz.errors import ClipvizError
from clipviz.maps import map_to_photo
from clipviz.preprocess import CropBox, Preprocess, load_image, preprocess_image

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])
PILLOW_MAJOR = int(PIL.__version__.split(".")[0])


# ---------------------------------------------------------------- numpy reference of the transform


def keys_cubic(x):
    """Pillow's bicubic_filter: Keys' cubic convolution kernel with a = -0.5, support 2."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def pil_bicubic_taps(in_size, out_size):
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis.

    Returns taps int64 [out, K] (input indices) and Q22 fixed-point weights int64 [out, K];
    taps past an output's window have weight 0.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)  # shrinking widens the kernel: that is the antialiasing
    support = 2.0 * filterscale
    ksize = 2 * math.ceil(support) + 1
    centre = (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(centre - support + 0.5), 0).astype(np.int64)
    stop = np.minimum(np.trunc(centre + support + 0.5), in_size).astype(np.int64)
    offsets = np.arange(ksize)
    taps = first[:, None] + offsets
    weights = keys_cubic((taps - centre[:, None] + 0.5) * (1.0 / filterscale))
    weights[offsets >= (stop - first)[:, None]] = 0.0
    weights /= np.cumsum(weights, axis=1)[:, -1:]  # C sums left to right; cumsum does too
    fixed = np.trunc(weights * (1 << 22) + np.where(weights < 0, -0.5, 0.5)).astype(np.int64)
    return np.minimum(taps, in_size - 1), fixed


def pil_pass(img, taps, fixed, axis):
    """One fixed-point resampling pass of uint8 [H, W, C] along axis (1: horizontal, 0: vertical)."""
    shape = [1, 1, 1]
    shape[axis] = len(taps)
    acc = np.int64(1 << 21)  # rounding half, as ss0 = 1 << (PRECISION_BITS - 1)
    for k in range(taps.shape[1]):
        acc = acc + np.take(img, taps[:, k], axis=axis).astype(np.int64) * fixed[:, k].reshape(shape)
    return np.clip(acc >> 22, 0, 255).astype(np.uint8)


def vertical_pass_first(w, h, out_w, out_h):
    """Pillow >= 13 runs the vertical pass first when the height shrinks more than twice as much
    as the width (python-pillow/Pillow#9549; rule measured on 2,880 random resizes); older
    Pillow always goes horizontal first. The order changes 8-bit rounding, so it matters here."""
    return PILLOW_MAJOR >= 13 and out_h <= h and h - out_h > 2 * (w - out_w)


def numpy_resize(img, out_w, out_h, cols=slice(None), rows=slice(None)):
    """Image.resize((out_w, out_h), BICUBIC) of uint8 [H, W, C], computing only output rows x cols."""
    h, w = img.shape[:2]
    passes = [(w, out_w, cols, 1), (h, out_h, rows, 0)]
    if vertical_pass_first(w, h, out_w, out_h):
        passes.reverse()
    for in_size, out_size, keep, axis in passes:
        if out_size == in_size:  # Pillow skips a pass whose size does not change
            img = img[keep] if axis == 0 else img[:, keep]
        else:
            taps, fixed = pil_bicubic_taps(in_size, out_size)
            img = pil_pass(img, taps[keep], fixed[keep], axis)
    return img


def half_to_even(excess):
    """torchvision CenterCrop's int(round(excess / 2.0)); Python's round sends .5 to the even side."""
    half, odd = divmod(excess, 2)
    return half + (odd and half % 2)


def reference_geometry(w, h, size):
    """(resized width, resized height, crop left, crop top) of torchvision Resize + CenterCrop."""
    new_w, new_h = (size, size * h // w) if w <= h else (size * w // h, size)
    return new_w, new_h, half_to_even(new_w - size), half_to_even(new_h - size)


def reference_tensor(rgb, size):
    """CLIP's transform of RGB uint8 [H, W, 3], in numpy: float64 [3, S, S]."""
    h, w = rgb.shape[:2]
    new_w, new_h, left, top = reference_geometry(w, h, size)
    crop = numpy_resize(rgb, new_w, new_h, slice(left, left + size), slice(top, top + size))
    return ((crop / 255.0 - CLIP_MEAN) / CLIP_STD).transpose(2, 0, 1)


def assert_matches_reference(source, rgb, size):
    """preprocess_image(source) equals the reference of rgb: same 8-bit levels (float32 noise only)."""
    tensor, box = preprocess_image(source, size)
    assert tensor.shape == (3, size, size) and tensor.dtype == torch.float32
    diff = np.abs(tensor.numpy() - reference_tensor(rgb, size)).max()
    # measured: <= 2.9e-7 over 1,500 random sizes (float32 rounding, no 8-bit level differs);
    # one 8-bit level would be 1 / 255 / std >= 0.014
    assert diff <= 1e-6, f"max difference {diff}"
    return box


# ---------------------------------------------------------------- inputs in many modes and sizes


def noise(rng, shape, dtype=np.uint8, high=256):
    return rng.integers(0, high, shape).astype(dtype)


def save(tmp_path, img, name, **kwargs):
    path = tmp_path / name
    img.save(path, **kwargs)
    return path


def case_rgb_png(tmp_path, rng):  # landscape, a file on disk
    rgb = noise(rng, (480, 640, 3))
    return save(tmp_path, Image.fromarray(rgb), "a.png"), rgb, 224


def case_rgb_portrait_half_to_even(tmp_path, rng):  # resized to 224x373: crop top 74.5 -> 74
    rgb = noise(rng, (502, 301, 3))
    return rgb, rgb, 224


def case_rgb_landscape_half_to_even(tmp_path, rng):  # resized to 281x224: crop left 28.5 -> 28
    rgb = noise(rng, (480, 603, 3))
    return Image.fromarray(rgb), rgb, 224


def case_l(tmp_path, rng):
    gray = noise(rng, (129, 257))
    return save(tmp_path, Image.fromarray(gray), "l.png"), np.stack([gray] * 3, -1), 224


def case_la(tmp_path, rng):
    gray_alpha = noise(rng, (48, 64, 2))
    img = Image.fromarray(gray_alpha, "LA")
    return save(tmp_path, img, "la.png"), np.repeat(gray_alpha[:, :, :1], 3, axis=2), 32


def case_rgba(tmp_path, rng):  # alpha dropped, hidden colours kept
    rgba = noise(rng, (200, 200, 4))
    return save(tmp_path, Image.fromarray(rgba), "rgba.png"), rgba[:, :, :3], 224


def case_palette(tmp_path, rng):
    palette = noise(rng, (256, 3))
    index = noise(rng, (90, 150))
    img = Image.fromarray(index, "L").convert("P")
    img.putpalette(palette.ravel().tolist())
    return save(tmp_path, img, "p.png"), palette[index], 64


def case_palette_transparency(tmp_path, rng):
    palette = noise(rng, (256, 3))
    index = noise(rng, (70, 50))
    img = Image.fromarray(index, "L").convert("P")
    img.putpalette(palette.ravel().tolist())
    return save(tmp_path, img, "pt.png", transparency=int(index[0, 0])), palette[index], 48


def case_cmyk_tiff(tmp_path, rng):
    cmyk = noise(rng, (160, 120, 4)).astype(np.int64)
    rgb = np.round((255 - cmyk[:, :, :3]) * (255 - cmyk[:, :, 3:]) / 255).astype(np.uint8)
    img = Image.fromarray(cmyk.astype(np.uint8), "CMYK")
    return save(tmp_path, img, "cmyk.tiff"), rgb, 96


def case_png_16bit(tmp_path, rng):
    gray16 = noise(rng, (75, 100), np.uint16, 65536)
    gray16[0, :4] = [0, 128, 129, 65535]  # rounding edges of x / 257: 0, 0, 1, 255
    gray8 = ((gray16.astype(np.int64) * 2 + 257) // 514).astype(np.uint8)  # round(x / 257)
    assert list(gray8[0, :4]) == [0, 0, 1, 255]
    return save(tmp_path, Image.fromarray(gray16), "16.png"), np.stack([gray8] * 3, -1), 56


def case_exif_rotated_jpeg(tmp_path, rng):  # stored landscape, displayed portrait
    exif = Image.Exif()
    exif[0x0112] = 6  # "0th row is the visual right side, 0th column the visual top"
    path = save(tmp_path, Image.fromarray(noise(rng, (120, 160, 3))), "r.jpg", exif=exif, quality=95)
    with Image.open(path) as img:
        stored = np.asarray(img.convert("RGB"))  # PIL itself does not rotate
    return path, np.rot90(stored, -1), 64


def case_one_pixel(tmp_path, rng):
    rgb = np.array([[[250, 3, 128]]], np.uint8)
    return rgb, rgb, 224


def case_strip_wide(tmp_path, rng):  # resized to 44800x224
    rgb = noise(rng, (20, 4000, 3))
    return rgb, rgb, 224


def case_strip_tall(tmp_path, rng):  # resized to 224x33600
    rgb = noise(rng, (3000, 20, 3))
    return save(tmp_path, Image.fromarray(rgb), "tall.png"), rgb, 224


def case_upscale(tmp_path, rng):
    rgb = noise(rng, (23, 37, 3))
    return rgb, rgb, 64


def case_bilevel(tmp_path, rng):
    bits = rng.random((60, 90)) < 0.5
    return save(tmp_path, Image.fromarray(bits), "1.png"), np.stack([bits * 255] * 3, -1).astype(np.uint8), 40


def case_float_tiff(tmp_path, rng):  # mode F holding [0, 1]
    values = rng.random((40, 50)).astype(np.float32)
    gray = np.round(values.astype(np.float64) * 255).astype(np.uint8)
    return save(tmp_path, Image.fromarray(values, "F"), "f.tiff"), np.stack([gray] * 3, -1), 32


def case_float_array(tmp_path, rng):
    rgb = noise(rng, (33, 44, 3))
    return rgb / 255.0, rgb, 32


def case_uint16_array_rgba(tmp_path, rng):
    rgb = noise(rng, (30, 20, 3))
    rgba16 = np.concatenate([rgb.astype(np.uint16) * 257, noise(rng, (30, 20, 1), np.uint16, 65536)], -1)
    return rgba16, rgb, 24


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}


@pytest.fixture(params=sorted(CASES))
def case(request, tmp_path):
    return CASES[request.param](tmp_path, np.random.default_rng(zlib.crc32(request.param.encode())))


def test_load_image_gives_the_expected_rgb(case):
    source, rgb, _ = case
    loaded = load_image(source)
    assert loaded.dtype == np.uint8 and loaded.shape == rgb.shape
    np.testing.assert_array_equal(loaded, rgb)


def test_tensor_equals_numpy_reference(case):
    source, rgb, size = case
    assert_matches_reference(source, rgb, size)


@settings(max_examples=40, deadline=None)
@given(
    w=st.integers(1, 150),
    h=st.integers(1, 150),
    size=st.integers(4, 48),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_size_matches_reference_and_box_is_centred(w, h, size, seed):
    rgb = noise(np.random.default_rng(seed), (h, w, 3))
    box = assert_matches_reference(rgb, rgb, size)
    assert box.photo_size == (w, h) and box.size == size
    # the short axis is covered exactly, the long one by a centred, slightly smaller span
    short_span, short_len = (box.width, w) if w <= h else (box.height, h)
    assert short_span == pytest.approx(short_len)
    assert 0 <= box.left and box.left + box.width <= w + 1e-9
    assert 0 <= box.top and box.top + box.height <= h + 1e-9
    resized_pixel = max(w, h) / max(reference_geometry(w, h, size)[:2])
    assert abs(box.left + box.width / 2 - w / 2) <= resized_pixel / 2 + 1e-9
    assert abs(box.top + box.height / 2 - h / 2) <= resized_pixel / 2 + 1e-9
    u, v = np.array([0.0, 3.5, size]), np.array([size, 1.25, 0.0])
    np.testing.assert_allclose(box.to_model(*box.to_photo(u, v)), (u, v), atol=1e-9)


@pytest.mark.parametrize(
    "in_size, out_size",
    [((640, 480), (298, 224)), ((480, 603), (224, 281)), ((37, 23), (103, 64)),
     ((300, 10), (97, 31)), ((5, 700), (5, 13)), ((1, 1), (9, 4)), ((211, 97), (211, 97))],
)
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_numpy_resize_equals_pillow_exactly(in_size, out_size, mode):
    """The reference's resampling is Pillow's, bit for bit, on the whole image."""
    (w, h), channels = in_size, 3 if mode == "RGB" else 1
    pixels = noise(np.random.default_rng(w * h), (h, w, channels))
    img = Image.fromarray(pixels if channels == 3 else pixels[:, :, 0], mode)
    expected = np.asarray(img.resize(out_size, Image.Resampling.BICUBIC)).reshape(out_size[1], out_size[0], channels)
    np.testing.assert_array_equal(numpy_resize(pixels, *out_size), expected)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_rgb_first_equals_reference_order(mode):
    """CLIP converts to RGB after resize and crop; we convert first. Same numbers for RGB and L."""
    img = Image.fromarray(noise(np.random.default_rng(7), (300, 410, 3))).convert(mode)
    new_w, new_h, left, top = reference_geometry(410, 300, 64)
    ref = img.resize((new_w, new_h), Image.Resampling.BICUBIC).crop((left, top, left + 64, top + 64))
    ref = (np.asarray(ref.convert("RGB")) / 255.0 - CLIP_MEAN) / CLIP_STD
    tensor, _ = preprocess_image(img, 64)
    assert np.abs(tensor.numpy() - ref.transpose(2, 0, 1)).max() <= 1e-6


def test_preprocess_is_callable_like_clips():
    img = Image.fromarray(noise(np.random.default_rng(3), (90, 120, 3)))
    preprocess = Preprocess(32)
    assert preprocess.size == 32
    tensor = preprocess(img)
    with_box, box = preprocess.with_box(img)
    assert tensor.shape == (3, 32, 32) and torch.equal(tensor, with_box)
    assert box == preprocess_image(img, 32)[1]
    np.testing.assert_array_equal(pp.MEAN, CLIP_MEAN)
    np.testing.assert_array_equal(pp.STD, CLIP_STD)


# ---------------------------------------------------------------- crop box and photo maps


def test_crop_box_numbers_by_hand():
    box = preprocess_image(np.zeros((480, 640, 3), np.uint8), 224)[1]  # resized 298x224, left 37
    assert box == CropBox(37 * 640 / 298, 0.0, 224 * 640 / 298, 480.0, 224, 640, 480)
    box = preprocess_image(np.zeros((502, 301, 3), np.uint8), 224)[1]  # resized 224x373, top 74
    assert box == CropBox(0.0, 74 * 502 / 373, 301.0, 224 * 502 / 373, 224, 301, 502)
    assert box.to_photo(0, 0) == (box.left, box.top)
    assert box.to_photo(224, 224) == pytest.approx((box.left + box.width, box.top + box.height))
    assert box.to_model(*box.to_photo(100.0, 37.0)) == pytest.approx((100.0, 37.0))


@pytest.mark.parametrize("w, h", [(640, 480), (480, 640), (500, 500), (1000, 150), (333, 517)])
def test_marker_lands_where_crop_box_says(w, h):
    """A blob painted at a known photo point shows up in the model input at box.to_model(point)."""
    size = 224
    box = preprocess_image(np.zeros((h, w, 3), np.uint8), size)[1]
    x0, y0 = box.left + 0.3 * box.width + 0.37, box.top + 0.6 * box.height + 0.21
    sigma = 0.02 * box.width
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    blob = 100 * np.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * sigma**2))
    photo = np.full((h, w, 3), 100, np.uint8)
    photo[:, :, 0] = np.round(100 + blob).astype(np.uint8)
    tensor, _ = preprocess_image(photo, size)
    red = tensor[0].numpy() * CLIP_STD[0] + CLIP_MEAN[0] - tensor[1].numpy() * CLIP_STD[1] - CLIP_MEAN[1]
    v, u = np.mgrid[0:size, 0:size] + 0.5
    centroid = (u * red).sum() / red.sum(), (v * red).sum() / red.sum()
    # measured: within 0.02 model pixels
    np.testing.assert_allclose(centroid, box.to_model(x0, y0), atol=0.05)
    np.testing.assert_allclose(box.to_photo(*centroid), (x0, y0), atol=0.05 * box.width / size)


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_map_to_photo_on_square_photo_is_torch_bilinear(scale):
    """A square photo of side k*S is the crop; the map is interpolate(align_corners=False)."""
    size, grid = 28, np.random.default_rng(scale).random((3, 7, 7)).astype(np.float32)
    box = preprocess_image(np.zeros((size * scale, size * scale, 3), np.uint8), size)[1]
    photo = map_to_photo(grid, box)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(grid)[None], size=(size * scale,) * 2, mode="bilinear", align_corners=False
    )[0].numpy()
    assert photo.shape == (3, size * scale, size * scale) and photo.dtype == np.float32
    np.testing.assert_allclose(photo, expected, atol=1e-5)


def test_map_to_photo_nan_outside_crop_by_hand():
    box = preprocess_image(np.zeros((480, 640, 3), np.uint8), 224)[1]  # box x in [79.46, 560.54)
    photo = map_to_photo(np.ones((14, 14)), box)
    assert photo.shape == (1, 480, 640)
    nan_columns = np.isnan(photo[0]).all(axis=0)
    assert np.flatnonzero(nan_columns).tolist() == list(range(79)) + list(range(561, 640))
    np.testing.assert_array_equal(photo[0][:, 79:561], 1.0)


@pytest.mark.parametrize("w, h", [(640, 480), (300, 700), (256, 256)])
def test_one_hot_patch_peaks_on_its_photo_pixels(w, h):
    size, cells = 224, 14
    box = preprocess_image(np.zeros((h, w, 3), np.uint8), size)[1]
    for i, j in [(0, 0), (3, 11), (13, 13), (7, 6)]:
        grid = np.zeros((cells, cells))
        grid[i, j] = 1.0
        photo = map_to_photo(torch.from_numpy(grid), box)[0]
        cx, cy = box.to_photo((j + 0.5) * size / cells, (i + 0.5) * size / cells)  # cell centre
        nearest = int(cy), int(cx)  # the photo pixel containing it
        assert photo[nearest] > 0.95 and np.nanmax(photo) <= 1.0  # (a plateau towards edges)
        # nothing further than one patch from the centre along either axis
        patch_w, patch_h = box.width / cells, box.height / cells
        ys, xs = np.mgrid[0:h, 0:w] + 0.5
        far = (np.abs(xs - cx) >= patch_w + 0.5) | (np.abs(ys - cy) >= patch_h + 0.5)
        assert np.nansum(np.abs(photo[far])) == 0


def test_map_to_photo_reproduces_a_linear_grid():
    """Bilinear interpolation is exact on linear data, so inside the patch centres the photo map
    is the linear function at each photo pixel's grid coordinate."""
    size, cells = 224, 7
    box = preprocess_image(np.zeros((517, 333, 3), np.uint8), size)[1]
    i, j = np.mgrid[0:cells, 0:cells]
    photo = map_to_photo(2.0 * i + 3.0 * j + 1.0, box)[0]
    ys, xs = np.mgrid[0 : box.photo_height, 0 : box.photo_width] + 0.5
    gy = (ys - box.top) / box.height * cells - 0.5
    gx = (xs - box.left) / box.width * cells - 0.5
    inner = (gy >= 0) & (gy <= cells - 1) & (gx >= 0) & (gx <= cells - 1)
    assert inner.sum() > 0.3 * inner.size
    np.testing.assert_allclose(photo[inner], (2 * gy + 3 * gx + 1)[inner], atol=1e-4)


def test_map_to_photo_rejects_bad_grids():
    box = preprocess_image(np.zeros((8, 8, 3), np.uint8), 8)[1]
    for bad in [np.zeros(5), np.zeros((2, 3, 4, 4)), np.zeros((0, 4, 4))]:
        with pytest.raises(ClipvizError, match=r"\[g, g\] or \[P, g, g\]"):
            map_to_photo(bad, box)


# ---------------------------------------------------------------- files, EXIF, frames


# EXIF orientation tag -> how the stored pixels a[row, col] look upright (EXIF 2.3, Orientation)
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # row 0 = visual left, column 0 = visual top
    6: lambda a: np.rot90(a, -1),  # row 0 = visual right, column 0 = visual top
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # row 0 = visual right, column 0 = visual bottom
    8: lambda a: np.rot90(a, 1),  # row 0 = visual left, column 0 = visual bottom
}


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_gives_upright_image(orientation):
    stored = noise(np.random.default_rng(orientation), (3, 5, 3))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "PNG", exif=exif)
    buf.seek(0)
    np.testing.assert_array_equal(load_image(buf), UPRIGHT[orientation](stored))


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_file_gives_first_frame(tmp_path, fmt):
    colours = [(200, 30, 40), (10, 220, 90), (60, 70, 250)]
    frames = [Image.new("RGB", (16, 12), c) for c in colours]
    path = tmp_path / f"anim.{fmt.lower()}"
    extra = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, **extra)
    with Image.open(path) as img:
        assert img.n_frames == 3
    np.testing.assert_array_equal(load_image(path), np.broadcast_to(colours[0], (12, 16, 3)))


def test_one_pixel_image_file(tmp_path):
    path = save(tmp_path, Image.new("RGB", (1, 1), (1, 2, 3)), "one.png")
    tensor, box = preprocess_image(str(path), 8)
    expected = (np.array([1, 2, 3]) / 255.0 - CLIP_MEAN) / CLIP_STD
    np.testing.assert_allclose(tensor.numpy(), np.broadcast_to(expected[:, None, None], (3, 8, 8)), atol=1e-6)
    assert box == CropBox(0.0, 0.0, 1.0, 1.0, 8, 1, 1)


# ---------------------------------------------------------------- errors a user can cause


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width, height):
    """A ~100-byte RGB PNG whose header claims width x height pixels."""
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def load_error(source):
    with pytest.raises(ClipvizError) as info:
        load_image(source)
    return str(info.value)


def test_missing_file_names_it(tmp_path):
    message = load_error(tmp_path / "nope.jpg")
    assert "No image file" in message and "nope.jpg" in message


def test_directory(tmp_path):
    assert "is a directory" in load_error(str(tmp_path))


def test_random_bytes_are_not_an_image(tmp_path):
    path = tmp_path / "random.jpg"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    message = load_error(path)
    assert "Cannot read" in message and "random.jpg" in message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(noise(np.random.default_rng(1), (200, 200, 3))).save(buf, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    message = load_error(path)
    assert "corrupt, truncated" in message and "cut." in message


def test_decompression_bomb_header_is_refused_fast(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(60000, 60000))
    assert path.stat().st_size < 200
    start = time.perf_counter()
    message = load_error(path)  # PIL's own guard fires inside Image.open
    assert time.perf_counter() - start < 1.0
    assert "3,600,000,000 pixels" in message and "67,108,864" in message and "MAX_PIXELS" in message


def test_our_size_check_runs_before_decoding(tmp_path, monkeypatch):
    """With PIL's guard off, our check still refuses the header alone, before any allocation."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(60000, 60000))
    start = time.perf_counter()
    message = load_error(path)
    assert time.perf_counter() - start < 1.0
    assert "60000×60000" in message and "decompression bombs" in message


def test_max_pixels_is_overridable_and_silences_pils_warning(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(bomb_png(10000, 10000))  # above PIL's warning threshold, below its error
    monkeypatch.setattr(pp, "MAX_PIXELS", 50_000_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = load_error(path)
    assert "10000×10000" in message and "50,000,000" in message
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    monkeypatch.setattr(pp, "MAX_PIXELS", 99)
    assert "10×10" in load_error(Image.new("RGB", (10, 10)))
    monkeypatch.setattr(pp, "MAX_PIXELS", 100)
    assert load_image(Image.new("RGB", (10, 10))).shape == (10, 10, 3)


@pytest.mark.parametrize(
    "source, expected",
    [
        (Image.new("RGB", (0, 5)), "empty"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros(7, np.uint8), "must be"),
        (np.zeros((4, 4, 2), np.uint8), "must be"),
        (np.zeros((3, 40, 50), np.uint8), "channels-first"),
        (np.zeros((2, 3, 4, 3), np.uint8), "must be"),
        (np.zeros((4, 4, 3), np.int64), "dtype int64"),
        (np.full((4, 4), 1.5), "outside"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.full((4, 4), -0.1, np.float32), "outside"),
        (12345, "Cannot load an image from an int"),
        (Image.new("F", (3, 3), 255.0), "outside"),
    ],
)
def test_bad_inputs(source, expected):
    assert expected in load_error(source)


def test_too_elongated_and_bad_sizes():
    with pytest.raises(ClipvizError, match="elongated"):
        preprocess_image(np.zeros((1, 100_000, 3), np.uint8), 224)
    for size in [0, -3, 2.5, "224", True]:
        with pytest.raises(ClipvizError, match="positive integer"):
            Preprocess(size)
