"""clipviz.threads: numpy's BLAS on one thread while clipviz maps, the previous setting back after.

Each check runs in a fresh interpreter: a test session loads other BLAS libraries (scipy's, through
the adapters' packages) after numpy's, and threadpoolctl would list those too."""

import json
import subprocess
import sys

import numpy as np

from clipviz.maps import map_to_photo
from clipviz.preprocess import CropBox

PRELUDE = """
import json, threading
import numpy as np
from threadpoolctl import ThreadpoolController, threadpool_limits
from clipviz.threads import single_threaded_blas

def blas_threads():
    return [info["num_threads"] for info in ThreadpoolController().select(user_api="blas").info()]

seen = {}
threadpool_limits(limits=2, user_api="blas")  # a known setting to come back to
seen["before"] = blas_threads()
"""


def run_checks(body):
    script = PRELUDE + body + "\nprint(json.dumps(seen))\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["before"] and set(seen["before"]) == {2}, "numpy loaded no BLAS library threadpoolctl can set"
    return seen


def test_one_thread_inside_and_the_previous_setting_after():
    seen = run_checks("""
with single_threaded_blas():
    seen["inside"] = blas_threads()
    with single_threaded_blas():  # nested: still one, and only the outer exit restores
        seen["nested"] = blas_threads()
    seen["after nested"] = blas_threads()
seen["after"] = blas_threads()
""")
    assert set(seen["inside"]) == set(seen["nested"]) == set(seen["after nested"]) == {1}
    assert set(seen["after"]) == {2}


def test_held_by_the_main_thread_it_holds_for_every_thread():
    """A folder run holds the limit in the main thread while writer threads map: they see one
    thread; a thread entering on its own changes nothing (OpenBLAS ignores it there)."""
    seen = run_checks("""
def reader(name):
    with single_threaded_blas():
        seen[name] = blas_threads()

def in_thread(name):
    worker = threading.Thread(target=reader, args=(name,))
    worker.start()
    worker.join()

with single_threaded_blas():
    in_thread("writer while held")
in_thread("writer alone")
seen["after"] = blas_threads()
""")
    assert set(seen["writer while held"]) == {1}
    assert set(seen["writer alone"]) == set(seen["after"]) == {2}


def test_map_to_photo_leaves_the_setting_as_it_was():
    seen = run_checks("""
from clipviz.maps import map_to_photo
from clipviz.preprocess import CropBox
map_to_photo(np.ones((2, 2), np.float32), CropBox(0.0, 0.0, 4.0, 4.0, 2, 4, 4))
seen["after"] = blas_threads()
""")
    assert set(seen["after"]) == {2}


def test_map_to_photo_is_bilinear():
    """A 2×2 grid on a 4×4 photo (no crop), worked by hand: cell centres at pixel centres 1 and 3,
    edge values held beyond them."""
    grid = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    photo = map_to_photo(grid, CropBox(0.0, 0.0, 4.0, 4.0, 2, 4, 4))[0]
    # pixel centre x + 0.5 in a 4-pixel box → grid coordinate clip((x + 0.5) / 2 − 0.5, 0, 1)
    along = np.clip((np.arange(4) + 0.5) / 2 - 0.5, 0, 1)  # [0, 0.25, 0.75, 1]
    np.testing.assert_allclose(photo, 2 * along[:, None] + along[None, :], atol=1e-6)
