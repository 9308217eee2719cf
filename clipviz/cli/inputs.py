"""What a command is given: images told apart from prompts, folders listed, prompts checked, and
the model named and loaded — one set of rules for every command, checked before torch loads
where possible."""

import os
import sys
import warnings
from pathlib import Path

from ..errors import ClipvizError
from ..suffixes import IMAGE_SUFFIXES, is_video, looks_like_image
from .parser import DEFAULT_MODEL

PATH_MAX = 4096  # Linux's limit on a path, in bytes; longer lines of an image list are no paths


def split_inputs(positionals, images=(), folders=(), prompts=(), lists=()):
    """Tell images from prompts (the rule in EXPLAIN_HELP) → (image paths [str], prompts [str]).

    Named images come first, then each folder's, then each list file's (read_image_list). Missing
    named files, unusable folders or lists, and no image or no prompt at all raise ClipvizError;
    a listed file that is missing fails alone later, as a folder's unreadable file does.
    """
    named, texts, taken = list(images), [], []
    for arg in positionals:
        file_like = looks_like_image(arg) or is_video(arg)
        exists = os.path.lexists(arg) and not os.path.isdir(arg)  # FIFOs and devices too: named below
        (named if file_like or exists else texts).append(arg)
        if exists and not file_like:
            taken.append(arg)
    texts += list(prompts)
    for path in named:
        if os.path.isdir(path):
            raise ClipvizError(f"'{path}' is a folder, not an image file: pass it as --images {path}")
        if os.path.lexists(path):
            _check_regular(path, path in taken)
        elif not os.path.isfile(path):
            raise ClipvizError(f"no image file at '{path}': check the path (a prompt that ends in an "
                               "image suffix must be given with --prompt)")
    from_lists = [p for f in _once(lists, "--image-list", "list") for p in read_image_list(f)]
    # a shell glob or `find` into an --out folder names clipviz's outputs too: left out, as a folder's are
    given = named + from_lists
    named, from_lists = without_own_outputs([named, from_lists], "of the images named or listed")
    listed = [p for folder in _once(folders, "--images", "folder") for p in list_images(folder)] + from_lists
    all_images = named + listed
    if given and not all_images:
        raise ClipvizError(f"every image given is one of clipviz's own outputs ({given[0]!r}{' ...' if len(given) > 1 else ''}), "
                           "which are left out so that a run into its own folder does not explain them again: "
                           "to explain one, copy it under another name first")
    if not all_images:
        folders_given = [t for t in texts if os.path.isdir(t)]
        hint = f" ('{folders_given[0]}' is a folder: use --images {folders_given[0]})" if folders_given else ""
        raise ClipvizError(f"no image given{hint}: name image files (.jpg, .png, ...) or --images DIR")
    if not texts:
        taken_hint = f" ({taken[0]!r} names a file here, so it was taken for an image: pass --prompt {taken[0]!r})" \
            if taken else ""
        raise ClipvizError(f"no prompt given{taken_hint}: add a text query such as \"a photo of a dog\"")
    if not all(t.strip() for t in texts):
        raise ClipvizError("a prompt is empty: write what to look for, e.g. \"a photo of a dog\"")
    if taken:  # `clipviz explain a.png "a dog"` beside a file named "a dog": say which rule applied
        print(f"clipviz: note: {taken[0]!r}{f' (and {len(taken) - 1} more)' if len(taken) > 1 else ''} is taken "
              f"for an image because a file of that name exists here; to use it as a prompt, pass --prompt "
              f"{taken[0]!r}", file=sys.stderr)
    return all_images, [t.strip() for t in texts]  # as explain() strips them


def _once(paths, flag, what):
    """``paths`` with a folder or list given again under another spelling (``d``, ``d/``, ``./d``, a
    link to it: the same file on disk; "-" and /dev/stdin) dropped, order kept, with one note naming the
    repeats: each is listed once, instead of a warning for every image in it. Paths that cannot
    be stat'ed are kept as given (their own checks name them)."""
    from .policy import Note

    kept, seen, repeats = [], {}, []
    for path in paths:
        try:  # "-" is standard input, the file /dev/stdin names too: keyed alike, by the file it is
            info = os.fstat(sys.stdin.fileno()) if path == "-" else os.stat(path)
            key = (info.st_dev, info.st_ino)
        except (OSError, ValueError, AttributeError):  # stdin closed or not a file (a notebook)
            key = "-" if path == "-" else None
        if key is not None and key in seen:
            repeats.append(f"{path!r} (= {seen[key]!r})")
            continue
        seen.setdefault(key, path)
        kept.append(path)
    if repeats:
        warnings.warn(f"{flag} {', '.join(repeats)}: the same {what} given again; read once", Note, stacklevel=3)
    return kept


def refuse_pipes_under_torchrun(lists):
    """ClipvizError for an --image-list that is a pipe (``-``, ``<(find ...)``, a named pipe, a
    device) when clipviz runs under torchrun (clipviz.distributed.from_environment), before any is
    opened: every process reads the list, while a pipe's one stream reaches one reader at most
    (torchrun's processes inherit neither the shell's stdin nor its /dev/fd/63; a second reader of
    a named pipe waits for ever). Judged by stat, which never blocks."""
    import stat

    from ..distributed import from_environment

    if not lists or not from_environment().distributed:
        return
    for path in lists:
        try:
            mode = None if path == "-" else os.stat(path).st_mode
        except OSError:  # the shell's <(...) is not passed on: /dev/fd/63 is missing in each process
            if not path.startswith(("/dev/fd/", "/proc/self/fd/")):
                continue  # a missing file: read_image_list names it
            mode = None
        if mode is None or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ClipvizError(f"--image-list {path}: under torchrun every process reads the image list, and a "
                               "pipe or standard input can be read only once (torchrun does not pass it on); "
                               "write the list to a file first (find ... > list.txt) and pass --image-list list.txt")


def _check_regular(path, taken):
    """A named image must be a regular file (or a link to one); a FIFO, device or socket is named
    for what it is, before anything would block on it (clipviz.files)."""
    from ..files import check_regular

    try:
        check_regular(path, "image")
    except ClipvizError as error:
        hint = f" (to use {path!r} as a prompt, pass --prompt {path!r})" if taken else ""
        raise ClipvizError(f"{error}{hint}") from None


def list_images(folder):
    """Image files (by suffix) directly inside ``folder``, sorted by name; hidden files skipped.

    Only regular files (or links to them) are listed, judged by stat, which never blocks: a FIFO,
    device, socket, folder or broken link with an image suffix is skipped and named on stderr
    (folders inside are not searched). clipviz's own outputs are left out (one note): files it
    wrote into this folder and that are unchanged since (outputs.own_outputs, by the sha256 it
    recorded), so ``--images d --out d`` run twice explains the same photos; any other file, a
    changed output included, is an input, and inputs are never written over.
    """
    import stat

    from ..files import kind_of

    path = Path(folder)
    if not path.is_dir():
        raise ClipvizError(f"--images {folder}: no such folder" if not path.exists()
                           else f"--images {folder}: not a folder; pass an image file as --image {folder}")
    try:
        entries = sorted(path.iterdir())
    except OSError as error:
        raise ClipvizError(f"cannot list {folder}: {error.strerror or error}") from error
    found, skipped = [], []
    for entry in entries:
        if entry.name.startswith(".") or not looks_like_image(entry.name):
            continue
        try:
            mode = entry.stat().st_mode
        except OSError as error:  # a broken link, a file removed since the listing
            skipped.append(f"{entry.name} ({error.strerror or 'unreadable'})")
            continue
        if stat.S_ISREG(mode):
            found.append(str(entry))
        else:  # a folder named x.png too: the user may have expected its photo to be read
            skipped.append(f"{entry.name} ({kind_of(mode)})")
    if skipped:
        warnings.warn(f"skipping {len(skipped)} entries of {folder} that are not regular files: "  # --quiet hides it
                      f"{', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}", stacklevel=2)
    found, = without_own_outputs([found], f"of {folder}")
    if not found:
        raise ClipvizError(f"--images {folder}: no image files in it (looked for {', '.join(IMAGE_SUFFIXES[:5])} ...)")
    return found


def without_own_outputs(groups, where):
    """Each list of image paths in ``groups`` without clipviz's own outputs (outputs.own_outputs:
    files it wrote and that are unchanged since), order kept, with one note saying how many were
    left out (``where``: "of photos", ...). So a command whose --out is its input folder, given
    as --images, a listing (``find``) or a shell glob, explains the same photos when run again;
    any other file, a changed output included, stays an input. Each folder's record is read once."""
    from ..outputs import own_outputs
    from .policy import Note

    by_folder = {}
    for path in (p for group in groups for p in group):
        by_folder.setdefault(os.path.dirname(path), set()).add(os.path.basename(path))
    own = {(folder, name) for folder, names in by_folder.items() for name in own_outputs(folder or ".", names)}
    if not own:
        return groups
    left = [[p for p in group if (os.path.dirname(p), os.path.basename(p)) not in own] for group in groups]
    warnings.warn(f"left out {len(own)} files {where} that clipviz wrote there earlier (its own outputs, unchanged "
                  "since; a changed one is read as a photo)", Note, stacklevel=3)
    return left


def read_image_list(file):
    """Image paths from a text file, one per line ("-": standard input; a pipe such as the shell's
    ``<(find ...)`` is read too, once); blank lines and lines starting with '#' are skipped; paths
    are taken as written: relative ones to the current folder, as the shell's would be (a pipe
    or stdin has no folder of its own, so a file's list is read the same way).
    A UTF-8 byte order mark (Notepad's) is not part of the first path; a line with a NUL byte or
    longer than any path can be is refused, naming the file and the line."""
    from ..files import open_regular
    from .policy import shorten

    # file names are bytes on POSIX: one that is not UTF-8 (a Latin-1 name, as `find` prints it)
    # is kept as the same bytes (surrogateescape, as os.fsdecode does), so it opens as listed
    if file == "-":
        stdin = getattr(sys.stdin, "buffer", None)
        text = stdin.read().decode("utf-8", errors="surrogateescape") if stdin is not None else sys.stdin.read()
    else:
        with open_regular(file, "image list", pipes=True) as handle:
            text = handle.read().decode("utf-8", errors="surrogateescape")
    lines = [line.strip() for line in text.removeprefix("\ufeff").splitlines()]
    for number, line in enumerate(lines, 1):
        problem = "holds a NUL byte, which no file name can" if "\0" in line else \
            f"is {len(line)} characters long, more than any path can be ({PATH_MAX} bytes)" if len(line) > PATH_MAX else None
        if problem:
            raise ClipvizError(f"--image-list {file} line {number} ({shorten(line)!r}) {problem}: write one image "
                               "path per line")
    paths = [line for line in lines if line and not line.startswith("#")]
    if not paths:
        raise ClipvizError(f"--image-list {file}: no image paths in it (one path per line)")
    return paths


def model_name(name):
    """``--model``, or the bundled default when it is installed; unknown names fail here, before
    torch is imported (ClipvizError listing the registered names)."""
    from .. import hub

    if name is None:
        if DEFAULT_MODEL not in hub.available_models():
            raise ClipvizError(f"the bundled model {DEFAULT_MODEL} is not installed in this clipviz; pass "
                               "--model NAME_OR_CHECKPOINT (see 'clipviz models')")
        return DEFAULT_MODEL
    if name.startswith(hub.RANDOM):
        return name  # clipviz.model.random_model names the architectures if ARCH is not one
    if not name.startswith(hub.ADAPTER_PREFIXES) and not os.path.exists(os.path.expanduser(name)):
        hub.model_info(name)  # raises for a name that is neither registered nor a file
    return name


def clip_tokenizer(name):
    """True if the model ``--model name`` (None: the bundled one) tokenizes with CLIP's BPE: every
    model clipviz builds itself (registered names, checkpoint files, random:ARCH). 'hf:' and
    'openclip:' models bring their own library's tokenizer, known only once loaded (SigLIP's)."""
    from ..hub import ADAPTER_PREFIXES

    return not (name or "").startswith(ADAPTER_PREFIXES)


def check_prompts(prompts, name=None):
    """Prompts with nothing visible (tokenizer.check_visible) and, for models with CLIP's tokenizer
    (77 tokens; clip_tokenizer(name)), over-long ones fail before the model loads, in one
    ClipvizError naming the prompt. Other models' prompts are measured once loaded, by their own
    tokenizer (load_model)."""
    from ..tokenizer import check_visible, tokenize

    for prompt in prompts:
        check_visible(prompt)
    if clip_tokenizer(name):
        tokenize(prompts)


def load_model(name, device, activation=None, prompts=(), prints=True):
    """The model for a name from ``model_name``: anything clipviz.hub.load takes, ``random:ARCH``
    included (``activation``: the MLP activation, see clipviz.activation).

    prints: the command will print its results; a standard output without a reader (``| head -0``)
    then fails here, before the long work (policy.check_stdout_reader). prompts: measured once
    the model is loaded, with its own tokenizer and context length (SigLIP: 64 tokens)."""
    from ..hub import load
    from .policy import check_stdout_reader

    if prints:
        check_stdout_reader()
    model = load(name, device=device, activation=activation)[0]
    if prompts:
        from ..adapters import adapt
        adapt(model).tokenize(list(prompts))
    return model
