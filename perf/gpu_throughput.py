"""GPU figures: target 6 (`relevance` on ViT-B/16 at batch 64 under autocast reaches >= 0.8 x the
throughput of a bare forward + backward), and the GPU side of targets 1-4.

    python perf/gpu_throughput.py [--repeats 10] [--out results.json]

Random weights built on the GPU (fp32 parameters, autocast fp16 / bf16 for the compute). Inputs
are tensors already on the device: pixels [B, 3, 224, 224] and token ids shaped like tokenizer
output (SOT, words, EOT, padding), so the comparison is the model work alone, CPU preprocessing
excluded on both sides, and no tokenizer is needed. ``relevance`` runs through
``clipviz.pipeline.run_method`` (what ``explain`` runs after preprocessing) with its defaults,
text-token relevance included, and its maps are copied to the host. Times are medians of
interleaved, synchronised runs after warm-up. One script, one device call: device time is scarce.
"""

import argparse
import importlib.util
import json
import statistics
import sys
import time
import types

import torch
import torch.nn.functional as F


def stub_text_packages():
    """The tokenizer (ftfy, regex) is never used here; stand-ins let clipviz import without them."""
    missing = [name for name in ("ftfy", "regex") if importlib.util.find_spec(name) is None]
    for name in missing:
        module = types.ModuleType(name)
        module.fix_text = lambda text, **_: text
        module.compile = lambda *args, **kwargs: None
        module.IGNORECASE = 0
        sys.modules[name] = module
    return missing


def token_ids(count, length=77, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(count, length, dtype=torch.long)
    for row in range(count):
        words = int(torch.randint(1, 12, (1,), generator=generator))
        ids[row, 0], ids[row, 1 + words] = 49406, 49407
        ids[row, 1:1 + words] = torch.randint(1, 49000, (words,), generator=generator)
    return ids


def scores(model, pixels, ids):
    image = F.normalize(model.encode_image(pixels).float(), dim=-1)
    text = F.normalize(model.encode_text(ids).float(), dim=-1)
    return model.logit_scale.exp() * image @ text.t()


def bare_forward_backward(model, pixels, ids):
    pixels = pixels.detach().requires_grad_(True)
    return torch.autograd.grad(scores(model, pixels, ids).sum(), pixels)[0]


def bare_forward_backward_params(model, pixels, ids):
    scores(model, pixels, ids).sum().backward()
    model.zero_grad(set_to_none=True)


def bare_forward(model, pixels, ids):
    with torch.no_grad():
        return scores(model, pixels, ids)


def method(model, pixels, ids, name, **options):
    """run_method with one target per prompt; maps (and text relevance) end on the host."""
    from clipviz.adapters import adapt
    from clipviz.pipeline import run_method
    from clipviz.methods import get_method
    prompts = ids.shape[0]
    _, cosine, _, output = run_method(adapt(model), pixels, ids, torch.eye(prompts), torch.arange(prompts),
                                      get_method(name), options)
    return output.token_maps.float().cpu(), cosine.cpu()


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def autocast(dtype):
    kind = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(kind, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def timed(variants, repeats, autocast_dtype, warmup=3):
    """{name: fn} → {name: [seconds]}, interleaved, synchronised, under autocast."""
    times = {name: [] for name in variants}
    with autocast(autocast_dtype):
        for _ in range(warmup):
            for fn in variants.values():
                fn()
        for round_ in range(repeats):
            names = list(variants)
            names = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in names:
                sync()
                start = time.perf_counter()
                variants[name]()
                sync()
                times[name].append(time.perf_counter() - start)
    return times


def median_ms(seconds):
    return statistics.median(seconds) * 1e3


def result(target, measured, limit, higher_is_better=False):
    met = measured >= limit if higher_is_better else measured <= limit
    sense = ">=" if higher_is_better else "<="
    print(f"RESULT {target}: measured {measured:.3f} (limit {sense} {limit:g}) measured/limit {measured / limit:.3f} "
          f"{'MET' if met else 'MISSED'}", flush=True)
    return {"target": target, "measured": measured, "limit": limit, "met": met}


def peak_bytes(fn):
    if not torch.cuda.is_available():  # dry run
        fn()
        return 1
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default=None)
    parser.add_argument("--large", default="ViT-L/14@336px", help="model for the peak-memory figure")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, to check the script (no figures)")
    args = parser.parse_args(argv)
    stubbed = stub_text_packages()
    from clipviz.model import random_model

    device = torch.device("cpu" if args.dry_run else "cuda")
    name = "dry run on the CPU" if args.dry_run else torch.cuda.get_device_name()
    print(f"== {name}  torch {torch.__version__}  stand-ins for: {stubbed or 'none'}", flush=True)
    started = time.perf_counter()
    report = {"device": name, "torch": torch.__version__, "results": [], "times_ms": {}}
    with torch.device(device):
        model = random_model("ViT-B/16")
    one = token_ids(1).to(device)
    sixteen = token_ids(16, seed=1).to(device)
    batch = torch.randn(args.batch, 3, 224, 224, device=device)
    if args.dry_run:
        model = random_model("ViT-B/16", vision_layers=2, transformer_layers=2).to(device)
    single = batch[:1].clone()

    # target 6: throughput at batch 64 under autocast
    for label, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        times = timed({
            "bare forward + grad to pixels": lambda: bare_forward_backward(model, batch, one),
            "bare forward + score.backward()": lambda: bare_forward_backward_params(model, batch, one),
            "relevance (text relevance on)": lambda: method(model, batch, one, "relevance"),
            "relevance, text=False": lambda: method(model, batch, one, "relevance", text=False),
            "bare forward (no_grad)": lambda: bare_forward(model, batch, one),
            "rollout": lambda: method(model, batch, one, "rollout"),
        }, args.repeats, dtype)
        print(f"ViT-B/16, batch {args.batch}, autocast {label}:")
        for name, seconds in times.items():
            print(f"  {name:<34} {median_ms(seconds):8.1f} ms  {args.batch / statistics.median(seconds):8.0f} images/s  "
                  f"(min {min(seconds) * 1e3:.1f}, max {max(seconds) * 1e3:.1f})")
        report["times_ms"][f"B/16 batch {args.batch} {label}"] = {k: median_ms(v) for k, v in times.items()}
        bare = statistics.median(times["bare forward + grad to pixels"])
        for name in ("relevance (text relevance on)", "relevance, text=False"):
            throughput = bare / statistics.median(times[name])
            report["results"].append(result(f"6 throughput {name} / bare, {label}", throughput, 0.8, True))
        report["results"].append(result(f"2(GPU) rollout / bare no_grad forward, batch {args.batch} {label}",
                                        statistics.median(times["rollout"]) / statistics.median(times["bare forward (no_grad)"]), 1.15))

    # targets 1 and 3 on the GPU: one image, fp32 (latency)
    times = timed({
        "bare forward + grad to pixels": lambda: bare_forward_backward(model, single, one),
        "relevance, 1 prompt": lambda: method(model, single, one, "relevance"),
        "relevance, 16 prompts": lambda: method(model, single, sixteen, "relevance"),
    }, args.repeats, None)
    print("ViT-B/16, one image, fp32:")
    for name, seconds in times.items():
        print(f"  {name:<34} {median_ms(seconds):8.1f} ms")
    report["times_ms"]["B/16 one image fp32"] = {k: median_ms(v) for k, v in times.items()}
    one_prompt = statistics.median(times["relevance, 1 prompt"])
    report["results"].append(result("1(GPU) relevance / bare, one image fp32", one_prompt / statistics.median(times["bare forward + grad to pixels"]), 1.15))
    report["results"].append(result("3(GPU) 16 prompts / 1 prompt, fp32", statistics.median(times["relevance, 16 prompts"]) / one_prompt, 4.0))
    del model, batch

    # target 4 on the GPU: peak memory above the loaded model, ViT-L/14@336
    with torch.device(device):
        large = random_model(args.large, **({"vision_layers": 2, "transformer_layers": 2} if args.dry_run else {}))
    resolution = large.visual.input_resolution
    for count, dtype in ((1, None), (16, torch.bfloat16)):
        pixels = torch.randn(count if not args.dry_run else 2, 3, resolution, resolution, device=device)
        with autocast(dtype):
            method(large, pixels[:1], one, "relevance")  # warm-up (kernels, workspaces)
            bare_forward_backward(large, pixels[:1], one)
            peaks = {"bare": peak_bytes(lambda: bare_forward_backward(large, pixels, one)),
                     "relevance": peak_bytes(lambda: method(large, pixels, one, "relevance")),
                     "relevance start_layer=0": peak_bytes(lambda: method(large, pixels, one, "relevance", start_layer=0))}
        label = f"batch {count} {'fp32' if dtype is None else 'autocast bf16'}"
        print(f"{args.large} peak memory above the model, {label}: " +
              ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in peaks.items()))
        report["times_ms"][f"{args.large} peak MiB {label}"] = {k: v / 2**20 for k, v in peaks.items()}
        report["results"].append(result(f"4(GPU) peak memory relevance / bare, {label}", peaks["relevance"] / peaks["bare"], 1.3))
    print(f"(script ran {time.perf_counter() - started:.0f} s)")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(report, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
