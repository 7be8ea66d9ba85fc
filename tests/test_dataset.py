"""Annotation files, class folders, clip sampling and augmentation of VideoClipDataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import tiny_video_dataset

from spool.data.dataset import (
    VideoClipDataset,
    read_annotation_file,
    read_annotations,
    scan_class_folders,
)
from spool.video import VideoReader, read_video_frames
from spool.video.samplers import ClipSampler, UniformSampler, clip_sampler, make_sampler
from spool.video.transforms import FramePreprocessing, RandomResizedCrop


def test_annotation_file_with_class_names() -> None:
    root = tiny_video_dataset()
    samples, names = read_annotation_file(root / "train.txt")
    assert names == (root / "classes.txt").read_text().split()  # classes.txt beside the file
    assert len(samples) == 16
    first = (root / "train.txt").read_text().splitlines()[0].split()
    assert samples[0].path == str(root / first[0]) and names[samples[0].label] == first[1]


def test_annotation_file_with_integer_labels(tmp_path: Path) -> None:
    root = tiny_video_dataset()
    named, names = read_annotation_file(root / "train.txt")
    lines = [f"{s.path} {s.label}" for s in named]  # absolute paths, integer labels
    (tmp_path / "ints.txt").write_text("# a comment\n\n" + "\n".join(lines) + "\n")
    samples, int_names = read_annotation_file(tmp_path / "ints.txt")
    assert samples == named
    assert int_names == [str(i) for i in range(len(names))]
    samples, given = read_annotation_file(tmp_path / "ints.txt", class_names=names)
    assert given == names and samples == named


def test_class_folders_match_annotation_file() -> None:
    root = tiny_video_dataset()
    samples, names = scan_class_folders(root / "videos")
    assert names == sorted(names) and len(names) == 4
    from_file, file_names = read_annotations(root / "train.txt", names)
    from_val, _ = read_annotations(root / "val.txt", names)
    assert sorted(samples, key=lambda s: s.path) == sorted(from_file + from_val,
                                                           key=lambda s: s.path)


@pytest.mark.parametrize("bad, message", [
    ("lonely_path_without_label", "line 3: expected 'path label'"),
    ("videos/x.mkv not_a_class", "line 3: unknown class 'not_a_class'"),
    ("videos/x.mkv 9", "line 3: label 9 is out of range"),
    ("videos/missing.mkv left_to_right", "line 3: video file not found"),
])
def test_bad_line_reports_its_line_number(tmp_path: Path, bad: str, message: str) -> None:
    root = tiny_video_dataset()
    good = (root / "train.txt").read_text().splitlines()[:2]
    good = [f"{root / p} {label}" for p, label in (line.split() for line in good)]
    path = tmp_path / "ann.txt"
    path.write_text("\n".join([*good, bad]) + "\n")
    (tmp_path / "classes.txt").write_text((root / "classes.txt").read_text())
    with pytest.raises(ValueError, match=message) as err:
        read_annotation_file(path)
    assert str(path) in str(err.value)


def test_one_video_under_two_labels_is_an_error(tmp_path: Path, spool_log) -> None:
    """A video listed with two labels trained under both (and was scored twice): the lines
    are named. Listed twice with one label, it is kept (a sample per line), with a warning."""
    root = tiny_video_dataset()
    named, names = read_annotation_file(root / "train.txt")
    a, b = named[0], named[1]
    other = names[(a.label + 1) % len(names)]
    path = tmp_path / "ann.txt"
    path.write_text(f"{a.path} {names[a.label]}\n{b.path} {names[b.label]}\n"
                    f"{Path(a.path).parent / '.' / Path(a.path).name} {other}\n")
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    with pytest.raises(ValueError, match=rf"ann.txt, lines 1 and 3: .* is labelled "
                                         rf"'{names[a.label]}' and '{other}'"):
        read_annotation_file(path)
    path.write_text(f"{a.path} {names[a.label]}\n{b.path} {names[b.label]}\n"
                    f"{a.path} {names[a.label]}\n")
    samples, _ = read_annotation_file(path)
    assert samples == [a, b, a]
    assert "1 line(s) list a video listed before (lines 1 and 3" in spool_log.text


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    root = tiny_video_dataset()
    named, names = read_annotation_file(root / "train.txt")
    lines = "".join(f"{s.path} {names[s.label]}\n" for s in named)
    (tmp_path / "ann.txt").write_text(lines, encoding="utf-8-sig")  # as Windows editors save
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n", encoding="utf-8-sig")
    samples, got = read_annotation_file(tmp_path / "ann.txt")
    assert got == names and samples == named


def test_negative_label_without_class_names_is_an_error(tmp_path: Path) -> None:
    root = tiny_video_dataset()
    named, _ = read_annotation_file(root / "train.txt")
    path = tmp_path / "ints.txt"
    path.write_text(f"{named[0].path} 0\n{named[1].path} -1\n")
    with pytest.raises(ValueError, match=r"ints.txt, line 2: label -1 is negative"):
        read_annotation_file(path)


def test_training_clips_come_from_the_samplers() -> None:
    """The dataset's clips are the video module's samplers: uniform centres, strided clips at
    a start in [0, 1] of the free range (short videos repeat the last frame), and one
    randomly placed clip when given an rng."""
    samples, names = read_annotations(tiny_video_dataset() / "train.txt")
    for sampler in (UniformSampler(4), clip_sampler(2, 3, num_clips=2)):
        ds = VideoClipDataset(samples, names, sampler, FramePreprocessing(24))
        for i in (0, 5):
            with VideoReader(samples[i].path) as reader:
                n = len(reader)
            clips = [torch.from_numpy(read_video_frames(samples[i].path, clip)[0])
                     for clip in sampler(n)]
            want = torch.stack([FramePreprocessing(24)(c) for c in clips])
            assert torch.equal(ds[i]["video"], want.squeeze(0)), (sampler, i)
    for n in (5, 8, 16, 37):
        assert UniformSampler(8)(n) == make_sampler("uniform", num_frames=8)(n)
    strided = ClipSampler(4, frame_stride=3)
    assert strided.clip_at(20, 0.0) == [0, 3, 6, 9]
    assert strided.clip_at(20, 1.0) == [10, 13, 16, 19]
    assert strided(5) == [[0, 3, 4, 4]]  # short video, centred start
    assert clip_sampler(4, 3, num_clips=3)(20) == [[0, 3, 6, 9], [5, 8, 11, 14],
                                                   [10, 13, 16, 19]]
    rng = np.random.default_rng(0)
    jittered = UniformSampler(4)(40, rng=rng)[0]
    assert [i // 10 for i in jittered] == [0, 1, 2, 3]  # one frame per segment


def test_dataset_items_and_augmentation_are_reproducible() -> None:
    samples, names = read_annotations(tiny_video_dataset() / "train.txt")
    eval_ds = VideoClipDataset(samples, names, clip_sampler(4), FramePreprocessing(24))
    item = eval_ds[3]
    assert item["video"].shape == (4, 24, 24, 3) and item["video"].dtype == torch.uint8
    assert item["label"] == samples[3].label and item["index"] == 3
    multi = VideoClipDataset(samples, names, clip_sampler(4, num_clips=3),
                             FramePreprocessing(24))[3]
    assert multi["video"].shape == (3, 4, 24, 24, 3)

    train_ds = VideoClipDataset(samples, names, clip_sampler(4), FramePreprocessing(24),
                                RandomResizedCrop(hflip=True), seed=5)
    a = train_ds[3]["video"]
    assert torch.equal(a, train_ds[3]["video"])  # a function of (seed, epoch, index)
    train_ds.set_epoch(1)
    assert not torch.equal(a, train_ds[3]["video"])  # another epoch, another crop
    train_ds.set_epoch(0)
    assert torch.equal(a, train_ds[3]["video"])


def test_dataset_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="num_frames"):
        clip_sampler(0)
    with pytest.raises(ValueError, match="crop_scale"):
        RandomResizedCrop(crop_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="resize_mode"):
        FramePreprocessing(24, resize_mode="stretch")


def test_every_command_finds_the_same_video_files(tmp_path: Path) -> None:
    """spool extract folders, class folders and MS-TCN videos/ take the same extensions (a
    camcorder's .MTS files were left out of folders without a word)."""
    from spool.data.segmentation import read_ms_tcn
    from spool.extract_inputs import collect_inputs

    names = ["a.3gp", "b.GIF", "c.ts", "d.wmv", "e.mp4", "f.MTS", "g.m2ts", "h.vob", "i.mxf"]
    (tmp_path / "videos" / "cls").mkdir(parents=True)
    for name in [*names, "notes.txt"]:
        (tmp_path / "videos" / "cls" / name).write_bytes(b"")
    by_extract = sorted(p.name for p, _ in collect_inputs([tmp_path / "videos"]))
    by_folders = sorted(Path(s.path).name for s in scan_class_folders(tmp_path / "videos")[0])
    assert by_extract == by_folders == names
    (tmp_path / "mapping.txt").write_text("0 bg\n")
    (tmp_path / "groundTruth").mkdir()
    (tmp_path / "splits").mkdir()
    for name in names:
        stem = Path(name).stem
        (tmp_path / "videos" / name).write_bytes(b"")
        (tmp_path / "groundTruth" / f"{stem}.txt").write_text("bg\n")
    (tmp_path / "splits" / "all.bundle").write_text(
        "".join(f"{Path(n).stem}.txt\n" for n in names))
    samples, _ = read_ms_tcn(tmp_path, "all")
    assert sorted(Path(s.video).name for s in samples) == names


def test_a_datasets_root_is_not_read_as_one_class(tmp_path: Path) -> None:
    """`--train-data clips` (the root: train.txt, classes.txt, videos/) read videos/ as the
    only class: a one-class classifier at top-1 100%, train and val videos mixed, exit 0."""
    root = tiny_video_dataset()
    with pytest.raises(ValueError, match=r"1 class folder\(s\) \['videos'\] beside annotation "
                                         r"files; did you mean .*train\.txt\? \(a folder of "):
        scan_class_folders(root)
    samples, names = scan_class_folders(root / "videos" / "..", ["videos"])  # named: allowed
    assert names == ["videos"] and samples


def test_num_frames_is_none_for_a_whole_video_sampler() -> None:
    """Any sampler of spool.video.samplers serves, but num_frames raised AttributeError for
    those that sample the whole video."""
    samples, names = read_annotations(tiny_video_dataset() / "val.txt")
    pre = FramePreprocessing(32)
    assert VideoClipDataset(samples, names, make_sampler("fps", target_fps=2),
                            pre).num_frames is None
    assert VideoClipDataset(samples, names, clip_sampler(4, None), pre).num_frames == 4
