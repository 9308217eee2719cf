"""What the benchmarks share: set-up, inputs, the bare baselines, interleaved timing, the report.

Baselines ("bare"): exactly what a user would run to get the same score with nothing recorded,
starting from the same photo array and prompt strings as ``clipviz.explain``:

    preprocess_image(photo) + tokenize(prompts)                      (both sides pay this)
    S = logit_scale · cos(encode_image(pixels), encode_text(ids))
    bare forward:            under torch.no_grad()
    bare forward + backward: pixels.requires_grad_(); torch.autograd.grad(S.sum(), pixels)

The model's parameters keep ``requires_grad`` as loaded (True for ``random_model``), so the
forward pass builds the full graph, as any user's would. The backward to the pixels computes no
weight gradients (autograd computes only what the pixels need): the cheaper, stricter of the two
usual baselines. ``score.backward()`` (which also fills every ``param.grad``) is timed alongside
for reference.

Timing: the machine is shared, so the variants run interleaved (one of each per round, the order
rotated every round); a ratio is the median over rounds of that round's method/baseline time,
printed with its quartiles and the ratio of the fastest runs.
"""

import gc
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def setup(threads=2):
    """2 torch threads (the CPU targets are stated for that)."""
    torch.set_num_threads(threads)


def photo(height=360, width=480, seed=0):
    """A random uint8 photo [H, W, 3] (not square: preprocessing resizes and crops it)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


PROMPTS = ["a photo of a dog", "a red car", "two people dancing", "a bowl of soup", "the night sky",
           "a cat on a sofa", "a green apple", "a man riding a bicycle", "a city street at night",
           "a plate of pasta", "a sailing boat", "a snowy mountain", "a child with a kite",
           "a bird on a branch", "an old wooden door", "a cup of coffee"]


def inputs(model, image, prompts):
    """What both sides start from: pixels [1, 3, S, S] and ids [P, 77]."""
    from clipviz import tokenize
    from clipviz.preprocess import preprocess_image
    pixels, _ = preprocess_image(image, model.visual.input_resolution)
    return pixels[None], tokenize(prompts)


def scores(model, pixels, ids):
    """S [B, P] = logit_scale · cos(image, text)."""
    image = F.normalize(model.encode_image(pixels), dim=-1)
    text = F.normalize(model.encode_text(ids), dim=-1)
    return model.logit_scale.exp() * image @ text.t()


def bare_forward(model, image, prompts):
    pixels, ids = inputs(model, image, prompts)
    with torch.no_grad():
        return scores(model, pixels, ids)


def bare_forward_backward(model, image, prompts):
    """One forward and one backward of S to the pixels."""
    pixels, ids = inputs(model, image, prompts)
    pixels.requires_grad_(True)
    return torch.autograd.grad(scores(model, pixels, ids).sum(), pixels)[0]


def bare_forward_backward_params(model, image, prompts):
    """The same, with ``S.backward()``: every parameter's gradient is computed too."""
    pixels, ids = inputs(model, image, prompts)
    scores(model, pixels, ids).sum().backward()
    model.zero_grad(set_to_none=True)


def interleaved(variants, repeats, warmup=1):
    """Time each callable of ``variants`` {name: fn} ``repeats`` times, one of each per round.

    Returns {name: [seconds per round]}."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return times


def ratio(times, method, baseline):
    """(median of per-round ratios, 25th and 75th percentile of them, ratio of the fastest runs)."""
    rounds = sorted(m / b for m, b in zip(times[method], times[baseline]))
    quartiles = statistics.quantiles(rounds, n=4) if len(rounds) > 1 else [rounds[0]] * 3
    return statistics.median(rounds), quartiles[0], quartiles[2], min(times[method]) / min(times[baseline])


def print_times(times):
    for name, seconds in times.items():
        ms = sorted(s * 1e3 for s in seconds)
        print(f"  {name:<34} median {statistics.median(ms):9.1f} ms   min {ms[0]:9.1f}   max {ms[-1]:9.1f}   (n={len(ms)})")


def report(target, measured, limit, lower_is_better=True, detail=""):
    """One result line: ``RESULT <target>: measured <x> limit <y> measured/limit <r> MET|MISSED``."""
    fraction = measured / limit
    met = fraction <= 1 if lower_is_better else fraction >= 1
    sense = "<=" if lower_is_better else ">="
    line = (f"RESULT {target}: measured {measured:.4g} (limit {sense} {limit:g}) "
            f"measured/limit {fraction:.3f} {'MET' if met else 'MISSED'}")
    print(line + (f"  [{detail}]" if detail else ""), flush=True)
    return met


def _spread(times, method, baseline):
    median, low, high, fastest = ratio(times, method, baseline)
    return median, f"per-round quartiles {low:.3f}-{high:.3f}, fastest-run ratio {fastest:.3f}"


def report_ratio(target, times, method, baseline, limit):
    median, spread = _spread(times, method, baseline)
    return report(target, median, limit, detail=spread)


def print_ratio(label, times, method, baseline):
    """A ratio with no target (for information)."""
    median, spread = _spread(times, method, baseline)
    print(f"INFO {label}: {median:.3f}  [{spread}]", flush=True)


def proc_status(field):
    """A field of /proc/self/status in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def print_peak_of(run):
    """A memory child's one job: reset the peak resident set (5 → /proc/self/clear_refs makes
    VmHWM equal VmRSS; Linux >= 4.0), call ``run()`` once, print {"peak_bytes": VmHWM − VmRSS before}."""
    gc.collect()
    before = proc_status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    run()
    print(json.dumps({"peak_bytes": proc_status("VmHWM") - before}))


def peaks_in_fresh_processes(script, kinds, model, repeats):
    """{kind: [peak bytes]}: ``script --child KIND --model MODEL`` (which calls print_peak_of) in a
    fresh process per measurement, ``repeats`` per kind, interleaved with the order rotated."""
    import subprocess
    import sys
    peaks = {kind: [] for kind in kinds}
    for round_ in range(repeats):
        shift = round_ % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            out = subprocess.run([sys.executable, str(script), "--child", kind, "--model", model],
                                 capture_output=True, text=True, check=True)
            peaks[kind].append(json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"])
    return peaks


def child_or_arguments(parser, kinds, child, argv=None):
    """Parse argv with the hidden ``--child KIND`` that peaks_in_fresh_processes starts a
    measurement with: then run ``child(kind, args.model)`` and return None; else the arguments."""
    import argparse
    parser.add_argument("--child", choices=kinds, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.model)
        return None
    return args


def print_peaks(peaks):
    """Print each kind's median peak and every measurement (MiB); returns {kind: median bytes}."""
    medians = {kind: statistics.median(values) for kind, values in peaks.items()}
    for kind, values in peaks.items():
        print(f"  peak {kind:<44} median {medians[kind] / 2**20:8.1f} MiB  all: "
              f"{', '.join(f'{v / 2**20:.1f}' for v in values)}")
    return medians


def load_average():
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def header(title):
    print(f"== {title}  (torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, load average {load_average():.1f})", flush=True)


def compare_on_models(argv, doc, target, limit, variants, method, baseline, info=()):
    """The shape of targets 1 and 2: for each model named on the command line (--models, --repeats),
    time ``variants(model, image, prompt)`` {name: fn} interleaved and report ``method`` / ``baseline``;
    ``info``: (label, other baseline) pairs printed for reference. Returns the exit status."""
    import argparse

    from clipviz.model import random_model
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--models", nargs="+", default=["ViT-B/32", "ViT-B/16"])
    args = parser.parse_args(argv)
    setup()
    header(doc.splitlines()[0])
    image, prompt = photo(), PROMPTS[0]
    met = True
    for name in args.models:
        times = interleaved(variants(random_model(name), image, prompt), args.repeats)
        print(f"{name}:")
        print_times(times)
        met &= report_ratio(f"{target} {name}", times, method, baseline, limit)
        for label, other in info:
            print_ratio(f"{label} {name}", times, method, other)
    return 0 if met else 1
