"""What the performance work relies on: batches split on out-of-memory with unchanged results, one
image pass for many prompts, and a recorder that builds no graph before the first recorded block
without changing any gradient. (Timings live in perf/; see docs/performance.md.)"""

import numpy as np
import pytest
import torch

import clipviz
from clipviz.adapters import ClipAdapter
from clipviz.hooks import AttentionRecorder, keep_gradient

from conftest import random_ids

PROMPTS = ["a dog", "a red car", "two people dancing"]


def photos(count):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (60 + 7 * i, 90 - 5 * i, 3), dtype=np.uint8) for i in range(count)]


def hooks_left(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def limited_memory(monkeypatch, fits, error):
    """Image batches above ``fits`` fail with ``error``; returns the list of batch sizes tried."""
    tried = []
    encode = ClipAdapter.encode_image

    def encode_image(self, pixels):
        tried.append(pixels.shape[0])
        if pixels.shape[0] > fits:
            raise error
        return encode(self, pixels)

    monkeypatch.setattr(ClipAdapter, "encode_image", encode_image)
    return tried


CPU_OOM = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9663676416 bytes")
CUDA_OOM = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")


@pytest.mark.parametrize("error", [CPU_OOM, CUDA_OOM], ids=["cpu", "cuda"])
def test_batches_split_on_out_of_memory_and_equal_one_image_at_a_time(tiny_vit, monkeypatch, error):
    images = photos(5)
    alone = [clipviz.explain(tiny_vit, image, PROMPTS) for image in images]
    tried = limited_memory(monkeypatch, fits=2, error=error)
    together = clipviz.explain(tiny_vit, images, PROMPTS, batch_size=8)
    assert tried == [5, 2, 2, 1]  # 8 asked, 5 given: halve the failed 5 to 2, then the rest
    assert torch.is_grad_enabled() and hooks_left(tiny_vit) == 0  # the failed passes left nothing behind
    for batched, single in zip(together, alone):
        # equal up to float32 rounding: BLAS blocks a batch of 2 differently from a single image
        np.testing.assert_allclose(batched.token_maps, single.token_maps, rtol=1e-5, atol=1e-6 * single.token_maps.max())
        np.testing.assert_allclose(batched.maps, single.maps, rtol=1e-4, atol=1e-5)  # NaN outside the crop in both
        np.testing.assert_allclose(batched.scores, single.scores, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(batched.probs, single.probs, rtol=1e-5, atol=1e-7)
        for a, b in zip(batched.text_relevance, single.text_relevance):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())


def test_other_errors_and_a_single_image_that_does_not_fit_are_raised(tiny_vit, monkeypatch):
    tried = limited_memory(monkeypatch, fits=2, error=RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        clipviz.explain(tiny_vit, photos(4), "a dog")
    assert tried == [4]  # not retried: only out-of-memory errors split the batch
    tried = limited_memory(monkeypatch, fits=0, error=CPU_OOM)
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        clipviz.explain(tiny_vit, photos(2), "a dog")
    assert tried == [2, 1]


def test_many_prompts_share_one_image_pass(tiny_vit, monkeypatch):
    tried = limited_memory(monkeypatch, fits=1, error=CPU_OOM)
    exp = clipviz.explain(tiny_vit, photos(1)[0], PROMPTS * 5 + ["a cat"])
    assert tried == [1] and exp.token_maps.shape[0] == 16


def record(model, layers, pixels, ids, cut_graph=True, frozen=False):
    """Forward through a recorder on the image blocks ``layers``; backward of S[0, 0]. Returns
    (gradients by layer, whether each block's output was in a graph)."""
    in_graph = []
    handles = [b.register_forward_hook(lambda m, a, out: in_graph.append(out.requires_grad))
               for b in model.visual.transformer.resblocks]
    for p in model.parameters():
        p.requires_grad_(not frozen)
    try:
        with AttentionRecorder(model.visual, layers=layers, gradients=keep_gradient, cut_graph=cut_graph) as rec:
            image = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
            text = torch.nn.functional.normalize(model.encode_text(ids), dim=-1)
            rec.backward((image @ text.t())[0, 0], slot=0)
    finally:
        for handle in handles:
            handle.remove()
        for p in model.parameters():
            p.requires_grad_(True)
    return {i: r.grads[0] for i, r in rec.layers.items()}, in_graph


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
def test_no_graph_before_the_first_recorded_block_and_the_same_gradients(tiny_vit, frozen):
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    ids = random_ids(3)
    cut, cut_in_graph = record(tiny_vit, [1, 2], pixels, ids, frozen=frozen)
    full, full_in_graph = record(tiny_vit, [1, 2], pixels, ids, cut_graph=False, frozen=frozen)
    assert cut_in_graph == [False, True, True]  # block 0 ran without autograd
    assert full_in_graph == [True, True, True]
    assert torch.is_grad_enabled()
    for layer in (1, 2):
        assert cut[layer].abs().max() > 0
        # the cut blocks run without autograd, on torch's fused attention: same values up to rounding
        torch.testing.assert_close(cut[layer], full[layer], rtol=1e-5, atol=1e-6 * full[layer].abs().max().item())


def test_grad_mode_and_hooks_are_restored_when_the_encoder_fails(tiny_vit, monkeypatch):
    def failing(x):
        assert not torch.is_grad_enabled()  # the blocks before the recorded one run without autograd
        raise RuntimeError("boom")

    monkeypatch.setattr(tiny_vit.visual.transformer, "forward", failing)
    with pytest.raises(RuntimeError, match="boom"):
        with AttentionRecorder(tiny_vit.visual, layers=[-1], gradients=keep_gradient):
            tiny_vit.encode_image(torch.randn(1, 3, 64, 64))
    assert torch.is_grad_enabled() and hooks_left(tiny_vit) == 0


def test_text_runs_only_up_to_the_last_eot_and_gives_the_same_embeddings(vit_b32):
    from clipviz.hooks import CausalPrefix
    ids = random_ids(4, seed=3)
    length = int(ids.argmax(dim=-1).max()) + 1
    seen = []
    handle = vit_b32.transformer.resblocks[0].register_forward_hook(lambda m, a, out: seen.append(out.shape[1]))
    try:
        with torch.no_grad():
            full = vit_b32.encode_text(ids)
            with CausalPrefix(vit_b32.transformer, length):
                short = vit_b32.encode_text(ids)
            again = vit_b32.encode_text(ids)
    finally:
        handle.remove()
    assert seen == [77, length, 77] and length < 20
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-5 * full.abs().max().item())
    assert torch.equal(again, full)
    assert CausalPrefix(vit_b32.visual, 5).blocks == []  # no causal mask there: left alone


def test_a_causal_mask_is_checked_once_and_again_after_an_in_place_change(monkeypatch):
    """CausalPrefix asks every block whether its mask is causal; the answer (a device
    synchronisation on a GPU) is remembered per mask tensor, and an in-place edit is noticed."""
    import clipviz.hooks as hooks
    checks = []
    equal = torch.equal
    monkeypatch.setattr(hooks.torch, "equal", lambda a, b: checks.append(1) or equal(a, b))
    mask = torch.full((6, 6), float("-inf")).triu(1)
    assert hooks._is_causal(mask) and hooks._is_causal(mask) and len(checks) == 1
    mask[0, 3] = 0.0  # no longer causal: its version changed
    assert not hooks._is_causal(mask) and len(checks) == 2
    assert not hooks._is_causal(torch.zeros(6, 6)) and hooks._is_causal(torch.full((6, 6), float("-inf")).triu(1))
    biased = torch.full((6, 6), float("-inf")).triu(1)
    biased[4, 1] = 0.5  # an additive bias below the diagonal: not a plain causal mask (no boolean stands in for it)
    assert not hooks._is_causal(biased)
