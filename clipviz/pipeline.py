"""The one explanation pipeline, on tensors, for every model family: record what the method needs,
score, backpropagate, compute.

    needs = method.needs(adapter)                      the records the method asks for
    adapter.image_recorder(needs)                      hooks of the family (ViT blocks, ResNet stage)
    one forward pass: S[b, p] = logit_scale · cos(image_b, text_p)
    one backward per target t of Σ_p W[t, p] · S[:, p], through the recorded part only (batched
    backward passes; the last block alone: its closed form, clipviz.last_block)
    recorder.collect(records); method.compute(records) → MethodOutput (token maps [B, T, g, g])

Methods never see the family; adapters never see the method (only its Needs).
"""

import torch

from .adapters import scores_from_embeddings
from .adapters.tower import text_tower_needed
from .forms import check_trainable, explaining, submodules, usable
from .adapters.probe import probe_readout_gradients
from .adapters.vit import ViTRecorder
from .hooks import AttentionRecorder, CausalPrefix, Unchained, find_blocks
from .last_block import block_parts, cls_row_gradients, eot_row_gradients, full_gradient, pooled_row
from .methods.base import Records
from .prompts import encode_prompts

def run_method(adapter, pixels, ids, target_weights, target_prompt, method, options, fast=True, prompts=None):
    """Record, score, backpropagate and compute: the core of ``explain`` on tensors, for every family.

    pixels [B, 3, S, S]; ids [P, Lt]; target_weights [T, P] (target t's score is
    Σ_p W[t, p] · S[:, p]); target_prompt [T]; method: a clipviz.methods.Method. The adapter
    records what ``method.needs`` asks for (its family's quirks are its own); the method computes
    from the records alone. Returns (Records, cosine [B, P], logits [B, P], MethodOutput). Records
    and maps are fp32 whatever the model's dtype.

    Runs as clipviz.forms.explaining sets the model up (eager, autograd usable also inside
    ``torch.inference_mode()``, checkpointing off); the model is as before afterwards.

    fast: take ∂S/∂A of the last block from its closed form (clipviz.last_block) when the method
    reads that block alone, of the image and of the text tower, else every target's gradients in
    batched backward passes (``AttentionRecorder.backward_batched``). False runs the general path:
    one backward per target (per image for text-token relevance) through the recorded blocks (the
    same maps, slower).

    prompts: ``ids`` encoded earlier by clipviz.prompts.encode_prompts for this method's needs (a
    run of many batches encodes them once), or None to encode them here.
    """
    with explaining(adapter.model):
        method.check_family(adapter)
        needs = method.needs(adapter, options)
        if not fast:
            prompts = None  # the general path encodes the prompts with the batch, as before the closed forms
        elif prompts is None:
            prompts = encode_prompts(adapter, usable(ids), needs)
        elif not prompts.encodes(ids):
            raise ValueError("run_method: `prompts` were encoded from other token ids than `ids`")
        elif prompts.row is None and needs.text is not None:
            prompts = None  # encoded without the text rows this method reads: encode with the batch
        arguments = (adapter, usable(pixels), usable(ids), usable(target_weights), target_prompt, method, needs,
                     options, fast, prompts)
        try:
            try:
                return _run_method(*arguments)
            except Unchained:  # blocks that are not one residual stream: no block-by-block recompute
                return _run_method(*arguments, recompute=False)
        except RuntimeError as error:
            # weights made inside torch.inference_mode() cannot be saved for backward; asked here, on
            # the way out, rather than by walking every parameter before each explanation
            if "Inference tensors" in str(error):
                check_trainable(adapter.model, method.name)
            raise


def _run_method(adapter, pixels, ids, target_weights, target_prompt, method, needs, options, fast=True, prompts=None,
                recompute=True):
    batch, targets = pixels.shape[0], target_weights.shape[0]
    eot = adapter.eot_positions(ids)  # [P]
    records = Records(num_layers=adapter.num_layers, patch_grid=adapter.patch_grid, batch=batch,
                      targets=targets, text_layers=adapter.text_layers, pooling=adapter.pooling,
                      eot=eot[target_prompt],
                      text_end=adapter.text_end_positions(ids)[target_prompt], target_prompt=target_prompt)
    wants_gradient = needs.wants_gradient
    if adapter.text_encoder is None and (wants_gradient or needs.text is not None):
        raise text_tower_needed(method.name)
    last, blocks = _closed_form_block(adapter, needs) if fast and wants_gradient else (None, None)
    # every target's gradients in batched backward passes, recomputing one block at a time (a
    # training-mode model may draw dropout masks: a recomputed block would not be the same function)
    batched = fast and wants_gradient and last is None and needs.readout is None
    recompute = recompute and batched and not any(m.training for m in submodules(adapter.image_encoder))
    if last is not None:  # forward only: the last block's input is all the closed form needs (and its
        # attention probabilities where they cannot be computed from it; else the block keeps its fused path)
        image_recorder = ViTRecorder(adapter.image_encoder, needs, block_input=True, attention=last.row_attention is None,
                                     blocks=blocks)
    else:
        image_recorder = adapter.image_recorder(needs, recompute=recompute) or _NoRecorder()
    # prompts encoded with each batch (the general path): their recorder, with autograd for text
    # gradients, which differ per image (∂S[b, p]/∂A_text depends on image b's embedding): one text
    # forward for the batch, then one backward per image b of Σ_p S[b, p] (batched when fast)
    encode_here = prompts is None and adapter.text_encoder is not None
    text_recorder = AttentionRecorder(adapter.text_encoder, layers=needs.text, gradients=needs.gradient) \
        if encode_here and needs.text is not None else _NoRecorder()
    per_image_text = encode_here and needs.gradient is not None and needs.text is not None and needs.readout is None
    # the text feature is read at EOT under a causal mask: positions after the last EOT never matter
    short_text = CausalPrefix(adapter.text_encoder, int(eot.max()) + 1) \
        if encode_here else _NoRecorder()
    with torch.set_grad_enabled(wants_gradient), adapter.running(), image_recorder, text_recorder, short_text:
        with torch.set_grad_enabled(wants_gradient and last is None):
            image_emb = adapter.encode_image(pixels)
        if adapter.text_encoder is None:  # an image tower alone: nothing to score against
            cosine = logits = torch.full((batch, ids.shape[0]), float("nan"))
        else:
            if prompts is not None:
                text_emb = prompts.embedding
            else:
                with torch.set_grad_enabled(per_image_text):  # the image gradients need the text as a constant only
                    text_emb = adapter.encode_text(ids)
            logit_scale = adapter.logit_scale()
            cosine, logits = scores_from_embeddings(image_emb, text_emb, logit_scale, adapter.logit_bias())
        image_recorder.check_recorded()
        text_recorder.check_recorded()
        if per_image_text:  # first: the image side's batched walk frees the graph the scores share
            # prompt p's text graph feeds S[:, p] alone: image b's backward gives all P prompts' gradients
            if fast:
                text_recorder.backward_batched(logits.sum(dim=1), slots=range(batch), retain_graph=True)
            else:
                for b in range(batch):
                    text_recorder.backward(logits[b].sum(), slot=b)
        if wants_gradient and needs.readout is not None and adapter.pooling == "probe":
            probe_readout_gradients(image_recorder, adapter, text_emb, target_weights)
        elif wants_gradient and needs.readout is not None:
            _readout_backward(image_recorder, needs.readout, adapter, text_emb, target_weights)
        elif last is not None:
            _closed_form_gradients(image_recorder, last, needs.gradient, adapter, text_emb, logit_scale, target_weights)
        elif wants_gradient:
            # images are independent, so one backward of the batch sum serves every image
            target_scores = (logits @ target_weights.to(logits).t()).sum(dim=0)  # [T]
            if batched and hasattr(image_recorder, "backward_batched"):  # ResNets: one per target
                image_recorder.backward_batched(target_scores, slots=range(targets))
            else:
                for t in range(targets):
                    image_recorder.backward(target_scores[t], slot=t)
        if prompts is not None and prompts.row is not None:
            _closed_form_text(records, prompts, needs.gradient, adapter, image_emb, logit_scale)
    image_recorder.collect(records)
    _collect_text(records, text_recorder)
    output = method.compute(records, options)
    return records, cosine.detach(), logits.detach(), output

def _closed_form_block(adapter, needs):
    """(the last block's parts, the tower's blocks) when ∂S/∂A of the last ViT block alone is asked
    for and its closed form applies (clipviz.last_block), else (None, None)."""
    if adapter.family != "vit" or adapter.pooling != "cls" or needs.readout is not None or needs.features \
            or adapter.text_encoder is None \
            or tuple(needs.layers or ()) != (adapter.num_layers - 1,):
        return None, None
    modules = submodules(adapter.image_encoder)
    blocks = find_blocks(adapter.image_encoder, modules, "image")
    parts = block_parts(blocks[-1], adapter.image_head_modules(), modules)
    return (None, None) if parts is None else (parts, blocks)


def _closed_form_gradients(recorder, parts, reduce, adapter, text_emb, logit_scale, target_weights):
    """Store reduce(A, ∂S_t/∂A) of the last block under slot t for every target, from the closed
    form; text_emb [P, E]. The block's CLS attention row is computed from its input when it ran
    its fused attention (``parts.row_attention``), else read from the recorded probabilities."""
    record = next(iter(recorder.layers.values()))
    tokens = recorder.batch_first(record.index, record._live_tokens.detach())  # in the model's dtype
    rows = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
    row = pooled_row(parts, tokens, record.probs, rows)
    cls_rows = cls_row_gradients(parts, adapter.image_head, row, text_emb.detach(), logit_scale.detach(),
                                 target_weights)  # [B, T, H, N]
    for t in range(cls_rows.shape[1]):
        record.grads[t] = _reduce_row(reduce, lambda: _full_probs(record, row), row.row_probs, cls_rows[:, t], rows)
    record.tokens = record._live_tokens = None  # not asked for by the method


def _full_probs(record, row):
    """The recorded probabilities [B, H, N, N]; for a reducer without ``on_row`` after a fused
    block, which kept only the CLS row: that row, zero elsewhere (all the closed form reads)."""
    return record.probs if record.probs is not None else full_gradient(row.row_probs, row.rows, row.row_probs.shape[-1])


def _closed_form_text(records, prompts, reduce, adapter, image_emb, logit_scale):
    """Text-token relevance's gradients from the closed form of the last text block: records
    text_probs and text_grads (image-major pairs, see Records) of prompts.layer."""
    rows = eot_row_gradients(prompts.parts, adapter.text_head, prompts.row, image_emb.detach(),
                             logit_scale.detach(), prompts.jacobian)  # [P, B, H, L]
    count, batch = rows.shape[:2]
    pairs = rows.transpose(0, 1).reshape(batch * count, *rows.shape[2:])  # [B·P, H, L], pair (b, p) at b·P + p
    row = prompts.row
    records.text_probs[prompts.layer] = prompts.probs
    records.text_grads[prompts.layer] = _reduce_row(
        reduce, lambda: prompts.probs.repeat(batch, 1, 1, 1), row.row_probs.repeat(batch, 1, 1), pairs,
        row.rows.repeat(batch))


def _reduce_row(reduce, probs, row_probs, row_grad, rows):
    """reduce(probs, ∂S/∂probs) for a gradient that is zero outside row ``rows[s]`` of sequence s:
    probs() → [S, H, N, N], row_probs and row_grad [S, H, N] (that row of each), rows [S] long. A
    reducer's ``on_row`` computes it from the rows alone (probs() is then never called)."""
    on_row = getattr(reduce, "on_row", None)
    if on_row is not None:
        return on_row(row_probs, row_grad, rows)
    full = probs()
    return reduce(full, full_gradient(row_grad, rows, full.shape[-1]))


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

def _collect_text(records, text_recorder):
    for index, layer in text_recorder.layers.items():
        records.text_probs[index] = layer.probs
        # slot b: image b's gradients of all P prompts (prompt p's row is ∂S[b, p]/∂A_text), laid
        # out as Records.text_grads: pair (b, p) at b·P + p
        records.text_grads[index] = _joined([layer.grads[b] for b in range(records.batch)])


def _joined(reduced):
    """Reduced gradients of B slots, each [P, ...] (or a dict of such) → one [B·P, ...] (or dict)."""
    if isinstance(reduced[0], dict):
        return {key: _joined([r[key] for r in reduced]) for key in reduced[0]}
    return torch.cat(reduced)

class _NoRecorder:
    layers = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def check_recorded(self):
        pass

    def collect(self, records):
        pass
