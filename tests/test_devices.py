"""Attention backends and the model on every device this machine has, in fp32 and bf16.

CUDA cases skip without a GPU; ``bench/gpu_checks.py`` runs this file on one (issue 12).
bf16 tolerance, against the fp32 reference on the same inputs: attention outputs (inputs drawn
from N(0, 1)) within 2e-2 absolute, mean absolute difference under 2e-3; model features
(LayerNorm'd, unit variance) within 8e-2, mean under 1e-2. bf16 keeps 8 significant bits
(relative step 2^-8 = 0.004), and the reference computed in bf16 itself misses fp32 by up to
1.1e-2 on these attention shapes.
"""

import pytest
import torch
from conftest import CUDA_ONLY, DEVICES, tiny_config

from spool import Spool
from spool.layers.attention_backends import ATTENTION_BACKENDS

SHAPE = dict(T=13, w=4, nb=3, H=6, L=17, hd=64)  # F*L = 255 tokens: two flex blocks


def _qkv(device, dtype=torch.float32, requires_grad=False, T=SHAPE["T"]):
    torch.manual_seed(0)
    shape = (SHAPE["H"], 2, T + 2, SHAPE["L"], SHAPE["hd"])
    return [torch.randn(shape, device=device).to(dtype).requires_grad_(requires_grad)
            for _ in range(3)]


def _attend(name, q, k, v):
    return ATTENTION_BACKENDS[name].function(q, k, v, num_lookback_heads=SHAPE["nb"],
                                             local_frame_range=SHAPE["w"])


def _backward_ok(name, device):
    return ATTENTION_BACKENDS[name].unsupported(device, backward=True) is None


@pytest.mark.parametrize("name", ["blocked", "dense", "flex"])
@pytest.mark.parametrize("device", DEVICES)
def test_backend_matches_reference_fp32(device, name):
    backward = _backward_ok(name, device)
    q, k, v = _qkv(device, requires_grad=backward)
    with torch.set_grad_enabled(backward):
        ref = _attend("reference", q, k, v)
        out = _attend(name, q, k, v)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    if backward:  # flex has no CPU backward in torch 2.13 (select_backend refuses it there)
        grad_out = torch.randn_like(ref)
        expected = torch.autograd.grad(ref, (q, k, v), grad_out)
        for g, e in zip(torch.autograd.grad(out, (q, k, v), grad_out), expected, strict=True):
            torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["blocked", "dense", "flex", "reference"])
@pytest.mark.parametrize("device", DEVICES)
def test_backend_in_bf16_within_tolerance(device, name):
    q, k, v = _qkv(device)
    with torch.no_grad():
        ref = _attend("reference", q, k, v)
        out = _attend(name, *(x.bfloat16() for x in (q, k, v)))
    assert out.dtype == torch.bfloat16
    diff = (out.float() - ref).abs()
    assert diff.max() <= 2e-2 and diff.mean() <= 2e-3, (diff.max().item(), diff.mean().item())


def _video(device):
    return torch.randint(0, 256, (2, 7, 32, 32, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(1)).to(device)


def _model(**overrides) -> Spool:
    torch.manual_seed(0)
    return Spool(tiny_config(num_hidden_layers=2, **overrides)).eval()


@pytest.mark.parametrize("name", ["auto", "flex"])
@pytest.mark.parametrize("device", CUDA_ONLY)
def test_model_on_gpu_matches_cpu(device, name):
    """The model on CUDA (``auto``, i.e. blocked, or flex) gives the CPU's features."""
    with torch.no_grad():
        expected = _model()(_video("cpu"))
        out = _model(attn_implementation=name).to(device)(_video(device))  # the same weights
    for got, want in zip(out, expected, strict=True):
        torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_model_replayed_from_a_cuda_graph_matches_eager(device):
    """A whole forward captured in one CUDA graph (what takes short clips past launch overhead,
    docs/benchmarks.md, "GPU"): no host sync inside (the input checks skip values while
    capturing), and replaying it on new frames gives the eager features."""
    model = _model().to(device)
    video = _video(device)
    with torch.no_grad():
        for _ in range(2):  # warm-up: the blocked plan's masks are made on the first call
            model(video)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = model(video)
        video.copy_(torch.flip(video, dims=[1]))  # new frames into the captured input
        graph.replay()
        expected = model(video)
    for got, want in zip(captured, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_model_in_bf16_within_tolerance(device):
    model = _model().to(device)
    with torch.no_grad():
        expected = model(_video(device))
        out = model.to(torch.bfloat16)(_video(device))
    for got, want in zip(out, expected, strict=True):
        assert got.dtype == torch.bfloat16
        diff = (got.float() - want).abs()
        assert diff.max() <= 8e-2 and diff.mean() <= 1e-2, (diff.max().item(), diff.mean().item())


@pytest.mark.parametrize("name", ["blocked", "flex"])
@pytest.mark.parametrize("device", DEVICES)
def test_training_step_gradients_agree_across_backends(device, name):
    """One training step's gradients with blocked, and flex where it has a backward pass (CUDA),
    equal those with the dense reference mask."""
    if not _backward_ok(name, device):
        pytest.skip(f"{name} has no backward pass on {device}")
    grads = {}
    for impl in (name, "reference"):
        model = _model(attn_implementation=impl).to(device).train()
        model(_video(device)).context.square().sum().backward()
        grads[impl] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads[name].keys() == grads["reference"].keys() and grads[name]
    for n, g in grads[name].items():
        torch.testing.assert_close(g, grads["reference"][n], atol=1e-4, rtol=1e-3, msg=n)


@pytest.mark.parametrize("device", CUDA_ONLY)
def test_training_on_gpu_follows_cpu(device, tmp_path):
    """The same tiny run on CUDA (fp32, no autocast) and on the CPU: the same losses; with
    bf16 autocast (the GPU default) it trains too, with finite losses."""
    from train_helpers import read_steps, train_config_dict

    from spool.train.config import TrainConfig
    from spool.train.trainer import train

    runs = {}
    for name, changes in {"cpu": dict(device="cpu"), "gpu": dict(device=device, amp=False),
                          "amp": dict(device=device, amp=True)}.items():
        train(TrainConfig(**train_config_dict(tmp_path / name, **changes)))
        runs[name] = [loss for _, loss in read_steps(tmp_path / name)]
    assert len(runs["cpu"]) == len(runs["gpu"]) == len(runs["amp"]) == 8
    # cuDNN may run the patch-embedding convolution in TF32: hence not 1e-5.
    torch.testing.assert_close(runs["gpu"], runs["cpu"], rtol=1e-2, atol=1e-3)
    assert all(torch.isfinite(torch.tensor(runs["amp"])))


@pytest.mark.parametrize("device", CUDA_ONLY)
@pytest.mark.parametrize("mode", [["--num-frames", "4"],
                                  ["--per-frame", "--stride", "1", "--chunk-frames", "4"],
                                  ["--per-frame", "--stride", "1", "--offload-dir", "scratch"]])
def test_extract_on_gpu_matches_cpu(device, mode, tmp_path):
    """``spool extract --device cuda`` (bf16 autocast by default) against the CPU's fp32: clips,
    and long videos' per-frame pass (its hidden state in a resumable file for --offload-dir)."""
    import json

    import numpy as np
    from conftest import tiny_backbone, tiny_model_args
    from safetensors.torch import load_file

    from spool.cli import main
    from spool.video import write_video

    frames = np.random.default_rng(0).integers(0, 256, (12, 32, 48, 3), dtype=np.uint8)
    write_video(tmp_path / "a.mp4", frames, fps=10, codec="libx264")
    config = tmp_path / "backbone.json"
    config.write_text(json.dumps(tiny_backbone()))
    out = {}
    for dev in ("cpu", device):
        args = ["extract", str(tmp_path / "a.mp4"), "--out", str(tmp_path / dev),
                *tiny_model_args(config), "--no-progress", "--device", dev,
                *[str(tmp_path / a) if a == "scratch" else a for a in mode]]
        assert main(args) == 0
        out[dev] = load_file(tmp_path / dev / "a.safetensors")
    diff = (out[device]["context"].float() - out["cpu"]["context"]).abs()
    assert diff.max() <= 8e-2 and diff.mean() <= 1e-2, (diff.max().item(), diff.mean().item())
