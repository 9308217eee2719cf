"""Issue 19: explanations against the true floor — a no-grad image forward (and, for rollout, a
forward that returns every block's attention weights).

    python perf/floor.py [--repeats 9] [--model ViT-B/16]          CPU, every figure in one run
    python perf/floor.py --device cuda --dtype bf16 --batch 64     GPU: relevance ÷ no-grad forward

CPU, 2 torch threads, random weights, one 360×480 photo, the prompts of common.py. Every side
starts from the same photo array (preprocessing is paid by all):

    floor:           preprocess_image(photo), then model.encode_image(pixels) under torch.no_grad()
    attention floor: the same forward with every block's nn.MultiheadAttention asked for its
                     per-head weights (need_weights=True, average_attn_weights=False) by a
                     forward pre-hook, the weights kept — what any rollout must compute
    relevance:       clipviz.explain(model, photo, prompts, method="relevance") with its defaults
                     (start_layer=-1, text-token relevance on, maps mapped onto the photo), P=1 and 16
    rollout:         clipviz.explain(model, photo, prompt, method="rollout")
    general path:    relevance P=16 with the closed form switched off (what clipviz ran before
                     issue 19), for information
    per photo:       relevance of a list of LIST photos in one explain() call, one per batch, its
                     time ÷ LIST: the prompts are encoded once for the list (clipviz.prompts), as
                     in a folder run, where a single call must encode them for its one photo

Then start_layer=0 at 16 prompts against the code before issue 19 and its peak memory against
the forward (every_block.py, which this run calls). Variants run interleaved (one of each per
round, order rotated) and each ratio is the median over rounds of method ÷ baseline (see
common.py). Prints RESULT lines; exits 1 when a limit is missed.

GPU mode (--device cuda): random ViT-B/16 weights cast to --dtype (both sides run in it; clipviz
explains a model in its own dtype), pixels [batch, 3, 224, 224] and one prompt's token ids already
on the device (no preprocessing, no tokenizer: ftfy and regex are stood in for when missing);
relevance through clipviz.pipeline.run_method with its defaults (text-token relevance on), maps
copied to the host, against ``encode_image`` under no_grad; medians of interleaved synchronised
runs after warm-up (gpu_throughput.py's timing). The limit is checked on a batch of a run (a
folder run encodes its prompts once, clipviz.prompts); one call that encodes them too is printed
beside it.
"""

import argparse
import functools
import statistics

import torch

from common import PROMPTS, header, interleaved, load_average, photo, print_ratio, print_times, report, report_ratio, setup

RUN_IMAGES = 2000  # GPU mode: the run a batch belongs to (perf/folder.py's 2,000 photos)
LIMITS = {"relevance P=1": 1.10, "relevance P=16": 1.35, "rollout": 1.10, "GPU relevance": 1.25}


def floor(model, image):
    from clipviz.preprocess import preprocess_image
    pixels, _ = preprocess_image(image, model.visual.input_resolution)
    with torch.no_grad():
        return model.encode_image(pixels[None])


def attention_floor(model, image):
    """The no-grad forward, every block returning its per-head attention weights [B, H, N, N]."""
    kept, handles = [], []

    def ask(module, args, kwargs):
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def keep(module, args, output):
        kept.append(output[1])

    for block in model.visual.transformer.resblocks:
        handles += [block.attn.register_forward_pre_hook(ask, with_kwargs=True), block.attn.register_forward_hook(keep)]
    try:
        return floor(model, image), kept
    finally:
        for handle in handles:
            handle.remove()


LIST = 4  # photos in one explain() call for the per-photo figures


def per_photo(model, image, prompts):
    """explain() of LIST photos in one call, one per batch (so each image costs what the floor's
    does), the prompts encoded once for all of them: the call's time ÷ LIST."""
    import clipviz
    clipviz.explain(model, [image] * LIST, prompts, method="relevance", batch_size=1)


def general_path(model, image, prompts, **options):
    """explain() as before issue 19: one backward per target (run_method(fast=False))."""
    import clipviz
    import clipviz.explanation as explanation
    saved = explanation.run_method
    explanation.run_method = functools.partial(saved, fast=False)
    try:
        return clipviz.explain(model, image, prompts, method="relevance", **options)
    finally:
        explanation.run_method = saved


def gpu(args):
    """relevance ÷ no-grad encode_image on a GPU, batch ``args.batch``, the model in ``args.dtype``."""
    from gpu_throughput import stub_text_packages, timed, token_ids
    stubbed = stub_text_packages()
    from clipviz.adapters import adapt
    from clipviz.methods import get_method
    from clipviz.model import random_model
    from clipviz.pipeline import run_method
    from clipviz.prompts import encode_prompts
    device, dtype = torch.device(args.device), {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"== issue 19 floor on {name}, {args.model}, batch {args.batch}, {args.dtype}  (torch {torch.__version__}, "
          f"stand-ins for: {stubbed or 'none'})", flush=True)
    with torch.device(device):
        model = random_model(args.model).to(dtype).eval()
    pixels = torch.randn(args.batch, 3, model.visual.input_resolution, model.visual.input_resolution,
                         device=device, dtype=dtype)
    ids = token_ids(1).to(device)
    adapter, relevance = adapt(model), get_method("relevance")
    # what a folder run does: the prompts' side encoded once, then batch after batch (a run of
    # RUN_IMAGES images: enough to keep the text Jacobian, clipviz.prompts.encode_prompts)
    once = {text: encode_prompts(adapter, ids, relevance.needs(adapter, {"text": text}),
                                 images=RUN_IMAGES)
            for text in (True, False)}

    def explain(prompts=None, **options):
        _, cosine, _, output = run_method(adapter, pixels, ids, torch.eye(1, device=device),
                                          torch.arange(1, device=device), relevance, options, prompts=prompts)
        return output.token_maps.float().cpu(), cosine.cpu()

    def no_grad_forward():
        with torch.no_grad():
            return model.encode_image(pixels)

    variants = {"no-grad encode_image": no_grad_forward,
                "relevance, prompts encoded once per run": lambda: explain(once[True]),
                "relevance, prompts encoded per call": explain,
                "relevance, text=False, prompts once": lambda: explain(once[False], text=False),
                "relevance, text=False, per call": lambda: explain(text=False)}
    times = timed(variants, args.repeats, None)  # None: no autocast, the model is in its dtype
    print_times(times)
    floor_time = statistics.median(times["no-grad encode_image"])
    run = statistics.median(times["relevance, prompts encoded once per run"])
    met = report(f"19 GPU relevance (prompts encoded once per run) / no-grad encode_image {args.model} "
                 f"batch {args.batch} {args.dtype}", run / floor_time, LIMITS["GPU relevance"],
                 detail=f"{args.batch / run:.0f} vs {args.batch / floor_time:.0f} images/s")
    for name in list(variants)[2:]:
        print(f"INFO 19 GPU {name} / no-grad encode_image: {statistics.median(times[name]) / floor_time:.3f}", flush=True)
    return 0 if met else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--model", default="ViT-B/16")
    parser.add_argument("--device", default="cpu", help="cpu (every CPU figure), or cuda (the GPU ratio)")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"), help="GPU mode: the model's dtype")
    parser.add_argument("--batch", type=int, default=64, help="GPU mode: images per call")
    parser.add_argument("--every-block-repeats", type=int, default=3)
    parser.add_argument("--memory-repeats", type=int, default=2)
    parser.add_argument("--before", default=None, help="a tree of clipviz at a4b4c4e (default: exported)")
    args = parser.parse_args(argv)
    if args.device != "cpu":
        return gpu(args)
    import clipviz
    from clipviz.model import random_model
    setup()
    header(f"issue 19 floor, {args.model}")
    model, image = random_model(args.model), photo()
    variants = {
        "floor: no-grad encode_image": lambda: floor(model, image),
        "attention floor": lambda: attention_floor(model, image),
        "relevance P=1": lambda: clipviz.explain(model, image, PROMPTS[0], method="relevance"),
        "relevance P=16": lambda: clipviz.explain(model, image, PROMPTS, method="relevance"),
        "rollout": lambda: clipviz.explain(model, image, PROMPTS[0], method="rollout"),
        "general path P=16 (before issue 19)": lambda: general_path(model, image, PROMPTS),
        # a list: the prompts' side encoded once for its batches (one image each, as the floor)
        f"relevance P=1, per photo of {LIST}": lambda: per_photo(model, image, PROMPTS[0]),
        f"relevance P=16, per photo of {LIST}": lambda: per_photo(model, image, PROMPTS),
    }
    times = interleaved(variants, args.repeats)
    times = {name: [t / LIST for t in runs] if "per photo" in name else runs for name, runs in times.items()}
    print_times(times)
    met = report_ratio(f"19 relevance P=1 / no-grad encode_image {args.model}", times, "relevance P=1",
                       "floor: no-grad encode_image", LIMITS["relevance P=1"])
    met &= report_ratio(f"19 relevance P=16 / no-grad encode_image {args.model}", times, "relevance P=16",
                        "floor: no-grad encode_image", LIMITS["relevance P=16"])
    met &= report_ratio(f"19 rollout / forward returning attention weights {args.model}", times, "rollout",
                        "attention floor", LIMITS["rollout"])
    for prompts in (1, 16):
        print_ratio(f"19 relevance P={prompts}, per photo of a list of {LIST} / no-grad encode_image {args.model}",
                    times, f"relevance P={prompts}, per photo of {LIST}", "floor: no-grad encode_image")
    print_ratio(f"19 general path P=16 / no-grad encode_image {args.model}", times,
                "general path P=16 (before issue 19)", "floor: no-grad encode_image")
    print_ratio(f"19 relevance P=16 / general path P=16 {args.model}", times, "relevance P=16",
                "general path P=16 (before issue 19)")
    print(f"load average after the floor figures: {load_average():.1f}", flush=True)
    import every_block
    met &= every_block.measure(args.model, args.every_block_repeats, args.memory_repeats, args.before)
    print(f"load average at the end: {load_average():.1f}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
