"""The manifest of a folder run: JSON Lines, one record per image, appended and flushed as it goes.

    {"index": 3, "image": "photos/b.jpg", "size": 48211, "mtime_ns": 1733..., "status": "done",
     "method": "relevance", "prompts": [{"prompt": "a dog", "score": 0.231, "prob": 0.61,
     "peak_xy": [120, 88]}], "outputs": [{"path": "out/b--a-dog-1a2b3c.png", "bytes": 90211,
     "sha256": "..."}], "error": null}

``index`` is the image's place in the run's full list (the order records are merged in); ``size``
and ``mtime_ns`` identify the input as it was read; ``status`` is "done" or "failed" (then
``error`` says why). A record is written only after the image's outputs are published, so a
crash (even kill -9) loses at most the images in flight: their records are missing and a
``--resume`` run explains them. The last record for an image wins; a torn last line (the process
killed mid-write) is skipped on reading, any other line that is not a record with a warning.

Under torchrun each rank appends to its own part, ``<stem>.rank<r><suffix>``, and rank 0 merges
the parts into the manifest after every rank has finished (clipviz.distributed).
"""

import contextlib
import errno
import json
import os
import stat
from pathlib import Path

from .errors import ClipvizError
from .files import kind_of
from .outputs import disk_full, output_sha256
from .suffixes import FIGURE_SUFFIXES


def part_path(path, rank):
    """Rank ``rank``'s part of manifest ``path``: manifest.jsonl → manifest.rank1.jsonl."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def existing_parts(path):
    """Every part of manifest ``path`` on disk (from any world size), sorted by rank."""
    path = Path(path)
    found = path.parent.glob(f"{path.stem}.rank*{path.suffix}")
    ranks = [(p, p.name[len(path.stem) + 5:len(p.name) - len(path.suffix)]) for p in found]
    return [p for p, r in sorted(((p, int(r)) for p, r in ranks if r.isdigit()), key=lambda pr: pr[1])]


def read(path):
    """The records of manifest ``path`` and of its parts, in file order; [] when there is none."""
    return [r for file in [Path(path)] + existing_parts(path) if file.exists() for r in read_file(file)]


def input_identity(path):
    """{"size", "mtime_ns"} of an input file as it is now (None values when it cannot be stat'ed)."""
    try:
        info = os.stat(path)
    except OSError:
        return {"size": None, "mtime_ns": None}
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


def output_entry(path):
    """{"path", "bytes", "sha256"} of a published output file (its digest from the publishing,
    when this process wrote it and it is unchanged: outputs.output_sha256)."""
    return {"path": str(path), "bytes": os.path.getsize(path), "sha256": output_sha256(path)}


def record(done, error_text=None, settings=None):
    """The manifest record of one image of a run (a clipviz.folder.Done); error_text: the
    one-line message of its failure; settings: what decides the run's results and files
    (done_images compares them when the run is resumed)."""
    entry = {"index": done.index, "image": done.path, "size": done.identity.get("size"),
             "mtime_ns": done.identity.get("mtime_ns"), "settings": settings}
    exp = done.explanation
    if done.error is not None or exp is None:
        return {**entry, "status": "failed", "method": None, "prompts": [], "outputs": [],
                "error": error_text or str(done.error)}
    from .maps import peak_xy
    peaks = done.peaks if done.peaks is not None else [peak_xy(m) for m in exp.maps]
    prompts = [{"prompt": p, "score": float(s), "prob": float(q), "peak_xy": k}
               for p, s, q, k in zip(exp.prompts, exp.scores, exp.probs, peaks)]
    return {**entry, "status": "done", "method": exp.method, "prompts": prompts, "outputs": done.outputs,
            "error": None}


def recorded_path(record, path):
    """A path ``record`` lists (its image, an output) as this process can open it: a relative one
    is taken against the folder the recording run worked in (its settings' ``cwd``; records
    without one: the current folder), so a run resumed from another folder finds the same files."""
    folder = (record.get("settings") or {}).get("cwd")
    return os.path.join(folder, path) if isinstance(folder, str) and not os.path.isabs(path) else path


def verified(record):
    """True if ``record`` says done, its input is unchanged (size, mtime) and every output it lists
    still exists with the same size and sha256."""
    if record.get("status") != "done":
        return False
    now = input_identity(recorded_path(record, record["image"]))
    if now["size"] is None or (now["size"], now["mtime_ns"]) != (record.get("size"), record.get("mtime_ns")):
        return False
    for output in record.get("outputs") or []:
        try:
            path = recorded_path(record, output["path"])
            if os.path.getsize(path) != output["bytes"] or output_entry(path)["sha256"] != output["sha256"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def _check_settings(path, record, settings, defaulted=()):
    """Refuse to resume manifest ``path`` if ``record`` was written with other settings than
    ``settings`` (JSON-normalised): its image would be skipped with the answer to another question.
    Records without settings are not compared.

    The method is compared as the method run: a record whose settings leave it open (the model's
    default, for a model known only once loaded) is taken at the method it records having run;
    a resuming run that leaves it open (None) is compared once it has loaded the model and knows
    it. defaulted: the keys the resuming run did not give (the message says the value is a default).
    A flag left out equals its default spelled out (_resolved): ``--format png`` continues a run
    that left --format out."""
    theirs = record.get("settings")
    if theirs is None or theirs == settings:
        return
    open_keys = {"cwd"}  # where a run worked: relative paths are compared as the files they name
    if theirs.get("method") is None:  # the default, resolved when that run loaded the model
        theirs = {**theirs, "method": record.get("method")}  # None for a failed image: not known
    if settings.get("method") is None or theirs.get("method") is None:
        open_keys.add("method")
    method = settings.get("method") or theirs.get("method")  # an open one is taken as the other's
    theirs, settings = _resolved(theirs, method), _resolved(settings, method)
    changed = [f"{_flag(key)} {_shown(theirs.get(key))} → {_shown(settings.get(key))}"
               f"{f' (the default: {_flag(key)} not given)' if key in defaulted else ''}"
               for key in sorted(set(theirs) | set(settings)) if key not in open_keys and theirs.get(key) != settings.get(key)]
    if not changed:
        return
    raise ClipvizError(f"--resume: the manifest {path} records a run with other settings ({'; '.join(changed)}): "
                       "repeat that run's command to continue it, or start a new --manifest (or --force without "
                       "--resume to redo everything)")


def _resolved(settings, method):
    """``settings`` with the defaults of flags left out (None) filled in as the run resolves them
    (clipviz.cli.plan, clipviz.cli.explain.method_and_options): --format the figure file's suffix
    (--out x.pdf) or png; --start-layer ``method``'s own default (relevance -1, rollout 0 ...),
    0 with --layers, for a method known and taking one. --out is made absolute (against the
    folder the run worked in, its ``cwd``; settings without one: the current folder)."""
    resolved = dict(settings)
    if isinstance(resolved.get("out"), str):  # `out` and `/home/me/out` are one folder, also from another folder
        folder = resolved.get("cwd") if isinstance(resolved.get("cwd"), str) else os.getcwd()
        resolved["out"] = os.path.normpath(os.path.join(folder, resolved["out"]))
    if resolved.get("format") is None:
        suffix = os.path.splitext(resolved.get("out") or "")[1].lower()
        resolved["format"] = suffix.lstrip(".") if suffix in FIGURE_SUFFIXES else "png"
    if resolved.get("start_layer") is None and isinstance(method, str):
        from .methods import get_method
        with contextlib.suppress(ClipvizError):  # an unknown method: compared as recorded
            options = get_method(method).options
            if "start_layer" in options:
                resolved["start_layer"] = 0 if resolved.get("layers") else options["start_layer"]
    return resolved


def _flag(key):
    return "prompts" if key == "prompts" else "--" + key.replace("_", "-")


def _shown(value):
    """A setting as the message shows it: an option left out is "(not given)", not None."""
    return "(not given)" if value is None or value is False else repr(value)


def done_images(path, settings=None, outputs=None, defaulted=()):
    """Absolute paths of the images that manifest ``path`` (with its parts) records as done and
    verified: ``photos/a.png`` and ``/home/me/photos/a.png`` are one image (relative paths are
    taken against the folder the recording run worked in, recorded_path).

    settings: the resuming run's (a JSON-ready dict: model, method, prompts, outputs ...); a record
    written with other settings raises a ClipvizError naming what changed (_check_settings;
    defaulted: the keys the run left to their defaults). outputs: a set that receives every
    output path the records list (the run's own files, which a resume may replace when they no
    longer match). One read of the file."""
    if settings is not None:
        settings = json.loads(json.dumps(settings))  # tuples become lists, as in the file
    last = {}
    for record in read(path):
        if settings is not None:
            _check_settings(path, record, settings, defaulted)
        last[os.path.abspath(recorded_path(record, record["image"]))] = record
        listed = record.get("outputs")
        if outputs is not None and isinstance(listed, list):
            outputs.update(recorded_path(record, o["path"]) for o in listed
                           if isinstance(o, dict) and isinstance(o.get("path"), str))
    return {image for image, record in last.items() if verified(record)}


def check_settings(path, settings, defaulted=()):
    """done_images' settings check alone, without verifying any record's files: for a resume whose
    method became known only once the model loaded (clipviz.cli.explain), after done_images has
    read and verified the manifest once. The file's damaged lines were reported by that first read."""
    import warnings

    settings = json.loads(json.dumps(settings))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        records = read(path)
    for record in records:
        _check_settings(path, record, settings, defaulted)


class Writer:
    """Appends records to one manifest file, one line each, flushed at once.

    resume=True appends after what is there (ending a torn last line first); otherwise the file
    is started afresh. The file is locked (fcntl.lockf, exclusive) before anything in it changes,
    so a second run on the same manifest is refused instead of replacing this run's records
    (platforms without fcntl: no lock). A POSIX lock, not flock: forked decoding workers do not
    inherit it, so a run killed with -9 frees it at once; it is released when this process closes
    any descriptor of the file, so nothing here reopens it while writing. A link at ``path`` is replaced, not followed, unless
    resuming (the CLI refuses links without --force). A failed write (a full disk) raises one
    ClipvizError naming the manifest and what to do; close() after it does not raise again.
    """

    def __init__(self, path, resume):
        self.path, self.failed = Path(path), False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not resume and self.path.is_symlink():
                self.path.unlink()  # --force replaces the link itself, never its target (clipviz.outputs)
            # never truncated on opening: a run holding the lock may be writing it
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NONBLOCK", 0), 0o666)
        except OSError as error:
            raise ClipvizError(f"cannot write the manifest {str(self.path)!r}: {error.strerror or error}; "
                               "choose another --manifest") from None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise ClipvizError(f"--manifest {self.path} is {kind_of(mode)}, not a regular file: give a file name")
            _lock(fd, self.path)
            if not resume:
                os.ftruncate(fd, 0)
            elif _torn_end(fd):
                os.write(fd, b"\n")  # end a torn last line (a kill mid-write)
            self.handle = os.fdopen(fd, "w", encoding="utf-8")
        except OSError as error:
            os.close(fd)
            raise self._failure(error) from None
        except BaseException:
            os.close(fd)
            raise

    def write(self, record):
        try:
            self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.handle.flush()
        except OSError as error:
            raise self._failure(error) from None

    def close(self):
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except OSError as error:
            if not self.failed:  # the write that failed has said so already
                raise self._failure(error) from None
        finally:
            with contextlib.suppress(OSError):  # the file is closed even when the flush fails
                self.handle.close()

    def _failure(self, error):
        """The one message for a manifest that cannot be written: the user's disk, not a bug."""
        self.failed = True
        todo = "free space on its disk" if disk_full(error) else "fix that"
        return ClipvizError(f"cannot write the manifest {str(self.path)!r}: {error.strerror or error}; {todo}, then "
                            "run the same command with --resume (the images recorded so far are kept)")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _lock(fd, path):
    """An exclusive lock on the open manifest ``fd``, held until it is closed; ClipvizError if
    another process holds it. File systems without locks (ENOLCK, EOPNOTSUPP) go unlocked."""
    try:
        import fcntl
    except ImportError:  # Windows
        return
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES):  # lockf's "held by another process"
            raise ClipvizError(f"another clipviz run is writing the manifest {path}: wait for it to finish, or "
                               "give this run another --manifest") from None
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise


def _torn_end(fd):
    """True if the open file ``fd`` (readable) has bytes and does not end with a newline."""
    if os.lseek(fd, 0, os.SEEK_END) == 0:
        return False
    os.lseek(fd, -1, os.SEEK_END)
    return os.read(fd, 1) != b"\n"


def merge(path, resume):
    """Rank 0, after every rank finished: the parts of ``path`` → one manifest at ``path``, ordered
    by index (with ``resume``: after the records already there); the parts are then removed."""
    from .outputs import write_atomically

    parts = existing_parts(path)
    earlier = []
    if resume and Path(path).exists():
        earlier = read_file(path)
    new = sorted((r for part in parts for r in read_file(part)), key=lambda r: r.get("index", 0))
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in earlier + new)
    write_atomically(path, lambda handle: handle.write(lines.encode("utf-8")))
    for part in parts:
        part.unlink()
    return Path(path)


def read_file(path):
    """The records of one manifest file (no parts), in file order.

    Skipped: a torn line (a record cut short by a kill mid-write: the last line without its
    newline, or a record's prefix that a resume has since ended with one) without a word;
    any other line that is not a JSON object naming an image (hand-edited, damaged) with one
    warning naming the file and the line numbers: those images count as not done."""
    import warnings

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ClipvizError(f"cannot read the manifest {str(path)!r}: {getattr(error, 'strerror', None) or error}; "
                           "start over without --resume (with --force)") from None
    lines, ended = text.splitlines(), text.endswith("\n")
    records, damaged = [], []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("image"), str):
            records.append(record)
        elif line.strip() and not _torn(line, unended=number == len(lines) and not ended):
            damaged.append(number)
    if damaged:
        numbers = ", ".join(map(str, damaged[:10])) + (f" and {len(damaged) - 10} more" if len(damaged) > 10 else "")
        warnings.warn(f"the manifest {path}: line{'s' if len(damaged) > 1 else ''} {numbers} "
                      f"{'are' if len(damaged) > 1 else 'is'} not a record (a JSON object naming an image) and "
                      "skipped; an image recorded only there counts as not done and is explained again")
    return records


def _torn(line, unended):
    """True for what a kill mid-write leaves of a record: a last line without its newline, or a
    prefix of a record (records start with '{"index": ') that a later resume has ended with one."""
    start = '{"index": '
    return unended or line.startswith(start) or start.startswith(line)
