"""The CLI's error policy: exit codes, one-line messages safe for a terminal, and what happens
when some images of a run fail (the others are still done; the failures are listed at the end)."""

import contextlib
import io
import os
import select
import stat
import sys
from pathlib import Path

from ..errors import ClipvizError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def one_line(text):
    """``text`` on one line, control characters and lone surrogates escaped: safe to print."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in " ".join(str(text).split()))


def shorten(text, limit=80):
    """``text`` cut to about ``limit`` characters for a message, keeping its start and its end
    (a path's folder and its name): "photos/xxxx…xxxx.png"."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit // 2]}…{text[-(limit // 2):]}"


def error_line(message):
    print(f"clipviz: error: {one_line(message)}", file=sys.stderr)


class Note(UserWarning):
    """What the command did on its own that the user may want to know (not a problem): shown as
    ``clipviz: note: ...``, hidden by --quiet like every warning."""


def warning_line(message, category, filename, lineno, file=None, line=None):
    """Warnings as one ``clipviz: warning: ...`` line (a Note: ``clipviz: note: ...``), without
    Python's file and line."""
    kind = "note" if issubclass(category, Note) else "warning"
    print(f"clipviz: {kind}: {one_line(message)}", file=sys.stderr)


class StdoutFailed(Exception):
    """Standard output could not be written (its reader left, the disk is full): the user's
    environment, reported in one line (exit 2), never as a bug."""


class _GuardedStdout:
    """sys.stdout during a command: a write or flush that fails raises StdoutFailed, so the error
    is told apart from any other OSError (a file being written, a download)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        if self._stream is None:  # started with stdout closed (`clipviz ... >&-`)
            raise StdoutFailed("standard output is closed, so the results cannot be printed; the run stopped "
                               "there (send them to /dev/null instead)")
        if not text.isascii():  # a file name that is not UTF-8 (surrogate escapes) is shown as \udce9, as
            # stderr shows it, so stdout stays valid text for its reader (--json escapes it already)
            encoding = getattr(self._stream, "encoding", None) or "utf-8"
            text = text.encode(encoding, "backslashreplace").decode(encoding)
        return self._guard("write", text)

    def flush(self):
        return None if self._stream is None else self._guard("flush")

    def _guard(self, method, *args):
        try:
            return getattr(self._stream, method)(*args)
        except (OSError, ValueError) as error:  # ValueError: the stream was closed
            # point fd 1 at os.devnull, so Python's own flush at exit does not report it again
            with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
            raise StdoutFailed(
                "standard output was closed before clipviz finished writing to it (a reader such as 'head' "
                "stopped early); the run stopped there" if isinstance(error, BrokenPipeError) else
                f"cannot write to standard output ({getattr(error, 'strerror', None) or error}); the run "
                "stopped there") from error

    def check_reader(self):
        """Raise StdoutFailed now if nothing written later could arrive: stdout closed at start, or
        a pipe or socket whose reader has already gone (``| head -0``). poll() without waiting says
        so (POLLERR, or POLLHUP for a socket); a terminal, a file or a captured stream passes.
        Called before long work, so no file is written for results that cannot be printed; a
        reader that leaves later is found at the next write, as before."""
        if self._stream is None:
            self.write("")  # raises the closed-at-start message
        try:
            fd = self._stream.fileno()
            mode = os.fstat(fd).st_mode
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            return  # not a file descriptor (a notebook, pytest's capture): nothing to ask
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)) or not hasattr(select, "poll"):
            return
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
            raise StdoutFailed("standard output was closed by its reader before the run began (a reader such "
                               "as 'head' stopped early), so no result could be printed; nothing was done (send "
                               "the output to a file, or to /dev/null)")

    def isatty(self):
        return self._stream is not None and self._stream.isatty()

    def __getattr__(self, name):  # fileno, encoding, buffer ...
        return getattr(self._stream, name)


def check_stdout_reader():
    """Before long work that will print: StdoutFailed if standard output has no reader (see
    _GuardedStdout.check_reader; nothing to check outside guarded_stdout)."""
    check = getattr(sys.stdout, "check_reader", None)
    if check is not None:
        check()


@contextlib.contextmanager
def guarded_stdout():
    """Within, sys.stdout is a _GuardedStdout (also when stdout was closed at start: None)."""
    original = sys.stdout
    sys.stdout = _GuardedStdout(original)
    try:
        yield
    finally:
        sys.stdout = original


def each_image(images, work, bar=None):
    """Call ``work(index, image)`` for every image; returns the failures [(image, message)].

    One bad file does not stop a run of several: its error is kept and the run goes on. A single
    image's error, or the same error for the first five images (the problem is not the files: a
    wrong model for the method, a broken install), is raised instead. ``bar`` (clipviz.progress)
    advances once per image.
    """
    failures = []
    for index, image in enumerate(images):
        try:
            work(index, image)
        except StdoutFailed:  # the output went, not the image: the run stops
            raise
        except Exception as error:
            keep_failure(failures, image, error, index, len(images))
        if bar is not None:
            bar.update(1)
    return failures


def keep_failure(failures, image, error, index, total):
    """Add (image, message) to ``failures``, or raise ``error`` where a run must stop instead: a
    single image, or the same failure for the first five of ``total`` (``index``: 0-based count of
    images handled before this one)."""
    failures.append((image, failure_text(error)))
    if total == 1 or _same_failure_throughout(failures, index):
        raise error


def report_failures(failures, total):
    """Print the failure summary on stderr → the exit status (EXIT_FAILED if any failed)."""
    if not failures:
        return EXIT_OK
    lines = [f"clipviz: {len(failures)} of {total} images failed:"]
    lines += [f"  {one_line(Path(image).name)}: {error}" for image, error in failures]
    print("\n".join(lines), file=sys.stderr)
    return EXIT_FAILED


def _same_failure_throughout(failures, index, count=5):
    return index + 1 == count == len(failures) and len({text for _, text in failures}) == 1


def failure_text(error):
    """One line for a per-image failure: a user error's message, else 'unexpected ...'."""
    if isinstance(error, ClipvizError):
        return one_line(str(error))
    return f"unexpected {type(error).__name__}: {one_line(str(error))[:200]} (please report)"
