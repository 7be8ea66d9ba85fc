"""``spool extract`` flags: what each mode saves, and flags that do not apply."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_backbone, tiny_config, tiny_model_args
from safetensors import safe_open
from safetensors.torch import load_file

from spool.cli import main
from spool.config import SpoolConfig
from spool.models.spool import Spool
from spool.video import VideoReader, write_video


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    root = tmp_path_factory.mktemp("opts")
    frames = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    path = write_video(root / "v.mp4", frames, fps=10, codec="libx264")
    config = root / "backbone.json"
    config.write_text(json.dumps(tiny_backbone()))
    return path, config


def _extract(video, out, config, *extra):
    return main(["extract", str(video), "--out", str(out), *tiny_model_args(config),
                 "--no-progress", *extra])


def test_backbone_only_saves_the_backbone_tokens(video, tmp_path):
    path, config = video
    assert _extract(path, tmp_path / "o", config, "--num-frames", "4", "--backbone-only") == 0
    saved = load_file(tmp_path / "o" / "v.safetensors")
    assert "context" not in saved and saved["features"].shape == (1, 4, 17, 24)
    fields = dict(num_hidden_layers=1, num_attention_heads=2, num_lookahead_heads=1,
                  num_lookback_heads=1, image_size=32, local_frame_range=2,
                  backbone_config=tiny_backbone())
    torch.manual_seed(0)
    model = Spool(SpoolConfig(**fields)).eval()
    with VideoReader(path) as reader:
        frames, _ = reader.get(saved["frame_indices"][0].tolist())
    with torch.no_grad():
        tokens = model.encode_frames(model.config.preprocessing()(torch.from_numpy(frames))[None])
    torch.testing.assert_close(saved["features"].float(), tokens, atol=2e-3, rtol=2e-3)


def test_no_checkpoint_warning_says_the_layers_are_random(video, tmp_path, capsys):
    path, config = video
    assert _extract(path, tmp_path / "o", config, "--num-frames", "2") == 0
    err = capsys.readouterr().err
    assert "random" in err and "--backbone-only" in err and "still meaningful" not in err


def test_backbone_only_is_refused_with_per_frame(video, tmp_path, capsys):
    path, config = video
    assert _extract(path, tmp_path / "o", config, "--backbone-only", "--per-frame") == 2
    assert "--backbone-only" in capsys.readouterr().err


def _sampler(out, name="v"):
    with safe_open(str(out / f"{name}.safetensors"), "pt") as f:
        return json.loads(f.metadata()["sampler"]), f.get_tensor("frame_indices")


@pytest.fixture(scope="module")
def frame_model(tmp_path_factory):
    from spool.models.frame_baselines import frame_classifier_class

    model = frame_classifier_class("linear_probe")(tiny_config(), class_names=["a", "b"])
    model.config.sampling = {"name": "fps", "target_fps": 4.0, "max_frames": None}
    path = tmp_path_factory.mktemp("fm") / "model"
    model.save_pretrained(path)
    return path


def test_frame_classifier_runs_at_its_training_rate(video, frame_model, tmp_path, capsys):
    path, _ = video
    run = ["extract", str(path), "--checkpoint", str(frame_model), "--no-progress"]
    assert main([*run, "--out", str(tmp_path / "a")]) == 0  # no --per-frame: implied
    sampler, indices = _sampler(tmp_path / "a")
    assert sampler == {"name": "fps", "target_fps": 4.0, "max_frames": None,
                       "use_timestamps": True, "revision": 3}
    assert indices.tolist() == [0, 2, 5, 7, 10, 12, 15, 17]  # 4 of the video's 10 fps
    assert "differs" not in capsys.readouterr().err
    assert main([*run, "--out", str(tmp_path / "b"), "--fps", "2"]) == 0
    assert _sampler(tmp_path / "b")[0]["target_fps"] == 2.0
    assert "differs from the checkpoint's training sampling" in capsys.readouterr().err
    assert main([*run, "--out", str(tmp_path / "c"), "--save-features"]) == 0  # was refused
    with safe_open(str(tmp_path / "c" / "v.safetensors"), "pt") as f:
        assert f.get_tensor("frame_features").shape[0] == 8


@pytest.mark.parametrize(("flags", "expected"), [
    (["--fps", "5"], {"name": "fps", "target_fps": 5.0, "max_frames": None,
                      "use_timestamps": True, "revision": 3}),
    (["--clip-len", "4"], {"name": "sliding", "clip_len": 4, "stride": 8, "tail": "align"}),
    (["--per-frame", "--stride", "5"], {"name": "stride", "stride": 5, "max_frames": None}),
])
def test_a_sampler_flag_picks_its_sampler(video, tmp_path, flags, expected):
    path, config = video
    assert _extract(path, tmp_path / "o", config, *flags) == 0
    assert _sampler(tmp_path / "o")[0] == expected


@pytest.mark.parametrize(("flags", "message"), [
    (["--sampler", "fps", "--num-frames", "4"], "--num-frames: applies to --sampler uniform"),
    (["--sampler", "uniform", "--fps", "1"], "--fps: applies to --sampler fps, not uniform"),
    (["--fps", "1", "--num-frames", "4"],
     "--num-frames and --fps: these flags apply to different samplers"),
    (["--stride", "4"], "--stride: applies to --sampler sliding or stride; name one"),
    (["--chunk-frames", "4"], "--chunk-frames: applies to --per-frame"),
    (["--offload-dir", "/nonexistent"], "--offload-dir: applies to --per-frame"),
    (["--per-frame", "--clip-len", "4"], "--clip-len"),
    (["--per-frame", "--batch-size", "8"], "--batch-size: applies to clips; --per-frame"),
    (["--per-frame", "--offload-dir", __file__], f"--offload-dir: {__file__} is a file"),
    (["--per-frame", "--offload-dir", __file__ + "/sub"], f"--offload-dir: {__file__}/sub is "
     f"under {__file__}, a file"),  # every video failed on it (NotADirectoryError)
    (["--per-frame", "--offload-dir", ""], "--offload-dir: an empty path"),
])
def test_flags_that_do_not_apply_are_refused(video, tmp_path, capsys, flags, message):
    path, config = video
    assert _extract(path, tmp_path / "o", config, *flags) == 2
    err = capsys.readouterr().err
    assert f"spool extract: error: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_clip_checkpoint_is_sampled_as_in_training(video, tmp_path, capsys):
    from spool.models.classification import SpoolForVideoClassification

    model = SpoolForVideoClassification(tiny_config(), class_names=["a", "b"])
    model.config.sampling = {"name": "uniform", "num_frames": 5}
    model.save_pretrained(tmp_path / "model")
    path, _ = video
    assert main(["extract", str(path), "--out", str(tmp_path / "o"), "--checkpoint",
                 str(tmp_path / "model"), "--no-progress"]) == 0
    assert _sampler(tmp_path / "o")[0] == {"name": "uniform", "num_frames": 5}
    assert "differs" not in capsys.readouterr().err


def test_an_annotation_file_gives_its_videos(video, tmp_path, capsys):
    """A training annotation file (``path label`` lines) lists its videos: each line failed as
    a missing file named with its label. A missing video is still reported, by its path."""
    path, config = video
    listing = tmp_path / "train.txt"
    listing.write_text(f"{path} left_to_right\n{tmp_path / 'gone.mp4'} right_to_left\n"
                       f"{tmp_path / 'new video.mp4'}\n")  # a path with a space, missing
    assert _extract(listing, tmp_path / "o", config, "--num-frames", "2") == 1
    printed = capsys.readouterr()
    assert "read as an annotation file: 2 'path label' lines, the labels left out" in \
        printed.out
    assert f"FAILED {tmp_path / 'gone.mp4'}: FileNotFoundError" in printed.out
    assert f"FAILED {tmp_path / 'new video.mp4'}: FileNotFoundError" in printed.out
    assert "right_to_left" not in printed.out + printed.err
    assert [p.name for p in (tmp_path / "o").glob("*.safetensors")] == [f"{path.stem}.safetensors"]


def test_a_whole_video_clip_that_would_not_fit_fails_that_video_alone(tmp_path, monkeypatch,
                                                                      capsys):
    """--fps without --per-frame runs a whole video as one clip through the plain forward,
    every frame held at once: an hour of video was an out-of-memory kill of the whole job.
    It fails that video before decoding, with the way out; a short one still runs."""
    from spool.models import long_video
    from spool.video import write_video

    rng = np.random.default_rng(0)
    long = write_video(tmp_path / "long.mkv", rng.integers(0, 256, (60, 32, 32, 3), np.uint8),
                       fps=10, codec="ffv1")
    short = write_video(tmp_path / "short.mkv", rng.integers(0, 256, (6, 32, 32, 3), np.uint8),
                        fps=10, codec="ffv1")
    config = tmp_path / "bb.json"
    config.write_text(json.dumps(tiny_backbone()))
    # Room for the short video's 6 frames through the model, not the long one's 60.
    budget = 20 * (3 * 4 * 32 ** 2 + 18 * 4 * 17 * 24)
    monkeypatch.setattr(long_video, "available_memory_bytes", lambda: budget)
    assert main(["extract", str(long), str(short), "--out", str(tmp_path / "o"), "--fps", "10",
                 "--no-progress", *tiny_model_args(config)]) == 1
    captured = capsys.readouterr()
    err = captured.out + captured.err
    assert "long.mkv" in err and "60 frames through the model at once" in err
    assert "or use --per-frame, which streams a whole video through forward_long" in err
    assert (tmp_path / "o" / "short.safetensors").exists()
    assert not (tmp_path / "o" / "long.safetensors").exists()


def test_a_refused_command_makes_no_offload_folder(video, tmp_path, capsys):
    """--offload-dir was made while checking it, then another flag refused the command."""
    path, config = video
    new = tmp_path / "new" / "scratch"
    assert _extract(path, tmp_path / "o", config, "--per-frame", "--sampler", "sliding",
                    "--offload-dir", str(new)) == 2
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("flags", [["--backbone-only"], ["--save-features"],
                                   ["--save-features", "--per-frame"]])
def test_features_past_float16s_range_stop_the_job_naming_the_video(video, tmp_path, capsys,
                                                                     flags):
    """Features are stored as float16: values past 65504 were written as inf without a word."""
    from spool.extract import FeatureExtractor, VideoJob
    from spool.video.samplers import FpsSampler, make_sampler

    path, _ = video
    model = Spool(tiny_config()).eval()
    with torch.no_grad():  # the backbone's tokens and, normalised again, the stack's features
        model.backbone.model.layernorm.weight.mul_(1e6)
        model.temporal.norm.weight.mul_(1e6)
    sampler = FpsSampler(5) if "--per-frame" in flags else make_sampler("uniform", num_frames=4)
    extractor = FeatureExtractor(model, sampler, backbone_only="--backbone-only" in flags,
                                 save_features=True, per_frame="--per-frame" in flags)
    job = VideoJob(path, tmp_path / "o" / "v.safetensors")
    with pytest.raises(ValueError, match=rf"^{path}: the model's outputs reach .* past "
                                         "float16's largest value 65504"):  # named once
        extractor.run([job], progress=False)
    assert not job.output.exists()
    # NaN in what is stored as float32 too (--per-frame wrote NaN features and context)
    with torch.no_grad():
        model.backbone.model.layernorm.weight[0] = float("nan")
    extractor.save_features = False
    with pytest.raises(ValueError, match=rf"^{path}: the model gave NaN or infinite values: "
                       r".* \(try spool extract --compute-dtype float32\)\?"):
        extractor.run([job], progress=False)
    assert not job.output.exists()
