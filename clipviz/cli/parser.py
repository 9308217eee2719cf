"""The ``clipviz`` argument parser: commands, options, help texts, and usage errors on one line."""

import argparse

from ..suffixes import FIGURE_SUFFIXES
from .policy import EXIT_USAGE, one_line
from .video import add_video_arguments

DEFAULT_MODEL = "synth-vit-t16"
DEFAULT_OUT = "clipviz-out"
FIGURE_DPI = 300  # = clipviz.render.layout.FIGURE_DPI (not imported here: --help stays cheap)
# keep in step with clipviz.methods.DEFAULT_METHODS (not imported here: --help stays cheap)
DEFAULT_METHOD_HELP = "relevance for ViT models, gradcam for ResNet ones (RN50 ...)"
FIGURE_FORMATS = tuple(s.lstrip(".") for s in FIGURE_SUFFIXES)
EXAMPLES = """\
examples:
  clipviz explain dog.jpg "a dog" "a ball"          overlays in ./clipviz-out/, one per prompt
  clipviz explain a.jpg b.jpg "a dog" --out maps/   several images, one folder
  clipviz explain --images photos/ "a dog" --json   every image in a folder, JSON on stdout
  clipviz explain --images coco/ "a dog" --manifest run.jsonl --resume --maps npz --no-overlays
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
prompts with --prompt. --image PATH, --images DIR and --image-list FILE add images explicitly.
Files named on the command line must exist (checked before the model loads); a folder's image
files (by suffix, not recursive; clipviz's own unchanged outputs left out, so --out may be that
folder) and a list's are read by worker processes, and one that cannot
be read is listed at the end (exit 1) while the others are still explained. A single image that
cannot be read is an error (exit 2).

Outputs: --out FOLDER (default ./clipviz-out) gets, per image and prompt, an overlay PNG
"<image>--<prompt>-<hash>.png" at the photo's resolution (names are lowercase ascii, at most
60 characters of the prompt (with --against: "<prompt> vs <against>") plus a hash, so a prompt
cannot write outside the folder). With
--figure, or --format pdf/svg, one titled figure "<image>.<format>" per image instead.
--out FILE.png|pdf|svg writes that one figure (one image only). --layers and --heads add
"<name>--<prompt>-<hash>--layers.<format>" / "--heads.<format>". Existing files are never
replaced without --force (clipviz's own earlier outputs are), input images never. An image or a
prompt given twice is explained once (prompts differing only in case or spacing too, for CLIP's
tokenizer); a new --out folder name may not end like a file (.txt, .json ...). Everything is
checked before the model loads; the folder is made with the first file.
Files appear atomically (temporary + rename; removed on Ctrl-C, SIGTERM and SIGHUP).
--maps npz adds "<image>--maps.npz", --maps png "<image>--<prompt>-<hash>--map.png";
--no-overlays leaves the overlays out.

Many images: files are decoded in --workers processes and explained --batch-size at a time;
--manifest FILE.jsonl records each image as it is done and --resume skips what is done.
Under torchrun (torchrun --nproc-per-node N -m clipviz explain ...) each process takes every
N-th image, on its own GPU (cuda:LOCAL_RANK) when there are GPUs, and the first merges the
manifest.
"""


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors on one line (exit 2), like every other user error."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"clipviz: error: {one_line(message)} (see '{self.prog} --help')\n")


def build_parser():
    from .. import __version__
    from ..methods import available_methods  # the registry only: no torch, --help stays cheap

    method_names = ", ".join(available_methods())

    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's default must not undo `clipviz --debug explain ...`
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks (also CLIPVIZ_DEBUG=1)")
    parser = Parser(prog="clipviz", description="See which image regions drove a CLIP model's answer "
                     "to a text query.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                     parents=[common])
    parser.add_argument("--version", action="version", version=f"clipviz {__version__}")
    parser.set_defaults(command=None)  # no command: main prints the help
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)  # runner: clipviz.cli.<COMMAND>

    def command(name, help, description=None, **kwargs):
        sub = commands.add_parser(name, help=help, description=description or help, epilog=EXAMPLES,
                                  formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common], **kwargs)
        sub.set_defaults(command=name)
        return sub

    explain = command("explain", "heatmaps of what the model looked at for each prompt", EXPLAIN_HELP)
    _add_inputs(explain)
    _add_model(explain)
    explain.add_argument("--method", help=f"explanation method: {method_names}; default {DEFAULT_METHOD_HELP}")
    explain.add_argument("--against", metavar="PROMPT", help="contrastive: explain S(prompt) - S(PROMPT); the "
                         "table, title and JSON show both scores and their difference (prompt-specific methods only)")
    explain.add_argument("--start-layer", type=int, help="first block the method uses (relevance: -1 = last)")
    explain.add_argument("--out", help=f"output folder (default ./{DEFAULT_OUT}) or one figure file "
                         ".png/.pdf/.svg")
    explain.add_argument("--format", choices=FIGURE_FORMATS, help="file format (default png; pdf/svg give titled figures)")
    explain.add_argument("--figure", action="store_true", help="one titled figure per image instead of overlay PNGs")
    explain.add_argument("--cmap", default="jet", help="colour map of the heatmap: any matplotlib name, e.g. jet "
                         "(default), turbo, viridis, magma")
    explain.add_argument("--alpha", type=_fraction, default=0.5, help="heatmap opacity in [0, 1] (default 0.5)")
    explain.add_argument("--dpi", type=_dpi, default=FIGURE_DPI, help=f"resolution of figures, {FIGURE_DPI} to "
                         f"2400 (default {FIGURE_DPI}); overlay PNGs are always at the photo's own resolution")
    explain.add_argument("--layers", action="store_true", help="also a strip of per-block maps per prompt "
                         "(implies --start-layer 0 unless given)")
    explain.add_argument("--heads", action="store_true", help="also a grid of per-head maps per prompt")
    explain.add_argument("--html", metavar="FILE.html", help="write one self-contained HTML report instead (one "
                         "image): every method, block and prompt precomputed, switched in the page; no server")
    _add_output_flags(explain)
    _add_run_flags(explain)
    add_video_arguments(explain)

    classify = command("classify", "zero-shot probabilities of the prompts for each image",
                       "Zero-shot classification: softmax over the prompts of logit_scale * cosine, as in "
                       "CLIP's README.\nImages and prompts are told apart as in 'clipviz explain --help'.")
    _add_inputs(classify)
    _add_model(classify)
    classify.add_argument("--json", action="store_true", help="machine-readable results on stdout")

    models = command("models", "list the registered names: present on this machine or not, and from where")
    models.add_argument("--json", action="store_true", help="machine-readable list on stdout")

    download = command("download", "fetch models' weights ahead of time (for offline machines, clusters)",
                       "Fetch and check the weights of registered models into clipviz's cache "
                       "($CLIPVIZ_CACHE, default ~/.cache/clipviz), trying the same sources as a load: "
                       "local caches, OpenAI's URL, the Hugging Face Hub mirrors. Copy the cache folder "
                       "to a machine without internet and 'clipviz explain --model NAME' works there.")
    download.add_argument("names", nargs="+", metavar="NAME", help="registered model names (see 'clipviz models')")
    download.add_argument("--quiet", action="store_true", help="no progress bars")

    demo = command("demo", "draw an explanation of a synthetic scene, offline",
                   f"Draw a figure offline: the project's small model ({DEFAULT_MODEL}) on a generated "
                   "scene (clipviz.synth) with prompts naming its objects; says whether each map's peak "
                   "lands on the named object.")
    _add_model(demo)
    demo.add_argument("--seed", type=seed, default=0, help="which scene (default 0)")
    demo.add_argument("--method", help=f"explanation method: {method_names}; default {DEFAULT_METHOD_HELP}")
    demo.add_argument("--out", default="clipviz-demo.png", help="figure file .png/.pdf/.svg (default clipviz-demo.png)")
    demo.add_argument("--dpi", type=_dpi, default=FIGURE_DPI, help=f"figure resolution, {FIGURE_DPI} to 2400 "
                      f"(default {FIGURE_DPI})")
    demo.add_argument("--force", action="store_true", help="replace an existing output file")
    demo.add_argument("--json", action="store_true", help="machine-readable results on stdout")

    command("bench", "ground-truth benchmark of the methods (see 'clipviz bench --help')", add_help=False)
    # its options belong to clipviz.cli.bench (main passes them on)
    return parser


def _add_inputs(sub):
    sub.add_argument("inputs", nargs="*", metavar="IMAGE_OR_PROMPT", help="image files and prompts (see above)")
    sub.add_argument("--image", action="append", default=[], metavar="PATH", help="an image file (repeatable)")
    sub.add_argument("--images", action="append", default=[], metavar="DIR", help="every image file in a folder (repeatable)")
    sub.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeatable)")


def _add_model(sub):
    sub.add_argument("--model", help=f"registered name, checkpoint path, 'openclip:...', 'hf:...' or 'random:ARCH' "
                     f"(an official architecture with random weights, e.g. random:ViT-B/16) (default: the bundled "
                     f"{DEFAULT_MODEL}, trained on synthetic shapes only)")
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


def _add_run_flags(sub):
    """Options of runs over many images (clipviz.folder, clipviz.manifest, clipviz.distributed)."""
    sub.add_argument("--image-list", action="append", default=[], metavar="FILE", help="image paths from a "
                     "text file or a pipe, one per line ('-': stdin); relative paths are the current folder's; "
                     "a listed file that cannot be read fails alone")
    sub.add_argument("--workers", type=int, metavar="N", help="processes decoding images (default: the CPUs "
                     "this process may use, shared among torchrun's processes on the machine; 0: none)")
    # --batch-size (images or frames per forward pass) is shared with videos: cli/video.py
    sub.add_argument("--manifest", metavar="FILE.jsonl", help="record every image as it is done (JSON Lines: "
                     "input size and time, scores, peaks, output files with sha256, error)")
    sub.add_argument("--resume", action="store_true", help="skip the images --manifest records as done whose "
                     "input is unchanged and whose outputs still verify; explain the rest (replacing outputs the "
                     "manifest records, without --force)")
    sub.add_argument("--maps", choices=("npz", "png"), help="also save the maps: npz = one compressed array file "
                         "per image (raw patch maps, crop box, scores; clipviz.mapfiles.load_maps), png = an "
                         "8-bit grey+alpha PNG per prompt at the photo's size")
    sub.add_argument("--no-overlays", action="store_true", help="no coloured overlay PNGs (with --maps or "
                     "--manifest: the fastest output for big runs)")


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in [0, 1]")
    return value


SEED_LIMIT = 2 ** 32  # numpy's classic seed range; the benchmark's weight randomisation multiplies it by 100003


def seed(text):
    """A random seed from the command line: a whole number from 0 to 2**32 - 1."""
    if not text.isdigit() or int(text) >= SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 to {SEED_LIMIT - 1}")
    return int(text)


def _dpi(text):
    if not text.isdigit() or not FIGURE_DPI <= int(text) <= 2400:  # clipviz.render.export's resolution rule
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {FIGURE_DPI} to 2400 (figures are "
                                         f"saved at {FIGURE_DPI} dpi or more)")
    return int(text)
