"""A frame cache writes each video's file as the backbone encodes it: its tokens never sit in
memory whole (they were gathered, joined and serialised: about 2.5x a video's tokens at the
peak). A video that stops decoding half-way is reported and skipped; a write that fails
(a full disk) stops the job."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from train_helpers import TINY_MODEL, segmentation_videos

from spool.data import frame_cache_video
from spool.data.frame_cache import FrameTokenDataset, build_frame_cache
from spool.data.segmentation import read_segments_csv
from spool.models.frame_classification import SpoolForFrameClassification
from spool.video.index import VideoDecodeError
from spool.video.samplers import FpsSampler


@pytest.fixture(scope="module")
def setup():
    samples, names = read_segments_csv(segmentation_videos((300, 320), (10, 20)) / "test.csv")
    torch.manual_seed(0)
    return SpoolForFrameClassification(**TINY_MODEL, class_names=names).eval(), samples, names


def _temporaries(out: Path) -> list[int]:
    return [p.stat().st_size for p in (out / "videos").glob(".*.tmp")]


def test_tokens_reach_the_file_as_they_are_encoded(setup, tmp_path: Path,
                                                   monkeypatch) -> None:
    model, samples, names = setup
    model.config.backbone_chunk_size = 8  # several chunks per video
    out, real, on_disk = tmp_path / "c", frame_cache_video.stream_tokens, []

    def watched(*args, **kwargs):
        for tokens, times in real(*args, **kwargs):
            on_disk.append(sum(_temporaries(out)))  # what the earlier chunks wrote
            yield tokens, times

    monkeypatch.setattr(frame_cache_video, "stream_tokens", watched)
    build_frame_cache(model, samples[:1], names, out, FpsSampler(5.0), dtype="float32")
    tokens = FrameTokenDataset(out)[0]["tokens"]
    chunk_bytes = 8 * tokens[0].numel() * 4
    assert len(on_disk) >= 4
    steps = np.diff(on_disk)  # the first with the header
    assert steps[0] > chunk_bytes and (steps[1:] == chunk_bytes).all(), (on_disk, chunk_bytes)
    monkeypatch.undo()
    again = tmp_path / "again"
    build_frame_cache(model, samples[:1], names, again, FpsSampler(5.0), dtype="float32")
    assert torch.equal(FrameTokenDataset(again)[0]["tokens"], tokens)


def test_tokens_equal_the_backbone_on_the_frames(setup, tmp_path: Path) -> None:
    """The streamed file holds what the frame encoder gives for the decoded frames, with the
    labels, indices and times of those frames."""
    from spool.models.long_video import stream_tokens, whole_video_indices
    from spool.video.io import VideoReader

    model, samples, names = setup
    out = tmp_path / "c"
    build_frame_cache(model, samples[:1], names, out, FpsSampler(5.0), dtype="float32")
    with VideoReader(samples[0].video) as reader:
        info = reader.info()
        indices = whole_video_indices(reader, FpsSampler(5.0), "test")
        parts = list(stream_tokens(model, reader, indices))
    item = FrameTokenDataset(out)[0]
    torch.testing.assert_close(item["tokens"], torch.cat([t for t, _ in parts]))
    times = np.concatenate([s for _, s in parts])
    expected = samples[0].labels_at(indices, times, info.start_time)
    assert torch.equal(item["labels"], torch.from_numpy(expected))
    name = json.loads((out / "cache.json").read_text())["videos"][0]["name"]
    with safe_open(str(out / "videos" / f"{name}.safetensors"), "pt") as f:
        assert f.get_tensor("frame_indices").tolist() == list(indices)
        assert np.array_equal(f.get_tensor("timestamps").numpy(), times)


def test_a_video_that_stops_decoding_half_way_is_skipped(setup, tmp_path: Path,
                                                         monkeypatch) -> None:
    model, samples, names = setup
    real = frame_cache_video.stream_tokens

    def broken(model, reader, indices):
        chunks = real(model, reader, indices)
        yield next(chunks)
        if reader.path == samples[0].video:
            raise VideoDecodeError(f"{reader.path}: invalid data at frame 17")
        yield from chunks

    monkeypatch.setattr(frame_cache_video, "stream_tokens", broken)
    out = tmp_path / "c"
    summary = build_frame_cache(model, samples[:2], names, out, FpsSampler(5.0))
    assert [f.path for f in summary.failures] == [samples[0].video]
    assert "invalid data at frame 17" in summary.failures[0].message
    assert len(FrameTokenDataset(out)) == 1
    assert sorted(p.name for p in (out / "videos").iterdir()) == [
        f"{samples[1].name}.safetensors"]  # no file, no temporary, of the broken one


def test_a_write_that_fails_stops_the_job(setup, tmp_path: Path, monkeypatch) -> None:
    """A full disk is an OSError, as many read errors are: it was not taken for a video that
    cannot be read (which would skip every video after it, one by one)."""
    model, samples, names = setup
    real = frame_cache_video.write_streamed_safetensors

    def full(path, tensors, metadata=None):
        def chunks():
            yield next(iter(tensors[0].chunks))
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, [frame_cache_video.StreamedTensor("tokens", tensors[0].dtype,
                                                     tensors[0].shape, chunks()),
                    *tensors[1:]], metadata)

    monkeypatch.setattr(frame_cache_video, "write_streamed_safetensors", full)
    with pytest.raises(OSError, match="No space left"):
        build_frame_cache(model, samples[:2], names, tmp_path / "c", FpsSampler(5.0))
