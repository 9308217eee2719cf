"""numpy's BLAS on one thread while clipviz maps explanations onto photos; the CPUs a process may use.

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
