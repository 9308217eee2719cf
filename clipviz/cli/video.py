"""``clipviz explain clip.mp4 "a prompt" ...``: the explain command's side of clipviz.video.

Called by the explain runner when its input is a video (by suffix, clipviz.suffixes.VIDEO_SUFFIXES).
Exit status: 0 done; 1 the file stopped decoding part-way (the frames before it are explained and
written, and the message says where it stopped); usage errors raise ClipvizError (exit 2).
"""

import argparse
import json
import math
import sys

from ..errors import ClipvizError
from ..suffixes import FIGURE_SUFFIXES

VIDEO_HELP = """\
Videos (.mp4 .avi .mov .mkv .webm .m4v): one video per run. --out is a folder (default
./clipviz-out) that gets "<video>--<prompt>-<hash>.mp4" per prompt (the frame with its overlay and
the score curve so far underneath), "<video>.json" and "<video>.csv" (per frame: score, prob and
peak per prompt). --every N or --fps F pick the frames, --start/--end a window in seconds,
--smoothing B an exponential moving average of the maps (B = weight of the past, default 0 = off).
"""


def add_video_arguments(parser):
    """The explain command's video options."""
    group = parser.add_argument_group("videos", VIDEO_HELP)
    group.add_argument("--every", type=_whole, metavar="N", help="explain every N-th frame (default 1)")
    group.add_argument("--fps", type=_positive, metavar="F", help="or about F frames per second")
    group.add_argument("--start", type=_seconds, metavar="S", help="start at S seconds (default 0)")
    group.add_argument("--end", type=_seconds, metavar="S", help="stop at S seconds (default: the end)")
    group.add_argument("--smoothing", type=_smoothing, default=0.0, metavar="B",
                       help="EMA of the maps over frames, B in [0, 1) (default 0: off)")
    group.add_argument("--batch-size", type=_whole, default=8, metavar="N", help="images or frames per forward pass (default 8; halved "
                       "automatically when memory runs out)")


def run_video(args, path, prompts):
    """Explain the video ``path`` for ``prompts`` with the explain command's arguments; returns the
    exit status. Every output is checked (clipviz.video.check_outputs) before the model loads."""
    from ..explanation import clean_prompts
    from ..video import check_outputs
    from .explain import method_and_options
    from .inputs import check_prompts, load_model, model_name
    from .parser import DEFAULT_OUT
    from .policy import one_line

    for flag, given in (("--figure", args.figure), ("--format", args.format), ("--layers", args.layers),
                        ("--heads", args.heads)):
        if given:
            raise ClipvizError(f"{flag} is for images; a video gets overlay videos, JSON and CSV in --out")
    if args.out and args.out.lower().endswith(FIGURE_SUFFIXES):
        raise ClipvizError(f"--out {args.out}: a video's outputs go into a folder; give a folder name")
    name = model_name(args.model)
    method, options = method_and_options(args) if args.method is not None else (None, None)
    queries = prompts + ([args.against] if args.against else [])
    check_prompts(queries, args.model)
    check_outputs(path, clean_prompts(prompts), args.out or DEFAULT_OUT, args.force)  # the names explain_video writes
    model = load_model(name, args.device, args.activation, queries, prints=args.json or not args.quiet)
    if method is None:
        from ..methods import default_method
        args.method = default_method(model)
        method, options = method_and_options(args)

    from ..video import explain_video
    result = explain_video(model, path, prompts, method=args.method, against=args.against, every=args.every,
                           fps=args.fps, start=args.start, end=args.end, smoothing=args.smoothing,
                           batch_size=args.batch_size, out=args.out or DEFAULT_OUT, cmap=args.cmap,
                           alpha=args.alpha, force=args.force,
                           progress=not args.quiet and sys.stderr.isatty(), **options)
    if args.json:
        json.dump({"model": name, **result.to_dict()}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif not args.quiet:
        print(f"{one_line(path)}  ({args.method}, {len(result.frames)} frames explained, "
              f"{result.output_fps:.3g} frames/s out)")
        for row in result.best():
            print(f"  best for \"{one_line(row['prompt'])}\": frame {row['frame']} ({row['time']:.2f} s), "
                  f"score {row['score']:+.4f}")
        files = result.files
        for file in files["videos"] + [files["json"], files["csv"]]:
            print(f"  -> {file}")
    if result.stopped:
        print(f"clipviz: {one_line(path)}: {result.stopped}; the {len(result.frames)} frames before it "
              "were explained and written", file=sys.stderr)
        return 1
    return 0


def _whole(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def _number(text, check, what):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not check(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def _positive(text):
    return _number(text, lambda v: v > 0, "a number > 0")


def _seconds(text):
    return _number(text, lambda v: v >= 0, "a time in seconds >= 0")


def _smoothing(text):
    return _number(text, lambda v: 0 <= v < 1, "a number in [0, 1)")
