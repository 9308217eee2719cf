"""Issue 19's CLI target: `clipviz explain --images` over 50 photos, today's code vs this one, same run.

    python perf/cli_images.py                                  # bundled model and random:ViT-B/16
    python perf/cli_images.py --models synth-vit-t16 --rounds 3 --photos ../shared/images

"Today's code" is commit a1b363e (before the folder pipeline: one image after another, decoded,
explained and written in turn), unpacked with `git archive` into a temporary folder (or
``--baseline DIR``, a checkout of it); "new" is the clipviz this script sits in (default workers
and --batch-size 8). The photos are the source folder's images copied under 50 new names (the
shared folder holds fewer). Each round runs old and new once per model in fresh processes, the
order alternating; printed: images/s (median over rounds) and new/old, against the targets
(≥ 2× with the bundled model, ≥ 1.5× with ViT-B/16).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"synth-vit-t16": 2.0, "random:ViT-B/16": 1.5}
SUFFIXES = (".png", ".jpg", ".jpeg")


def make_photos(source, folder, count):
    photos = sorted(p for p in Path(source).iterdir() if p.suffix.lower() in SUFFIXES)
    if not photos:
        raise SystemExit(f"no .png/.jpg photos in {source}")
    folder.mkdir(parents=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        shutil.copyfile(photo, folder / f"photo{i:03d}{photo.suffix.lower()}")


def baseline_tree(ref, folder):
    """The clipviz of commit ``ref`` in ``folder`` (git archive; nothing in the repository changes)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    folder.mkdir()
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def run(code, photos, out, model, prompts, threads):
    """(wall seconds, CPU seconds: user + system) of one CLI run and its children; exits on failure."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS=str(threads))
    command = [sys.executable, "-m", "clipviz", "explain", "--images", str(photos), *prompts, "--model", model,
               "--out", str(out), "--quiet", "--device", "cpu"]
    before = os.times()
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=code)
    seconds = time.perf_counter() - start
    after = os.times()
    if result.returncode != 0:
        raise SystemExit(f"{code}: {' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return seconds, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def check_code(code, threads):
    """Exit unless ``python -m clipviz`` run as ``run`` runs it imports the clipviz inside ``code``.
    ``-m`` puts the working folder first on sys.path, before PYTHONPATH: run from the repository
    root, "today's code" would silently be this one (so run() runs in ``code``)."""
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS=str(threads))
    found = subprocess.run([sys.executable, "-c", "import clipviz; print(clipviz.__file__)"], env=env, cwd=code,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(Path(code).resolve()):
        raise SystemExit(f"{code}: python imports clipviz from {found}, not from that tree")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default=str(ROOT.parent / "shared" / "images"), help="source photos folder")
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--models", nargs="+", default=list(TARGETS))
    parser.add_argument("--prompts", nargs="+", default=["a photo of a dog"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the CLI (default 2)")
    parser.add_argument("--baseline", help="a checkout of today's code (default: git archive of --ref)")
    parser.add_argument("--ref", default="a1b363e")
    args = parser.parse_args(argv)
    print(f"load average {os.getloadavg()[0]:.2f}, {len(os.sched_getaffinity(0))} CPUs, {args.count} photos, "
          f"{len(args.prompts)} prompt(s), OMP_NUM_THREADS={args.threads}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_photos(args.photos, tmp / "photos", args.count)
        old = Path(args.baseline).resolve() if args.baseline else baseline_tree(args.ref, tmp / "old")
        codes = {"old": old, "new": ROOT}
        for code in codes.values():
            check_code(code, args.threads)
        for model in args.models:
            times, cpu = {"old": [], "new": []}, {"old": [], "new": []}
            for round_ in range(args.rounds):
                for name in (("old", "new") if round_ % 2 == 0 else ("new", "old")):
                    wall, used = run(codes[name], tmp / "photos", tmp / "out", model, args.prompts, args.threads)
                    times[name].append(wall)
                    cpu[name].append(used)
            rates = {name: args.count / statistics.median(seconds) for name, seconds in times.items()}
            ratio = rates["new"] / rates["old"]
            target = TARGETS.get(model)
            verdict = "" if target is None else f" (target >= {target}: {'MET' if ratio >= target else 'MISSED'})"
            print(f"RESULT {model}: old {rates['old']:.2f} images/s, new {rates['new']:.2f} images/s, "
                  f"new/old {ratio:.2f}{verdict}", flush=True)
            print(f"INFO {model}: CPU seconds per image (user+system, all processes) old "
                  f"{statistics.median(cpu['old']) / args.count:.3f}, new {statistics.median(cpu['new']) / args.count:.3f}; "
                  f"load average {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
