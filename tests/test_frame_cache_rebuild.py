"""A frame cache made again with other token settings: built aside, the old one usable until
the new one is whole, an interrupted rebuild resumed, a swap cut short finished."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import TINY_MODEL, segmentation_videos

import spool.data.frame_cache as frame_cache
import spool.data.frame_cache_rebuild as rebuild
from spool.data.frame_cache import FrameTokenDataset, build_frame_cache
from spool.data.segmentation import read_segments_csv
from spool.models.frame_classification import SpoolForFrameClassification
from spool.video.samplers import FpsSampler


def _build(out: Path, fps: float, seed: int = 0):
    root = segmentation_videos((320, 360), (15, 30))
    samples, names = read_segments_csv(root / "train.csv")
    torch.manual_seed(seed)
    model = SpoolForFrameClassification(**TINY_MODEL, class_names=names)
    return build_frame_cache(model, samples, names, out, FpsSampler(fps), dtype="float32")


def _rate(out: Path) -> float:
    return json.loads((out / "cache.json").read_text())["sampler"]["target_fps"]


def test_an_interrupted_rebuild_keeps_the_old_cache_and_goes_on(tmp_path, monkeypatch):
    """Made again at another rate and stopped after one video: cache.json was gone and the
    first video's file was already the new rate's, so neither cache could be used."""
    out = tmp_path / "cache"
    _build(out, 5.0)
    old_lengths = [len(FrameTokenDataset(out)[i]["labels"]) for i in range(4)]
    real, encoded = frame_cache.write_video_file, []

    def stopped(model, sample, *args, **kwargs):
        if len(encoded) == 1:
            raise KeyboardInterrupt
        encoded.append(sample.name)
        return real(model, sample, *args, **kwargs)

    monkeypatch.setattr(frame_cache, "write_video_file", stopped)
    with pytest.raises(KeyboardInterrupt):
        _build(out, 3.0)
    assert _rate(out) == 5.0  # the old cache, whole and usable
    assert [len(FrameTokenDataset(out)[i]["labels"]) for i in range(4)] == old_lengths
    monkeypatch.setattr(frame_cache, "write_video_file", real)
    redone = []

    def counted(model, sample, *args, **kwargs):
        written = real(model, sample, *args, **kwargs)
        if written:
            redone.append(sample.name)
        return written

    monkeypatch.setattr(frame_cache, "write_video_file", counted)
    summary = _build(out, 3.0)
    assert summary.path == out and summary.cached == 4 and _rate(out) == 3.0
    assert len(redone) == 3 and encoded[0] not in redone  # the first went on from before
    assert summary.kept == 1  # said: "cached ... (1 of them kept from an earlier run)"
    assert not (out / rebuild.REBUILD_DIR).exists()
    assert [len(FrameTokenDataset(out)[i]["labels"]) for i in range(4)] != old_lengths


def test_a_swap_cut_short_is_finished_by_the_next_run(tmp_path, monkeypatch):
    out = tmp_path / "cache"
    _build(out, 5.0)
    real, moves = rebuild.os.replace, []

    def replace(src, dst):
        if Path(dst).parent in (out, out / rebuild.REBUILD_DIR / "replaced"):  # the swap's
            moves.append(Path(dst).name)
            if len(moves) == 3:  # the old videos out, the new in, the old backbone out
                raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(rebuild.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        _build(out, 3.0, seed=1)
    monkeypatch.undo()
    assert not (out / "cache.json").exists() and (out / rebuild.REBUILD_DIR).exists()
    summary = _build(out, 3.0, seed=1)  # finishes the swap: nothing to encode
    assert summary.reused and _rate(out) == 3.0
    assert not (out / rebuild.REBUILD_DIR).exists()
    assert len(FrameTokenDataset(out)) == 4


def test_a_reader_of_the_old_cache_is_stopped_after_the_swap(tmp_path):
    """A run that opened the cache before it was made again read the new tokens with the old
    record (another rate, another backbone) without a word."""
    from spool.errors import SpoolLoadError

    out = tmp_path / "cache"
    _build(out, 5.0)
    reader = FrameTokenDataset(out)
    reader[0]
    _build(out, 3.0, seed=1)
    with pytest.raises(SpoolLoadError, match="made again since this run opened it"):
        reader[0]
    assert len(FrameTokenDataset(out)[0]["labels"]) > 0


def test_a_killed_builds_temporary_beside_cache_json_is_removed(tmp_path):
    """A kill just before cache.json's rename left its temporary in the cache's folder for
    good: only videos/ was tidied (the clip cache tidies its folder)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "cache"
    _build(out, 5.0)
    script = ("import sys; from spool.claims import temporary_sibling; "
              "p = temporary_sibling(sys.argv[1]); p.write_text('{'); print(p)")
    left = Path(subprocess.run([sys.executable, "-c", script, str(out / "cache.json")],
                               capture_output=True, text=True, check=True,
                               env={**os.environ, "PYTHONPATH": str(Path.cwd())}).stdout.strip())
    assert left.exists()  # its writer has exited
    _build(out, 3.0)
    assert not left.exists()


def test_a_cache_into_a_folder_whose_videos_are_a_datasets_is_refused(tmp_path):
    """`spool cache --task frames --out DATASET_ROOT` wrote its tokens beside the dataset's
    videos/*.mkv, and made again with another rate, replaced that folder: every source video
    deleted, exit 0."""
    out = tmp_path / "dataset"
    (out / "videos").mkdir(parents=True)
    (out / "videos" / "a.mkv").write_bytes(b"a user's video")
    with pytest.raises(ValueError, match=r"videos holds videos \(a\.mkv\): a cache of frames "
                                         r"keeps its tokens there .* give it a folder of its own"):
        _build(out, 5.0)
    assert [p.name for p in (out / "videos").iterdir()] == ["a.mkv"]
    from spool.data.cached_tokens import cache_kind

    assert cache_kind(out) is None  # the clip cache said "holds a cache of frames"
    (out / "videos" / "a.mkv").unlink()  # a stray Thumbs.db does not make it a dataset's
    (out / "videos" / "Thumbs.db").write_bytes(b"")
    assert _build(out, 5.0).cached == 4


def test_a_damaged_video_file_is_named_and_the_same_command_redoes_it(tmp_path):
    """A file of the cache cut short stopped training or eval with safetensors' traceback
    ("incomplete metadata"), naming no file."""
    from spool.errors import SpoolLoadError

    out = tmp_path / "cache"
    _build(out, 5.0)
    damaged = sorted((out / "videos").glob("*.safetensors"))[0]
    damaged.write_bytes(damaged.read_bytes()[:len(damaged.read_bytes()) // 2])
    dataset = FrameTokenDataset(out)
    index = [v["name"] for v in dataset.videos].index(damaged.stem)
    with pytest.raises(SpoolLoadError, match=rf"^{damaged}: cannot be read \(.*\); run the "
                                             "spool cache command that made the cache again"):
        dataset[index]
    assert _build(out, 5.0).cached == 4
    assert len(FrameTokenDataset(out)[index]["labels"]) > 0


def test_another_compute_dtype_is_built_aside(tmp_path, monkeypatch, spool_log):
    """Only the compute dtype changed: the cache was made again in place (not a token
    setting of the rebuild's), so a run killed half-way left neither cache."""
    import logging

    spool_log.set_level(logging.INFO, logger="spool")
    root = segmentation_videos((320, 360), (15, 30))
    samples, names = read_segments_csv(root / "train.csv")
    torch.manual_seed(0)
    model = SpoolForFrameClassification(**TINY_MODEL, class_names=names)
    out = tmp_path / "cache"
    build_frame_cache(model, samples, names, out, FpsSampler(5.0), dtype="float32")
    old = [FrameTokenDataset(out)[i]["tokens"] for i in range(4)]
    real, encoded = frame_cache.write_video_file, []

    def stopped(*args, **kwargs):
        if len(encoded) == 2:
            raise KeyboardInterrupt
        encoded.append(1)
        return real(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(frame_cache, "write_video_file", stopped)
        with pytest.raises(KeyboardInterrupt):
            build_frame_cache(model, samples, names, out, FpsSampler(5.0), dtype="float32",
                              compute_dtype=torch.bfloat16)
    assert "made with other settings (compute_dtype)" in spool_log.text
    assert all(torch.equal(FrameTokenDataset(out)[i]["tokens"], old[i]) for i in range(4))
    build_frame_cache(model, samples, names, out, FpsSampler(5.0), dtype="float32",
                      compute_dtype=torch.bfloat16)
    assert json.loads((out / "cache.json").read_text())["compute_dtype"] == "bfloat16"
    assert not torch.equal(FrameTokenDataset(out)[0]["tokens"], old[0])
    assert not (out / rebuild.REBUILD_DIR).exists()
