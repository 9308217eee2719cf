"""Explaining many image files: decode in worker processes, explain in batches, write in threads.

    for done in explain_files(model, paths, prompts, write=save, workers=2, batch_size=8):
        done.index, done.path, done.explanation, done.files, done.error      # in the order of paths

    worker processes (torch.utils.data.DataLoader): stat, load_image, preprocess_image per file;
        a file that cannot be read becomes an item carrying its error (the run goes on)
    main process: good items grouped into batches ─► explanation.record_pixels (the model only);
        the prompts' text embedding is computed once per run (methods that read no text gradient)
    writer threads (concurrent.futures): per image, its maps on the photo
        (explanation.explanations_from) and write(index, explanation) → files; at most ``pending``
        images wait there, so memory stays bounded however long the list is

Results come back in the order of ``paths`` whatever finishes first. A batch that fails is
retried image by image, so one bad photo (too large for its maps, say) fails alone; a batch that
runs out of memory is halved, as in ``clipviz.explain``. The maps equal ``clipviz.explain`` on
each file alone up to float32 rounding (batched matrix products), ≤ 1e-5.
"""

import pickle
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from types import SimpleNamespace

import numpy as np
import torch

from .adapters import adapt
from .errors import ClipvizError
from .explanation import _free_memory, _out_of_memory, check_contrast, explanations_from, prepare_query, record_pixels
from .manifest import input_identity, output_entry
from .maps import peak_xy
from .methods import Method, default_method, get_method
from .pixels import notice_unseen_photos
from .prompts import encode_prompts
from .preprocess import load_image, preprocess_image
from .signals import ignore_stop_signals
from .threads import single_threaded_blas, usable_cpus


@dataclass
class Done:
    """One image of the run: its Explanation and the files written, or the error that stopped it.

    identity: {"size", "mtime_ns"} of the file as it was read; outputs: [{"path", "bytes", "sha256"}]
    of the files written (clipviz.manifest); peaks: per prompt, maps.peak_xy of its map on the photo."""

    index: int
    path: str
    explanation: object = None
    files: list = field(default_factory=list)
    error: BaseException = None
    identity: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)
    peaks: list = None


def default_workers(local_processes=1):
    """Decoding workers per process: the CPUs this process may run on, shared by the processes
    of this machine (torchrun's LOCAL_WORLD_SIZE)."""
    return max(1, usable_cpus() // max(1, local_processes))


class ImageFiles(torch.utils.data.Dataset):
    """Files → dicts {index, path, identity, photo uint8 [H, W, 3], pixels float32 [3, S, S], box}
    ready for the model, or {index, path, identity, error} when the file cannot be read.
    crop: the model's rule (False: resized to S × S without a crop, as SigLIP). photos=False sends
    the photo's size instead of its pixels (``photo_size`` (H, W, 3)): a run that draws nothing
    on the photo moves 4 × S² bytes an image between processes instead of 3 × H × W."""

    def __init__(self, paths, indices, size, crop=True, photos=True):
        self.paths, self.indices, self.size, self.crop, self.photos = paths, indices, size, crop, photos

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, position):
        index = self.indices[position]
        path = self.paths[index]
        item = {"index": index, "path": path, "identity": input_identity(path)}
        try:
            photo = load_image(path)
            pixels, box = preprocess_image(photo, self.size, crop=self.crop)
        except Exception as error:
            return {**item, "error": _portable(error)}
        # numpy, not tensors: a tensor crosses to the main process as a shared-memory file
        # descriptor, handed over by a helper thread in the worker that prints a traceback when
        # the main process stops mid-handover (SIGTERM to the process group). Pickled bytes cannot.
        kept = {"photo": photo} if self.photos else {"photo_size": photo.shape}
        return {**item, **kept, "pixels": pixels.numpy(), "box": box}


def _photo(item):
    """The item's photo, or for a size alone a black stand-in of that size that takes no memory
    (a zero-strided view): the maps are mapped onto it, nothing is drawn on it."""
    return item["photo"] if "photo" in item else np.broadcast_to(np.zeros((), np.uint8), item["photo_size"])


def _unchanged(item):
    """The DataLoader's convert step (batch_size=None): leave the item's numpy arrays as they are."""
    return item


def explain_files(model, paths, prompts, method=None, *, indices=None, against=None, options=None, write=None,
                  batch_size=8, workers=0, threads=1, pending=None, photos=True):
    """Explain image files in batches; yields a ``Done`` per image, in the order of ``indices``.

    paths: image file paths; indices: which of them to explain (default all; a rank's shard, or
    what a resumed run has left); prompts, method, against, options: as ``clipviz.explain``;
    write(index, explanation) → [paths written], run in ``threads`` writer threads (None: write
    nothing); workers: decoding processes (0: decode in this process); pending: images waiting
    for the writers at most (default 2 batches). A write that raises fails that image alone.
    photos=False: ``explanation.photo`` is a black stand-in of the photo's size (ImageFiles), for a
    run whose ``write`` draws nothing on it (maps as files, a manifest): the decoding workers then
    send no photo to this process.
    """
    adapter = adapt(model)
    if paths:
        notice_unseen_photos(adapter.model, paths[:1])  # files are never synth's own scene arrays
    method = default_method(adapter.model) if method is None else method
    chosen = method if isinstance(method, Method) else get_method(method)
    options = dict(options or {})
    chosen.check_options(options)
    check_contrast(chosen, against)
    query = prepare_query(adapter, prompts, against)
    # the prompts' side (their embedding; text-token relevance's EOT rows) once for the whole run
    indices = list(range(len(paths))) if indices is None else list(indices)
    query = replace(query, text=encode_prompts(adapter, query.ids, chosen.needs(adapter, options), images=len(indices)))
    size = max(1, int(batch_size))
    processes = min(workers, len(indices))
    # a whole batch in flight (DataLoader's default is 2 items a worker): the workers decode the
    # next batch while the model runs, instead of the model waiting for half of it each time
    ahead = {"prefetch_factor": max(2, -(-size // processes))} if processes else {}
    loader = torch.utils.data.DataLoader(ImageFiles(paths, indices, adapter.input_resolution, adapter.crop, photos), batch_size=None,
                                         num_workers=processes, pin_memory=False, collate_fn=_unchanged,
                                         worker_init_fn=ignore_stop_signals, **ahead)
    waiting = deque()
    limit = pending or 2 * size
    # numpy's BLAS on one thread for the run: set here, in the caller's thread, it holds for the
    # writer threads too (clipviz.threads), whose maps would otherwise wake a BLAS thread per core
    with single_threaded_blas(), ThreadPoolExecutor(max(1, threads)) as pool:
        try:
            batch = []  # items in order, unreadable ones among them; explained once `size` are good
            for item in loader:
                batch.append(item)
                if sum("error" not in i for i in batch) == size:
                    waiting += _in_order(batch, _explain_batch(adapter, [i for i in batch if "error" not in i],
                                                               query, chosen, options, write, pool))
                    batch = []
                while len(waiting) > limit or (waiting and waiting[0].done()):
                    yield waiting.popleft().result()
            good = [i for i in batch if "error" not in i]
            waiting += _in_order(batch, _explain_batch(adapter, good, query, chosen, options, write, pool) if good else [])
            while waiting:
                yield waiting.popleft().result()
        finally:  # stopped early (Ctrl-C, an error): drop what has not started, finish what has
            for future in waiting:
                future.cancel()


def _explain_batch(adapter, items, query, method, options, write, pool):
    """Futures of Done for a batch of loaded items: explained together, or halved on running out
    of memory, or one by one when the batch fails (so that one bad photo fails alone)."""
    try:
        recording = _record_items(adapter, items, query, method, options)
    except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as error:
        if len(items) == 1 or not _out_of_memory(error):
            return _one_by_one(adapter, items, query, method, options, write, pool, error)
        _free_memory()
        half = len(items) // 2
        return _explain_batch(adapter, items[:half], query, method, options, write, pool) + \
            _explain_batch(adapter, items[half:], query, method, options, write, pool)
    except Exception as error:
        return _one_by_one(adapter, items, query, method, options, write, pool, error)
    return [pool.submit(_explain_and_write, write, item, _one_image(recording, b), method, options)
            for b, item in enumerate(items)]


def _in_order(items, explained):
    """Futures of Done for ``items`` in their order: the explained ones' futures (in order), an
    unreadable item's failure in its place."""
    explained = iter(explained)
    return [_finished(Done(i["index"], i["path"], error=i["error"], identity=i["identity"])) if "error" in i
            else next(explained) for i in items]


def _one_by_one(adapter, items, query, method, options, write, pool, error):
    if len(items) == 1:
        item = items[0]
        return [_finished(Done(item["index"], item["path"], error=error, identity=item["identity"]))]
    return [future for item in items for future in _explain_batch(adapter, [item], query, method, options, write, pool)]


def _record_items(adapter, items, query, method, options):
    """The model's part for a batch of loaded items → a Recording whose tensors are on the host and
    whose records (on the device, large) are let go: only their EOT and text-end positions are kept."""
    recording = record_pixels(adapter, [_photo(i) for i in items], torch.from_numpy(np.stack([i["pixels"] for i in items])), [i["box"] for i in items],
                              [i["path"] for i in items], query, method, options)
    on_host = {f.name: _host(getattr(recording.output, f.name)) for f in fields(recording.output)}
    return replace(recording, records=SimpleNamespace(eot=recording.records.eot, text_end=recording.records.text_end), cosine=recording.cosine.cpu(),
                   logits=recording.logits.cpu(), output=replace(recording.output, **on_host))


def _one_image(recording, b):
    """Image ``b`` of a host-side Recording as a Recording of one image (views, no copies)."""
    output = recording.output
    sliced = {f.name: getattr(output, f.name)[b:b + 1] for f in fields(output) if torch.is_tensor(getattr(output, f.name))}
    return replace(recording, photos=recording.photos[b:b + 1], boxes=recording.boxes[b:b + 1],
                   sources=recording.sources[b:b + 1], cosine=recording.cosine[b:b + 1],
                   logits=recording.logits[b:b + 1], output=replace(output, **sliced))


def _host(value):
    return value.detach().cpu() if torch.is_tensor(value) else value


def _explain_and_write(write, item, one, method, options):
    """In a writer thread: the image's maps on its photo (explanation.explanations_from), then its
    files. A failure of either fails this image alone."""
    done = Done(item["index"], item["path"], identity=item["identity"])
    try:
        done.explanation = explanations_from(one, one.output, method, options)[0]
        done.peaks = [peak_xy(m) for m in done.explanation.maps]  # a pass over each map: not on the model's thread
    except Exception as error:
        done.error = error
        return done
    explanation = done.explanation
    try:
        done.files = list(write(item["index"], explanation)) if write is not None else []
        done.outputs = [output_entry(f) for f in done.files]  # hashed here, off the model's thread
    except Exception as error:
        done.error = error
    return done


def _finished(done):
    """A future that already holds ``done`` (keeps failures in line with the writers' results)."""
    from concurrent.futures import Future
    future = Future()
    future.set_result(done)
    return future


def _portable(error):
    """``error`` if it survives pickling (a worker sends it to the main process), else a
    RuntimeError with its type and text."""
    if isinstance(error, ClipvizError):
        return ClipvizError(str(error))
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
