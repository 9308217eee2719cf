"""A ground-truth benchmark of the explanation methods on synthetic scenes.

    python -m clipviz bench --n 500                        # synth-vit-t16, held-out stream 2
    python -m clipviz bench --model random:ViT-B/16 --n 3  # pipeline check on random weights
    python -m clipviz bench --data ../shared/coco-val-mini # localization on real photos + masks

    result = run_benchmark(model, n=500, seed=2)           # the same from Python: a JSON-ready dict

Modules: ``common`` (what both drivers share), ``synthetic`` and ``photos`` (the drivers),
``scene`` (every metric of one scene), ``sanity`` (cascading randomisation), ``report``
(summaries, tables, JSON); the command line is clipviz.cli.bench.

Scenes: ``clipviz.synth.scene_from_index(seed, i, n_objects=(2, 4))`` for i = 0 … n-1; the default
seed 2 is a held-out stream (training uses stream 0 and refuses streams 1 and 2). In each scene
one present object is queried with ``object_prompt(shape, colour)``, chosen with
``np.random.default_rng([seed, i, 1])``, which also draws one absent (shape, colour) for the
prompt-randomisation check. Both prompts share one forward pass per method.

Maps: each method's raw token map [g, g] is min-max normalised and upsampled onto the scene
with ``map_to_photo`` — exactly ``Explanation.maps`` — and compared with the object's mask of
visible pixels at scene resolution (the 224×224 scenes are the model input, so the crop box is
the identity). ``--data`` compares the same maps with real photos' masks at photo resolution,
counting only the pixels inside the crop the model saw.

Metrics (clipviz.metrics): pointing game, energy share (chance = the mask's area share, reported),
mask IoU at the map-mean threshold, deletion and insertion AUC. Deletion replaces patches, in the
map's order, with the per-channel mean of the input; insertion starts from the input blurred with
a Gaussian of σ = one patch side and puts the original patches back; ``steps`` steps (default 8,
about 25 patches a step on a 14×14 grid). The score is the probability of the queried prompt in a
softmax (logit_scale · cosine) over it and the prompts of every class absent from the scene: the
other objects present do not compete, and a contrastive model's raw cosine means little on its
own (a grey image is as "similar" to every prompt as the scene is). The curve is normalised by the
scores of the full and of the fully replaced image and clipped to [0, 1]; scenes whose full image
scores less than 0.01 above that baseline are left out (counted in ``n``). Chance rows: a uniform
random map per scene and a centre Gaussian (σ = g/4 patches).

Sanity (Adebayo et al. 2018): (a) cascading randomisation — the image encoder's blocks are
re-drawn from the last down (each tensor from a normal with its own mean and std), cumulatively,
and the Spearman correlation of the queried object's token map with the original is reported
after each block, on the first ``sanity_scenes`` scenes; (b) prompt randomisation — Spearman
between the maps for the queried and the absent prompt, every scene. Prompt-agnostic methods
(rollout, attention) give 1.0 there by construction. Both correlate the raw token maps [g, g]
(upsampling adds no information).

Time per explanation: one ``clipviz.pipeline.run_method`` call (forward, backward, method) for one image and its
two prompts, text-token relevance off; the thread count is in the JSON. Methods that do not
apply to the model family are tried once on a grey image, skipped, and named in the notes.

Determinism: the same seed gives the same scenes, choices, chance maps and randomised weights;
deterministic torch algorithms are switched on during a run. Timings (the ``timing`` key of the
JSON) are the only numbers that change between runs.
"""

from .photos import run_data_benchmark
from .report import markdown
from .synthetic import run_benchmark

__all__ = ["markdown", "run_benchmark", "run_data_benchmark"]
