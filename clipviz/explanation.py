"""``explain()``: one image (or many) and one prompt (or many) → an Explanation per image.
One pipeline for every model family (ViT and ResNet; clipviz, OpenAI, open_clip, Hugging Face):

    prompts ─► clean, tokenize once per call (Query) ─────────────┐
    image ─► load_image ─► preprocess (crop box) ─────────────────┤
                                                                  ▼
          clipviz.pipeline.run_method:
          method.needs(adapter) ─► adapter.image_recorder(needs)   the family's quirks are the adapter's
          one forward pass: S[b, t] = logit_scale · cos(image_b, text_t)   (or S_A − S_B for a contrast)
          one backward per target through the recorded part only (gradient methods)
          recorder.collect(records) ─► method.compute(records) ─► token maps [B, T, g, g]
                                                                  ▼
          clipviz.maps: normalise, map onto the photo ─► Explanation (maps [T, H, W]) ─► clipviz.render

All prompts share one image forward pass; the image is never repeated per prompt.
"""

import numbers
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .adapters import adapt
from .errors import ClipvizError
from .maps import map_to_photo, normalise_maps, peak_xy
from .methods import Method, get_method
from .pipeline import run_method
from .prompts import encode_prompts
from .model import check_finite
from .pixels import image_list, model_inputs, notice_unseen_photos
from .tokenizer import check_visible, prompts_from_tokens

# One photo's maps, float32 [P, H, W], may take at most this much memory; above it explain()
# refuses before the forward pass and says how many prompts fit. 2 GiB is 8 prompts on a
# 64-megapixel photo (preprocess.MAX_PIXELS) or ~40 on a 12-megapixel one.
MAX_MAP_BYTES = 2 << 30

@dataclass
class Explanation:
    """The result of ``explain`` for one photo.

    photo:          uint8 [H, W, 3], the original photo (EXIF-rotated, RGB); for a preprocessed
                    tensor, that tensor de-normalised [S, S, 3] (clipviz.pixels)
    prompts:        the T prompts explained (for a contrast: "A − B" pairs are in ``against``)
    scores:         float [T] cosine similarity of the photo with each prompt
    probs:          float [T] softmax over the prompts of logit_scale · cosine; for a contrast,
                    each prompt's probability against its own ``against`` prompt (softmax over
                    the pair = sigmoid(S_prompt − S_against)), never a softmax over one prompt
    token_maps:     float [T, g, g] raw method output, before any normalisation
    maps:           float [T, H, W] in [0, 1] on the photo; NaN where the model saw nothing
    crop_box:       where the model's square input sits in the photo (clipviz.preprocess.CropBox)
    method, options: what produced the maps
    layer_maps:     [T, L', g, g] per-block maps (blocks in ``layer_indices``) or None
    head_maps:      [T, H, g, g] per-head maps of the last block, or None
    text_tokens:    per prompt, its BPE tokens as strings (for text relevance)
    text_relevance: per prompt, float [len(text_tokens)] relevance of each token, or None
    against_scores: float [T] cosine of the photo with each ``against`` prompt, or None
    logit_scale:    the model's logit scale: S = logit_scale · cosine is the score explained
                    (for a contrast S_prompt − S_against, see ``contrast()``)
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
    against_scores: np.ndarray = None
    logit_scale: float = None
    model: object = field(default=None, repr=False, compare=False)  # what explained it (for explore())

    def figure(self, **kwargs):
        """A matplotlib Figure: the photo and one overlay per prompt (see clipviz.render)."""
        from .render import explanation_figure
        return explanation_figure(self, **kwargs)

    def save(self, path, overwrite=False, **kwargs):
        """Save the figure to ``path`` (.png, .pdf or .svg); returns the path written. An existing
        file is replaced only with ``overwrite=True`` or when clipviz wrote it (unchanged since);
        otherwise ClipvizError, as for a folder that does not exist (create it first). kwargs: dpi and the figure's options (see clipviz.render)."""
        from .render import save_explanation
        return save_explanation(self, path, overwrite=overwrite, **kwargs)

    def overlay(self, index=0, **kwargs):
        """uint8 [H, W, 3]: prompt ``index``'s map blended over the photo (see clipviz.render.overlay)."""
        from .render import overlay
        count = len(self.prompts)
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not -count <= index < count:
            raise ClipvizError(f"overlay index {index!r} is out of range: this explanation has {count} prompt"
                               f"{'s' if count != 1 else ''} (0 … {count - 1})")
        return overlay(self.photo, self.maps[index], **kwargs)

    def __repr__(self):
        # one line: the dataclass default would print every array (the photo alone is ~20k characters)
        height, width = self.photo.shape[:2]
        scores = ", ".join(f"{p!r}: {s:.3f}" for p, s in zip(self.prompts[:3], self.scores))
        more = f", … {len(self.prompts) - 3} more" if len(self.prompts) > 3 else ""
        against = f" against {self.against[0]!r}" if self.against else ""
        return f"<Explanation {self.method}{against}, {width}×{height} photo, cos {{{scores}{more}}}>"

    def _repr_png_(self):
        from .display import png_bytes
        return png_bytes(self.figure())

    def _repr_mimebundle_(self, include=None, exclude=None):
        # the figure (with its token strips) as the only image; no HTML copy of the same PNG
        import base64
        return {"image/png": base64.b64encode(self._repr_png_()).decode("ascii"), "text/plain": repr(self)}

    def contrast(self):
        """For a contrastive explanation, per prompt t: the scores behind the map, in logit units
        (S = logit_scale · cosine): ``{"prompt", "against", "S_prompt", "S_against", "S_difference"}``
        where S_difference = S_prompt − S_against is the score whose gradient was explained.
        None without ``against``."""
        if not self.against:
            return None
        scale = float(self.logit_scale)
        return [{"prompt": p, "against": a, "S_prompt": scale * float(s), "S_against": scale * float(o),
                 "S_difference": scale * (float(s) - float(o))}
                for p, a, s, o in zip(self.prompts, self.against, self.scores, self.against_scores)]

    def explore(self, **switches):
        """An interactive explorer of this photo starting from this explanation (ipywidgets; see
        clipviz.explorer): prompt box, method, start layer, head, opacity, colour map."""
        if self.model is None:
            raise ClipvizError("this explanation carries no model: use clipviz.explore(model, image, prompt)")
        from .explorer import explore
        start = dict(prompt=self.prompts[0], method=self.method, against=self.against[0] if self.against else None,
                     layer=self.options.get("start_layer", self.options.get("layer")), prompts=self.prompts)
        return explore(self.model, self.photo, **{**start, **switches})

    def to_dict(self):
        """JSON-ready summary (no pixel arrays); ``contrast`` as in ``contrast()``."""
        return {
            "source": self.source, "method": self.method, "options": _jsonable(self.options),
            "prompts": list(self.prompts), "against": self.against,
            "scores": [float(s) for s in self.scores], "probs": [float(p) for p in self.probs],
            "logit_scale": None if self.logit_scale is None else float(self.logit_scale),
            "contrast": self.contrast(),
            "patch_grid": int(self.token_maps.shape[-1]),
            "peak_xy": [peak_xy(m) for m in self.maps],
            "text_relevance": None if self.text_relevance is None else [
                dict(zip(tokens, map(float, weights))) for tokens, weights in zip(self.text_tokens, self.text_relevance)],
        }


def explain(model, image, prompts, method=None, *, against=None, batch_size=8, **options):
    """Explain which regions of ``image`` drove the model's match with each prompt.

    model:   from ``clipviz.load`` (or any supported CLIP; see clipviz.adapters)
    image:   a path, PIL image or uint8 array — or a list of them (then a list of Explanations);
             or a preprocessed tensor as openai/clip's preprocess gives it, float [3, S, S] (one
             Explanation) or [B, 3, S, S] (a list of B), normalised with CLIP's mean and std: then
             the maps are on that S×S square and ``photo`` is the tensor de-normalised
             (clipviz.pixels)
    prompts: one string or a list of T strings, or their token ids [T, 77] (clip.tokenize,
             clipviz.tokenize); all share one image forward pass
    method:  a name from ``clipviz.available_methods()`` (or a clipviz.methods.Method); None: the
             model family's default (``relevance`` for ViTs, ``gradcam`` for ResNets;
             ``clipviz.methods.default_method``)
    against: a contrastive target: one prompt (or one per prompt); the score explained is
             S_prompt − S_against
    batch_size: images per forward pass; halved automatically when memory runs out
    options: method options, e.g. start_layer, head_fusion, discard_ratio, text

    Returns an ``Explanation`` (a list of them when ``image`` is a list).
    """
    adapter = adapt(model)
    if method is None:
        from .methods import default_method
        method = default_method(adapter.model)
    chosen = method if isinstance(method, Method) else get_method(method)
    chosen.check_options(options)
    check_contrast(chosen, against)
    query = prepare_query(adapter, prompts, against)
    images, single = image_list(image)
    notice_unseen_photos(adapter.model, images)
    results, start, size = [], 0, check_batch_size(batch_size)
    if len(images) > size:  # several batches: the prompts' side once for all of them
        query = replace(query, text=encode_prompts(adapter, query.ids, chosen.needs(adapter, options),
                                                   images=len(images)))
    while start < len(images):
        chunk = images[start:start + size]
        try:
            results += explain_batch(adapter, chunk, query, chosen, options)
        except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as error:
            if not _out_of_memory(error) or size == 1:
                raise
            size = max(1, len(chunk) // 2)  # retry this chunk in smaller pieces
            _free_memory()
            continue
        start += len(chunk)
    return results[0] if single else results


@dataclass
class Query:
    """The prompts of one ``explain`` call, cleaned and tokenized once.

    ids [P, Lt] (the prompts, then any contrast prompt not among them); target_weights [T, P]:
    target t's score is Σ_p W[t, p] · S[:, p]; target_prompt [T]: each target's own prompt;
    text: the prompts encoded once for a run of many batches (clipviz.prompts.EncodedPrompts), or
    None (each batch encodes them).
    """

    prompts: list
    against: list
    encoded: list
    ids: torch.Tensor
    target_weights: torch.Tensor
    target_prompt: torch.Tensor
    text: object = None


def prepare_query(adapter, prompts, against=None):
    """Clean, check and tokenize the prompts (and contrast prompts) for ``adapter`` → Query."""
    prompt_list = clean_prompts(prompts)
    against_list = _against_list(against, len(prompt_list))
    encoded = prompt_list + [a for a in (against_list or []) if a not in prompt_list]
    ids = adapter.tokenize(encoded).to(adapter.device)
    for prompt, row, other in zip(prompt_list, ids, against_list or []):
        if torch.equal(row, ids[encoded.index(other)]):  # one query to this tokenizer ("a dog", "A DOG")
            raise against_itself(prompt, other)
    target_weights, target_prompt = _targets(prompt_list, against_list, encoded)
    return Query(prompt_list, against_list, encoded, ids, target_weights, target_prompt)


def explain_batch(adapter, images, query, method, options):
    """Explain B images in one forward pass; returns B Explanations."""
    recording = record_batch(adapter, images, query, method, options)
    return explanations_from(recording, recording.output, method, options)


@dataclass
class Recording:
    """One forward (and backward) pass of B images with the prompts, kept so that a method can
    recompute maps with other options from the same records (see clipviz.explore).

    photos [B] uint8 [H, W, 3]; boxes [B] CropBox; sources [B] str or None; prompts [T];
    against [T] or None; encoded: the P prompts encoded (prompts, then new against prompts);
    records: the method's Records; cosine, logits [B, P]; logit_scale: float; output: the
    MethodOutput computed with the options recorded; adapter: the model's adapter.
    """

    photos: list
    boxes: list
    sources: list
    prompts: list
    against: list
    encoded: list
    records: object
    cosine: torch.Tensor
    logits: torch.Tensor
    logit_scale: float
    output: object
    adapter: object


def record_batch(adapter, images, query, method, options):
    """Load and preprocess B images (or take preprocessed tensors), run the model once with the
    recorder → a Recording."""
    photos, pixels, boxes = model_inputs(images, adapter.input_resolution, crop=adapter.crop)
    sources = [image if isinstance(image, str) else getattr(image, "filename", None) or None for image in images]
    return record_pixels(adapter, photos, pixels, boxes, sources, query, method, options)


def record_pixels(adapter, photos, pixels, boxes, sources, query, method, options):
    """Run the model once with the recorder on B preprocessed images → a Recording.

    photos [B] uint8 [H, W, 3] (load_image); pixels float32 [B, 3, S, S] and boxes [B] CropBox
    (preprocess_image); sources [B] str or None. clipviz.folder loads them in worker processes.
    """
    check_map_memory(photos, len(query.prompts))
    pixels = pixels.to(adapter.device, adapter.dtype)
    records, cosine, logits, output = run_method(adapter, pixels, query.ids, query.target_weights,
                                                 query.target_prompt, method, options, prompts=query.text)
    check_scores(adapter, cosine, query.encoded)
    return Recording(list(photos), list(boxes), list(sources), list(query.prompts), query.against, query.encoded,
                     records, cosine, logits, float(adapter.logit_scale().detach()), output, adapter)


def explanations_from(recording, output, method, options):
    """B Explanations from a Recording and a MethodOutput computed on its records."""
    prompts, against, cosine, logits = recording.prompts, recording.against, recording.cosine, recording.logits
    if against is None:
        probs = logits[:, :len(prompts)].softmax(dim=-1)
        against_scores = None
    else:  # p(prompt) against its own contrast prompt: softmax over the pair = sigmoid(S_p − S_a)
        rows = [recording.encoded.index(a) for a in against]
        probs = torch.sigmoid(logits[:, :len(prompts)] - logits[:, rows])
        against_scores = cosine[:, rows].cpu().numpy()
    token_maps = output.token_maps.float().cpu().numpy()
    same_for_all = not method.prompt_specific  # rollout, attention: one map, mapped once
    text_tokens = text_relevance = None
    batch = len(recording.photos)
    if output.text_relevance is not None:
        from .tokenizer import token_strings
        text_tokens = [token_strings(p) for p in prompts]
        records = recording.records  # the words are 1 … end − 1 (end: EOT, also when another token is pooled)
        end = (records.eot if records.text_end is None else records.text_end).tolist()
        text_relevance = [[output.text_relevance[b, t, 1:end[t]].numpy() for t in range(len(prompts))]
                          for b in range(batch)]
    explanations = []
    for b, (photo, box) in enumerate(zip(recording.photos, recording.boxes)):
        explanations.append(Explanation(
            photo=photo, prompts=list(prompts), against=against,
            scores=cosine[b, :len(prompts)].cpu().numpy(), probs=probs[b].cpu().numpy(),
            token_maps=token_maps[b], maps=_photo_maps(token_maps[b], box, same_for_all),
            crop_box=box, method=method.name, options=dict(options),
            layer_maps=_numpy(output.layer_maps, b), layer_indices=output.layer_indices,
            head_maps=_numpy(output.head_maps, b), text_tokens=text_tokens,
            text_relevance=None if text_relevance is None else text_relevance[b],
            source=recording.sources[b],
            against_scores=None if against_scores is None else against_scores[b],
            logit_scale=recording.logit_scale, model=recording.adapter))
    return explanations


def check_map_memory(photos, prompts):
    """Refuse up front when one photo's maps (float32 [P, H, W]) would exceed MAX_MAP_BYTES."""
    for photo in photos:
        per_prompt = 4 * photo.shape[0] * photo.shape[1]
        if prompts * per_prompt > MAX_MAP_BYTES:
            fit = MAX_MAP_BYTES // per_prompt
            raise ClipvizError(
                f"maps for {prompts} prompts on a {photo.shape[1]}×{photo.shape[0]} photo would take "
                f"{prompts * per_prompt / 2**30:.1f} GiB (float32 [P, H, W]), more than "
                f"clipviz.explanation.MAX_MAP_BYTES ({MAX_MAP_BYTES / 2**30:.1f} GiB): "
                + (f"explain at most {fit} prompts per call, " if fit else "") +
                "downscale the photo, or raise the limit if you have the memory")


def check_scores(adapter, cosine, prompts):
    """Refuse NaN or infinite scores [B, P], naming a non-finite weight when the model has one.
    An image tower alone has no scores (NaN by design, see clipviz.forms): nothing to check."""
    if adapter.text_encoder is None:
        return
    finite = torch.isfinite(cosine).all(dim=0)
    if bool(finite.all()):
        return
    check_finite(adapter.model.named_parameters(), "the model")  # names the broken weight, if any
    bad = [p for p, ok in zip(prompts, finite.tolist()) if not ok]
    raise ClipvizError(f"the model's score for {bad[0]!r}{f' (and {len(bad) - 1} more)' if len(bad) > 1 else ''} "
                       "is NaN or infinite although its weights are finite: it overflows in its dtype "
                       f"({adapter.dtype}); load it in float32")


def _photo_maps(token_maps, box, same_for_all):
    """Normalised maps on the photo [T, H, W]; a prompt-independent map is mapped once and repeated."""
    if same_for_all:
        return np.repeat(map_to_photo(normalise_maps(token_maps[:1]), box), token_maps.shape[0], axis=0)
    return map_to_photo(normalise_maps(token_maps), box)


def check_batch_size(batch_size):
    """batch_size as an int >= 1 (images or frames per forward pass); ClipvizError otherwise."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ClipvizError(f"batch_size must be a whole number >= 1 (images per forward pass), got {batch_size!r}")
    return int(batch_size)


def clean_prompts(prompts):
    """One prompt, a list of them, or their token ids [P, L] (clipviz.tokenizer.prompts_from_tokens)
    → the prompts stripped and checked, list[str]; an empty one raises ClipvizError."""
    if isinstance(prompts, torch.Tensor) or (isinstance(prompts, np.ndarray) and prompts.dtype.kind in "iub"):
        prompts = prompts_from_tokens(prompts)
    if isinstance(prompts, (bytes, bytearray)):
        raise ClipvizError("prompts must be text (str), got bytes: decode them first, e.g. prompt.decode('utf-8')")
    try:
        items = [prompts] if isinstance(prompts, str) else list(prompts) if prompts is not None else []
    except TypeError:  # explain(model, image, 5): not text, not a list
        raise ClipvizError(f"prompts must be a string or a list of strings, got {type(prompts).__name__} "
                           f"{prompts!r:.60}") from None
    if not items:
        raise ClipvizError("no prompt given: pass a text query such as \"a photo of a dog\"")
    cleaned = []
    for item in items:
        if not isinstance(item, str):
            raise ClipvizError(f"prompts must be strings, got {type(item).__name__}: {item!r}")
        check_visible(item)
        # a lone surrogate (e.g. from undecodable argv bytes) cannot be drawn, printed or saved;
        # tokenizing already reads it as U+FFFD, so the prompt says so too
        cleaned.append("".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in item.strip()))
    return cleaned


def check_contrast(method, against):
    """A contrast needs a method whose map depends on the prompt; refuse one that ignores it.

    method: a name or a clipviz.methods.Method; against: None or the contrast prompt(s)."""
    from .methods import available_methods
    chosen = method if isinstance(method, Method) else get_method(method)
    if against is not None and not chosen.prompt_specific:
        specific = ", ".join(m for m in available_methods() if get_method(m).prompt_specific)
        raise ClipvizError(f"method {chosen.name!r} ignores the prompt, so against= would change nothing in its map: "
                           f"use a prompt-specific method ({specific}) or leave against out")


def against_itself(prompt, against):
    """The ClipvizError for a prompt contrasted with itself (equal token ids): S(prompt) − S(against)
    is 0 and its map only rounding noise."""
    return ClipvizError(f"{prompt!r} against {against!r} is the prompt against itself (one query to the model's "
                        "tokenizer), so there is no difference to explain: contrast it with a different prompt")


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


def _jsonable(options):
    return {k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v) for k, v in options.items()}
