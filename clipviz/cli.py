"""The ``clipviz`` command: explain, classify, models, download, demo, bench.

Exit status: 0 success; 1 some images of a run failed (listed at the end) or an unexpected
error (please report it); 2 a usage error a user can fix (bad path, not an image, unknown model
or method, empty or over-long prompt, unwritable or existing output), printed as ONE line
``clipviz: error: ...`` on stderr with no traceback (``--debug`` or CLIPVIZ_DEBUG=1 shows it).

Start-up cost matters (``clipviz explain`` on one image should cost little more than importing
torch plus one forward and backward), so this module imports only the standard library at the
top: torch comes with the model, matplotlib only when a titled figure, layer strip or head grid
is asked for. The default output (one overlay PNG per prompt) is drawn with PIL alone.
"""

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import unicodedata
import warnings
from pathlib import Path

from .errors import ClipvizError
from .video_cli import add_video_arguments, is_video, run_video

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_MODEL = "synth-vit-t16"
DEFAULT_OUT = "clipviz-out"
# keep in step with clipviz.methods.DEFAULT_METHODS (not imported here: --help stays cheap)
DEFAULT_METHOD_HELP = "relevance for ViT models, gradcam for ResNet ones (RN50 ...)"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                  ".pbm", ".pnm", ".jfif", ".jpe", ".ico", ".tga")
FIGURE_FORMATS = ("png", "pdf", "svg")
SLUG_LENGTH = 60  # characters of readable text in a file name made from a prompt

EXAMPLES = """\
examples:
  clipviz explain dog.jpg "a dog" "a ball"          overlays in ./clipviz-out/, one per prompt
  clipviz explain a.jpg b.jpg "a dog" --out maps/   several images, one folder
  clipviz explain --images photos/ "a dog" --json   every image in a folder, JSON on stdout
  clipviz explain dog.jpg "a dog" --out dog.pdf     one titled figure (PDF, SVG or PNG)
  clipviz explain dog.jpg "a dog" --against "a cat" what makes it a dog rather than a cat
  clipviz explain dog.jpg "a dog" --layers --heads  also a strip per block and a grid per head
  clipviz explain clip.mp4 "a ball" --every 5       overlay video per prompt + per-frame scores
  clipviz classify cat.jpg "a diagram" "a dog" "a cat"
  clipviz models
  clipviz download ViT-B/16 RN50                     fetch weights now, for offline use
  clipviz demo --out demo.png
"""

EXPLAIN_HELP = """\
Explain which regions of each image drove the model's match with each prompt.

How arguments are told apart: a positional argument is an IMAGE if it names an existing
file or ends in an image suffix (.jpg .jpeg .png .gif .bmp .webp .tif .tiff ...); anything
else is a PROMPT. So "a photo of a cat.jpg" would be taken for a (missing) image: pass such
prompts with --prompt. --image PATH and --images DIR add images explicitly. Files named on the
command line must exist (checked before the model loads); a folder's image files (by suffix,
not recursive) are read one at a time, and one that cannot be read is listed at the end (exit 1)
while the others are still explained. A single image that cannot be read is an error (exit 2).

Outputs: --out FOLDER (default ./clipviz-out) gets, per image and prompt, an overlay PNG
"<image>--<prompt>-<hash>.png" at the photo's resolution (names are lowercase ascii, at most
60 characters of the prompt (with --against: "<prompt> vs <against>") plus a hash, so a prompt
cannot write outside the folder). With
--figure, or --format pdf/svg, one titled figure "<image>.<format>" per image instead.
--out FILE.png|pdf|svg writes that one figure (one image only). --layers and --heads add
"<name>--<prompt>-<hash>--layers.<format>" / "--heads.<format>". Existing files are never
replaced without --force, input images never. Files appear atomically (temporary + rename).
"""


# ----------------------------------------------------------------------------- entry point

def main(argv=None):
    """Run the command line; returns the exit status (console script: sys.exit(main()))."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # extra: the options of `clipviz bench`
    if args.handler is run_bench:
        args.bench_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = getattr(args, "debug", False) or os.environ.get("CLIPVIZ_DEBUG") == "1"
    try:
        with warnings.catch_warnings():  # restores Python's printer when main() returns
            if not debug:
                warnings.showwarning = _warning_line
            return args.handler(args)
    except ClipvizError as error:
        if debug:
            import traceback
            traceback.print_exc()
        _error_line(str(error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("clipviz: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `clipviz ... | head`: the reader left; stay quiet
        sys.stderr.close()
        return EXIT_FAILED
    except Exception as error:  # a bug: short message, traceback on request
        if debug:
            import traceback
            traceback.print_exc()
        print(f"clipviz: unexpected error: {type(error).__name__}: {_one_line(str(error))[:300]}\n"
              "This is a bug in clipviz; please report it with the command you ran "
              "(re-run with --debug or CLIPVIZ_DEBUG=1 for the traceback).", file=sys.stderr)
        return EXIT_FAILED


def _one_line(text):
    """``text`` on one line, control characters and lone surrogates escaped: safe to print."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in " ".join(str(text).split()))


def _error_line(message):
    print(f"clipviz: error: {_one_line(message)}", file=sys.stderr)


def _warning_line(message, category, filename, lineno, file=None, line=None):
    """Warnings as one ``clipviz: warning: ...`` line, without Python's file and line."""
    print(f"clipviz: warning: {_one_line(message)}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors on one line (exit 2), like every other user error."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"clipviz: error: {_one_line(message)} (see '{self.prog} --help')\n")


def build_parser():
    from . import __version__

    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's default must not undo `clipviz --debug explain ...`
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks (also CLIPVIZ_DEBUG=1)")
    parser = _Parser(prog="clipviz", description="See which image regions drove a CLIP model's answer "
                     "to a text query.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                     parents=[common])
    parser.add_argument("--version", action="version", version=f"clipviz {__version__}")
    parser.set_defaults(handler=lambda args: _no_command(parser))
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)

    def command(name, help, description=None, **kwargs):
        sub = commands.add_parser(name, help=help, description=description or help, epilog=EXAMPLES,
                                  formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common], **kwargs)
        return sub

    explain = command("explain", "heatmaps of what the model looked at for each prompt", EXPLAIN_HELP)
    _add_inputs(explain)
    _add_model(explain)
    explain.add_argument("--method", help=f"explanation method: relevance, rollout, attention, gradcam, ... "
                         f"(see clipviz.available_methods()); default {DEFAULT_METHOD_HELP}")
    explain.add_argument("--against", metavar="PROMPT", help="contrastive: explain S(prompt) - S(PROMPT); the "
                         "table, title and JSON show both scores and their difference (prompt-specific methods only)")
    explain.add_argument("--start-layer", type=int, help="first block the method uses (relevance: -1 = last)")
    explain.add_argument("--out", help=f"output folder (default ./{DEFAULT_OUT}) or one figure file "
                         ".png/.pdf/.svg")
    explain.add_argument("--format", choices=FIGURE_FORMATS, help="file format (default png; pdf/svg give titled figures)")
    explain.add_argument("--figure", action="store_true", help="one titled figure per image instead of overlay PNGs")
    explain.add_argument("--cmap", default="jet", help="colour map of the heatmap (default jet)")
    explain.add_argument("--alpha", type=_fraction, default=0.5, help="heatmap opacity in [0, 1] (default 0.5)")
    explain.add_argument("--dpi", type=_dpi, default=150, help="resolution of figures (default 150)")
    explain.add_argument("--layers", action="store_true", help="also a strip of per-block maps per prompt "
                         "(implies --start-layer 0 unless given)")
    explain.add_argument("--heads", action="store_true", help="also a grid of per-head maps per prompt")
    explain.add_argument("--html", metavar="FILE.html", help="write one self-contained HTML report instead (one "
                         "image): every method, block and prompt precomputed, switched in the page; no server")
    _add_output_flags(explain)
    add_video_arguments(explain)
    explain.set_defaults(handler=run_explain)

    classify = command("classify", "zero-shot probabilities of the prompts for each image",
                       "Zero-shot classification: softmax over the prompts of logit_scale * cosine, as in "
                       "CLIP's README.\nImages and prompts are told apart as in 'clipviz explain --help'.")
    _add_inputs(classify)
    _add_model(classify)
    classify.add_argument("--json", action="store_true", help="machine-readable results on stdout")
    classify.set_defaults(handler=run_classify)

    models = command("models", "list the registered names: present on this machine or not, and from where")
    models.add_argument("--json", action="store_true", help="machine-readable list on stdout")
    models.set_defaults(handler=run_models)

    download = command("download", "fetch models' weights ahead of time (for offline machines, clusters)",
                       "Fetch and check the weights of registered models into clipviz's cache "
                       "($CLIPVIZ_CACHE, default ~/.cache/clipviz), trying the same sources as a load: "
                       "local caches, OpenAI's URL, the Hugging Face Hub mirrors. Copy the cache folder "
                       "to a machine without internet and 'clipviz explain --model NAME' works there.")
    download.add_argument("names", nargs="+", metavar="NAME", help="registered model names (see 'clipviz models')")
    download.add_argument("--quiet", action="store_true", help="no progress bars")
    download.set_defaults(handler=run_download)

    demo = command("demo", "draw an explanation of a synthetic scene, offline",
                   f"Draw a figure offline: the project's small model ({DEFAULT_MODEL}) on a generated "
                   "scene (clipviz.synth) with prompts naming its objects; says whether each map's peak "
                   "lands on the named object.")
    _add_model(demo)
    demo.add_argument("--seed", type=int, default=0, help="which scene (default 0)")
    demo.add_argument("--method", help=f"explanation method (default {DEFAULT_METHOD_HELP})")
    demo.add_argument("--out", default="clipviz-demo.png", help="figure file .png/.pdf/.svg (default clipviz-demo.png)")
    demo.add_argument("--dpi", type=_dpi, default=150, help="figure resolution (default 150)")
    demo.add_argument("--force", action="store_true", help="replace an existing output file")
    demo.add_argument("--json", action="store_true", help="machine-readable results on stdout")
    demo.set_defaults(handler=run_demo)

    bench = command("bench", "ground-truth benchmark of the methods (see 'clipviz bench --help')", add_help=False)
    bench.set_defaults(handler=run_bench)  # its options belong to clipviz.bench: see main()
    return parser


def _add_inputs(sub):
    sub.add_argument("inputs", nargs="*", metavar="IMAGE_OR_PROMPT", help="image files and prompts (see above)")
    sub.add_argument("--image", action="append", default=[], metavar="PATH", help="an image file (repeatable)")
    sub.add_argument("--images", action="append", default=[], metavar="DIR", help="every image file in a folder (repeatable)")
    sub.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeatable)")


def _add_model(sub):
    sub.add_argument("--model", help=f"registered name, checkpoint path, 'openclip:...' or 'hf:...' "
                     f"(default: the bundled {DEFAULT_MODEL})")
    sub.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    sub.add_argument("--activation", choices=("quick_gelu", "gelu"), help="MLP activation the checkpoint "
                     "was trained with: needed for a plain open_clip checkpoint file trained with GELU "
                     "(LAION, DataComp, ...: --activation gelu). Default: QuickGELU for OpenAI's models, "
                     "detected from an open_clip_config.json / config.json beside a file, else QuickGELU "
                     "with a warning")


def _add_output_flags(sub):
    sub.add_argument("--force", action="store_true", help="replace existing output files (never input images)")
    sub.add_argument("--json", action="store_true", help="machine-readable results on stdout (nothing else there)")
    sub.add_argument("--quiet", action="store_true", help="print nothing but errors and the failure summary")


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in [0, 1]")
    return value


def _dpi(text):
    if not text.isdigit() or not 10 <= int(text) <= 2400:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 10 to 2400")
    return int(text)


def _no_command(parser):
    parser.print_help(sys.stderr)
    return EXIT_USAGE


# ----------------------------------------------------------------------------- inputs

def looks_like_image(arg):
    """True if ``arg`` ends in one of IMAGE_SUFFIXES (any case)."""
    return arg.lower().endswith(IMAGE_SUFFIXES)


def split_inputs(positionals, images=(), folders=(), prompts=()):
    """Tell images from prompts (the rule in EXPLAIN_HELP) → (image paths [str], prompts [str]).

    Named images come first, then each folder's. Missing named files, unusable folders, and no
    image or no prompt at all raise ClipvizError.
    """
    named, texts = list(images), []
    for arg in positionals:
        (named if os.path.isfile(arg) or looks_like_image(arg) or is_video(arg) else texts).append(arg)
    texts += list(prompts)
    for path in named:
        if os.path.isdir(path):
            raise ClipvizError(f"'{path}' is a folder, not an image file: pass it as --images {path}")
        if not os.path.isfile(path):
            raise ClipvizError(f"no image file at '{path}': check the path (a prompt that ends in an "
                               "image suffix must be given with --prompt)")
    listed = [p for folder in folders for p in list_images(folder)]
    all_images = named + listed
    if not all_images:
        folders_given = [t for t in texts if os.path.isdir(t)]
        hint = f" ('{folders_given[0]}' is a folder: use --images {folders_given[0]})" if folders_given else ""
        raise ClipvizError(f"no image given{hint}: name image files (.jpg, .png, ...) or --images DIR")
    if not texts:
        raise ClipvizError("no prompt given: add a text query such as \"a photo of a dog\"")
    if not all(t.strip() for t in texts):
        raise ClipvizError("a prompt is empty: write what to look for, e.g. \"a photo of a dog\"")
    return all_images, [t.strip() for t in texts]  # as explain() strips them


def list_images(folder):
    """Image files (by suffix) directly inside ``folder``, sorted by name; hidden files skipped.

    Only regular files (or links to them) are listed, judged by stat, which never blocks: a FIFO,
    device, socket, folder or broken link with an image suffix is skipped and named on stderr.
    """
    import stat

    from .files import kind_of

    path = Path(folder)
    if not path.is_dir():
        raise ClipvizError(f"--images {folder}: no such folder" if not path.exists()
                           else f"--images {folder}: not a folder; pass an image file as --image {folder}")
    try:
        entries = sorted(path.iterdir())
    except OSError as error:
        raise ClipvizError(f"cannot list {folder}: {error.strerror or error}") from error
    found, skipped = [], []
    for entry in entries:
        if entry.name.startswith(".") or not looks_like_image(entry.name):
            continue
        try:
            mode = entry.stat().st_mode
        except OSError as error:  # a broken link, a file removed since the listing
            skipped.append(f"{entry.name} ({error.strerror or 'unreadable'})")
            continue
        if stat.S_ISREG(mode):
            found.append(str(entry))
        elif not stat.S_ISDIR(mode):  # folders named like images were always passed over quietly
            skipped.append(f"{entry.name} ({kind_of(mode)})")
    if skipped:
        print(f"clipviz: skipping {len(skipped)} entries of {folder} that are not regular files: "
              f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}", file=sys.stderr)
    if not found:
        raise ClipvizError(f"--images {folder}: no image files in it (looked for {', '.join(IMAGE_SUFFIXES[:5])} ...)")
    return found


def model_name(name):
    """``--model``, or the bundled default when it is installed; unknown names fail here, before
    torch is imported (ClipvizError listing the registered names)."""
    from . import hub

    if name is None:
        if DEFAULT_MODEL not in hub.available_models():
            raise ClipvizError(f"the bundled model {DEFAULT_MODEL} is not installed in this clipviz; pass "
                               "--model NAME_OR_CHECKPOINT (see 'clipviz models')")
        return DEFAULT_MODEL
    if not name.startswith(hub.ADAPTER_PREFIXES) and not os.path.exists(os.path.expanduser(name)):
        hub.model_info(name)  # raises for a name that is neither registered nor a file
    return name


def check_prompts(prompts):
    """Over-long prompts (more than CLIP's 77 tokens) fail before the model loads."""
    from .tokenizer import tokenize

    tokenize(prompts)


def load_model(name, device, activation=None):
    """The model for a name from ``model_name``, through clipviz.hub.load."""
    from .hub import load

    return load(name, device=device, activation=activation)[0]


# ----------------------------------------------------------------------------- output names and safe writes

def slug(text, length=SLUG_LENGTH):
    """A file-name-safe form of ``text``: lowercase ascii [a-z0-9-], at most ``length``
    characters, plus '-' and a 6-hex hash of the whole text (distinct texts, distinct names).

    slug("../../x") == "x-<hash>": no separator or dot survives, so it cannot leave a folder.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    body = re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")[:length].strip("-") or "x"
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:6]
    return f"{body}-{digest}"


def image_labels(images):
    """A short file-name part per image: its stem, made safe; stems that collide get a hash."""
    stems = [slug(Path(p).stem).rsplit("-", 1)[0] for p in images]
    counts = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    return [stem if counts[stem] == 1 else f"{stem}-{slug(os.path.abspath(p))[-6:]}" for stem, p in zip(stems, images)]


class OutputPlan:
    """Where each image's files go (the naming rule in EXPLAIN_HELP), checked before any work by
    ``check``: the folder must accept a new file, no input is ever a target, and an existing file
    is a target only with ``force``.

    ``files(i)`` → [(kind, prompt index or None, path)] with kind "overlay" | "figure" | "layers" |
    "heads". Folder mode: any number of images. File mode (``out`` ends in .png/.pdf/.svg): one
    image, its figure at ``out``, strips and grids beside it.
    """

    def __init__(self, out, images, prompts, fmt, figure, layers, heads, force, against=None):
        self.layers, self.heads, self.force = layers, heads, force
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
        self.prompt_slugs = [slug(p if against is None else f"{p} vs {against}") for p in prompts]
        self.inputs = {os.path.realpath(p) for p in images}

    def files(self, index):
        """[(kind, prompt index or None, Path)] for image ``index``."""
        base, fmt = self.bases[index], self.format
        if self.figure:  # always so in file mode
            planned = [("figure", None, self.folder / f"{base}.{fmt}")]
        else:
            planned = [("overlay", t, self.folder / f"{base}--{s}.png") for t, s in enumerate(self.prompt_slugs)]
        for kind, wanted in (("layers", self.layers), ("heads", self.heads)):
            if wanted:
                planned += [(kind, t, self.folder / f"{base}--{s}--{kind}.{fmt}") for t, s in enumerate(self.prompt_slugs)]
        return planned

    def check(self, count):
        """Create the folder; refuse (ClipvizError) if it is not writable, or if any planned file of
        the ``count`` images is an input image or exists without --force."""
        self._prepare_folder()
        existing = []
        for index in range(count):
            for _, _, path in self.files(index):
                self.check_target(path)
                if not self.force and os.path.lexists(path):
                    existing.append(str(path))
        if existing:
            more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
            raise ClipvizError(f"output file {', '.join(existing[:3])}{more} already exists; pass --force to "
                               "replace it or choose another --out")

    def check_target(self, path):
        if os.path.realpath(path) in self.inputs:
            raise ClipvizError(f"refusing to write {path}: it is one of the input images; choose another --out")

    def _prepare_folder(self):
        folder = self.folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):  # the one reliable writability test (root, ACLs, mounts)
                pass
        except OSError as error:
            raise ClipvizError(f"cannot write into {folder}: {error.strerror or error}; choose a writable "
                               "--out folder") from error


# ----------------------------------------------------------------------------- progress

class Progress:
    """A progress bar on stderr for many images: tqdm when installed, else a plain line.

    Drawn only when ``enabled`` (several images, not --quiet, stderr is a terminal).
    ``note(text)`` prints a line to stdout without tearing the bar.
    """

    def __init__(self, total, enabled, stream=None):
        self.total, self.done, self.stream = total, 0, stream or sys.stderr
        self.bar = None
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit="image", file=self.stream, dynamic_ncols=True)
            except ImportError:
                self._draw()

    def update(self, name=""):
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            self._draw(name)

    def note(self, text):
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
            return
        if self.enabled:
            self.stream.write("\r\033[K")
        print(text, flush=True)
        if self.enabled:
            self._draw()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, name=""):
        width = 30
        filled = width * self.done // max(1, self.total)
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {name[-40:]}\033[K")
        self.stream.flush()


# ----------------------------------------------------------------------------- explain

def run_explain(args):
    """Explain each image in turn, write its files, print its table; failures listed at the end."""
    images, prompts = split_inputs(args.inputs, args.image, args.images, args.prompt)
    videos = [path for path in images if is_video(path)]
    if videos:
        if len(images) > 1:
            raise ClipvizError(f"explain one video per run, without images ({len(images)} files given)")
        return run_video(args, videos[0])
    name = model_name(args.model)
    from .methods import available_methods, get_method

    if args.method is not None and args.method not in available_methods():
        get_method(args.method)  # the registry's error, before anything heavy is imported
    if args.html:
        return run_html_report(args, images, prompts, name)
    plan = OutputPlan(args.out, images, prompts, args.format, args.figure, args.layers, args.heads, args.force,
                      args.against)
    plan.check(len(images))

    options = _method_options(args) if args.method is not None else None  # checked before loading
    check_prompts(prompts + ([args.against] if args.against else []))
    model = load_model(name, args.device, args.activation)
    if options is None:
        args.method = _default_method(model)
        options = _method_options(args)
    from .explanation import explain

    progress = Progress(len(images), enabled=len(images) > 1 and not args.quiet and sys.stderr.isatty())
    results, failures, written = [], [], []
    show = not args.quiet and not args.json
    for index, image in enumerate(images):
        try:
            exp = explain(model, image, prompts, method=args.method, against=args.against, **options)
        except Exception as error:  # one bad file does not stop a run of several
            failures.append((image, _failure_text(error)))
            if len(images) == 1 or _same_failure_throughout(failures, index):
                raise
            progress.update(Path(image).name)
            continue
        files = _write_outputs(exp, plan, index, args)
        written += files
        if args.json:
            summary = exp.to_dict()
            summary.update(image=image, files=[str(f) for f in files])
            results.append(summary)
        if show:
            progress.note(_explain_table(exp, image, files))
        del exp  # keep memory flat over long runs: nothing of an image outlives its turn
        progress.update(Path(image).name)
    progress.close()

    if args.json:
        json.dump({"model": name, "method": args.method, "prompts": prompts, "against": args.against,
                   "results": results, "failures": [{"image": i, "error": e} for i, e in failures],
                   "files": [str(f) for f in written]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif show and len(images) > 1:
        print(f"{len(written)} files written to {plan.folder}/ ({len(images) - len(failures)} of {len(images)} images)")
    return _report_failures(failures, len(images))


def _method_options(args):
    """The method's options from the flags (``--start-layer``, ``--layers``), checked, and --against with it."""
    from .explanation import check_contrast, check_options
    from .methods import get_method

    module = get_method(args.method)
    options = {}
    if args.start_layer is not None:
        options["start_layer"] = args.start_layer
    elif args.layers and "start_layer" in _parameters(module.needs):
        options["start_layer"] = 0  # a strip needs every block
    check_options(module, args.method, options)
    check_contrast(args.method, args.against)
    return options


def _default_method(model):
    from .methods import default_method

    return default_method(model)


def run_html_report(args, images, prompts, name):
    """``explain --html FILE``: the report of clipviz.report for one image (--method shown first)."""
    from .explanation import check_contrast
    from .report import report_html, write_report

    if len(images) != 1:
        raise ClipvizError(f"--html writes the report of one image; {len(images)} were given")
    if args.method is not None:
        check_contrast(args.method, args.against)
    _check_new(Path(args.html), args.force)
    check_prompts(prompts + ([args.against] if args.against else []))
    model = load_model(name, args.device, args.activation)
    if args.method is None:
        args.method = _default_method(model)
        check_contrast(args.method, args.against)
    page = report_html(model, images[0], prompts, first=args.method, against=args.against, alpha=args.alpha,
                       cmap=args.cmap, title=f"clipviz: {Path(images[0]).name} ({name})")
    path = write_report(args.html, page, protect=images)
    if args.json:
        json.dump({"model": name, "image": images[0], "prompts": prompts, "against": args.against,
                   "files": [str(path)]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif not args.quiet:
        print(f"-> {path} ({len(page) // 1024} KiB, {len(prompts)} prompts)")
    return EXIT_OK


def _same_failure_throughout(failures, index, count=5):
    """True when the first ``count`` images all failed with one message: the problem is not the
    files (a wrong model for the method, a broken install), so the run stops instead of
    repeating it for every image."""
    return index + 1 == count == len(failures) and len({text for _, text in failures}) == 1


def _parameters(function):
    import inspect
    return inspect.signature(function).parameters


def _failure_text(error):
    if isinstance(error, ClipvizError):
        return _one_line(str(error))
    return f"unexpected {type(error).__name__}: {_one_line(str(error))[:200]} (please report)"


def _report_failures(failures, total):
    if not failures:
        return EXIT_OK
    lines = [f"clipviz: {len(failures)} of {total} images failed:"]
    lines += [f"  {_one_line(Path(image).name)}: {error}" for image, error in failures]
    print("\n".join(lines), file=sys.stderr)
    return EXIT_FAILED


def _write_outputs(exp, plan, index, args):
    """Draw and save image ``index``'s planned files (render writes atomically); returns their paths."""
    from . import render

    for wanted, stack, what, methods in ((plan.layers, exp.layer_maps, "per-block maps for --layers", "relevance or rollout"),
                                         (plan.heads, exp.head_maps, "per-head maps for --heads", "relevance or attention")):
        if wanted and stack is None:  # checked before anything of the image is written
            raise ClipvizError(f"method {exp.method!r} gives no {what}; use --method {methods}")
    written = []
    for kind, prompt, path in plan.files(index):
        _check_new(path, args.force)  # planned as new; refuse if something appeared there since
        if kind == "overlay":
            render.save_overlay(path, exp.photo, exp.maps[prompt], cmap=args.cmap, alpha=args.alpha,
                                protect=plan.inputs)
            written.append(path)
            continue
        style = dict(cmap=args.cmap, alpha=args.alpha)
        figure = (render.explanation_figure(exp, **style) if kind == "figure" else
                  render.layer_strip(exp, prompt, **style) if kind == "layers" else
                  render.head_grid(exp, prompt, **style))
        render.save_figure(figure, path, dpi=args.dpi, protect=plan.inputs)
        written.append(path)
    return written


def _check_new(path, force):
    if not force and os.path.lexists(path):
        raise ClipvizError(f"output file {path} already exists; pass --force to replace it or choose another --out")


def _explain_table(exp, image, files):
    """The printed block for one image: a row per prompt (score, prob, peak), tokens, files."""
    prompts = [_one_line(p) for p in exp.prompts]
    width = max(len("prompt"), *(len(p) for p in prompts))
    against = f", against \"{_one_line(exp.against[0])}\"" if exp.against else ""
    rows = [f"{_one_line(image)}  ({exp.method}{against})"]
    if exp.against:  # the map explains S(prompt) − S(against), S = logit_scale · cosine
        rows.append(f"  {'prompt':<{width}}  {'S(prompt)':>9}  {'S(against)':>10}  {'difference':>10}  "
                    f"{'p(prompt|pair)':>14}  peak (x, y)")
    else:
        rows.append(f"  {'prompt':<{width}}  {'score':>7}  {'prob':>6}  peak (x, y)")
    for t, prompt in enumerate(prompts):
        peak = "-" if _peak(exp.maps[t]) is None else tuple(_peak(exp.maps[t]))
        if exp.against:
            c = exp.contrast()[t]
            rows.append(f"  {prompt:<{width}}  {c['S_prompt']:9.3f}  {c['S_against']:10.3f}  "
                        f"{c['S_difference']:+10.3f}  {exp.probs[t]:14.1%}  {peak}")
        else:
            rows.append(f"  {prompt:<{width}}  {exp.scores[t]:+7.4f}  {exp.probs[t]:6.1%}  {peak}")
    if exp.text_relevance is not None:
        rows.append("  text tokens:")
        rows += [f"    {_tokens_text(tokens, weights)}" for tokens, weights in zip(exp.text_tokens, exp.text_relevance)]
    rows += [f"  -> {f}" for f in files]
    return "\n".join(rows)


def _peak(photo_map):
    from .explanation import peak_xy
    return peak_xy(photo_map)


def _tokens_text(tokens, weights):
    """Coloured tokens in a terminal (render.text_tokens_ansi), else 'token(0.42)' pairs."""
    tokens = [_one_line(token) for token in tokens]
    if sys.stdout.isatty() and not os.environ.get("NO_COLOR"):
        from .render import text_tokens_ansi
        return text_tokens_ansi(tokens, weights)
    top = max((float(w) for w in weights), default=0.0) or 1.0
    return " ".join(f"{token}({float(w) / top:.2f})" for token, w in zip(tokens, weights))


# ----------------------------------------------------------------------------- classify, models, demo, bench

def run_classify(args):
    images, prompts = split_inputs(args.inputs, args.image, args.images, args.prompt)
    name = model_name(args.model)
    check_prompts(prompts)
    model = load_model(name, args.device, args.activation)
    from .zeroshot import classify

    results, failures = [], []
    for index, image in enumerate(images):
        try:
            result = classify(model, image, prompts)
        except Exception as error:
            failures.append((image, _failure_text(error)))
            if len(images) == 1 or _same_failure_throughout(failures, index):
                raise
            continue
        if args.json:
            results.append(result.to_dict())
        else:
            print(f"{_one_line(image)}\n" + "\n".join(f"  {prob:7.2%}  {_one_line(prompt)}"
                                                      for prompt, prob in result.ranked()))
    if args.json:
        json.dump({"model": name, "results": results,
                   "failures": [{"image": i, "error": e} for i, e in failures]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    return _report_failures(failures, len(images))


def run_models(args):
    """Per registered name: whether its weights are on this machine, and where a load would take
    them from (the first local source, else the downloads of clipviz.sources in order)."""
    from .hub import available_models, cache_dir, model_info
    from .sources import locate, sources

    rows = []
    for name in available_models():
        entry = model_info(name)
        found = locate(entry)
        if found is not None:
            status = "bundled" if found.label == "bundled" else "cached"
            where = f"{found.label} {found.location}"
        else:
            downloads = [s for s in sources(entry) if not s.local]
            status = "download on first use" if downloads else "missing"
            where = ", then ".join(f"{s.label} {s.brief}" for s in downloads)
        rows.append({"name": name, "status": status, "present": found is not None, "from": where,
                     "description": entry.description})
    if args.json:
        json.dump({"models": rows, "cache_dir": str(cache_dir())}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return EXIT_OK
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['status']:<21}  {r['description']}\n{'':<{width}}  from: {r['from']}")
    print(f"\ncache: {cache_dir()}  (also: a checkpoint path, 'openclip:ARCH/PRETRAINED', 'hf:REPO_ID'); "
          "'clipviz download NAME' fetches ahead of time")
    return EXIT_OK


def run_download(args):
    """Fetch and check each named model's weights (progress bars on stderr), without building it;
    a name that fails is reported and the others still run. Exit 2 when any failed."""
    from .hub import fetch, model_info

    for name in args.names:
        model_info(name)  # unknown names fail before any download
    failed = 0
    for name in args.names:
        try:
            fetched = fetch(name, progress=not args.quiet)
        except ClipvizError as error:
            _error_line(f"{name}: {error}")
            failed += 1
            continue
        print(f"{name}: {fetched.path}  (from {fetched.source.label})")
    return EXIT_USAGE if failed else EXIT_OK


def run_demo(args):
    """One synthetic scene, prompts naming its objects, a titled figure; peak-on-object check."""
    out = Path(args.out)
    if out.suffix.lower().lstrip(".") not in FIGURE_FORMATS:
        raise ClipvizError(f"--out {out}: the demo writes a figure; end the name in .png, .pdf or .svg")
    _check_new(out, args.force)
    name = model_name(args.model)
    model = load_model(name, args.device, args.activation)
    args.method = args.method or _default_method(model)
    from .explanation import explain
    from .synth import object_prompt, scene_from_index

    scene = scene_from_index(args.seed, 0, n_objects=(2, 3))
    prompts = [object_prompt(o.shape, o.colour) for o in scene.objects]
    exp = explain(model, scene.image, prompts, method=args.method)
    peaks = [_peak(m) for m in exp.maps]
    hits = [p is not None and bool(mask[p[1], p[0]]) for p, mask in zip(peaks, scene.masks)]
    exp.save(out, dpi=args.dpi)
    if args.json:
        summary = exp.to_dict()
        summary.update(model=name, seed=args.seed, peak_on_object=hits, files=[str(out)])
        json.dump(summary, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return EXIT_OK
    print(f"model {name}, scene {args.seed}, method {args.method}")
    width = max(len(p) for p in prompts)
    for t, prompt in enumerate(prompts):
        print(f"  {prompt:<{width}}  prob {exp.probs[t]:6.1%}  peak {tuple(peaks[t])} "
              f"on the object: {'yes' if hits[t] else 'no'}")
    print(f"-> {out}")
    return EXIT_OK


def run_bench(args):
    try:
        from . import bench
    except ModuleNotFoundError as error:
        if error.name != f"{__package__}.bench":
            raise
        raise ClipvizError("the benchmark (clipviz.bench) is not part of this clipviz install") from error
    parser = _Parser(prog="clipviz bench", description="Ground-truth benchmark of the explanation methods.",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(parser)
    return bench.run(parser.parse_args(args.bench_args))


if __name__ == "__main__":
    sys.exit(main())
