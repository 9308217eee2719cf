"""The ``clipviz`` command: explain, classify, models, download, demo, bench.

Exit status: 0 success; 1 some images of a run failed (listed at the end) or an unexpected
error (please report it); 2 a usage error a user can fix (bad path, not an image, unknown model
or method, empty or over-long prompt, unwritable or existing output), printed as ONE line
``clipviz: error: ...`` on stderr with no traceback (``--debug`` or CLIPVIZ_DEBUG=1 shows it).

One module per job: ``parser`` (arguments and help), ``policy`` (exit codes, one-line messages,
per-image failures), ``inputs`` (images vs prompts, the model), ``plan`` (output names, checked
before any work), and one runner per command (``explain`` with ``video`` for videos,
``classify``, ``models``, ``download``, ``demo``, ``bench``), imported only when its command runs. Start-up cost matters, so nothing here imports
more than the standard library until a command runs: torch comes with the model, matplotlib
with the first colour map or figure.
"""

import os
import sys
import warnings
from importlib import import_module

from ..errors import ClipvizError
from .policy import EXIT_FAILED, EXIT_USAGE, error_line, one_line, warning_line


def main(argv=None):
    """Run the command line; returns the exit status (console script: sys.exit(main()))."""
    from .parser import build_parser

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # extra: the options of `clipviz bench`
    if getattr(args, "command", None) == "bench":
        args.bench_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "command", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug = getattr(args, "debug", False) or os.environ.get("CLIPVIZ_DEBUG") == "1"
    try:
        with warnings.catch_warnings():  # restores Python's printer when main() returns
            if not debug:
                warnings.showwarning = warning_line
            return import_module(f".{args.command}", __name__).run(args)
    except ClipvizError as error:
        _traceback(debug)
        error_line(str(error))
        _json_error(args, str(error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("clipviz: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `clipviz ... | head`: the reader left; stay quiet
        sys.stderr.close()
        return EXIT_FAILED
    except Exception as error:  # a bug: short message, traceback on request
        _traceback(debug)
        print(f"clipviz: unexpected error: {type(error).__name__}: {one_line(str(error))[:300]}\n"
              "This is a bug in clipviz; please report it with the command you ran "
              "(re-run with --debug or CLIPVIZ_DEBUG=1 for the traceback).", file=sys.stderr)
        _json_error(args, f"unexpected error: {type(error).__name__}: {one_line(str(error))[:300]}")
        return EXIT_FAILED


def _json_error(args, message):
    """With --json, stdout always holds JSON: on an error, {"error": message} (stderr has the line)."""
    if getattr(args, "json", False):
        import json
        try:
            json.dump({"error": one_line(message)}, sys.stdout)
            sys.stdout.write("\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):  # stdout closed: nothing to tell it
            pass


def _traceback(debug):
    if debug:
        import traceback
        traceback.print_exc()


if __name__ == "__main__":
    sys.exit(main())
