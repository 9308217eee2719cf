"""Target 2: `rollout` costs <= 1.15 x a bare forward under torch.no_grad().

    python perf/rollout_cost.py [--repeats 9] [--models ViT-B/32 ViT-B/16]

Both sides start from the same photo array and prompt string; random weights, 224 px, one image,
one prompt, 2 torch threads. Rollout records every block (start_layer=0, its default).
"""

import clipviz

from common import bare_forward, compare_on_models

LIMIT = 1.15
METHOD, BARE = "explain(method='rollout')", "bare forward (no_grad)"


def variants(model, image, prompt):
    return {BARE: lambda: bare_forward(model, image, [prompt]),
            METHOD: lambda: clipviz.explain(model, image, prompt, method="rollout")}


def main(argv=None):
    return compare_on_models(argv, __doc__, "2 rollout/bare", LIMIT, variants, METHOD, BARE)


if __name__ == "__main__":
    raise SystemExit(main())
