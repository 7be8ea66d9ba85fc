"""Registry of temporal attention backends: lookback and lookahead heads in a local window.

Backends compute exactly the same function (the mask of ``spool/layers/masks.py``) and share
one signature and layout::

    backend(q, k, v, *, num_lookback_heads, local_frame_range, chunk_frames, dropout_p)
    q, k, v: [H, B, F, L, head_dim] (contiguous, rotary applied) -> [B, F, L, H, head_dim]

Heads ``0 .. num_lookback_heads - 1`` are the lookback heads. Each backend declares what it can
do (:class:`AttentionBackend`); ``auto`` and the config validation choose from those
declarations, as transformers' ``ALL_ATTENTION_FUNCTIONS`` registry does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from spool.layers.attention_blocked import blocked_attention
from spool.layers.attention_dense import dense_attention
from spool.layers.attention_flex import flex_attention
from spool.layers.attention_reference import reference_attention

AttentionFunction = Callable[..., torch.Tensor]
_FLOATS = frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64})


@dataclass(frozen=True)
class AttentionBackend:
    """An attention implementation and what it can do.

    ``devices``: device types it runs on; ``backward_devices``: those with a backward pass;
    ``dropout``: whether it applies attention dropout; ``linear``: memory and time linear in
    the number of frames (only the reference is not); ``traces``: ``torch.jit.trace`` (the
    TorchScript ONNX exporter) records it for any number of frames.
    """

    name: str
    function: AttentionFunction
    devices: frozenset[str]
    backward_devices: frozenset[str]
    dropout: bool
    dtypes: frozenset[torch.dtype] = _FLOATS
    linear: bool = True
    traces: bool = False

    def unsupported(self, device: str | None = None, *, backward: bool = False,
                    dropout: float = 0.0, dtype: torch.dtype | None = None) -> str | None:
        """Why this backend cannot serve the request, or None if it can."""
        if device is not None and device not in self.devices:
            return f"it does not run on {device}"
        if backward and device is not None and device not in self.backward_devices:
            return f"torch has no backward pass for it on {device} (no training there)"
        if dropout and not self.dropout:
            return (f"it supports attention_dropout=0.0 only, got {dropout} (for inference "
                    "with a model trained with dropout, also pass attention_dropout=0.0)")
        if dtype is not None and dtype not in self.dtypes:
            return f"it does not take {dtype}"
        return None


ATTENTION_BACKENDS: dict[str, AttentionBackend] = {}


# What ``auto`` tries, in order, per device type: (backend, a test of the batch's shape
# ``(B, F, L)`` it must pass, or None for any shape). Only backends linear in the number of
# frames: SPEC §3 lets a (T+2)L x (T+2)L mask be built only when it is asked for by name. On
# the CPU blocked measured fastest at every shape; on an H200 dense beat it on short clips
# (README, "Attention implementations"), which a user takes by naming it.
AUTO_ORDER: dict[str, tuple[tuple[str, Callable[[int, int, int], bool] | None], ...]] = {
    "cpu": (("blocked", None),),
    "cuda": (("blocked", None),),
}


def register_backend(backend: AttentionBackend) -> None:
    """Add (or replace) a backend; ``attn_implementation=backend.name`` then selects it."""
    ATTENTION_BACKENDS[backend.name] = backend


_ALL = frozenset({"cpu", "cuda", "mps", "xpu", "meta"})  # meta: shapes only
register_backend(AttentionBackend("reference", reference_attention, _ALL, _ALL, dropout=True,
                                  linear=False, traces=True))
register_backend(AttentionBackend("blocked", blocked_attention, _ALL, _ALL, dropout=True))
register_backend(AttentionBackend("dense", dense_attention, _ALL, _ALL, dropout=True,
                                  linear=False, traces=True))
register_backend(AttentionBackend("flex", flex_attention, frozenset({"cpu", "cuda"}),
                                  frozenset({"cuda"}), dropout=False,  # inductor: no float64
                                  dtypes=_FLOATS - {torch.float64}))


def select_backend(name: str, device: torch.device | str | None = None, *,
                   backward: bool = False, dropout: float = 0.0,
                   dtype: torch.dtype | None = None,
                   shape: tuple[int, int, int] | None = None,
                   tracing: bool = False) -> AttentionBackend:
    """The backend for ``attn_implementation=name`` under these conditions.

    ``auto`` takes the first backend of :data:`AUTO_ORDER` that is linear in the number of
    frames, can serve them and whose test the batch's ``shape`` ``(B, F, L)`` passes (an entry
    with a test is skipped when the shape is not given); a named one that cannot serve them
    raises ``ValueError`` saying why. ``tracing``: under ``torch.jit.trace``, where only a
    backend that ``traces`` serves (``blocked``'s plan is Python over the frame count).
    """
    if tracing and not (name in ATTENTION_BACKENDS and ATTENTION_BACKENDS[name].traces):
        raise ValueError(f"attn_implementation={name!r}: torch.jit.trace (torch.onnx.export "
                         "with dynamo=False) cannot record it for any number of frames; "
                         "trace with 'dense' (model.set_attn_implementation('dense')), or "
                         "export with spool.models.export_onnx, which does")
    device_type = None if device is None else torch.device(device).type
    if name == "auto":
        order = AUTO_ORDER.get(device_type or "cpu", (("blocked", None),))
        for candidate, takes in (*order, ("blocked", None)):
            if takes is not None and (shape is None or not takes(*shape)):
                continue
            backend = ATTENTION_BACKENDS[candidate]
            if backend.linear and backend.unsupported(device_type, backward=backward,
                                                      dropout=dropout, dtype=dtype) is None:
                return backend
        why = ATTENTION_BACKENDS["blocked"].unsupported(device_type, backward=backward,
                                                        dropout=dropout, dtype=dtype)
        raise ValueError(f"attn_implementation='auto': no backend linear in the number of "
                         f"frames serves this call ({why})")
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attn_implementation: expected 'auto' or one of "
                         f"{sorted(ATTENTION_BACKENDS)}, got {name!r}")
    backend = ATTENTION_BACKENDS[name]
    why = backend.unsupported(device_type, backward=backward, dropout=dropout, dtype=dtype)
    if why is not None:
        raise ValueError(f"attn_implementation={name!r}: {why}; use 'blocked' (or 'auto')")
    return backend
