"""Writing output files safely: the one home for every command, figure and overlay.

    path = check_target("out/dog.png", FIGURE_SUFFIXES, protect=["dog.png"])   # before any work
    write_atomically(path, lambda handle: figure.savefig(handle, format="png"))

Rules (issue 13 builds on them): a planned path has an allowed suffix, is not a folder, is
never one of the inputs (compared as the same file on disk, so ``./a.png``, ``a.png`` and a
link to it are all the input), and lies in a writable folder. Planned paths are unique before
anything is written. Files appear atomically: they are written to a hidden temporary file
beside the target and renamed over it, so a reader never sees half a file; the temporary file
is removed on any error, on Ctrl-C and on SIGTERM/SIGHUP (clipviz.signals). Without ``force`` an existing file
(or a link, followed or not) is never replaced, unless clipviz wrote it itself and it is
unchanged since (see ``is_own_output``): so the same command run twice replaces its own earlier
outputs, while a file of the user's needs ``force``. With ``force`` the link itself is replaced,
never what it points to.
"""

import contextlib
import errno
import hashlib
import json
import mimetypes
import os
import re
import tempfile
import threading
import unicodedata
from collections import OrderedDict
from pathlib import Path

from .errors import ClipvizError
from .signals import raising_on_termination

FORCE_HINT = "pass --force to replace it or choose another --out"  # the CLI's words
OVERWRITE_HINT = "pass overwrite=True to replace it, or choose another path"  # the API's (save, write_report)
SLUG_LENGTH = 60  # characters of readable text in a file name made from a prompt
# clipviz remembers the files it wrote, one record per output folder kept in its cache
# (<cache>/outputs/<sha1 of the folder's real path>), so output folders hold only the outputs:
# lines "<sha256>  <name>", appended, the last line for a name wins (a name holding "\n", or
# starting with '"', is written as a JSON string). A file is clipviz's own while its bytes still
# match its record.
OUTPUT_RECORDS = "outputs"


class NoSpace(ClipvizError):
    """An output could not be written for want of space (ENOSPC, EDQUOT): every later file on that
    disk would fail too, so a run stops at the first (clipviz.cli.explain)."""


def slug(text, length=SLUG_LENGTH):
    """A file-name-safe form of ``text``: lowercase ascii [a-z0-9-], at most ``length``
    characters, plus '-' and a 6-hex hash of the whole text (distinct texts, distinct names).

    slug("../../x") == "x-<hash>": no separator or dot survives, so it cannot leave a folder.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    body = re.sub(r"[^a-z0-9]+", "-", ascii_text).strip("-")[:length].strip("-") or "x"
    digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:6]
    return f"{body}-{digest}"


def distinct_names(names):
    """``names`` with repeats told apart, order kept: the second "x" becomes "x-2", the third "x-3".

    For file-name parts made from different texts that still coincide (two prompts whose slugs
    share body and 6-hex hash; a hash collision can be crafted). A slug never ends in "-<digit>"
    after its hash, so a suffixed name cannot meet another slug."""
    seen, out = {}, []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def check_target(path, suffixes, protect=()):
    """Check an output path before anything is drawn → Path, creating nothing. Raises ClipvizError
    for a bad suffix, a folder, a protected file (an input), or a folder that cannot be created or
    written (check_folder)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ClipvizError(f"the output path must be a file name, got {path!r}")
    path = Path(path).expanduser()
    if path.is_dir():
        raise ClipvizError(f"{str(path)!r} is a folder: give a file name ending in {', '.join(suffixes)}")
    if path.suffix.lower() not in suffixes:
        raise ClipvizError(f"cannot save {str(path)!r}: unknown file type {path.suffix or '(none)'!r}; "
                           f"use a name ending in {', '.join(suffixes)}")
    other = (protect if isinstance(protect, Protected) else Protected(protect)).input_at(path)
    if other is not None:
        raise ClipvizError(f"refusing to write {str(path)!r}: it is the input image {str(other)!r} (an input "
                           "photo is never overwritten); choose another output name")
    check_folder(path.parent)  # created by write_atomically, with the file
    return path


def require_folder(path):
    """Refuse (ClipvizError) a file ``path`` whose folder does not exist, as matplotlib's savefig
    and PIL's save do: the API's own savers write only into folders that are there, so a typo in a
    folder name is not silently made a folder. (The CLI's --out makes its folder: write_atomically.)"""
    folder = Path(path).expanduser().parent
    if not os.path.lexists(folder):
        raise ClipvizError(f"cannot save {str(path)!r}: the folder {str(folder)!r} does not exist; create it "
                           "first (os.makedirs) or choose another path")


def prepare_folder(folder):
    """Create ``folder`` if needed and prove it accepts a new file (the one reliable test under
    root, ACLs and read-only mounts); ClipvizError otherwise."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ClipvizError(f"cannot create the output folder {str(folder)!r}: {error.strerror or error}; "
                           "choose another output path") from None
    _check_writable(folder)


def check_folder(folder):
    """Check an output folder before any work, creating nothing (a run that fails later leaves no
    empty folder behind; write_atomically creates it with the first file): it is a folder, or its
    nearest existing parent is a writable folder. Refused (ClipvizError): a path that is a file
    or lies under one, and a new name ending in a file type's suffix (``--out results.txt``, by
    Python's mimetypes table: .txt, .json, .csv, .html, ...), which would silently become a folder."""
    folder = Path(folder).expanduser()
    if folder.is_dir():
        _check_writable(folder)
        return folder
    if os.path.lexists(folder):
        raise ClipvizError(f"cannot create the output folder {str(folder)!r}: it is {_not_a_folder(folder)}, "
                           "not a folder; give a folder name")
    kind = mimetypes.MimeTypes().guess_type(folder.name, strict=False)[0]  # built-in table: same on every machine
    if kind is not None:
        raise ClipvizError(f"the output folder {str(folder)!r} is named like a {kind} file ({folder.suffix}); "
                           "outputs go into a folder: give a folder name without that suffix")
    existing = folder.parent
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise ClipvizError(f"cannot create the output folder {str(folder)!r}: {str(existing)!r} is "
                           f"{_not_a_folder(existing)}, not a folder; choose another output path")
    _check_writable(existing)
    return folder


def _not_a_folder(path):
    """What ``path`` (which exists, at least as a link, and is no folder) is, in words."""
    return link_words(path) if os.path.islink(path) else "a file"


def link_words(path):
    """"a symbolic link to 'target'", or "... to a missing target, 'target'" (a dangling link)."""
    return f"a symbolic link to {'' if os.path.exists(path) else 'a missing target, '}{os.readlink(path)!r}"


def _check_writable(folder):
    try:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "permission denied")
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ClipvizError(f"the output folder {str(folder)!r} is not writable ({error.strerror or error}): "
                           "choose another output path") from None


class Protected:
    """Input files that no output may replace, kept as file keys (``_file_key``) so that each output is checked in one lookup. A run of N images writes N·P outputs:
    comparing each with every input was quadratic (1,280 inputs: a GPU folder run spent 90% of its
    time in os.path.realpath, 7 images/s). Build it once per run; iterating gives the inputs."""

    def __init__(self, inputs):
        self.inputs = [p for p in inputs if p and isinstance(p, (str, os.PathLike))]
        self._keys = {}
        for source in self.inputs:
            self._keys.setdefault(_file_key(Path(source).expanduser()), source)

    def __iter__(self):
        return iter(self.inputs)

    def __len__(self):
        return len(self.inputs)

    def input_at(self, path):
        """The input that ``path`` is (the same file, through links and ``..``), or None."""
        return self._keys.get(_file_key(path))


def refuse_inputs(paths, inputs, what="one of the input images"):
    """ClipvizError if any of ``paths`` is the same file as one of ``inputs`` (see _file_key).
    Files are compared by a key each (a set lookup): a folder run plans N·P paths against N inputs."""
    sources = {_file_key(source) for source in inputs}
    for path in paths:
        if _file_key(path) in sources:
            raise ClipvizError(f"refusing to write {path}: it is {what}; choose another --out")


def _file_key(path):
    """What tells two paths of one file apart from others, through links and ``..``: (device,
    inode) of an existing file, else the resolved path (a missing file is one path). A path whose
    folders are missing but that resolves to a file (``new/../photo.png``) is that file."""
    for candidate in (path, os.path.realpath(path)):
        try:
            info = os.stat(candidate)
        except OSError:
            continue
        return (info.st_dev, info.st_ino)
    return os.path.realpath(path)


def is_own_output(path, record=None):
    """True if ``path`` is a regular file (not a link) that clipviz wrote (its folder's record
    names it, see record_path) and that is unchanged since (same sha256): a re-run may replace it.
    record: the folder's record when the caller has read it already ({name: sha256})."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    recorded = (_record(path.parent) if record is None else record).get(path.name)
    return recorded is not None and recorded == _sha256(path)


def own_outputs(folder, names):
    """The ``names`` (files directly in ``folder``) that are clipviz's own unchanged outputs
    (is_own_output): a listing of the folder's photos leaves them out, so a command whose --out
    is its input folder explains the same photos when run again. The folder's record is read
    once; only recorded names are hashed."""
    record = _record(Path(folder))
    return {name for name in names if name in record and is_own_output(Path(folder) / name, record)}


def refuse_existing(paths, force, hint=FORCE_HINT):
    """ClipvizError naming the paths that exist (links too) unless ``force``; clipviz's own
    unchanged outputs (is_own_output) are not in the way. Each folder's record is read once.
    hint: what the message tells the user to do (the API says overwrite=True, the CLI --force)."""
    records = {}

    def in_the_way(path):
        folder = Path(path).parent
        if folder not in records:
            records[folder] = _record(folder)
        return not is_own_output(path, records[folder])

    existing = [f"{p} ({link_words(p)})" if os.path.islink(p) else str(p)
                for p in paths if os.path.lexists(p) and in_the_way(p)] if not force else []
    if existing:
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise ClipvizError(f"output file {', '.join(existing[:3])}{more} already exists; {hint}")


def check_unique(paths):
    """ClipvizError if two planned outputs are one file (e.g. names differing only in case on a
    case-insensitive disk are caught when written; equal names are caught here)."""
    seen = {}
    for path in paths:
        key = os.path.normcase(os.path.abspath(path))
        if key in seen:
            raise ClipvizError(f"two outputs would both be written to {path}: give the inputs distinct names "
                               "or separate --out folders")
        seen[key] = path


def write_atomically(path, write, force=True, hint=FORCE_HINT):
    """``write(handle)`` into a temporary file beside ``path``, then rename it to ``path`` → Path.

    force=False: refuse (ClipvizError, ending in ``hint``) if ``path`` exists when the file is
    ready, unless clipviz wrote it (is_own_output), so nothing that appeared since planning is
    replaced. A missing folder is created. The temporary file never outlives an error, Ctrl-C,
    SIGTERM or SIGHUP (clipviz.signals).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix,
                                             delete=False)
    except OSError as error:
        raise _write_error(f"cannot write to the folder {str(path.parent)!r}", error) from None
    try:
        with raising_on_termination(), handle:
            write(handle)
            handle.flush()
            publish(handle.name, path, force, hint)
    except OSError as error:
        _remove(handle.name)
        raise _write_error(f"cannot write {str(path)!r}", error) from None
    except BaseException:
        _remove(handle.name)
        raise
    return path


def _write_error(what, error):
    """ClipvizError "<what>: <strerror>" for an OSError; NoSpace when the disk is full."""
    return (NoSpace if disk_full(error) else ClipvizError)(f"{what}: {error.strerror or error}")


def disk_full(error):
    """True for an OSError of a full disk or an exhausted quota (ENOSPC, EDQUOT)."""
    return error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def publish(temporary, path, force=True, hint=FORCE_HINT):
    """Give a finished temporary file (beside ``path``) its name, with the permissions a new file
    gets (temporary files are private), and record it as clipviz's own (record_path).
    force=False: only if the name is free or holds clipviz's own unchanged output (else
    ClipvizError ending in ``hint``)."""
    path = Path(path)
    os.chmod(temporary, 0o666 & ~_umask())
    digest = _sha256(temporary)
    if force or is_own_output(path):
        os.replace(temporary, path)  # replaces a link itself, never its target
    else:
        _link_new(temporary, path, hint)
        _remove(temporary)  # linked: the file now has both names; keep the target's
    _remember(path, digest)
    with contextlib.suppress(OSError), _PUBLISHED_LOCK:
        _PUBLISHED[os.path.abspath(path)] = (_identity(os.stat(path)), digest)
        while len(_PUBLISHED) > PUBLISHED_KEPT:
            _PUBLISHED.popitem(last=False)


# sha256 of the files this process published last: a manifest records each output's digest
# (output_sha256) without reading the file back a second time
PUBLISHED_KEPT = 4096
_PUBLISHED = OrderedDict()  # absolute path → ((inode, size, mtime_ns), hex sha256)
_PUBLISHED_LOCK = threading.Lock()  # writer threads publish concurrently


def output_sha256(path):
    """Hex sha256 of the file at ``path``: the digest ``publish`` computed when the file is still
    the one it published (same inode, size and mtime_ns), else read from the file."""
    identity = _identity(os.stat(path))
    with _PUBLISHED_LOCK:
        known = _PUBLISHED.get(os.path.abspath(path))
    return known[1] if known is not None and known[0] == identity else _sha256(path)


def _identity(info):
    return info.st_ino, info.st_size, info.st_mtime_ns


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_path(folder):
    """The file in clipviz's cache that records what clipviz wrote into ``folder``."""
    from .cache import cache_dir
    key = hashlib.sha1(os.path.realpath(folder).encode("utf-8", "surrogatepass")).hexdigest()
    return cache_dir() / OUTPUT_RECORDS / key


def _record(folder):
    """{file name: sha256} from ``folder``'s record (empty when there is none or it is unreadable)."""
    try:
        # surrogateescape: a name that is not UTF-8 (Latin-1 bytes, as Python gives it surrogate
        # escapes) is read back as its own bytes; newline="": a line ends at "\n" only (a name may
        # hold "\r", U+0085, U+2028, which str.splitlines and universal newlines break at)
        with open(record_path(folder), encoding="utf-8", errors="surrogateescape", newline="") as handle:
            lines = handle.read().split("\n")
    except OSError:
        return {}
    entries = (line.split("  ", 1) for line in lines)
    return {_record_name(name): digest for digest, name in (e for e in entries if len(e) == 2)}


def _record_name(text):
    """A name as _remember wrote it: as it is, or JSON-quoted (see _remember)."""
    if text.startswith('"'):
        with contextlib.suppress(ValueError):
            name = json.loads(text)
            if isinstance(name, str):
                return name
    return text


def _remember(path, digest):
    """Append "<sha256>  <name>" to the folder's record, one line whatever the name holds: a name
    with a "\n" (or starting with '"', so that it cannot be read as one) is written as a JSON
    string. A failure here only costs the re-run convenience, never the output just written."""
    record = record_path(path.parent)
    with contextlib.suppress(OSError):
        record.parent.mkdir(parents=True, exist_ok=True)
        with open(record, "a", encoding="utf-8", errors="surrogateescape") as handle:
            name = json.dumps(path.name) if "\n" in path.name or path.name.startswith('"') else path.name
            handle.write(f"{digest}  {name}\n")


def _link_new(temporary, path, hint):
    """Give the finished file its name only if that name is free (no check-then-write race)."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        refuse_existing([path], False, hint)
    except OSError:  # a file system without hard links: check, then rename
        refuse_existing([path], False, hint)
        os.replace(temporary, path)


def _remove(name):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temporaries(paths):
    """Remove what write_atomically left of ``paths`` when a run was killed mid-write (kill -9
    runs no clean-up): regular files named exactly like its temporary files, ``.<stem>.<8 random
    characters><suffix>`` (tempfile's names) beside each path. → the names removed. For a run that
    continues its own earlier one (--resume), whose temporaries nobody else can be writing. Each
    folder is listed once, however many of ``paths`` it holds."""
    planned = {}
    for path in map(Path, paths):
        planned.setdefault(path.parent, set()).add(path.name)
    removed = []
    for folder, names in planned.items():
        with contextlib.suppress(OSError):  # a folder that does not exist yet holds nothing stale
            for entry in os.scandir(folder):
                match = _TEMPORARY.fullmatch(entry.name)
                if match and match["stem"] + match["suffix"] in names and entry.is_file(follow_symlinks=False):
                    _remove(entry.path)
                    removed.append(entry.path)
    return removed


# write_atomically's temporary names: tempfile's 8 characters between ".<stem>." and the suffix
_TEMPORARY = re.compile(r"\.(?P<stem>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]*|)")
