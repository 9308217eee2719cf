"""Termination signals as an exception, so every clean-up path runs for them as for Ctrl-C.

    with raising_on_termination():    # the CLI's whole run; explain_video's; each atomic write
        long_work()                   # SIGTERM / SIGHUP here raise Terminated

Ctrl-C raises KeyboardInterrupt, which runs every ``finally`` and ``except BaseException`` on
the way out, so temporary files are removed. SIGTERM (``kill``, a batch scheduler's time limit)
and SIGHUP (the terminal closed) kill Python outright by default and leave half-written temporary
files behind. While the context is active they raise ``Terminated`` instead: a SystemExit whose
code is 128 + the signal number, the shell's convention for "killed by signal N", so an uncaught
one still ends the process with that status and prints no traceback.
"""

import contextlib
import signal
import threading

_NAMES = ("SIGTERM", "SIGHUP")  # SIGHUP does not exist on Windows


class Terminated(SystemExit):
    """Raised in the main thread when SIGTERM or SIGHUP arrives inside raising_on_termination.

    code: 128 + signal number (143 for SIGTERM, 129 for SIGHUP); name: "SIGTERM" or "SIGHUP"."""

    def __init__(self, number):
        super().__init__(128 + number)
        self.name = signal.Signals(number).name


def _raise(number, frame):
    raise Terminated(number)


@contextlib.contextmanager
def raising_on_termination():
    """While active, SIGTERM and SIGHUP raise Terminated in the main thread; the previous handlers
    are restored after. A handler the program installed itself (anything but the default) is left
    alone, and outside the main thread (where Python cannot install handlers) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for name in _NAMES:
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) is signal.SIG_DFL:
            previous[number] = signal.signal(number, _raise)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def ignore_stop_signals(worker_id=None):
    """Ignore SIGINT, SIGTERM and SIGHUP in a child process (a DataLoader ``worker_init_fn``).

    Sent to the whole process group (Ctrl-C in a terminal, timeout, kill -- -PGID, Slurm), they
    reach the workers too. A worker stopped by SIGTERM or SIGHUP makes the main process see
    "DataLoader worker killed" instead of the signal it handles cleanly (Terminated); one stopped
    by SIGINT (PyTorch's workers end their loop on KeyboardInterrupt) waits at exit for its
    queue's pipe to drain, which the stopping main process never reads, and the main process
    waits for it: the run hung. Ignoring them leaves the stop to the main process, which shuts the
    workers down itself; a worker whose main process died ends by PyTorch's own watchdog."""
    for name in ("SIGINT",) + _NAMES:
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, signal.SIG_IGN)
