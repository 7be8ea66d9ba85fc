"""Input checks: bad input raises a ``ValueError`` naming the argument, never a deep torch error."""

from __future__ import annotations

import math

import torch
from torch._subclasses.fake_tensor import FakeTensor

# Floating dtypes pixels may come in; float8 ones have no resize (nor isfinite, for e4m3).
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def value_range(x: torch.Tensor) -> tuple[float, float]:
    """``(min, max)`` of a non-empty floating ``x`` in one pass: NaN if any value is NaN, and
    an infinity shows as one (``isfinite(x).all()`` makes a bool tensor as large as ``x``
    first: far slower on the CPU). float8 values, which have no ``aminmax``, are upcast."""
    x = x.detach()
    lo, hi = (x if x.element_size() > 1 else x.float()).aminmax()
    return float(lo), float(hi)


def all_finite(x: torch.Tensor) -> bool:
    """Whether every value of the floating ``x`` is finite (:func:`value_range`'s one pass)."""
    return not x.numel() or all(map(math.isfinite, value_range(x)))


def _shape(x: torch.Tensor) -> str:
    return str(tuple(x.shape))


def values_checkable(x: torch.Tensor) -> bool:
    """False while ``x``'s values cannot be read: on the meta device or as a fake tensor (shape
    inference, ``torch.export``: a read would be data-dependent), while ``torch.jit`` traces
    (the ONNX exporter: a read would be frozen into the graph as a constant), and during CUDA
    graph capture (kernels are recorded, not run, and a host sync would abort the capture).
    Under ``torch.compile`` they are read (a graph break). Shapes and dtypes are checked
    always."""
    if (x.is_meta or isinstance(x, FakeTensor) or torch.compiler.is_exporting()
            or torch.jit.is_tracing()):
        return False
    return not (x.is_cuda and torch.cuda.is_current_stream_capturing())


def check_video(video: torch.Tensor) -> None:
    """``video: [B, T, H, W, 3]``, uint8 or floating point in [0, 1], finite."""
    if not isinstance(video, torch.Tensor):
        raise ValueError(f"video: expected a torch.Tensor [B, T, H, W, 3], got {type(video)}")
    if video.ndim != 5:
        raise ValueError(f"video: expected a 5-D tensor [B, T, H, W, 3], got {video.ndim}-D "
                         f"with shape {_shape(video)}")
    if video.shape[-1] != 3:
        hint = "; channels first? video.permute(0, 2, 3, 4, 1) makes [B, C, T, H, W] " \
            "channels last" if video.shape[1] == 3 and video.shape[-1] != 4 else ""  # (not RGBA)
        raise ValueError(f"video: expected 3 (RGB) channels in the last dimension of "
                         f"[B, T, H, W, C], got C={video.shape[-1]} (shape {_shape(video)}"
                         f"{hint})")
    B, T, H, W, _ = video.shape
    if B == 0 or T == 0 or H == 0 or W == 0:
        raise ValueError(f"video: expected B, T, H, W >= 1, got shape {_shape(video)} "
                         "(T is the number of frames)")
    if video.dtype == torch.uint8:
        return
    if video.dtype not in FLOATS:
        raise ValueError(f"video: expected dtype uint8 (0..255) or floating point in [0, 1] "
                         f"(float16, bfloat16, float32, float64), got {video.dtype}")
    if not values_checkable(video):
        return
    lo, hi = value_range(video)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("video: expected finite values, got NaN or Inf")
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"video: expected floating point values in [0, 1], got range "
                         f"[{lo:.4g}, {hi:.4g}] (pass uint8 for 0..255 pixels)")


def check_tokens(tokens: torch.Tensor, num_tokens: int, hidden_size: int) -> None:
    """``tokens: [B, T, L, D]`` precomputed backbone tokens, floating point and finite."""
    if not isinstance(tokens, torch.Tensor):
        raise ValueError(f"tokens: expected a torch.Tensor [B, T, L, D], got {type(tokens)}")
    if tokens.ndim != 4:
        raise ValueError(f"tokens: expected a 4-D tensor [B, T, L, D], got {tokens.ndim}-D "
                         f"with shape {_shape(tokens)}")
    B, T, L, D = tokens.shape
    if B == 0 or T == 0:
        raise ValueError(f"tokens: expected B, T >= 1, got shape {_shape(tokens)}")
    if D != hidden_size:
        raise ValueError(f"tokens: expected D={hidden_size} (the backbone's hidden size) in "
                         f"[B, T, L, D], got D={D} (shape {_shape(tokens)})")
    if L != num_tokens:
        raise ValueError(f"tokens: expected L={num_tokens} tokens per frame in [B, T, L, D], "
                         f"got L={L} (shape {_shape(tokens)})")
    if not tokens.is_floating_point():
        raise ValueError(f"tokens: expected a floating point dtype, got {tokens.dtype}")
    if values_checkable(tokens) and not all_finite(tokens):  # float8 too: cast as any others
        raise ValueError("tokens: expected finite values, got NaN or Inf")


# check_storable's advice: a token cache stored as float16; a float32 compute dtype
STORE_AS_FLOAT32 = "store them as float32 (spool cache --dtype float32; dtype='float32')"
COMPUTE_IN_FLOAT32 = "spool cache --compute-dtype float32"
EXTRACT_IN_FLOAT32 = "spool extract --compute-dtype float32"


def storage_problem(values: torch.Tensor, dtype: torch.dtype, *, advice: str = "",
                    compute_flag: str = "") -> str | None:
    """Why ``values`` (floating point) cannot be stored as ``dtype``: NaN or infinite values
    (with ``compute_flag``, the flag of a float32 compute dtype) or values past ``dtype``'s
    range (with ``advice``); None when they can. One pass (NaN propagates through
    ``aminmax``)."""
    if not values.numel():
        return None
    lo, hi = value_range(values)
    name = str(dtype).removeprefix("torch.")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return ("the model gave NaN or infinite values: are its weights damaged, or does it "
                "overflow in its compute dtype" +
                (f" (try {compute_flag})?" if compute_flag else "?"))
    if max(-lo, hi) > torch.finfo(dtype).max:
        return (f"the model's outputs reach {max(-lo, hi):.4g}, past {name}'s largest value "
                f"{torch.finfo(dtype).max:.6g}: stored as {name} they would be infinite"
                f"{'; ' + advice if advice else ''}")
    return None


def check_storable(values: torch.Tensor, dtype: torch.dtype, where: str = "", *,
                   advice: str = "", compute_flag: str = "") -> torch.Tensor:
    """``values`` if :func:`storage_problem` finds none, else a ``ValueError`` saying it after
    ``where`` (a video): stored as they are, they would be inf or NaN in a cache or features
    file and fail only when read, naming neither."""
    problem = storage_problem(values, dtype, advice=advice, compute_flag=compute_flag)
    if problem is not None:
        raise ValueError(f"{where}: {problem}" if where else problem)
    return values


def parameter_dtype(*modules: torch.nn.Module) -> torch.dtype:
    """The floating dtype of the first parameter of ``modules`` (float32 if they have none):
    what input tokens are cast to, since a matmul of float16 tokens with float32 weights
    fails deep inside torch."""
    for module in modules:
        for p in module.parameters():
            if p.is_floating_point():
                return p.dtype
    return torch.float32
