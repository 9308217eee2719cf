"""``explain()``: one image (or many) and one prompt (or many) → an Explanation per image.

    image ─► load_image ─► preprocess (crop box) ─┐
    prompts ─► tokenize ──────────────────────────┤
                                                  ▼
          AttentionRecorder on the image (and text) blocks, one forward pass
          S[b, t] = logit_scale · cos(image_b, text_t)       (or S_A − S_B for a contrast)
          one backward per target through the recorded blocks only (gradient methods)
                                                  ▼
          method.compute(records) ─► token maps [B, T, g, g] ─► maps on the photo [T, H, W]

All prompts share one image forward pass; the image is never repeated per prompt.
"""

import inspect
from dataclasses import dataclass, field

import numpy as np
import torch

from .adapters import adapt, scores_from_embeddings
from .adapters.tower import text_tower_needed
from .errors import ClipvizError
from .forms import check_trainable, explaining, usable
from .hooks import AttentionRecorder, CausalPrefix
from .methods import get_method, is_prompt_specific
from .methods.base import Records
from .preprocess import load_image, map_to_photo, preprocess_image
from .tokenizer import clean_text


@dataclass
class Explanation:
    """The result of ``explain`` for one photo.

    photo:          uint8 [H, W, 3], the original photo (EXIF-rotated, RGB)
    prompts:        the T prompts explained (for a contrast: "A − B" pairs are in ``against``)
    scores:         float [T] cosine similarity of the photo with each prompt
    probs:          float [T] softmax over the prompts of logit_scale · cosine
    token_maps:     float [T, g, g] raw method output, before any normalisation
    maps:           float [T, H, W] in [0, 1] on the photo; NaN where the model saw nothing
    crop_box:       where the model's square input sits in the photo (clipviz.preprocess.CropBox)
    method, options: what produced the maps
    layer_maps:     [T, L', g, g] per-block maps (blocks in ``layer_indices``) or None
    head_maps:      [T, H, g, g] per-head maps of the last block, or None
    text_tokens:    per prompt, its BPE tokens as strings (for text relevance)
    text_relevance: per prompt, float [len(text_tokens)] relevance of each token, or None
    """

    photo: np.ndarray
    prompts: list
    scores: np.ndarray
    probs: np.ndarray
    token_maps: np.ndarray
    maps: np.ndarray
    crop_box: object
    method: str
    options: dict = field(default_factory=dict)
    against: list = None
    layer_maps: np.ndarray = None
    layer_indices: tuple = None
    head_maps: np.ndarray = None
    text_tokens: list = None
    text_relevance: list = None
    source: str = None

    def figure(self, **kwargs):
        """A matplotlib Figure: the photo and one overlay per prompt (see clipviz.render)."""
        from .render import explanation_figure
        return explanation_figure(self, **kwargs)

    def save(self, path, **kwargs):
        """Save the figure to ``path`` (.png, .pdf or .svg); returns the path written."""
        from .render import save_explanation
        return save_explanation(self, path, **kwargs)

    def overlay(self, index=0, **kwargs):
        """uint8 [H, W, 3]: prompt ``index``'s map blended over the photo (see clipviz.render.overlay)."""
        from .render import overlay
        return overlay(self.photo, self.maps[index], **kwargs)

    def _repr_png_(self):
        from .render import figure_png_bytes
        return figure_png_bytes(self.figure())

    def _repr_html_(self):
        """Jupyter: the figure inline, then each prompt's tokens coloured by relevance (if any)."""
        from .render import explanation_html
        return explanation_html(self)

    def _repr_mimebundle_(self, include=None, exclude=None):
        # one drawing for both formats; without it IPython draws the figure once per _repr_*_
        from .render import explanation_bundle
        return explanation_bundle(self)

    def to_dict(self):
        """JSON-ready summary (no pixel arrays)."""
        return {
            "source": self.source, "method": self.method, "options": _jsonable(self.options),
            "prompts": list(self.prompts), "against": self.against,
            "scores": [float(s) for s in self.scores], "probs": [float(p) for p in self.probs],
            "patch_grid": int(self.token_maps.shape[-1]),
            "peak_xy": [peak_xy(m) for m in self.maps],
            "text_relevance": None if self.text_relevance is None else [
                dict(zip(tokens, map(float, weights))) for tokens, weights in zip(self.text_tokens, self.text_relevance)],
        }


def explain(model, image, prompts, method="relevance", *, against=None, batch_size=8, **options):
    """Explain which regions of ``image`` drove the model's match with each prompt.

    model:   from ``clipviz.load`` (or any supported CLIP; see clipviz.adapters)
    image:   a path, PIL image or uint8 array — or a list of them (then a list of Explanations)
    prompts: one string or a list of T strings; all share one image forward pass
    method:  a name from ``clipviz.available_methods()``
    against: a contrastive target: one prompt (or one per prompt); the score explained is
             S_prompt − S_against
    batch_size: images per forward pass; halved automatically when memory runs out
    options: method options, e.g. start_layer, head_fusion, discard_ratio, text

    Returns an ``Explanation`` (a list of them when ``image`` is a list).
    """
    adapter = adapt(model)
    module = get_method(method)
    check_options(module, method, options)
    prompt_list = clean_prompts(prompts)
    against_list = _against_list(against, len(prompt_list))
    single = not isinstance(image, (list, tuple))
    images = [image] if single else list(image)
    if not images:
        raise ClipvizError("no image given: pass a path, a PIL image, an array, or a list of them")
    results, start, size = [], 0, max(1, int(batch_size))
    while start < len(images):
        chunk = images[start:start + size]
        try:
            results += explain_batch(adapter, chunk, prompt_list, module, method, against_list, options)
        except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as error:
            if not _out_of_memory(error) or size == 1:
                raise
            size = max(1, len(chunk) // 2)  # retry this chunk in smaller pieces
            _free_memory()
            continue
        start += len(chunk)
    return results[0] if single else results


def explain_batch(adapter, images, prompts, module, method, against, options):
    """Explain B images in one forward pass; returns B Explanations."""
    photos, pixels, boxes = [], [], []
    for image in images:
        photo = load_image(image)
        tensor, box = preprocess_image(photo, adapter.input_resolution)
        photos.append(photo)
        pixels.append(tensor)
        boxes.append(box)
    pixels = torch.stack(pixels).to(adapter.device, adapter.dtype)

    encoded = prompts + [a for a in (against or []) if a not in prompts]
    ids = adapter.tokenize(encoded).to(adapter.device)
    target_weights, target_prompt = _targets(prompts, against, encoded)

    records, cosine, logits, output = run_method(adapter, pixels, ids, target_weights, target_prompt, module, options)
    probs = logits[:, :len(prompts)].softmax(dim=-1)

    token_maps = output.token_maps.float().cpu().numpy()
    same_for_all = not is_prompt_specific(method)  # rollout, attention: one map, mapped once
    text_tokens = text_relevance = None
    if output.text_relevance is not None:
        from .tokenizer import token_strings
        text_tokens = [token_strings(p) for p in prompts]
        eot = records.eot.tolist()
        text_relevance = [[output.text_relevance[b, t, 1:eot[t]].numpy() for t in range(len(prompts))]
                          for b in range(len(images))]
    explanations = []
    for b, (photo, box) in enumerate(zip(photos, boxes)):
        explanations.append(Explanation(
            photo=photo, prompts=list(prompts), against=against,
            scores=cosine[b, :len(prompts)].cpu().numpy(), probs=probs[b].cpu().numpy(),
            token_maps=token_maps[b], maps=_photo_maps(token_maps[b], box, same_for_all),
            crop_box=box, method=method, options=dict(options),
            layer_maps=_numpy(output.layer_maps, b), layer_indices=output.layer_indices,
            head_maps=_numpy(output.head_maps, b), text_tokens=text_tokens,
            text_relevance=None if text_relevance is None else text_relevance[b],
            source=images[b] if isinstance(images[b], str) else getattr(images[b], "filename", None) or None))
    return explanations


def _photo_maps(token_maps, box, same_for_all):
    """Normalised maps on the photo [T, H, W]; a prompt-independent map is mapped once and repeated."""
    if same_for_all:
        return np.repeat(map_to_photo(normalise_maps(token_maps[:1]), box), token_maps.shape[0], axis=0)
    return map_to_photo(normalise_maps(token_maps), box)


def run_method(adapter, pixels, ids, target_weights, target_prompt, module, options, fast=True):
    """Record, score, backpropagate and compute: the core of ``explain`` on tensors.

    pixels [B, 3, S, S]; ids [P, Lt]; target_weights [T, P] (target t's score is
    Σ_p W[t, p] · S[:, p]); target_prompt [T]. Returns (Records, cosine [B, P],
    logits [B, P], MethodOutput). Records and maps are fp32 whatever the model's dtype.

    Runs as clipviz.forms.explaining sets the model up (eager, autograd usable also inside
    ``torch.inference_mode()``, checkpointing off); the model is as before afterwards.

    fast: take ∂S/∂A of the last block from its closed form (clipviz.last_block) when the method
    reads that block alone, else every target's gradients in batched backward passes
    (``AttentionRecorder.backward_batched``). False runs the general path clipviz ran before:
    one backward per target through the recorded blocks (the same maps, slower).
    """
    with explaining(adapter.model):
        return _run_method(adapter, usable(pixels), usable(ids), usable(target_weights), target_prompt, module,
                           options, fast)


def _run_method(adapter, pixels, ids, target_weights, target_prompt, module, options, fast=True):
    if adapter.family != "vit":
        from .methods.resnet import run_resnet  # ResNets have no attention blocks to record
        return run_resnet(adapter, pixels, ids, target_weights, target_prompt, module, options)
    needs = module.needs(adapter.num_layers, text_layers=adapter.text_layers, **options)
    batch, targets = pixels.shape[0], target_weights.shape[0]
    records = Records(num_layers=adapter.num_layers, patch_grid=adapter.patch_grid, batch=batch,
                      targets=targets, text_layers=adapter.text_layers,
                      eot=adapter.eot_positions(ids)[target_prompt].cpu(), target_prompt=target_prompt)
    wants_gradient = needs.gradient is not None
    method = module.__name__.rsplit(".", 1)[-1]
    if adapter.text_encoder is None and (wants_gradient or needs.text is not None):
        raise text_tower_needed(method)
    if wants_gradient:
        check_trainable(adapter.model, method)
    last = _closed_form_block(adapter, needs) if fast and wants_gradient else None
    if last is not None:  # forward only: the last block's input is all the closed form needs
        image_recorder = AttentionRecorder(adapter.image_encoder, layers=needs.layers, tokens=True, qk=needs.qk)
    elif needs.layers is not None:
        image_recorder = AttentionRecorder(adapter.image_encoder, layers=needs.layers, gradients=needs.gradient,
                                           tokens=needs.tokens, outputs=needs.readout is not None, qk=needs.qk)
    else:
        image_recorder = _NoRecorder()
    text_recorder = AttentionRecorder(adapter.text_encoder, layers=needs.text, gradients=needs.gradient) \
        if needs.text is not None else _NoRecorder()
    # text gradients differ per image: give each image its own copy of the prompts (rows b·P … b·P+P-1)
    per_image_text = wants_gradient and needs.text is not None and needs.readout is None
    # the text feature is read at EOT under a causal mask: positions after the last EOT never matter
    short_text = CausalPrefix(adapter.text_encoder, int(adapter.eot_positions(ids).max()) + 1) \
        if adapter.text_encoder is not None else _NoRecorder()
    with torch.set_grad_enabled(wants_gradient), image_recorder, text_recorder, short_text:
        with torch.set_grad_enabled(wants_gradient and last is None):
            image_emb = adapter.encode_image(pixels)
        if adapter.text_encoder is None:  # an image tower alone: nothing to score against
            cosine = logits = torch.full((batch, ids.shape[0]), float("nan"))
        elif per_image_text:
            text_emb = adapter.encode_text(ids.repeat(batch, 1))
            cosine, logits = _paired_scores(image_emb, text_emb, adapter.logit_scale())
        else:
            text_emb = adapter.encode_text(ids)
            cosine, logits = scores_from_embeddings(image_emb, text_emb, adapter.logit_scale())
        image_recorder.check_recorded()
        text_recorder.check_recorded()
        if wants_gradient and needs.readout is not None:
            _readout_backward(image_recorder, needs.readout, adapter, text_emb, target_weights)
        elif last is not None:
            _closed_form_gradients(image_recorder, last, needs.gradient, adapter, text_emb, target_weights)
            if per_image_text:
                text_recorder.backward(logits.sum(), slot="rows")
        elif wants_gradient:
            # images are independent, so one backward of the batch sum serves every image
            target_scores = (logits @ target_weights.to(logits).t()).sum(dim=0)  # [T]
            if fast and targets > 1:
                image_recorder.backward_batched(target_scores, slots=range(targets))
            else:
                for t in range(targets):
                    image_recorder.backward(target_scores[t], slot=t)
            if per_image_text:
                # text row (b, p) feeds S[b, p] alone: one backward of Σ S gives all B·P gradients
                text_recorder.backward(logits.sum(), slot="rows")
    _collect(records, image_recorder, text_recorder, ids.shape[0])
    output = module.compute(records, **options)
    return records, cosine.detach(), logits.detach(), output


def _closed_form_block(adapter, needs):
    """The last block's parts when ∂S/∂A of the last block alone is asked for and its closed form
    applies (clipviz.last_block), else None."""
    from .hooks import find_blocks
    from .last_block import block_parts
    if needs.readout is not None or needs.tokens or adapter.text_encoder is None \
            or tuple(needs.layers or ()) != (adapter.num_layers - 1,):
        return None
    return block_parts(find_blocks(adapter.image_encoder)[-1])


def _closed_form_gradients(recorder, parts, reduce, adapter, text_emb, target_weights):
    """Store reduce(A, ∂S_t/∂A) of the last block under slot t for every target, from the closed
    form; text_emb is [P, E] or each image's own copy [B·P, E] (rows b·P … are equal)."""
    from .last_block import cls_row_gradients, full_gradient
    record = next(iter(recorder.layers.values()))
    tokens, _ = recorder.batch_first_tokens(record)
    text = text_emb.detach()[:target_weights.shape[1]]  # the copies of image 0 = the prompts
    cls_rows = cls_row_gradients(parts, adapter.image_head, tokens.to(adapter.dtype), record.probs, text,
                                 adapter.logit_scale().detach(), target_weights)  # [B, T, H, N]
    n = record.probs.shape[-1]
    from_row = getattr(reduce, "cls_row", None)  # a reducer's shortcut for a CLS-row-only gradient
    for t in range(cls_rows.shape[1]):
        record.grads[t] = from_row(record.probs, cls_rows[:, t]) if from_row is not None \
            else reduce(record.probs, full_gradient(cls_rows[:, t], n))
    record.tokens = record._live_tokens = None  # not asked for by the method


def _readout_backward(recorder, readout, adapter, text_emb, target_weights):
    """For each recorded block l and target t: ∂s^l_t/∂A^l, s^l_t = Σ_p W[t, p] · cos(readout(Z^l), text_p)
    (see Needs.readout), stored under slot t of block l only."""
    text = torch.nn.functional.normalize(text_emb.float(), dim=-1)
    for index in recorder.layers:
        image = readout(recorder.block_output(index), adapter.image_head)
        cosine = torch.nn.functional.normalize(image.float(), dim=-1) @ text.t()  # [B, P]
        scores = cosine @ target_weights.to(cosine).t()  # [B, T]
        for t in range(scores.shape[1]):
            recorder.backward(scores[:, t].sum(), slot=t, layers=(index,))


def normalise_maps(token_maps):
    """Min-max each map to [0, 1]: [T, g, g] → [T, g, g]. A constant map becomes all zeros."""
    flat = token_maps.reshape(token_maps.shape[0], -1).astype(np.float64)
    low = flat.min(axis=1, keepdims=True)
    span = flat.max(axis=1, keepdims=True) - low
    scaled = np.where(span > 0, (flat - low) / np.where(span > 0, span, 1), 0.0)
    return scaled.reshape(token_maps.shape).astype(np.float32)


def _paired_scores(image_emb, text_emb, logit_scale):
    """Image b against its own copy of the prompts: image [B, E], text [B·P, E] → cosine, logits [B, P]."""
    image = torch.nn.functional.normalize(image_emb.float(), dim=-1)
    text = torch.nn.functional.normalize(text_emb.float(), dim=-1).view(image.shape[0], -1, image.shape[-1])
    cosine = (text @ image.unsqueeze(-1)).squeeze(-1)
    return cosine, logit_scale.float() * cosine


def _collect(records, image_recorder, text_recorder, prompts):
    for index, layer in image_recorder.layers.items():
        records.probs[index] = layer.probs
        records.grads[index] = layer.grads
        if layer.tokens is not None:
            records.tokens[index], records.token_grads[index] = image_recorder.batch_first_tokens(layer)
        if layer.queries is not None:
            records.queries[index], records.keys[index] = layer.queries, layer.keys
    for index, layer in text_recorder.layers.items():
        records.text_probs[index] = layer.probs[:prompts]
        rows = layer.grads.get("rows")  # [B·P, ...]: image b's prompts are rows b·P … b·P+P-1
        records.text_grads[index] = {} if rows is None else {
            (b, t): _rows(rows, b * prompts, (b + 1) * prompts)
            for b in range(records.batch) for t in range(records.targets)}


def _rows(value, start, stop):
    """Rows start:stop of a reduced gradient (a tensor, or a dict of them)."""
    if isinstance(value, dict):
        return {key: _rows(item, start, stop) for key, item in value.items()}
    return value[start:stop] if torch.is_tensor(value) else value


class _NoRecorder:
    layers = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def check_recorded(self):
        pass


def clean_prompts(prompts):
    items = [prompts] if isinstance(prompts, str) else list(prompts) if prompts is not None else []
    if not items:
        raise ClipvizError("no prompt given: pass a text query such as \"a photo of a dog\"")
    cleaned = []
    for item in items:
        if not isinstance(item, str):
            raise ClipvizError(f"prompts must be strings, got {type(item).__name__}: {item!r}")
        if not item.strip() or not clean_text(item):  # "\x00\x1b" tokenizes like "": nothing to explain
            raise ClipvizError(f"a prompt is empty{' once control characters are dropped' if item.strip() else ''}"
                               f" ({item!r:.40}): write what to look for, e.g. \"a photo of a dog\"")
        # a lone surrogate (e.g. from undecodable argv bytes) cannot be drawn, printed or saved;
        # tokenizing already reads it as U+FFFD, so the prompt says so too
        cleaned.append("".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in item.strip()))
    return cleaned


def _against_list(against, count):
    if against is None:
        return None
    items = clean_prompts(against)
    if len(items) == 1:
        return items * count
    if len(items) != count:
        raise ClipvizError(f"against= needs one prompt, or one per prompt ({count}); got {len(items)}")
    return items


def _targets(prompts, against, encoded):
    """Target weights W [T, P_encoded] and each target's own prompt index [T]."""
    weights = torch.zeros(len(prompts), len(encoded))
    for t, prompt in enumerate(prompts):
        weights[t, t] = 1.0
        if against is not None:
            weights[t, encoded.index(against[t])] -= 1.0
    return weights, torch.arange(len(prompts))


def check_options(module, method, options):
    accepted = set()
    for function in (module.needs, module.compute):
        accepted |= {name for name, p in inspect.signature(function).parameters.items()
                     if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)}
    accepted.discard("text_layers")
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ClipvizError(f"method {method!r} has no option {', '.join(unknown)}; "
                           f"its options are: {', '.join(sorted(accepted)) or 'none'}")


def _out_of_memory(error):
    text = str(error).lower()
    return isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in text or "can't allocate memory" in text


def _free_memory():
    import gc
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _numpy(tensor, index):
    return None if tensor is None else tensor[index].float().cpu().numpy()


def peak_xy(photo_map):
    """(x, y) photo pixel of a map's maximum, ignoring NaN."""
    if np.all(np.isnan(photo_map)):
        return None
    y, x = np.unravel_index(np.nanargmax(photo_map), photo_map.shape)
    return [int(x), int(y)]


def _jsonable(options):
    return {k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v) for k, v in options.items()}
