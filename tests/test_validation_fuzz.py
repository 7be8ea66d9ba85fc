"""Fuzzing the public API with bad values: every one is a ValueError or TypeError naming the
argument (never a bare error from deep inside torch), and none is taken silently into NaN or
Inf outputs."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from conftest import tiny_config

from spool import Spool, SpoolConfig
from spool.models.classification import (
    FramePoolingForVideoClassification,
    SpoolForVideoClassification,
)
from spool.train.config import TrainConfig
from spool.video import samplers
from spool.video.transforms import FramePreprocessing, RandomResizedCrop

NAN, INF = float("nan"), float("inf")
GENERIC = {"None": None, "str": "3", "float": 1.5, "negative": -1, "zero": 0, "bool": True,
           "nan": NAN, "inf": INF, "list": [1], "dict": {}}


def _cases(fields: list[str], valid: dict[str, set[str]], extra: dict[str, list]) -> list:
    """(field, value) pairs to reject: the generic values a field does not accept, and the
    field's own tricky ones."""
    out = []
    for name in fields:
        out += [(name, v) for k, v in GENERIC.items() if k not in valid.get(name, set())]
        out += [(name, v) for v in extra.get(name, [])]
    return out


def _ids(cases: list) -> list[str]:
    return [f"{name}={value!r}"[:40] for name, value in cases]


def _rejects(make, argument: str) -> None:
    with pytest.raises((ValueError, TypeError), match=re.escape(argument)):
        make()


# --- SpoolConfig: every field ------------------------------------------------------------------

CONFIG_VALID = {
    "num_hidden_layers": {"zero"}, "local_frame_range": {"zero"}, "backbone_name": {"str"},
    "backbone_config": {"None"}, "crop_pct": {"None"}, "attention_chunk_frames": {"None"},
    "mlp_ratio": {"float"}, "layer_norm_eps": {"float"}, "rope_theta": {"float"},
    "hidden_dropout": {"zero"}, "attention_dropout": {"zero"}, "classifier_dropout": {"zero"},
    "class_names": {"None"}, "background_classes": {"None"}, "sampling": {"None", "dict"},
    "head_config": {"None", "dict"}, "architectures": {"None"},
    "hidden_size": {"None"}, "num_spatial_tokens": {"None"}, "num_prefix_tokens": {"None"},
    "freeze_backbone": {"bool"}, "use_pretrained_backbone": {"None", "bool"},
    "gradient_checkpointing": {"bool"},
}
CONFIG_EXTRA = {  # values a naive check lets through
    "num_lookahead_heads": [3], "image_size": [2.0], "crop_pct": [1.01, "0.5"],
    "backbone_config": [{"hidden_size": 8}, {"model_type": 5}],
    "attn_implementation": ["fast"], "attention_chunk_frames": [2.0],
    "hidden_dropout": [1.0, "0.1"], "classifier_dropout": [-0.1],
    "mlp_ratio": [1e-300, 1e300], "layer_norm_eps": [1e-300], "rope_theta": [1e-300, 0.5],
    "initializer_range": [1e10, 1e300], "freeze_backbone": ["false", 0],
    "use_pretrained_backbone": [1, "true"],
    "class_names": ["abc", ["a", "a"], [1, 2]], "architectures": ["Spool"],
    "hidden_size": [25, 2.0], "num_spatial_tokens": [1.5],
    "num_prefix_tokens": [2, 17, 18],  # 17 tokens: 1 + 4x4 (15, 0 and -1 patches are no grid)
    "image_mean": [[NAN, 0, 0], "abc", [0.5, 0.5], [255, 255, 255], [-1e30] * 3],
    "image_std": [[0.2, 0, 0.2], [INF, 1, 1], [1e-300] * 3, [58.0, 57.0, 57.0]],
}
CONFIG_FIELDS = [f.name for f in dataclasses.fields(SpoolConfig)]
CONFIG_CASES = _cases(CONFIG_FIELDS, CONFIG_VALID, CONFIG_EXTRA)


@pytest.mark.parametrize("name,value", CONFIG_CASES, ids=_ids(CONFIG_CASES))
def test_spool_config_rejects(name: str, value) -> None:
    # Sizes stated, as a built model's config has them (some checks need hidden_size).
    overrides = {"hidden_size": 24, "num_spatial_tokens": 17, name: value}
    _rejects(lambda: tiny_config(**overrides), name)


EXTREMES = {"layer_norm_eps": [1e-30, 1e30], "rope_theta": [1.0, 1e30, 1e300],
            "initializer_range": [1e-300, 1.0], "mlp_ratio": [0.05, 64.0],
            "image_mean": [[0.0] * 3, [1.0] * 3], "image_std": [[1e-3] * 3, [1.0] * 3]}
ACCEPTED = [(n, GENERIC[k]) for n, ks in CONFIG_VALID.items() for k in sorted(ks)
            if (n, k) not in (("backbone_config", "None"),  # None: the hub's backbone
                              ("use_pretrained_backbone", "bool"))]  # True: the hub's too
ACCEPTED += [(n, v) for n, vs in EXTREMES.items() for v in vs]


@pytest.mark.parametrize("name,value", ACCEPTED, ids=_ids(ACCEPTED))
def test_accepted_values_give_finite_outputs(name: str, value) -> None:
    model = Spool(tiny_config(**{name: value})).eval()
    video = torch.randint(0, 256, (1, 3, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        for out in (model(video), model.forward_tokens(torch.zeros(1, 3, 17, 24)),
                    model.forward_tokens(100 * torch.randn(1, 3, 17, 24))):
            assert torch.isfinite(out.features).all() and torch.isfinite(out.context).all()


# --- models: constructors and forwards ------------------------------------------------------

@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    config = tiny_config(class_names=["a", "b"])
    return {"spool": Spool(config).eval(),
            "spool_clf": SpoolForVideoClassification(config).eval(),
            "pooling_clf": FramePoolingForVideoClassification(config).eval()}


@pytest.mark.parametrize("cls", [Spool, SpoolForVideoClassification,
                                 FramePoolingForVideoClassification])
def test_constructors_reject(cls) -> None:
    _rejects(lambda: cls("config.json"), "config")
    _rejects(lambda: cls(tiny_config(class_names=["a"]), with_backbone="no"), "with_backbone")
    _rejects(lambda: cls(tiny_config(class_names=["a"]), num_layers=2), "num_layers")
    _rejects(lambda: cls(tiny_config(class_names=["a"]), image_size=-3), "image_size")
    _rejects(lambda: cls(tiny_config(class_names=["a"]), with_backbone=False), "hidden_size")
    if cls is not Spool:
        _rejects(lambda: cls(tiny_config()), "class_names")
        _rejects(lambda: cls(tiny_config(class_names="ab")), "class_names")


BAD_VIDEOS = [None, [[1, 2]], np.zeros((1, 2, 32, 32, 3), np.uint8), torch.rand(2, 32, 32, 3),
              torch.rand(1, 2, 32, 32, 4), torch.rand(1, 0, 32, 32, 3),
              torch.rand(0, 2, 32, 32, 3), torch.rand(1, 2, 0, 32, 3),
              torch.full((1, 2, 32, 32, 3), NAN), torch.full((1, 2, 32, 32, 3), -INF),
              torch.rand(1, 2, 32, 32, 3) * 255, -torch.rand(1, 2, 32, 32, 3),
              torch.zeros(1, 2, 32, 32, 3, dtype=torch.int64),
              torch.zeros(1, 2, 32, 32, 3, dtype=torch.bool),
              torch.zeros(1, 2, 32, 32, 3, dtype=torch.complex64)]
BAD_TOKENS = [None, [[1.0]], np.zeros((1, 2, 17, 24), np.float32), torch.zeros(2, 17, 24),
              torch.zeros(1, 2, 17, 25), torch.zeros(1, 2, 16, 24), torch.zeros(1, 0, 17, 24),
              torch.zeros(0, 2, 17, 24), torch.full((1, 2, 17, 24), NAN),
              torch.full((1, 2, 17, 24), INF, dtype=torch.float16),
              torch.zeros(1, 2, 17, 24, dtype=torch.int32),
              torch.zeros(1, 2, 17, 24, dtype=torch.bool),
              torch.zeros(1, 2, 17, 24, dtype=torch.complex64)]


@pytest.mark.parametrize("which", ["spool", "spool_clf", "pooling_clf"])
@pytest.mark.parametrize("video", BAD_VIDEOS, ids=range(len(BAD_VIDEOS)))
def test_forward_rejects_bad_video(models, which: str, video) -> None:
    _rejects(lambda: models[which](video), "video")


@pytest.mark.parametrize("which", ["spool", "spool_clf", "pooling_clf"])
@pytest.mark.parametrize("tokens", BAD_TOKENS, ids=range(len(BAD_TOKENS)))
def test_forward_tokens_rejects_bad_tokens(models, which: str, tokens) -> None:
    _rejects(lambda: models[which].forward_tokens(tokens), "tokens")


@pytest.mark.parametrize("labels", [[0], torch.tensor([0.0]), torch.tensor([[0]]),
                                    torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([-1]),
                                    np.array([0])])
@pytest.mark.parametrize("which", ["spool_clf", "pooling_clf"])
def test_classifiers_reject_bad_labels(models, which: str, labels) -> None:
    _rejects(lambda: models[which](tokens=torch.zeros(1, 2, 17, 24), labels=labels), "labels")


@pytest.mark.parametrize("which", ["spool_clf", "pooling_clf"])
def test_classifiers_need_exactly_one_input(models, which: str) -> None:
    _rejects(lambda: models[which](), "video/tokens")
    video = torch.zeros(1, 2, 32, 32, 3, dtype=torch.uint8)
    _rejects(lambda: models[which](video, tokens=torch.zeros(1, 2, 17, 24)), "video/tokens")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("which", ["spool", "spool_clf", "pooling_clf"])
def test_tokens_of_any_float_dtype_are_cast_to_the_model(models, which: str, dtype) -> None:
    # A float16 token cache used to end in "mat1 and mat2 must have the same dtype".
    tokens = torch.randn(2, 3, 17, 24)
    model = models[which]
    with torch.no_grad():
        want, got = model.forward_tokens(tokens)[0], model.forward_tokens(tokens.to(dtype))[0]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)


# --- TrainConfig: every field ------------------------------------------------------------------

TRAIN_VALID = {
    "out_dir": {"str"}, "train_data": {"str"}, "val_data": {"None", "str"},
    "val_cache": {"None", "str"}, "init": {"None", "str"}, "model": {"dict"},
    "frame_stride": {"None"}, "eval_batch_size": {"None"}, "stop_after_steps": {"None"},
    "augment": {"bool"}, "hflip": {"bool"}, "amp": {"bool"}, "gradient_checkpointing": {"bool"},
    "tensorboard": {"bool"}, "quiet": {"bool"}, "lr": {"float"},
    "weight_decay": {"float", "zero"}, "warmup_epochs": {"float", "zero"},
    "min_lr_ratio": {"zero"}, "grad_clip": {"None", "float"}, "label_smoothing": {"zero"},
    "seed": {"zero"}, "num_workers": {"zero"}, "save_every": {"zero"},
    "resume": {"None", "str"}, "name": {"None", "str"}, "train_cache": {"None"},
    "crop_frames": {"None"}, "fps": {"float"}, "train_split": {"str"}, "val_split": {"str"},
}
TRAIN_EXTRA = {"epochs": [2.0], "batch_size": [2.5], "seed": [2**32], "lr": [1e400 / 1e400],
               "crop_scale": [[0.5], [0.9, 0.4], [0, 1], ["0.4", "1"]], "device": ["gpu"],
               "architecture": ["transformer"], "model": [{"num_layers": 2}],
               "out_dir": [""], "min_lr_ratio": [1.5], "label_smoothing": [1.0],
               "task": ["segmentation"], "background": [["bg", 3]], "crop_frames": [0]}
TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
TRAIN_CASES = _cases(TRAIN_FIELDS, TRAIN_VALID, TRAIN_EXTRA)


@pytest.mark.parametrize("name,value", TRAIN_CASES, ids=_ids(TRAIN_CASES))
def test_train_config_rejects(name: str, value) -> None:
    _rejects(lambda: TrainConfig(**{"train_data": "train.txt", name: value}), name)


# --- samplers and preprocessing ----------------------------------------------------------------

SAMPLER_ARGS = {  # class: (valid arguments, {argument: generic values it accepts})
    samplers.UniformSampler: ({"num_frames": 4, "num_clips": 1}, {}),
    samplers.ClipSampler: ({"num_frames": 4, "frame_stride": 2, "num_clips": 1}, {}),
    samplers.FpsSampler: ({"target_fps": 2.0, "max_frames": None, "use_timestamps": True},
                          {"target_fps": {"float"}, "max_frames": {"None"},
                           "use_timestamps": {"bool"}}),
    samplers.StrideSampler: ({"stride": 2, "max_frames": None}, {"max_frames": {"None"}}),
    samplers.SlidingWindowSampler: ({"clip_len": 4, "stride": 2, "tail": "align"},
                                    {"stride": {"None"}}),
}
SAMPLER_CASES = [(cls, name, value) for cls, (args, valid) in SAMPLER_ARGS.items()
                 for name, value in _cases(list(args), valid, {})]


@pytest.mark.parametrize("cls,name,value", SAMPLER_CASES,
                         ids=[f"{c.__name__}.{n}={v!r}"[:50] for c, n, v in SAMPLER_CASES])
def test_samplers_reject(cls, name: str, value) -> None:
    args, _ = SAMPLER_ARGS[cls]
    _rejects(lambda: cls(**{**args, name: value}), name)


@pytest.mark.parametrize("cls", list(SAMPLER_ARGS))
def test_sampler_calls_reject(cls) -> None:
    sampler = cls(**SAMPLER_ARGS[cls][0])
    for value in (0, -3, 2.5, "10", None, True, NAN):
        _rejects(lambda v=value: sampler(v, fps=25.0), "num_frames")
    _rejects(lambda: sampler(10, fps=25.0, rng=np.random.RandomState(0)), "rng")
    _rejects(lambda: sampler(10, fps=25.0, rng=0), "rng")
    if cls.needs_fps:
        for fps in (None, 0, -1.0, NAN, INF, "25"):
            _rejects(lambda f=fps: sampler(10, fps=f), "fps")
    _rejects(lambda: samplers.make_sampler("random"), "name")
    _rejects(lambda: samplers.make_sampler(["uniform"]), "name")


PREPROCESSING_CASES = _cases(["image_size", "resize_mode", "crop_pct"], {"crop_pct": {}},
                             {"crop_pct": [1.01], "resize_mode": ["crop"]})


@pytest.mark.parametrize("name,value", PREPROCESSING_CASES, ids=_ids(PREPROCESSING_CASES))
def test_frame_preprocessing_rejects(name: str, value) -> None:
    args = {"image_size": 32, "resize_mode": "center_crop", "crop_pct": 0.875}
    _rejects(lambda: FramePreprocessing(**{**args, name: value}), name)


def test_frame_transforms_reject_bad_frames_and_settings() -> None:
    pre, crop = FramePreprocessing(16), RandomResizedCrop()
    rng = np.random.default_rng(0)
    for frames in (None, torch.zeros(4, 8, 8), torch.zeros(4, 8, 8, 4), torch.zeros(0, 8, 8, 3),
                   torch.zeros(2, 8, 8, 3, dtype=torch.int16), np.zeros((2, 8, 8, 3))):
        _rejects(lambda f=frames: pre(f), "frames")
        _rejects(lambda f=frames: crop(f, 16, rng), "frames")
    frames = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    for size in (0, -1, 2.5, None):
        _rejects(lambda s=size: crop(frames, s, rng), "size")
    _rejects(lambda: crop(frames, 16, 3), "rng")
    for scale in ((0.0, 1.0), (0.9, 0.4), (0.4,), ("0.4", "1"), None, (NAN, 1.0)):
        _rejects(lambda s=scale: RandomResizedCrop(s), "crop_scale")
    _rejects(lambda: RandomResizedCrop(hflip="yes"), "hflip")


def test_every_field_is_fuzzed() -> None:
    # A new field must come with its bad values here (or be fully covered by the generic ones).
    assert {n for n, _ in CONFIG_CASES} == set(CONFIG_FIELDS)
    assert {n for n, _ in TRAIN_CASES} == set(TRAIN_FIELDS)
    assert math.isnan(TRAIN_EXTRA["lr"][0])
