"""The forms a CLIP model is held in, and how an explanation sees through them.

People hand ``explain`` the model they use, not a bare one:

- wrapped: ``nn.DataParallel`` / ``DistributedDataParallel`` (``.module``), ``torch.compile``
  (an ``OptimizedModule``; ``._orig_mod``), on the whole model or on one tower;
- compiled in place (``module.compile()``) or through a compiled tower: a compiled forward runs a
  traced graph that never calls the module hooks the recorder relies on, so every explanation
  forward runs eagerly (``torch.compiler.set_stance("force_eager")``, torch ≥ 2.6) — the same
  function, the original modules;
- in an autograd mode: ``torch.no_grad()`` / ``enable_grad()`` are overridden inside the
  explanation; under ``torch.inference_mode()`` no graph can be built, so the explanation runs in
  ``inference_mode(False)`` — possible unless the weights themselves are inference tensors
  (created under inference_mode), which no gradient may pass through;
- under ``torch.autocast``: switched off while explaining, so the model runs in its own dtype
  (an fp32 model gives fp32 maps; for half precision convert the model, ``model.half()``) and
  nothing autocast produces (bf16 scores numpy cannot read) reaches the results;
- with gradient checkpointing on (open_clip ``set_grad_checkpointing``, Hugging Face
  ``gradient_checkpointing_enable``): a re-entrant checkpoint runs its forward without a graph and
  a recomputation would run the recorder's hooks twice, so it is switched off while explaining
  (the values are the same; only the memory plan differs) and restored after;
- on the meta device (no values): refused with a ClipvizError.

Nothing here changes a model beyond the explanation: every flag is restored, also on errors.
"""

from contextlib import ExitStack, contextmanager

import sys

import torch
from torch import nn

from .errors import ClipvizError

# attributes holding a gradient-checkpointing switch: open_clip's Transformer, Hugging Face encoders
_CHECKPOINT_FLAGS = ("grad_checkpointing", "gradient_checkpointing")


def submodules(root):
    """Every module of ``root``, itself first: the list ``list(root.modules())`` gives (the same
    order, each module once), about twice as fast. It runs on every explanation: nn.Module.modules()
    resumes one generator per level of nesting for every module it yields."""
    found, seen, stack = [], set(), [root]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        found.append(module)
        children = module._modules
        if children:
            stack += [child for child in reversed(children.values()) if child is not None]
    return found


def unwrap(module):
    """The module inside any DataParallel / DistributedDataParallel / OptimizedModule wrappers.

    Explanations run on the wrapped module itself (on its own device): hooks must see one copy of
    each block, not per-device replicas or a traced graph.
    """
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif _is_compiled(module):
            module = module._orig_mod
        else:
            return module


def check_materialised(model):
    """Raise a ClipvizError if any parameter or buffer of ``model`` (an nn.Module; anything else
    is left to the caller to refuse) lives on the meta device."""
    if not isinstance(model, nn.Module):
        return
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        raise ClipvizError(
            "the model's weights are on the meta device (built under torch.device('meta') or with "
            "init_empty_weights), so they have no values to explain: load weights into it first "
            "(model.load_state_dict(state_dict, assign=True), or to_empty() then load), or use clipviz.load()")


def check_trainable(model, method):
    """Raise a ClipvizError if gradients cannot pass through ``model``'s weights because they are
    inference tensors (created inside ``torch.inference_mode()``)."""
    if any(p.is_inference() for p in model.parameters()):
        raise ClipvizError(
            f"method {method!r} backpropagates through the model, but its weights are inference tensors "
            "(the model was built or loaded inside torch.inference_mode()), which no gradient can pass "
            "through: load it outside inference_mode (torch.no_grad() is fine), or use a gradient-free "
            "method ('rollout', 'attention')")


@contextmanager
def explaining(model):
    """Run the body with the model as an explanation needs it (see the module docstring):
    eager forwards, autograd usable (also inside ``torch.inference_mode()``), autocast and
    checkpointing off."""
    with ExitStack() as stack:
        if torch.is_inference_mode_enabled():
            stack.enter_context(torch.inference_mode(False))
        parameter = next(model.parameters(), None)
        for device_type in {"cpu", "cpu" if parameter is None else parameter.device.type}:
            stack.enter_context(torch.autocast(device_type, enabled=False))
        # nothing can be compiled before torch._dynamo is imported (torch.compile imports it), and
        # importing it only to switch it off costs about 1.5 s of every CLI run
        if hasattr(torch.compiler, "set_stance") and "torch._dynamo" in sys.modules:
            stack.enter_context(torch.compiler.set_stance("force_eager"))
        stack.enter_context(_no_checkpointing(model))
        yield


def usable(tensor):
    """``tensor``, or a normal copy of it if it is an inference tensor (made inside
    ``torch.inference_mode()``), which autograd may not save for backward."""
    return tensor.clone() if tensor.is_inference() else tensor


@contextmanager
def _no_checkpointing(model):
    # the flags are plain instance attributes: vars() reads them without nn.Module.__getattr__'s
    # exception for every module that has none (this runs on every explanation)
    switched = [(m, name) for m in submodules(model) for name in _CHECKPOINT_FLAGS if vars(m).get(name) is True]
    try:
        for module, name in switched:
            setattr(module, name, False)
        yield
    finally:
        for module, name in switched:
            setattr(module, name, True)


def _is_compiled(module):
    return type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None), nn.Module)
