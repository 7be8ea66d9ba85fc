"""Per-frame labels by timestamp, the MS-TCN layout, segment CSVs and the frame cache."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import tiny_config
from safetensors import safe_open

from spool.data.frame_cache import (
    FrameTokenDataset,
    VideoFrameDataset,
    build_frame_cache,
    collate_frames,
)
from spool.data.segmentation import (
    IGNORE_INDEX,
    read_mapping,
    read_ms_tcn,
    read_segmentation,
    read_segments_csv,
)
from spool.models.frame_encoder import FrameEncoderModel
from spool.video import VideoReader, write_video
from spool.video.samplers import FpsSampler


@pytest.fixture(scope="module")
def ntsc_video(tmp_path_factory):
    """3 s at 29.97 fps (30000/1001), frames numbered in their pixels."""
    root = tmp_path_factory.mktemp("ntsc")
    frames = np.zeros((90, 32, 32, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(90, dtype=np.uint8)[:, None, None]
    path = write_video(root / "clip.mkv", frames, fps=Fraction(30000, 1001), codec="ffv1")
    (root / "segments.csv").write_text("video,start_s,end_s,label\nclip.mkv,0,1.0,a\n"
                                       "clip.mkv,1.0,2.0,b\nclip.mkv,2.0,3.1,c\n")
    return root, path


def test_labels_follow_each_sampled_frames_own_time(ntsc_video):
    root, path = ntsc_video
    (sample,), names = read_segments_csv(root / "segments.csv")
    assert names == ["a", "b", "c"]
    with VideoReader(path) as reader:
        info = reader.info()
        indices = FpsSampler(5)(info.num_frames, info.fps)[0]
        _, stamps = reader.get(indices)
    labels = sample.labels_at(indices, stamps, info.start_time)
    expected = np.searchsorted([1.0, 2.0], stamps - info.start_time, side="right")
    assert labels.tolist() == expected.tolist()
    # Frame 5 at 5 fps is source frame 29, shown at 0.968 s: still 'a'. Assuming the target
    # rate (5 / 5 fps = 1.0 s) would say 'b'.
    assert indices[5] == 29 and labels[5] == 0
    naive = np.searchsorted([1.0, 2.0], np.arange(len(indices)) / 5, side="right")
    assert labels.tolist() != naive.tolist()


def test_ms_tcn_layout(tmp_path, ntsc_video):
    _, path = ntsc_video
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "clip.mkv").write_bytes(path.read_bytes())
    (tmp_path / "mapping.txt").write_text("0 bg\n1 pour\n")
    (tmp_path / "groundTruth").mkdir()
    gt = ["bg"] * 40 + ["pour"] * 45  # 5 frames short: those stay unlabelled
    (tmp_path / "groundTruth" / "clip.txt").write_text("\n".join(gt) + "\n")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.split1.bundle").write_text("clip.txt\n")
    (sample,), names = read_ms_tcn(tmp_path, "train.split1")
    assert names == ["bg", "pour"] and sample.name == "clip"
    labels = sample.labels_at([0, 39, 40, 84, 85, 89], [0] * 6)
    assert labels.tolist() == [0, 0, 1, 1, IGNORE_INDEX, IGNORE_INDEX]
    # A model's classes in another order (as spool eval and --classes-from pass them): the
    # labels are numbered in the model's order, by name.
    (remapped,), names = read_segmentation(tmp_path, "train.split1", ["pour", "x", "bg"])
    assert names == ["pour", "x", "bg"]
    assert remapped.labels_at([0, 39, 40, 84, 85], [0] * 5).tolist() == [2, 2, 0, 0,
                                                                          IGNORE_INDEX]
    with pytest.raises(ValueError, match=r"classes \['bg'\] of its mapping.txt are not"):
        read_segmentation(tmp_path, "train.split1", ["pour", "stir"])


@pytest.mark.parametrize("text,message", [
    ("video,start,end,label\nclip.mkv,0,1,a\n", "header"),
    ("video,start_s,end_s,label\nclip.mkv,2,1,a\n", r"line 2: expected 0 <= start_s < end_s"),
    ("video,start_s,end_s,label\nclip.mkv,x,1,a\n", "line 2: start_s/end_s must be numbers"),
    # A short row gave a TypeError from sorting None; extra fields passed silently.
    ("video,start_s,end_s,label\nclip.mkv,0,1,a\nclip.mkv,1\n", "line 3: expected 4 fields"),
    ("video,start_s,end_s,label\nclip.mkv,0,1,a,b\n", "line 2: expected 4 fields"),
    # Overlaps were taken, the later segment winning inside them.
    ("video,start_s,end_s,label\nclip.mkv,0,2,a\n./clip.mkv,1,3,b\n",
     "segments 0.0-2.0 s and 1.0-3.0 s of clip.mkv overlap"),
    # An empty label became a class named ''.
    ("video,start_s,end_s,label\nclip.mkv,0,1,a\nclip.mkv,1,2, \n", "line 3: the label is empty"),
])
def test_bad_segment_csv(tmp_path, text, message):
    (tmp_path / "s.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_segments_csv(tmp_path / "s.csv")


def test_spaces_around_a_segments_csv_label_are_not_part_of_it(tmp_path):
    """`a.mkv,0,1.5, walk` (a space after the comma) made a class " walk" beside "walk"."""
    (tmp_path / "a.mkv").write_bytes(b"")
    (tmp_path / "s.csv").write_text("video,start_s,end_s,label\na.mkv,0,1.5,walk\n"
                                    "a.mkv,1.5,3, walk \n")
    (sample,), names = read_segments_csv(tmp_path / "s.csv")
    assert names == ["walk"] and [c for _, _, c in sample.segments] == [0, 0]


def test_a_class_named_twice_in_mapping_txt_is_an_error(tmp_path):
    """`0 walk` and `1 walk` were taken: every walk frame labelled 1, and the train run then
    refused the class names without naming mapping.txt."""
    (tmp_path / "mapping.txt").write_text("0 walk\n1 run\n2 walk\n")
    with pytest.raises(ValueError, match=r"mapping.txt, lines 1 and 3: the class 'walk' is "
                                         r"named twice"):
        read_mapping(tmp_path / "mapping.txt")


def test_other_columns_of_a_segments_csv_are_ignored(tmp_path):
    """spool extract's NAME.segments.csv has a score column: with a video column added it
    was refused ('found video,start_s,end_s,label,score'), though the README said it reads
    back as its labels."""
    (tmp_path / "a.mkv").write_bytes(b"")  # read only when training
    (tmp_path / "s.csv").write_text("score,video,start_s,end_s,label\n0.9,a.mkv,0,1.5,walk\n"
                                    "0.8,a.mkv,1.5,3,run\n")
    (tmp_path / "plain.csv").write_text("video,start_s,end_s,label\na.mkv,0,1.5,walk\n"
                                        "a.mkv,1.5,3,run\n")
    assert read_segments_csv(tmp_path / "s.csv") == read_segments_csv(tmp_path / "plain.csv")
    (tmp_path / "short.csv").write_text("video,start_s,end_s,label,score\na.mkv,0,1,a\n")
    with pytest.raises(ValueError, match=r"line 2: expected 5 fields \(video,start_s,"):
        read_segments_csv(tmp_path / "short.csv")


def test_a_class_only_the_held_out_csv_has_is_listed_in_classes_txt(tmp_path):
    """Found walking the README through: a validation CSV with a class the training CSV
    lacks was refused, with no way to give the classes (clip lists have a classes.txt)."""
    for name in ("a.mkv", "b.mkv"):
        (tmp_path / name).write_bytes(b"")  # read only when training
    (tmp_path / "train.csv").write_text("video,start_s,end_s,label\na.mkv,0,1,walk\n")
    (tmp_path / "test.csv").write_text("video,start_s,end_s,label\nb.mkv,0,1,run\n")
    _, names = read_segments_csv(tmp_path / "train.csv")
    with pytest.raises(ValueError, match=r"line 2: unknown class 'run'; the classes are "
                                         r"\['walk'\] \(a classes.txt beside the training CSV"):
        read_segments_csv(tmp_path / "test.csv", names)
    (tmp_path / "classes.txt").write_text("walk\nrun\n")
    samples, names = read_segments_csv(tmp_path / "train.csv")
    assert names == ["walk", "run"]  # in the file's order, not sorted
    held_out, _ = read_segments_csv(tmp_path / "test.csv", names)
    assert held_out[0].segments == ((0.0, 1.0, 1),)
    (tmp_path / "classes.txt").write_text("cat\ndog\n")  # another dataset's, in the way
    with pytest.raises(ValueError, match=f"the classes are \\['cat', 'dog'\\] \\(from "
                                         f"{tmp_path / 'classes.txt'}\\)"):
        read_segments_csv(tmp_path / "train.csv")


def test_frame_cache_and_video_crops_agree(tmp_path, ntsc_video):
    root, _ = ntsc_video
    samples, names = read_segments_csv(root / "segments.csv")
    encoder = FrameEncoderModel(tiny_config()).eval()
    sampler = FpsSampler(10)
    cache = build_frame_cache(encoder, samples, names, tmp_path / "cache", sampler,
                              dtype="float32").path
    tokens_ds = FrameTokenDataset(cache, crop_frames=12, augment=True, seed=3)
    video_ds = VideoFrameDataset(samples, names, sampler, encoder.config.preprocessing(),
                                 crop_frames=12, augment=True, seed=3)
    cached, decoded = tokens_ds[0], video_ds[0]
    assert cached["tokens"].shape == (12, 17, 24) and torch.equal(cached["labels"],
                                                                  decoded["labels"])
    with torch.no_grad():
        torch.testing.assert_close(cached["tokens"], encoder(decoded["video"][None])[0])
    tokens_ds.set_epoch(1)
    assert not torch.equal(tokens_ds[0]["tokens"], cached["tokens"])  # another crop
    whole = FrameTokenDataset(cache)[0]  # evaluation: the whole video
    assert whole["tokens"].shape[0] == 31 and (whole["labels"] >= 0).all()  # 3.003 s at 10 fps
    reordered = FrameTokenDataset(cache)  # a model with the classes in another order
    reordered.use_class_names(names[::-1], "cache", "the model's classes")
    assert torch.equal(reordered[0]["labels"], len(names) - 1 - whole["labels"])
    video_ds.use_class_names(names[::-1], "data", "the model's classes")  # videos alike
    assert torch.equal(video_ds[0]["labels"], len(names) - 1 - decoded["labels"])
    stamp = cache / "videos" / "clip.safetensors"
    with safe_open(str(stamp), "pt") as f:  # redone when the preprocessing rules change
        assert json.loads(f.metadata()["settings"])["preprocessing"]["revision"] == 2
    before = stamp.stat().st_mtime_ns
    build_frame_cache(encoder, samples, names, cache, sampler, dtype="float32")
    assert stamp.stat().st_mtime_ns == before  # resumed: nothing redone
    # Padded to the longest, not cut to the shortest (which dropped the end of every longer
    # video: 41% of the frames trained at batch size 8, the helper's count), with a mask.
    batch = collate_frames([whole, cached])
    assert batch["tokens"].shape == (2, 31, 17, 24) and batch["labels"].shape == (2, 31)
    assert batch["mask"].sum(1).tolist() == [31, 12]
    assert torch.equal(batch["tokens"][1, :12], cached["tokens"])
    assert (batch["labels"][1, 12:] == IGNORE_INDEX).all() and not batch["tokens"][1, 12:].any()
    from spool.models.frame_classification import SpoolForFrameClassification

    model = SpoolForFrameClassification(tiny_config(hidden_size=24, num_spatial_tokens=17),
                                        with_backbone=False, class_names=names).eval()
    with torch.no_grad():
        both = model(tokens=batch["tokens"], labels=batch["labels"], mask=batch["mask"])
        alone = model(tokens=cached["tokens"][None])
    torch.testing.assert_close(both.logits[1, :12], alone.logits[0], atol=1e-5, rtol=1e-5)


def test_a_frame_cache_takes_any_model_with_a_backbone(tmp_path, ntsc_video):
    """``spool cache --task frames --init`` takes a Spool, a clip or frame classifier (a clip
    classifier raised AttributeError: no ``backbone``); their backbone's tokens are cached."""
    from spool.models.classification import SpoolForVideoClassification

    root, _ = ntsc_video
    samples, names = read_segments_csv(root / "segments.csv")
    torch.manual_seed(0)
    classifier = SpoolForVideoClassification(tiny_config(class_names=["x", "y"])).eval()
    got = build_frame_cache(classifier, samples, names, tmp_path / "c", FpsSampler(10),
                            dtype="float32").path
    want = build_frame_cache(classifier.spool, samples, names, tmp_path / "s", FpsSampler(10),
                             dtype="float32").path
    assert torch.equal(FrameTokenDataset(got)[0]["tokens"], FrameTokenDataset(want)[0]["tokens"])


def test_segment_boundaries_hold_for_millisecond_timestamps() -> None:
    """Matroska stores 155/15 s as 10.333 s: with a 1e-6 s tolerance that frame took the label
    of the segment before one starting at 10.3333 s (make_segmentation_dataset's own CSV and
    groundTruth disagreed on one boundary frame per video)."""
    from spool.data.segmentation import SegmentationSample

    sample = SegmentationSample("v", "v.mkv", segments=((0.0, 10.3333, 0), (10.3333, 20.0, 1)))
    stamps = [10.266, 10.333, 10.4, 19.999, 20.0]  # 154/15, 155/15, 156/15 in ms; the end
    assert sample.labels_at(range(5), stamps).tolist() == [0, 1, 1, 1, IGNORE_INDEX]


def test_labels_that_do_not_fit_the_video_are_reported(tmp_path, ntsc_video, spool_log):
    """Ground truth at another frame rate (180 lines for 90 frames) lost its second half,
    segments in frame numbers instead of seconds were dropped past the end, and a CSV's
    segments past the end or with a quarter of the video between them, without a word."""
    import logging

    from spool.data.segmentation import SegmentationSample, warn_if_labels_disagree

    _, video = ntsc_video
    spool_log.set_level(logging.WARNING, logger="spool")
    doubled = SegmentationSample("clip", str(video), frame_labels=np.zeros(180, np.int64))
    in_frames = SegmentationSample("clip2", str(video) + "?", segments=((0, 30, 0), (30, 90, 1)))
    fits = SegmentationSample("clip3", str(video) + "!", frame_labels=np.zeros(89, np.int64))
    # A user's CSV: past the end (another cut of the video), or a quarter left unlabelled.
    past = SegmentationSample("clip4", str(video) + "#", segments=((0, 2, 0), (2, 4.2, 1)))
    gaps = SegmentationSample("clip5", str(video) + "%", segments=((0, 1, 0), (1.5, 2.2, 1)))
    near = SegmentationSample("clip6", str(video) + "&", segments=((0.2, 1, 0), (1, 3.3, 1)))
    for sample in (doubled, in_frames, fits, doubled, past, gaps, near):
        warn_if_labels_disagree(sample, 90, 3.003)
    assert [r.getMessage().split(": ", 2)[-1] for r in spool_log.records] == [
        "its ground truth has 180 lines for 90 frames (annotated at another frame rate?)",
        "a segment starts at 30 s, after the video's end (3.00 s; segments are in seconds)",
        "a segment ends at 4.2 s, 1.20 s after the video's end (3.00 s)",
        "its segments cover 1.70 s of its 3.00 s; the frames outside them are unlabelled, "
        "left out of the loss and the scores (a background class labels them)"]


def test_video_crops_are_decoded_a_chunk_at_a_time_alike(ntsc_video, monkeypatch):
    from spool.data import frame_cache

    root, _ = ntsc_video
    samples, names = read_segments_csv(root / "segments.csv")
    pre = FrameEncoderModel(tiny_config()).config.preprocessing()
    whole = VideoFrameDataset(samples, names, FpsSampler(10), pre)[0]
    monkeypatch.setattr(frame_cache, "DECODE_CHUNK_FRAMES", 7)
    chunked = VideoFrameDataset(samples, names, FpsSampler(10), pre)[0]
    assert torch.equal(chunked["video"], whole["video"])
    assert torch.equal(chunked["labels"], whole["labels"])


def test_segments_rounded_apart_or_given_twice_are_taken(tmp_path):
    (tmp_path / "clip.mkv").touch()
    (tmp_path / "s.csv").write_text("video,start_s,end_s,label\nclip.mkv,0,3.3334,a\n"
                                    "clip.mkv,3.3333,5,b\n./clip.mkv,3.3333,5,b\n")
    samples, _ = read_segments_csv(tmp_path / "s.csv")
    assert len(samples) == 1 and len(samples[0].segments) == 2


def test_a_segments_csv_naming_a_missing_video_is_refused_with_its_line(tmp_path):
    """A typo in a video's name: training went on with the other videos in its place
    (a warning); a clips list refuses it, naming the line."""
    (tmp_path / "clip.mkv").touch()
    (tmp_path / "s.csv").write_text("video,start_s,end_s,label\nclip.mkv,0,3,a\n"
                                    "clip.mkv,3,5,b\ncilp.mkv,0,5,b\n")
    with pytest.raises(ValueError, match=r"s\.csv, line 4: video file not found: .*cilp\.mkv"):
        read_segments_csv(tmp_path / "s.csv")


def test_a_csv_without_classes_txt_says_the_classes_it_found(tmp_path, ntsc_video, spool_log,
                                                             monkeypatch):
    """A typo ('walkk') became a class of its own without a word: the classes taken from the
    labels are said, with their segment counts, where a classes.txt would have refused it."""
    import logging

    root, _ = ntsc_video
    csv_path = tmp_path / "train.csv"
    csv_path.write_text(f"video,start_s,end_s,label\n{root / 'clip.mkv'},0,1,walk\n"
                        f"{root / 'clip.mkv'},1,2,idle\n{root / 'clip.mkv'},2,3,walkk\n")
    spool_log.set_level(logging.INFO, logger="spool")
    _, names = read_segments_csv(csv_path)
    assert names == ["idle", "walk", "walkk"]
    (said,) = [r.getMessage() for r in spool_log.records]
    assert said.endswith("classes from its labels (no classes.txt beside it, which would "
                         "refuse any other): idle (1 segment), walk (1 segment), walkk "
                         "(1 segment)")
    spool_log.clear()
    monkeypatch.setenv("RANK", "1")  # under torchrun: said by rank 0 alone
    read_segments_csv(csv_path)
    assert spool_log.records == []
    (tmp_path / "classes.txt").write_text("idle\nwalk\n")
    with pytest.raises(ValueError, match="line 4: unknown class 'walkk'"):
        read_segments_csv(csv_path)
    (tmp_path / "bad.csv").write_text("video,start,end,label\nclip.mkv,0,1,a\n")
    with pytest.raises(ValueError, match="rows, found 'video,start,end,label'$"):
        read_segments_csv(tmp_path / "bad.csv")


def test_a_bundle_line_without_its_ground_truth_is_named(tmp_path, ntsc_video):
    """A bare '[Errno 2] No such file or directory: .../groundTruth/x.txt' named neither the
    bundle nor its line."""
    _, path = ntsc_video
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "clip.mkv").write_bytes(path.read_bytes())
    (tmp_path / "mapping.txt").write_text("0 bg\n")
    (tmp_path / "groundTruth").mkdir()
    (tmp_path / "groundTruth" / "clip.txt").write_text("bg\n" * 90)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.split1.bundle").write_text("clip.txt\n\nMegamind.txt\n")
    with pytest.raises(ValueError, match=r"train.split1.bundle, line 3: lists 'Megamind.txt', "
                                         r"but there is no ground-truth file .*Megamind.txt"):
        read_ms_tcn(tmp_path, "train.split1")


def test_a_video_is_noted_in_the_first_epoch_of_a_run_even_resumed(ntsc_video, monkeypatch,
                                                                    spool_log) -> None:
    """DataLoader workers start afresh each epoch, so a video's notes (labels that do not fit
    it, frames repeated by an fps above its rate) came again every epoch; said in epoch 0
    only, a run resumed at a later epoch never said them. Said in the run's first epoch."""
    import logging
    import pickle

    from spool import runtime
    from spool.data.segmentation import SegmentationSample

    _, video = ntsc_video
    sample = SegmentationSample("clip", str(video), segments=((0.0, 9.0, 0),))  # past its end
    pre = FrameEncoderModel(tiny_config()).config.preprocessing()
    dataset = VideoFrameDataset([sample], ["a"], FpsSampler(60), pre)  # 29.97 fps video
    spool_log.set_level(logging.WARNING, logger="spool")
    said = []
    for epoch in (3, 4, 5):  # resumed at epoch 3; each epoch's worker gets a fresh copy
        monkeypatch.setattr(runtime, "_said", set())
        dataset.set_epoch(epoch)
        pickle.loads(pickle.dumps(dataset))[0]
        said.append(len(spool_log.records))
    assert said == [2, 2, 2]  # both notes in epoch 3, none after
    assert "repeats frames" in spool_log.records[0].getMessage()
    assert "labels do not fit the video" in spool_log.records[1].getMessage()
