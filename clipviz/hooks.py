"""AttentionRecorder: forward hooks on every ResidualAttentionBlock of an unmodified model.

    with AttentionRecorder(model.visual, layers=[10, 11], gradients=reduce) as recorder:
        scores = ...                       # any forward pass through the encoder
        recorder.backward(scores[0, 2], slot=2)
    recorder.layers[11].probs             # [B, H, N, N] attention probabilities
    recorder.layers[11].grads[2]          # reduce(probs, ∂score/∂probs) for slot 2

How attention probabilities are obtained: OpenAI's and open_clip's blocks call
``nn.MultiheadAttention`` with ``need_weights=False`` (a fused kernel that never materialises
the probabilities). A forward pre-hook flips that call to ``need_weights=True,
average_attn_weights=False`` for the recorded blocks only, so torch computes
``softmax(QKᵀ/√d)`` explicitly and returns it. The output is numerically the same attention.
The returned weights are a ``.view`` made after the product with V; its ``_base`` is the tensor
the product used, so gradients are taken with respect to that base.

Gradients are reduced as they arrive: a tensor hook on each recorded probability tensor calls
``gradients(probs, grad)`` and keeps only its result, so a method that needs, say, the head
mean of ∂S/∂A ⊙ A never holds every layer's full ``[B, H, N, N]`` gradient at once.

Other libraries' blocks are recorded through an ``AttentionLayout`` their adapter registers
(``register_layout``): how to find the attention module of a block, how to ask it for its
per-head probabilities, how to read its queries and keys. Hugging Face's lives in
clipviz.adapters.huggingface (and its SigLIP pooling head in clipviz.adapters.siglip); timm's,
whose attention never returns probabilities and is therefore recomputed by a forward hook, in
clipviz.adapters.timm. This module knows only ``nn.MultiheadAttention``.

Only the graph from the first recorded block on is built: ``backward()`` never reaches further
back, so with gradients the encoder runs its embedding and earlier blocks without autograd and
the residual stream entering the first recorded block starts a fresh graph (``cut_graph``). With
the default ``start_layer=-1`` an explanation then costs one no-grad pass through all but the last
block plus one small backward, and holds no activations of the other blocks.

With ``recompute=True`` no block keeps a graph at all: the forward runs without autograd up to the
encoder's last block, keeping each block's call, and ``backward_batched`` recomputes one block at
a time from the top down with autograd on (activation checkpointing), so every target's gradients
of many blocks cost the memory of one block's graph instead of all of them.

On exit (normal or exception) every hook is removed and the model is exactly as before.
"""

import os
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import ClipvizError
from .forms import submodules


@dataclass
class LayerRecord:
    """What one block recorded. B images, H heads, N tokens, D width, slots = backward targets."""

    index: int
    probs: torch.Tensor = None           # [B, H, N, N], detached
    grads: dict = field(default_factory=dict)         # slot -> reduce(probs, ∂score/∂probs)
    tokens: torch.Tensor = None          # block input [B, N, D], detached (when tokens=True)
    token_grads: dict = field(default_factory=dict)   # slot -> ∂score/∂tokens [B, N, D]
    queries: torch.Tensor = None         # [B, N, D] attention queries, heads side by side (qk=True)
    keys: torch.Tensor = None            # [B, N, D] attention keys (qk=True)
    _live_probs: torch.Tensor = None     # the in-graph tensor, for backward()
    _live_tokens: torch.Tensor = None
    _live_output: torch.Tensor = None    # block output as the model laid it out (outputs=True)
    called: bool = False                 # attention=False: the attention module ran (its own path)


class AttentionLayout:
    """How the recorder reads a library's attention blocks whose attention is not
    ``nn.MultiheadAttention``. The module's forward must return (output, per-head probabilities
    [B, H, N, N], ...) once ``ask_for_weights`` has run; the recorder leaves its output as it is.

    input_name: the keyword under which a block may receive its hidden states (or None).
    """

    input_name = None
    # True for attention that never returns its probabilities (timm's fused or manual attention,
    # attention pools): the recorder then calls ``recompute`` from a forward hook and the model's
    # output is replaced by the recomputed one (the same function of the same input)
    recomputes = False

    def attention_of(self, block):
        """The block's attention module, or None when the block is not of this layout."""
        return None

    def ask_for_weights(self, module, args, kwargs):
        """Forward pre-hook (with kwargs) on the attention module: make it return its probabilities."""
        return None

    def queries_keys(self, attention, inputs):
        """q, k [B, N, D] (heads side by side) for the attention module's input."""
        raise NotImplementedError

    def queries_keys_of_call(self, attention, args, kwargs):
        """q [B, Nq, D], k [B, N, D] for one call of the attention module (a pool's query is not
        its input: override this)."""
        return self.queries_keys(attention, args[0] if args else kwargs.get(self.input_name))

    def recompute(self, attention, args, kwargs):
        """(output exactly as the module returns it, per-head probabilities [B, H, Nq, N] in the
        graph) for one call; only for layouts with ``recomputes = True``."""
        raise NotImplementedError


_LAYOUTS = []  # registered by adapters (clipviz.adapters.huggingface)


def register_layout(layout):
    """Teach the recorder another library's attention blocks (an AttentionLayout)."""
    if all(type(known) is not type(layout) for known in _LAYOUTS):
        _LAYOUTS.append(layout)


def find_blocks(encoder, modules=None, tower=None):
    """The attention blocks of an encoder, in forward order.

    A block is any module whose class is named ``ResidualAttentionBlock`` (OpenAI's, open_clip's
    and ours) and whose ``attn`` is an ``nn.MultiheadAttention``, or a block of a registered
    AttentionLayout (see ``attention_of``). modules: ``clipviz.forms.submodules(encoder)`` when the
    caller has it already. A block placed at two places (weights shared across depth) is refused:
    the forward runs it more than once, and the recorder keeps one call per block. tower: "image"
    or "text" when the caller knows which tower ``encoder`` is (named in that error).
    """
    modules = submodules(encoder) if modules is None else modules
    blocks = [m for m in modules if attention_of(m) is not None]
    if not blocks:
        raise ClipvizError(
            f"found no ResidualAttentionBlock with nn.MultiheadAttention in {type(encoder).__name__}; "
            "clipviz explains OpenAI-style CLIP ViTs (clipviz, OpenAI, open_clip) and Hugging Face CLIPModel "
            "(through clipviz.adapters.adapt)")
    placed = {}  # how many places each block is a child at (submodules lists a shared module once)
    for module in modules:
        for child in module._modules.values():
            if child is not None:
                placed[id(child)] = placed.get(id(child), 0) + 1
    shared = [i for i, block in enumerate(blocks) if placed.get(id(block), 0) > 1]
    if shared:
        where = f"the {tower} tower ({type(encoder).__name__})" if tower else type(encoder).__name__
        way_out = "; or leave text-token relevance out (text=False): the image's maps do not read the text blocks" \
            if tower == "text" else ""
        raise ClipvizError(
            f"block {shared[0]} of {where} is the same module at more than one place (weights shared across depth), "
            "so the forward runs it more than once and its attention cannot be told apart per call: explain a copy "
            f"whose blocks are separate modules (copy.deepcopy of each repeated block){way_out}")
    return blocks


def attention_of(block):
    """The attention module of a block (``attn``, or a registered layout's), or None."""
    attention, _ = _attention_and_layout(block)
    return attention


def _attention_and_layout(block):
    """(attention module, its AttentionLayout or None for nn.MultiheadAttention) or (None, None)."""
    # the class name first: a missing attribute costs an exception, and an explanation walks every module
    if type(block).__name__ == "ResidualAttentionBlock":
        attn = getattr(block, "attn", None)
        if isinstance(attn, nn.MultiheadAttention):
            return attn, None
    for layout in _LAYOUTS:
        attn = layout.attention_of(block)
        if attn is not None:
            return attn, layout
    return None, None


class AttentionRecorder:
    """Records attention probabilities (and reduced gradients) of chosen blocks of an encoder.

    encoder:   the image tower (``model.visual``) or the text tower (``model.transformer``).
    layers:    block indices to record (negative counts from the end); None = all blocks.
    gradients: None for forward-only recording, or ``reduce(probs [B,H,N,N], grad [B,H,N,N])``
               whose result is stored per backward slot (use ``keep_gradient`` to keep it raw).
    tokens:    also record each recorded block's input tokens (and their gradients when
               ``gradients`` is set), normalised to [B, N, D].
    outputs:   keep each recorded block's output in the graph (``block_output``), so a score
               read off an intermediate block can be backpropagated (LeGrad).
    qk:        also record each recorded block's attention queries and keys, [B, N, D].
    cut_graph: with ``gradients``, run everything before the first recorded block without
               autograd (its graph is never used by ``backward``); False keeps it, e.g. to also
               differentiate the same forward pass with respect to the pixels.
    attention: False leaves an unmasked ``nn.MultiheadAttention`` call on its own (fused) path and
               records no probabilities for it, only that it ran (``LayerRecord.called``); masked
               calls and other libraries' attention are recorded as usual.
    blocks:    ``find_blocks(encoder)`` when the caller has it already (it walks every module).
    recompute: with ``gradients`` and ``cut_graph``: the forward builds no graph up to the output
               of the encoder's last block (the head after it does: the scores start there), and
               ``backward_batched`` recomputes the blocks from the first recorded one on, one at a
               time from the top (see there). ``backward`` is not available then. The forward
               raises ``Unchained`` when a block's input is not the block before's output (the
               blocks are not one residual stream, so recomputing them one by one is not the model).
    """

    def __init__(self, encoder, layers=None, gradients=None, tokens=False, outputs=False, qk=False,
                 cut_graph=True, recompute=False, attention=True, blocks=None):
        self.encoder = encoder
        self.cut_graph = cut_graph
        self.recompute = recompute and cut_graph and gradients is not None
        self._calls = {}          # block index -> (args, kwargs) of its forward call (recompute)
        self._top = None          # the leaf the head ran on: the last block's output (recompute)
        self._previous = None     # the last block output seen in the forward (recompute)
        self._recomputing = False
        self._grad_mode = None  # grad mode to restore at the first recorded block (cut_graph)
        self.blocks = find_blocks(encoder) if blocks is None else blocks
        count = len(self.blocks)
        chosen = range(count) if layers is None else layers
        try:
            self.indices = sorted({i % count if -count <= i < count else _out_of_range(i, count) for i in chosen})
        except TypeError:
            raise ClipvizError(f"layers must be block indices, got {layers!r}") from None
        self.gradients = gradients
        self.tokens = tokens
        self.outputs = outputs
        self.qk = qk
        self.attention = attention
        self.layers = {}
        self._handles = []
        self._slot = None
        self._asked = {}

    # -- context manager ----------------------------------------------------------------------
    def __enter__(self):
        self.layers = {i: LayerRecord(i) for i in self.indices}
        try:
            for i in self.indices:
                block = self.blocks[i]
                attention, layout = _attention_and_layout(block)
                native = layout is None
                asks = self._ask_for_weights if native else layout.ask_for_weights
                if native and not self.attention:  # left on its own path unless a mask makes the row differ
                    asks = self._ask_if_masked
                self._handles.append(attention.register_forward_pre_hook(asks, with_kwargs=True))
                self._handles.append(attention.register_forward_hook(self._attention_hook(i, native, layout),
                                                                     with_kwargs=True))
                if self.qk:
                    self._handles.append(attention.register_forward_pre_hook(self._qk_hook(i, layout), with_kwargs=True))
                if self.tokens:
                    self._handles.append(block.register_forward_pre_hook(self._tokens_hook(i)))
                if self.outputs:
                    self._handles.append(block.register_forward_hook(self._output_hook(i)))
            if self.gradients is not None and self.cut_graph:
                self._handles.insert(0, self.encoder.register_forward_pre_hook(self._stop_graph))
                self._handles.append(self.encoder.register_forward_hook(self._restore_grad_mode, always_call=True))
                if self.recompute:
                    for k in range(self.indices[0], len(self.blocks)):
                        self._handles.append(self.blocks[k].register_forward_pre_hook(
                            self._keep_call(k), with_kwargs=True, prepend=True))
                        self._handles.append(self.blocks[k].register_forward_hook(self._block_output(k)))
                else:
                    self._handles.append(self.blocks[self.indices[0]].register_forward_pre_hook(
                        self._start_graph, with_kwargs=True, prepend=True))  # before the tokens hook
            elif self.gradients is not None:
                # frozen weights (requires_grad=False) would leave nothing to differentiate: let
                # the residual stream entering the first block carry a gradient (values unchanged)
                self._handles.insert(0, self.blocks[0].register_forward_pre_hook(_track_gradient))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def remove(self):
        """Detach every hook; the model is as it was before ``__enter__``."""
        remove_hooks(self._handles)
        self._restore_grad_mode()
        for record in self.layers.values():  # drop graph references so memory can be freed
            _drop_graph(record)
        self._calls, self._top, self._previous = {}, None, None

    # -- hooks ---------------------------------------------------------------------------------
    def _attention_hook(self, index, native=True, layout=None):
        recomputes = getattr(layout, "recomputes", False)

        def hook(module, args, kwargs, output):
            if native and self._asked.get(id(module)) is _UNTOUCHED:  # attention=False: seen, left alone
                del self._asked[id(module)]
                self.layers[index].called = True
                return None
            if recomputes:  # the same output, now from explicit probabilities in the graph
                output = layout.recompute(module, args, kwargs)
            weights = output[1]
            if weights is None or weights.dim() != 4:
                raise ClipvizError(
                    f"block {index} returned no per-head attention probabilities (a fused attention path?); "
                    "clipviz needs nn.MultiheadAttention to honour need_weights=True, or another library's "
                    "attention to return them (encode through clipviz.adapters.adapt(model))")
            live = _tensor_used_in_graph(weights)
            record = self.layers[index]
            if not self._recomputing:  # a recomputed block's probabilities are the same: keep the forward's
                record.probs = weights.detach().float()  # methods accumulate in fp32
            if self.gradients is not None and live.requires_grad:
                record._live_probs = live
                live.register_hook(self._gradient_hook(record, weights.shape))
            if recomputes:
                return output[0]
            if not native:
                return None  # a registered layout's attention: its output is left as it is
            # give the caller exactly what it asked for
            need_weights, average = self._asked.pop(id(module), (False, True))
            if not need_weights:
                return output[0], None
            return output[0], weights.mean(dim=1) if average else weights
        return hook

    def _ask_if_masked(self, module, args, kwargs):
        """Pre-hook of attention=False: an unmasked call keeps its own (fused) path and is only
        noted; a masked one is asked for its probabilities, which are then recorded."""
        _, options = attention_keywords(args, kwargs)
        if options.get("attn_mask") is None and options.get("key_padding_mask") is None and not options.get("is_causal"):
            self._asked[id(module)] = _UNTOUCHED
            return None
        return self._ask_for_weights(module, args, kwargs)

    def _ask_for_weights(self, module, args, kwargs):
        args, kwargs = attention_keywords(args, kwargs)
        self._asked[id(module)] = (kwargs.get("need_weights", True), kwargs.get("average_attn_weights", True))
        kwargs["need_weights"] = True
        kwargs["average_attn_weights"] = False
        return args, kwargs

    def _stop_graph(self, module, args):
        self._grad_mode = torch.is_grad_enabled()
        torch.set_grad_enabled(False)

    def _restore_grad_mode(self, *_):
        if self._grad_mode is not None:
            torch.set_grad_enabled(self._grad_mode)
            self._grad_mode = None

    def _start_graph(self, module, args, kwargs):
        """Grad mode back on; the block input becomes a leaf that requires grad (a fresh graph,
        also for frozen weights)."""
        self._restore_grad_mode()
        if args:
            fresh = _track_gradient(module, (args[0].detach(),) + tuple(args[1:]))
            return (fresh, kwargs) if fresh is not None else None
        name = getattr(_attention_and_layout(module)[1], "input_name", None)
        if name and torch.is_tensor(kwargs.get(name)):  # a layout's blocks may take their input by keyword
            fresh = _track_gradient(module, (kwargs[name].detach(),))
            return (args, {**kwargs, name: fresh[0]}) if fresh is not None else None
        return None

    def _keep_call(self, index):
        """Pre-hook (recompute): keep block ``index``'s call; check it reads the block before's output."""
        def hook(module, args, kwargs):
            if self._recomputing:
                return
            if index > self.indices[0] and _block_input(module, args, kwargs) is not self._previous:
                raise Unchained(f"block {index}'s input is not block {index - 1}'s output")
            self._calls[index] = (args, kwargs)
        return hook

    def _block_output(self, index):
        """Forward hook (recompute): remember the output; after the last block, autograd back on
        and the output replaced by a leaf the head runs on (the top of backward_batched's walk)."""
        def hook(module, args, output):
            if self._recomputing:
                return None
            self._previous = _stream(output)
            if index < len(self.blocks) - 1:
                return None
            self._restore_grad_mode()
            if not torch.is_grad_enabled():
                return None
            self._top = self._previous.detach().requires_grad_(True)
            return _with_stream(output, self._top)
        return hook

    def _qk_hook(self, index, layout):
        def hook(module, args, kwargs):
            if self._recomputing:
                return  # recorded in the forward already
            with torch.no_grad():
                if layout is None:
                    queries, keys = _queries_keys(module, args[0] if args else kwargs.get("query"))
                else:
                    queries, keys = layout.queries_keys_of_call(module, args, kwargs)
            record = self.layers[index]
            record.queries, record.keys = queries.detach().float(), keys.detach().float()
        return hook

    def _output_hook(self, index):
        def hook(module, args, output):
            self.layers[index]._live_output = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    def _tokens_hook(self, index):
        def hook(module, args):
            tokens = args[0]
            record = self.layers[index]
            record._live_tokens = tokens
            if not self._recomputing:
                record.tokens = tokens.detach().float()
            if self.gradients is not None and tokens.requires_grad:
                tokens.register_hook(self._token_gradient_hook(record))
        return hook

    def _gradient_hook(self, record, shape):
        def hook(grad):
            if self._slot is not None:  # reduced in fp32 whatever the model's dtype (fp16/bf16 sums lose mass)
                probs = record._live_probs.detach().view(shape)
                record.grads[self._slot] = self.reduce(record.index, probs.float(), grad.view(shape).float())
        return hook

    def _token_gradient_hook(self, record):
        def hook(grad):
            if self._slot is not None:
                record.token_grads[self._slot] = grad.detach().float()
        return hook

    # -- backward ------------------------------------------------------------------------------
    def backward(self, score, slot, retain_graph=True, layers=None):
        """Backpropagate a scalar ``score`` through the recorded blocks, storing results under ``slot``.

        Only the part of the graph between the score and the earliest recorded tensor is
        traversed; the model's parameters get no ``.grad``. ``layers`` restricts the gradients
        taken (and stored) to those blocks.
        """
        if self.recompute:
            raise RuntimeError("AttentionRecorder(recompute=True) takes backward_batched only")
        chosen = [r for i, r in self.layers.items() if layers is None or i in layers]
        targets = [r._live_probs for r in chosen if r._live_probs is not None]
        targets += [r._live_tokens for r in chosen if r._live_tokens is not None and r._live_tokens.requires_grad]
        if not targets:
            raise _nothing_recorded()
        self._slot = slot
        try:
            torch.autograd.grad(score, targets, retain_graph=retain_graph, allow_unused=True)
        finally:
            self._slot = None

    def backward_batched(self, scores, slots, chunk=None, retain_graph=False):
        """``backward(scores[i], slot=slots[i])`` for every i, as vectorised backward passes.

        scores: [T] scalars of one graph. ``torch.autograd.grad(..., is_grads_batched=True)`` runs
        the backward for ``chunk`` targets at once (vmap over the rows of an identity): one
        traversal of the graph instead of T, with batched matrix products; each result is reduced
        (``gradients``) as soon as its chunk returns. chunk: targets per pass; None takes as many
        as keep one block's batched attention gradient under 6 MiB on a CPU (where more buy no
        speed: every target's matrix products already have N rows) and 1 GiB on other devices.
        retain_graph: keep the graph for another backward (always freed with recompute).

        With recompute=True the blocks are walked from the top: ∂S_t/∂y [T, ...] at the last
        block's output y (from the head's small graph), then for each block k from the last down
        to the first recorded one, the block is run again on its kept input x_k (a fresh leaf,
        autograd on) and one batched backward of its output with the carried ∂S_t/∂x_{k+1} as
        grad_outputs gives ∂S_t/∂A_k and ∂S_t/∂x_k (the chain rule across the residual stream;
        the same numbers as one backward through every block, up to rounding). One block's graph
        and ``chunk`` copies of its gradients are alive at a time; each is freed before the next.
        """
        slots = list(slots)
        if chunk is None:
            chunk = self._chunk(scores.device)
        if self.recompute:
            return self._backward_recomputed(scores, slots, chunk)
        chosen = [r for r in self.layers.values() if r._live_probs is not None]
        token_records = [r for r in self.layers.values() if r._live_tokens is not None and r._live_tokens.requires_grad]
        targets = [r._live_probs for r in chosen] + [r._live_tokens for r in token_records]
        if not targets:
            raise _nothing_recorded()
        identity = torch.eye(len(slots), dtype=scores.dtype, device=scores.device)
        for start in range(0, len(slots), chunk):
            last = start + chunk >= len(slots)
            grads = _batched_grad(scores, targets, identity[start:start + chunk], retain_graph or not last)
            self._keep_batched(chosen, token_records, grads, slots[start:start + chunk])
            del grads

    def _chunk(self, device):
        """Targets per batched backward pass for the budget backward_batched describes."""
        recorded = [r.probs for r in self.layers.values() if r.probs is not None]
        if not recorded:
            return 8
        # each target of a chunk holds ~19× its attention gradient while a block's backward runs
        # (ViT-B/16: ~35 MiB a target): 3 at a time on B/16 peak at 1.10× a plain forward and
        # backward, 4 at 1.40×, in the same time (5.73 vs 5.75 s at start_layer=0, 16 prompts)
        budget = 6 * 2**20 if device.type == "cpu" else 2**30
        return max(1, budget // (recorded[0].numel() * recorded[0].element_size()))

    def _backward_recomputed(self, scores, slots, chunk):
        if self._top is None:
            raise _nothing_recorded()
        identity = torch.eye(len(slots), dtype=scores.dtype, device=scores.device)
        carried, = _batched_grad(scores, [self._top], identity, retain_graph=False)
        resident = _resident_bytes() if carried.device.type == "cpu" else None
        spare = torch.empty_like(carried)
        first = self.indices[0]
        for index in reversed(range(first, len(self.blocks))):
            block, (args, kwargs) = self.blocks[index], self._calls.pop(index)
            args, kwargs, leaf = _with_block_input(block, args, kwargs)
            self._recomputing = True
            try:
                with torch.enable_grad():
                    output = _stream(block(*args, **kwargs))
            finally:
                self._recomputing = False
            record = self.layers.get(index)
            probs = [record] if record is not None and record._live_probs is not None else []
            tokens = [record] if record is not None and record._live_tokens is not None else []
            inputs = [r._live_probs for r in probs] + [r._live_tokens for r in tokens]
            carry = index > first
            below = spare  # two buffers taken in turn: no new allocation per block to split freed memory
            for start in range(0, len(slots), chunk):
                grads = _batched_grad(output, inputs + [leaf] * carry, carried[start:start + chunk],
                                      start + chunk < len(slots))
                self._keep_batched(probs, tokens, grads[:len(inputs)], slots[start:start + chunk])
                if carry and grads[-1] is not None:
                    below[start:start + chunk] = grads[-1]
                elif carry:
                    below[start:start + chunk] = 0
                del grads
            if record is not None:
                _drop_graph(record)
            del output, leaf, args, kwargs
            if carry:
                carried, spare = below, carried
            if resident is not None and _resident_bytes() > resident + _FRAGMENTS_KEPT:
                _return_freed_pages()
        self._top = None

    def _keep_batched(self, prob_records, token_records, grads, slots):
        """Store reduce(probs, grads[i]) and token gradients under slots[i], for one chunk; grads
        holds the probs' gradients, then the tokens', each [chunk, ...]."""
        for record, grad in zip(prob_records, grads):
            if grad is not None:  # the hooks saw batched tensors and kept nothing
                shape = record.probs.shape  # [B, H, N, N]; the live tensor may be its [B·H, N, N] base
                probs = record._live_probs.detach().view(shape).float()
                for i, slot in enumerate(slots):
                    record.grads[slot] = self.reduce(record.index, probs, grad[i].view(shape).float())
        for record, grad in zip(token_records, grads[len(prob_records):]):
            if grad is not None:
                for i, slot in enumerate(slots):
                    record.token_grads[slot] = grad[i].detach().float()

    def reduce(self, index, probs, grad):
        """The gradient reducer applied to block ``index``'s probabilities and ∂S/∂probs (a recorder
        that lays its records out differently, clipviz.adapters.probe, adapts both first)."""
        return self.gradients(probs, grad)

    def check_recorded(self):
        """Raise a clear error if a forward pass recorded nothing (e.g. it bypassed the blocks)."""
        missing = [i for i, r in self.layers.items() if r.probs is None and not r.called]
        if missing:
            raise ClipvizError(
                f"no attention was recorded for block(s) {missing}: the forward pass did not go through "
                "nn.MultiheadAttention (a fused or custom attention path, or a torch.compile'd forward on "
                "torch < 2.6: pass the uncompiled module, model._orig_mod), so no map can be computed")

    def batch_first(self, index, tensor):
        """A tensor laid out as block ``index`` takes its input, as [B, N, ...] (the block's
        ``nn.MultiheadAttention.batch_first`` says which it is; layouts' blocks are batch-first)."""
        return tensor if getattr(attention_of(self.blocks[index]), "batch_first", True) else tensor.transpose(0, 1)

    def batch_first_tokens(self, record):
        """Block input of ``record`` and its gradients as [B, N, D], whatever the model's layout."""
        return (self.batch_first(record.index, record.tokens),
                {k: self.batch_first(record.index, g) for k, g in record.token_grads.items()})

    def block_output(self, index):
        """Block ``index``'s output, in the graph, as [B, N, D] (recorded with outputs=True)."""
        return self.batch_first(index, self.layers[index]._live_output)


class CausalPrefix:
    """Runs a causal text transformer on the first ``length`` positions of its input only.

    Under a causal mask no position sees a later one, so every output up to position
    ``length - 1`` is unchanged when the rest is dropped; CLIP reads the text feature at the EOT
    token, so ``length = 1 + the last EOT position`` of a batch of prompts gives the same
    embeddings (up to rounding) for a fraction of the 77-token cost. A forward pre-hook trims the
    tokens entering the transformer; one on each block's attention trims its [L, L] mask.

    Applies to batch-first transformers whose blocks carry a causal ``attn_mask`` (clipviz's own
    models); for any other encoder it does nothing.
    """

    def __init__(self, encoder, length):
        self.encoder, self.length, self._handles, self._mask = encoder, length, [], None
        blocks = [m for m in submodules(encoder) if type(m).__name__ == "ResidualAttentionBlock"]
        self.blocks = blocks if getattr(encoder, "batch_first", False) and blocks and all(
            isinstance(getattr(b, "attn", None), nn.MultiheadAttention) and _is_causal(getattr(b, "attn_mask", None))
            for b in blocks) else []

    def __enter__(self):
        if self.blocks:
            self._handles.append(self.encoder.register_forward_pre_hook(self._trim_tokens))
            self._handles += [b.attn.register_forward_pre_hook(self._trim_mask, with_kwargs=True) for b in self.blocks]
        return self

    def __exit__(self, *exc):
        remove_hooks(self._handles)
        return False

    def _trim_tokens(self, module, args):
        return (args[0][:, :self.length],) + tuple(args[1:])  # [P, Lt, D] → [P, length, D]

    def _trim_mask(self, module, args, kwargs):
        """The block's causal mask for ``length`` positions, as booleans (True: not attended): the
        same attention, and one nn.MultiheadAttention runs on its fused path without autograd
        (it refuses float masks there). One mask serves every block of the call."""
        args, kwargs = attention_keywords(args, kwargs)
        mask, length = kwargs.get("attn_mask"), args[0].shape[1]
        if torch.is_tensor(mask) and mask.dim() == 2:
            if self._mask is None or self._mask.shape[0] != length or self._mask.device != mask.device:
                self._mask = torch.ones(length, length, dtype=torch.bool, device=mask.device).triu(1)
            kwargs["attn_mask"] = self._mask
        return args, kwargs


def _batched_grad(output, inputs, grad_outputs, retain_graph):
    """∂⟨output, g_i⟩/∂inputs for each row g_i of grad_outputs [K, *output.shape] → per input a
    tensor [K, *input.shape] (None where unused): ``torch.autograd.grad(..., is_grads_batched=True)``.

    One row (a single image or prompt, the CLI's usual case) is a plain backward of
    ``(output · g_0).sum()``: the same numbers without vmap, and without the ~0.6 s import of
    torch.fx.experimental.symbolic_shapes that autograd makes the first time it is given a
    gradient tensor."""
    if grad_outputs.shape[0] == 1:
        grads = torch.autograd.grad((output * grad_outputs[0]).sum(), inputs, retain_graph=retain_graph,
                                    allow_unused=True)
        return tuple(None if g is None else g[None] for g in grads)
    return torch.autograd.grad(output, inputs, grad_outputs=grad_outputs, retain_graph=retain_graph,
                               is_grads_batched=True, allow_unused=True)


def remove_hooks(handles):
    """Remove every hook handle in the list ``handles`` and empty it."""
    for handle in handles:
        handle.remove()
    handles.clear()


def _is_causal(mask):
    """True for an additive [L, L] mask that is -inf exactly above the diagonal and 0 elsewhere.

    Remembered per mask tensor (and its version: an in-place change is seen), since the answer
    costs a device synchronisation and every block of a text tower shares one mask."""
    if not torch.is_tensor(mask) or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    # an inference tensor has no version counter: asked every time
    key = None if mask.is_inference() else (id(mask), mask.data_ptr(), mask._version, mask.dtype, mask.device)
    known = _CAUSAL_MASKS.get(key)
    if known is not None and known[0]() is mask:
        return known[1]
    blocked = torch.isinf(mask) & (mask < 0)
    causal = bool(torch.equal(blocked, torch.ones_like(blocked).triu(1))) and not bool(mask.masked_fill(blocked, 0).any())
    if key is None:
        return causal
    if len(_CAUSAL_MASKS) > 64:  # masks of models let go: forget them
        _CAUSAL_MASKS.clear()
    _CAUSAL_MASKS[key] = (weakref.ref(mask), causal)
    return causal


_CAUSAL_MASKS = {}  # (id, data_ptr, version, dtype, device) -> (weak reference to the mask, causal?)


# nn.MultiheadAttention.forward's parameters after query, key, value, in order
_ATTENTION_OPTIONS = ("key_padding_mask", "need_weights", "attn_mask", "average_attn_weights", "is_causal")


def attention_keywords(args, kwargs):
    """An ``nn.MultiheadAttention`` call's arguments with everything after query, key, value passed
    by name: (args[:3], kwargs as a new dict). Pre-hooks then set options by name without clashing
    with a caller that passed them positionally (``attn(q, k, v, None, False)``)."""
    kwargs = dict(kwargs)
    for name, value in zip(_ATTENTION_OPTIONS, args[3:]):
        kwargs[name] = value
    return tuple(args[:3]), kwargs


def keep_gradient(probs, grad):
    """Gradient reducer that keeps ∂S/∂A unchanged: [B, H, N, N]."""
    return grad.detach()


def _queries_keys(attention, inputs):
    """q, k [B, N, D] (heads side by side) of an ``nn.MultiheadAttention`` for its input, laid out
    as the module takes it (it may be sequence-first)."""
    x = inputs if attention.batch_first else inputs.transpose(0, 1)
    d = attention.embed_dim
    if attention.in_proj_weight is not None:
        w_q, w_k = attention.in_proj_weight[:d], attention.in_proj_weight[d:2 * d]
    else:
        w_q, w_k = attention.q_proj_weight, attention.k_proj_weight
    bias = attention.in_proj_bias
    b_q, b_k = (None, None) if bias is None else (bias[:d], bias[d:2 * d])
    return torch.nn.functional.linear(x, w_q, b_q), torch.nn.functional.linear(x, w_k, b_k)


def _track_gradient(module, args):
    tokens = args[0]
    if torch.is_grad_enabled() and tokens.is_floating_point() and not tokens.requires_grad:
        return (tokens.detach().requires_grad_(True),) + tuple(args[1:])
    return None


def _tensor_used_in_graph(weights):
    """The tensor whose gradient is ∂S/∂A: MultiheadAttention returns a view of it."""
    base = weights._base
    if base is not None and base.data_ptr() == weights.data_ptr() and base.numel() == weights.numel():
        return base
    return weights


_UNTOUCHED = object()  # an attention call that attention=False left to its own path


class Unchained(Exception):
    """Raised by a recompute=True recorder's forward when the blocks are not one residual stream
    (a block's input is not the block before's output): take the path without recompute."""


def _nothing_recorded():
    return ClipvizError("nothing was recorded with gradients: run the forward pass inside the recorder, "
                        "with gradients enabled (not under torch.no_grad())")


def _resident_bytes():
    """This process's resident set in bytes (Linux /proc/self/statm), or 0 where unknown."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_FRAGMENTS_KEPT = 64 * 2**20  # resident growth during a recomputing walk tolerated before trimming


def _return_freed_pages():
    """Give the pages glibc's malloc holds free back to the OS (``malloc_trim(0)``; nothing where
    there is no glibc). Each recomputed block frees its graph and its batched gradients, but the
    small tensors kept next (the reduced gradients) split those free regions, and the resident set
    grows by about 30 MiB per block (ViT-B/16, 16 targets, every block: 540-620 MiB peak instead
    of 205-280 MiB). Trimming costs time (the pages are faulted in again), so the walk trims only
    once the resident set has grown by _FRAGMENTS_KEPT."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        import ctypes
        try:
            _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim
        except (AttributeError, OSError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None  # libc's malloc_trim once looked up, False where there is none


def _drop_graph(record):
    """Let go of the in-graph tensors a record holds, so their graph can be freed."""
    record._live_probs = record._live_tokens = record._live_output = None


def _stream(output):
    """The residual stream a block returns: the output itself, or its first item (Hugging Face)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _with_stream(output, stream):
    """A block's output with its residual stream replaced by ``stream``."""
    return (stream,) + tuple(output[1:]) if isinstance(output, (tuple, list)) else stream


def _block_input(block, args, kwargs):
    """The residual stream entering a block: its first argument, or a layout's keyword."""
    if args:
        return args[0]
    return kwargs.get(getattr(_attention_and_layout(block)[1], "input_name", None) or "hidden_states")


def _with_block_input(block, args, kwargs):
    """A kept call with its input replaced by a fresh leaf that requires grad: (args, kwargs, leaf)."""
    leaf = _block_input(block, args, kwargs).detach().requires_grad_(True)
    if args:
        return (leaf,) + tuple(args[1:]), kwargs, leaf
    name = getattr(_attention_and_layout(block)[1], "input_name", None) or "hidden_states"
    return args, {**kwargs, name: leaf}, leaf


def _out_of_range(index, count):
    raise ClipvizError(f"layer {index} does not exist: this encoder has {count} blocks (0 … {count - 1}, or -1 … -{count})")
