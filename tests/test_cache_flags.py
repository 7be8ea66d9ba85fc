"""`spool cache`'s flags per task: --device runs the frame cache's backbone too, and a flag
of the other task is refused instead of being ignored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CUDA_ONLY
from safetensors import safe_open
from train_helpers import TINY_BACKBONE, TINY_MODEL, segmentation_videos

from spool.cli import main

MODEL = ["--model", "image_size=32", "--model", "backbone_config=" + json.dumps(TINY_BACKBONE)]


def _frames(out: Path, *flags: str) -> list[str]:
    """`spool cache --task frames` of the 2 test videos at 1 fps into ``out``."""
    data = segmentation_videos((300, 320), (10, 20)) / "test.csv"
    return ["cache", "--task", "frames", "--data", str(data), "--fps", "1", "--out", str(out),
            *MODEL, "--quiet", *flags]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_frames_with_cuda_and_no_gpu_say_so(tmp_path: Path, capsys) -> None:
    """--device was ignored by --task frames: the backbone ran on the CPU, without a word."""
    assert main(_frames(tmp_path / "c", "--device", "cuda")) == 2
    err = capsys.readouterr().err
    assert "spool cache: error: device: 'cuda' asked for but" in err
    assert not (tmp_path / "c").exists()


def test_frames_run_the_backbone_on_the_resolved_device(tmp_path: Path, monkeypatch) -> None:
    """The device --device resolves to reaches the frame encoder (a "cpu:0" device stands in
    for a GPU: it runs here, and differs from the default "cpu")."""
    import spool.runtime
    from spool.data import frame_cache

    asked, moved = [], []
    monkeypatch.setattr(spool.runtime, "resolve_device",
                        lambda name: asked.append(name) or torch.device("cpu", 0))
    build = frame_cache.build_frame_cache

    def spied(model, *args, **kwargs):
        encoder = model.frame_encoder
        encoder.to = lambda device: moved.append(device) or type(encoder).to(encoder, device)
        return build(model, *args, **kwargs)

    monkeypatch.setattr(frame_cache, "build_frame_cache", spied)
    # Flags of the clips task at their defaults are not refused.
    assert main(_frames(tmp_path / "c", "--device", "cpu", "--dtype", "float16",
                        "--crop-scale", "0.4", "1.0", "--batch-size", "8")) == 0
    assert asked == ["cpu"] and moved == [torch.device("cpu", 0)]
    meta = json.loads((tmp_path / "c" / "cache.json").read_text())
    name = meta["videos"][0]["name"]
    with safe_open(str(tmp_path / "c" / "videos" / f"{name}.safetensors"), "pt") as f:
        assert f.get_tensor("tokens").dtype == torch.float16


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_frame_cache_on_a_gpu_stores_the_cpus_tokens(tmp_path: Path, device: str) -> None:
    from spool.data.frame_cache import FrameTokenDataset, build_frame_cache
    from spool.data.segmentation import read_segments_csv
    from spool.models.frame_classification import SpoolForFrameClassification
    from spool.video.samplers import FpsSampler

    samples, names = read_segments_csv(segmentation_videos((300, 320), (10, 20)) / "test.csv")
    model = SpoolForFrameClassification(**TINY_MODEL, class_names=names)
    for where in ("cpu", device):
        build_frame_cache(model, samples[:1], names, tmp_path / where, FpsSampler(1.0),
                          dtype="float32", device=where)
    assert next(model.frame_encoder.parameters()).device.type == "cuda"
    cpu, gpu = FrameTokenDataset(tmp_path / "cpu")[0], FrameTokenDataset(tmp_path / device)[0]
    assert gpu["tokens"].device.type == "cpu"
    torch.testing.assert_close(gpu["tokens"], cpu["tokens"], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("task, flags, named", [
    ("frames", ["--views", "2"], "--views: applies to --task clips, not to --task frames"),
    ("frames", ["--num-frames", "8"], "--num-frames: applies to --task clips"),
    ("frames", ["--frame-stride", "2"], "--frame-stride: applies to --task clips"),
    ("frames", ["--crop-scale", "0.5", "1"], "--crop-scale: applies to --task clips"),
    ("frames", ["--hflip"], "--hflip: applies to --task clips"),
    ("frames", ["--batch-size", "4"], "--batch-size: applies to --task clips"),
    ("frames", ["--num-workers", "0"], "--num-workers: applies to --task clips"),
    ("clips", ["--fps", "5"], "--fps: applies to --task frames, not to --task clips"),
    ("clips", ["--split", "test.split1"], "--split: applies to --task frames"),
])
def test_a_flag_of_the_other_task_is_refused(tmp_path: Path, capsys, task, flags,
                                             named) -> None:
    out = tmp_path / "c"
    assert main(["cache", "--task", task, "--data", str(tmp_path / "d"), "--out", str(out),
                 *MODEL, *flags]) == 2
    assert f"spool cache: error: {named}" in capsys.readouterr().err
    assert not out.exists()


def test_the_frame_cache_shows_progress_within_a_video(tmp_path: Path, capsys) -> None:
    """Only whole videos were counted: one long video sat at `0/1` until it was done."""
    assert main([a for a in _frames(tmp_path / "c") if a != "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "video/s]" in err and "frame/s]" in err  # the videos' bar and a video's frames'
