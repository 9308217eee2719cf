"""Opening input files: only regular files are read (images, checkpoints, vocabularies); an image
list may also be a pipe (``open_regular(..., pipes=True)``).

    with open_regular(path, "image") as f:     # binary file object, or ClipvizError
        data = f.read()

A FIFO blocks a reader forever, a device never ends (/dev/zero) or waits for input (a tty), and a
directory cannot be read at all; each gets a message that names what it is. The file is opened
with O_NONBLOCK and checked with fstat on the open descriptor, so a path swapped for a FIFO
between a check and the open still cannot block (opening a FIFO for reading without O_NONBLOCK
waits for a writer).
"""

import os
import stat

from .errors import ClipvizError

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def kind_of(mode):
    """What an ``st_mode`` is, in words: "a regular file", "a FIFO (named pipe)", "a directory", ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((words for test, words in _KINDS if test(mode)), "not a regular file")


def not_regular(path, what, mode, pipes=False):
    """ClipvizError for ``path`` (a ``what``: "image", "checkpoint", ...) that is not a regular file
    (pipes: nor a pipe, which such input may also be)."""
    hint = f"pass the {what} file inside it" if stat.S_ISDIR(mode) else f"save the {what} as a file and pass that"
    return ClipvizError(f"{what} '{path}' is {kind_of(mode)}, not a regular file; clipviz reads {what}s "
                        f"only from regular files{' or pipes' if pipes else ''}: {hint}")


def check_regular(path, what, pipes=False):
    """Raise ClipvizError unless ``path`` is (a link to) a regular file; returns its os.stat_result.

    Only stats, never opens, so it cannot block. Missing paths raise ClipvizError too. pipes: the
    message says pipes are read too (open_regular's pipes=True).
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ClipvizError(f"{what} '{path}' does not exist; check the path and the working directory "
                           f"({os.getcwd()})") from None
    except OSError as error:
        raise ClipvizError(f"cannot read {what} '{path}': {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        raise not_regular(path, what, info.st_mode, pipes)
    return info


def open_regular(path, what, pipes=False):
    """Open ``path`` for binary reading if it is a regular file, else raise ClipvizError saying what it is.

    what: the kind of input in words ("image", "checkpoint", "vocabulary"), used in messages.
    pipes: a pipe is read too (a named pipe, or the shell's ``<(...)``, /dev/fd/N), for input
    that is read once from start to end (an image list): opened blocking, so it waits for its
    writer as ``cat`` does. Devices and folders are still refused.
    Returns a buffered binary file object (close it, e.g. with ``with``).
    """
    if pipes and _is_pipe(path):
        return _open_pipe(path, what)
    check_regular(path, what, pipes)  # a clear "does not exist" before any open
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as error:
        raise ClipvizError(f"cannot open {what} '{path}': {error.strerror or error}") from None
    try:
        mode = os.fstat(fd).st_mode  # the file actually opened, whatever the path points at now
        if not stat.S_ISREG(mode):
            raise not_regular(path, what, mode, pipes)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _is_pipe(path):
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False  # check_regular names the problem


def _open_pipe(path, what):
    """A pipe opened for blocking binary reading (a named pipe waits here for a writer); anything
    else found there once opened (swapped since the check) is refused as open_regular refuses it."""
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise ClipvizError(f"cannot open {what} '{path}': {error.strerror or error}") from None
    mode = os.fstat(handle.fileno()).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISREG(mode)):
        handle.close()
        raise not_regular(path, what, mode, pipes=True)
    return handle
