"""clipviz.outputs: the one home for safe writes (what every command and figure relies on)."""

import os
import subprocess
import sys

import pytest

from clipviz import outputs
from clipviz.errors import ClipvizError
from clipviz.suffixes import FIGURE_SUFFIXES


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_without_force_an_existing_file_is_never_replaced(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"theirs")
    with pytest.raises(ClipvizError, match="already exists; pass --force"):
        outputs.write_atomically(target, lambda handle: handle.write(b"ours"), force=False)
    assert target.read_bytes() == b"theirs" and names(tmp_path) == ["out.png"]  # no temporary file left
    outputs.write_atomically(tmp_path / "new.png", lambda handle: handle.write(b"ours"), force=False)
    assert (tmp_path / "new.png").read_bytes() == b"ours" and names(tmp_path) == ["new.png", "out.png"]


def test_force_replaces_a_link_itself_never_what_it_points_to(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    link = tmp_path / "out.png"
    link.symlink_to(victim)
    with pytest.raises(ClipvizError, match="already exists"):  # a link counts as existing
        outputs.write_atomically(link, lambda handle: handle.write(b"ours"), force=False)
    outputs.write_atomically(link, lambda handle: handle.write(b"ours"), force=True)
    assert not link.is_symlink() and link.read_bytes() == b"ours" and victim.read_bytes() == b"keep me"


def test_an_error_while_writing_leaves_nothing_behind(tmp_path):
    def broken(handle):
        handle.write(b"half")
        raise ValueError("drawing failed")
    with pytest.raises(ValueError):
        outputs.write_atomically(tmp_path / "out.png", broken)
    assert names(tmp_path) == []


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
def test_a_termination_signal_mid_write_removes_the_temporary_file(tmp_path, signal_name):
    code = (
        "import os, signal\n"
        "from clipviz.outputs import write_atomically\n"
        "def write(handle):\n"
        "    handle.write(b'half')\n"
        f"    os.kill(os.getpid(), signal.{signal_name})\n"
        "    handle.write(b'never')\n"
        f"write_atomically({str(tmp_path / 'out.png')!r}, write)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True)
    import signal
    assert result.returncode == 128 + getattr(signal, signal_name)
    assert names(tmp_path) == []


def test_inputs_are_recognised_however_they_are_spelt(tmp_path, monkeypatch):
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"input")
    (tmp_path / "link.png").symlink_to(photo)
    monkeypatch.chdir(tmp_path)
    for spelling in ["photo.png", "./photo.png", "sub/../photo.png", "link.png", str(photo)]:
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(ClipvizError, match="input image"):
            outputs.check_target(spelling, FIGURE_SUFFIXES, protect=[str(photo)])
    assert outputs.check_target("other.png", FIGURE_SUFFIXES, protect=[str(photo)]).name == "other.png"
    assert photo.read_bytes() == b"input"


def test_protected_inputs_are_checked_in_one_lookup_per_output(tmp_path, monkeypatch):
    """A run builds outputs.Protected once for its N inputs; each of its N·P writes then costs one
    file key, not one comparison per input (that was quadratic: a 1,280-photo GPU run wrote 7
    images/s). Every spelling of an input is still refused."""
    photos = []
    for i in range(300):
        photos.append(tmp_path / f"p{i}.png")
        photos[-1].write_bytes(b"input")
    (tmp_path / "link.png").symlink_to(photos[123])
    protected = outputs.Protected([str(p) for p in photos] + ["", None])
    assert len(protected) == 300 and list(protected)[:1] == [str(photos[0])]
    keys = []
    real = outputs._file_key
    monkeypatch.setattr(outputs, "_file_key", lambda path: keys.append(path) or real(path))
    assert outputs.check_target(tmp_path / "out.png", FIGURE_SUFFIXES, protect=protected).name == "out.png"
    assert len(keys) == 1
    for spelling in (tmp_path / "link.png", tmp_path / "sub" / ".." / "p7.png", photos[299]):
        with pytest.raises(ClipvizError, match="input image"):
            outputs.check_target(spelling, FIGURE_SUFFIXES, protect=protected)
    assert len(keys) == 4


def test_planned_paths_must_be_unique(tmp_path):
    outputs.check_unique([tmp_path / "a.png", tmp_path / "b.png"])
    with pytest.raises(ClipvizError, match="both be written to"):
        outputs.check_unique([tmp_path / "a.png", tmp_path / "sub" / ".." / "a.png"])


def test_a_published_file_is_hashed_once_and_a_changed_one_again(tmp_path, monkeypatch):
    """The manifest's sha256 of an output comes from publishing it, not from reading it back; a
    file changed since (other bytes, size or mtime) is read again."""
    import hashlib

    from clipviz.manifest import output_entry

    target = tmp_path / "o.png"
    outputs.write_atomically(target, lambda handle: handle.write(b"first bytes"), force=False)
    reads = []
    real = outputs._sha256
    monkeypatch.setattr(outputs, "_sha256", lambda path: reads.append(path) or real(path))
    entry = output_entry(target)
    assert entry == {"path": str(target), "bytes": 11, "sha256": hashlib.sha256(b"first bytes").hexdigest()}
    assert reads == []
    target.write_bytes(b"other bytes!")  # changed in place after publishing
    assert output_entry(target)["sha256"] == hashlib.sha256(b"other bytes!").hexdigest() and len(reads) == 1
    same_size = tmp_path / "p.png"
    outputs.write_atomically(same_size, lambda handle: handle.write(b"aaaa"), force=False)
    stamp = os.stat(same_size).st_mtime_ns
    same_size.write_bytes(b"bbbb")
    os.utime(same_size, ns=(stamp + 10**9, stamp + 10**9))  # same size, another mtime
    assert output_entry(same_size)["sha256"] == hashlib.sha256(b"bbbb").hexdigest()
