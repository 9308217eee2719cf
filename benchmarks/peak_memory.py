"""Target 4: peak memory of `relevance` on ViT-L/14@336 is <= 1.3 x that of a bare forward + backward.

    python benchmarks/peak_memory.py [--repeats 3] [--model ViT-L/14@336px]

CPU, random weights, one photo, one prompt. Each measurement runs in a fresh process: build the
model, preprocess and tokenize once (the vocabulary is loaded), warm the thread pools on a tiny
model, then read the resident set size (VmRSS), reset the peak (writing 5 to
/proc/self/clear_refs makes VmHWM equal VmRSS; Linux >= 4.0), run once and read VmHWM. Peak =
VmHWM - VmRSS before the run: what the call itself needed on top of the loaded model. torch's
CPU allocator is invisible to tracemalloc, hence the RSS reading. The GPU figure
(torch.cuda.max_memory_allocated) is in gpu_throughput.py.
"""

import argparse
import statistics

LIMIT = 1.3
KINDS = ("bare forward + grad to pixels", "explain(method='relevance')", "explain(relevance, start_layer=0)")


def child(kind, model_name):
    import clipviz
    from clipviz.model import random_model
    from common import PROMPTS, bare_forward_backward, photo, print_peak_of, setup

    setup()
    image, prompt = photo(), PROMPTS[:1]
    run = {KINDS[0]: lambda m: bare_forward_backward(m, image, prompt),
           KINDS[1]: lambda m: clipviz.explain(m, image, prompt[0], method="relevance"),
           KINDS[2]: lambda m: clipviz.explain(m, image, prompt[0], method="relevance", start_layer=0)}[kind]
    run(random_model("ViT-B/32", vision_layers=1, transformer_layers=1))  # thread pools, vocabulary, kernels
    model = random_model(model_name)
    print_peak_of(lambda: run(model))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="ViT-L/14@336px")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.model)
        return 0
    from common import header, peaks_in_fresh_processes, report, setup
    setup()
    header(f"peak memory above the loaded model, {args.model}, fresh process per measurement")
    peaks = peaks_in_fresh_processes(__file__, KINDS, args.model, args.repeats)
    for kind, values in peaks.items():
        print(f"  {kind:<34} median {statistics.median(values) / 2**20:8.1f} MiB   "
              f"all: {', '.join(f'{v / 2**20:.1f}' for v in values)}")
    base = statistics.median(peaks[KINDS[0]])
    every_block = statistics.median(peaks[KINDS[2]]) / base
    print(f"INFO 4 peak memory relevance start_layer=0 (every block recorded)/bare {args.model}: {every_block:.3f}")
    ratio = statistics.median(peaks[KINDS[1]]) / base
    return 0 if report(f"4 peak memory relevance/bare {args.model}", ratio, LIMIT) else 1


if __name__ == "__main__":
    raise SystemExit(main())
