"""Shared fixtures: random-weight CLIP models of the real architectures, the shared data folder.

Under CI=true a test skipped because an optional package is missing (pytest.importorskip) fails
the run: CI must install every extra it claims to test. The skip count is printed at the end.
"""

import os
import re
from pathlib import Path

import pytest
import torch

from clipviz.model import CLIP, OFFICIAL_CONFIGS

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
VOCAB = Path(__file__).resolve().parents[1] / "clipviz" / "vocab" / "bpe_simple_vocab_16e6.txt.gz"  # the bundled copy
IMAGES = SHARED / "images"

# a ResNet CLIP small enough for fast tests, with every kind of block the official ones have
SMALL_RESNET = dict(embed_dim=256, image_resolution=96, vision_layers=(1, 2, 1, 1), vision_width=32,
                    vision_patch_size=None, context_length=77, vocab_size=49408,
                    transformer_width=128, transformer_heads=2, transformer_layers=2)
# a tiny ViT for tests that need many forward passes
TINY_VIT = dict(embed_dim=64, image_resolution=64, vision_layers=3, vision_width=128, vision_patch_size=16,
                context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=2)


def perturbed(model, seed=0, scale=0.02):
    """Adds noise to every parameter (official init leaves biases at zero, which hides bugs) and
    gives BatchNorm layers non-trivial running statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name != "logit_scale":
                param.add_(scale * torch.randn(param.shape, generator=generator))
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
    return model.eval()


def save_tiny_checkpoint(folder, seed):
    """folder/tiny.pt: a random TINY_VIT CLIP (perturbed, ``seed``), with an open_clip_config.json
    beside it saying it is a QuickGELU model, so loads do not warn that they assume it. → the path."""
    import json
    torch.manual_seed(seed)
    torch.save(perturbed(CLIP(**TINY_VIT), seed=seed).state_dict(), Path(folder) / "tiny.pt")
    (Path(folder) / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
    return Path(folder) / "tiny.pt"


def tiny_cli_folder(root, seed=0):
    """``root`` with tiny.pt (save_tiny_checkpoint) and photo.png (56×40 noise), for CLI runs → root."""
    import numpy as np
    from PIL import Image

    save_tiny_checkpoint(root, seed)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(root / "photo.png")
    return root


def make_model(config, seed=0):
    torch.manual_seed(seed)
    return perturbed(CLIP(**config), seed)


@pytest.fixture(scope="session")
def vit_b32():
    return make_model(OFFICIAL_CONFIGS["ViT-B/32"], seed=1)


@pytest.fixture(scope="session")
def vit_b16():
    return make_model(OFFICIAL_CONFIGS["ViT-B/16"], seed=2)


@pytest.fixture(scope="session")
def small_resnet():
    return make_model(SMALL_RESNET, seed=3)


@pytest.fixture(scope="session")
def tiny_vit():
    return make_model(TINY_VIT, seed=4)


@pytest.fixture(autouse=True)
def _bundled_vocab(monkeypatch):
    """Every test reads the vocabulary bundled with the package, whatever the caller's environment says."""
    monkeypatch.delenv("CLIPVIZ_VOCAB", raising=False)


def random_ids(count, seed=0, length=77):
    """Token ids [count, length] shaped like tokenizer output: SOT, words, EOT, zero padding."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.zeros(count, length, dtype=torch.long)
    for row in range(count):
        n_words = int(torch.randint(1, 12, (1,), generator=generator))
        ids[row, 0] = 49406
        ids[row, 1:1 + n_words] = torch.randint(1, 49000, (n_words,), generator=generator)
        ids[row, 1 + n_words] = 49407
    return ids


# --- CI cannot skip: a skip for a missing package is a failure when CI=true ----------------------

MISSING_PACKAGE = re.compile(r"could not import|No module named")  # pytest.importorskip's reasons
_missing_in_collection = []


def _missing_package(report):
    """The skip reason if ``report`` is a skip for a missing package, else None."""
    if not report.skipped:
        return None
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason if MISSING_PACKAGE.search(reason) else None


def _in_ci():
    return os.environ.get("CI", "").lower() in ("true", "1")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    reason = _missing_package(report) if _in_ci() else None
    if reason:
        report.outcome = "failed"
        report.longrepr = f"CI=true and an optional package is missing, so this test would be skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    report = (yield).get_result()
    reason = _missing_package(report) if _in_ci() else None
    if reason:  # a module-level importorskip; failing collection would stop the whole run
        _missing_in_collection.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if _missing_in_collection and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    skipped = terminalreporter.stats.get("skipped", [])
    missing = [r for r in skipped if _missing_package(r)]
    terminalreporter.write_line(f"skipped: {len(skipped)} ({len(missing)} for a missing optional package)")
    for line in _missing_in_collection:
        terminalreporter.write_line(f"CI=true: module skipped for a missing optional package: {line}", red=True)
