"""Writing a safetensors file piece by piece, for outputs larger than what should sit in RAM.

``safetensors.torch.save_file`` wants every tensor whole; the full features of an hour of video
(``[T + 2, L, D]``) are produced chunk by chunk. The format is simple (an 8-byte header length,
a JSON header of names, dtypes, shapes and byte offsets, then the raw little-endian data), so the
header is written first and each tensor's chunks follow in order. Files read back with
``safetensors.safe_open`` / ``load_file`` like any other.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from spool.io_utils import atomic_path, read_safetensors_header

_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.float64: "F64", torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8"}


@dataclass
class StreamedTensor:
    """A tensor of ``shape`` and ``dtype`` whose ``chunks`` (along dim 0, in order) are
    produced on demand; together they must hold exactly ``shape``'s elements."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    chunks: Iterable[torch.Tensor]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def write_streamed_safetensors(path: str | os.PathLike, tensors: list[StreamedTensor],
                               metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` (atomically) without holding any of them whole."""
    header: dict[str, object] = {}
    offset = 0
    for t in tensors:
        if t.dtype not in _DTYPES:
            raise ValueError(f"{t.name}: dtype {t.dtype} is not supported here")
        header[t.name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keeps the data 8-byte aligned, as safetensors does
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a full disk: named there
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors:
            written = 0
            for chunk in t.chunks:
                data = chunk.detach().to("cpu", t.dtype).contiguous().reshape(-1)  # 0-d too
                f.write(data.view(torch.uint8).numpy().tobytes())
                written += data.numel() * data.element_size()
            if written != t.nbytes:
                raise ValueError(f"{t.name}: chunks held {written} bytes, the shape "
                                 f"{t.shape} needs {t.nbytes}")


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str] | None:
    """The ``__metadata__`` of a safetensors file whose header is whole and whose tensors end
    where the file does; None for anything else (a damaged or cut file). Read in Python, as
    safetensors' own reader takes paths as UTF-8 only (Linux names are bytes)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            n, header = read_safetensors_header(f)
        ends = [info["data_offsets"][1] for name, info in header.items()
                if name != "__metadata__"]
        if max(ends, default=0) != size - 8 - n:
            return None
        meta = header.get("__metadata__") or {}
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error):
        return None
