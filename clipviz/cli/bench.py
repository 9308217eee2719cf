"""``clipviz bench`` (also ``python -m clipviz.bench``): the benchmark's options, its run, its files."""

import argparse
import json

from ..errors import ClipvizError
from ..outputs import check_target, refuse_existing, write_atomically
from .inputs import load_model, model_name
from .parser import DEFAULT_MODEL, Parser, seed
from .policy import EXIT_OK, EXIT_USAGE


def add_arguments(parser):
    """Options of ``clipviz bench`` on an argparse parser."""
    from ..bench.common import BENCH_SEED
    from ..methods import available_methods
    from ..bench.synthetic import DEFAULT_N, DEFAULT_SANITY_SCENES, DEFAULT_STEPS

    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"registered name, checkpoint path, or random:ARCH (default {DEFAULT_MODEL})")
    parser.add_argument("--n", type=int, default=DEFAULT_N, help=f"number of scenes (default {DEFAULT_N})")
    parser.add_argument("--seed", type=seed, default=BENCH_SEED,
                        help=f"scene stream (default {BENCH_SEED}, held out from training)")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated method names among {', '.join(available_methods())} "
                             "(default: every one that applies to the model)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--out", default="bench.json", help="JSON output file (default bench.json); checked "
                        "before the run, never replaced unless clipviz wrote it or --force")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="localization on real photos: DIR/images and DIR/masks/<stem>__<category>.png")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"deletion/insertion steps (default {DEFAULT_STEPS})")
    parser.add_argument("--sanity-scenes", type=int, default=DEFAULT_SANITY_SCENES,
                        help=f"scenes for cascading randomisation (default {DEFAULT_SANITY_SCENES})")
    parser.add_argument("--no-sanity", action="store_true", help="skip cascading weight randomisation")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run(args):
    """``clipviz bench``: parse the benchmark's own options, run it, print the tables, write the JSON."""
    parser = Parser(prog="clipviz bench", description="Ground-truth benchmark of the explanation methods.",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    return run_parsed(add_arguments(parser).parse_args(args.bench_args))


def run_parsed(args):
    """Run the benchmark from its parsed options; returns 0. Raises ClipvizError for problems the user can fix."""
    from ..bench import markdown, run_benchmark, run_data_benchmark

    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    out = check_target(args.out, (".json",))  # before the run: a bad --out wastes no benchmark
    refuse_existing([out], args.force)
    name = model_name(args.model)
    model = load_model(name, args.device)  # bench has no --activation: registered names know theirs
    progress = not args.quiet
    if args.data:
        result = run_data_benchmark(model, args.data, methods=methods, seed=args.seed, progress=progress,
                                    model_name=name)
    else:
        result = run_benchmark(model, methods=methods, n=args.n, seed=args.seed, progress=progress,
                               steps=args.steps, sanity=not args.no_sanity, sanity_scenes=args.sanity_scenes,
                               model_name=name)
    text = json.dumps(result, indent=1, ensure_ascii=False) + "\n"
    write_atomically(out, lambda handle: handle.write(text.encode("utf-8")), args.force)  # before printing: a closed stdout loses no result
    print(markdown(result))
    print(f"\nwrote {out}")
    return EXIT_OK


def main(argv=None):
    """``python -m clipviz.bench``: the same as ``clipviz bench``."""
    from .policy import error_line

    try:
        return run_parsed(add_arguments(Parser(prog="clipviz bench")).parse_args(argv))
    except ClipvizError as error:
        error_line(str(error))
        return EXIT_USAGE
