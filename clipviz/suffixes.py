"""File suffixes clipviz reads and writes: the one list each, for every command and module.

Plain tuples, lowercase with the dot, so ``name.lower().endswith(IMAGE_SUFFIXES)`` works; this
module imports nothing, so the CLI can tell images from prompts before torch loads.
"""

# what PIL opens as photos (the formats clipviz.preprocess allows)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                  ".pbm", ".pnm", ".jfif", ".jpe", ".ico", ".tga")
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")  # matplotlib figures
OVERLAY_SUFFIXES = (".png", ".jpg", ".jpeg")  # overlays written by PIL alone
HTML_SUFFIXES = (".html", ".htm")  # clipviz.report's page
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")  # what clipviz.video reads (OpenCV)


def looks_like_image(name):
    """True if ``name`` ends in one of IMAGE_SUFFIXES (any case)."""
    return str(name).lower().endswith(IMAGE_SUFFIXES)


def is_video(name):
    """True if ``name`` ends in one of VIDEO_SUFFIXES (any case)."""
    return str(name).lower().endswith(VIDEO_SUFFIXES)
