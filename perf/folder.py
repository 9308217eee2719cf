"""Issue 18's folder-run figures: end-to-end images/s against the model alone and against decoding alone.

    PYTHONPATH=. python perf/folder.py                    # GPU: 2,000 JPEGs, ViT-B/16 relevance, batch 64
    python perf/folder.py --device cpu --count 60 --batch-size 8 --workers 0 2    # the 2-core CPU figure
    python perf/folder.py --nccl-check --count 256        # 2 GPUs: torchrun (NCCL) manifest = one process's

Photos: ``--count`` JPEGs of mixed sizes (short side 240-1080, aspect 0.6-1.8) in a temporary
folder, made from random crops and resizes of ``--source`` photos, or synthesised (smooth colour
fields with noise, so JPEG decoding costs what a photo's does) when no source is given.
Printed, for each ``--workers`` value:

    decode-only   a plain DataLoader over the files that decodes and preprocesses (clipviz's
                  load_image + preprocess_image, the same work the run does), nothing else
    model-only    run_method (relevance, the default) on pixels already on the device, batch B,
                  token maps copied to the host: the model's throughput with no file at all
    end-to-end    `clipviz explain --images DIR --maps npz --no-overlays --manifest` in this process:
                  decode in workers, batches on the device, maps and manifest written; images/s in
                  the steady state (from the 10th percent of manifest records to the last), and
                  over the whole run including start-up
    GPU utilisation sampled every 100 ms during the end-to-end run (nvidia-smi, else torch.cuda.utilization)

Target (issue 18): end-to-end ≥ 0.7 × model-only, or ≥ 0.8 × decode-only when decoding bounds it.
The machine needs no tokenizer packages: without ftfy / regex, ASCII stand-ins are used (prompts
here are plain ASCII, which both leave unchanged).
"""

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a photo of a dog"
STAND_INS = {
    "ftfy": "def fix_text(text, **options):\n    return text\n",
    "regex": ("import re\nIGNORECASE = re.IGNORECASE\n\n"
              "def compile(pattern, flags=0):  # CLIP's pattern, ASCII letters and digits only\n"
              "    return re.compile(pattern.replace(r'\\p{L}', 'a-zA-Z').replace(r'\\p{N}', '0-9'), flags)\n"),
}


def text_stand_ins(folder):
    """Write stand-in modules for missing tokenizer packages into ``folder``; their names."""
    missing = [name for name in STAND_INS if importlib.util.find_spec(name) is None]
    for name in missing:
        (Path(folder) / f"{name}.py").write_text(STAND_INS[name])
    if missing:
        sys.path.insert(0, str(folder))
        print(f"note: {', '.join(missing)} not installed: ASCII stand-ins used", flush=True)
    return missing


def make_one(job):
    """One JPEG of mixed size: a random crop and resize of a source photo, or a synthetic one."""
    from PIL import Image
    index, sources, folder = job
    rng = np.random.default_rng(index)
    short = int(rng.integers(240, 1081))
    aspect = float(rng.uniform(0.6, 1.8))
    width, height = (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))
    if sources:
        photo = Image.open(sources[index % len(sources)]).convert("RGB")
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = photo.crop((left, top, left + cw, top + ch)).resize((width, height), Image.BICUBIC)
    else:
        field = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
        image = Image.fromarray(field).resize((width, height), Image.BICUBIC)
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3))
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    image.save(Path(folder) / f"img{index:05d}.jpg", quality=90)


def make_photos(folder, count, source):
    sources = sorted(str(p) for p in Path(source).iterdir()
                     if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if source else []
    folder.mkdir(parents=True)
    with Pool(len(os.sched_getaffinity(0))) as pool:
        pool.map(make_one, [(i, sources, str(folder)) for i in range(count)], chunksize=16)


def decode_only(paths, size, workers):
    """images/s of a plain DataLoader that decodes and preprocesses ``paths`` (no model)."""
    import torch
    from clipviz.folder import ImageFiles
    loader = torch.utils.data.DataLoader(ImageFiles(paths, list(range(len(paths))), size), batch_size=None,
                                         num_workers=workers)
    start = time.perf_counter()
    count = sum(1 for _ in loader)
    return count / (time.perf_counter() - start)


def model_only(model, device, batch, count, prompts):
    """images/s of run_method (default method) on pixels already on the device, maps to the host."""
    import torch
    from clipviz.adapters import adapt
    from clipviz.explanation import prepare_query
    from clipviz.methods import default_method, get_method
    from clipviz.pipeline import run_method
    adapter = adapt(model)
    method = get_method(default_method(model))
    query = prepare_query(adapter, prompts)
    pixels = torch.randn(batch, 3, adapter.input_resolution, adapter.input_resolution, device=device,
                         dtype=adapter.dtype)

    def step():
        output = run_method(adapter, pixels, query.ids, query.target_weights, query.target_prompt, method, {})[3]
        output.token_maps.float().cpu()

    for _ in range(3):
        step()
    batches = max(3, count // batch)
    start = time.perf_counter()
    for _ in range(batches):
        step()
    return batches * batch / (time.perf_counter() - start)


class Utilisation:
    """GPU utilisation (%) sampled every 100 ms in a thread while in the ``with`` block."""

    def __init__(self, device):
        self.samples, self.device, self.stop = [], device, threading.Event()
        self.index = int(str(device).split(":")[1]) if ":" in str(device) else 0

    def __enter__(self):
        if str(self.device).startswith("cuda"):
            self.thread = threading.Thread(target=self.sample, daemon=True)
            self.thread.start()
        return self

    def sample(self):
        import torch
        smi = shutil.which("nvidia-smi")
        while not self.stop.is_set():
            try:
                if smi:
                    out = subprocess.run([smi, f"--id={self.index}", "--query-gpu=utilization.gpu",
                                          "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                    self.samples.append(float(out.stdout.strip().splitlines()[0]))
                else:
                    self.samples.append(float(torch.cuda.utilization(self.index)))
            except Exception:
                pass
            self.stop.wait(0.1)

    def __exit__(self, *exc):
        self.stop.set()
        return False

    def summary(self):
        if not self.samples:
            return "not measured (no GPU)"
        return (f"mean {statistics.mean(self.samples):.0f}%, median {statistics.median(self.samples):.0f}% "
                f"({len(self.samples)} samples)")


def end_to_end(folder, out, args, workers):
    """(steady images/s, whole-run images/s, seconds) of the CLI in this process."""
    from clipviz.cli import main
    manifest = out / "manifest.jsonl"
    shutil.rmtree(out, ignore_errors=True)
    marks, stop = {}, threading.Event()

    def watch():  # the time the 10 % mark of records is passed
        while not stop.is_set():
            try:
                lines = manifest.read_bytes().count(b"\n")
            except OSError:
                lines = 0
            if lines >= args.count // 10 and "tenth" not in marks:
                marks["tenth"] = (time.perf_counter(), lines)
            stop.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    command = ["explain", "--images", str(folder), PROMPT, "--model", args.model, "--out", str(out), "--maps", "npz",
               "--no-overlays", "--manifest", str(manifest), "--quiet", "--batch-size", str(args.batch_size),
               "--workers", str(workers), "--device", args.device]
    start = time.perf_counter()
    code = main(command)
    end = time.perf_counter()
    stop.set()
    if code != 0:
        raise SystemExit(f"clipviz explain exited {code}")
    count = manifest.read_bytes().count(b"\n")
    tenth_time, tenth_lines = marks.get("tenth", (start, 0))
    return (count - tenth_lines) / (end - tenth_time), count / (end - start), end - start


def nccl_check(folder, args):
    """torchrun --nproc-per-node 2 (NCCL) against one process on the same files: manifests equal
    up to order (scores within 1e-4, same peaks, same output names)."""
    common = ["--images", str(folder), PROMPT, "--model", args.model, "--quiet", "--maps", "npz", "--no-overlays",
              "--batch-size", str(args.batch_size)]
    inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep)  # e.g. carried packages: keep them
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path[:1] + [str(ROOT)] + inherited if p))
    runs = {}
    for name, launcher in (("one", [sys.executable, "-m"]),
                           ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    "--nproc-per-node", "2", "-m"])):
        out = folder.parent / f"nccl-{name}"
        start = time.perf_counter()
        result = subprocess.run([*launcher, "clipviz", "explain", *common, "--out", str(out), "--manifest",
                                 str(out) + ".jsonl"], env=env, capture_output=True, text=True)
        print(f"  {name} process(es): exit {result.returncode}, {time.perf_counter() - start:.1f} s", flush=True)
        if result.returncode != 0:
            print(result.stderr[-3000:])
            raise SystemExit("NCCL check: a run failed")
        runs[name] = [json.loads(line) for line in Path(str(out) + ".jsonl").read_text().splitlines()]
    one, two = runs["one"], sorted(runs["two"], key=lambda r: r["index"])
    worst = max(abs(a["prompts"][0]["score"] - b["prompts"][0]["score"]) for a, b in zip(one, two))
    same = len(one) == len(two) and all(a["image"] == b["image"] and a["status"] == b["status"] and
                                        [Path(o["path"]).name for o in a["outputs"]] ==
                                        [Path(o["path"]).name for o in b["outputs"]] for a, b in zip(one, two))
    peaks = sum(a["prompts"][0]["peak_xy"] == b["prompts"][0]["peak_xy"] for a, b in zip(one, two))
    print(f"RESULT NCCL 2 processes vs 1: {len(two)} records, same images/outputs {same}, max |score diff| "
          f"{worst:.2e} (limit 1e-4) {'MET' if same and worst <= 1e-4 else 'MISSED'}; equal peaks {peaks}/{len(one)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--source", help="photos to crop and resize (default: synthesised photos)")
    parser.add_argument("--device", default=None, help="default cuda when available")
    parser.add_argument("--model", default="random:ViT-B/16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", help="default: the CPUs of this process")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--nccl-check", action="store_true", help="only the 2-GPU torchrun check")
    args = parser.parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cpus = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text_stand_ins(tmp)
        start = time.perf_counter()
        make_photos(tmp / "photos", args.count, args.source)
        print(f"{args.count} JPEGs ({'from ' + args.source if args.source else 'synthesised'}) in "
              f"{time.perf_counter() - start:.1f} s; {cpus} CPUs, device {args.device}"
              f"{' (' + torch.cuda.get_device_name() + ')' if args.device.startswith('cuda') else ''}, "
              f"torch {torch.__version__}, {args.model}, batch {args.batch_size}, load {os.getloadavg()[0]:.2f}",
              flush=True)
        if args.nccl_check:
            return nccl_check(tmp / "photos", args)
        from clipviz.cli.inputs import load_model
        model = load_model(args.model, args.device)
        paths = sorted(str(p) for p in (tmp / "photos").iterdir())
        size = model.visual.input_resolution
        rate_model = model_only(model, args.device, args.batch_size, args.count, [PROMPT])
        del model
        print(f"  model-only (run_method, pixels on the device): {rate_model:8.1f} images/s", flush=True)
        speeds = {}
        for workers in args.workers or [cpus]:
            rate_decode = decode_only(paths, size, workers)
            with Utilisation(args.device) as use:
                steady, whole, seconds = end_to_end(tmp / "photos", tmp / "out", args, workers)
            speeds[workers] = steady
            print(f"  workers {workers}: decode-only {rate_decode:8.1f} images/s; end-to-end {steady:8.1f} images/s "
                  f"steady ({whole:.1f} over the whole {seconds:.1f} s run); GPU utilisation {use.summary()}",
                  flush=True)
            bound = "decode" if rate_decode < rate_model else "model"
            print(f"RESULT workers {workers}: end-to-end / model-only {steady / rate_model:.3f} (target >= 0.7), "
                  f"end-to-end / decode-only {steady / rate_decode:.3f} (target >= 0.8 when decoding bounds it: "
                  f"{bound} bounds here) "
                  f"{'MET' if steady >= 0.7 * rate_model or (bound == 'decode' and steady >= 0.8 * rate_decode) else 'MISSED'}",
                  flush=True)
        if len(speeds) > 1:
            base = min(speeds)
            for workers, steady in speeds.items():
                if workers != base:
                    print(f"RESULT {workers} workers vs {base}: end-to-end speed-up {steady / speeds[base]:.2f}x",
                          flush=True)


if __name__ == "__main__":
    main()
