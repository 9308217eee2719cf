"""Side by side on the same model, photo and prompts: clipviz, a plain Chefer loop, captum's
LayerGradCam and pytorch-grad-cam's GradCAM, each ÷ a no-grad image forward (the floor).

Setup (the peers are not clipviz dependencies; they live in this benchmark's own venv, which
reuses the installed CPU torch because PyPI's torch wheel brings CUDA):

    python -m venv --system-site-packages /tmp/peers
    /tmp/peers/bin/pip install --no-deps captum grad-cam ttach   # grad-cam pins torchvision, absent here
    /tmp/peers/bin/pip install scikit-learn                      # grad-cam imports it at module level
    PYTHONPATH=$PWD:$PWD/tests /tmp/peers/bin/python perf/peers.py [--model ViT-B/16] [--prompts 16]

torchvision (which grad-cam imports but these code paths never call) comes from the tests'
stand-in, tests/torchvision_shim.py, plus ``functional.resize``; nothing of it runs.

What each peer computes, for every prompt t (S_t = logit_scale · cos(image, text_t)):
    clipviz:         explain(method="relevance"), defaults (start_layer=-1, text relevance on)
    Chefer loop:     the authors' notebook's shape: one forward + backward of S_t per prompt with the
                     last block's attention kept, R = I + E_h[(∇A ⊙ A)⁺], map = R[CLS, patches]
    captum:          LayerGradCam(forward=S, layer=last block's ln_1).attribute(pixels, target=t)
    pytorch-grad-cam: GradCAM(target_layers=[last block's ln_1], reshape_transform=tokens→[B, D, g, g])
                     with ClassifierOutputTarget(t), one call per prompt
captum's Grad-CAM treats the token axis as channels (it has no ViT reshape); its cost is what is
compared, not its map. CPU, 2 threads, interleaved rounds, medians of per-round ratios.
"""

import argparse
import sys

import torch
import torch.nn.functional as F

import clipviz
from clipviz.model import random_model
from clipviz.preprocess import preprocess_image

from common import PROMPTS, header, interleaved, photo, print_ratio, print_times, setup


def install_peers():
    import torchvision_shim
    torchvision_shim.install()
    sys.modules["torchvision.transforms.functional"].resize = None  # imported, never called here
    from captum.attr import LayerGradCam
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    return LayerGradCam, GradCAM, ClassifierOutputTarget


class Scores(torch.nn.Module):
    """pixels [B, 3, S, S] → S [B, P] against fixed text embeddings (what both peers call)."""

    def __init__(self, model, text):
        super().__init__()
        self.model, self.text = model, text

    def forward(self, pixels):
        return self.model.logit_scale.exp() * F.normalize(self.model.encode_image(pixels), dim=-1) @ self.text.t()


def text_embeddings(model, prompts):
    with torch.no_grad():
        return F.normalize(model.encode_text(clipviz.tokenize(prompts)), dim=-1)


def pixels_of(model, image):
    return preprocess_image(image, model.visual.input_resolution)[0][None]


def chefer_loop(model, image, prompts):
    """The authors' per-prompt loop: forward, backward of S_t, relevance of the last block."""
    text, pixels, block = text_embeddings(model, prompts), pixels_of(model, image), model.visual.transformer.resblocks[-1]
    maps = []
    for t in range(len(prompts)):
        kept = {}
        ask = block.attn.register_forward_pre_hook(
            lambda m, a, k: (a, {**k, "need_weights": True, "average_attn_weights": False}), with_kwargs=True)
        # nn.MultiheadAttention returns a view of the probabilities it multiplied V with: keep that base
        keep = block.attn.register_forward_hook(
            lambda m, a, out: kept.update(a=out[1], base=out[1] if out[1]._base is None else out[1]._base))
        try:
            score = Scores(model, text)(pixels)[0, t]
        finally:
            ask.remove()
            keep.remove()
        grad = torch.autograd.grad(score, kept["base"])[0].view(kept["a"].shape)  # [1, H, N, N]
        relevance = torch.eye(kept["a"].shape[-1]) + (grad * kept["a"].detach()).clamp(min=0).mean(dim=1)[0]
        maps.append(relevance[0, 1:].detach())
    return maps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B/16")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    LayerGradCam, GradCAM, ClassifierOutputTarget = install_peers()
    setup()
    header(f"peers side by side, {args.model}, {args.prompts} prompts")
    model, image, prompts = random_model(args.model), photo(), PROMPTS[:args.prompts]
    grid = model.visual.input_resolution // model.visual.conv1.kernel_size[0]
    layer = model.visual.transformer.resblocks[-1].ln_1

    def floor():
        with torch.no_grad():
            return model.encode_image(pixels_of(model, image))

    def captum():
        scores = Scores(model, text_embeddings(model, prompts))
        method = LayerGradCam(scores, layer)
        return [method.attribute(pixels_of(model, image), target=t) for t in range(len(prompts))]

    def grad_cam():
        scores = Scores(model, text_embeddings(model, prompts))
        to_grid = lambda tokens: tokens[:, 1:].reshape(tokens.shape[0], grid, grid, -1).permute(0, 3, 1, 2)  # noqa: E731
        with GradCAM(model=scores, target_layers=[layer], reshape_transform=to_grid) as cam:
            return [cam(input_tensor=pixels_of(model, image), targets=[ClassifierOutputTarget(t)])
                    for t in range(len(prompts))]

    variants = {"floor: no-grad encode_image": floor,
                "clipviz relevance": lambda: clipviz.explain(model, image, prompts, method="relevance"),
                "Chefer loop": lambda: chefer_loop(model, image, prompts),
                "captum LayerGradCam": captum, "pytorch-grad-cam GradCAM": grad_cam}
    times = interleaved(variants, args.repeats)
    print_times(times)
    for name in list(variants)[1:]:
        print_ratio(f"peers {name} / no-grad encode_image {args.model} P={args.prompts}", times, name,
                    "floor: no-grad encode_image")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
