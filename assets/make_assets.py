"""Regenerate the pictures in assets/ (run from the repository root: python assets/make_assets.py).

Every picture is made offline by the bundled model synth-vit-t16 on held-out synthetic scenes
(benchmark stream, seed 2); none comes from OpenAI's weights, which cannot be downloaded here.
"""

from pathlib import Path

import clipviz
from clipviz.render import comparison_grid, save_figure
from clipviz.synth import object_prompt, scene_from_index

ASSETS = Path(__file__).resolve().parent


def main():
    model, _ = clipviz.load("synth-vit-t16", device="cpu")
    scene = scene_from_index(seed=2, index=21, n_objects=3)
    prompts = [object_prompt(o.shape, o.colour) for o in scene.objects]

    exp = clipviz.explain(model, scene.image, prompts, method="relevance", start_layer=0)
    exp.save(ASSETS / "hero.png", width="double", dpi=120)

    by_method = {name: clipviz.explain(model, scene.image, prompts[:2], method=name)
                 for name in ("relevance", "rollout", "gradcam", "legrad", "gradeclip")
                 if name in clipviz.available_methods()}
    save_figure(comparison_grid(by_method, width="double"), ASSETS / "methods.png", dpi=110)
    print("wrote", ASSETS / "hero.png", "and", ASSETS / "methods.png")


if __name__ == "__main__":
    main()
