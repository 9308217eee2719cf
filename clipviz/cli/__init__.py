"""The ``clipviz`` command: explain, classify, models, download, demo, bench.

Exit status: 0 success; 1 some images of a run failed (listed at the end) or an unexpected
error (please report it); 2 a usage error a user can fix (bad path, not an image, unknown model
or method, a device this machine lacks, empty or over-long prompt, unwritable or existing output,
a standard output that was closed or is full), printed as ONE line ``clipviz: error: ...`` on
stderr with no traceback (``--debug`` or CLIPVIZ_DEBUG=1 shows it); 130 Ctrl-C; 143 SIGTERM and
129 SIGHUP (128 + the signal number: every temporary file is removed first, clipviz.signals).

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
from ..signals import Terminated, raising_on_termination
from .policy import EXIT_FAILED, EXIT_USAGE, StdoutFailed, error_line, guarded_stdout, one_line, warning_line

# the positional arguments of each command, where options may also come first: `explain a.png --out o "a dog"`
POSITIONALS = {"explain": "inputs", "classify": "inputs", "download": "names"}


def main(argv=None):
    """Run the command line; returns the exit status (console script: sys.exit(main()))."""
    from .parser import build_parser

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # extra: the options of `clipviz bench`
    if getattr(args, "command", None) == "bench":
        args.bench_args = extra
    elif extra:
        _late_positionals(parser, args, extra)
    if getattr(args, "command", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug = getattr(args, "debug", False) or os.environ.get("CLIPVIZ_DEBUG") == "1"
    try:
        with warnings.catch_warnings(), raising_on_termination(), guarded_stdout():  # all restored after
            if not debug:
                warnings.showwarning = warning_line
            if getattr(args, "quiet", False) and args.command != "download":  # "nothing but errors and the failure summary"
                warnings.simplefilter("ignore")
            status = import_module(f".{args.command}", __name__).run(args)
            sys.stdout.flush()  # a closed or full stdout fails here, inside this try, not at exit
            return status
    except ClipvizError as error:
        _traceback(debug)
        error_line(str(error))
        _json_error(args, str(error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("clipviz: interrupted", file=sys.stderr)
        return 130
    except Terminated as stop:
        print(f"clipviz: stopped by {stop.name}", file=sys.stderr)
        return stop.code
    except StdoutFailed as failure:  # `clipviz ... | head -1`, `> /dev/full`: the user's pipe, not a bug
        _traceback(debug)
        error_line(str(failure))
        return EXIT_USAGE
    except Exception as error:  # a bug: short message, traceback on request
        return _bug(error, args, debug)


def _bug(error, args, debug):
    """The one message for a real bug (exit 1): short, with the traceback on request."""
    _traceback(debug)
    print(f"clipviz: unexpected error: {type(error).__name__}: {one_line(str(error))[:300]}\n"
          "This is a bug in clipviz; please report it with the command you ran "
          "(re-run with --debug or CLIPVIZ_DEBUG=1 for the traceback).", file=sys.stderr)
    _json_error(args, f"unexpected error: {type(error).__name__}: {one_line(str(error))[:300]}")
    return EXIT_FAILED


def _late_positionals(parser, args, extra):
    """argparse leaves positionals that come after an option (``explain a.png --out o "a dog"``)
    unparsed; they belong to the command's own positionals, in order. Anything else is an error."""
    dest = POSITIONALS.get(getattr(args, "command", None))
    unknown = [e for e in extra if e.startswith("-") and e != "-"]
    if dest is None or unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    setattr(args, dest, list(getattr(args, dest)) + extra)


def _json_error(args, message):
    """With --json, stdout always holds JSON: on an error, {"error": message} (stderr has the line)."""
    if getattr(args, "json", False):
        import json
        try:
            json.dump({"error": one_line(message)}, sys.stdout)
            sys.stdout.write("\n")
            sys.stdout.flush()
        except (OSError, ValueError):  # stdout closed or full: nothing to tell it
            pass


def _traceback(debug):
    if debug:
        import traceback
        traceback.print_exc()


if __name__ == "__main__":
    sys.exit(main())
