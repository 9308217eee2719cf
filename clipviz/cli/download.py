"""``clipviz download``: fetch and check registered models' weights ahead of time (clipviz.hub.fetch)."""

from ..errors import ClipvizError
from .policy import EXIT_OK, EXIT_USAGE, error_line


def run(args):
    """Fetch and check each named model's weights (progress bars on stderr), without building it;
    a name that fails is reported and the others still run. Exit 2 when any failed."""
    from ..hub import fetch, model_info

    for name in args.names:
        model_info(name)  # unknown names fail before any download
    failed = 0
    for name in args.names:
        try:
            fetched = fetch(name, progress=not args.quiet)
        except ClipvizError as error:
            error_line(f"{name}: {error}")
            failed += 1
            continue
        print(f"{name}: {fetched.path}  (from {fetched.source.label})")
    return EXIT_USAGE if failed else EXIT_OK
