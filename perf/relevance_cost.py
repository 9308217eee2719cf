"""Target 1: `relevance` with one prompt costs <= 1.15 x a bare forward + backward of the same score.

    python perf/relevance_cost.py [--repeats 9] [--models ViT-B/32 ViT-B/16]

Both sides start from the same photo array and prompt string (see common.py for the baseline).
Random weights, 224 px, one image, one prompt, 2 torch threads. ``explain`` runs with its
defaults (start_layer=-1, text-token relevance on).
"""

import clipviz

from common import bare_forward_backward, bare_forward_backward_params, compare_on_models

LIMIT = 1.15
METHOD, BARE, BARE_PARAMS = ("explain(method='relevance')", "bare forward + grad to pixels",
                             "bare forward + score.backward()")


def variants(model, image, prompt):
    return {BARE: lambda: bare_forward_backward(model, image, [prompt]),
            BARE_PARAMS: lambda: bare_forward_backward_params(model, image, [prompt]),
            METHOD: lambda: clipviz.explain(model, image, prompt, method="relevance")}


def main(argv=None):
    return compare_on_models(argv, __doc__, "1 relevance/bare", LIMIT, variants, METHOD, BARE,
                             info=[("1 relevance/(bare forward + score.backward())", BARE_PARAMS)])


if __name__ == "__main__":
    raise SystemExit(main())
