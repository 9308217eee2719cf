"""Small files that declare huge work: zip members that inflate to gigabytes, storages and strides
that claim more than the file holds, gzip bombs, images whose header claims a gigapixel, and maps
for many prompts on a large photo. Each case runs in a fresh Python whose address space may grow
at most 500 MB beyond what the imports took (RLIMIT_AS, as ``ulimit -v``), and must end in the
ClipvizError that names the problem; the growth of its resident memory is measured too.
"""

import json
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from crafted import Storage, Tensor, gzip_zeros, solid_png, torch_zip
from hostile import tally

CASES, _report = tally("bounds (under RLIMIT_AS +500 MB)")
LIMIT = 500 << 20
ROOT = Path(__file__).resolve().parents[1]

_RUNNER = '''
import json, os, resource, sys
sys.path[:0] = {paths!r}
import numpy, torch, clipviz
from clipviz.errors import ClipvizError
{setup}
torch.zeros(64).add_(1)  # thread pools and allocator up before the baseline
def status(key):
    return int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith(key))) << 10
base = status("VmSize:")
resource.setrlimit(resource.RLIMIT_AS, (base + {limit}, base + {limit}))
open("/proc/self/clear_refs", "w").write("5")  # VmHWM counts from here
rss = status("VmRSS:")
try:
{code}
    outcome = "no error"
except ClipvizError as error:
    outcome = "ClipvizError: " + str(error)
except BaseException as error:
    outcome = type(error).__name__ + ": " + str(error)
print(json.dumps({{"outcome": outcome, "rss_growth_mb": (status("VmHWM:") - rss) / 2**20}}))
'''


def run_limited(code, setup="", env=None):
    """Run ``code`` (after ``setup``) in a subprocess limited to +500 MB of address space.

    Returns (outcome text, resident-memory growth in MB)."""
    script = _RUNNER.format(paths=[str(ROOT), str(ROOT / "tests")], setup=textwrap.dedent(setup), limit=LIMIT,
                            code=textwrap.indent(textwrap.dedent(code), "    "))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1",
                                 **(env or {})})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"  {report['rss_growth_mb']:.0f} MB: {report['outcome'][:150]}")
    return report["outcome"], report["rss_growth_mb"]


def assert_refused(code, *phrases, setup="", env=None):
    with CASES.case():
        outcome, growth = run_limited(code, setup, env)
        assert outcome.startswith("ClipvizError: ") and all(p in outcome for p in phrases), outcome
        assert "\n" not in outcome
        assert growth < 500


def read(path):
    return f"from clipviz.checkpoints import read_checkpoint\nread_checkpoint({str(path)!r})"


FOUR = struct.pack("<4f", 1, 2, 3, 4)


# ------------------------------------------------------------------------- checkpoints

def test_crafted_checkpoint_reads_when_honest(tmp_path):
    """The crafting helper makes files torch and we read: the refusals below are about the lies."""
    path = torch_zip(tmp_path / "ok.pt", {"w": Tensor(Storage("0", FOUR, 4), 1, (3,), (1,))})
    from clipviz.checkpoints import read_checkpoint
    assert read_checkpoint(path)["w"].tolist() == [2, 3, 4]
    assert torch.load(path)["w"].tolist() == [2, 3, 4]


def test_storage_that_inflates_to_512_mb_is_refused_before_inflating(tmp_path):
    path = torch_zip(tmp_path / "bomb.pt", {"w": Tensor(Storage("0", 512 << 20, 128 << 20), 0, (4,), (1,))})
    assert path.stat().st_size < 4 << 20  # 2.3 MB that declares 512 MB
    assert_refused(read(path), "decompression bomb", "archive/data/0", "536,870,912 bytes")


def test_torchscript_archive_that_inflates_is_refused_before_inflating(tmp_path):
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(4))

        def forward(self, x):
            return x * self.weight

    honest, bomb = tmp_path / "tiny.pt", tmp_path / "bomb.pt"
    torch.jit.save(torch.jit.script(Tiny()), honest)
    with zipfile.ZipFile(honest) as source, zipfile.ZipFile(bomb, "w") as target:
        for info in source.infolist():
            if info.filename.endswith("/data/0"):  # the weight's storage, now 512 MB of deflated zeros
                bomb_info = zipfile.ZipInfo(info.filename)
                bomb_info.compress_type = zipfile.ZIP_DEFLATED
                with target.open(bomb_info, "w", force_zip64=True) as member:
                    for _ in range(512):
                        member.write(bytes(1 << 20))
            else:
                target.writestr(info, source.read(info))
    assert_refused(read(bomb), "decompression bomb", "/data/0")


def lie_about_size(path, member, size):
    """Overwrite ``member``'s sizes in its local and central headers (a stored member keeps its bytes)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        local = archive.getinfo(member).header_offset
    struct.pack_into("<II", data, local + 18, size, size)
    central = 0
    while True:
        central = data.index(b"PK\x01\x02", central)
        name_length = struct.unpack_from("<H", data, central + 28)[0]
        if data[central + 46:central + 46 + name_length] == member.encode():
            struct.pack_into("<II", data, central + 20, size, size)
            break
        central += 4
    path.write_bytes(bytes(data))


def test_member_declaring_4_gb_in_a_tiny_file_is_refused(tmp_path):
    path = torch_zip(tmp_path / "liar.pt", {"w": Tensor(Storage("0", FOUR, 4), 0, (4,), (1,))})
    lie_about_size(path, "archive/data/0", 0xF0000000)
    assert_refused(read(path), "damaged", "archive/data/0", "4,026,531,840")


def test_storage_declaring_1_5_billion_values_over_16_bytes_is_refused(tmp_path):
    path = torch_zip(tmp_path / "numel.pt", {"w": Tensor(Storage("0", FOUR, 1_500_000_000), 0, (4,), (1,))})
    assert_refused(read(path), "damaged", "does not match expected size")


@pytest.mark.parametrize("size, stride", [((100000, 100000), (0, 0)), ((1 << 20, 4), (0, 1)), ((4, 4), (1, 0))])
def test_tensor_whose_strides_repeat_a_small_storage_is_refused(tmp_path, size, stride):
    """Zero strides are legal views but weights never have them: copying one would take gigabytes."""
    path = torch_zip(tmp_path / "strided.pt", {"w": Tensor(Storage("0", FOUR, 4), 0, size, stride)})
    values = size[0] * size[1]
    assert_refused(read(path), "tensor w claims shape", f"({values:,} values) over a storage of 4 values")


def test_tensor_reaching_past_its_storage_is_refused(tmp_path):
    path = torch_zip(tmp_path / "past.pt", {"w": Tensor(Storage("0", FOUR, 4), 0, (100000, 100000), (100000, 1))})
    assert_refused(read(path), "damaged")


def test_legacy_checkpoint_declaring_6_gb_is_refused_without_touching_it(tmp_path):
    """torch's legacy format reserves each storage's declared size before reading it; the
    reservation fails under the limit (without one it stays untouched) and the error is ours."""
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.arange(1000.0)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    at = data.index(b"M\xe8\x03")  # BININT2 1000: the storage's numel in the pickle
    path.write_bytes(data[:at] + b"J" + struct.pack("<i", 1_500_000_000) + data[at + 3:])
    assert_refused(read(path), "damaged")


def test_safetensors_header_declaring_40_gb_is_refused(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 40_000_000_000]}})
    path = tmp_path / "bomb.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode() + FOUR)
    assert_refused(read(path), "damaged")


# ------------------------------------------------------------------------- vocabulary

def test_gzip_vocabulary_that_inflates_to_1_gb_is_refused(tmp_path):
    path = tmp_path / "vocab.txt.gz"
    path.write_bytes(gzip_zeros(1 << 30))
    assert path.stat().st_size < 2 << 20
    assert_refused("from clipviz.tokenizer import parse_merges, read_vocab\nparse_merges(*read_vocab())",
                   "decompression bomb", "16,777,216", env={"CLIPVIZ_VOCAB": str(path)})


# ------------------------------------------------------------------------- images and maps

def test_530_kb_png_of_13000_by_13000_is_refused_from_its_header(tmp_path):
    path = tmp_path / "solid.png"
    path.write_bytes(solid_png(13000, 13000))
    assert path.stat().st_size < 600_000
    assert_refused(f"from clipviz.preprocess import load_image\nload_image({str(path)!r})",
                   "13000×13000", "169,000,000", "MAX_PIXELS")


EXPLAIN_SETUP = """
from conftest import TINY_VIT, make_model
model = make_model(TINY_VIT, seed=4)
"""


def test_maps_for_many_prompts_on_a_large_photo_are_refused_up_front(tmp_path):
    """40 prompts on a 4096×4096 photo need 2.5 GiB of maps: refused, naming the size and what fits."""
    path = tmp_path / "large.png"
    path.write_bytes(solid_png(4096, 4096))
    prompts = [f"a photo of thing number {i}" for i in range(40)]
    assert_refused(f"clipviz.explain(model, {str(path)!r}, {prompts!r}, method='rollout')",
                   "40 prompts on a 4096×4096 photo", "2.5 GiB", "at most 32 prompts", setup=EXPLAIN_SETUP)


def test_few_prompts_on_a_large_photo_fit_in_the_limit(tmp_path):
    path = tmp_path / "large.png"
    path.write_bytes(solid_png(4096, 4096))
    code = f"""
    exp = clipviz.explain(model, {str(path)!r}, ["a dog", "a cat"], method="relevance")
    assert exp.maps.shape == (2, 4096, 4096) and exp.maps.dtype == numpy.float32
    """
    with CASES.case():
        outcome, growth = run_limited(code, EXPLAIN_SETUP)
        assert outcome == "no error"
        # photo 48 MB, PIL's copy 64 MB, two maps 128 MB: what the limit must leave room for
        assert 2 * 64 < growth < 500
