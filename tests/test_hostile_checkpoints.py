"""Hostile checkpoints: damaged cache files, pickles and TorchScript archives that carry code,
state dicts that do not fit. Every case ends in a working model equal to the original weights or
in a ClipvizError that says what is wrong; code inside a file never runs (each payload writes a
marker file, which must not exist afterwards, and is shown to write it when loaded unsafely).
"""

import hashlib
import os
import pickle
import subprocess
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import clipviz
from clipviz import hub
from clipviz.errors import ClipvizError
from conftest import TINY_VIT, make_model
from hostile import tally
from test_downloads import LocalServer, send_file
from test_hub import CarriesCode, save_pickle

CASES, _report = tally("checkpoints")
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]


@pytest.fixture(scope="module")
def small_clip():
    """tiny_vit's shapes with a 500-word vocabulary: a complete CLIP checkpoint of ~3 MB."""
    return make_model({**TINY_VIT, "vocab_size": 500}, seed=5)


def pixels(size=64):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def same_model(model, original):
    with torch.no_grad():
        return torch.equal(model.encode_image(pixels()), original.encode_image(pixels()))


# ----------------------------------------------------------------------------- damaged cache

@pytest.fixture(scope="module")
def official(small_clip, tmp_path_factory):
    """A local server holding small_clip's checkpoint under an OpenAI-style URL, and its bytes."""
    checkpoint = tmp_path_factory.mktemp("official") / "ViT-B-32.pt"
    torch.save(small_clip.state_dict(), checkpoint)
    data = checkpoint.read_bytes()
    server = LocalServer()
    yield server, data, hashlib.sha256(data).hexdigest()
    server.close()


def registered_as_official(monkeypatch, server, data, digest, body=None):
    """Make "ViT-B/32" point at the local server, which sends ``body`` (default: the right bytes)."""
    path = f"/clip/models/{digest}/ViT-B-32.pt"
    server.routes[path] = send_file(data if body is None else body)
    monkeypatch.setitem(hub._MODELS, "ViT-B/32", hub.ModelEntry("ViT-B/32", server.url(path), digest, None, "test"))
    return path


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_bit_flip_in_cached_official_model_is_caught_and_downloaded_again(where, bit, official, small_clip, monkeypatch):
    server, data, digest = official
    with tempfile.TemporaryDirectory() as cache, CASES.case():
        monkeypatch.setenv("CLIPVIZ_CACHE", cache)
        path = registered_as_official(monkeypatch, server, data, digest)
        clipviz.load("ViT-B/32", device="cpu")
        cached = Path(cache) / "ViT-B-32.pt"
        damaged = bytearray(cached.read_bytes())
        damaged[int(where * len(damaged))] ^= 1 << bit
        cached.write_bytes(damaged)
        server.requests.clear()

        with pytest.warns(UserWarning, match="SHA256 is not"):
            model, _ = clipviz.load("ViT-B/32", device="cpu")

        assert server.requests == [path]  # exactly one clean re-download
        assert cached.read_bytes() == data and os.listdir(cache) == ["ViT-B-32.pt"]
        assert same_model(model, small_clip)


def test_damaged_transfer_never_reaches_the_cache(official, small_clip, monkeypatch, tmp_path):
    server, data, digest = official
    monkeypatch.setenv("CLIPVIZ_CACHE", str(tmp_path))
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0x04
    with CASES.case():
        registered_as_official(monkeypatch, server, data, digest, body=bytes(flipped))
        with pytest.raises(ClipvizError, match=f"not {digest}; the server sent a different or damaged file"):
            clipviz.load("ViT-B/32", device="cpu")
        assert os.listdir(tmp_path) == []  # nothing half-written, nothing wrong kept
    with CASES.case():  # a damaged cache file and a server that fails: error, and the bad file is never used
        cached = tmp_path / "ViT-B-32.pt"
        cached.write_bytes(bytes(flipped))
        path = registered_as_official(monkeypatch, server, data, digest)
        server.routes[path] = lambda handler: handler.send_error(500)
        with pytest.warns(UserWarning, match="SHA256 is not"), pytest.raises(ClipvizError, match="HTTP 500"):
            clipviz.load("ViT-B/32", device="cpu")
        assert cached.read_bytes() == bytes(flipped) and os.listdir(tmp_path) == ["ViT-B-32.pt"]
        registered_as_official(monkeypatch, server, data, digest)  # the server recovers
        with pytest.warns(UserWarning, match="SHA256 is not"):
            model, _ = clipviz.load("ViT-B/32", device="cpu")
        assert cached.read_bytes() == data and same_model(model, small_clip)


# ----------------------------------------------------------------------------- pickles that carry code

def payloads(marker):
    """name -> (object whose unpickling writes ``marker``, the names the refusal may give it:
    pickle protocol 2, which torch.save uses, writes Python 2 names such as __builtin__.exec)."""
    touch = f"open({str(marker)!r}, 'w').close()"
    system = os.system.__module__ + ".system"  # posix.system
    return {
        "os.system": (CarriesCode(os.system, f"touch '{marker}'"), [system]),
        "builtins.exec": (CarriesCode(exec, touch), ["builtins.exec", "__builtin__.exec"]),
        "builtins.eval": (CarriesCode(eval, touch), ["builtins.eval", "__builtin__.eval"]),
        "subprocess.check_call": (CarriesCode(subprocess.check_call, ["touch", str(marker)]),
                                  ["subprocess.check_call", "commands.check_call"]),
        "nested deep in a dict": (
            {"meta": {"history": [{"step": 3, "hook": CarriesCode(os.system, f"touch '{marker}'")}]}}, [system]),
    }


def getattr_chain_pickle(marker):
    """Protocol-0 bytes, written by hand: getattr(__import__('os'), 'system')('touch marker')."""
    return (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'touch "
            + str(marker).encode() + b"'\ntR.")


def torchscript_lookalike(state, path):
    """A torch zip with a code/ entry, so clipviz reads it as TorchScript, whose data.pkl carries code."""
    torch.save(state, path)
    with zipfile.ZipFile(path, "a") as archive:
        root = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{root}/code/__torch__.py", "class Nothing(Module):\n  pass\n")


PAYLOADS = ["os.system", "builtins.exec", "builtins.eval", "subprocess.check_call", "nested deep in a dict"]
FORMATS = ["torch zip", "torch legacy", "plain pickle", "TorchScript look-alike"]


@pytest.mark.parametrize("how", FORMATS)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_pickle_carrying_code_is_refused_and_never_runs(tmp_path, payload, how, small_clip):
    marker = tmp_path / "pwned"
    evil, names = payloads(marker)[payload]
    state = {**small_clip.state_dict(), "extra": evil}
    path = tmp_path / "evil.pt"
    if how == "TorchScript look-alike":
        torchscript_lookalike(state, path)
    else:
        save_pickle({"state_dict": state}, path, how)
    with CASES.case():
        for attempt in (hub.read_checkpoint, lambda p: clipviz.load(p, device="cpu")):
            with pytest.raises(ClipvizError, match="refusing to unpickle code") as error:
                attempt(path)
            message = str(error.value)
            assert str(path) in message and any(name in message for name in names), message
        assert not marker.exists()
    if how == "plain pickle":  # not vacuous: loading it the unsafe way does run the payload
        pickle.loads(path.read_bytes())
        assert marker.exists()


def test_hand_written_getattr_chain_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "chain.pt"
    path.write_bytes(getattr_chain_pickle(marker))
    with CASES.case():
        with pytest.raises(ClipvizError, match="refusing to unpickle code.*builtins.getattr") as error:
            clipviz.load(path, device="cpu")
        assert "builtins.__import__" in str(error.value)
        assert not marker.exists()
    pickle.loads(path.read_bytes())
    assert marker.exists()


# ----------------------------------------------------------------------------- TorchScript

class Holder(nn.Module):
    """A bare container: gives the trap's parameters their dotted names."""


class Trap(nn.Module):
    """Holds a CLIP's weights under their own names; its forward writes ``marker`` and raises."""

    def __init__(self, state_dict, marker: str):
        super().__init__()
        self.marker = marker
        for name, tensor in state_dict.items():
            owner = self
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, Holder())
                owner = getattr(owner, part)
            owner.register_parameter(leaf, nn.Parameter(tensor.clone(), requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        written = torch.from_file(self.marker, True, 4, dtype=torch.uint8)  # TorchScript can write files
        written.fill_(1)
        if int(written.sum()) == 4:
            raise RuntimeError("the archive's forward ran")
        return x


class SetStateTrap(nn.Module):
    """Writes ``marker`` from __setstate__, which torch.jit.load runs while loading."""

    def __init__(self, weight, marker: str):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self):
        return (self.weight, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]):
        written = torch.from_file(state[1], True, 4, dtype=torch.uint8)
        written.fill_(1)
        self.weight = state[0] * (int(written.sum()) - 3)  # used, so the write is not optimised away
        self.marker = state[1]
        self.training = state[2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_torchscript_archive_is_read_for_its_weights_without_running_forward(tmp_path, small_clip, dtype):
    marker = tmp_path / "forward-ran"
    weights = {name: value.to(dtype) for name, value in small_clip.state_dict().items()}
    path = tmp_path / "trap.pt"
    torch.jit.save(torch.jit.script(Trap(weights, str(marker))), str(path))
    with CASES.case():
        model, preprocess = clipviz.load(path, device="cpu")
        assert not marker.exists()
        assert preprocess.size == 64 and {p.dtype for p in model.parameters()} == {torch.float32}
        for name, value in model.state_dict().items():
            assert torch.equal(value, weights[name].float()), name
    archive = torch.jit.load(str(path))  # not vacuous: the archive's forward does write the file
    with pytest.raises(Exception, match="forward ran"):
        archive(pixels())
    assert marker.exists()


def test_traced_real_clip_in_fp16_loads_equal(tmp_path, small_clip):
    """OpenAI's archives are traced fp16 CLIPs: same here (encode_image traced, weights halved)."""
    traced = torch.jit.trace_module(small_clip, {"encode_image": pixels()}, check_trace=False)
    traced.half()  # (a half CLIP cannot be traced on CPU; the archive's code never runs anyway)
    path = tmp_path / "traced.pt"
    torch.jit.save(traced, str(path))
    with CASES.case():
        model, _ = clipviz.load(path, device="cpu")
        for name, value in small_clip.state_dict().items():
            assert torch.equal(model.state_dict()[name], value.half().float()), name


def test_torchscript_setstate_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "setstate-ran"
    path = tmp_path / "setstate.pt"
    torch.jit.save(torch.jit.script(SetStateTrap(torch.ones(3), str(marker))), str(path))
    with CASES.case():
        with pytest.raises(ClipvizError, match="restores itself with its own code") as error:
            clipviz.load(path, device="cpu")
        assert str(path) in str(error.value)
        assert not marker.exists()
    torch.jit.load(str(path))  # not vacuous: torch.jit.load runs __setstate__, which writes the file
    assert marker.exists()


# ----------------------------------------------------------------------------- state dicts that do not fit

def mismatched(state, drop=(), add=(), rename=()):
    state = {k: v for k, v in state.items() if k not in drop}
    state.update({name: torch.zeros(3) for name in add})
    for old, new in rename:
        state[new] = state.pop(old)
    return state


MISMATCHES = {
    "one key missing": dict(drop=["visual.ln_post.bias"]),
    "five keys missing": dict(drop=["visual.class_embedding", "logit_scale", "transformer.resblocks.1.mlp.c_fc.bias",
                                    "visual.transformer.resblocks.0.ln_1.weight", "visual.ln_post.weight"]),
    "two unexpected keys": dict(add=["visual.extra_head.weight", "temperature"]),
    "a renamed key": dict(rename=[("visual.class_embedding", "visual.cls_token")]),
}


@pytest.mark.parametrize("name", sorted(MISMATCHES))
def test_state_dict_mismatch_names_the_first_keys(tmp_path, small_clip, name):
    change = MISMATCHES[name]
    original = small_clip.state_dict()
    state = mismatched(original, **change)
    path = tmp_path / "mismatch.pt"
    torch.save(state, path)
    missing = [k for k in original if k not in state]  # in the model's own order
    unexpected = [k for k in state if k not in original]
    with CASES.case():
        with pytest.raises(ClipvizError, match="does not match the CLIP architecture") as error:
            clipviz.load(path, device="cpu")
        message = str(error.value)
        if missing:
            assert f"missing {len(missing)} keys (first: {', '.join(missing[:3])})" in message
        if unexpected:  # (listed in module order, not file order)
            assert f"{len(unexpected)} unexpected keys (first: " in message
            assert all(name in message for name in unexpected)


SHAPE_PROBLEMS = {  # what is wrong -> (key, new value or None to drop it, words the message must hold)
    "width read from ln_final is 3": ("ln_final.weight", torch.ones(3), "do not fit the CLIP architecture"),
    "ln_post of the wrong width": ("visual.ln_post.weight", torch.ones(5), "size mismatch for visual.ln_post.weight"),
    "scalar text projection": ("text_projection", torch.tensor(1.0), "do not fit|not an OpenAI-format"),
    "no visual.conv1.weight": ("visual.conv1.weight", None, "no 'visual.conv1.weight' entry"),
    "no ln_final.weight": ("ln_final.weight", None, "no 'ln_final.weight' entry"),
    "no token_embedding.weight": ("token_embedding.weight", None, "no 'token_embedding.weight' entry"),
}


@pytest.mark.parametrize("name", sorted(SHAPE_PROBLEMS))
def test_wrong_shape_or_missing_shape_key_is_named(tmp_path, small_clip, name):
    key, value, words = SHAPE_PROBLEMS[name]
    state = dict(small_clip.state_dict())
    if value is None:
        del state[key]
    else:
        state[key] = value
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with CASES.case(), pytest.raises(ClipvizError, match=words):
        clipviz.load(path, device="cpu")
