"""clipviz.threads: numpy's BLAS on one thread while clipviz maps, the previous setting back after."""

import threading

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController, threadpool_limits

from clipviz.maps import map_to_photo
from clipviz.preprocess import CropBox
from clipviz.threads import single_threaded_blas


def blas_threads():
    return [info["num_threads"] for info in ThreadpoolController().select(user_api="blas").info()]


@pytest.fixture
def two_blas_threads():
    if not blas_threads():
        pytest.fail("numpy loaded no BLAS library that threadpoolctl can see")
    with threadpool_limits(limits=2, user_api="blas"):  # a known setting to come back to
        yield


def test_one_thread_inside_and_the_previous_setting_after(two_blas_threads):
    with single_threaded_blas():
        assert set(blas_threads()) == {1}
        with single_threaded_blas():  # nested: still one, and the outer exit restores
            assert set(blas_threads()) == {1}
        assert set(blas_threads()) == {1}
    assert set(blas_threads()) == {2}


def test_held_by_the_main_thread_it_holds_for_every_thread(two_blas_threads):
    """A folder run holds the limit in the main thread while writer threads map: they see one
    thread; a thread entering on its own changes nothing (OpenBLAS ignores it there)."""
    seen = []

    def reader():
        with single_threaded_blas():
            seen.append(blas_threads())

    with single_threaded_blas():
        worker = threading.Thread(target=reader)
        worker.start()
        worker.join()
    assert seen == [[1] * len(seen[0])]
    worker = threading.Thread(target=reader)
    worker.start()
    worker.join()
    assert set(seen[1]) == {2} and set(blas_threads()) == {2}


def test_map_to_photo_leaves_the_setting_as_it_was_and_maps_as_bilinear(two_blas_threads):
    """A 2×2 grid on a 4×4 photo (no crop), worked by hand: cell centres at pixels 0.5 and 2.5
    (in pixel-centre coordinates 1 and 3), edge values held beyond them."""
    grid = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    photo = map_to_photo(grid, CropBox(0.0, 0.0, 4.0, 4.0, 2, 4, 4))[0]
    # pixel centre x + 0.5 in a 4-pixel box → grid coordinate clip((x + 0.5) / 2 − 0.5, 0, 1)
    along = np.clip((np.arange(4) + 0.5) / 2 - 0.5, 0, 1)  # [0, 0.25, 0.75, 1]
    expected = 2 * along[:, None] + along[None, :]
    np.testing.assert_allclose(photo, expected, atol=1e-6)
    assert set(blas_threads()) == {2}
