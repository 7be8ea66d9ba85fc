"""Defects found reviewing the model and layer code against SPEC.md (eighth session)."""

from pathlib import Path

import torch
from conftest import tiny_config

from spool.models import FrameEncoderModel, SpoolForFrameClassification
from spool.models.frame_encoder import save_frame_encoder


def test_a_frame_classifier_with_background_classes_gives_its_frame_encoder(tmp_path: Path):
    """Defect: the encoder dropped the classes but kept the background ones, which its config
    then refused ("expected names among class_names None"): ``spool cache --task frames
    --init <frame model>`` failed after encoding every video."""
    model = SpoolForFrameClassification(tiny_config(
        class_names=["background", "cut"], background_classes=["background"])).eval()
    save_frame_encoder(model, tmp_path)
    encoder = FrameEncoderModel.from_pretrained(tmp_path).eval()
    assert encoder.config.background_classes is None
    video = torch.randint(0, 256, (1, 2, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(encoder(video), model.frame_encoder(video))
    assert FrameEncoderModel(model.config).config.class_names is None


def test_a_window_or_chunk_longer_than_the_video_needs_no_more_memory(monkeypatch):
    """Defect: the workspace estimate grew with the window and the chunk without bound, so 8
    frames with ``local_frame_range=1024`` (or ``chunk_frames=2000``) were refused with a
    MemoryError for tens of GiB, though the plain forward ran them."""
    import spool.models.long_video as long_video
    from spool import Spool

    monkeypatch.setattr(long_video, "available_memory_bytes", lambda: 10 * 2**20)
    model = Spool(tiny_config(local_frame_range=1024, hidden_size=64, num_spatial_tokens=17,
                              num_attention_heads=4, backbone_config=None),
                  with_backbone=False).eval()
    tokens = torch.randn(8, 17, 64)
    with torch.no_grad():
        plain = model.forward_tokens(tokens[None]).features[0, 1:-1].mean(1)
        for chunk in (4, 2000):
            long = model.forward_long(tokens, chunk_frames=chunk)
            torch.testing.assert_close(long.frame_features, plain, rtol=1e-4, atol=1e-5)


def test_a_window_past_int64_is_every_frame_in_every_backend():
    """Defect: ``local_frame_range=sys.maxsize`` wrapped ``i + w`` negative in the flex and
    reference masks (no lookahead at all), and ``10**20`` raised torch's OverflowError."""
    import sys

    from spool.layers.attention_blocked import blocked_attention
    from spool.layers.attention_dense import dense_attention
    from spool.layers.attention_flex import flex_attention
    from spool.layers.attention_reference import reference_attention

    q, k, v = (torch.randn(2, 1, 7, 3, 16) for _ in range(3))
    with torch.no_grad():
        every = reference_attention(q, k, v, num_lookback_heads=1, local_frame_range=6)
        for fn in (blocked_attention, dense_attention, reference_attention, flex_attention):
            for w in (sys.maxsize, 10**20):
                out = fn(q, k, v, num_lookback_heads=1, local_frame_range=w)
                torch.testing.assert_close(out, every, rtol=1e-5, atol=1e-5,
                                           msg=f"{fn.__name__}, w={w}")


def test_a_backbone_that_resizes_without_cropping_is_squashed(tmp_path: Path):
    """Defect: only the crop of a local backbone's processor was followed, so one that
    resizes to a square without cropping (ViT, SigLIP) had its frames centre-cropped."""
    import json

    from transformers import AutoConfig, AutoModel

    from spool import Spool

    AutoModel.from_config(AutoConfig.for_model(
        "vit", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, patch_size=8, image_size=32)).save_pretrained(tmp_path)
    processor = {"do_resize": True, "size": {"height": 32, "width": 32},
                 "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    args = dict(num_hidden_layers=1, num_attention_heads=2, num_lookahead_heads=1,
                num_lookback_heads=1, image_size=32, local_frame_range=2,
                backbone_name=str(tmp_path))
    assert Spool(**args).config.resize_mode == "squash"
    assert Spool(**args, crop_pct=0.5).config.resize_mode == "center_crop"  # an explicit crop
    assert Spool(**args, resize_mode="pad").config.resize_mode == "pad"
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {**processor, "do_center_crop": True, "size": {"shortest_edge": 40},
         "crop_size": {"height": 32, "width": 32}}))
    config = Spool(**args).config
    assert (config.resize_mode, config.crop_pct) == ("center_crop", 0.8)


def test_a_float64_model_rotates_in_float64():
    """Defect: rotary always ran in float32, so a ``.double()`` model was float32-accurate
    and failed ``gradcheck``; float32 and half models rotate in float32 as before."""
    from spool import Spool
    from spool.layers.rotary import FrameRotaryEmbedding, apply_rotary

    rotary = FrameRotaryEmbedding(8).double()
    assert rotary.inv_freq.dtype == torch.float64
    x = torch.randn(3, 2, 8, dtype=torch.float64)
    positions = torch.arange(3)
    angle = positions[:, None, None] * 10000.0 ** (-torch.arange(0, 8, 2).double() / 8)
    cos, sin = angle.cos(), angle.sin()
    even, odd = x[..., 0::2], x[..., 1::2]
    exact = torch.stack((even * cos - odd * sin, even * sin + odd * cos), -1).flatten(-2)
    torch.testing.assert_close(apply_rotary(x, rotary.freqs_at(positions)), exact,
                               rtol=1e-13, atol=1e-13)
    assert FrameRotaryEmbedding(8).half().float().inv_freq.dtype == torch.float32
    model = Spool(tiny_config(hidden_size=8, num_spatial_tokens=2, backbone_config=None),
                  with_backbone=False).double()
    tokens = torch.randn(1, 3, 2, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: model.forward_tokens(t).features, (tokens,),
                                    eps=1e-6, atol=1e-5)


def test_clip_classifiers_say_head_settings_are_ignored_and_training_refuses_them(
        tmp_path: Path):
    """Defect: ``head_config={"context_in_head": True}`` built a clip classifier that ignored
    it without a word, though the frame classifiers refuse keys they do not take. A
    checkpoint saved with one still loads (with a warning); ``spool train`` refuses it."""
    import logging

    import pytest

    from spool.models import FramePoolingForVideoClassification, SpoolForVideoClassification
    from spool.models.pretrained import load_pretrained
    from spool.train.builders import build_model
    from spool.train.config import TrainConfig

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("spool.models.classification")
    logger.addHandler(handler)
    try:
        for cls in (SpoolForVideoClassification, FramePoolingForVideoClassification):
            model = cls(tiny_config(class_names=["a", "b"],
                                    head_config={"context_in_head": True, "bogus": 1}))
            model.save_pretrained(tmp_path / cls.__name__)
            assert type(load_pretrained(tmp_path / cls.__name__)) is cls
    finally:
        logger.removeHandler(handler)
    assert len(records) == 4 and "['bogus', 'context_in_head'] are ignored" in records[0]
    config = tiny_config(head_config={"context_in_head": True})
    with pytest.raises(ValueError, match="does not apply to SpoolForVideoClassification"):
        build_model(TrainConfig(train_data="x.txt"), config, ["a", "b"])
    head = {"num_stages": 1, "num_layers": 2, "num_channels": 8}  # a frame baseline's is kept
    model = build_model(TrainConfig(task="frames", train_data="x.csv", architecture="ms_tcn"),
                        config.replace(head_config=head), ["a", "b"])
    assert model.config.head_config == head


def test_a_backbone_without_tokens_is_refused_by_name():
    """Defect: a ConvNet backbone (no ``hidden_size``, a ``[B, C, H, W]`` output) gave
    "'FrameEncoder' object has no attribute 'hidden_size'"."""
    import pytest

    from spool import Spool

    convnext = {"model_type": "convnext", "hidden_sizes": [8, 16, 24, 32],
                "depths": [1, 1, 1, 1]}
    with pytest.raises(ValueError, match=r"backbone: expected a vision transformer .*"
                                         r"ConvNextModel returns shape \(1, 32, 1, 1\)"):
        Spool(tiny_config(backbone_config=convnext))


def test_a_backbone_that_cannot_encode_a_frame_is_a_one_line_error(monkeypatch):
    """A text model as backbone_config raised transformers' "You must specify exactly one of
    input_ids or inputs_embeds", and image_size=100000 the allocator's RuntimeError (a
    traceback from the CLI): both are a ValueError naming the backbone and the size."""
    import pytest
    import transformers

    from spool import Spool

    bert = {"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16, "vocab_size": 10}
    with pytest.raises(ValueError, match=r"^backbone: BertModel could not encode one blank "
                                         r"32x32 frame \(image_size 32\): ValueError: You must"):
        Spool(tiny_config(backbone_config=bert))

    def no_memory(self, *args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                           "120000000000 bytes.\nError code 12")

    monkeypatch.setattr(transformers.Dinov2Model, "forward", no_memory)
    with pytest.raises(ValueError, match=r"^backbone: Dinov2Model could not encode one blank "
                                         r"32x32 frame \(image_size 32\): RuntimeError: "
                                         r"DefaultCPUAllocator: can't allocate memory: .* bytes.$"):
        Spool(tiny_config())


def test_rotary_frequencies_return_exact_after_a_float64_round_trip():
    """Review of my change: ``.double().float()`` left float64's frequencies rounded to
    float32 (up to 6e-8 off; 2.4e-4 in the rotation at frame 4000)."""
    from spool.layers.rotary import FrameRotaryEmbedding

    fresh = FrameRotaryEmbedding(64).inv_freq
    assert torch.equal(FrameRotaryEmbedding(64).double().float().inv_freq, fresh)
    assert torch.equal(FrameRotaryEmbedding(64).half().float().inv_freq, fresh)
    kept = FrameRotaryEmbedding(64)
    buffer = kept.inv_freq
    assert kept.to("cpu").inv_freq is buffer  # a move that changes nothing keeps the tensor


def test_a_loaded_model_is_in_eval_mode(tmp_path: Path):
    """from_pretrained returned the model in training mode: with dropout in its config (the
    demo trains with 0.1) two calls on the same clip disagreed, unless the user called
    .eval(), which transformers' from_pretrained does for them."""
    from spool import Spool
    from spool.models import SpoolForVideoClassification, load_classifier, load_pretrained

    config = tiny_config(hidden_dropout=0.3, attention_dropout=0.3)
    video = torch.randint(0, 256, (1, 3, 32, 32, 3), dtype=torch.uint8)
    Spool(config).save_pretrained(tmp_path / "spool")
    classifier = SpoolForVideoClassification(config, class_names=["a", "b", "c"])
    classifier.save_pretrained(tmp_path / "clf")
    for model in (Spool.from_pretrained(tmp_path / "spool"),
                  load_pretrained(tmp_path / "spool"), load_classifier(tmp_path / "clf")):
        assert not any(m.training for m in model.modules())
        with torch.no_grad():
            first, second = model(video), model(video)
        first = first[0] if isinstance(first, tuple) else first.logits
        second = second[0] if isinstance(second, tuple) else second.logits
        torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_a_config_changed_after_the_model_was_built_is_not_saved(tmp_path: Path):
    """model.config.local_frame_range set after the build: the layers kept the old window, but
    save_pretrained wrote the new one, so the reloaded model computed another function from
    the same weights (max difference 0.155)."""
    import pytest

    from spool import Spool

    model = Spool(tiny_config(local_frame_range=1)).eval()
    model.config.local_frame_range = 3
    with pytest.raises(ValueError, match=r"config: local_frame_range 1 -> 3 set after the model "
                                         r"was built, which its layers do not follow"):
        model.save_pretrained(tmp_path)
    assert not (tmp_path / "model.safetensors").exists()
    model.config.local_frame_range = 1
    model.config.sampling = {"mode": "uniform"}  # how it runs or was trained: saved as it is
    model.save_pretrained(tmp_path)


def test_runtime_switches_reach_the_built_layers(tmp_path: Path):
    """Setting config.attn_implementation or config.gradient_checkpointing on a built model
    changed nothing; the setters do, and the saved config says so."""
    from spool import Spool

    model = Spool(tiny_config(num_hidden_layers=2)).eval()
    tokens = torch.randn(1, 5, model.config.num_spatial_tokens, model.config.hidden_size)
    with torch.no_grad():
        before = model.forward_tokens(tokens).features
    model.set_attn_implementation("reference")
    assert {layer.attn.implementation for layer in model.temporal.layers} == {"reference"}
    with torch.no_grad():
        torch.testing.assert_close(model.forward_tokens(tokens).features, before)
    model.gradient_checkpointing_enable()
    assert model.temporal.gradient_checkpointing and model.config.gradient_checkpointing
    model.save_pretrained(tmp_path)
    again = Spool.from_pretrained(tmp_path)
    assert again.config.attn_implementation == "reference"
    assert again.temporal.gradient_checkpointing
    model.gradient_checkpointing_disable()
    assert not model.temporal.gradient_checkpointing


def test_a_model_on_the_meta_device(tmp_path: Path):
    """Deferred initialisation (accelerate's init_empty_weights, FSDP): .to('meta') and casts of
    a meta model crashed in the rotary embedding (aten::equal), and a forward on meta tokens
    for shapes in the input check (.item()), then in the backend choice ("expected 'auto' or
    one of [...], got 'auto'")."""
    from spool import Spool

    config = Spool(tiny_config(num_hidden_layers=2)).config  # hidden_size etc. filled in
    assert next(Spool(config, with_backbone=False).to("meta").parameters()).is_meta
    with torch.device("meta"):
        model = Spool(config, with_backbone=False)
    assert next(model.half().parameters()).dtype == torch.float16
    tokens = torch.empty(2, 4, config.num_spatial_tokens, config.hidden_size, device="meta")
    out = model.float().forward_tokens(tokens)
    assert out.features.shape == (2, 6, *tokens.shape[2:]) and out.features.is_meta
    real = model.to_empty(device="cpu")
    assert torch.equal(real.temporal.layers[0].attn.rotary.inv_freq,
                       Spool(config, with_backbone=False).temporal.layers[0].attn.rotary.inv_freq)


def test_auto_says_why_no_backend_serves_a_device():
    import pytest

    from spool.layers.attention_backends import select_backend

    with pytest.raises(ValueError, match="attn_implementation='auto': no backend linear in the "
                                         r"number of frames serves this call \(it does not run "
                                         "on hpu\\)"):
        select_backend("auto", "hpu")


def test_what_a_transformers_user_asks_of_a_model():
    """model.dtype / .device / num_parameters() were missing, print(model) hid the heads, the
    window and the backend, and flex in float64 failed deep inside inductor (API audit)."""
    import pytest

    from spool import Spool

    model = Spool(tiny_config(num_hidden_layers=1))
    assert (model.dtype, model.device) == (torch.float32, torch.device("cpu"))
    assert model.double().dtype == torch.float64
    frozen = sum(p.numel() for p in model.backbone.parameters())
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    assert model.num_parameters(only_trainable=True) == model.num_parameters() - frozen
    text = str(model)
    assert "heads=4 (lookback 2), head_dim=6, local_frame_range=2, implementation='auto'" in text
    assert "start and end frames of" in text and "theta=10000" in text
    with torch.no_grad(), pytest.raises(ValueError, match="attn_implementation='flex': it does "
                                                          "not take torch.float64"):
        Spool(tiny_config(attn_implementation="flex")).double().eval().forward_tokens(
            torch.zeros(1, 2, model.config.num_spatial_tokens, 24, dtype=torch.float64))


def test_a_config_replaced_or_changed_for_a_cache_is_refused_too(tmp_path: Path):
    """Review of the refusal: assigning a new config took a new snapshot (the save went
    through), save_frame_encoder and build_cache did not check, and fields that change
    nothing were refused (an equal tuple) or warned about (initializer_range)."""
    import pickle

    import pytest

    from spool import Spool
    from spool.models.frame_encoder import save_frame_encoder

    model = Spool(tiny_config(local_frame_range=2))
    model.config = model.config.replace(local_frame_range=1)
    with pytest.raises(ValueError, match="local_frame_range 2 -> 1 set after the model"):
        model.save_pretrained(tmp_path / "a")
    model = Spool(tiny_config())
    model.config.resize_mode = "squash"
    with pytest.raises(ValueError, match="resize_mode 'center_crop' -> 'squash'"):
        save_frame_encoder(model, tmp_path / "b")
    model.config.resize_mode = "center_crop"
    model.config.image_mean = tuple(model.config.image_mean)  # the same values
    model.config.initializer_range = 0.5  # init only: the weights are what is saved
    model.save_pretrained(tmp_path / "c")
    again = pickle.loads(pickle.dumps(model))
    again.config.local_frame_range = 7
    with pytest.raises(ValueError, match="local_frame_range 2 -> 7"):
        again.save_pretrained(tmp_path / "d")


def test_a_model_pickled_before_config_was_a_property_loads():
    """Whole-model pickles of the earlier version hold ``config`` in the instance dict."""
    from spool import Spool

    model = Spool(tiny_config())
    state = dict(model.__dict__)
    state["config"] = state.pop("_config")
    del state["_built_from"]
    old = Spool.__new__(Spool)
    old.__setstate__(state)
    assert old.config is model.config
    old.check_config_as_built()


def test_a_compiled_model_still_checks_its_inputs():
    """Review of the meta/fake change: under torch.compile no value was checked, so NaN
    tokens gave NaN features without a word (a graph break is the price of the check)."""
    import pytest

    from spool import Spool

    model = Spool(tiny_config()).eval()
    compiled = torch.compile(model.forward_tokens, backend="eager")
    tokens = torch.zeros(1, 2, model.config.num_spatial_tokens, model.config.hidden_size)
    tokens[0, 1, 0, 0] = float("nan")
    with torch.no_grad(), pytest.raises(ValueError, match="tokens: expected finite values"):
        compiled(tokens)


def test_renaming_classes_or_a_temporal_field_is_checked_where_it_matters(tmp_path: Path):
    """Review: renaming a classifier's classes in place (as many) was refused at save, though
    from_pretrained(class_names=...) allows it; a temporal field changed was refused by a
    frame encoder's save, which does not write it."""
    import pytest

    from spool import SpoolForVideoClassification
    from spool.models.frame_encoder import save_frame_encoder

    model = SpoolForVideoClassification(tiny_config(class_names=["a", "b"]))
    model.config.class_names = ["b", "a"]
    model.save_pretrained(tmp_path / "renamed")
    model.config.local_frame_range = 5
    save_frame_encoder(model, tmp_path / "encoder")
    with pytest.raises(ValueError, match="local_frame_range"):
        model.save_pretrained(tmp_path / "other")
    model.config.local_frame_range = 2
    model.config.class_names = ["a", "b", "c"]
    with pytest.raises(ValueError, match="class_names"):
        model.save_pretrained(tmp_path / "more")
