"""Hand-made hostile files for the bounds tests: torch zip checkpoints whose pickle says what we
want (storage sizes, tensor sizes and strides), deflate and gzip bombs, and real PNGs of one colour.
Everything is written in pieces, so making a file that inflates to gigabytes takes megabytes."""

import collections
import io
import pickle
import struct
import zipfile
import zlib

import torch


class Storage:
    """A storage in a crafted checkpoint: ``numel`` is what the pickle declares, ``data`` what the file holds."""

    def __init__(self, key, data, numel, dtype_name="FloatStorage"):
        self.key, self.data, self.numel, self.dtype_name = key, data, numel, dtype_name


class Tensor:
    """``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``, as torch.save pickles a tensor."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride, False,
                                                 collections.OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return "storage", getattr(torch, obj.dtype_name), obj.key, "cpu", obj.numel
        return None


def torch_zip(path, tensors, root="archive"):
    """Write ``{name: Tensor}`` as torch.save's zip layout (every member stored, as torch writes it)."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump(collections.OrderedDict(tensors))
    storages = {t.storage.key: t.storage for t in tensors.values()}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{root}/data.pkl", buffer.getvalue())
        archive.writestr(f"{root}/byteorder", "little")
        for key, storage in storages.items():
            if isinstance(storage.data, int):  # that many zero bytes, deflated: a bomb
                _deflated_zeros(archive, f"{root}/data/{key}", storage.data)
            else:
                archive.writestr(f"{root}/data/{key}", storage.data)
        archive.writestr(f"{root}/version", "3\n")
    return path


def _deflated_zeros(archive, name, size, chunk=1 << 20):
    info = zipfile.ZipInfo(name)
    info.compress_type, info._compresslevel = zipfile.ZIP_DEFLATED, 1
    with archive.open(info, "w", force_zip64=True) as member:
        for _ in range(size // chunk):
            member.write(bytes(chunk))


def gzip_zeros(size, chunk=1 << 20):
    """A gzip stream of ``size`` zero bytes (a multiple of ``chunk``), ~1 KB per MB, made in
    milliseconds: after Z_FULL_FLUSH deflate starts afresh, so every chunk compresses to the same bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = compressor.compress(bytes(chunk)) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size // chunk):
        crc = zlib.crc32(bytes(chunk), crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + block * (size // chunk) + compressor.flush() + struct.pack("<II", crc, size & 0xFFFFFFFF)


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def solid_png(width, height, rows=256):
    """A valid RGB PNG of one colour (black), compressed row block by row block: 13000×13000 is ~0.5 MB."""
    compressor, block = zlib.compressobj(9), bytes(1 + 3 * width) * rows
    idat = []
    for top in range(0, height, rows):
        idat.append(compressor.compress(block[:(1 + 3 * width) * min(rows, height - top)]))
    idat.append(compressor.flush())
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", b"".join(idat)) + _png_chunk(b"IEND", b""))
