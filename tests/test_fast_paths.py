"""The last block's ∂S/∂A in closed form (clipviz.last_block) against the general autograd path.

The general path (one backward per target through the recorded block) is what clipviz computed
before the closed form existed; both must give the same maps, head maps and text-token relevance
for each model family, one and sixteen prompts, plain and contrastive targets.
"""

import functools

import numpy as np
import pytest
import torch

import clipviz
import clipviz.adapters
import clipviz.explanation as explanation
import clipviz.pipeline as pipeline
from clipviz.hooks import find_blocks
from clipviz.last_block import block_parts, cls_row_gradients, eot_row_gradients, eot_row_jacobian, pooled_row
from clipviz.methods.base import Records
from test_adapters import libraries, models, photo  # noqa: F401 (fixtures)

MANY = [f"a photo of thing number {i}" for i in range(16)]
FEW = ["a photo of a dog"]


def general(monkeypatch, *args, **kwargs):
    """explain() on the general autograd path as before issue 19: one backward per target."""
    with monkeypatch.context() as patch:
        patch.setattr(explanation, "run_method", functools.partial(pipeline.run_method, fast=False))
        return clipviz.explain(*args, **kwargs)


def assert_same(fast, slow):
    for a, b in zip(fast if isinstance(fast, list) else [fast], slow if isinstance(slow, list) else [slow]):
        for name in ("token_maps", "layer_maps", "head_maps", "maps", "scores"):
            x, y = getattr(a, name), getattr(b, name)
            if y is None:
                assert x is None, name
                continue
            scale = max(np.abs(y).max(), 1e-12) if name != "maps" else 1.0
            assert np.nanmax(np.abs(x - y)) / scale <= 1e-5, name
        if b.text_relevance is not None:
            for x, y in zip(a.text_relevance, b.text_relevance):
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6 * np.abs(y).max())


@pytest.mark.parametrize("family", ["clipviz", "open_clip", "hf"])
@pytest.mark.parametrize("prompts", [FEW, MANY], ids=["P1", "P16"])
@pytest.mark.parametrize("method", ["relevance", "gradeclip"])
def test_closed_form_equals_general_path(models, monkeypatch, family, prompts, method):  # noqa: F811
    model = models[family]
    images = [photo(0), photo(1)]
    fast = clipviz.explain(model, images, prompts, method=method)
    assert_same(fast, general(monkeypatch, model, images, prompts, method=method))


@pytest.mark.parametrize("family", ["clipviz", "open_clip", "hf"])
def test_closed_form_with_contrast_targets(models, monkeypatch, family):  # noqa: F811
    model, prompts, against = models[family], MANY[:4], ["a red car", MANY[5], "a cat", MANY[0]]
    fast = clipviz.explain(model, photo(2), prompts, method="relevance", against=against)
    assert_same(fast, general(monkeypatch, model, photo(2), prompts, method="relevance", against=against))


def test_closed_form_on_vit_b16_sixteen_prompts(monkeypatch):
    model = clipviz.model.random_model("ViT-B/16")
    image = np.random.default_rng(3).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    fast = clipviz.explain(model, image, MANY, method="relevance", text=False)
    assert_same(fast, general(monkeypatch, model, image, MANY, method="relevance", text=False))


def test_start_layer_zero_keeps_the_general_path(models, monkeypatch):  # noqa: F811
    """Below the last block the closed form does not apply: explain() must not use it."""
    called = []
    monkeypatch.setattr(pipeline, "_closed_form_gradients", lambda *a: called.append(a))
    clipviz.explain(models["clipviz"], photo(), FEW, method="relevance", start_layer=0)
    assert not called


@pytest.mark.parametrize("family", ["clipviz", "open_clip", "hf"])
@pytest.mark.parametrize("method,options", [("relevance", {"start_layer": 0}), ("gradeclip", {"start_layer": 0}),
                                            ("gradcam", {}), ("legrad", {})])
def test_batched_backward_equals_one_backward_per_target(models, monkeypatch, family, method, options):  # noqa: F811
    """Every block recorded: all targets' gradients from batched backward passes (chunks of 8,
    so 16 prompts take two) equal the loop of one backward per target."""
    model, images = models[family], [photo(0), photo(1)]
    fast = clipviz.explain(model, images, MANY, method=method, **options)
    assert_same(fast, general(monkeypatch, model, images, MANY, method=method, **options))


def test_batched_backward_with_contrast_targets(models, monkeypatch):  # noqa: F811
    model, against = models["clipviz"], ["a red car", MANY[5], "a cat"]
    fast = clipviz.explain(model, photo(2), MANY[:3], method="relevance", against=against, start_layer=0)
    assert_same(fast, general(monkeypatch, model, photo(2), MANY[:3], method="relevance", against=against,
                              start_layer=0))


def test_cls_row_gradient_matches_a_hand_autograd(models):  # noqa: F811
    """The formula ⟨∂S/∂o_h, v_j⟩ against autograd through the whole last block of the clipviz
    model, written out here by hand (attention recomputed from q, k, v)."""
    model = models["clipviz"]
    block = find_blocks(model.visual)[-1]
    attn, heads = block.attn, block.attn.num_heads
    torch.manual_seed(0)
    x = torch.randn(2, 17, 128)
    text = torch.nn.functional.normalize(torch.randn(3, 64), dim=-1)
    scale = torch.tensor(7.0)
    weights = torch.tensor([[1.0, 0, 0], [0, 1.0, -1.0]])

    def scores_of(probs):
        h = block.ln_1(x)
        v = torch.nn.functional.linear(h, attn.in_proj_weight[256:], attn.in_proj_bias[256:]).view(2, 17, heads, 64)
        o = torch.einsum("bhij,bjhc->bihc", probs, v).reshape(2, 17, 128)
        y = x + attn.out_proj(o)
        y = y + block.mlp(block.ln_2(y))
        emb = torch.nn.functional.normalize(model.visual.ln_post(y[:, 0]) @ model.visual.proj, dim=-1)
        return (scale * emb @ text.t()) @ weights.t()  # [B, T]

    q, k = [torch.nn.functional.linear(block.ln_1(x), attn.in_proj_weight[i * 128:(i + 1) * 128],
                                       attn.in_proj_bias[i * 128:(i + 1) * 128]).view(2, 17, heads, 64).transpose(1, 2)
            for i in (0, 1)]
    probs = (q @ k.transpose(-1, -2) / 8.0).softmax(-1).detach().requires_grad_(True)
    expected = torch.stack([torch.autograd.grad(scores_of(probs)[:, t].sum(), probs)[0] for t in range(2)], dim=1)
    assert expected[:, :, :, 1:].abs().max() == 0  # only the CLS row is non-zero
    parts, head = block_parts(block), (lambda t: model.visual.ln_post(t) @ model.visual.proj)
    cls = torch.zeros(2, dtype=torch.long)
    got = cls_row_gradients(parts, head, pooled_row(parts, x, probs.detach(), cls), text, scale, weights)
    torch.testing.assert_close(got, expected[:, :, :, 0], rtol=1e-5, atol=1e-7)
    # the block left on its fused path: the CLS row of A computed from x alone gives the same
    torch.testing.assert_close(parts.row_attention(block.ln_1(x), cls), probs[:, :, 0].detach(), rtol=1e-5, atol=1e-7)
    fused = cls_row_gradients(parts, head, pooled_row(parts, x, None, cls), text, scale, weights)
    torch.testing.assert_close(fused, expected[:, :, :, 0], rtol=1e-4, atol=1e-6)  # A rounded another way


@pytest.mark.parametrize("family", ["clipviz", "open_clip", "hf"])
def test_row_attention_equals_the_recorded_probabilities(models, family):  # noqa: F811
    """Each family's last image block: the attention row computed from the block input (what the
    closed form uses while the block runs its fused attention) equals the probabilities the
    recorder reads from the block for every row asked, and the explanation takes that path."""
    from clipviz.adapters import adapt
    from clipviz.hooks import AttentionRecorder
    adapter = adapt(models[family])
    parts = block_parts(find_blocks(adapter.image_encoder)[-1])
    assert parts.row_attention is not None
    with torch.no_grad(), AttentionRecorder(adapter.image_encoder, layers=[-1], tokens=True) as recorder:
        adapter.encode_image(torch.randn(3, 3, adapter.input_resolution, adapter.input_resolution))
    record = recorder.layers[adapter.num_layers - 1]
    tokens, _ = recorder.batch_first_tokens(record)
    rows = torch.tensor([0, 4, 7])
    got = parts.row_attention(parts.ln_1(tokens), rows)
    torch.testing.assert_close(got, record.probs[torch.arange(3), :, rows], rtol=1e-5, atol=1e-7)


def test_eot_row_gradient_matches_a_hand_autograd(models):  # noqa: F811
    """Text-token relevance's closed form: ∂S[b, p]/∂A_p of the last text block for every image b,
    against autograd through that whole block written out by hand (causal attention recomputed
    from q, k, v; the embedding read at each prompt's EOT, then ln_final and text_projection)."""
    model = models["clipviz"]
    block = find_blocks(model.transformer)[-1]
    attn, heads, width = block.attn, block.attn.num_heads, block.attn.embed_dim
    d = width // heads
    torch.manual_seed(1)
    prompts, length, images = 3, 6, 4
    x = torch.randn(prompts, length, width)
    eot = torch.tensor([5, 2, 4])
    image_emb = torch.randn(images, model.text_projection.shape[1])
    scale = torch.tensor(5.0)
    causal = torch.full((length, length), float("-inf")).triu(1)

    def projected(i, h):
        return torch.nn.functional.linear(h, attn.in_proj_weight[i * width:(i + 1) * width],
                                          attn.in_proj_bias[i * width:(i + 1) * width]).view(prompts, length, heads, d)

    def scores_of(probs):  # S [B, P]
        v = projected(2, block.ln_1(x))
        o = torch.einsum("phij,pjhc->pihc", probs, v).reshape(prompts, length, width)
        y = x + attn.out_proj(o)
        y = y + block.mlp(block.ln_2(y))
        text = model.ln_final(y[torch.arange(prompts), eot]) @ model.text_projection
        cosine = torch.nn.functional.normalize(image_emb, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).t()
        return scale * cosine

    q, k = [projected(i, block.ln_1(x)).transpose(1, 2) for i in (0, 1)]
    probs = ((q @ k.transpose(-1, -2)) / d ** 0.5 + causal).softmax(-1).detach().requires_grad_(True)
    expected = torch.stack([torch.autograd.grad(scores_of(probs)[b].sum(), probs)[0] for b in range(images)], dim=1)
    for p in range(prompts):  # [P, B, H, L, L]: only prompt p's EOT row is non-zero
        assert expected[p, :, :, torch.arange(length) != eot[p]].abs().max() == 0
    adapter = clipviz.adapters.adapt(model)
    row = pooled_row(block_parts(block), x, probs.detach(), eot)
    got = eot_row_gradients(block_parts(block), adapter.text_head, row, image_emb, scale)  # [P, B, H, L]
    torch.testing.assert_close(got, expected[torch.arange(prompts), :, :, eot], rtol=1e-5, atol=1e-7)
    # through the prompts' Jacobian, computed once for any images (chunks of 5 of the E outputs)
    jacobian = eot_row_jacobian(block_parts(block), adapter.text_head, row, chunk=5)
    assert jacobian.shape == (prompts, heads, length, image_emb.shape[1])
    got = eot_row_gradients(block_parts(block), adapter.text_head, row, image_emb, scale, jacobian)
    torch.testing.assert_close(got, expected[torch.arange(prompts), :, :, eot], rtol=1e-5, atol=1e-7)


def test_prompts_encoded_once_carry_the_rows_only_where_the_closed_form_applies(models):  # noqa: F811
    """encode_prompts keeps the last text block's EOT rows for text-token relevance of that block,
    nothing for text=False, and gives up (None: encode with each batch) for every text block."""
    from clipviz.methods import get_method
    from clipviz.prompts import encode_prompts
    relevance = get_method("relevance")
    for family, model in models.items():
        adapter = clipviz.adapters.adapt(model)
        ids = adapter.tokenize(FEW + ["a cat"])
        last = encode_prompts(adapter, ids, relevance.needs(adapter, {}), images=10 ** 4)
        assert last.layer == adapter.text_layers - 1 and last.row.rows.tolist() == adapter.eot_positions(ids).tolist()
        assert last.jacobian.shape == (2, *last.probs.shape[1:3], last.embedding.shape[1])
        assert encode_prompts(adapter, ids, relevance.needs(adapter, {})).jacobian is None  # one batch: no need
        assert encode_prompts(adapter, ids, relevance.needs(adapter, {}), images=3).jacobian is None  # fewer than E
        with torch.no_grad():
            torch.testing.assert_close(last.embedding, adapter.encode_text(ids))
        assert encode_prompts(adapter, ids, relevance.needs(adapter, {"text": False})).row is None
        assert encode_prompts(adapter, ids, relevance.needs(adapter, {"text_start_layer": 0})) is None, family


def test_rollout_row_product_equals_the_matrix_product(models):  # noqa: F811
    """Rollout reads J's CLS row through row-vector products; the full J = Â_L ⋯ Â_0 (N×N
    products, written out here) has the same CLS row, for each head fusion and discard ratio."""
    from clipviz.hooks import AttentionRecorder
    from clipviz.methods import rollout
    model = models["clipviz"]
    pixels = torch.randn(2, 3, 80, 80)
    with torch.no_grad(), AttentionRecorder(model.visual) as recorder:
        model.encode_image(pixels)
    records = Records(num_layers=3, patch_grid=5, batch=2, targets=3,
                                  probs={i: r.probs for i, r in recorder.layers.items()})
    for fusion, discard in (("mean", 0.0), ("max", 0.3), ("min", 0.0)):
        joint = None
        for layer in range(3):
            a_hat = rollout.augmented(records.probs[layer], fusion, discard)
            joint = a_hat if joint is None else a_hat @ joint
        got = rollout.compute(records, head_fusion=fusion, discard_ratio=discard).token_maps
        expected = joint[:, 0, 1:].reshape(2, 1, 5, 5).expand(2, 3, 5, 5)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["rollout", "attention"])
def test_prompt_independent_maps_are_mapped_once_and_equal(models, method):  # noqa: F811
    one = clipviz.explain(models["clipviz"], photo(4), MANY[:1], method=method)
    many = clipviz.explain(models["clipviz"], photo(4), MANY[:5], method=method)
    assert many.maps.shape[0] == 5
    for row in many.maps:
        np.testing.assert_array_equal(row, one.maps[0])


def test_recompute_takes_the_path_without_it_when_blocks_are_not_one_stream(models, monkeypatch):  # noqa: F811
    """A transformer that changes the stream between blocks (here x·1, a new tensor: the same
    values) cannot be recomputed block by block; explain() notices in the forward and takes the
    batched path on one graph, with the same maps."""
    model = models["clipviz"]
    blocks = list(model.visual.transformer.resblocks)

    def forward(x):
        for block in blocks:
            x = block(x) * 1.0
        return x

    expected = general(monkeypatch, model, photo(3), MANY[:3], method="relevance", start_layer=0)
    taken = []
    real = pipeline._run_method
    monkeypatch.setattr(pipeline, "_run_method", lambda *a, **k: taken.append(k.get("recompute", True)) or real(*a, **k))
    monkeypatch.setattr(model.visual.transformer, "forward", forward)
    fast = clipviz.explain(model, photo(3), MANY[:3], method="relevance", start_layer=0)
    assert taken == [True, False]
    assert_same(fast, expected)


def test_recompute_builds_no_graph_in_the_forward(models):  # noqa: F811
    """With recompute the image forward saves nothing for backward before the head; the general
    path's forward saves every recorded block's activations (counted with saved_tensors_hooks)."""
    from clipviz.adapters import adapt
    from clipviz.adapters.vit import ViTRecorder
    from clipviz.methods import relevance
    adapter = adapt(models["clipviz"])
    needs = relevance.needs(adapter, start_layer=0, text=False)
    pixels = torch.randn(1, 3, 80, 80)

    weights = {p.data_ptr() for p in adapter.model.parameters()}

    def saved_bytes(recompute):
        sizes = []

        def pack(tensor):
            if tensor.data_ptr() not in weights:  # activations only
                sizes.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad(), \
                ViTRecorder(adapter.image_encoder, needs, recompute=recompute):
            adapter.encode_image(pixels)
        return sum(sizes)

    block_probs = 4 * 2 * 26 * 26  # one block's [B, H, N, N] in fp32 (2 heads, 1 + 5·5 tokens)
    assert saved_bytes(recompute=False) > 3 * block_probs
    assert saved_bytes(recompute=True) < block_probs  # the head only (ln_post, proj on the CLS token)


@pytest.mark.parametrize("method", ["rollout", "attention"])
def test_prompt_independent_methods_run_the_image_once(models, method):  # noqa: F811
    """Rollout and attention do not depend on the prompt: one image forward (each block once) per
    batch of images, whether 1 or 16 prompts."""
    model = models["clipviz"]
    calls = []
    handles = [block.register_forward_hook(lambda *a: calls.append(1)) for block in find_blocks(model.visual)]
    try:
        for prompts in (FEW, MANY):
            calls.clear()
            clipviz.explain(model, [photo(0), photo(1)], prompts, method=method)
            assert len(calls) == len(handles)
    finally:
        for handle in handles:
            handle.remove()


def test_text_is_encoded_once_per_batch_of_images(models, monkeypatch):  # noqa: F811
    """Text-token relevance depends on the image (∂S[b, p]/∂A_text goes through image b's embedding),
    so each image has its own text gradients; the prompts are still encoded once for the batch
    (P rows, not B·P), and each image's text relevance equals that image explained alone."""
    model = models["clipviz"]
    rows = []
    handle = model.transformer.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        together = clipviz.explain(model, [photo(0), photo(1)], MANY[:3], method="relevance")
    finally:
        handle.remove()
    assert rows == [3]
    for b in range(2):
        alone = clipviz.explain(model, photo(b), MANY[:3], method="relevance")
        np.testing.assert_allclose(together[b].text_relevance, alone.text_relevance, rtol=1e-5, atol=1e-7)
    assert not np.allclose(together[0].text_relevance, together[1].text_relevance)


def test_text_relevance_without_the_kept_jacobian_is_the_same(models, monkeypatch):  # noqa: F811
    """A list of at least E images (the embedding size, 64 here) keeps the prompts' text Jacobian;
    prompts whose Jacobian would be too large keep none (each batch runs the text tail with
    autograd), and one batch needs none: the text relevance is the same every way."""
    import clipviz.prompts as prompts
    model = models["clipviz"]
    images = [photo(i % 3) for i in range(64)]
    made = []
    real = prompts.eot_row_jacobian
    monkeypatch.setattr(prompts, "eot_row_jacobian", lambda *a, **k: made.append(1) or real(*a, **k))
    kept = clipviz.explain(model, images, MANY[:3], method="relevance", batch_size=32)
    assert made == [1]
    clipviz.explain(model, images[:63], MANY[:3], method="relevance", batch_size=32)
    assert made == [1]  # 63 < E: the tail per batch is cheaper
    one_batch = clipviz.explain(model, images[:3], MANY[:3], method="relevance")
    monkeypatch.setattr(prompts, "JACOBIAN_BYTES", 0)
    tail = clipviz.explain(model, images, MANY[:3], method="relevance", batch_size=32)
    assert made == [1]
    for a, b, c in zip(kept, tail, one_batch + one_batch + one_batch):
        for x, y, z in zip(a.text_relevance, b.text_relevance, c.text_relevance):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6 * np.abs(y).max())
            np.testing.assert_allclose(z, y, rtol=1e-5, atol=1e-6 * np.abs(y).max())
