"""Fast output encoding: the looked-up overlay blend equals the per-pixel float64 blend bit for bit,
and PNGs are written at a fast zlib level with the same pixels."""

import numpy as np
from PIL import Image

from clipviz import render


def per_pixel_blend(photo, heat, cmap, alpha):
    """The overlay formula computed directly, pixel by pixel in float64 (NaN = the photo)."""
    table = 255.0 * render.colormap_table(cmap)
    out = photo.copy()
    seen = ~np.isnan(heat)
    levels = np.minimum(np.floor(np.clip(heat[seen], 0, 1) * 256.0), 255).astype(int)
    opacity = alpha * levels[:, None] / 255.0  # alpha · k / 255: the photo at level 0
    out[seen] = np.clip(np.floor((1.0 - opacity) * photo[seen] + opacity * table[levels] + 0.5), 0, 255).astype(np.uint8)
    return out


def test_lookup_blend_is_bit_identical_to_the_per_pixel_blend():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (67, 91, 3), dtype=np.uint8)
    heat = rng.random((67, 91)) * 1.2 - 0.1
    heat[rng.random((67, 91)) < 0.1] = np.nan
    heat[0, :4] = [0.0, 1.0, 0.5, 255 / 256]  # edges of the colour levels
    for cmap in ("jet", "viridis", "turbo"):
        for alpha in (0.0, 0.3, 0.5, 0.77, 1.0):
            assert (render.overlay(photo, heat, cmap=cmap, alpha=alpha) == per_pixel_blend(photo, heat, cmap, alpha)).all()


def test_lookup_blend_holds_for_float32_maps_infinities_and_several_blocks():
    """Maps are float32; ±inf clip like any out-of-range value; a photo wider than one block
    (render.colours.BLEND_PIXELS) is blended a row at a time."""
    rng = np.random.default_rng(2)
    photo = rng.integers(0, 256, (5, 1 << 19, 3), dtype=np.uint8)  # 5 blocks of one row
    heat = (rng.random(photo.shape[:2]) * 1.2 - 0.1).astype(np.float32)
    heat[rng.random(heat.shape) < 0.1] = np.nan
    heat[0, :6] = [np.inf, -np.inf, 255 / 256, np.nextafter(np.float32(255 / 256), 0), 1.0, 0.0]
    expected = per_pixel_blend(photo, np.nan_to_num(heat.astype(np.float64), nan=np.nan, posinf=2.0, neginf=-1.0),
                               "jet", 0.6)
    assert (render.overlay(photo, heat, alpha=0.6) == expected).all()


def test_lookup_blend_holds_block_by_block_for_every_map_dtype_and_photo_mode():
    """Rows split into several blocks with a partial last one; float16/32/64 maps (256 · v is
    exact in each) and grey or RGBA photos give the per-pixel blend of their RGB."""
    from clipviz.render.colours import BLEND_PIXELS
    rng = np.random.default_rng(3)
    height, width = 2 * BLEND_PIXELS // 301 + 7, 301  # two full blocks and 7 rows more
    rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    heat = rng.random((height, width)) * 1.2 - 0.1
    heat[rng.random(heat.shape) < 0.05] = np.nan
    heat[-1, :3] = [1 / 256, np.nextafter(1 / 256, 0), 0.5]  # level edges in the last, partial block
    for dtype in (np.float16, np.float32, np.float64):
        expected = per_pixel_blend(rgba[..., :3], heat.astype(dtype).astype(np.float64), "viridis", 0.8)
        assert (render.overlay(rgba, heat.astype(dtype), cmap="viridis", alpha=0.8) == expected).all()
    grey = rgba[..., 0]
    assert (render.overlay(grey, heat, alpha=0.4) == per_pixel_blend(np.repeat(grey[..., None], 3, 2), heat, "jet", 0.4)).all()


def test_png_is_written_fast_with_the_same_pixels(tmp_path):
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    heat = rng.random((40, 50))
    path = render.save_overlay(tmp_path / "o.png", photo, heat)
    with Image.open(path) as written:
        assert (np.asarray(written) == render.overlay(photo, heat)).all()
    data = path.read_bytes()
    flags = data[data.index(b"IDAT") + 5]  # the zlib stream's FLG byte (after CMF)
    assert flags >> 6 == 0  # FLEVEL 0: "compressor used fastest algorithm" (RFC 1950), not level 6's 2


def test_overlay_png_of_a_photo_is_smaller_than_the_fast_level_alone(tmp_path):
    """Overlays and maps use zlib's run-length strategy at level 1: same pixels, and on a real
    photo a smaller file than level 1's default strategy (which PIL would use)."""
    import io

    from conftest import SHARED
    with Image.open(SHARED / "images" / "sam_truck.jpg") as opened:
        photo = np.asarray(opened.convert("RGB"))
    rows, cols = np.mgrid[0:photo.shape[0], 0:photo.shape[1]]
    heat = (0.5 + 0.5 * np.sin(cols / 37.0) * np.cos(rows / 53.0)).astype(np.float32)
    path = render.save_overlay(tmp_path / "o.png", photo, heat)
    blended = render.overlay(photo, heat)
    with Image.open(path) as written:
        assert (np.asarray(written) == blended).all()
    default = io.BytesIO()
    Image.fromarray(blended).save(default, format="PNG", compress_level=1)
    assert path.stat().st_size < 0.97 * default.tell()


def test_figure_png_uses_the_fast_level(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(1, 1))
    data = render.save_figure(fig, tmp_path / "f.png").read_bytes()
    plt.close(fig)
    assert data[data.index(b"IDAT") + 5] >> 6 == 0
