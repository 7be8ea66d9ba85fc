"""Defects found in review, one test each (cache keys, interrupted outputs, sampling).

Each test states what is expected and why; a test of a defect not fixed yet is marked
``xfail(strict=True)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from spool.data.frame_cache import FrameTokenDataset, VideoFrameDataset, build_frame_cache
from spool.data.segmentation import SegmentationSample, read_segments_csv
from spool.models.frame_encoder import FrameEncoderModel
from spool.video import write_video
from spool.video.samplers import FpsSampler, SlidingWindowSampler
from spool.video.transforms import FramePreprocessing


class Killed(BaseException):
    """Stands for the process dying at this point (not an ``Exception``: nothing handles it)."""


def _video(path: Path, seed: int, n: int = 12) -> Path:
    frames = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return write_video(path, frames, fps=10, codec="ffv1")


@pytest.fixture(scope="module")
def encoder() -> FrameEncoderModel:
    torch.manual_seed(0)
    return FrameEncoderModel(tiny_config()).eval()


# --- 1. cache invalidation ---------------------------------------------------------------------

def test_frame_cache_redoes_a_video_whose_labels_changed(tmp_path, encoder):
    """A frame cache stores each video's labels beside its tokens, so the labels are part of
    what the cached file depends on: after the annotations are corrected, re-running
    ``build_frame_cache`` into the same folder must store the new labels (module docstring:
    "Videos already cached with the same settings are kept" -- the labels are not the same).
    The per-video key held sampler, dtype, weights and frame-encoder fields, not the labels,
    so the stale labels were kept and training used them."""
    video = _video(tmp_path / "clip.mkv", 0)
    out = tmp_path / "cache"
    before = SegmentationSample("clip", str(video), segments=((0.0, 2.0, 0),))
    build_frame_cache(encoder, [before], ["a", "b"], out, FpsSampler(10), dtype="float32")
    fixed = SegmentationSample("clip", str(video), segments=((0.0, 2.0, 1),))
    build_frame_cache(encoder, [fixed], ["a", "b"], out, FpsSampler(10), dtype="float32")
    assert FrameTokenDataset(out)[0]["labels"].tolist() == [1] * 12


def test_frame_datasets_refuse_a_sampler_of_several_clips(tmp_path, encoder):
    """A frame cache and VideoFrameDataset hold each video's sampled frames as one sequence;
    given a sampler of several clips they kept the first clip without a word (here frames
    0-3 of 12), labelling only a third of the video."""
    video = _video(tmp_path / "clip.mkv", 0)
    sample = SegmentationSample("clip", str(video), segments=((0.0, 2.0, 0),))
    windows = SlidingWindowSampler(4)
    with pytest.raises(ValueError, match="a frame cache takes one clip per video"):
        build_frame_cache(encoder, [sample], ["a"], tmp_path / "c", windows, dtype="float32")
    data = VideoFrameDataset([sample], ["a"], windows, FramePreprocessing(32))
    with pytest.raises(ValueError, match="VideoFrameDataset takes one clip per video"):
        data[0]


def test_frame_cache_keeps_videos_with_the_same_file_name_apart(tmp_path, encoder):
    """A segments CSV may name ``a/clip.mkv`` and ``b/clip.mkv`` (e.g. one folder per camera
    or per subject): two different videos. Both were named ``clip`` (the file stem), so the
    second found the first's ``videos/clip.safetensors`` "already cached" and the cache served
    video a's tokens and labels for video b. Each cached item must be its own video's."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _video(tmp_path / "a" / "clip.mkv", 1)
    _video(tmp_path / "b" / "clip.mkv", 2, n=8)
    (tmp_path / "s.csv").write_text("video,start_s,end_s,label\na/clip.mkv,0,2,x\n"
                                    "b/clip.mkv,0,2,y\n")
    samples, names = read_segments_csv(tmp_path / "s.csv")
    out = build_frame_cache(encoder, samples, names, tmp_path / "cache", FpsSampler(10),
                            dtype="float32").path
    data = FrameTokenDataset(out)
    assert [len(data[i]["labels"]) for i in range(2)] == [12, 8]
    assert data[0]["labels"].tolist() == [0] * 12 and data[1]["labels"].tolist() == [1] * 8


def _tiny_encoder(**changes) -> FrameEncoderModel:
    torch.manual_seed(0)  # the same backbone weights whatever ``changes`` say
    return FrameEncoderModel(tiny_config(**changes)).eval()


def test_a_resumed_token_cache_is_redone_when_the_normalisation_changed(tmp_path, monkeypatch):
    """``build_cache`` continues a killed run only "with the same settings; other settings
    start over" (its docstring). The backbone's normalisation (``image_mean`` / ``image_std``,
    SPEC §2: "normalised with the backbone's own mean/std") changes every token, but it lives
    in non-persistent buffers, outside the weights' digest, and in none of the recorded
    settings: a run killed with one normalisation was continued with another, leaving a
    cache whose first videos were encoded differently from the rest."""
    from train_helpers import tiny_video_dataset

    from spool.data import cache, token_rows
    from spool.data.cache import CachedTokenDataset, build_cache
    from spool.data.dataset import VideoClipDataset, read_annotations
    from spool.video.samplers import clip_sampler

    def dataset(model):
        samples, names = read_annotations(tiny_video_dataset() / "train.txt")
        return VideoClipDataset(samples, names, clip_sampler(4), model.config.preprocessing())

    first = _tiny_encoder()
    other = _tiny_encoder(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    out = tmp_path / "cache"
    monkeypatch.setattr(token_rows, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(token_rows.PartialTokens, "close", lambda self: None)
    real = cache._ViewStack.__getitem__

    def dies_at_9(self, index):
        if index == 9:
            raise Killed
        return real(self, index)

    monkeypatch.setattr(cache._ViewStack, "__getitem__", dies_at_9)
    with pytest.raises(Killed):
        build_cache(first, dataset(first), out, batch_size=4)
    monkeypatch.undo()
    build_cache(other, dataset(other), out, batch_size=4)
    fresh = build_cache(other, dataset(other), tmp_path / "fresh", batch_size=4).path
    resumed, expected = CachedTokenDataset(out), CachedTokenDataset(fresh)
    torch.testing.assert_close(resumed[0]["tokens"], expected[0]["tokens"])


# --- 2. atomic outputs and resume --------------------------------------------------------------

def test_an_interrupted_frame_prediction_is_finished_by_the_next_run(tmp_path, monkeypatch):
    """``spool extract`` with a frame classifier writes two files per video, NAME.safetensors
    and NAME.segments.csv (spool/extract_frames.py). The .safetensors is what a re-run takes
    as "finished" (``is_done``), and it was written first: a job killed between the two left
    a video that every later run skipped, without its segments.csv. After the interruption a
    re-run must leave the same files as an uninterrupted run."""
    import spool.extract_frames as extract_frames
    from spool.extract import FeatureExtractor
    from spool.extract_inputs import plan_jobs
    from spool.models.frame_classification import SpoolForFrameClassification

    video = _video(tmp_path / "v.mkv", 3)
    torch.manual_seed(0)
    model = SpoolForFrameClassification(tiny_config(class_names=["a", "b"])).eval()
    jobs = plan_jobs([video], tmp_path / "out")
    extractor = FeatureExtractor(model, FpsSampler(5))
    real = extract_frames.atomic_write_text

    def dies(path, text):
        raise Killed

    monkeypatch.setattr(extract_frames, "atomic_write_text", dies)
    with pytest.raises(Killed):
        extractor.run(jobs, progress=False)
    monkeypatch.setattr(extract_frames, "atomic_write_text", real)
    extractor.run(jobs, progress=False)
    extractor.run(plan_jobs([video], tmp_path / "ref"), progress=False)  # never interrupted
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
    assert (out / "v.segments.csv").read_bytes() == (ref / "v.segments.csv").read_bytes()
    got, want = load_file(out / "v.safetensors"), load_file(ref / "v.safetensors")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_extract_redoes_an_output_made_from_another_source(tmp_path):
    """An output records its source (metadata ``source``) but ``is_done`` compared only the
    settings: extracting ``new/clip.mp4`` into a folder that holds ``clip.safetensors`` of
    ``old/clip.mp4`` (or of an earlier version of the same file) kept the old video's
    features under the new one's name. An output depends on its video, so it is redone
    (while ``old/clip.mp4`` still exists, it is reported and kept instead: see
    test_extract_names.py)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from spool import Spool
    from spool.extract import FeatureExtractor
    from spool.extract_inputs import plan_jobs
    from spool.video.samplers import UniformSampler

    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = _video(tmp_path / "old" / "clip.mkv", 4)
    new = _video(tmp_path / "new" / "clip.mkv", 5)
    torch.manual_seed(0)
    extractor = FeatureExtractor(Spool(tiny_config()), UniformSampler(4))
    out = tmp_path / "out"
    extractor.run(plan_jobs([old], out), progress=False)
    old.unlink()
    summary = extractor.run(plan_jobs([new], out), progress=False)
    with safe_open(str(out / "clip.safetensors"), "pt") as f:
        assert f.metadata()["source"] == str(new.resolve())
    assert summary.done == 1
    torch.testing.assert_close(load_file(out / "clip.safetensors")["context"],
                               extractor.features(new)["context"])


def test_extract_keeps_outputs_when_only_a_memory_setting_changed(tmp_path):
    """Re-running ``spool extract`` "skips finished videos (outputs are redone when the
    weights, the sampler, the preprocessing or the dtype change)" (its --help). The key held
    a hash of the whole config, so a setting that only trades memory for speed --
    ``backbone_chunk_size`` (frames per backbone call), ``attention_chunk_frames``, the
    attention backend (all backends agree to fp32 round-off, SPEC §3) -- redid every video,
    though the outputs are the same."""
    from spool import Spool
    from spool.extract import FeatureExtractor
    from spool.extract_inputs import plan_jobs
    from spool.video.samplers import UniformSampler

    video = _video(tmp_path / "v.mkv", 6)
    jobs = plan_jobs([video], tmp_path / "out")
    torch.manual_seed(0)
    model = Spool(tiny_config())
    assert FeatureExtractor(model, UniformSampler(4)).run(jobs, progress=False).done == 1
    torch.manual_seed(0)
    again = Spool(tiny_config(backbone_chunk_size=2, attention_chunk_frames=1,
                              attn_implementation="reference"))
    summary = FeatureExtractor(again, UniformSampler(4)).run(jobs, progress=False)
    assert (summary.done, summary.skipped) == (0, 1)


# --- 5. sampling ---------------------------------------------------------------------------------

def test_fps_sampling_of_a_23_976_fps_matroska_video_takes_the_frame_shown(tmp_path):
    """``FpsSampler``: "Frame k of the clip is the source frame shown at time k / target_fps".
    Matroska/WebM store timestamps in milliseconds, so the rate measured from the first and
    last timestamps of a 24000/1001 fps video is 23.97589, not 23.97602, and every 83rd frame
    at 10 fps was the one before: at 8.3 s it took frame 198 (shown from 8.258 s), though
    frame 199 is shown from 8.300 s (its timestamp, and 199 * 1001 / 24000 = 8.29996 s).
    Where the container's own rate explains the timestamps to within their rounding, that
    rate is the video's."""
    from fractions import Fraction

    from spool.video import VideoReader

    frames = np.zeros((900, 16, 16, 3), np.uint8)
    path = write_video(tmp_path / "v.mkv", frames, fps=Fraction(24000, 1001), codec="ffv1")
    with VideoReader(path) as reader:
        info = reader.info()
        pts = reader.index.pts * float(reader.index.time_base) - info.start_time
    indices = FpsSampler(10)(info.num_frames, info.fps)[0]
    assert indices[83] == 199 and pts[199] <= 8.3 < pts[200]
    # every sampled frame is the one shown at its time
    shown = [int(np.floor(k * 24000 / 1001 / 10 + 1e-9)) for k in range(len(indices))]
    assert indices == shown


# --- 2. (continued) a training run extended and killed while writing its final outputs --------

def test_a_run_extended_and_killed_before_its_results_writes_them_on_resume(tmp_path,
                                                                          monkeypatch):
    """``finish`` writes ``model/`` and then ``results.json``; a resumed run that is already
    at its last epoch redoes them only "if not results.json" (trainer._fit). A run trained on
    with more epochs (--resume auto, epochs 1 -> 2) and killed after its final checkpoint but
    before ``results.json`` found the first run's results.json and called itself finished:
    results.json said 4 steps and ``model/`` held the 4-step model, while the run had trained
    8. Resuming must give what an uninterrupted run gives."""
    from train_helpers import final_weights, train_config_dict

    from spool.models.pretrained import SpoolPreTrainedModel
    from spool.train.config import TrainConfig
    from spool.train.trainer import train

    out = tmp_path / "run"
    train(TrainConfig(**train_config_dict(out, epochs=1)))
    longer = train_config_dict(out, epochs=2, resume="auto")
    real = SpoolPreTrainedModel.save_pretrained

    def dies_on_model_dir(self, directory, **kwargs):
        if Path(directory).name == "model":
            raise Killed
        return real(self, directory, **kwargs)

    monkeypatch.setattr(SpoolPreTrainedModel, "save_pretrained", dies_on_model_dir)
    with pytest.raises(Killed):
        train(TrainConfig(**longer))
    monkeypatch.undo()
    train(TrainConfig(**longer))
    import json
    assert json.loads((out / "results.json").read_text())["steps"] == 8
    last = load_file(out / "checkpoints" / "step_00000008" / "model.safetensors")
    for key, value in final_weights(out).items():
        torch.testing.assert_close(value, last[key])


def test_eval_ribbons_score_segments_as_metrics_json_does(tmp_path, monkeypatch):
    """``spool eval``'s ribbons printed each row's edit and F1@50 with background classes
    counted as segments (60.0 and 75.0 here), beside 100.0 and 100.0 in metrics.json."""
    import json

    from spool.metrics import ribbons
    from spool.metrics.segmentation import SegmentationMetrics
    from spool.train import segmentation_eval as se

    scores = []
    real = ribbons.video_scores
    monkeypatch.setattr(ribbons, "video_scores",
                        lambda *a: scores.append(real(*a)) or scores[-1])
    pred, target = np.array([0, 1, 1, 0, 0, 2, 2, 0]), np.array([1, 1, 1, 1, 0, 2, 2, 2])
    metrics = SegmentationMetrics(background=(0,))
    metrics.update(pred, target)
    result = se.SegmentationResult(metrics, {"v": se.VideoPrediction(pred, target, pred * 0.0)})
    se.write_segmentation_report(result, ["background", "a", "b"], tmp_path, "model",
                                 background=("background",))
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["edit"] == 100.0 and report["f1@50"] == 100.0
    assert (scores[0]["edit"], scores[0]["f1@50"]) == (100.0, 100.0)


def test_frame_datasets_relabelled_twice_compose_the_maps():
    """A second ``use_class_names`` replaced the first map by one from the already-relabelled
    names: labels [0, 1, 2] of classes a, b, c read c, b, a after [c, b, a] then [b, a, c]."""
    from spool.data.classes import FrameLabelMapping

    data = FrameLabelMapping()
    data.class_names = ["a", "b", "c"]
    data.use_class_names(["c", "b", "a"], "data", "the model's classes")
    data.use_class_names(["b", "a", "c"], "data", "the model's classes")
    labels = data.relabel(torch.tensor([0, 1, 2, -100]))
    assert [data.class_names[i] for i in labels[:3]] == ["a", "b", "c"]
    assert labels[3] == -100


def test_a_fine_tuned_backbones_tokens_and_position_embeddings_are_not_decayed():
    """With ``freeze_backbone=False`` DINOv2's class token and position embeddings were in the
    decayed group (at lr 5e-4, wd 0.05, 10k steps shrink them by a fifth), in Spool and in
    the baselines alike; its patch projection, a matrix, stays decayed."""
    from spool.models.classification import (
        FramePoolingForVideoClassification,
        SpoolForVideoClassification,
    )
    from spool.models.frame_baselines import MSTCNForFrameClassification
    from spool.train.builders import parameter_groups

    for cls in (SpoolForVideoClassification, FramePoolingForVideoClassification,
                MSTCNForFrameClassification):
        model = cls(tiny_config(freeze_backbone=False), class_names=["a", "b"])
        decay, no_decay = ({id(p) for p in g["params"]} for g in parameter_groups(model, 0.05))
        params = {n.removeprefix("spool."): p for n, p in model.named_parameters()}
        embeddings = "backbone.model.embeddings."
        for name in ("cls_token", "position_embeddings", "mask_token"):
            assert id(params[embeddings + name]) in no_decay, (cls.__name__, name)
        assert id(params[embeddings + "patch_embeddings.projection.weight"]) in decay
        if cls is SpoolForVideoClassification:
            assert id(params["context_frames.start"]) in no_decay


def test_siglip_and_clip_position_embeddings_are_not_decayed_either():
    """SigLIP's and CLIP's position embeddings are an Embedding's table
    (``embeddings.position_embedding.weight``, a matrix): a fine-tuned one was decayed, where
    the README says position embeddings are not."""
    from spool.models.classification import SpoolForVideoClassification
    from spool.train.builders import parameter_groups

    vision = dict(hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=48, patch_size=8, image_size=32)
    for model_type in ("siglip_vision_model", "clip_vision_model"):
        config = tiny_config(freeze_backbone=False,
                             backbone_config=dict(model_type=model_type, **vision))
        model = SpoolForVideoClassification(config, class_names=["a", "b"])
        decay, no_decay = ({id(p) for p in g["params"]} for g in parameter_groups(model, 0.05))
        params = dict(model.named_parameters())
        embeddings = "spool.backbone.model.embeddings."
        assert id(params[embeddings + "position_embedding.weight"]) in no_decay, model_type
        assert id(params[embeddings + "patch_embedding.weight"]) in decay, model_type


def test_integer_labels_follow_their_own_classes_txt_when_class_names_are_given(tmp_path):
    """With --classes-from or as --val-data, the training classes are given: integer labels,
    which index the file's own classes.txt, were read as indices into the given list (``0``
    of classes ``b, a`` became ``a``)."""
    from spool.data.dataset import read_annotations

    (tmp_path / "classes.txt").write_text("b\na\n")
    _video(tmp_path / "v.mkv", 0)
    _video(tmp_path / "w.mkv", 0)  # (one video under two labels is refused)
    (tmp_path / "val.txt").write_text("v.mkv 0\nw.mkv a\n")
    samples, names = read_annotations(tmp_path / "val.txt", ["a", "b"])
    assert names == ["a", "b"] and [s.label for s in samples] == [1, 0]
    samples, names = read_annotations(tmp_path / "val.txt")  # its own classes
    assert names == ["b", "a"] and [s.label for s in samples] == [0, 1]
    with pytest.raises(ValueError, match="class 'b' .* is not among the classes given"):
        read_annotations(tmp_path / "val.txt", ["a", "c"])


def test_a_cache_of_one_kind_is_not_written_over_one_of_the_other(tmp_path, encoder):
    """build_frame_cache into a clip cache's folder deleted its cache.json and replaced its
    backbone/, and the clip cache then read as damaged (and build_cache the other way)."""
    from spool.data.cache import build_cache
    from spool.data.cached_tokens import CachedTokenDataset, read_cache_meta
    from spool.data.dataset import VideoClipDataset, VideoSample
    from spool.errors import SpoolLoadError
    from spool.video.samplers import clip_sampler

    video = _video(tmp_path / "clip.mkv", 0)
    clips = VideoClipDataset([VideoSample(str(video), 0)], ["a"], clip_sampler(4),
                             encoder.config.preprocessing())
    frames = [SegmentationSample("clip", str(video), segments=((0.0, 2.0, 0),))]
    build_cache(encoder, clips, tmp_path / "c")
    with pytest.raises(ValueError, match="holds a cache of clips"):
        build_frame_cache(encoder, frames, ["a"], tmp_path / "c", FpsSampler(10))
    assert len(CachedTokenDataset(tmp_path / "c")) == 1  # intact
    build_frame_cache(encoder, frames, ["a"], tmp_path / "f", FpsSampler(10))
    with pytest.raises(ValueError, match="holds a cache of frames"):
        build_cache(encoder, clips, tmp_path / "f")
    assert len(FrameTokenDataset(tmp_path / "f")) == 1
    with pytest.raises(SpoolLoadError, match="a cache of frames .*not of clips"):
        read_cache_meta(tmp_path / "f")


def test_frame_cache_relabels_without_the_backbone(tmp_path, encoder, monkeypatch):
    """New labels (a corrected annotation, another class list) re-encoded every video: the
    labels were in each file's key beside the tokens'. Now only the labels are redone; and a
    file of the earlier keys, for the same settings and labels, is kept."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from spool.data import frame_cache_video
    from spool.data.frame_cache_keys import video_keys

    video = _video(tmp_path / "clip.mkv", 0)
    out = tmp_path / "cache"
    first = SegmentationSample("clip", str(video), segments=((0.0, 2.0, 0),))
    build_frame_cache(encoder, [first], ["a", "b"], out, FpsSampler(10), dtype="float32")
    tokens = FrameTokenDataset(out)[0]["tokens"]
    runs = []
    real = frame_cache_video.stream_tokens
    monkeypatch.setattr(frame_cache_video, "stream_tokens",
                        lambda *a, **k: runs.append(1) or real(*a, **k))
    fixed = SegmentationSample("clip", str(video), segments=((0.0, 0.5, 0), (0.5, 2.0, 1)))
    build_frame_cache(encoder, [fixed], ["a", "b"], out, FpsSampler(10), dtype="float32")
    item = FrameTokenDataset(out)[0]
    assert runs == [] and item["labels"].tolist() == [0] * 5 + [1] * 7
    assert torch.equal(item["tokens"], tokens)
    build_frame_cache(encoder, [fixed], ["b", "a"], out, FpsSampler(10), dtype="float32")
    assert runs == [] and FrameTokenDataset(out).class_names == ["b", "a"]
    # The earlier version's keys: tokens, labels and rules in "settings" and "source".
    path = out / "videos" / "clip.safetensors"
    with safe_open(str(path), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    keys = video_keys(fixed, json.loads(meta["settings"]), ["b", "a"])
    save_file(tensors, str(path), metadata={"settings": keys.legacy_settings,
                                            "source": keys.legacy_source, "video": str(video)})
    build_frame_cache(encoder, [fixed], ["b", "a"], out, FpsSampler(10), dtype="float32")
    assert runs == []
    other = SegmentationSample("clip", str(video), segments=((0.0, 2.0, 1),))
    build_frame_cache(encoder, [other], ["b", "a"], out, FpsSampler(10), dtype="float32")
    assert runs == [1]  # an older file's labels: the whole video again
