"""`spool extract` with a frame classifier, as its other modes: a file cut short is reported,
``NAME.segments.csv`` is part of what a finished video is, a classifier's CSV does not outlive
a later run in another mode, and a named video that is gone is reported, not "done"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config

from spool.extract import FeatureExtractor
from spool.extract_inputs import plan_jobs
from spool.models.frame_classification import SpoolForFrameClassification
from spool.models.spool import Spool
from spool.video import write_video
from spool.video.samplers import FpsSampler


@pytest.fixture(scope="module")
def classifier() -> SpoolForFrameClassification:
    torch.manual_seed(0)
    return SpoolForFrameClassification(tiny_config(class_names=["a", "b"])).eval()


def _video(path: Path, n: int = 60) -> Path:
    frames = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return write_video(path, frames, fps=10, codec="ffv1")


def test_a_truncated_file_is_reported(tmp_path: Path, classifier) -> None:
    """Cut in half, it gave 29 frames of predictions and counted as extracted."""
    data = _video(tmp_path / "v.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 2])
    summary = FeatureExtractor(classifier, FpsSampler(10)).run(
        plan_jobs([tmp_path / "cut.mkv"], tmp_path / "out"), progress=False)
    assert summary.done == 0 and len(summary.failures) == 1
    assert "truncated" in summary.failures[0][2]
    assert not list((tmp_path / "out").glob("cut*"))


def test_segments_csv_is_part_of_done_and_goes_with_the_mode(tmp_path: Path,
                                                             classifier) -> None:
    video, out = _video(tmp_path / "v.mkv", 12), tmp_path / "out"
    jobs = plan_jobs([video], out)
    predict = FeatureExtractor(classifier, FpsSampler(5))
    assert predict.run(jobs, progress=False).done == 1
    (out / "v.segments.csv").unlink()  # "already done" left it missing for good
    assert predict.run(jobs, progress=False).done == 1
    assert (out / "v.segments.csv").is_file()
    # Clip features into the same folder: the classifier's CSV would disagree with them.
    assert FeatureExtractor(Spool(tiny_config()), FpsSampler(5)).run(
        jobs, progress=False).done == 1
    assert (out / "v.safetensors").is_file() and not (out / "v.segments.csv").exists()


def test_a_named_video_that_is_gone_is_reported(tmp_path: Path, classifier) -> None:
    video, out = _video(tmp_path / "v.mkv", 12), tmp_path / "out"
    extractor = FeatureExtractor(classifier, FpsSampler(5))
    assert extractor.run(plan_jobs([video], out), progress=False).done == 1
    video.rename(tmp_path / "v.bak")
    summary = extractor.run(plan_jobs([video], out), progress=False)
    assert summary.skipped == 0 and len(summary.failures) == 1  # was: 1 already done
    assert summary.failures[0][0] == str(video)
    assert (out / "v.safetensors").is_file()  # what it extracted before is kept


def test_whole_video_modes_show_progress_within_a_video(tmp_path: Path, classifier,
                                                        capsys) -> None:
    """--per-frame and a frame classifier showed only `extract: 0/1` until the video (an hour
    of lecture, say) was done."""
    from spool.models.frame_baselines import FrameProbeForFrameClassification

    video = _video(tmp_path / "v.mkv", 12)
    probe = FrameProbeForFrameClassification(tiny_config(class_names=["a", "b"])).eval()
    for name, extractor in (
            ("per_frame", FeatureExtractor(Spool(tiny_config()), FpsSampler(5), per_frame=True)),
            ("spool", FeatureExtractor(classifier, FpsSampler(5))),
            ("probe", FeatureExtractor(probe, FpsSampler(5)))):
        capsys.readouterr()
        assert extractor.run(plan_jobs([video], tmp_path / name), progress=True).done == 1
        err = capsys.readouterr().err
        assert "encode" in err and "/6 [" in err, name  # a bar over the 6 sampled frames
        assert ("temporal" in err) == (name != "probe"), name


def test_a_classifiers_csv_stays_when_a_later_mode_fails(tmp_path: Path, classifier) -> None:
    """Another mode removed NAME.segments.csv before reading the video: one that is gone lost
    it, although what was extracted from a video that is gone is kept."""
    video, out = _video(tmp_path / "v.mkv", 12), tmp_path / "out"
    assert FeatureExtractor(classifier, FpsSampler(5)).run(
        plan_jobs([video], out), progress=False).done == 1
    video.unlink()
    summary = FeatureExtractor(Spool(tiny_config()), FpsSampler(5)).run(
        plan_jobs([video], out), progress=False)
    assert len(summary.failures) == 1
    assert (out / "v.safetensors").is_file() and (out / "v.segments.csv").is_file()


@pytest.mark.parametrize("rule", ["segments_clock", "segments_end"])
def test_predictions_of_an_earlier_rule_are_redone(tmp_path: Path, classifier, rule) -> None:
    """NAME.segments.csv counted from the pts before, and its last segment could end where
    it began; outputs written so were 'done'."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    video, out = _video(tmp_path / "v.mkv", 12), tmp_path / "out"
    extractor = FeatureExtractor(classifier, FpsSampler(5))
    assert extractor.run(plan_jobs([video], out), progress=False).done == 1
    with safe_open(str(out / "v.safetensors"), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    del meta[rule]
    save_file(tensors, str(out / "v.safetensors"), metadata=meta)
    assert extractor.run(plan_jobs([video], out), progress=False).done == 1


def test_whole_video_flags_are_taken_with_a_frame_classifier_checkpoint(
        tmp_path: Path, classifier, capsys) -> None:
    """--per-frame is implied by a frame classifier, so are its flags: --chunk-frames and
    --offload-dir were refused (exit 2) until --per-frame was given too. A clip model's
    checkpoint still refuses them."""
    from spool.cli import main

    video = _video(tmp_path / "v.mkv", 12)
    classifier.save_pretrained(tmp_path / "frames")
    Spool(tiny_config()).save_pretrained(tmp_path / "clips")
    flags = ["--chunk-frames", "4", "--offload-dir", str(tmp_path / "off"), "--no-progress"]
    assert main(["extract", str(video), "--out", str(tmp_path / "o"), "--checkpoint",
                 str(tmp_path / "frames"), *flags]) == 0
    assert (tmp_path / "o" / "v.segments.csv").is_file()
    assert main(["extract", str(video), "--out", str(tmp_path / "o2"), "--checkpoint",
                 str(tmp_path / "clips"), *flags]) == 2
    assert "--chunk-frames: applies to --per-frame" in capsys.readouterr().err


def test_max_frames_with_whole_video_outputs_says_they_are_cut(tmp_path: Path, classifier,
                                                               capsys) -> None:
    """--max-frames 4 gave a segments CSV of the first 4 frames of a 12-frame video, with no
    word that the video was cut."""
    from spool.cli import main

    video = _video(tmp_path / "v.mkv", 12)
    classifier.save_pretrained(tmp_path / "frames")
    assert main(["extract", str(video), "--out", str(tmp_path / "o"), "--checkpoint",
                 str(tmp_path / "frames"), "--max-frames", "4", "--fps", "10",
                 "--no-progress"]) == 0
    assert "max_frames 4: each video's outputs cover its first 4 sampled frames only" \
        in capsys.readouterr().err


def test_a_kill_between_the_two_writes_does_not_pair_another_runs_csv(
        tmp_path: Path, classifier, monkeypatch) -> None:
    """The CSV was written first: a run with another classifier killed before its
    .safetensors left its CSV beside the first run's .safetensors, and the next run of the
    first classifier called the video done, with the other's segments. Now the old CSV goes
    first and the new one comes last; a CSV the user edited stays while the video is done."""
    import spool.extract_frames as extract_frames

    video, out = _video(tmp_path / "v.mkv", 30), tmp_path / "out"
    jobs = plan_jobs([video], out)
    assert FeatureExtractor(classifier, FpsSampler(5)).run(jobs, progress=False).done == 1
    mine = (out / "v.segments.csv").read_text()
    torch.manual_seed(5)
    other = SpoolForFrameClassification(tiny_config(class_names=["a", "b"])).eval()
    FeatureExtractor(other, FpsSampler(5)).run(plan_jobs([video], tmp_path / "o"),
                                               progress=False)
    assert (tmp_path / "o" / "v.segments.csv").read_text() != mine  # the other's segments

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill there

    for step in ("atomic_save_safetensors", "atomic_write_text"):  # before, after the first
        monkeypatch.setattr(extract_frames, step, killed)
        with pytest.raises(KeyboardInterrupt):
            FeatureExtractor(other, FpsSampler(5)).run(jobs, progress=False)
        monkeypatch.undo()
        assert not (out / "v.segments.csv").exists()  # not the first run's beside the other's
        summary = FeatureExtractor(classifier, FpsSampler(5)).run(jobs, progress=False)
        assert summary.done == 1 and (out / "v.segments.csv").read_text() == mine
    (out / "v.segments.csv").write_text(mine + "# checked by hand\n")
    assert FeatureExtractor(classifier, FpsSampler(5)).run(jobs, progress=False).skipped == 1
    assert (out / "v.segments.csv").read_text().endswith("# checked by hand\n")


@pytest.mark.parametrize("name", ["spool", "ms_tcn"])
def test_save_features_writes_the_heads_features_beside_the_predictions(
        tmp_path: Path, name: str) -> None:
    """--save-features was refused with a frame classifier: features and predictions took two
    passes (and two models' worth of setup). Now one pass gives both; the features are
    predict_long's, the ones its head read, and a rerun with the flag changed is redone."""
    from safetensors.torch import load_file

    from spool.cli import main
    from spool.models.frame_baselines import frame_classifier_class

    model = frame_classifier_class(name)(tiny_config(class_names=["a", "b"])).eval()
    model.save_pretrained(tmp_path / "ckpt")
    video = _video(tmp_path / "v.mkv", 12)
    args = ["extract", str(video), "--out", str(tmp_path / "o"), "--checkpoint",
            str(tmp_path / "ckpt"), "--fps", "5", "--no-progress"]
    assert main(args) == 0
    assert "frame_features" not in load_file(tmp_path / "o" / "v.safetensors")
    assert main([*args, "--save-features"]) == 0  # not "already done"
    saved = load_file(tmp_path / "o" / "v.safetensors")
    expected = model.predict_long(video, sampler=FpsSampler(5))
    torch.testing.assert_close(saved["frame_features"], expected.frame_features)
    assert saved["frame_features"].shape == (6, model.config.hidden_size)
    torch.testing.assert_close(saved["scores"], expected.logits.softmax(-1))
    assert expected.labels == [["a", "b"][i] for i in saved["labels"].tolist()]


def test_nan_predictions_stop_the_job_naming_the_video(tmp_path: Path) -> None:
    """A model giving NaN logits wrote NaN scores and a segments CSV of class 0."""
    import pytest
    import torch

    model = SpoolForFrameClassification(tiny_config(class_names=["a", "b"])).eval()
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    video = _video(tmp_path / "v.mkv", 12)
    with pytest.raises(ValueError, match=rf"^{video}: the model gave NaN or infinite values"):
        FeatureExtractor(model, FpsSampler(5)).run(plan_jobs([video], tmp_path / "out"),
                                                   progress=False)
    assert not list((tmp_path / "out").glob("v*"))
