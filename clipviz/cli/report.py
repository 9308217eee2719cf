"""``clipviz explain IMAGE PROMPT... --html FILE``: one self-contained HTML report (clipviz.report)."""

import json
import sys
from pathlib import Path

from ..errors import ClipvizError
from ..outputs import check_target, refuse_existing
from ..suffixes import HTML_SUFFIXES
from .inputs import check_prompts, load_model
from .policy import EXIT_OK


def run_html_report(args, images, prompts, name):
    """The report of one image, ``--method`` (or the model family's default) shown first."""
    from ..explanation import check_contrast
    from ..report import report_html, write_report

    if len(images) != 1:
        raise ClipvizError(f"--html writes the report of one image; {len(images)} were given")
    if args.method is not None:
        check_contrast(args.method, args.against)
    check_target(args.html, HTML_SUFFIXES, protect=images)  # a bad --html fails before the model loads
    refuse_existing([Path(args.html)], args.force)
    queries = prompts + ([args.against] if args.against else [])
    check_prompts(queries, args.model)
    model = load_model(name, args.device, args.activation, queries, prints=args.json or not args.quiet)
    if args.method is None:
        from ..methods import default_method
        args.method = default_method(model)
        check_contrast(args.method, args.against)
    page = report_html(model, images[0], prompts, first=args.method, against=args.against, alpha=args.alpha,
                       cmap=args.cmap, title=f"clipviz: {Path(images[0]).name} ({name})")
    path = write_report(args.html, page, protect=images, overwrite=args.force)
    if args.json:
        json.dump({"model": name, "image": images[0], "prompts": prompts, "against": args.against,
                   "files": [str(path)]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif not args.quiet:
        print(f"-> {path} ({len(page) // 1024} KiB, {len(prompts)} prompts)")
    return EXIT_OK
