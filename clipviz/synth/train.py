"""Train the small offline CLIP (``synth-vit-t16``) on synthetic scenes, from a seed.

    python -m clipviz.synth.train --out clipviz/weights/synth-vit-t16.pt --device cuda  # the bundled model
    python -m clipviz.synth.train --out /tmp/smoke.pt --steps 20 --batch 32 --device cpu  # slow

The bundled model took 447 s on one H100 with 14 DataLoader workers (clipviz/weights/synth-vit-t16.json
records the run); on CPU a step of 512 scenes takes minutes.

Model: the OpenAI ViT architecture (clipviz.model.CLIP) at ARCH's sizes: 16 px patches at 224 px
(a 14×14 patch grid), a 256-wide 6-layer image tower and a 128-wide 4-layer text tower over the
full 77-token, 49,408-word CLIP vocabulary, so ``clipviz.tokenize`` works unchanged.

Data: loaded batch number ``k`` holds scenes ``k * batch ... (k + 1) * batch - 1`` of stream
``seed`` (``scene_from_index(seed, index)``: 1–4 objects), each with ``repeats`` captions drawn by
``caption_for`` from ``np.random.default_rng([seed, index, 1 + r])``. Scenes are made on the fly in
DataLoader workers; a batch does not depend on the number of workers. Making scenes, not the GPU,
limits the speed, so each batch is trained on ``repeats`` times, each time with other captions and
in a different step: the steps after loading batch k train on (batch k, caption 0),
(batch k-1, caption 1), ..., (batch k-repeats+1, caption repeats-1). Evaluation streams
(clipviz.synth.evaluate.EVAL_SEEDS) are refused as training seeds, so they stay held out.

Loss: the CLIP paper's symmetric cross-entropy over the batch's image–caption similarities, with
a learnable temperature (logit_scale, clamped at ln 100). AdamW, linear warm-up then cosine decay.
On CUDA, bf16 autocast; the saved weights are fp16 in OpenAI's state-dict layout.

Determinism: the same seed gives the same initial weights and the same batches on any machine.
Two CPU runs on one machine give identical weights. On a GPU, kernels such as the atomics-based backward of
the embedding and the attention kernels may add in a different order from run to run, so two
runs agree to rounding at first and drift apart slowly; their accuracy is the same, their bits
are not.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..cache import file_sha256
from ..model import CLIP
from ..preprocess import MEAN, STD
from .captions import caption_for
from .scenes import scene_from_index

ARCH = dict(embed_dim=256, image_resolution=224, vision_layers=6, vision_width=256,
            vision_patch_size=16, context_length=77, vocab_size=49408, transformer_width=128,
            transformer_heads=2, transformer_layers=4)
MAX_LOGIT_SCALE = math.log(100.0)


class SceneCaptions(torch.utils.data.Dataset):
    """Item ``index`` -> (image uint8 [224, 224, 3], token ids int64 [captions, 77]) of stream ``seed``.

    Caption ``r`` is drawn from ``np.random.default_rng([seed, index, 1 + r])``."""

    def __init__(self, seed, length, captions=1):
        self.seed, self.length, self.captions = seed, length, captions

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        from ..tokenizer import tokenize  # imported in the worker: it reads the vocabulary once

        scene = scene_from_index(self.seed, index)
        captions = [caption_for(scene, np.random.default_rng([self.seed, index, 1 + r])) for r in range(self.captions)]
        return torch.from_numpy(scene.image), tokenize(captions)


def normalise(images):
    """uint8 [B, 224, 224, 3] -> float32 [B, 3, 224, 224] with CLIP's MEAN/STD.

    Scenes are already 224×224, so this equals ``preprocess_image(scene.image, 224)`` exactly
    (tests/test_synth_model.py checks it)."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return images.permute(0, 3, 1, 2).float().div(255).sub(mean).div(std)


def clip_loss(model, images, texts):
    """Symmetric contrastive loss -> (loss, image->text accuracy within the batch)."""
    image_features = F.normalize(model.encode_image(images), dim=-1)
    text_features = F.normalize(model.encode_text(texts), dim=-1)
    logits = model.logit_scale.exp() * image_features.float() @ text_features.float().t()  # [B, B]
    labels = torch.arange(len(logits), device=logits.device)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    accuracy = (logits.argmax(dim=1) == labels).float().mean()
    return loss, accuracy


def learning_rate(step, steps, peak, warmup):
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def fp16_state_dict(model):
    """OpenAI's checkpoint layout: every tensor of the state dict in fp16, on the CPU."""
    return {name: tensor.detach().to("cpu", torch.float16).clone() for name, tensor in model.state_dict().items()}


def save(model, out, info):
    """Write the fp16 weights to ``out`` and ``info`` (plus size and sha256) to out's .json."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    torch.save(fp16_state_dict(model), out)
    info = dict(info, file=os.path.basename(out), bytes=os.path.getsize(out), sha256=file_sha256(out))
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(info, f, indent=2)
    return info


def train(args):
    from .evaluate import EVAL_SEEDS

    if args.seed in EVAL_SEEDS:
        sys.exit(f"seed {args.seed} is an evaluation stream ({EVAL_SEEDS}); train on another seed")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = CLIP(**ARCH).to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # biases, norms, class token, logit_scale
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.98), eps=1e-6,
                                  fused=device.type == "cuda")
    repeats = args.repeats
    batches = 0  # the fewest loaded batches that give args.steps steps: batch k gives min(k + 1, repeats)
    while sum(min(k + 1, repeats) for k in range(batches)) < args.steps:
        batches += 1
    data = torch.utils.data.DataLoader(
        SceneCaptions(args.seed, batches * args.batch, repeats), batch_size=args.batch, shuffle=False,
        num_workers=args.workers, pin_memory=device.type == "cuda", drop_last=True,
        persistent_workers=args.workers > 0, prefetch_factor=8 if args.workers > 0 else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"training {n_params / 1e6:.2f}M parameters on {device} for {args.steps} steps of "
          f"{args.batch} scenes ({batches * args.batch} scenes of stream {args.seed}, each in {repeats} "
          f"steps; {args.workers} workers)", flush=True)

    info = dict(name="synth-vit-t16", arch=ARCH, seed=args.seed, steps=args.steps, batch=args.batch,
                repeats=repeats, scenes=batches * args.batch,
                lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay,
                command="python -m clipviz.synth.train " + " ".join(sys.argv[1:]))
    start = last_time = time.time()
    step, recent, stopped_early = 0, [], False  # recent: the last `repeats` batches, newest first
    for images, texts in data:
        batch = (normalise(images.to(device, non_blocking=True)), texts.to(device, non_blocking=True))
        recent = [batch] + recent[:repeats - 1]
        for r, (images, texts) in enumerate(recent):
            if step == args.steps:
                break
            lr = learning_rate(step, args.steps, args.lr, args.warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                loss, accuracy = clip_loss(model, images, texts[:, r])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            if step % args.log_every == 0 or step == args.steps - 1:
                now = time.time()
                rate = (args.log_every if step else 1) / (now - last_time)
                last_time = now
                print(f"step {step:6d}/{args.steps}  loss {loss.item():.4f}  batch acc {accuracy.item():.3f}  "
                      f"lr {lr:.2e}  scale {model.logit_scale.exp().item():5.1f}  {rate:5.2f} steps/s  "
                      f"{rate * args.batch / repeats:6.0f} new scenes/s  {now - start:6.0f}s", flush=True)
            step += 1
        if args.time_limit and time.time() - start > args.time_limit:
            print(f"time limit of {args.time_limit}s reached after {step} steps: saving early", flush=True)
            stopped_early = True
            break
    info.update(steps_done=step, stopped_early=stopped_early, train_seconds=round(time.time() - start),
                final_loss=round(loss.item(), 4),
                device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    info = save(model, args.out, info)
    print(f"saved {args.out}: {info['bytes'] / 1e6:.2f} MB, sha256 {info['sha256']}", flush=True)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="checkpoint path (.pt); a .json beside it gets the details")
    parser.add_argument("--seed", type=int, default=0, help="training stream and initialisation seed")
    parser.add_argument("--steps", type=int, default=5000, help="optimizer steps")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="steps (each with other captions) per loaded batch")
    parser.add_argument("--lr", type=float, default=5e-4, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up steps")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=min(14, os.cpu_count() or 1))
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--time-limit", type=float, default=0,
                        help="seconds; stop and save early when exceeded (0: none). Stopping early "
                             "cuts the cosine schedule short, so the result is no longer the seed's")
    train(parser.parse_args(argv))


if __name__ == "__main__":
    main()
