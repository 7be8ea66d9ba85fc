"""ONNX export of forward_tokens: onnxruntime gives eager's outputs at any batch size and clip
length, the real-valued rotary it uses equals the complex one, the model's backend is kept."""

import pytest
import torch
from conftest import tiny_config

from spool import (
    FramePoolingForVideoClassification,
    Spool,
    SpoolForFrameClassification,
    SpoolForVideoClassification,
)
from spool.layers.rotary import FrameRotaryEmbedding, apply_rotary, apply_rotary_real
from spool.models.export import export_onnx
from spool.validation import values_checkable

# onnxruntime vs eager, float32: measured up to 8e-7 (export_onnx's own check: against dense).
ATOL = 1e-5
CLASSES = ["a", "b", "c"]
# Exported at T = 4 (the default example); run at other batch sizes and lengths, shorter and
# longer than the window and than the example.
RUNS = [(1, 2), (2, 7), (1, 13)]


def _attention_backends(model):
    return [layer.attn.implementation for layer in model.temporal.layers]


SPOOL = ("features", "context")
MODELS = {  # a model, and the outputs its graph has
    "spool": (lambda: Spool(tiny_config(num_hidden_layers=2)), SPOOL),
    # a window wider than the example's T + 2 frames: it must not be frozen at their count
    "wide_window": (lambda: Spool(tiny_config(local_frame_range=8)), SPOOL),
    "token_merging": (lambda: Spool(tiny_config(token_merging=2)), SPOOL),
    # dropout: the check compared with eager in training mode (the exporter's doing)
    "dropout": (lambda: Spool(tiny_config(hidden_dropout=0.1, attention_dropout=0.1)), SPOOL),
    "clip_classifier": (lambda: SpoolForVideoClassification(tiny_config(class_names=CLASSES)),
                        ("logits",)),
    "frame_classifier": (lambda: SpoolForFrameClassification(tiny_config(
        class_names=CLASSES, head_config={"context_in_head": True, "refinement_stages": 1})),
        ("logits",)),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_onnxruntime_matches_eager_at_any_length(kind, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    build, fields = MODELS[kind]
    model = build().eval()
    exported = export_onnx(model, tmp_path / "model.onnx")
    assert exported.max_abs_diff <= ATOL
    assert exported.output_names == fields and exported.input_names == ("tokens",)
    session = ort.InferenceSession(exported.path, providers=["CPUExecutionProvider"])
    # the dynamic axes by name, not after graph nodes ('LayerNormalizationfeatures_dim_1')
    L, D, C = model.config.num_spatial_tokens, model.config.hidden_size, len(CLASSES)
    merged = getattr(model, "num_temporal_tokens", L)  # tokens per frame after merging
    named = {"features": ["batch", "frames_plus_2", merged, D], "context": ["batch", 2 * D],
             "logits": ["batch", "frames", C] if kind == "frame_classifier" else ["batch", C]}
    assert {o.name: o.shape for o in session.get_outputs()} == {f: named[f] for f in fields}
    for B, T in RUNS:
        tokens = torch.randn(B, T, L, D)
        with torch.no_grad():
            expected = model.forward_tokens(tokens)
        got = session.run(None, {"tokens": tokens.numpy()})
        for name, value in zip(fields, got, strict=True):
            torch.testing.assert_close(torch.from_numpy(value), getattr(expected, name),
                                       rtol=0, atol=ATOL, msg=f"{kind} {name} at T={T}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_real_rotary_equals_complex(dtype):
    rotary = FrameRotaryEmbedding(16).to(dtype)
    for positions in (torch.arange(9), torch.arange(0, 50_000, 7)):  # hours of frames too
        x = torch.randn(3, 2, len(positions), 5, 16, dtype=dtype)
        complex_ = apply_rotary(x, rotary.freqs_at(positions))
        real = apply_rotary_real(x, *rotary.cos_sin_at(positions))
        assert real.dtype == dtype and real.shape == x.shape
        # the same products and sums; cos/sin against polar: a few ulps
        torch.testing.assert_close(real, complex_, rtol=0,
                                   atol=4 * torch.finfo(dtype).eps * x.abs().max().item())


def test_model_backend_and_mode_are_restored(tmp_path, monkeypatch):
    model = Spool(tiny_config(num_hidden_layers=2))
    model.set_attn_implementation("blocked")
    model.temporal.layers[1].attn.implementation = "reference"
    model.train()
    export_onnx(model, tmp_path / "model.onnx", check=False)
    assert _attention_backends(model) == ["blocked", "reference"]
    assert model.config.attn_implementation == "blocked" and model.training

    def fails(*args, **kwargs):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", fails)
    with pytest.raises(RuntimeError, match="exporter failed"):
        export_onnx(model, tmp_path / "again.onnx")
    assert _attention_backends(model) == ["blocked", "reference"] and model.training


def test_refuses_what_it_cannot_export(tmp_path):
    pooling = FramePoolingForVideoClassification(tiny_config(class_names=CLASSES))
    with pytest.raises(ValueError, match="has none"):
        export_onnx(pooling, tmp_path / "pooling.onnx")
    with pytest.raises(ValueError, match="float32"):
        export_onnx(Spool(tiny_config()).double(), tmp_path / "double.onnx")
    # a part of the stack beyond its first attention layer: onnxruntime failed on it after
    merging = Spool(tiny_config(token_merging=2))
    merging.token_merging.to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"got bfloat16 for token_merging\.\S+; export a "
                                         r"float32 copy"):
        export_onnx(merging, tmp_path / "merging.onnx")
    with torch.device("meta"):
        empty = Spool(tiny_config())
    with pytest.raises(ValueError, match="meta device"):
        export_onnx(empty, tmp_path / "meta.onnx")


def test_the_graph_takes_float32_whatever_the_example_and_backbone(tmp_path):
    """A float16 example (a float16 token cache's) made a float16-input graph, and a float16
    backbone, never exported, was refused as the model's dtype (review)."""
    ort = pytest.importorskip("onnxruntime")
    model = Spool(tiny_config()).eval()
    model.backbone.half()
    L, D = model.config.num_spatial_tokens, model.config.hidden_size
    exported = export_onnx(model, tmp_path / "m.onnx",
                           example_tokens=torch.randn(1, 3, L, D, dtype=torch.float16))
    session = ort.InferenceSession(exported.path, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"


@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_input_check_reads_no_values_while_tracing():
    # A read would be frozen into the exported graph as a constant (and warned about).
    seen = []

    def double(x):
        seen.append(values_checkable(x))
        return 2 * x

    torch.jit.trace(double, torch.ones(2), check_trace=False)  # (a check reruns it eagerly)
    assert seen == [False] and values_checkable(torch.ones(2))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter's
def test_a_backend_that_does_not_trace_is_refused_by_name(tmp_path):
    # torch.onnx.export called directly with the default backend (blocked): a clear error.
    model = Spool(tiny_config()).eval()
    tokens = torch.randn(1, 3, model.config.num_spatial_tokens, model.config.hidden_size)
    with pytest.raises(ValueError, match="attn_implementation='auto'.*'dense'"):
        torch.onnx.export(model.temporal, (tokens,), tmp_path / "blocked.onnx", dynamo=False)


def test_a_missing_exporter_package_is_named_before_anything_is_written(tmp_path, monkeypatch):
    """Without onnxruntime the file was written, then the check failed sending the user to
    the dev extra; without onnx torch's own error came. Both now name the onnx extra."""
    import importlib.util

    find = importlib.util.find_spec
    for absent, check in (("onnxruntime", True), ("onnx", False)):
        with monkeypatch.context() as m:
            m.setattr(importlib.util, "find_spec",
                      lambda name, *a, absent=absent: None if name == absent else find(name, *a))
            with pytest.raises(ImportError, match=rf"needs {absent}.*spool-video\[onnx\]"):
                export_onnx(Spool(tiny_config()), tmp_path / "m.onnx", check=check)
        assert not (tmp_path / "m.onnx").exists()
    with monkeypatch.context() as m:  # check=False asks for no onnxruntime
        m.setattr(importlib.util, "find_spec",
                  lambda name, *a: None if name == "onnxruntime" else find(name, *a))
        export_onnx(Spool(tiny_config()), tmp_path / "m.onnx", check=False)
    assert (tmp_path / "m.onnx").is_file()
