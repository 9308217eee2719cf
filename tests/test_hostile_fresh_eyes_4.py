"""Issue 13, round four: a fresh-eyes tester's findings on the manifest, image lists, --against and
--workers.

Each test states the finding and checks files on disk, the manifest and the exact message: a user's
mistake or the user's environment (a full disk, a FIFO, a second run) is one line (exit 2 in the
CLI, never "this is a bug"), nothing is lost or half-written, outputs follow one rule.
"""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

import clipviz
from clipviz import cli, manifest
from clipviz.errors import ClipvizError

from conftest import tiny_cli_folder
import hostile
from hostile import counted, tally
from test_hostile_fresh_eyes import ENV

CASES, _report = tally("fresh eyes 4")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """tiny.pt (a random TINY_VIT CLIP) and photo.png (56×40); photos/ with a.png, b.png, c.png."""
    root = tiny_cli_folder(tmp_path_factory.mktemp("fresh4"), seed=7)
    (root / "photos").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (root / "photos" / name).write_bytes((root / "photo.png").read_bytes())
    return root


def explain(work, monkeypatch, capsys, *args):
    """cli.main for explain in ``work`` with the tiny model → (status, stdout, stderr)."""
    monkeypatch.chdir(work)
    status = cli.main(["explain", *map(str, args), "--model", "tiny.pt", "--device", "cpu"])
    out, err = capsys.readouterr()
    return status, out, err


def run_cli(*args, cwd, timeout=120):
    return subprocess.run([sys.executable, "-m", "clipviz", "explain", *map(str, args)], cwd=cwd, env=ENV, text=True,
                          timeout=timeout, capture_output=True)


def one_error_line(err, *words):
    return hostile.one_error_line(err, *words, warnings=True)  # warning lines may stand beside it


def files_in(folder):
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else []


# 1. a full disk ------------------------------------------------------------------------------------

@counted(CASES)
def test_a_full_disk_under_the_manifest_is_one_line_and_resume_finishes_the_run(work, monkeypatch, capsys):
    """Finding 1: the manifest's flush on a full disk was "unexpected error: OSError ... This is a
    bug" (exit 1; and again from close()). Now: one line naming the manifest, the full disk and
    --resume; the resumed run then finishes every image."""
    opened = manifest.Writer.__init__

    def full(self, path, resume):  # the manifest's writes go to /dev/full: every flush is ENOSPC
        opened(self, path, resume)
        self.handle.close()
        self.handle = open("/dev/full", "w", encoding="utf-8")

    monkeypatch.setattr(manifest.Writer, "__init__", full)
    args = ["--images", "photos", "a dog", "--out", "full-out", "--manifest", "full.jsonl", "--quiet", "--workers", "0"]
    status, _, err = explain(work, monkeypatch, capsys, *args)
    assert status == 2
    one_error_line(err, "full.jsonl", "No space left on device", "--resume")
    monkeypatch.setattr(manifest.Writer, "__init__", opened)  # space freed
    status, _, err = explain(work, monkeypatch, capsys, *args, "--resume")
    assert status == 0, err
    assert sorted(Path(r["image"]).name for r in manifest.read_file(work / "full.jsonl")) == ["a.png", "b.png", "c.png"]


@counted(CASES)
def test_outputs_on_a_full_disk_stop_the_run_at_the_first_in_one_line(work, monkeypatch, capsys):
    """Finding 13: with the outputs' disk full every image failed in turn, each with "No space left
    on device", and the run went on. Now the first ENOSPC stops the run in one line (free space,
    then --resume), and no temporary file is left."""
    import clipviz.outputs

    def no_space(temporary, path, *rest):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(clipviz.outputs, "publish", no_space)
    status, _, err = explain(work, monkeypatch, capsys, "--images", "photos", "a dog", "--out", "nospace-out",
                             "--manifest", "nospace.jsonl", "--quiet", "--workers", "0", "--batch-size", "1")
    assert status == 2
    one_error_line(err, "No space left on device", "free space", "--resume")
    assert [n for n in files_in(work / "nospace-out") if n.startswith(".")] == []
    assert manifest.read_file(work / "nospace.jsonl") == []  # no image recorded as failed: a resume redoes them


# 2. image lists ------------------------------------------------------------------------------------

@counted(CASES)
def test_a_nul_byte_in_an_image_list_names_the_file_and_line(work, monkeypatch, capsys):
    """Finding 2: "unexpected error: ValueError: embedded null byte ... This is a bug"."""
    (work / "nul.txt").write_bytes(b"photos/a.png\nphotos/b.png\x00photos/c.png\n")
    status, _, err = explain(work, monkeypatch, capsys, "--image-list", "nul.txt", "a dog", "--out", "nul-out")
    assert status == 2
    one_error_line(err, "nul.txt", "line 2", "NUL")
    assert not (work / "nul-out").exists()


@counted(CASES)
def test_a_byte_order_mark_at_the_start_of_an_image_list_is_not_part_of_the_path(work, monkeypatch, capsys):
    """Finding 2: "No image file at '\\ufeffphotos/a.png'" (Notepad saves UTF-8 with a BOM)."""
    (work / "bom.txt").write_bytes("\ufeffphotos/a.png\r\nphotos/b.png\r\n".encode("utf-8"))
    status, _, err = explain(work, monkeypatch, capsys, "--image-list", "bom.txt", "a dog", "--out", "bom-out",
                             "--quiet", "--workers", "0")
    assert status == 0, err
    assert len(files_in(work / "bom-out")) == 2


@counted(CASES)
def test_a_huge_line_in_an_image_list_is_shortened_in_the_message(work, monkeypatch, capsys):
    """Finding 2: a 100 kB line was echoed in full; now one short line keeps its start and end."""
    (work / "long.txt").write_text("photos/a.png\n" + "photos/" + "x" * 100_000 + ".png\n")
    status, _, err = explain(work, monkeypatch, capsys, "--image-list", "long.txt", "a dog", "--out", "long-out")
    assert status == 2
    line = one_error_line(err, "long.txt", "line 2", "photos/xxx", "xxx.png")
    assert len(line) < 500


# 3. what --manifest names -------------------------------------------------------------------------

@counted(CASES)
@pytest.mark.parametrize("flag", ["--force", "--resume"])
def test_a_fifo_as_manifest_is_refused_at_once(work, flag):
    """Finding 3: a FIFO as --manifest hung with --resume or --force (opened for writing)."""
    fifo = work / f"pipe{flag[2:]}.jsonl"
    os.mkfifo(fifo)
    done = run_cli("photo.png", "a dog", "--model", "tiny.pt", "--out", "fifo-out", "--manifest", fifo.name, flag,
                   cwd=work, timeout=60)
    assert done.returncode == 2
    one_error_line(done.stderr, fifo.name, "FIFO", "not a regular file")


@counted(CASES)
def test_a_directory_as_manifest_is_called_one(work, monkeypatch, capsys):
    """Finding 3: a directory dir.jsonl got "pass --resume or --force", then "Is a directory"."""
    (work / "dir.jsonl").mkdir()
    status, _, err = explain(work, monkeypatch, capsys, "photo.png", "a dog", "--out", "dir-out",
                             "--manifest", "dir.jsonl")
    assert status == 2
    line = one_error_line(err, "dir.jsonl", "a directory", "not a regular file")
    assert "--resume" not in line


@counted(CASES)
def test_a_link_as_manifest_is_refused_and_its_target_not_created(work, monkeypatch, capsys):
    """Finding 3 (low): a dangling link as --manifest silently created the link's target; outputs
    never follow links without --force, nor does the manifest now."""
    os.symlink("elsewhere.jsonl", work / "link.jsonl")
    status, _, err = explain(work, monkeypatch, capsys, "photo.png", "a dog", "--out", "link-out",
                             "--manifest", "link.jsonl")
    assert status == 2
    one_error_line(err, "link.jsonl", "symbolic link", "--force")
    assert not (work / "elsewhere.jsonl").exists() and not (work / "link-out").exists()
    # --force replaces the link itself, as it does an output's; its target is never created
    status, _, err = explain(work, monkeypatch, capsys, "photo.png", "a dog", "--out", "link-out",
                             "--manifest", "link.jsonl", "--force", "--quiet")
    assert status == 0, err
    assert not (work / "link.jsonl").is_symlink() and not (work / "elsewhere.jsonl").exists()
    assert [Path(r["image"]).name for r in manifest.read_file(work / "link.jsonl")] == ["photo.png"]


# 4. a prompt against itself ----------------------------------------------------------------------

@counted(CASES)
@pytest.mark.parametrize("against", ["a dog", "A  DOG"])
def test_a_prompt_against_itself_is_refused_in_the_cli(work, monkeypatch, capsys, against):
    """Finding 4: --against equal to the prompt (after CLIP's lower-casing) gave a map of rounding noise."""
    status, _, err = explain(work, monkeypatch, capsys, "photo.png", "a dog", "--against", against,
                             "--out", "self-out")
    assert status == 2
    one_error_line(err, "itself")
    assert not (work / "self-out").exists()


@counted(CASES)
@pytest.mark.parametrize("against", ["a dog", "A DOG", ["a cat", "A Dog"]])
def test_a_prompt_against_itself_is_refused_in_the_api(work, against):
    model = clipviz.load(str(work / "tiny.pt"), device="cpu")[0]
    prompts = ["a cat", "a dog"] if isinstance(against, list) else "a dog"
    with pytest.raises(ClipvizError, match="itself"):
        clipviz.explain(model, str(work / "photo.png"), prompts, against=against)
    exp = clipviz.explain(model, str(work / "photo.png"), "a dog", against="a cat")  # a real contrast still works
    assert exp.against == ["a cat"]


# 5. two runs, one manifest -----------------------------------------------------------------------

@counted(CASES)
def test_a_second_run_on_a_manifest_being_written_is_refused_before_any_output(work, monkeypatch, capsys):
    """Finding 5: two runs started together with one --manifest replaced each other's results."""
    (work / "busy.jsonl").write_text('{"index": 0, "image": "x.png"}\n')
    first = subprocess.Popen(  # the first run, still writing its manifest
        [sys.executable, "-c", "import sys; from clipviz import manifest\n"
         "with manifest.Writer('busy.jsonl', resume=True) as m:\n"
         "    print('locked', flush=True); sys.stdin.readline(); m.write({'index': 1, 'image': 'y.png'})"],
        cwd=work, env=ENV, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert first.stdout.readline() == "locked\n"
        status, _, err = explain(work, monkeypatch, capsys, "photo.png", "a dog", "--out", "busy-out",
                                 "--manifest", "busy.jsonl", "--force")
    finally:
        first.communicate("go\n", timeout=60)
    assert status == 2
    one_error_line(err, "another clipviz run is writing", "busy.jsonl")
    assert not (work / "busy-out").exists()
    assert [r["image"] for r in manifest.read_file(work / "busy.jsonl")] == ["x.png", "y.png"]  # not truncated


# 6. --workers ------------------------------------------------------------------------------------

@counted(CASES)
def test_workers_beyond_the_cpus_are_capped_with_one_warning(work, monkeypatch, capsys):
    """Finding 6: --workers 1000 started one process per image, with PyTorch's warning twice."""
    import clipviz.folder

    used, original = [], clipviz.folder.explain_files

    def spy(*args, **kwargs):
        used.append(kwargs["workers"])
        return original(*args, **kwargs)

    monkeypatch.setattr(clipviz.folder, "explain_files", spy)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    status, _, err = explain(work, monkeypatch, capsys, "--images", "photos", "a dog", "--out", "workers-out",
                             "--workers", "1000")  # not --quiet, which hides warnings
    assert status == 0, err
    assert used == [2]
    warnings = [line for line in err.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("clipviz: warning: --workers 1000") and "2" in warnings[0], err


@counted(CASES)
def test_resume_takes_the_default_method_of_a_registered_model_as_named(work, monkeypatch, capsys):
    """Finding 9: '--method relevance' against a run without --method was refused ('method None →
    relevance') although a ViT's default is relevance; another method is still refused."""
    monkeypatch.chdir(work)
    common = ["explain", "--images", "photos", "a dog", "--model", "synth-vit-t16", "--device", "cpu", "--out",
              "default-method", "--manifest", "default-method.jsonl", "--no-overlays", "--maps", "npz", "--quiet"]
    assert cli.main(common) == 0
    records = manifest.read(work / "default-method.jsonl")
    assert cli.main([*common, "--resume", "--method", "relevance"]) == 0  # every image already done
    assert manifest.read(work / "default-method.jsonl") == records
    capsys.readouterr()
    assert cli.main([*common, "--resume", "--method", "rollout"]) == 2
    assert "--method 'relevance' → 'rollout'" in capsys.readouterr().err
