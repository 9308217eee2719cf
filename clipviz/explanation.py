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

from dataclasses import dataclass, field

import numpy as np
import torch

from .adapters import adapt
from .errors import ClipvizError
from .maps import map_to_photo, normalise_maps, peak_xy
from .methods import Method, get_method
from .pipeline import run_method
from .preprocess import load_image, preprocess_image
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
    method:  a name from ``clipviz.available_methods()`` (or a clipviz.methods.Method)
    against: a contrastive target: one prompt (or one per prompt); the score explained is
             S_prompt − S_against
    batch_size: images per forward pass; halved automatically when memory runs out
    options: method options, e.g. start_layer, head_fusion, discard_ratio, text

    Returns an ``Explanation`` (a list of them when ``image`` is a list).
    """
    adapter = adapt(model)
    chosen = method if isinstance(method, Method) else get_method(method)
    chosen.check_options(options)
    query = prepare_query(adapter, prompts, against)
    images, single = image_list(image)
    results, start, size = [], 0, max(1, int(batch_size))
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
    target t's score is Σ_p W[t, p] · S[:, p]; target_prompt [T]: each target's own prompt.
    """

    prompts: list
    against: list
    ids: torch.Tensor
    target_weights: torch.Tensor
    target_prompt: torch.Tensor


def prepare_query(adapter, prompts, against=None):
    """Clean, check and tokenize the prompts (and contrast prompts) for ``adapter`` → Query."""
    prompt_list = clean_prompts(prompts)
    against_list = _against_list(against, len(prompt_list))
    encoded = prompt_list + [a for a in (against_list or []) if a not in prompt_list]
    ids = adapter.tokenize(encoded).to(adapter.device)
    target_weights, target_prompt = _targets(prompt_list, against_list, encoded)
    return Query(prompt_list, against_list, ids, target_weights, target_prompt)


def explain_batch(adapter, images, query, method, options):
    """Explain B images in one forward pass; returns B Explanations."""
    photos, pixels, boxes = [], [], []
    for image in images:
        photo = load_image(image)
        tensor, box = preprocess_image(photo, adapter.input_resolution)
        photos.append(photo)
        pixels.append(tensor)
        boxes.append(box)
    pixels = torch.stack(pixels).to(adapter.device, adapter.dtype)
    prompts, against = query.prompts, query.against
    records, cosine, logits, output = run_method(adapter, pixels, query.ids, query.target_weights,
                                                 query.target_prompt, method, options)
    probs = logits[:, :len(prompts)].softmax(dim=-1)

    token_maps = output.token_maps.float().cpu().numpy()
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
            token_maps=token_maps[b], maps=map_to_photo(normalise_maps(token_maps[b]), box),
            crop_box=box, method=method.name, options=dict(options),
            layer_maps=_numpy(output.layer_maps, b), layer_indices=output.layer_indices,
            head_maps=_numpy(output.head_maps, b), text_tokens=text_tokens,
            text_relevance=None if text_relevance is None else text_relevance[b],
            source=images[b] if isinstance(images[b], str) else getattr(images[b], "filename", None) or None))
    return explanations


def image_list(image):
    """One image or a list of them → (list of images, whether one was given); none is an error."""
    single = not isinstance(image, (list, tuple))
    images = [image] if single else list(image)
    if not images:
        raise ClipvizError("no image given: pass a path, a PIL image, an array, or a list of them")
    return images, single


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
