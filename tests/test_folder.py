"""Folder runs at scale (issue 18): decoding workers, batches, the manifest, --resume after kill -9,
torchrun on the CPU (gloo), and the map files. Every number is checked against clipviz.explain
on each image alone, run here on the same checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import clipviz
from clipviz import manifest
from clipviz.folder import explain_files
from clipviz.mapfiles import load_maps, map_png_pixels

from conftest import save_tiny_checkpoint

PROMPTS = ["a dog", "a red car"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
ENV.pop("CLIPVIZ_DEBUG", None)


def clipviz_command(*args, launcher=(sys.executable, "-m")):
    return [*launcher, "clipviz", *map(str, args)]


def run_cli(*args, cwd, launcher=(sys.executable, "-m")):
    return subprocess.run(clipviz_command(*args, launcher=launcher), cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """tiny.pt (a random TINY_VIT CLIP) and photos/: 7 photos of mixed sizes and formats, 1 corrupt file."""
    root = tmp_path_factory.mktemp("folder")
    save_tiny_checkpoint(root, seed=11)
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(80, 100), (64, 48), (120, 90), (70, 70), (33, 97), (100, 64), (90, 130)]):
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        image.save(photos / (f"p{i}.jpg" if i % 2 else f"p{i}.png"), **({"quality": 90} if i % 2 else {}))
    (photos / "p3bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


@pytest.fixture(scope="module")
def model(work):
    return clipviz.load(str(work / "tiny.pt"), device="cpu")[0]


def good_photos(work):
    return sorted(str(p.relative_to(work)) for p in (work / "photos").iterdir() if "bad" not in p.name)


def by_image(records):
    return {r["image"]: r for r in records}


def assert_matches_explain(records, model, work, atol=1e-5):
    """Each done record's scores, probs and peaks are clipviz.explain's on that image alone."""
    for record in records:
        if record["status"] != "done":
            continue
        exp = clipviz.explain(model, str(work / record["image"]), PROMPTS)
        np.testing.assert_allclose([p["score"] for p in record["prompts"]], exp.scores, atol=atol, rtol=0)
        np.testing.assert_allclose([p["prob"] for p in record["prompts"]], exp.probs, atol=atol, rtol=0)
        assert [p["peak_xy"] for p in record["prompts"]] == [exp.to_dict()["peak_xy"][t] for t in range(len(PROMPTS))]
        assert [p["prompt"] for p in record["prompts"]] == PROMPTS


def test_two_workers_and_batches_equal_one_image_at_a_time(work, model, monkeypatch):
    """--workers 2 --batch-size 3 and --workers 0 give each image clipviz.explain's scores, peaks and
    maps (npz, ≤ 1e-5); the corrupt file fails alone (manifest, stderr, exit 1); order is the listing's."""
    results = {}
    for workers in (0, 2):
        out = f"out-w{workers}"
        result = run_cli("explain", "--images", "photos", *PROMPTS, "--model", "tiny.pt", "--out", out,
                         "--manifest", f"{out}.jsonl", "--workers", workers, "--batch-size", 3, "--maps", "npz",
                         "--quiet", cwd=work)
        assert result.returncode == 1, result.stderr
        assert "1 of 8 images failed" in result.stderr and "p3bad.png:" in result.stderr
        records = manifest.read(work / f"{out}.jsonl")
        assert [r["image"] for r in records] == sorted(str(p.relative_to(work)) for p in (work / "photos").iterdir())
        assert [r["index"] for r in records] == list(range(8))
        (bad,) = [r for r in records if r["status"] == "failed"]
        assert bad["image"].endswith("p3bad.png") and bad["error"] and bad["outputs"] == []
        assert_matches_explain(records, model, work)
        results[workers] = records
    for record in results[2]:
        if record["status"] == "done":
            exp = clipviz.explain(model, str(work / record["image"]), PROMPTS)
            (npz,) = [o["path"] for o in record["outputs"] if o["path"].endswith(".npz")]
            saved = load_maps(work / npz)
            np.testing.assert_allclose(saved["token_maps"], exp.token_maps, atol=1e-5, rtol=0)
            np.testing.assert_allclose(saved["maps"], exp.maps, atol=1e-5, rtol=0)
            assert np.array_equal(np.isnan(saved["maps"]), np.isnan(exp.maps))
            overlays = [o for o in record["outputs"] if o["path"].endswith(".png")]
            monkeypatch.chdir(work)  # paths are recorded as given, relative to the run's folder
            assert len(overlays) == len(PROMPTS) and manifest.verified(record)


def test_map_png_and_no_overlays(work, model):
    result = run_cli("explain", "photos/p0.png", *PROMPTS, "--model", "tiny.pt", "--out", "out-png", "--maps", "png",
                     "--no-overlays", "--quiet", cwd=work)
    assert result.returncode == 0, result.stderr
    exp = clipviz.explain(model, str(work / "photos" / "p0.png"), PROMPTS)
    files = sorted((work / "out-png").iterdir())
    assert len(files) == 2 and all(f.name.endswith("--map.png") for f in files)
    for t, prompt in enumerate(PROMPTS):
        (path,) = [f for f in files if f.name.startswith(f"p0--{clipviz.outputs.slug(prompt)}")]
        pixels = np.asarray(Image.open(path))
        seen = ~np.isnan(exp.maps[t])
        assert pixels.shape == exp.maps[t].shape + (2,)
        np.testing.assert_array_equal(pixels[..., 1], np.where(seen, 255, 0))
        assert np.abs(pixels[..., 0][seen].astype(float) - 255 * exp.maps[t][seen]).max() <= 0.5 + 1e-3
        np.testing.assert_array_equal(pixels, map_png_pixels(exp.maps[t]))


def test_without_photos_the_workers_send_sizes_and_the_maps_are_the_same(work, model):
    """photos=False (a run that draws nothing on the photo): each decoded item carries the photo's
    size, not its pixels, and every map, score and peak equals a run with the photos (2 workers)."""
    from clipviz.folder import ImageFiles
    paths = [str(work / p) for p in good_photos(work)]
    item = ImageFiles(paths, [0], 32, photos=False)[0]
    assert "photo" not in item and item["photo_size"] == np.asarray(Image.open(paths[0]).convert("RGB")).shape
    runs = [list(explain_files(model, paths, PROMPTS, batch_size=2, workers=2, photos=photos)) for photos in (True, False)]
    for with_photo, without in zip(*runs):
        assert without.error is None and without.path == with_photo.path
        assert not without.explanation.photo.any() and without.explanation.photo.shape == with_photo.explanation.photo.shape
        np.testing.assert_array_equal(without.explanation.maps, with_photo.explanation.maps)
        np.testing.assert_array_equal(without.explanation.scores, with_photo.explanation.scores)
        assert without.peaks == with_photo.peaks


@pytest.mark.parametrize("method, options, encodes", [
    ("relevance", {"text": False}, 1), ("gradcam", {}, 1), ("rollout", {}, 1),
    # text-token relevance of the last text block: the prompts' EOT rows once, the per-image tail a batch
    ("relevance", {}, 1),
    # of every text block: the text gradient differs per image and has no closed form, one text pass a batch
    ("relevance", {"text_start_layer": 0}, 4)])
def test_text_is_encoded_once_per_run_and_results_equal_explain(work, model, monkeypatch, method, options, encodes):
    calls = []
    encode = model.encode_text
    monkeypatch.setattr(model, "encode_text", lambda ids: calls.append(ids.shape) or encode(ids))
    paths = [str(work / p) for p in good_photos(work)]
    done = list(explain_files(model, paths, PROMPTS, method, options=options, batch_size=2, workers=0))
    assert len(calls) == encodes and [d.path for d in done] == paths and all(d.error is None for d in done)
    monkeypatch.undo()
    for d in done:
        exp = clipviz.explain(model, d.path, PROMPTS, method=method, **options)
        np.testing.assert_allclose(d.explanation.token_maps, exp.token_maps, atol=1e-5, rtol=0)
        np.testing.assert_allclose(d.explanation.scores, exp.scores, atol=1e-6, rtol=0)
        for ours, theirs in zip(d.explanation.text_relevance or [], exp.text_relevance or []):
            np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_a_batch_that_fails_is_retried_image_by_image(work, model, monkeypatch):
    """One photo too big for its maps fails alone; its batch-mates are explained."""
    import clipviz.explanation as explanation
    paths = [str(work / p) for p in good_photos(work)]
    monkeypatch.setattr(explanation, "MAX_MAP_BYTES", 4 * 100 * 64 * len(PROMPTS))  # p5 (100×64) fits, p2 120×90 not
    done = list(explain_files(model, paths, PROMPTS, batch_size=4, workers=0))
    failed = sorted(Path(d.path).name for d in done if d.error is not None)
    sizes = {Path(p).name: Image.open(p).size for p in paths}
    assert failed == sorted(n for n, (w, h) in sizes.items() if w * h > 100 * 64)
    assert all(isinstance(d.error, clipviz.ClipvizError) for d in done if d.error is not None)


def test_resume_skips_what_is_done_and_verified(work):
    """A finished run resumed does nothing; an output changed or removed, or a failed image, is redone."""
    args = ["explain", "--images", "photos", *PROMPTS, "--model", "tiny.pt", "--out", "out-r", "--manifest", "r.jsonl",
            "--quiet", "--workers", "0"]
    assert run_cli(*args, cwd=work).returncode == 1
    again = run_cli(*args, cwd=work)
    assert again.returncode == 2 and "--resume" in again.stderr and "--force" in again.stderr  # never silently redone
    records = manifest.read(work / "r.jsonl")
    done = [r for r in records if r["status"] == "done"]
    changed, removed = done[0]["outputs"][0]["path"], done[1]["outputs"][1]["path"]
    with open(work / changed, "ab") as handle:
        handle.write(b"tampered")
    (work / removed).unlink()
    resumed = run_cli(*[a for a in args if a != "--quiet"], "--resume", "--force", cwd=work)
    assert resumed.returncode == 1, resumed.stderr
    assert "5 images already done" in resumed.stderr  # 7 good photos, 2 of them changed since
    new = manifest.read(work / "r.jsonl")[len(records):]
    assert sorted(r["image"] for r in new) == sorted([done[0]["image"], done[1]["image"],
                                                       next(r["image"] for r in records if r["status"] == "failed")])
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        assert all(manifest.verified(r) for r in new if r["status"] == "done")
    no_manifest = run_cli("explain", "--images", "photos", "a dog", "--model", "tiny.pt", "--resume", cwd=work)
    assert no_manifest.returncode == 2 and "--manifest" in no_manifest.stderr


def test_resume_refuses_a_manifest_written_with_other_settings(work):
    """A resumed run that asks another question (prompts, method, outputs) must not skip images with
    the old run's answers: one line naming what changed, exit 2, nothing written."""
    args = ["explain", "--images", "photos", "a dog", "--model", "tiny.pt", "--out", "out-s", "--manifest", "s.jsonl",
            "--quiet", "--workers", "0", "--maps", "npz", "--no-overlays"]
    run_cli(*args, cwd=work)
    records = manifest.read(work / "s.jsonl")
    changes = {"prompts": ("a dog", "a car"), "--method": ("--no-overlays", "--no-overlays --method gradcam"),
               "--no-overlays": (" --no-overlays", ""),
               "--start-layer": ("--no-overlays", "--no-overlays --start-layer 0")}  # the method's options
    for key, (old, new) in changes.items():
        changed = " ".join(args).replace(old, new, 1).split()
        refused = run_cli(*changed, "--resume", cwd=work)
        assert refused.returncode == 2, (key, refused.stderr)
        assert len(refused.stderr.strip().splitlines()) == 1 and "other settings" in refused.stderr
        assert key in refused.stderr, (key, refused.stderr)
    assert manifest.read(work / "s.jsonl") == records  # nothing appended
    spelled = [a if a != "out-s" else "./out-s/" for a in args]  # the same folder, written otherwise
    same = run_cli(*spelled, "--resume", cwd=work)  # the same question: only the bad file is tried again
    assert same.returncode == 1, same.stderr
    again = manifest.read(work / "s.jsonl")[len(records):]
    assert again and all(r["status"] == "failed" for r in again)



def test_resume_compares_the_method_run_when_the_first_or_the_second_run_left_it_out(work):
    """Left out, --method is the model's default (relevance for a ViT, README), for a checkpoint file
    known only once loaded: resuming with --method relevance is the same question and goes on;
    another method, given on either side, is refused in one line naming both methods, as any
    other changed setting is (nothing appended)."""
    folder = work / "two"
    folder.mkdir()
    for name in good_photos(work)[:2]:
        (folder / Path(name).name).write_bytes((work / name).read_bytes())
    base = ["explain", "--images", "two", "a dog", "--model", "tiny.pt", "--out", "out-m", "--workers", "0",
            "--maps", "npz", "--no-overlays"]
    default = base + ["--manifest", "m.jsonl"]
    assert run_cli(*default, cwd=work).returncode == 0
    records = manifest.read(work / "m.jsonl")
    assert [r["settings"]["method"] for r in records] == ["relevance", "relevance"]  # recorded as run
    same = run_cli(*default, "--method", "relevance", "--resume", cwd=work)
    assert same.returncode == 0 and "2 images already done" in same.stderr, same.stderr
    other = run_cli(*default, "--method", "rollout", "--resume", cwd=work)
    assert other.returncode == 2 and len(other.stderr.splitlines()) == 1, other.stderr
    assert "--method 'relevance' → 'rollout'" in other.stderr
    assert manifest.read(work / "m.jsonl") == records

    chosen = base + ["--manifest", "n.jsonl", "--method", "rollout", "--force"]
    assert run_cli(*chosen, cwd=work).returncode == 0
    records = manifest.read(work / "n.jsonl")
    left_out = run_cli(*base, "--manifest", "n.jsonl", "--force", "--resume", cwd=work)
    assert left_out.returncode == 2 and len(left_out.stderr.splitlines()) == 1, left_out.stderr
    assert "--method 'rollout' → 'relevance' (the default: --method not given)" in left_out.stderr
    assert manifest.read(work / "n.jsonl") == records
    again = run_cli(*chosen, "--resume", cwd=work)
    assert again.returncode == 0 and "2 images already done" in again.stderr, again.stderr


def noise_photos(folder, prefix, seed, count=40, size=(96, 128)):
    """``count`` random PNGs of ``size`` (height, width) named ``{prefix}00.png`` ... in a new ``folder``."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{prefix}{i:02d}.png")


def wait_for_records(child, path, count, timeout=300):
    """Wait until the manifest ``path`` holds ``count`` lines or ``child`` has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.005)


def test_kill_9_then_resume_explains_every_image_exactly_once(work):
    """SIGKILL once records appear in the manifest, then --resume: one done record per image, none
    lost, none repeated; a torn last line is tolerated."""
    noise_photos(work / "many", "m", seed=5)
    args = ["explain", "--images", "many", *PROMPTS, "--model", "tiny.pt", "--out", "out-k", "--manifest", "k.jsonl",
            "--quiet", "--batch-size", "2", "--workers", "1"]
    child = subprocess.Popen(clipviz_command(*args), cwd=work, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    path = work / "k.jsonl"
    wait_for_records(child, path, 4)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, "the run ended before it could be killed: use more images"
    before = [r for r in manifest.read(path) if r["status"] == "done"]
    assert 4 <= len(before) < 40
    # what a kill -9 mid-write leaves: write_atomically's temporary beside a planned output (removed
    # by the resume), and a user's file that only looks alike (kept)
    done_name = Path(before[0]["outputs"][0]["path"])  # e.g. out-k/m00--a-dog-61128e.png
    undone = next(f"m{i:02d}" for i in range(40) if f"many/m{i:02d}.png" not in {r["image"] for r in before})
    planned = done_name.with_name(undone + done_name.name[len(Path(before[0]["image"]).stem):])
    stale = work / planned.parent / f".{planned.stem}.k9x_2abc{planned.suffix}"
    alike = work / planned.parent / f".{planned.stem}.not-ours{planned.suffix}"
    stale.write_bytes(b"")
    alike.write_bytes(b"mine")
    resumed = run_cli(*[a for a in args if a != "--quiet"], "--resume", cwd=work)
    assert not stale.exists() and alike.read_bytes() == b"mine"
    assert resumed.returncode == 0, resumed.stderr
    records = manifest.read(path)
    done = [r["image"] for r in records if r["status"] == "done"]
    assert sorted(done) == sorted(f"many/m{i:02d}.png" for i in range(40))  # each exactly once
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        assert all(manifest.verified(r) for r in records)
    assert f"{len(before)} images already done" in resumed.stderr


@pytest.mark.parametrize("number, line", [(signal.SIGTERM, "clipviz: stopped by SIGTERM"),
                                          (signal.SIGHUP, "clipviz: stopped by SIGHUP"),
                                          (signal.SIGINT, "clipviz: interrupted")])
def test_a_signal_to_the_whole_process_group_stops_cleanly(work, number, line):
    """Ctrl-C in a terminal, timeout, kill -- -PGID and Slurm signal the decoding workers too: still
    one line, exit 128 + the signal's number, no temporary file and no process left (the workers
    leave the stop signals to the main process, which shuts them down)."""
    name = signal.Signals(number).name.lower()
    # photos large enough that decoded ones fill the workers' pipes: a worker stopped by the
    # signal itself would then wait for its pipe forever, and the main process for the worker
    noise_photos(work / f"many-{name}", "t", seed=6, count=16, size=(600, 800))
    args = ["explain", "--images", f"many-{name}", *PROMPTS, "--model", "tiny.pt", "--out", f"out-{name}",
            "--manifest", f"{name}.jsonl", "--quiet", "--batch-size", "2", "--workers", "2"]
    child = subprocess.Popen(clipviz_command(*args), cwd=work, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_records(child, work / f"{name}.jsonl", 2)
        os.killpg(child.pid, number)
        _, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == 128 + number, stderr
    assert stderr.decode().strip().splitlines() == [line]
    assert not [p for p in (work / f"out-{name}").iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the workers' exit is reaped by the main process before it ends
        try:
            os.killpg(child.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("processes of the run are still alive")


def test_torchrun_two_processes_on_the_cpu_equal_one_process(work):
    """torchrun --nproc-per-node 2 (gloo): the merged manifest equals one process's up to order,
    with the same output files, byte for byte."""
    common = ["--images", "photos", *PROMPTS, "--model", "tiny.pt", "--quiet", "--batch-size", "1", "--workers", "0",
              "--device", "cpu"]
    single = run_cli("explain", *common, "--out", "out-1p", "--manifest", "one.jsonl", cwd=work)
    assert single.returncode == 1, single.stderr
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m")
    pair = run_cli("explain", *common, "--out", "out-2p", "--manifest", "two.jsonl", cwd=work, launcher=launcher)
    assert pair.returncode != 0 and "p3bad.png" in pair.stderr  # rank 1's bad file: exit 1 there, torchrun fails
    assert not manifest.existing_parts(work / "two.jsonl")  # merged, parts removed
    one, two = manifest.read_file(work / "one.jsonl"), manifest.read_file(work / "two.jsonl")
    assert [r["index"] for r in two] == list(range(8))
    for a, b in zip(one, two):
        for key in ("index", "image", "size", "mtime_ns", "status", "method"):
            assert a[key] == b[key]
        np.testing.assert_allclose([p["score"] for p in a["prompts"]], [p["score"] for p in b["prompts"]], atol=1e-5)
        assert [p["peak_xy"] for p in a["prompts"]] == [p["peak_xy"] for p in b["prompts"]]
        assert [(Path(o["path"]).name, o["sha256"]) for o in a["outputs"]] == \
            [(Path(o["path"]).name, o["sha256"]) for o in b["outputs"]]


def test_image_list_missing_entry_fails_alone(work):
    (work / "list.txt").write_text("# photos\nphotos/p0.png\n\nphotos/gone.png\nphotos/p1.jpg\n")
    result = run_cli("explain", "--image-list", "list.txt", "a dog", "--model", "tiny.pt", "--out", "out-l", "--json",
                     cwd=work)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert [r["image"] for r in report["results"]] == ["photos/p0.png", "photos/p1.jpg"]
    assert [f["image"] for f in report["failures"]] == ["photos/gone.png"]


@pytest.mark.parametrize("extra, env, words", [
    (["--manifest", "m.txt"], {}, ["ending in .jsonl"]),
    (["--no-overlays"], {}, ["nothing to write", "--maps"]),
    (["--workers", "-1"], {}, ["--workers -1"]),
    (["--json"], {"RANK": "0", "WORLD_SIZE": "2"}, ["torchrun", "--manifest"]),
    ([], {"RANK": "2", "WORLD_SIZE": "2"}, ["RANK=2"]),
])
def test_run_option_mistakes_are_one_line_before_the_model_loads(work, monkeypatch, capsys, extra, env, words):
    from clipviz.cli import explain as explain_command, main
    monkeypatch.chdir(work)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(explain_command, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["explain", "--images", "photos", "a dog", "--model", "tiny.pt", "--out", "out-e", *extra]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("clipviz: error: ") and "\n" not in line and all(w in line for w in words), line
