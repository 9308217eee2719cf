"""Hostile images: every file either loads (and is explained) or raises ClipvizError with a clear
message, through clipviz.load_image, preprocess_image, explain and the CLI; never another
exception type, never unbounded memory, never an external program.

Expected pixels come from the arrays the files were made from (by hand for 16-bit, palette and
CMYK); the crop-only resize of long thin images is checked against PIL resizing the whole image.
"""

import io
import json
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import EpsImagePlugin, Image

import clipviz
from clipviz import preprocess as pp
from clipviz.errors import ClipvizError
from clipviz.preprocess import MEAN, STD, load_image, preprocess_image
from hostile import tally

CASES, _report = tally("images")
SIZE = 64  # tiny_vit's input resolution
RNG = np.random.default_rng(8)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------- building files

def encode(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(shape):
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width, height, bit_depth, colour_type, rows):
    """A PNG from raw scanline bytes (filter 0 per row): lets a test write what PIL cannot."""
    data = b"".join(b"\0" + row for row in rows)
    return (b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(data)) + png_chunk(b"IEND", b""))


# Decompression bombs: ~100-byte files whose headers claim 60,000 x 60,000 pixels.
def bomb(fmt, side=60000):
    if fmt == "png":
        return raw_png(side, side, 8, 2, [b"\0" * 16])
    if fmt == "psd":
        return b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, side, side, 8, 3) + b"\0" * 78
    if fmt == "tiff":
        tags = [(256, 4, side), (257, 4, side), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8),
                (277, 3, 1), (278, 4, side), (279, 4, side * side)]
        entries = b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in tags)
        return b"II*\0" + struct.pack("<I", 72) + b"\0" * 64 + struct.pack("<H", len(tags)) + entries + b"\0" * 4
    small = bytearray(encode(Image.new("RGB" if fmt != "gif" else "P", (8, 8)), fmt.upper()))
    if fmt == "jpeg":  # start-of-frame: marker, length, precision, height, width
        at = small.index(b"\xff\xc0") + 5
        small[at:at + 4] = struct.pack(">HH", side, side)
    elif fmt == "gif":  # logical screen and image descriptor
        small[6:10] = struct.pack("<HH", side, side)
        at = small.index(b"\x2c")
        small[at + 5:at + 9] = struct.pack("<HH", side, side)
    elif fmt == "bmp":
        small[18:26] = struct.pack("<ii", side, side)
    return bytes(small)


BOMB_FORMATS = ["png", "jpeg", "gif", "bmp", "tiff", "psd"]

EXIF_UPRIGHT = {  # EXIF orientation -> how the stored pixels a[row, col] look upright
    1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, 1),
}


def quadrants():
    """32 x 16 RGB of four flat 8-aligned blocks: JPEG (no chroma subsampling) keeps it within a few levels."""
    image = np.zeros((16, 32, 3), np.uint8)
    image[:8, :16], image[:8, 16:], image[8:, :16], image[8:, 16:] = (220, 30, 30), (30, 220, 30), (30, 30, 220), (230, 230, 40)
    return image


def exif_jpeg(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(quadrants()), "JPEG", quality=95, subsampling=0, exif=exif)


def odd_but_valid():
    """name -> (file bytes, suffix, expected upright RGB uint8 [H, W, 3], tolerance in levels)."""
    cases = {}
    cases["1x1"] = (encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), "png", np.array([[[1, 2, 3]]], np.uint8), 0)
    for name, shape in [("4000x20", (20, 4000, 3)), ("20x4000", (4000, 20, 3)), ("3500x1", (1, 3500, 3))]:
        pixels = noise(shape)
        cases[name] = (encode(Image.fromarray(pixels), "PNG"), "png", pixels, 0)
    grey16 = RNG.integers(0, 65536, (9, 7), dtype=np.uint16)
    cases["16-bit grey"] = (encode(Image.fromarray(grey16), "PNG"), "png",
                            np.repeat(((grey16.astype(np.int64) + 128) // 257).astype(np.uint8)[..., None], 3, 2), 0)
    rgb16 = RNG.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    cases["16-bit RGB"] = (raw_png(6, 5, 16, 2, [row.astype(">u2").tobytes() for row in rgb16]), "png",
                           (rgb16 >> 8).astype(np.uint8), 1)  # high byte (PIL) or /257: within 1
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [250, 250, 250]], np.uint8)
    indices = RNG.integers(0, 4, (10, 12), dtype=np.uint8)
    paletted = Image.fromarray(indices, "P")
    paletted.putpalette(palette.tobytes())
    cases["palette+transparency PNG"] = (encode(paletted, "PNG", transparency=3), "png", palette[indices], 0)
    cases["palette+transparency GIF"] = (encode(paletted, "GIF", transparency=3), "gif", palette[indices], 0)
    rgba = noise((6, 9, 4))
    rgba[..., 3] = np.where(RNG.random((6, 9)) < 0.5, 0, 255)
    cases["RGBA, transparent pixels"] = (encode(Image.fromarray(rgba), "PNG"), "png", rgba[..., :3], 0)
    cmyk = noise((8, 8, 4))
    cmyk_rgb = np.round((255 - cmyk[..., :3].astype(float)) * (255 - cmyk[..., 3:].astype(float)) / 255)
    cases["CMYK TIFF"] = (encode(Image.fromarray(cmyk, "CMYK"), "TIFF"), "tif", cmyk_rgb.astype(np.uint8), 1)
    flat_cmyk = np.broadcast_to(np.array([200, 10, 90, 50], np.uint8), (16, 16, 4)).copy()
    flat_rgb = np.round((255 - flat_cmyk[..., :3].astype(float)) * (255 - 50) / 255).astype(np.uint8)
    cases["CMYK JPEG"] = (encode(Image.fromarray(flat_cmyk, "CMYK"), "JPEG", quality=95), "jpg", flat_rgb, 6)
    frames = [Image.new("RGB", (16, 12), colour) for colour in [(200, 30, 40), (10, 220, 90), (60, 70, 250)]]
    cases["animated GIF"] = (encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0),
                             "gif", np.broadcast_to(np.array([200, 30, 40], np.uint8), (12, 16, 3)), 0)
    for orientation, upright in EXIF_UPRIGHT.items():
        cases[f"EXIF orientation {orientation}"] = (exif_jpeg(orientation), "jpg", upright(quadrants()), 8)
    grey = np.repeat(noise((7, 5))[..., None], 3, 2)
    cases["mode 1"] = (encode(Image.fromarray(grey[..., 0] > 127), "PNG"), "png",
                       np.where(grey > 127, 255, 0).astype(np.uint8), 0)
    unit = RNG.random((6, 4)).astype(np.float32)
    cases["float TIFF in [0, 1]"] = (encode(Image.fromarray(unit, "F"), "TIFF"), "tif",
                                     np.repeat(np.round(unit.astype(np.float64) * 255).astype(np.uint8)[..., None], 3, 2), 0)
    return cases


def must_fail():
    """name -> (file bytes, suffix, words the ClipvizError message must hold, first stage that fails)."""
    half_png = encode(Image.fromarray(noise((60, 60, 3))), "PNG")
    half_jpeg = encode(Image.fromarray(noise((60, 60, 3))), "JPEG")
    cases = {
        "empty file": (b"", "png", ["Cannot read"], "load"),
        "random bytes": (RNG.bytes(5000), "jpg", ["Cannot read"], "load"),
        "text with an image suffix": (b"<html>not an image</html>\n", "png", ["Cannot read"], "load"),
        "PNG signature only": (b"\x89PNG\r\n\x1a\n", "png", ["Cannot read"], "load"),
        "PNG truncated IHDR (PIL: ValueError)": (
            b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", b"\0\0\0\x05\0") + b"\0" * 20, "png", ["Cannot read", "IHDR"], "load"),
        "PNG zTXt bomb (PIL: ValueError)": (
            half_png[:33] + png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"\0" * (8 << 20), 9)) + half_png[33:],
            "png", ["Cannot read", "too large"], "load"),
        "PPM bad header (PIL: ValueError)": (b"P6\n3\xb3 2\n255\n" + b"\0" * 18, "ppm", ["Cannot read", "ValueError"], "load"),
        "XBM bad header (PIL: ValueError)": (b"#define im_width 3x\n#define im_height 2\nstatic char im_bits[] = {0,0};\n",
                                             "xbm", ["Cannot read", "ValueError"], "load"),
        "SGI bad mode (PIL: ValueError)": (b"\x01\xda\x00\x01\x00\x03\x00\x04\x00\x04\x00\x09" + b"\0" * 500, "sgi",
                                           ["Cannot read", "SGI"], "load"),
        "PNG cut in half": (half_png[:len(half_png) // 2], "png", ["corrupt, truncated"], "load"),
        "JPEG cut in half": (half_jpeg[:len(half_jpeg) // 2], "jpg", ["corrupt, truncated"], "load"),
        "EPS (would run Ghostscript)": (eps_file(), "eps", ["Cannot read"], "load"),
        "float TIFF outside [0, 1]": (encode(Image.fromarray(np.full((4, 4), 7.5, np.float32), "F"), "TIFF"), "tif",
                                      ["outside [0, 1]"], "load"),
        "1x100000 (too elongated)": (encode(Image.fromarray(noise((100000, 1, 3))), "PNG"), "png", ["elongated"], "preprocess"),
    }
    for fmt in BOMB_FORMATS:
        # clipviz's limit, whether its own header check or Pillow's (above 178,956,970 pixels) came first
        cases[f"{fmt} bomb 60000x60000"] = (bomb(fmt), fmt, ["pixels", "limit of 67,108,864"], "load")
    return cases


def eps_file():
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


VALID = odd_but_valid()
FAILING = must_fail()


# ----------------------------------------------------------------------------- library entry points

def reference_tensor(rgb, size):
    """CLIP's transform with PIL resizing the WHOLE image (the library may compute only the crop)."""
    h, w = rgb.shape[:2]
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BICUBIC))
    crop = resized[top:top + size, left:left + size] / 255.0
    return torch.tensor(((crop - MEAN) / STD).transpose(2, 0, 1), dtype=torch.float32)


@pytest.mark.parametrize("name", sorted(VALID))
def test_odd_but_valid_images_load_preprocess_and_explain(name, tmp_path, tiny_vit):
    data, suffix, expected, tolerance = VALID[name]
    path = tmp_path / f"odd.{suffix}"
    path.write_bytes(data)
    with CASES.case():
        rgb = load_image(path)
        assert rgb.dtype == np.uint8 and rgb.shape == expected.shape
        assert np.abs(rgb.astype(int) - expected).max() <= tolerance
        assert np.array_equal(load_image(io.BytesIO(data)), rgb)  # file object == path

        tensor, box = preprocess_image(path, SIZE)
        assert (box.photo_width, box.photo_height) == (expected.shape[1], expected.shape[0])
        assert torch.allclose(tensor, reference_tensor(rgb, SIZE), atol=1e-6)

        explanation = clipviz.explain(tiny_vit, str(path), "a dog")
        assert np.array_equal(explanation.photo, rgb)
        assert explanation.maps.shape == (1, *expected.shape[:2])
        seen = ~np.isnan(explanation.maps)
        assert seen.any() and (explanation.maps[seen] >= 0).all() and (explanation.maps[seen] <= 1).all()
        assert np.isfinite(explanation.scores).all()


@pytest.mark.parametrize("name", sorted(FAILING))
def test_broken_images_raise_a_clear_clipviz_error_everywhere(name, tmp_path, tiny_vit):
    data, suffix, words, stage = FAILING[name]
    path = tmp_path / f"broken.{suffix}"
    path.write_bytes(data)
    with CASES.case():
        attempts = [lambda: preprocess_image(path, SIZE), lambda: clipviz.explain(tiny_vit, str(path), "a dog")]
        if stage == "load":
            attempts.insert(0, lambda: load_image(path))
        else:
            assert load_image(path).ndim == 3
        for attempt in attempts:
            with pytest.raises(ClipvizError) as error:
                attempt()
            message = str(error.value)
            assert all(word in message for word in words), message
            assert "\n" not in message and len(message) < 600
            if stage == "load":
                assert "broken." in message  # names the file


def test_eps_is_never_handed_to_ghostscript(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: calls.append(args) or Image.new("RGB", (8, 8)).im)
    path = tmp_path / "drawing.eps"
    path.write_bytes(eps_file())
    with CASES.case():
        with pytest.raises(ClipvizError, match="Cannot read"):
            load_image(path)
        assert calls == []
        with Image.open(path) as image:  # not vacuous: PIL alone would run Ghostscript on it
            image.load()
        assert len(calls) == 1


# ----------------------------------------------------------------------------- fuzzing

MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\0", b"MM\0*", b"RIFF\0\0\0\0WEBPVP8 ",
          b"8BPS", b"P6\n", b"\0\0\1\0", b"\x01\xda", b"qoif"]


def either_works_or_clipviz_error(data):
    """The property: load_image and preprocess_image give an image or a ClipvizError, nothing else."""
    try:
        rgb = load_image(io.BytesIO(data))
    except ClipvizError as error:
        assert str(error) and "\n" not in str(error)
        return None
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.size > 0
    try:
        tensor, _ = preprocess_image(rgb, SIZE)
    except ClipvizError as error:
        assert "elongated" in str(error)
        return rgb
    assert tensor.shape == (3, SIZE, SIZE) and torch.isfinite(tensor).all()
    return rgb


@FAST
@given(data=st.binary(max_size=4096))
def test_random_bytes(data):
    with CASES.case():
        either_works_or_clipviz_error(data)


@FAST
@given(magic=st.sampled_from(MAGICS), tail=st.binary(max_size=2048))
def test_random_bytes_behind_a_real_signature(magic, tail):
    with CASES.case():
        either_works_or_clipviz_error(magic + tail)


SEEDS = {fmt: encode(Image.fromarray(noise((23, 31, 3))).convert(mode), fmt, **options)
         for fmt, mode, options in [("PNG", "RGB", {}), ("JPEG", "RGB", {}), ("GIF", "P", {}), ("BMP", "RGB", {}),
                                    ("TIFF", "RGB", {"compression": "tiff_lzw"}), ("WEBP", "RGB", {}),
                                    ("PPM", "RGB", {}), ("TGA", "RGB", {}), ("ICO", "RGBA", {}), ("SGI", "RGB", {})]}


@settings(max_examples=120, deadline=None)
@given(fmt=st.sampled_from(sorted(SEEDS)),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=8),
       header_only=st.booleans())
def test_valid_files_with_flipped_bytes(fmt, flips, header_only):
    data = bytearray(SEEDS[fmt])
    span = min(len(data), 64) if header_only else len(data)  # headers are where parsers trip
    for where, xor in flips:
        data[int(where * span)] ^= xor
    with CASES.case():
        either_works_or_clipviz_error(bytes(data))


def cut_points(length, count=70):
    """Every byte of the first 40, then evenly spaced cuts to the last byte."""
    return sorted(set(range(1, min(40, length))) | set(np.linspace(40, length - 1, count, dtype=int).tolist()))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"])
def test_truncated_files_at_many_cut_points(fmt):
    original = noise((40, 52, 3))
    data = encode(Image.fromarray(original).convert("P" if fmt == "GIF" else "RGB"), fmt)
    full = load_image(io.BytesIO(data))
    outcomes = {"error": 0, "decoded": 0}
    for cut in cut_points(len(data)):
        with CASES.case():
            rgb = either_works_or_clipviz_error(data[:cut])
            outcomes["error" if rgb is None else "decoded"] += 1
            if rgb is not None:  # only a tail PIL does not need (trailer, padding) may go missing
                assert np.array_equal(rgb, full), f"{fmt} cut at {cut} of {len(data)} decoded to other pixels"
    assert outcomes["error"] >= len(cut_points(len(data))) - 20, outcomes


# ----------------------------------------------------------------------------- crop-only resize

@settings(max_examples=40, deadline=None)
@given(short=st.integers(1, 47), ratio=st.floats(1.0, 60.0), size=st.sampled_from([17, 32, 48, 64]),
       wide=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_crop_only_resize_equals_pil_resizing_the_whole_image(short, ratio, size, wide, seed):
    """Long thin images upsampled on their short side: preprocess computes only the crop, and
    must give PIL's pixels bit for bit (here forced onto that path for every size)."""
    long = max(short, int(short * ratio))
    width, height = (long, short) if wide else (short, long)
    if short >= size:
        return
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    with CASES.case():
        whole, _ = preprocess_image(rgb, size)  # small enough for PIL to resize all of it
        saved, pp._WHOLE_RESIZE_PIXELS = pp._WHOLE_RESIZE_PIXELS, 0
        try:
            crop_only, _ = preprocess_image(rgb, size)
        finally:
            pp._WHOLE_RESIZE_PIXELS = saved
        assert torch.equal(crop_only, whole)


MEMORY_PROBE = textwrap.dedent("""
    import json, re, sys, time
    import torch  # imported before measuring, as in any real use
    from clipviz.errors import ClipvizError
    from clipviz.preprocess import preprocess_image
    from PIL import Image
    if sys.argv[1] == "off":
        Image.MAX_IMAGE_PIXELS = None  # PIL's own guard off: ours must still hold

    def status(field):  # MB, from /proc/self/status
        return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024

    results = {}
    for path in sys.argv[2:]:
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
        before, start = status("VmRSS"), time.perf_counter()
        try:
            preprocess_image(path, 224)
            outcome = "ok"
        except ClipvizError as error:
            outcome = str(error)
        results[path] = [outcome, status("VmHWM") - before, time.perf_counter() - start]
    print(json.dumps(results))
""")


@pytest.mark.parametrize("pil_guard", ["on", "off"])
def test_bombs_are_refused_from_the_header_with_bounded_memory(tmp_path, pil_guard):
    """Peak RSS growth of a fresh process while reading each bomb (and each small file that
    resizes to a huge image) stays under 50 MB; each refusal is immediate and names the claimed
    size. (Linux: the peak is reset per file through /proc/self/clear_refs.)"""
    paths = []
    for fmt in BOMB_FORMATS:
        paths.append(tmp_path / f"bomb.{fmt}")
        paths[-1].write_bytes(bomb(fmt))
    for name in ["3500x1", "4000x20", "20x4000"]:  # a 96-byte 3500x1 PNG once cost 1.7 GB
        paths.append(tmp_path / f"{name}.png")
        paths[-1].write_bytes(VALID[name][0])
    run = subprocess.run([sys.executable, "-c", MEMORY_PROBE, pil_guard, *map(str, paths)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)
    for path in paths:
        with CASES.case():
            outcome, grown_mb, seconds = results[str(path)]
            assert grown_mb < 50, (path.name, grown_mb)
            assert seconds < 5, (path.name, seconds)
            if path.name.startswith("bomb"):
                assert "pixels" in outcome and "67,108,864" in outcome and len(outcome) < 400, outcome
                assert "178956970" not in outcome and "178,956,970" not in outcome, outcome  # not Pillow's limit
            else:
                assert outcome == "ok", outcome


# ----------------------------------------------------------------------------- command line

CLI_VALID = ["1x1", "4000x20", "16-bit grey", "palette+transparency PNG", "CMYK JPEG", "animated GIF",
             "EXIF orientation 6", "RGBA, transparent pixels"]
CLI_FAILING = ["random bytes", "JPEG cut in half", "png bomb 60000x60000", "1x100000 (too elongated)"]


@pytest.fixture(scope="module")
def cli(tmp_path_factory, tiny_vit):
    """Runs ``python -m clipviz explain ... --model <tiny checkpoint>`` in a fresh process."""
    folder = tmp_path_factory.mktemp("cli")
    checkpoint = folder / "tiny.pt"
    torch.save(tiny_vit.state_dict(), checkpoint)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "clipviz", "explain", *map(str, args), "--model", str(checkpoint),
                               "--activation", "quick_gelu"],  # a plain state dict: say it, no warning line
                              capture_output=True, text=True, timeout=180, cwd=folder)

    return folder, run


def test_cli_explains_every_odd_but_valid_image(cli):
    folder, run = cli
    paths = []
    for index, name in enumerate(CLI_VALID):
        data, suffix, _, _ = VALID[name]
        paths.append(folder / f"valid{index}.{suffix}")
        paths[-1].write_bytes(data)
    result = run(*paths, "a dog", "--out", folder / "out")
    assert result.returncode == 0, result.stderr
    written = sorted(p.name.split("--")[0] for p in (folder / "out").iterdir())
    assert written == sorted(p.stem for p in paths)
    for path in paths:  # one overlay per image, at the photo's (upright) resolution
        with CASES.case(), Image.open(next((folder / "out").glob(f"{path.stem}--*.png"))) as overlay:
            assert overlay.size == load_image(path).shape[1::-1]


@pytest.mark.parametrize("name", CLI_FAILING)
def test_cli_exits_2_with_one_line_for_a_broken_image(cli, name):
    folder, run = cli
    data, suffix, words, _ = FAILING[name]
    path = folder / f"broken-{CLI_FAILING.index(name)}.{suffix}"
    path.write_bytes(data)
    result = run(path, "a dog", "--out", folder / f"out-{path.stem}")
    with CASES.case():
        assert result.returncode == 2, (result.returncode, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("clipviz: error: "), result.stderr
        assert all(word in lines[0] for word in words), lines[0]
        assert "Traceback" not in result.stderr and result.stdout == ""
