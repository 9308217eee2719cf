"""Output names, planned and checked before any work (the naming rule is in ``clipviz explain
--help``): file names from prompts and image stems, unique, never an input, never an existing
file without --force. Writing itself is clipviz.outputs' job.

Two inputs that would give one output name never end a run half-way nor replace each other:
the same work given twice (one prompt typed twice, one image named twice) is done once, with a
warning; different inputs whose names still coincide get distinct names (outputs.distinct_names).
"""

import os
import warnings
from pathlib import Path

from ..errors import ClipvizError
from ..outputs import (Protected, check_folder, check_unique, distinct_names, refuse_existing,
                       remove_stale_temporaries, slug)
from ..suffixes import looks_like_image
from .parser import DEFAULT_OUT, FIGURE_FORMATS


def image_labels(images):
    """A short file-name part per image: its stem, made safe; stems that collide get a hash."""
    stems = [slug(Path(p).stem).rsplit("-", 1)[0] for p in images]
    counts = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    labels = [stem if counts[stem] == 1 else f"{stem}-{slug(os.path.abspath(p))[-6:]}" for stem, p in zip(stems, images)]
    return distinct_names(labels)


def once_each(images, prompts, clip_tokens=False):
    """(images, prompts) with the same work given twice dropped, order kept, each drop warned
    about: an image named twice (any spelling of one file: ``a.png``, ``./a.png``, a link to it)
    and a prompt typed twice would otherwise be explained twice into one output name.

    clip_tokens: the model tokenizes with CLIP's BPE, which lower-cases and squashes whitespace
    first (clipviz.tokenizer.clean_text), so "a dog" and "A  Dog" are one query too. Other
    tokenizers (SigLIP's) may tell case apart: there only equal strings are one prompt."""
    from ..tokenizer import clean_text

    same_query = clean_text if clip_tokens else (lambda p: p)
    return _first_of_each(images, _file_key, "image"), \
        _first_of_each(prompts, same_query, "prompt", "one query to CLIP's tokenizer, which lower-cases and "
                                                      "squashes spaces")


def _first_of_each(items, key, what, alike=None):
    """``items`` with repeats by ``key`` dropped, each warned about; alike: why two different
    strings with one key are one query, in words (None: a different spelling of one file)."""
    kept, seen = [], {}
    for item in items:
        k = key(item)
        if k in seen:
            first = seen[k]
            warnings.warn(f"{what} {item!r} is given twice (also as {first!r}); it is explained once"
                          if item == first or alike is None else
                          f"{what} {item!r} and {first!r} are {alike}; it is explained once")
            continue
        seen[k] = item
        kept.append(item)
    return kept


def _file_key(path):
    try:
        info = os.stat(path)
        return info.st_dev, info.st_ino
    except OSError:
        return os.path.realpath(path)


class OutputPlan:
    """Where each image's files go (the naming rule in EXPLAIN_HELP), checked before any work by
    ``check``: the folder must accept a new file, no input is ever a target, and an existing file
    is a target only with ``force``.

    ``files(i)`` → [(kind, prompt index or None, path)] with kind "overlay" | "figure" | "layers" |
    "heads" | "map" (8-bit PNG per prompt, maps="png") | "maps" (one .npz per image, maps="npz").
    Folder mode: any number of images. File mode (``out`` ends in .png/.pdf/.svg): one image, its
    figure at ``out``, strips and grids beside it. overlays=False: no overlay PNGs.
    """

    def __init__(self, out, images, prompts, fmt, figure, layers, heads, force, against=None, overlays=True,
                 maps=None):
        self.layers, self.heads, self.force, self.overlays, self.maps = layers, heads, force, overlays, maps
        out = out if out is not None else DEFAULT_OUT
        suffix = Path(out).suffix.lower().lstrip(".")
        self.file_mode = suffix in FIGURE_FORMATS and not Path(out).is_dir()
        if not self.file_mode and looks_like_image(out) and not Path(out).is_dir():
            raise ClipvizError(f"--out {out}: a figure file must end in .png, .pdf or .svg; or give a folder")
        if self.file_mode:
            if fmt is not None and fmt != suffix:
                raise ClipvizError(f"--out {out} is a .{suffix} file but --format is {fmt}: make them agree")
            if len(images) != 1:
                raise ClipvizError(f"--out {out} names one file but {len(images)} images were given: "
                                   "pass a folder as --out")
            self.folder, self.format, self.figure = Path(out).parent, suffix, True
            self.bases = [Path(out).stem]
        else:
            self.folder, self.format = Path(out), fmt or "png"
            self.figure = figure or self.format != "png"
            self.bases = image_labels(images)
        self.recorded = set()  # absolute paths a resumed run's manifest lists as its own outputs (owns)
        self.resumed = False  # --resume: the run continues one whose temporaries it may remove
        self.prompt_slugs = distinct_names([slug(p if against is None else f"{p} vs {against}") for p in prompts])
        self.inputs = Protected(images)  # checked at every write: one lookup each

    def files(self, index):
        """[(kind, prompt index or None, Path)] for image ``index``."""
        base, fmt = self.bases[index], self.format
        if self.figure:  # always so in file mode
            planned = [("figure", None, self.folder / f"{base}.{fmt}")]
        else:
            planned = [("overlay", t, self.folder / f"{base}--{s}.png") for t, s in enumerate(self.prompt_slugs)
                       if self.overlays]
        if self.maps == "npz":
            planned.append(("maps", None, self.folder / f"{base}--maps.npz"))
        elif self.maps == "png":
            planned += [("map", t, self.folder / f"{base}--{s}--map.png") for t, s in enumerate(self.prompt_slugs)]
        for kind, wanted in (("layers", self.layers), ("heads", self.heads)):
            if wanted:
                planned += [(kind, t, self.folder / f"{base}--{s}--{kind}.{fmt}") for t, s in enumerate(self.prompt_slugs)]
        return planned

    def _refuse_inputs(self, planned):
        """ClipvizError for a planned (kind, path) that is one of the input images. A name of the
        run's own kinds ("<image>--<prompt>-<hash>.png" ...) met among the inputs is an earlier
        clipviz output that clipviz has no record of (a record would have left it out of the
        inputs: inputs.without_own_outputs): without the record it cannot be told from a photo
        of the user's, so it is never written over; the message says so and what to do."""
        for kind, path in planned:
            if self.inputs.input_at(path) is None:
                continue
            if kind == "figure":  # "<image>.png": the name of a photo, nothing of clipviz's
                raise ClipvizError(f"refusing to write {path}: it is one of the input images; choose another --out")
            raise ClipvizError(f"refusing to write {path}: that file is an input image (it is named like an earlier "
                               "clipviz output, but clipviz has no record of writing it: its cache was cleared, or "
                               "the folder copied); write into another folder with --out, or move the old outputs "
                               "away")

    def owns(self, path):
        """True if ``path`` is one of the run's own recorded outputs (``recorded``, from the manifest
        a --resume continues) and a regular file, not a link: it may be replaced without --force
        (it is redone because it no longer matches its record). Asked again at write time."""
        return os.path.abspath(path) in self.recorded and os.path.isfile(path) and not os.path.islink(path)

    def check(self, count, mine=None):
        """Refuse (ClipvizError) a folder that is a file or cannot be created or written, two
        planned files of the ``count`` images that coincide, a planned file that is an input
        image, or (among the images ``mine``, default all: a torchrun rank checks its own shard)
        one that exists without --force (unless the run owns it). Creates nothing: the folder
        appears with the first file written (outputs.write_atomically)."""
        check_folder(self.folder)
        kinds = [(kind, path) for index in range(count) for kind, _, path in self.files(index)]
        planned = [path for _, path in kinds]
        check_unique(planned)
        self._refuse_inputs(kinds)
        mine = planned if mine is None else [p for i in mine for _, _, p in self.files(i)]
        refuse_existing([p for p in mine if not self.owns(p)], self.force)
        if self.resumed:  # a kill -9 of the run it continues may have left half-written files
            remove_stale_temporaries(mine)
