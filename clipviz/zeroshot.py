"""Zero-shot classification: which of the prompts fits the image best, as in CLIP's README.

    result = clipviz.classify(model, "cat.jpg", ["a diagram", "a dog", "a cat"])
    result.probs            # float [P]: logits_per_image.softmax(-1), in prompt order
    result.ranked()         # [("a cat", 0.99), ("a dog", 0.004), ("a diagram", 0.003)]

    probs = softmax_p( logit_scale · cos(image_emb, text_emb_p) )

One image forward and one text forward, under torch.no_grad (nothing is recorded).
"""

from dataclasses import dataclass

import numpy as np
import torch

from .adapters import adapt, scores_from_embeddings
from .explanation import clean_prompts
from .forms import explaining
from .pixels import image_list, model_inputs, notice_unseen_photos


@dataclass
class Classification:
    """Zero-shot result for one image.

    prompts: the P prompts, in the order given
    scores:  float [P] cosine similarity of the image with each prompt
    logits:  float [P] logit_scale · scores (CLIP's logits_per_image row)
    probs:   float [P] softmax of logits over the prompts
    source:  the image's path when it was given as one, else None
    """

    prompts: list
    scores: np.ndarray
    logits: np.ndarray
    probs: np.ndarray
    source: str = None

    def ranked(self, top=None):
        """[(prompt, prob)] from most to least probable (the first ``top`` of them)."""
        order = np.argsort(-self.probs, kind="stable")[:top]
        return [(self.prompts[i], float(self.probs[i])) for i in order]

    def __iter__(self):
        """(prompt, prob) pairs in prompt order, so ``dict(result)`` works."""
        return iter([(p, float(q)) for p, q in zip(self.prompts, self.probs)])

    def to_dict(self):
        """JSON-ready: source, prompts, scores, logits, probs (lists of floats)."""
        return {"source": self.source, "prompts": list(self.prompts),
                "scores": self.scores.tolist(), "logits": self.logits.tolist(), "probs": self.probs.tolist()}


def classify(model, image, prompts):
    """Zero-shot probabilities of ``prompts`` for ``image`` (a list of images: a list of results).

    model:   from ``clipviz.load`` (or anything ``clipviz.adapters.adapt`` accepts)
    image:   a path, PIL image or uint8 array — or a list of them (one batched forward); or a
             preprocessed tensor [3, S, S] / [B, 3, S, S] as openai/clip's preprocess gives it
             (clipviz.pixels; a batch gives a list of results)
    prompts: one string or a list of P strings, or their token ids [P, 77] (clip.tokenize,
             clipviz.tokenize); empty or over-long prompts raise ClipvizError
    Returns a ``Classification`` (a list of them when ``image`` is a list).
    """
    adapter = adapt(model)
    prompt_list = clean_prompts(prompts)
    images, single = image_list(image)
    notice_unseen_photos(adapter.model, images)
    ids = adapter.tokenize(prompt_list).to(adapter.device)
    pixels = model_inputs(images, adapter.input_resolution, crop=adapter.crop)[1]
    with explaining(adapter.model), torch.no_grad():  # as explain() sees the model (autocast, compiled, ...)
        image_emb = adapter.encode_image(pixels.to(adapter.device, adapter.dtype))
        text_emb = adapter.encode_text(ids)
        cosine, logits = scores_from_embeddings(image_emb, text_emb, adapter.logit_scale(), adapter.logit_bias())
        probs = logits.softmax(dim=-1)  # over the prompts (SigLIP's logit_bias cancels)
    cosine, logits, probs = (t.cpu().numpy() for t in (cosine, logits, probs))
    results = [Classification(prompt_list, cosine[b], logits[b], probs[b],
                              source=str(images[b]) if isinstance(images[b], str) or hasattr(images[b], "__fspath__") else None)
               for b in range(len(images))]
    return results[0] if single else results
