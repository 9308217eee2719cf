"""numpy's BLAS on one thread while clipviz maps explanations onto photos; PyTorch's OpenMP threads
sleeping when they wait (passive_openmp_waits, the CLI); the CPUs a process may use.

    with single_threaded_blas():     # explain, a folder run for its whole length, map_to_photo
        row_weights @ grid @ col_weights.T

Mapping a patch grid onto a photo is two small matrix products per map (clipviz.maps). numpy's
OpenBLAS runs them on every core and its threads busy-wait between calls; next to PyTorch's
threads (the model, decoding workers) they only take turns on the same cores: a 360×480 map took
10 ms with OpenBLAS's threads and 0.4 ms on one (2 cores, right after a ViT-B/16 forward). So
clipviz asks numpy's BLAS for one thread while it maps, through threadpoolctl (which finds
OpenBLAS, MKL or BLIS in any numpy build), and gives the previous setting back after. PyTorch's
own BLAS and threads are not touched.

The setting is the process's, and OpenBLAS takes it from the main thread only (a call from another
thread is ignored), so it is set there: a folder run holds it while its writer threads map, and
inside other threads this does nothing. Nested uses share one limit: the outermost restores it.
"""

import contextlib
import os
import sys
import threading

_state = {"depth": 0, "limiter": None, "controller": None}


@contextlib.contextmanager
def single_threaded_blas():
    """While active, numpy's BLAS libraries use one thread (see the module docstring)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _state["depth"] == 0:
        _state["limiter"] = _blas().limit(limits=1)
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0:
            _state["limiter"].restore_original_limits()
            _state["limiter"] = None


def _blas():
    """threadpoolctl's handle on the BLAS libraries loaded in this process (found once: ~7 ms)."""
    if _state["controller"] is None:
        from threadpoolctl import ThreadpoolController
        _state["controller"] = ThreadpoolController().select(user_api="blas")
    return _state["controller"]


def usable_cpus():
    """The CPUs this process may run on (its affinity: taskset, Slurm, containers), or the machine's
    count where the platform cannot say (macOS). Sizes decoding workers and writer threads."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# the user's own choice of how OpenMP threads wait (GNU libgomp, Intel's libiomp): kept as given
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def passive_openmp_waits(environ=None):
    """Ask OpenMP, which runs PyTorch's CPU threads, to put a waiting thread to sleep at once instead
    of spinning; → True when set here. Call before torch is imported: OpenMP reads it as it loads.

    For a process whose model shares the cores with other busy threads (a CLI folder run: its own
    decoding workers and writer threads, or anything else on the machine). PyTorch splits each
    operation among its threads and every thread waits for the slowest; a spinning thread takes a
    core that the one it waits for (descheduled behind a writer) needs. With 2 threads on 2 shared
    cores the model took 4-5x its CPU time that way (py-spy, /proc/stat; docs/performance.md).
    The same threads split the same work, so results do not change. Left alone when torch is
    loaded already or the environment names a policy (WAIT_SETTINGS).
    """
    environ = os.environ if environ is None else environ
    if "torch" in sys.modules or any(name in environ for name in WAIT_SETTINGS):
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
