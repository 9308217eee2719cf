"""Corrupt and numerically broken weights are refused. Bytes changed inside a checkpoint fail the
zip's CRC-32 (torch's reader never checks it) and the message names the member; weights holding
NaN or ±inf are refused when the model is built, naming the tensor; NaN or infinite scores in
explain() name the broken weight, or say the model overflows when every weight is finite.
"""

import copy
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clipviz
from clipviz.checkpoints import read_checkpoint
from clipviz.errors import ClipvizError
from clipviz.model import build_model
from conftest import TINY_VIT, make_model
from hostile import tally

CASES, _report = tally("corrupt and broken weights")
PHOTO = (np.arange(80 * 96 * 3) % 251).astype(np.uint8).reshape(80, 96, 3)


@pytest.fixture(scope="module")
def tiny():
    return make_model(TINY_VIT, seed=4)


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    """tiny's checkpoint: its bytes, each member's (name, data offset, size), its path."""
    path = tmp_path_factory.mktemp("saved") / "tiny.pt"
    torch.save(tiny.state_dict(), path)
    with zipfile.ZipFile(path) as archive:
        members = []
        for info in archive.infolist():
            with archive.open(info) as member:  # the data starts after the local header
                members.append((info.filename, member._fileobj.tell(), info.compress_size))
    return path.read_bytes(), members, path


def overwritten(data, offset, junk):
    damaged = bytearray(data)
    damaged[offset:offset + len(junk)] = junk
    return bytes(damaged)


def test_64_bytes_overwritten_in_the_middle_of_a_tensor_are_caught(saved, tmp_path):
    """The issue's case: before, this loaded without a word and explained with garbage."""
    data, members, _ = saved
    name, start, size = max(members, key=lambda m: m[2])  # the largest tensor
    path = tmp_path / "damaged.pt"
    path.write_bytes(overwritten(data, start + size // 2, bytes(64)))
    with CASES.case():
        loaded, original = torch.load(path), torch.load(saved[2])  # torch itself reads it silently
        assert any(not torch.equal(loaded[k], original[k]) for k in loaded)
        with pytest.raises(ClipvizError) as info:
            read_checkpoint(path)
        assert f"member {name} fails its CRC-32 check" in str(info.value)
        with pytest.raises(ClipvizError, match="CRC-32"):
            clipviz.load(str(path), device="cpu")


@pytest.mark.parametrize("member_index", range(7))
def test_one_flipped_bit_in_any_member_is_caught(saved, tmp_path, member_index):
    data, members, _ = saved
    name, start, size = sorted(members, key=lambda m: m[1])[member_index * len(members) // 7]
    path = tmp_path / "flipped.pt"
    damaged = bytearray(data)
    damaged[start + size // 2] ^= 0x10
    path.write_bytes(bytes(damaged))
    with CASES.case():
        with pytest.raises(ClipvizError, match=f"member {name} fails its CRC-32"):
            read_checkpoint(path)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1, exclude_max=True), junk=st.binary(min_size=1, max_size=64))
def test_any_overwrite_is_refused_or_changes_nothing(where, junk, saved, tiny, tmp_path):
    """Anywhere in the file (headers, padding, pickle, tensors): a ClipvizError, or the same weights
    (torch pads data with bytes no check covers, and junk may equal what it replaces)."""
    data, _, _ = saved
    path = tmp_path / "junk.pt"
    path.write_bytes(overwritten(data, int(where * len(data)), junk))
    with CASES.case():
        try:
            state = read_checkpoint(path)
        except ClipvizError:
            return
        expected = tiny.state_dict()
        assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


@pytest.mark.parametrize("value, kind", [(float("nan"), "NaN"), (float("inf"), "inf"), (-float("inf"), "inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tiny, tmp_path, value, kind):
    name = "visual.transformer.resblocks.1.attn.in_proj_weight"
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    state[name][3, 5] = value
    with CASES.case():
        with pytest.raises(ClipvizError) as info:
            build_model(state)
        assert f"tensor {name} (384, 128) holds 1 {kind} values" in str(info.value)
    torch.save(state, tmp_path / "broken.pt")
    with CASES.case():
        with pytest.raises(ClipvizError, match=f"tensor {name} "):
            clipviz.load(str(tmp_path / "broken.pt"), device="cpu")


def test_weights_that_overflow_in_the_requested_dtype_are_refused(tiny):
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    state["ln_final.weight"][0] = 1e6  # fine in float32, inf in float16 (max 65504)
    with CASES.case():
        assert build_model(state).ln_final.weight[0] == 1e6
        with pytest.raises(ClipvizError, match=r"tensor ln_final.weight \(64,\) holds 1 inf values"):
            build_model(state, dtype=torch.float16)


def test_nan_scores_name_the_weight_that_broke_after_loading(tiny):
    model = copy.deepcopy(tiny)
    with torch.no_grad():
        model.visual.proj[0, 0] = float("nan")
    with CASES.case():
        with pytest.raises(ClipvizError, match=r"the model is numerically broken: tensor visual.proj \(128, 64\)"):
            clipviz.explain(model, PHOTO, ["a dog", "a cat"], method="rollout")


def test_scores_that_overflow_from_finite_weights_say_so(tiny):
    model = copy.deepcopy(tiny)
    with torch.no_grad():
        model.visual.proj.fill_(3e38)  # every weight finite (float32 max 3.4e38); their sums overflow
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with CASES.case():
        with pytest.raises(ClipvizError, match="is NaN or infinite although its weights are finite"):
            clipviz.explain(model, PHOTO, ["a dog", "a cat"], method="relevance")


def test_finite_models_explain_as_before(tiny):
    """The checks change nothing for a sound model: same scores as a plain forward pass."""
    with CASES.case():
        exp = clipviz.explain(tiny, PHOTO, ["a dog", "a cat"], method="rollout")
        pixels, _ = clipviz.preprocess.preprocess_image(PHOTO, 64)
        with torch.no_grad():
            image = torch.nn.functional.normalize(tiny.encode_image(pixels[None]), dim=-1)
            text = torch.nn.functional.normalize(tiny.encode_text(clipviz.tokenize(["a dog", "a cat"])), dim=-1)
        np.testing.assert_allclose(exp.scores, (image @ text.T)[0].numpy(), rtol=1e-5, atol=1e-6)
