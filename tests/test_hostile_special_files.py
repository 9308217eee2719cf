"""Only regular files are read as images, checkpoints and vocabularies. A FIFO (which would block
a reader forever), a device (/dev/zero never ends, /dev/null is empty), a directory or a socket
gets a ClipvizError that says what it is, at once; `--images DIR` skips such entries and names them.
Every call runs under a watchdog thread: a call that blocks fails the test instead of hanging it.
"""

import json
import os
import socket
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from clipviz.checkpoints import read_checkpoint
from clipviz.cli.inputs import list_images, read_image_list
from clipviz.errors import ClipvizError
from clipviz.preprocess import load_image
from clipviz.tokenizer import parse_merges, read_vocab
from hostile import tally

CASES, _report = tally("special files")


def within(seconds, function, *args):
    """function(*args) in a daemon thread; its result, or its exception re-raised; fails if it blocks."""
    box = {}

    def call():
        try:
            box["value"] = function(*args)
        except BaseException as error:  # noqa: B036 - handed to the caller
            box["error"] = error

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function.__name__}{args} blocked for {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def read_vocabulary(path, monkeypatch):
    monkeypatch.setenv("CLIPVIZ_VOCAB", str(path))
    return parse_merges(*read_vocab())


READERS = {"image": lambda path, mp: load_image(str(path)),
           "checkpoint": lambda path, mp: read_checkpoint(path),
           "vocabulary": read_vocabulary}


@pytest.fixture
def specials(tmp_path):
    """{kind in words: path} of every non-regular thing a user could name."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    sock_path = tmp_path / "sock.png"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    paths = {"a FIFO (named pipe)": fifo, "a directory": folder, "a socket": sock_path,
             "a character device": "/dev/zero"}
    if os.path.exists("/dev/null"):
        paths["a character device (empty)"] = "/dev/null"
    link = tmp_path / "link-to-pipe.png"
    link.symlink_to(fifo)
    paths["a FIFO (named pipe) (through a link)"] = link
    yield paths
    server.close()


@pytest.mark.parametrize("what", sorted(READERS))
def test_non_regular_files_are_refused_saying_what_they_are(what, specials, monkeypatch):
    for kind, path in specials.items():
        with CASES.case():
            with pytest.raises(ClipvizError) as info:
                within(10, READERS[what], path, monkeypatch)
            message = str(info.value)
            assert f"{what} '{path}' is {kind.split(' (empty)')[0].split(' (through')[0]}, not a regular file" in message
            assert "\n" not in message


@pytest.mark.parametrize("what", sorted(READERS))
def test_missing_paths_still_say_so(what, tmp_path, monkeypatch):
    with CASES.case():
        with pytest.raises(ClipvizError) as info:
            READERS[what](tmp_path / "absent.png", monkeypatch)
        assert "absent.png" in str(info.value)
        assert any(words in str(info.value) for words in ("does not exist", "No image file", "no such file"))


def test_a_link_to_a_regular_file_is_read(tmp_path, monkeypatch):
    """Links are followed: it is what they point at that must be a regular file."""
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    Image.fromarray(pixels).save(tmp_path / "real.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    weights = {"w": torch.arange(6.0).view(2, 3)}
    torch.save(weights, tmp_path / "real.pt")
    (tmp_path / "link.pt").symlink_to(tmp_path / "real.pt")
    with CASES.case():
        assert np.array_equal(load_image(str(tmp_path / "link.png")), pixels)
        assert torch.equal(read_checkpoint(tmp_path / "link.pt")["w"], weights["w"])


def test_a_path_swapped_for_a_fifo_after_the_check_cannot_block(tmp_path, monkeypatch):
    """The race the O_NONBLOCK open closes: stat sees a regular file, then a FIFO takes its place."""
    import clipviz.files as files

    path = tmp_path / "swapped.png"
    Image.new("RGB", (4, 4)).save(path)
    real_check = files.check_regular

    def check_then_swap(target, what, *pipes):
        result = real_check(target, what, *pipes)
        os.remove(target)
        os.mkfifo(target)
        return result

    monkeypatch.setattr(files, "check_regular", check_then_swap)
    with CASES.case():
        with pytest.raises(ClipvizError, match="is a FIFO"):
            within(10, load_image, str(path))


def test_folder_listing_skips_and_names_non_regular_entries(tmp_path, capsys):
    Image.new("RGB", (4, 4)).save(tmp_path / "b.png")
    os.mkfifo(tmp_path / "a.png")
    (tmp_path / "c.jpg").mkdir()
    (tmp_path / "d.jpg").symlink_to(tmp_path / "gone.jpg")  # broken link
    (tmp_path / "e.jpg").symlink_to(tmp_path / "b.png")  # a link to a regular file counts
    with CASES.case():
        with pytest.warns(UserWarning) as caught:  # the CLI prints it as one "clipviz: warning:" line
            found = within(10, list_images, str(tmp_path))
        assert found == [str(tmp_path / "b.png"), str(tmp_path / "e.jpg")]
        (note,) = [str(w.message) for w in caught]
        assert "\n" not in note and "skipping 3 entries" in note
        assert "a.png (a FIFO (named pipe))" in note and "d.jpg (No such file or directory)" in note
        assert "c.jpg (a directory)" in note  # a folder named like an image is named too (not searched)


def test_folder_of_only_special_files_has_no_images(tmp_path, capsys):
    os.mkfifo(tmp_path / "only.png")
    with CASES.case():
        with pytest.raises(ClipvizError, match="no image files"), pytest.warns(UserWarning, match=r"only\.png \(a FIFO"):
            within(10, list_images, str(tmp_path))


def test_an_image_list_may_be_a_pipe_read_once_with_paths_from_the_current_folder(tmp_path, monkeypatch):
    """--image-list <(find ...), a named pipe or '-': read once to its end like a file; relative
    paths are the current folder's (a pipe has no folder of its own), as a file list's are. A
    named pipe waits for its writer as cat does; devices are still refused."""
    import subprocess
    import sys
    import time

    from conftest import tiny_cli_folder

    root = tiny_cli_folder(tmp_path)
    (root / "photos").mkdir()
    (root / "photo.png").rename(root / "photos" / "p.png")
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(root / "photos" / "q.png")
    monkeypatch.chdir(root)
    fifo = root / "list.fifo"
    os.mkfifo(fifo)

    def write_late():
        time.sleep(0.5)  # the reader is waiting by then: it must not see an empty list
        with open(fifo, "w") as handle:
            handle.write("# photos\nphotos/p.png\n\nphotos/q.png\n")

    with CASES.case():
        writer = threading.Thread(target=write_late, daemon=True)
        writer.start()
        assert within(10, read_image_list, str(fifo)) == ["photos/p.png", "photos/q.png"]
        writer.join()
    with CASES.case():
        with pytest.raises(ClipvizError, match="is a character device.*regular files or pipes"):
            within(10, read_image_list, "/dev/zero")

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    command = f"{sys.executable} -m clipviz explain --prompt 'a dog' --model tiny.pt --json --out o"
    runs = {"file": f"printf 'photos/p.png\\nphotos/q.png\\n' > list.txt; {command}1 --image-list list.txt",
            "<(...)": f"{command}2 --image-list <(printf 'photos/p.png\\nphotos/q.png\\n')",
            "stdin": f"printf 'photos/p.png\\nphotos/q.png\\n' | {command}3 --image-list -"}
    results = {}
    for name, line in runs.items():
        with CASES.case():
            done = subprocess.run(["bash", "-c", line], cwd=root, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, (name, done.stderr)
            results[name] = json.loads(done.stdout)["results"]
    assert [r["image"] for r in results["<(...)"]] == ["photos/p.png", "photos/q.png"]
    for name in ("<(...)", "stdin"):  # the same images explained, the same numbers
        assert [(r["image"], r["scores"]) for r in results[name]] == [(r["image"], r["scores"]) for r in results["file"]]
