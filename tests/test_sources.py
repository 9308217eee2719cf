"""Where official weights come from (clipviz.sources), against tests/hubserver.FakeHub on
127.0.0.1, which plays OpenAI's dead download host (404) and the Hugging Face Hub for the real
huggingface_hub client.

Most tests register "tiny": the TINY_VIT architecture entered in OFFICIAL_CONFIGS, its OpenAI
URL on the fake host (404) and one Hub mirror. One test runs the real ViT-B/32 registry entry
(its mirrors, its pinned revision) with random weights of the real shapes. Every cache lives in
tmp_path: clipviz's (CLIPVIZ_CACHE), openai/clip's (under HOME) and the Hugging Face one.
"""

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

import clipviz
from clipviz import cli, hub
from clipviz import model as model_module
from clipviz.errors import ClipvizError
from clipviz.sources import Mirror, locate
from conftest import TINY_VIT, make_model, random_ids
from hubserver import COMMIT, FakeHub

REPO, FILE = "timm/tiny_clip.openai", "open_clip_model.safetensors"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def files_under(folder):
    """Every file below ``folder`` (records, partial downloads and client metadata included)."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def safetensors_bytes(model, folder, name="weights.safetensors"):
    path = Path(folder) / name
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path.read_bytes()


def outputs(model):
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.encode_image(pixels), model.encode_text(random_ids(3))


def assert_same_outputs(model, reference, tolerance=1e-6):
    for ours, theirs in zip(outputs(model), outputs(reference)):
        assert (ours - theirs).abs().max().item() <= tolerance


@pytest.fixture
def server():
    s = FakeHub()
    yield s
    s.close()


@pytest.fixture
def places(tmp_path, monkeypatch, server):
    """Empty caches, and the Hub client aimed at the fake server (its constants are read at import,
    so the environment variables are set for clipviz and the constants patched for the client)."""
    home, cache, hf_cache = tmp_path / "home", tmp_path / "cache", tmp_path / "hf"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CLIPVIZ_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    monkeypatch.setattr(hf_constants, "ENDPOINT", server.base)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        server.base + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    return SimpleNamespace(home=home, cache=cache, hf_cache=hf_cache, openai=home / ".cache" / "clip")


@pytest.fixture(scope="module")
def tiny():
    return make_model(TINY_VIT, seed=11)


@pytest.fixture(scope="module")
def archive(tiny, tmp_path_factory):
    """``tiny`` saved the way OpenAI published CLIP: a TorchScript archive (torch.jit.trace)."""
    path = tmp_path_factory.mktemp("openai") / "tiny.pt"
    example = (torch.randn(1, 3, 64, 64), random_ids(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values in forward
        torch.jit.save(torch.jit.trace(tiny, example, check_trace=False), str(path))
    return path


def register_tiny(monkeypatch, server, archive, mirrors=(Mirror(REPO, FILE),)):
    """"tiny" as an official name: OpenAI's archive digest pinned, its URL dead, ``mirrors``."""
    monkeypatch.setitem(model_module.OFFICIAL_CONFIGS, "tiny", TINY_VIT)
    digest = sha256(archive.read_bytes())
    entry = hub.ModelEntry("tiny", f"{server.base}/clip/models/{digest}/tiny.pt", digest, None, "test",
                           architecture="tiny", mirrors=tuple(mirrors))
    monkeypatch.setitem(hub._MODELS, "tiny", entry)
    return entry


# ----------------------------------------------------------------------------- the mirror

def test_fresh_cache_uses_the_mirror_shows_progress_verifies_and_equals_the_openai_archive(
        places, server, monkeypatch, archive, tiny, tmp_path, capfd):
    entry = register_tiny(monkeypatch, server, archive)
    data = safetensors_bytes(tiny, tmp_path)
    server.add(REPO, FILE, data)

    model, preprocess = clipviz.load("tiny", device="cpu")

    err = capfd.readouterr().err
    assert FILE in err and "100%" in err  # huggingface_hub's progress bar
    requests = [f"{method} {path}" for method, path in server.calls]
    dead, mirror = f"GET {entry.url[len(server.base):]}", f"GET /{REPO}/resolve/{COMMIT}/{FILE}"
    assert dead in requests and mirror in requests and requests.index(dead) < requests.index(mirror)
    kept = places.cache / "hf" / REPO / FILE
    assert kept.read_bytes() == data
    assert (kept.parent / f"{FILE}.sha256").read_text().strip() == sha256(data)  # what was verified
    assert not [p for p in files_under(places.cache) if p.endswith(".incomplete")]

    reference, _ = clipviz.load(archive, device="cpu")  # the same weights as OpenAI's archive format
    assert preprocess.size == 64
    assert_same_outputs(model, reference, 1e-6)

    server.calls.clear()
    again, _ = clipviz.load("tiny", device="cpu")
    assert server.calls == []  # the verified file in clipviz's cache, no network
    assert_same_outputs(again, reference, 1e-6)


def test_existing_openai_clip_cache_archive_is_used_without_network(places, server, monkeypatch,
                                                                    archive, tiny):
    register_tiny(monkeypatch, server, archive)
    places.openai.mkdir(parents=True)
    shutil.copy(archive, places.openai / "tiny.pt")

    model, _ = clipviz.load("tiny", device="cpu")

    assert server.calls == []
    assert files_under(places.cache) == []  # read in place, not copied
    assert_same_outputs(model, tiny, 1e-6)

    fetched = hub.fetch("tiny", progress=False)  # `clipviz download`: into clipviz's cache
    assert fetched.path == places.cache / "tiny.pt" and fetched.source.label == "openai/clip cache"
    assert fetched.path.read_bytes() == archive.read_bytes() and server.calls == []
    assert locate(hub.model_info("tiny")).label == "clipviz cache"
    fetched.path.unlink()

    damaged = bytearray(archive.read_bytes())
    damaged[len(damaged) // 2] ^= 1
    (places.openai / "tiny.pt").write_bytes(bytes(damaged))
    with pytest.raises(ClipvizError) as error:
        clipviz.load("tiny", device="cpu")
    assert f"openai/clip cache {places.openai / 'tiny.pt'}: its SHA256 is not" in str(error.value)
    assert (places.openai / "tiny.pt").read_bytes() == bytes(damaged)  # another tool's file: left alone


def test_hugging_face_cache_is_used_offline(places, server, monkeypatch, archive, tiny, tmp_path):
    register_tiny(monkeypatch, server, archive)
    data = safetensors_bytes(tiny, tmp_path)
    server.add(REPO, FILE, data)
    import huggingface_hub

    cached = Path(huggingface_hub.hf_hub_download(REPO, FILE))  # as open_clip would have left it
    assert cached.resolve().name == sha256(data)  # the cache names blobs by the Hub's SHA256
    server.calls.clear()
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    model, _ = clipviz.load("tiny", device="cpu")

    assert server.calls == [] and files_under(places.cache) == []
    assert_same_outputs(model, tiny, 1e-6)

    assert locate(hub.model_info("tiny")).label == "Hugging Face cache"
    fetched = hub.fetch("tiny", progress=False)  # `clipviz download` copies it into clipviz's cache
    kept = places.cache / "hf" / REPO / FILE
    assert fetched.path == kept and kept.read_bytes() == data and server.calls == []
    assert (kept.parent / f"{FILE}.sha256").read_text().strip() == sha256(data)
    assert locate(hub.model_info("tiny")).label == "clipviz cache"


def test_corrupted_mirror_file_is_refused_and_nothing_is_left(places, server, monkeypatch, archive,
                                                              tiny, tmp_path):
    register_tiny(monkeypatch, server, archive)
    data = safetensors_bytes(tiny, tmp_path)
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x10
    server.add(REPO, FILE, bytes(flipped), declared_sha256=sha256(data))  # damaged on the way

    with pytest.raises(ClipvizError) as error:
        clipviz.load("tiny", device="cpu")

    message = str(error.value)
    assert f"Hugging Face Hub {server.base}/{REPO}/resolve/main/{FILE}: the received file has SHA256 " \
           f"{sha256(bytes(flipped))}, not {sha256(data)}" in message
    assert files_under(places.cache) == []


def test_wrong_architecture_is_refused_deleted_and_the_next_mirror_used(places, server, monkeypatch,
                                                                         archive, tiny, tmp_path):
    second = Mirror("openai/tiny-copy", "model.safetensors")
    register_tiny(monkeypatch, server, archive, mirrors=(Mirror(REPO, FILE), second))
    other = make_model({**TINY_VIT, "vision_width": 64}, seed=1)  # a CLIP, but not this one
    server.add(REPO, FILE, safetensors_bytes(other, tmp_path, "other.safetensors"))

    with pytest.raises(ClipvizError) as error:
        hub.fetch("tiny", progress=False)
    assert "holds another model than tiny: 44 weights of the wrong shape (first: visual.class_embedding " \
        "is [64], tiny has [128])" in str(error.value)
    assert files_under(places.cache) == []

    server.add(second.repo_id, second.filename, safetensors_bytes(tiny, tmp_path))
    model, _ = clipviz.load("tiny", device="cpu")
    assert_same_outputs(model, tiny, 1e-6)
    assert files_under(places.cache / "hf" / REPO) == []  # the wrong file never came back
    assert (places.cache / "hf" / second.repo_id / second.filename).is_file()


def test_real_vit_b32_registry_entry_through_its_pinned_mirror(places, server, monkeypatch, vit_b32,
                                                               tiny, tmp_path):
    entry = hub.model_info("ViT-B/32")
    monkeypatch.setitem(hub._MODELS, "ViT-B/32", dataclasses.replace(
        entry, url=f"{server.base}/clip/models/{entry.sha256}/ViT-B-32.pt"))
    timm, transformers = entry.mirrors
    assert (timm.repo_id, timm.filename, transformers.layout) == \
        ("timm/vit_base_patch32_clip_224.openai", FILE, "transformers")

    server.add(timm.repo_id, timm.filename, safetensors_bytes(tiny, tmp_path, "tiny.safetensors"))
    with pytest.raises(ClipvizError, match="holds another model than ViT-B/32"):
        hub.fetch("ViT-B/32", progress=False)
    assert files_under(places.cache) == []

    half = {k: v.half().contiguous() for k, v in vit_b32.state_dict().items()}  # as OpenAI ships them
    save_file(half, str(tmp_path / "b32.safetensors"))
    server.add(timm.repo_id, timm.filename, (tmp_path / "b32.safetensors").read_bytes())
    model, preprocess = clipviz.load("ViT-B/32", device="cpu")

    assert f"/{timm.repo_id}/resolve/{timm.revision}/{FILE}" in server.hub_paths()  # pinned revision
    assert preprocess.size == 224 and model.visual.patch_grid == 7
    assert model_module.model_config(model.state_dict()) == model_module.OFFICIAL_CONFIGS["ViT-B/32"]
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v.float()) for k, v in half.items())


# ----------------------------------------------------------------------------- all sources fail

def test_offline_gives_one_message_naming_every_source_and_the_manual_step(places, server, monkeypatch,
                                                                          archive, capsys):
    entry = register_tiny(monkeypatch, server, archive)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    with pytest.raises(ClipvizError) as error:
        clipviz.load("tiny", device="cpu")

    message = str(error.value)
    expected = [
        f"(1) clipviz cache {places.cache / 'tiny.pt'}: not there",
        f"(2) clipviz cache {places.cache / 'hf' / REPO / FILE}: not there",
        f"(3) openai/clip cache {places.openai / 'tiny.pt'}: not there",
        f"(4) Hugging Face cache {REPO}/{FILE}: not there",
        f"(5) URL {entry.url}: could not download {entry.url}: the server answered HTTP 404",
        f"(6) Hugging Face Hub {server.base}/{REPO}/resolve/main/{FILE}: offline (HF_HUB_OFFLINE is set)",
        f"By hand: download {server.base}/{REPO}/resolve/main/{FILE} and save it as "
        f"{places.cache / 'hf' / REPO / FILE} or put OpenAI's tiny.pt (SHA256 {entry.sha256}) in {places.cache}/",
    ]
    for part in expected:
        assert part in message
    assert files_under(places.cache) == []

    assert cli.main(["download", "tiny"]) == 2  # the CLI: that message on one line, exit 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert captured.err.startswith("clipviz: error: tiny: could not get the weights of 'tiny'")


def test_missing_huggingface_hub_says_what_to_install(places, server, monkeypatch, archive):
    register_tiny(monkeypatch, server, archive)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed

    with pytest.raises(ClipvizError) as error:
        clipviz.load("tiny", device="cpu")

    assert "Hugging Face Hub" in str(error.value)
    assert "needs the huggingface_hub package: pip install huggingface_hub" in str(error.value)


# ----------------------------------------------------------------------------- the CLI, real environment

def test_download_command_through_hf_endpoint_in_a_fresh_process(server, archive, tiny, tmp_path):
    """`clipviz download` in a subprocess that knows the server only from HF_ENDPOINT."""
    data = safetensors_bytes(tiny, tmp_path)
    server.add(REPO, FILE, data)
    digest = sha256(archive.read_bytes())
    script = textwrap.dedent(f"""
        import sys
        from clipviz import cli, hub, model
        from clipviz.sources import Mirror, locate
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from conftest import TINY_VIT
        model.OFFICIAL_CONFIGS["tiny"] = TINY_VIT
        hub.register_model("tiny", url="{server.base}/clip/models/{digest}/tiny.pt", architecture="tiny",
                           mirrors=[Mirror({REPO!r}, {FILE!r})])
        sys.exit(cli.main(["download", "tiny"]))
    """)
    env = dict(os.environ, HF_ENDPOINT=server.base, HF_HUB_CACHE=str(tmp_path / "hf"),
               CLIPVIZ_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                            timeout=300, cwd=Path(__file__).parents[1])

    assert result.returncode == 0, result.stderr
    kept = tmp_path / "cache" / "hf" / REPO / FILE
    assert result.stdout == f"tiny: {kept}  (from Hugging Face Hub)\n"
    assert FILE in result.stderr and "100%" in result.stderr  # progress bar
    assert kept.read_bytes() == data
