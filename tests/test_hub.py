"""clipviz.hub: registry, cache folder, checkpoint readers and ``load`` (downloads: test_downloads)."""

import copy
import hashlib
import os
import pathlib
import pickle
import random
import re
import sys
import types
import zipfile

import pytest
import torch
from torch import nn

from clipviz import hub
from clipviz.errors import ClipvizError
from conftest import random_ids

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

OFFICIAL = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64",
            "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so registering in a test leaks nowhere."""
    monkeypatch.setattr(hub, "_MODELS", dict(hub._MODELS))
    return hub._MODELS


# ----------------------------------------------------------------------------- registry

def test_registry_holds_the_nine_openai_models_with_their_digests():
    openai = [n for n in hub.available_models()
              if (hub.model_info(n).url or "").startswith("https://openaipublic.azureedge.net/")]
    assert openai == OFFICIAL == hub.available_models()[:9]
    for name in OFFICIAL:
        entry = hub.model_info(name)
        digest = entry.url.split("/")[-2]
        assert re.fullmatch(r"[0-9a-f]{64}", digest), name
        assert entry.sha256 == digest
        file_name = name.replace("/", "-").replace("@", "-")
        assert entry.url == f"https://openaipublic.azureedge.net/clip/models/{digest}/{file_name}.pt"
    # one digest checked against openai/CLIP's clip/clip.py, character for character
    assert hub.model_info("ViT-B/32").sha256 == \
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
    assert len({hub.model_info(n).sha256 for n in OFFICIAL}) == 9


def test_register_model_adds_a_name_and_checks_its_arguments(registry):
    digest = hashlib.sha256(b"weights").hexdigest()
    entry = hub.register_model("bundled-demo", path="bundled-demo.pt", sha256=digest.upper(),
                               description="bundled")
    assert hub.available_models()[-1] == "bundled-demo"
    assert entry.path == hub.WEIGHTS_DIR / "bundled-demo.pt" and entry.sha256 == digest
    assert hub.register_model("bundled-demo", path="bundled-demo.pt", sha256=digest,
                              description="bundled") == entry  # same entry again: harmless

    with pytest.raises(ClipvizError, match="already registered"):
        hub.register_model("bundled-demo", path="other.pt")
    with pytest.raises(ClipvizError, match="no SHA256 path component"):
        hub.register_model("mine", url="https://example.com/weights/mine.pt")
    with pytest.raises(ClipvizError, match="not a SHA256 digest"):
        hub.register_model("mine", url="https://example.com/mine.pt", sha256="abc")
    with pytest.raises(ClipvizError, match="url to download from, a path or mirrors"):
        hub.register_model("mine")
    with pytest.raises(ClipvizError, match="must not|does not start"):
        hub.register_model("hf:mine", path="x.pt")
    assert "mine" not in hub.available_models()


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CLIPVIZ_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "explicit"
    monkeypatch.setenv("CLIPVIZ_CACHE", "")  # empty counts as unset
    assert hub.cache_dir() == tmp_path / "xdg" / "clipviz"
    monkeypatch.delenv("CLIPVIZ_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert hub.cache_dir() == tmp_path / "home" / ".cache" / "clipviz"
    monkeypatch.setenv("CLIPVIZ_CACHE", "~/models")
    assert hub.cache_dir() == tmp_path / "home" / "models"


@pytest.mark.parametrize("typo, suggestion", [("ViT-B-32", "ViT-B/32"), ("vit-l/14@336", "ViT-L/14@336px"),
                                              ("rn50x4", "RN50x4")])
def test_unknown_name_lists_models_and_suggests_close_ones(tmp_path, monkeypatch, typo, suggestion):
    monkeypatch.chdir(tmp_path)  # so the name cannot be an existing relative path
    with pytest.raises(ClipvizError) as error:
        hub.load(typo, device="cpu")
    message = str(error.value)
    hint, listing = message.split("Available models")
    assert "Did you mean" in hint and suggestion in hint
    assert all(name in listing for name in OFFICIAL)


def test_jit_true_is_refused_with_the_reason():
    with pytest.raises(ClipvizError, match="builds its own model from the checkpoint"):
        hub.load("ViT-B/32", device="cpu", jit=True)


def test_adapter_specs_go_to_clipviz_adapters(monkeypatch):
    import clipviz.adapters
    calls = []
    monkeypatch.setattr(clipviz.adapters, "load_spec", lambda spec, device: calls.append((spec, device)) or "ok")
    assert hub.load("openclip:ViT-B-32/laion2b_s34b_b79k", device="cpu") == "ok"
    assert hub.load("hf:openai/clip-vit-base-patch32", device="cpu") == "ok"
    assert [spec for spec, _ in calls] == ["openclip:ViT-B-32/laion2b_s34b_b79k",
                                           "hf:openai/clip-vit-base-patch32"]
    assert all(torch.device(device) == torch.device("cpu") for _, device in calls)


def test_unknown_adapter_spec_is_a_clear_error():
    from clipviz.adapters import load_spec
    with pytest.raises(ClipvizError, match="unknown model spec"):
        load_spec("timm:vit", "cpu")


def test_unusable_device_is_a_clipviz_error(tmp_path):
    with pytest.raises(ClipvizError, match="not a torch device"):
        hub.load("ViT-B/32", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ClipvizError, match="no CUDA GPU"):
            hub.load("ViT-B/32", device="cuda")


# ----------------------------------------------------------------------------- load() wiring

class TinyClip(nn.Module):
    """Stands in for CLIP where only the load pipeline is under test: has ``visual.input_resolution``."""

    def __init__(self):
        super().__init__()
        self.visual = nn.Linear(6, 4)
        self.visual.input_resolution = 32
        self.text = nn.Linear(5, 4)
        self.logit_scale = nn.Parameter(torch.tensor(2.5))
        self.register_buffer("counts", torch.arange(4.0))

    def forward(self, image, text):
        return self.logit_scale * (self.visual(image) + self.counts) @ self.text(text).T


@pytest.fixture
def tiny_modules(monkeypatch):
    """Fake clipviz.model / clipviz.preprocess: build_model loads TinyClip strictly, keeping the
    checkpoint's dtype (as OpenAI's build_model keeps fp16); Preprocess records its size."""
    built = []

    def build_model(state_dict, activation="quick_gelu"):
        model = TinyClip().to(next(iter(state_dict.values())).dtype)
        model.load_state_dict(state_dict, strict=True)
        built.append(model)
        return model

    monkeypatch.setitem(sys.modules, "clipviz.model", types.SimpleNamespace(build_model=build_model))
    monkeypatch.setitem(sys.modules, "clipviz.preprocess",
                        types.SimpleNamespace(Preprocess=lambda size: ("Preprocess", size)))
    return built


def tiny_inputs():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(3, 6, generator=generator), torch.randn(2, 5, generator=generator)


def test_torchscript_archive_is_read_as_weights(tmp_path, tiny_modules):
    torch.manual_seed(0)
    original = TinyClip().eval()
    path = tmp_path / "tiny-jit.pt"
    torch.jit.save(torch.jit.trace(original, tiny_inputs()), str(path))
    assert any(n.endswith("/constants.pkl") or "/code/" in n for n in zipfile.ZipFile(path).namelist())

    state_dict = hub.read_checkpoint(path)
    assert state_dict.keys() == original.state_dict().keys()
    assert all(torch.equal(state_dict[k], v) for k, v in original.state_dict().items())

    model, preprocess = hub.load(path, device="cpu")
    assert isinstance(model, TinyClip) and not isinstance(model, torch.jit.ScriptModule)
    assert not model.training and preprocess == ("Preprocess", 32)
    with torch.no_grad():
        assert torch.equal(model(*tiny_inputs()), original(*tiny_inputs()))


def test_fp16_checkpoint_becomes_fp32_on_cpu(tmp_path, tiny_modules):
    half = TinyClip().half()
    torch.save(half.state_dict(), tmp_path / "half.pt")
    assert hub.read_checkpoint(tmp_path / "half.pt")["visual.weight"].dtype == torch.float16

    model, _ = hub.load(str(tmp_path / "half.pt"), device="cpu")

    assert tiny_modules[0].visual.weight.dtype == torch.float32  # load converted what was built
    for name, value in model.state_dict().items():
        assert value.dtype == torch.float32, name
        assert torch.equal(value, half.state_dict()[name].float()), name


def test_bundled_path_entry_is_used_and_checked(tmp_path, registry, tiny_modules):
    path = tmp_path / "bundled.pt"
    torch.save(TinyClip().state_dict(), path)
    hub.register_model("tiny-bundled", path=path, sha256=hub.file_sha256(path))
    model, _ = hub.load("tiny-bundled", device="cpu")
    assert isinstance(model, TinyClip)

    data = bytearray(path.read_bytes())
    data[-30] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ClipvizError, match="damaged .*reinstall clipviz"):
        hub.load("tiny-bundled", device="cpu")
    path.unlink()
    with pytest.raises(ClipvizError, match="missing; reinstall clipviz"):
        hub.load("tiny-bundled", device="cpu")


# ----------------------------------------------------------------------------- real CLIP

@pytest.mark.parametrize("fixture", ["tiny_vit", "small_resnet"])
def test_official_style_torchscript_archive_loads_into_our_clip(tmp_path, request, fixture):
    original = request.getfixturevalue(fixture)
    size = original.visual.input_resolution
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    ids = random_ids(2, seed=1)
    archived = copy.deepcopy(original)
    # OpenAI's archives also carry these three as entries of the state dict
    for name, value in [("input_resolution", size), ("context_length", 77), ("vocab_size", 49408)]:
        archived.__dict__.pop(name, None)  # a plain attribute on our CLIP, a tensor in theirs
        archived.register_buffer(name, torch.tensor(value))
    path = tmp_path / "clip-jit.pt"
    # the archive keeps every weight; tracing one method is enough (its code never runs in load)
    traced = torch.jit.trace_module(archived, {"encode_image": pixels}, check_trace=False)
    torch.jit.save(traced, str(path))

    model, preprocess = hub.load(path, device="cpu")

    from clipviz.model import CLIP
    from clipviz.preprocess import Preprocess
    assert type(model) is CLIP and not model.training
    assert isinstance(preprocess, Preprocess) and preprocess.size == size
    with torch.no_grad():
        assert torch.equal(model.encode_image(pixels), original.encode_image(pixels))
        assert torch.equal(model.encode_text(ids), original.encode_text(ids))


def test_real_fp16_state_dict_runs_in_fp32_on_cpu(tmp_path, tiny_vit):
    torch.save({k: v.half() for k, v in tiny_vit.state_dict().items()}, tmp_path / "half.pt")
    model, _ = hub.load(tmp_path / "half.pt", device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert torch.equal(model.visual.proj, tiny_vit.visual.proj.half().float())


def test_state_dict_that_is_not_clip_is_a_clipviz_error(tmp_path):
    torch.save({"weight": torch.ones(3)}, tmp_path / "other.pt")
    with pytest.raises(ClipvizError):
        hub.load(tmp_path / "other.pt", device="cpu")


# ----------------------------------------------------------------------------- readers

class CarriesCode:
    """Unpickling this runs ``function(*args)``: the shape of a malicious checkpoint."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def save_pickle(obj, path, how):
    if how == "torch zip":
        torch.save(obj, path)
    elif how == "torch legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


@pytest.mark.parametrize("how", ["torch zip", "torch legacy", "plain pickle"])
@pytest.mark.parametrize("payload", ["Path.touch", "os.system"])
def test_pickle_that_carries_code_is_refused_and_never_runs(tmp_path, how, payload):
    marker = tmp_path / "pwned"
    if payload == "Path.touch":
        evil = CarriesCode(pathlib.Path.touch, marker)
    else:
        evil = CarriesCode(os.system, f"touch {marker}")
    path = tmp_path / "evil.pt"
    save_pickle({"visual.proj": torch.ones(2), "extra": evil}, path, how)

    for attempt in (hub.read_checkpoint, lambda p: hub.load(p, device="cpu")):
        with pytest.raises(ClipvizError, match="refusing to unpickle code") as error:
            attempt(path)
        message = str(error.value)
        assert str(path) in message and "weights_only=False" in message
        assert ("pathlib" in message) if payload == "Path.touch" else ("system" in message)
    assert not marker.exists()
    # the file does run code when unpickled without weights_only: the test is not vacuous
    torch.load(path, weights_only=False) if how != "plain pickle" else pickle.loads(path.read_bytes())
    assert marker.exists()


def small_state_dict():
    generator = torch.Generator().manual_seed(0)
    return {"visual.proj": torch.randn(4, 3, generator=generator),
            "ln_final.weight": torch.randn(3, generator=generator).half(),
            "token_embedding.weight": torch.randn(5, 3, generator=generator)}


def assert_same(loaded, expected):
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": sd},
    lambda sd: {f"module.{k}": v for k, v in sd.items()},
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
], ids=["plain", "state_dict", "model", "module.", "state_dict+module."])
def test_wrapped_state_dicts_are_unwrapped(tmp_path, wrap):
    expected = small_state_dict()
    torch.save(wrap(expected), tmp_path / "ckpt.pth")
    assert_same(hub.read_checkpoint(tmp_path / "ckpt.pth"), expected)


def test_safetensors_round_trip(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    expected = small_state_dict()
    safetensors_torch.save_file(expected, str(tmp_path / "ckpt.safetensors"))
    assert_same(hub.read_checkpoint(tmp_path / "ckpt.safetensors"), expected)
    (tmp_path / "ckpt.safetensors").rename(tmp_path / "renamed.bin")  # found by its header too
    assert_same(hub.read_checkpoint(tmp_path / "renamed.bin"), expected)


def test_safetensors_without_the_package_names_the_extra(tmp_path, monkeypatch):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    safetensors_torch.save_file(small_state_dict(), str(tmp_path / "ckpt.safetensors"))
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ClipvizError, match=re.escape("pip install clipviz[safetensors]")):
        hub.read_checkpoint(tmp_path / "ckpt.safetensors")


def make_broken(tmp_path, kind):
    """A file (or folder) of the given kind of brokenness; returns its path."""
    path = tmp_path / f"{kind.replace(' ', '-')}.pt"
    if kind in ("truncated zip", "truncated legacy", "truncated torchscript", "truncated safetensors"):
        if kind == "truncated torchscript":
            torch.jit.save(torch.jit.trace(TinyClip(), tiny_inputs()), str(path))
        elif kind == "truncated safetensors":
            pytest.importorskip("safetensors.torch").save_file(small_state_dict(), str(path))
        else:
            torch.save(small_state_dict(), path, _use_new_zipfile_serialization=kind == "truncated zip")
        path.write_bytes(path.read_bytes()[:-200])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "folder":
        path.mkdir()
    elif kind == "list":
        torch.save([torch.ones(2)], path)
    elif kind == "empty dict":
        torch.save({}, path)
    elif kind == "non-tensor values":
        torch.save({"visual.proj": [1.0, 2.0]}, path)
    return path  # "missing": never created


BROKEN = ["truncated zip", "truncated legacy", "truncated torchscript", "truncated safetensors",
          "empty", "random bytes", "text", "folder", "missing", "list", "empty dict",
          "non-tensor values"]


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_checkpoints_raise_clipviz_error(tmp_path, kind):
    path = make_broken(tmp_path, kind)
    with pytest.raises(ClipvizError) as error:
        hub.read_checkpoint(path)
    assert str(path) in str(error.value)
    assert "refusing to unpickle" not in str(error.value)  # broken is not the same as malicious


def test_mirrors_are_the_repositories_open_clip_names():
    """Each official name's first mirror is the hf_hub repo open_clip's pretrained.py gives for the
    same OpenAI URL (read as text: importing open_clip needs torchvision)."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.skip("open_clip is not installed")
    source = (pathlib.Path(spec.submodule_search_locations[0]) / "pretrained.py").read_text()
    named = {(digest, file): repo for digest, file, repo in re.findall(
        r'url="https://openaipublic\.azureedge\.net/clip/models/([0-9a-f]{64})/([^"]+)",\s*'
        r'hf_hub="([^"]+)/"', source)}
    assert len(named) == 9
    for name in OFFICIAL:
        entry = hub.model_info(name)
        assert named[(entry.sha256, entry.url.split("/")[-1])] == entry.mirrors[0].repo_id, name
        assert entry.mirrors[0].filename == "open_clip_model.safetensors" and entry.architecture == name
