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


WAITING = """
import json, os, sys, threading, time
from clipviz.threads import passive_openmp_waits
applied = passive_openmp_waits()
import torch
torch.set_num_threads(2)
x = torch.ones(1 << 20)

def sleeps():  # voluntary context switches of the threads other than this one: OpenMP's helpers
    total = 0
    for task in os.listdir("/proc/self/task"):
        if int(task) != threading.get_native_id():
            with open(f"/proc/self/task/{task}/status") as status:
                total += sum(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt_switches"))
    return total

(x + x).sum()  # OpenMP's threads start
before = sleeps()
for _ in range(200):
    (x + x).sum()  # split among 2 threads, then a short gap in Python
    start = time.perf_counter()
    while time.perf_counter() - start < 5e-5:
        pass
print(json.dumps({"applied": applied, "policy": os.environ.get("OMP_WAIT_POLICY"), "sleeps": sleeps() - before}))
"""


def waiting(env_extra):
    import os
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    result = subprocess.run([sys.executable, "-c", WAITING], capture_output=True, text=True, timeout=120,
                            env={**env, "OMP_NUM_THREADS": "2", **env_extra})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_passive_waits_put_openmp_threads_to_sleep_unless_the_user_chose():
    """Set before torch loads, OpenMP's helper thread sleeps after each split operation (a
    voluntary context switch each) instead of spinning through the gap; a policy in the
    environment is the user's and stays."""
    import os
    if len(os.sched_getaffinity(0)) < 2:
        import pytest
        pytest.skip("needs 2 CPUs for 2 OpenMP threads")
    passive = waiting({})
    assert passive["applied"] and passive["policy"] == "PASSIVE" and passive["sleeps"] >= 150
    chosen = waiting({"OMP_WAIT_POLICY": "ACTIVE"})
    assert not chosen["applied"] and chosen["policy"] == "ACTIVE" and chosen["sleeps"] < 50


def test_the_explain_command_asks_for_passive_waits_before_torch_loads(tmp_path):
    import os

    from PIL import Image
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(photo)
    script = ("import os, sys; from clipviz.cli import main; "
              f"status = main(['explain', {str(photo)!r}, 'a dog', '--model', 'synth-vit-t16', '--out', "
              f"{str(tmp_path / 'out')!r}, '--quiet']); print(status, os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.stdout.split() == ["0", "PASSIVE"], result.stderr
