"""Target 4: peak memory of `relevance` on ViT-L/14@336 is <= 1.3 x that of a bare forward + backward.

    python perf/peak_memory.py [--repeats 3] [--model ViT-L/14@336px]

CPU, random weights, one photo, one prompt. Each measurement runs in a fresh process: build the
model, preprocess and tokenize once (the vocabulary is loaded), warm the thread pools on a tiny
model, then read the resident set size (VmRSS), reset the peak (writing 5 to
/proc/self/clear_refs makes VmHWM equal VmRSS; Linux >= 4.0), run once and read VmHWM. Peak =
VmHWM - VmRSS before the run: what the call itself needed on top of the loaded model. torch's
CPU allocator is invisible to tracemalloc, hence the RSS reading. The GPU figure
(torch.cuda.max_memory_allocated) is in gpu_throughput.py.
"""

import argparse

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
    from common import child_or_arguments, header, peaks_in_fresh_processes, print_peaks, report, setup
    args = child_or_arguments(parser, KINDS, child, argv)
    if args is None:
        return 0
    setup()
    header(f"peak memory above the loaded model, {args.model}, fresh process per measurement")
    median = print_peaks(peaks_in_fresh_processes(__file__, KINDS, args.model, args.repeats))
    every_block = median[KINDS[2]] / median[KINDS[0]]
    print(f"INFO 4 peak memory relevance start_layer=0 (every block recorded)/bare {args.model}: {every_block:.3f}")
    ratio = median[KINDS[1]] / median[KINDS[0]]
    return 0 if report(f"4 peak memory relevance/bare {args.model}", ratio, LIMIT) else 1


if __name__ == "__main__":
    raise SystemExit(main())
