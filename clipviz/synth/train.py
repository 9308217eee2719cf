"""Train the small offline CLIP (``synth-vit-s16``) on binding scenes, from a seed; resumable.

    python -m clipviz.synth.train --out synth-vit-s16.pt --photos ../shared/images \\
        --steps 5772 --decay-start 4313 --device cuda          # the first run (one H200, 860 s)
    python -m clipviz.synth.train --out /tmp/smoke.pt --steps 4 --batch 8 --device cpu --tiny  # smoke
    python -m clipviz.synth.train ... --resume ckpt/last.pt    # continue a run where it stopped

Model: the OpenAI ViT architecture (clipviz.model.CLIP) at ARCH's sizes: 16 px patches at 224 px
(a 14×14 patch grid), a 384-wide 12-block image tower (6 heads; ViT-S/16's shape) and a 128-wide
6-layer text tower over the full 77-token, 49,408-word CLIP vocabulary, so ``clipviz.tokenize``
works unchanged. 29.3 M parameters, 58.7 MB in fp16.

Data (clipviz.synth.binding): loaded batch ``j`` holds training scenes ``j * batch ... (j + 1) *
batch - 1`` of stream ``seed`` (``training_scene``), each with ``repeats`` captions and
``negatives`` hard negatives per caption (``training_text`` with rng ``[seed, index, 1 + r]``).
Making scenes on the CPU, not the GPU, limits the speed, so each loaded batch is trained on
``repeats`` times with other captions, interleaved: step ``s = j * repeats + r`` trains on batch
``j - r`` (batch ``j`` while ``j - r < 0``) with caption ``r``. Evaluation streams
(clipviz.synth.evaluate.EVAL_SEEDS) are refused as training seeds.

Loss: the CLIP paper's symmetric cross-entropy (Radford et al. 2021, Fig. 3) with two changes for
binding. Image → text: each image also competes against its own caption's hard negatives
(Yuksekgonul et al. 2023, NegCLIP). Both directions: another scene that holds every class a caption
names is not counted as a negative for it (it is masked out of the softmax), since the caption is
true of it too. Learnable temperature (logit_scale, clamped at ln 100). AdamW; warm-up, then a
constant rate, then a linear decay to 0 (warmup-stable-decay: Hägele et al. 2024), so a run can be
continued from any checkpoint taken before its decay. On CUDA, bf16 autocast; saved weights are
fp16 in OpenAI's state-dict layout.

Two auxiliary losses, off by default (weight 0: the default command repeats run 1), meant to keep
"where" in the tokens the explanation methods read (run 1, with the contrastive loss alone, matched
captions perfectly but its last block's relevance peaked on the named object in about half of the
scenes: on object borders, on the background, or on the other object of a same-shape pair). What
each did in runs 2 and 3 is in docs/model_card_synth.md:

- patch loss (weight ``--patch-weight``): every last-block patch token, through the image tower's
  own ln_post and proj, is classified among the class prompts (``all_class_prompts()``) and a
  background prompt by cosine similarity × PATCH_SCALE, against ``binding.patch_labels`` (the class
  of the object covering the patch, or the background; patches on object borders are left out).
  This is the dense patch–text alignment of fine-grained CLIP variants (e.g. Mukhoti et al. 2023,
  "Open vocabulary semantic segmentation with patch aligned contrastive learning", PACL).
- class-token attention loss (weight ``--attention-weight``): the share of the last block's CLS
  attention (mean over heads, patches only) that does not fall on object patches (labelled with a
  class: background and object borders both count against it). It does not say which object to
  look at — the text decides that through the gradients — only that the class token reads the
  objects rather than storing its summary in background or border tokens (the "register" tokens
  of Darcet et al. 2024, "Vision transformers need registers"). A first try that counted only
  background patches left the attention on object borders, where half the peaks then fell.

Resume: ``--ckpt-dir`` receives ``last.pt`` (fp32 weights, AdamW state, step, schedule) every
``--save-every`` seconds and at the end; ``--resume`` continues from it exactly (same batches,
same schedule). ``--resume`` also takes a weights-only file (e.g. the fp16 ``--out`` file, with its
.json beside it for the step): AdamW's moments then restart, and the rate warms up again over
``--warmup`` steps.

Time limit: with ``--time-limit T --decay-seconds D --decay-start -1``, the decay begins
when this run has trained for T - D seconds and lasts as many steps as the measured speed fits in
D seconds; the .json records where it began and ended, so ``--steps END --decay-start BEGIN``
repeats the schedule without the clock.

State (see docs/model_card_synth.md): the first run (the command above, cut by its 860 s time limit
at step 5652 of 5772) misses issue 14's pointing targets, so it is not bundled; ``synth-vit-t16``
stays the default.

Determinism: the same seed gives the same initial weights and the same batches on any machine
and any number of DataLoader workers. GPU kernels (atomics in the embedding backward, attention)
add in a varying order, so two GPU runs agree in accuracy, not in bits.
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
from .binding import BACKGROUND, IGNORED, N_CLASSES, NEGATIVES, multi_hot, patch_labels, training_scene, training_text
from .captions import all_class_prompts

NAME = "synth-vit-s16"
ARCH = dict(embed_dim=256, image_resolution=224, vision_layers=12, vision_width=384,
            vision_patch_size=16, context_length=77, vocab_size=49408, transformer_width=128,
            transformer_heads=2, transformer_layers=6)
TINY_ARCH = dict(ARCH, vision_layers=2, vision_width=64, transformer_layers=1, transformer_width=64,
                 transformer_heads=1, embed_dim=32)  # --tiny: CPU smoke runs of the whole loop
MAX_LOGIT_SCALE = math.log(100.0)
BACKGROUND_PROMPT = "a photo of the background"
PATCH_SCALE = 20.0  # inverse temperature of the patch loss's cosine similarities


class BindingExamples(torch.utils.data.Dataset):
    """Item ``index`` of stream ``seed`` -> (image uint8 [224, 224, 3], token ids int64
    [repeats, 1 + negatives, 77] (caption first, then its negatives), present bool [N_CLASSES],
    named bool [repeats, N_CLASSES], patch labels int64 [grid * grid] (binding.patch_labels)).
    Photos load once per worker, on first use."""

    def __init__(self, seed, repeats=1, negatives=NEGATIVES, photos_dir=None, grid=14):
        self.seed, self.repeats, self.negatives, self.photos_dir = seed, repeats, negatives, photos_dir
        self.grid = grid
        self._photos = None

    def __len__(self):
        return 2 ** 62

    def photos(self):
        if self._photos is None and self.photos_dir:
            from .photos import load_photos
            self._photos = load_photos(self.photos_dir)
        return self._photos

    def __getitem__(self, index):
        from ..tokenizer import tokenize  # imported in the worker: it reads the vocabulary once

        scene = training_scene(self.seed, index, self.photos())
        texts, named = [], []
        for r in range(self.repeats):
            caption, negatives, classes = training_text(scene, [self.seed, index, 1 + r], self.negatives)
            texts += [caption] + negatives
            named.append(classes)
        ids = tokenize(texts).view(self.repeats, 1 + self.negatives, -1)
        present = multi_hot([(o.shape, o.colour) for o in scene.objects])
        return (torch.from_numpy(scene.image), ids, torch.from_numpy(present), torch.from_numpy(np.stack(named)),
                torch.from_numpy(patch_labels(scene, self.grid)))


def normalise(images):
    """uint8 [B, 224, 224, 3] -> float32 [B, 3, 224, 224] with CLIP's MEAN/STD.

    Scenes are already 224×224, so this equals ``preprocess_image(scene.image, 224)`` exactly
    (tests/test_synth_model.py checks it)."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return images.permute(0, 3, 1, 2).float().div(255).sub(mean).div(std)


def binding_loss(image_features, text_features, present, named, logit_scale):
    """Symmetric contrastive loss with per-image hard negatives and true-caption masking.

    image_features [B, D]; text_features [B, 1 + K, D] (caption, then its K negatives);
    present bool [B, C]: classes in each scene; named bool [B, C]: classes each caption names;
    logit_scale: scalar tensor (log of the temperature's inverse).
    Image i → text: softmax over the B captions and image i's own K negatives; text j → image:
    softmax over the B images. Caption j counts as true of image i ≠ j when every class it names
    is present in i; such pairs are left out of both softmaxes (-inf).
    Returns (loss, share of images whose caption beats the other captions and its negatives,
    share of images whose caption beats its own negatives)."""
    image_features = F.normalize(image_features.float(), dim=-1)
    text_features = F.normalize(text_features.float(), dim=-1)
    scale = logit_scale.exp()
    captions = text_features[:, 0]
    logits = scale * image_features @ captions.t()  # [B images, B captions]
    negatives = scale * torch.einsum("bd,bkd->bk", image_features, text_features[:, 1:])  # [B, K]
    true_of = (named.float() @ (~present).float().t()).t() == 0  # [i, j]: caption j true of image i
    eye = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(true_of & ~eye, float("-inf"))
    labels = torch.arange(len(logits), device=logits.device)
    image_to_text = torch.cat([logits, negatives], dim=1)
    loss = (F.cross_entropy(image_to_text, labels) + F.cross_entropy(logits.t(), labels)) / 2
    accuracy = (image_to_text.argmax(dim=1) == labels).float().mean()
    beats_negatives = (logits.diagonal()[:, None] > negatives).all(dim=1).float().mean()
    return loss, accuracy, beats_negatives


def patch_loss(visual, tokens, prompt_features, labels, scale=PATCH_SCALE):
    """Cross-entropy of each patch token's class among the prompts (module doc, patch loss).

    visual: the image tower (its ln_post and proj map a token into the joint space);
    tokens [B, 1 + G, W]: the last block's output; prompt_features [C + 1, D]: the class prompts'
    text features, then the background prompt's; labels int64 [B, G] (IGNORED: no target).
    Returns (loss, share of labelled patches classified right)."""
    patches = visual.ln_post(tokens[:, 1:]) @ visual.proj  # [B, G, D]
    logits = scale * F.normalize(patches.float(), dim=-1) @ F.normalize(prompt_features.float(), dim=-1).t()
    labels = labels.flatten()
    loss = F.cross_entropy(logits.flatten(0, 1), labels, ignore_index=IGNORED)
    kept = labels != IGNORED
    accuracy = (logits.flatten(0, 1).argmax(-1)[kept] == labels[kept]).float().mean()
    return loss, accuracy


def class_attention_off_objects(block, block_input, labels):
    """Share of a block's class-token attention (mean over heads) on patches not labelled with a
    class (background and object borders).

    block: a ResidualAttentionBlock (nn.MultiheadAttention, batch first); block_input [B, 1 + G, W]:
    the output of its ln_1, i.e. what its attention reads; labels int64 [B, G]. The CLS row of
    softmax(q kᵀ / √d) is recomputed from the block's own projection weights (the fused kernel
    returns no weights), so its gradient reaches them. Returns a scalar in [0, 1]."""
    attn = block.attn
    width, heads = block_input.shape[-1], attn.num_heads
    head_dim = width // heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(block_input[:, :1], weight[:width], bias[:width])  # [B, 1, W]
    k = F.linear(block_input, weight[width:2 * width], bias[width:2 * width])  # [B, N, W]
    q = q.view(len(q), 1, heads, head_dim).transpose(1, 2)
    k = k.view(len(k), -1, heads, head_dim).transpose(1, 2)
    probs = (q.float() @ k.float().transpose(-1, -2) / math.sqrt(head_dim)).softmax(dim=-1)  # [B, H, 1, N]
    off_objects = ((labels == BACKGROUND) | (labels == IGNORED)).float()[:, None]  # [B, 1, G]
    return (probs[:, :, 0, 1:] * off_objects).sum(-1).mean()


class LastBlockTaps:
    """Forward hooks on the image tower's last block: ``tokens`` (its output [B, N, W]) and
    ``attention_input`` (its ln_1 output), kept with their graphs for the auxiliary losses."""

    def __init__(self, visual):
        self.block = visual.transformer.resblocks[-1]
        self.tokens = self.attention_input = None
        self._handles = [self.block.register_forward_hook(self._keep_tokens),
                         self.block.ln_1.register_forward_hook(self._keep_attention_input)]

    def _keep_tokens(self, module, inputs, output):
        self.tokens = output

    def _keep_attention_input(self, module, inputs, output):
        self.attention_input = output

    def remove(self):
        for handle in self._handles:
            handle.remove()


def learning_rate(step, peak, warmup, decay_start, steps, rewarm_from=None):
    """Warm-up-stable-decay: linear warm-up over ``warmup`` steps, constant ``peak``, then linear
    decay from ``decay_start`` to 0 at ``steps`` (no decay while decay_start is None).
    rewarm_from: the step a weights-only resume began at; the rate warms up again from there."""
    rate = peak * min(1.0, (step + 1) / warmup)
    if rewarm_from is not None:
        rate = min(rate, peak * (step - rewarm_from + 1) / warmup)
    if decay_start is not None and step >= decay_start:
        rate *= max(0.0, (steps - step) / max(1, steps - decay_start))
    return rate


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


def _resume(path, model, optimizer, device):
    """Load ``path`` into model (and optimizer when it holds AdamW's state) -> (step, state dict
    of the schedule, whether the optimizer was restored)."""
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    if "model" in checkpoint:  # a full checkpoint from --ckpt-dir
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        return checkpoint["step"], checkpoint["schedule"], True
    model.load_state_dict({k: v.float() for k, v in checkpoint.items()})
    with open(os.path.splitext(path)[0] + ".json") as f:
        info = json.load(f)
    return info["steps_done"], {"decay_start": None, "steps": info["steps"]}, False


def _batch_order(step, repeats):
    """(loaded batch, batch trained on, caption) of ``step``: step j * repeats + r trains on batch
    j - r (j while that is negative) with caption r."""
    j, r = divmod(step, repeats)
    return j, (j - r if j - r >= 0 else j), r


def train(args):
    from .evaluate import EVAL_SEEDS

    if args.seed in EVAL_SEEDS:
        sys.exit(f"seed {args.seed} is an evaluation stream ({EVAL_SEEDS}); train on another seed")
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    arch = TINY_ARCH if args.tiny else ARCH
    model = CLIP(**arch).to(device).train()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # biases, norms, class token, logit_scale
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.98), eps=1e-6, fused=device.type == "cuda")
    schedule = {"decay_start": args.decay_start, "steps": args.steps}
    start_step, rewarm_from = 0, None
    if args.resume:
        start_step, saved, exact = _resume(args.resume, model, optimizer, device)
        if args.decay_start is None:  # keep a decay that had begun
            schedule = dict(saved, steps=max(saved["steps"], args.steps)) if saved["decay_start"] is not None \
                else schedule
        rewarm_from = None if exact else start_step
        print(f"resumed from {args.resume} at step {start_step} "
              f"({'exact' if exact else 'weights only: AdamW restarts, rate warms up again'})", flush=True)

    from ..tokenizer import tokenize

    prompt_ids = tokenize(all_class_prompts() + [BACKGROUND_PROMPT]).to(device)  # [N_CLASSES + 1, 77]
    taps = LastBlockTaps(model.visual)
    grid = model.visual.patch_grid
    repeats, batch = args.repeats, args.batch
    first_loaded = max(0, start_step // repeats - repeats + 1)
    last_loaded = args.steps // repeats + 1
    data = torch.utils.data.DataLoader(
        BindingExamples(args.seed, repeats, args.negatives, args.photos, grid), batch_size=batch,
        sampler=range(first_loaded * batch, (last_loaded + 1) * batch), num_workers=args.workers,
        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=args.workers > 0,
        prefetch_factor=6 if args.workers > 0 else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"training {n_params / 1e6:.2f}M parameters on {device} from step {start_step} to {args.steps} "
          f"(batch {batch}, {repeats} captions + {args.negatives} negatives each per scene, "
          f"{args.workers} workers, photos {args.photos})", flush=True)

    info = dict(name=NAME, arch=arch, seed=args.seed, batch=batch, repeats=repeats, negatives=args.negatives,
                patch_weight=args.patch_weight, attention_weight=args.attention_weight, lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay, photos=args.photos,
                command="python -m clipviz.synth.train " + args.command_line)
    start = last_time = last_save = last_probe = time.time()
    step, recent, times = start_step, {}, []
    loss = accuracy = beats = patch_accuracy = off_objects = torch.zeros(())
    for loaded, items in enumerate(data, start=first_loaded):
        recent[loaded] = [x.to(device, non_blocking=True) for x in items]
        recent.pop(loaded - repeats, None)
        while step < schedule["steps"] and _batch_order(step, repeats)[0] == loaded:
            _, trained, r = _batch_order(step, repeats)
            images, ids, present, named, labels = recent[trained]
            lr = learning_rate(step, args.lr, args.warmup, schedule["decay_start"], schedule["steps"], rewarm_from)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                texts = model.encode_text(torch.cat([ids[:, r].reshape(-1, ids.shape[-1]), prompt_ids]))
                captions, prompt_features = texts[:-len(prompt_ids)], texts[-len(prompt_ids):]
                loss, accuracy, beats = binding_loss(model.encode_image(normalise(images)),
                                                     captions.view(len(images), -1, texts.shape[-1]),
                                                     present, named[:, r], model.logit_scale)
                dense, patch_accuracy = patch_loss(model.visual, taps.tokens, prompt_features, labels)
                off_objects = class_attention_off_objects(taps.block, taps.attention_input, labels)
                loss = loss + args.patch_weight * dense + args.attention_weight * off_objects
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            step += 1
            now = time.time()
            times.append(now)
            if (schedule["decay_start"] is None and args.time_limit and args.decay_seconds
                    and now - start > args.time_limit - args.decay_seconds):
                rate = (len(times[-200:]) - 1) / max(1e-9, times[-1] - times[-200:][0])
                schedule = {"decay_start": step, "steps": min(args.steps, step + max(1, round(rate * args.decay_seconds)))}
                print(f"decay begins at step {step}, ends at {schedule['steps']} ({rate:.2f} steps/s)", flush=True)
            if step % args.log_every == 0 or step == schedule["steps"]:
                rate = args.log_every / (now - last_time) if step > start_step + args.log_every else float("nan")
                last_time = now
                print(f"step {step:6d}/{schedule['steps']}  loss {loss.item():.4f}  acc {accuracy.item():.3f}  "
                      f"beats negatives {beats.item():.3f}  patch acc {patch_accuracy.item():.3f}  "
                      f"cls attn off objects {off_objects.item():.3f}  lr {lr:.2e}  scale {model.logit_scale.exp().item():5.1f}  "
                      f"{rate:5.2f} steps/s  {now - start:6.0f}s", flush=True)
            if args.probe_every and now - last_probe > args.probe_every:
                _probe(model, args.probe_n, step)
                last_probe = time.time()
            if args.ckpt_dir and now - last_save > args.save_every:
                _checkpoint(args, model, optimizer, step, schedule, info)
                last_save = now
        if step >= schedule["steps"] or (args.time_limit and time.time() - start > args.time_limit):
            break
    info.update(steps=schedule["steps"], decay_start=schedule["decay_start"], steps_done=step,
                resumed_from=start_step if args.resume else None, run_seconds=round(time.time() - start),
                final_loss=round(loss.item(), 4), final_batch_accuracy=round(accuracy.item(), 4),
                final_beats_negatives=round(beats.item(), 4),
                device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    if args.ckpt_dir:
        _checkpoint(args, model, optimizer, step, schedule, info)
    info = save(model, args.out, info)
    print(f"saved {args.out} at step {step}: {info['bytes'] / 1e6:.2f} MB, sha256 {info['sha256']}", flush=True)
    return model


def _probe(model, n, step):
    """Print the quick pointing game of clipviz.synth.targets.peak_pointing (held-out scenes)."""
    from .targets import peak_pointing

    started = time.time()
    model.eval()
    try:
        bench, same_shape = peak_pointing(model, n)
    except Exception as error:  # a log line must never end a long run
        print(f"probe at step {step} failed: {error!r}", flush=True)
        return
    finally:
        model.train()
    print(f"probe at step {step}: relevance peak on the queried object: bench scenes {bench:.3f}, "
          f"same-shape pairs {same_shape:.3f} ({n} each, {time.time() - started:.0f}s)", flush=True)


def _checkpoint(args, model, optimizer, step, schedule, info):
    """Full resumable state to ckpt_dir/last.pt (written to a temporary name, then renamed)."""
    os.makedirs(args.ckpt_dir, exist_ok=True)
    path = os.path.join(args.ckpt_dir, "last.pt")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "schedule": schedule, "info": info}, path + ".tmp")
    os.replace(path + ".tmp", path)
    print(f"checkpoint {path} at step {step}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="fp16 weights (.pt); a .json beside it gets the details")
    parser.add_argument("--seed", type=int, default=0, help="training stream and initialisation seed")
    parser.add_argument("--steps", type=int, default=5772, help="last optimizer step of the schedule")
    parser.add_argument("--decay-start", type=int, default=4313, help="step where the linear decay to 0 begins "
                        "(pass -1 to leave it to --time-limit/--decay-seconds)")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="steps (each with other captions) per loaded batch")
    parser.add_argument("--negatives", type=int, default=NEGATIVES, help="hard negatives per caption")
    parser.add_argument("--photos", default=None, help="folder of photos for photo backgrounds (../shared/images)")
    parser.add_argument("--patch-weight", type=float, default=0.0, help="weight of the patch loss (module doc)")
    parser.add_argument("--attention-weight", type=float, default=0.0,
                        help="weight of the class-token attention loss (module doc)")
    parser.add_argument("--lr", type=float, default=4e-4, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=500, help="warm-up steps")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--ckpt-dir", default=None, help="folder for the resumable checkpoint last.pt")
    parser.add_argument("--save-every", type=float, default=120, help="seconds between checkpoints")
    parser.add_argument("--resume", default=None, help="a --ckpt-dir last.pt, or fp16 weights with their .json")
    parser.add_argument("--time-limit", type=float, default=0, help="seconds this run may train (0: none)")
    parser.add_argument("--decay-seconds", type=float, default=0,
                        help="with --time-limit and no --decay-start: decay over this run's last seconds")
    parser.add_argument("--probe-every", type=float, default=0,
                        help="seconds between quick pointing games on held-out scenes (0: none)")
    parser.add_argument("--probe-n", type=int, default=100, help="scenes per quick pointing game")
    parser.add_argument("--tiny", action="store_true", help="a tiny model, for smoke runs on the CPU")
    args = parser.parse_args(argv)
    args.command_line = " ".join(sys.argv[1:] if argv is None else argv)
    if args.decay_start is not None and args.decay_start < 0:
        args.decay_start = None
    train(args)


if __name__ == "__main__":
    main()
