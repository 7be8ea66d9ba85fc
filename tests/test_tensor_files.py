"""The streamed safetensors writer against safetensors' own reader: every dtype it takes, chunks,
0-d and empty tensors, metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from spool.tensor_files import StreamedTensor, write_streamed_safetensors


def test_streamed_file_loads_as_written(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {"f32": torch.randn(5, 3, generator=g), "bf16": torch.randn(4, 2).bfloat16(),
               "i64": torch.arange(7), "u8": torch.arange(6, dtype=torch.uint8).view(2, 3),
               "scalar": torch.tensor(2.5),  # 0-d: "cannot be 0 to view Float as Byte" before
               "empty": torch.zeros(0, 4)}
    streamed = [StreamedTensor(k, v.dtype, tuple(v.shape),
                               v.split(2) if v.ndim and len(v) else [v])
                for k, v in tensors.items()]
    path = tmp_path / "x.safetensors"
    write_streamed_safetensors(path, streamed, metadata={"a": "1"})
    got = load_file(path)
    assert got.keys() == tensors.keys()
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"a": "1"}


def test_chunks_that_do_not_fill_the_shape_are_refused(tmp_path: Path) -> None:
    short = StreamedTensor("t", torch.float32, (4, 2), [torch.zeros(3, 2)])
    with pytest.raises(ValueError, match="t: chunks held 24 bytes, the shape"):
        write_streamed_safetensors(tmp_path / "x.safetensors", [short])
    assert not list(tmp_path.iterdir())  # no temporary, no half file
