"""Token caches: a killed `spool cache` continues, a full disk is refused up front, and a cache
whose tokens do not match its cache.json is refused when opened."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from train_helpers import TINY_MODEL, tiny_video_dataset

from spool.data import cache, token_rows, token_space
from spool.data.cache import CachedTokenDataset, build_cache
from spool.data.dataset import VideoClipDataset, VideoSample, read_annotations
from spool.errors import (
    CheckpointNotFoundError,
    InsufficientSpaceError,
    SpoolBusyError,
    SpoolLoadError,
)
from spool.io_utils import file_version, lock_directory, release_claim, temporary_sibling
from spool.models.frame_encoder import FrameEncoderModel
from spool.video.samplers import clip_sampler


class Killed(Exception):
    """Stands for the process dying at this point."""


@pytest.fixture(scope="module")
def model() -> FrameEncoderModel:
    return FrameEncoderModel(image_size=32, backbone_config=TINY_MODEL["backbone_config"])


def _dataset(model: FrameEncoderModel, num_frames: int = 4) -> VideoClipDataset:
    samples, names = read_annotations(tiny_video_dataset() / "train.txt")
    return VideoClipDataset(samples, names, clip_sampler(num_frames),
                            model.config.preprocessing())


def _dataset_of_copies(model: FrameEncoderModel, folder: Path) -> VideoClipDataset:
    """:func:`_dataset` over copies of its videos in ``folder``, which a test may change."""
    dataset = _dataset(model)
    folder.mkdir(exist_ok=True)
    for i, sample in enumerate(dataset.samples):
        copy = folder / f"{i}{Path(sample.path).suffix}"
        shutil.copy(sample.path, copy)
        dataset.samples[i] = VideoSample(str(copy), sample.label)
    return dataset


@pytest.fixture(scope="module")
def full(model, tmp_path_factory) -> Path:
    return build_cache(model, _dataset(model), tmp_path_factory.mktemp("full"),
                       batch_size=4).path


def _decoded(monkeypatch, die_at: int | None = None) -> list[int]:
    """Record the videos decoded; with ``die_at``, the process dies on that video."""
    seen: list[int] = []
    real = cache._ViewStack.__getitem__

    def getitem(self, index: int):
        if index == die_at:
            raise Killed
        seen.append(index)
        return real(self, index)

    monkeypatch.setattr(cache._ViewStack, "__getitem__", getitem)
    return seen


def test_a_killed_cache_run_continues_where_it_stopped(model, full, tmp_path: Path,
                                                       monkeypatch) -> None:
    out = tmp_path / "cache"
    monkeypatch.setattr(token_rows, "PROGRESS_EVERY_S", 0.0)  # progress saved after every batch
    monkeypatch.setattr(token_rows.PartialTokens, "close", lambda self: None)  # killed: no clean-up
    _decoded(monkeypatch, die_at=9)
    with pytest.raises(Killed):
        build_cache(model, _dataset(model), out, batch_size=4)
    monkeypatch.undo()
    assert (out / token_rows.PARTIAL_NAME).is_file() and not (out / "cache.json").exists()

    seen = _decoded(monkeypatch)
    build_cache(model, _dataset(model), out, batch_size=4)
    assert seen == list(range(8, 16))  # batches 1-2 were saved; the rest is done now
    assert np.array_equal(np.load(out / "tokens.npy"), np.load(full / "tokens.npy"))
    assert json.loads((out / "cache.json").read_text()) == json.loads(
        (full / "cache.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["backbone", "cache.json", "tokens.npy"]


def test_a_killed_run_of_the_earlier_version_continues_and_blocks_a_frame_cache(
        model, full, tmp_path: Path, monkeypatch) -> None:
    """The partial file of a run killed before the settings key left out the labels was
    started over (hours of encoding lost); and a frame cache could be built over it."""
    from spool.data.frame_cache import build_frame_cache
    from spool.data.segmentation import SegmentationSample
    from spool.video.samplers import FpsSampler

    out = tmp_path / "cache"
    monkeypatch.setattr(token_rows, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(token_rows.PartialTokens, "close", lambda self: None)
    monkeypatch.setattr(cache, "_settings_key", lambda meta, fixed, resolve=True: cache._digest(
        meta))
    _decoded(monkeypatch, die_at=9)
    with pytest.raises(Killed):
        build_cache(model, _dataset(model), out, batch_size=4)
    monkeypatch.undo()
    video = _dataset(model).samples[0].path
    with pytest.raises(ValueError, match="holds a cache of clips"):
        build_frame_cache(model, [SegmentationSample("v", video, segments=((0, 1, 0),))],
                          ["a"], out, FpsSampler(1))
    seen = _decoded(monkeypatch)
    build_cache(model, _dataset(model), out, batch_size=4)
    assert seen == list(range(8, 16))
    assert np.array_equal(np.load(out / "tokens.npy"), np.load(full / "tokens.npy"))


def test_a_killed_run_over_a_changed_video_keeps_the_other_videos(model, full, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """A video changed in place before the partial cache is resumed: only its row (and the
    unfinished ones) is encoded again, not every video."""
    dataset = _dataset_of_copies(model, tmp_path / "videos")
    out = tmp_path / "cache"
    monkeypatch.setattr(token_rows, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(token_rows.PartialTokens, "close", lambda self: None)
    _decoded(monkeypatch, die_at=9)
    with pytest.raises(Killed):  # rows 0-7 saved
        build_cache(model, dataset, out, batch_size=4)
    monkeypatch.undo()
    expected = np.load(full / "tokens.npy")
    changed = next(i for i in range(16) if not np.array_equal(expected[i], expected[3]))
    shutil.copy(dataset.samples[changed].path, dataset.samples[3].path)  # video 3 rewritten
    monkeypatch.setattr(token_rows.PartialTokens, "close", lambda self: None)
    _decoded(monkeypatch, die_at=8)  # killed again: the record no longer claims video 3
    with pytest.raises(Killed):
        build_cache(model, dataset, out, batch_size=4)
    monkeypatch.undo()
    assert json.loads((out / token_rows.PROGRESS_NAME).read_text())["done"] == [[0, 3], [4, 8]]

    seen = _decoded(monkeypatch)
    build_cache(model, dataset, out, batch_size=4)
    assert seen == [3, *range(8, 16)]
    tokens = np.load(out / "tokens.npy")
    assert np.array_equal(tokens[3], expected[changed])  # as a fresh encode of the new file
    assert all(np.array_equal(tokens[i], expected[i]) for i in range(16) if i != 3)
    assert CachedTokenDataset(out).meta["sources"][3] == list(
        file_version(dataset.samples[3].path))


def test_other_settings_start_over(model, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "cache"
    _decoded(monkeypatch, die_at=9)
    with pytest.raises(Killed):
        build_cache(model, _dataset(model), out, batch_size=4)
    monkeypatch.undo()
    seen = _decoded(monkeypatch)
    build_cache(model, _dataset(model, num_frames=2), out, batch_size=4)
    assert seen == list(range(16))
    assert CachedTokenDataset(out)[0]["tokens"].shape[0] == 2
    assert sorted(p.name for p in out.iterdir()) == ["backbone", "cache.json", "tokens.npy"]


def test_temporaries_of_killed_runs_are_removed(model, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = temporary_sibling(out / "tokens.npy").name.replace(f"-{os.getpid()}-",
                                                              f"-{dead.pid}-")
    (out / name).write_bytes(b"\0" * 4096)  # what an older version left when killed
    build_cache(model, _dataset(model), out, batch_size=8)
    assert not (out / name).exists()


def test_not_enough_disk_space_is_refused_before_writing(model, tmp_path: Path,
                                                         monkeypatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(token_space.shutil, "disk_usage", lambda path: usage(10**6, 10**6, 1000))
    need = 16 * 1 * 4 * 17 * 24 * 4  # videos x views x frames x tokens x dims x bytes
    with pytest.raises(InsufficientSpaceError,
                       match=rf"needs {need / 1024:.1f} KiB \(16 videos x 1 views x 4 frames "
                             rf"x 17 tokens x 24 dims x 4 bytes.*but 1000 bytes is free"):
        build_cache(model, _dataset(model), tmp_path / "cache")
    assert not (tmp_path / "cache" / token_rows.PARTIAL_NAME).exists()


def test_a_cache_being_written_is_locked(model, tmp_path: Path) -> None:
    lock = lock_directory(tmp_path, "spool cache", cache.LOCK_NAME)
    with pytest.raises(SpoolBusyError, match=f"process {os.getpid()}"):
        build_cache(model, _dataset(model), tmp_path)
    release_claim(lock)


@pytest.mark.parametrize("damage,error,match", [
    (lambda d: np.save(d / "tokens.npy", np.zeros((16, 1, 3, 17, 24), np.float32)),
     SpoolLoadError, r"tokens.npy: holds float32 tokens of shape \(16, 1, 3, 17, 24\), but "
                     r".*cache.json describes float32 tokens of shape \(16, 1, 4, 17, 24\)"),
    (lambda d: np.save(d / "tokens.npy", np.zeros((16, 1, 4, 17, 24), np.float16)),
     SpoolLoadError, "holds float16 tokens"),
    (lambda d: (d / "tokens.npy").write_bytes((d / "tokens.npy").read_bytes()[:5000]),
     SpoolLoadError, "tokens.npy: not a readable .npy file"),
    (lambda d: (d / "tokens.npy").unlink(), CheckpointNotFoundError, "tokens.npy: missing"),
    (lambda d: (d / "cache.json").write_text("{"), SpoolLoadError, "cache.json: not valid JSON"),
    (lambda d: (d / "cache.json").write_text("[]"), SpoolLoadError, "cache.json: no "),
])
def test_tokens_must_match_cache_json(full, tmp_path: Path, damage, error, match) -> None:
    copy = tmp_path / "cache"
    shutil.copytree(full, copy)
    damage(copy)
    with pytest.raises(error, match=match):
        CachedTokenDataset(copy)


def test_train_on_what_is_not_a_complete_cache_says_so(model, tmp_path: Path, capsys,
                                                       monkeypatch) -> None:
    """A missing folder, a dataset folder or an interrupted cache given as --train-cache: the
    message --val-cache gives, not one about backbone/config.json."""
    from spool.cli import main

    interrupted = tmp_path / "interrupted"
    _decoded(monkeypatch, die_at=9)
    with pytest.raises(Killed):
        build_cache(model, _dataset(model), interrupted, batch_size=4)
    monkeypatch.undo()
    for path in (tmp_path / "missing", tiny_video_dataset(), interrupted):
        assert main(["train", "--train-cache", str(path), "--out-dir",
                     str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [f"spool train: error: {path / 'cache.json'}: not found; "
                                    f"{path} is not a complete token cache (write one with "
                                    "`spool cache`)"]


def _reordered_copy(full: Path, out: Path) -> list[str]:
    """A copy of ``full`` whose cache.json lists its classes in reverse order, each video
    keeping its class name. Returns the names in ``full``'s order."""
    shutil.copytree(full, out)
    meta = json.loads((out / "cache.json").read_text())
    names = meta["class_names"]
    new = names[::-1]
    meta["samples"] = [[p, new.index(names[y])] for p, y in meta["samples"]]
    meta["class_names"] = new
    (out / "cache.json").write_text(json.dumps(meta))
    return names


def test_classes_in_another_order_are_mapped_by_name(full, tmp_path: Path) -> None:
    from spool.train.builders import build_datasets
    from spool.train.config import TrainConfig

    names = _reordered_copy(full, tmp_path / "reordered")
    _, val, train_names = build_datasets(TrainConfig(
        out_dir=str(tmp_path / "run"), train_cache=str(full),
        val_cache=str(tmp_path / "reordered")), None)
    assert train_names == names and val.class_names == names
    assert val.samples == CachedTokenDataset(full).samples
    _reordered_copy(full, tmp_path / "other")
    meta = json.loads((tmp_path / "other" / "cache.json").read_text())
    meta["class_names"][1] = "nonesuch"
    (tmp_path / "other" / "cache.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"val_cache: classes \['nonesuch'\] are not among "
                                         "the training classes"):
        build_datasets(TrainConfig(out_dir=str(tmp_path / "run"), train_cache=str(full),
                                   val_cache=str(tmp_path / "other")), None)


@pytest.mark.parametrize("kind", ["clips", "frames"])
def test_tokens_a_float16_cache_cannot_hold_are_refused_naming_the_video(
        tmp_path: Path, kind: str) -> None:
    """Tokens past float16's range were stored as inf (numpy warned of an overflow in a
    cast); the cache was called complete and training failed later with `tokens: expected
    finite values`, naming neither the cache nor the video."""
    import torch

    from spool.data.frame_cache import build_frame_cache
    from spool.data.segmentation import SegmentationSample
    from spool.video.samplers import FpsSampler

    loud = FrameEncoderModel(image_size=32, backbone_config=TINY_MODEL["backbone_config"])
    dataset = _dataset(loud)
    first = dataset.samples[0].path

    def build(out: Path, dtype: str):
        if kind == "clips":
            return build_cache(loud, dataset, out, batch_size=4, dtype=dtype)
        return build_frame_cache(loud, [SegmentationSample("v", first, segments=((0, 1, 0),))],
                                 ["a"], out, FpsSampler(4), dtype=dtype)

    with torch.no_grad():
        loud.backbone.model.layernorm.weight.mul_(1e6)
    with pytest.raises(ValueError, match=rf"{first}: the model's outputs reach .*, past "
                       r"float16's largest value 65504: .* \(spool cache --dtype float32; "
                       r"dtype='float32'\)"):
        build(tmp_path / "half", "float16")
    assert not (tmp_path / "half" / "cache.json").exists()
    assert build(tmp_path / "full", "float32").cached >= 1  # float32 holds them
    with torch.no_grad():
        loud.backbone.model.layernorm.weight[0] = float("nan")
    with pytest.raises(ValueError, match=f"{first}: the model gave NaN or infinite values"):
        build(tmp_path / "nan", "float32")


def test_a_damaged_cache_with_nan_tokens_names_the_cache_and_video(model, full,
                                                                   tmp_path: Path) -> None:
    """A NaN in a cache's tokens surfaced after an epoch of training as the model's
    `tokens: expected finite values`, naming neither the cache nor the video."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from spool.data.frame_cache import FrameTokenDataset, build_frame_cache
    from spool.data.segmentation import SegmentationSample
    from spool.video.samplers import FpsSampler

    copy = tmp_path / "clips"
    shutil.copytree(full, copy)
    dataset = CachedTokenDataset(copy)
    tokens = np.load(copy / "tokens.npy", mmap_mode="r+")
    tokens[dataset.rows[1], 0, 0, 0, 0] = np.nan
    tokens.flush()
    del tokens
    assert torch.isfinite(dataset[0]["tokens"]).all()
    with pytest.raises(SpoolLoadError, match=rf"{copy}: the tokens of {dataset.samples[1].path} "
                       r"\(row \d+, view 0\) hold NaN or infinite values: the cache is damaged "
                       rf".*; delete {copy} and make it again"):
        dataset[1]

    video = _dataset(model).samples[0].path
    frames = build_frame_cache(model, [SegmentationSample("v", video, segments=((0, 1, 0),))],
                               ["a"], tmp_path / "frames", FpsSampler(4)).path
    assert torch.isfinite(FrameTokenDataset(frames)[0]["tokens"]).all()
    (file,) = (frames / "videos").iterdir()
    with safe_open(str(file), framework="pt") as f:
        saved, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    saved["tokens"][0, 0, 0] = float("inf")
    save_file(saved, file, metadata=metadata)
    with pytest.raises(SpoolLoadError, match=rf"{file}: the tokens of v hold NaN or infinite "
                                             r"values: .*; delete it and run the spool cache"):
        FrameTokenDataset(frames)[0]


@pytest.mark.parametrize("kind", ["clips", "frames"])
def test_a_backbone_cast_to_bfloat16_makes_its_own_tokens(tmp_path: Path, kind: str) -> None:
    """The weights' digest hashes bf16 values as float32: a bf16 copy of a backbone whose
    float32 weights bf16 holds exactly reused the float32 tokens (up to 0.03 apart)."""
    import torch

    from spool.data.frame_cache import build_frame_cache
    from spool.data.segmentation import SegmentationSample
    from spool.video.samplers import FpsSampler

    encoder = FrameEncoderModel(image_size=32, backbone_config=TINY_MODEL["backbone_config"])
    with torch.no_grad():
        for p in encoder.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    dataset = _dataset(encoder)

    def build(model):
        if kind == "clips":
            return build_cache(model, dataset, tmp_path / "c", batch_size=4)
        return build_frame_cache(model, [SegmentationSample(
            "v", dataset.samples[0].path, segments=((0, 1, 0),))], ["a"], tmp_path / "c",
            FpsSampler(4), dtype="float32")

    assert not build(encoder).reused
    assert build(encoder).reused
    assert not build(encoder.to(torch.bfloat16)).reused
    meta = json.loads((tmp_path / "c" / "cache.json").read_text())
    assert meta["weights_dtype"] == "bfloat16"


def test_weights_below_float32_hash_as_the_float32_they_load_as() -> None:
    """float8 weights (now loadable) hashed as their bytes: a cache made by the model they
    load into was refused as another backbone's."""
    import torch

    from spool.models.weights import weights_digest

    w = torch.randn(4, 4)
    for dtype in (torch.float16, torch.bfloat16, torch.float8_e4m3fn):
        assert weights_digest({"w": w.to(dtype)}) == weights_digest({"w": w.to(dtype).float()})
    assert weights_digest({"w": w}) != weights_digest({"w": w.double()})
