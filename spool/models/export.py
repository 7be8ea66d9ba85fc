"""Export of a model's temporal part (``forward_tokens``: cached backbone tokens in, its outputs
out) to ONNX, any batch size and clip length, checked against eager with onnxruntime."""

from __future__ import annotations

import logging
import os
import warnings
from typing import NamedTuple

import torch
from torch import nn

from spool.layers.attention import TemporalAttention

logger = logging.getLogger(__name__)

# The backend the graph is traced with: `blocked`'s plan is Python over the frame count (a
# traced count has no divmod), `flex` compiles, `reference` builds the same mask as `dense`.
EXPORT_BACKEND = "dense"
DEFAULT_OPSET = 17  # LayerNormalization is one op from 17 on


class OnnxExport(NamedTuple):
    """What :func:`export_onnx` wrote: ``path``, the graph's ``input_names`` (``tokens``) and
    ``output_names`` (the fields of ``forward_tokens``' result that hold tensors), and
    ``max_abs_diff``, the largest absolute difference of onnxruntime's outputs from eager
    ``forward_tokens`` on the example and on a longer clip (``nan`` with ``check=False``)."""

    path: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    max_abs_diff: float


class _TokensToTensors(nn.Module):
    """``forward_tokens(tokens)`` as a tuple of the named fields of its result."""

    def __init__(self, model: nn.Module, fields: tuple[str, ...]) -> None:
        super().__init__()
        self.model, self.fields = model, fields

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.forward_tokens(tokens)
        return tuple(getattr(out, name) for name in self.fields)


def _check_exportable(model: nn.Module) -> list[TemporalAttention]:
    attention = [m for m in model.modules() if isinstance(m, TemporalAttention)]
    if not hasattr(model, "forward_tokens") or not attention:
        raise ValueError(f"model: export_onnx exports a temporal stack (forward_tokens on "
                         f"cached tokens); {type(model).__name__} has none")
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("model: its weights are on the meta device (no values to export); "
                         "load them first (to_empty, then load_state_dict)")
    backbone = getattr(model, "backbone", None)  # not exported
    skip = set() if backbone is None else {id(p) for p in backbone.parameters()}
    other = next(((name, p.dtype) for name, p in model.named_parameters()
                  if id(p) not in skip and p.dtype != torch.float32), None)
    if other is not None:  # (onnxruntime has no float16 or bfloat16 MatMul on the CPU)
        raise ValueError(f"model: export_onnx exports float32 temporal stacks, got "
                         f"{str(other[1]).removeprefix('torch.')} for {other[0]}; export a "
                         "float32 copy (model.float())")
    return attention


def _time_axes(output: torch.Tensor) -> dict[int, str]:
    """An output's dynamic axes, named: ``features [B, T+2, L, D]``, a frame classifier's
    ``logits [B, T, C]``, else ``[B, ...]`` (else the exporter names them after graph nodes)."""
    return {0: "batch", **({1: "frames_plus_2"} if output.ndim == 4 else
                           {1: "frames"} if output.ndim == 3 else {})}


def _longer_clip(tokens: torch.Tensor) -> torch.Tensor:
    """``[B, T, L, D]`` -> ``[B, 2T + 1, L, D]`` from the same frames: a second length to check
    that nothing of the example's length was frozen into the graph."""
    return torch.cat((tokens, tokens.flip(1), tokens[:, :1]), dim=1)


def _require(check: bool) -> None:
    """``ImportError`` naming the extra, before anything is written: torch's exporter needs
    onnx, the check onnxruntime."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxruntime")[:2 if check else 1]
               if importlib.util.find_spec(name) is None]
    if missing:
        why = " (onnxruntime runs the check; check=False skips it)" if check else ""
        raise ImportError(f"export_onnx: needs {' and '.join(missing)}{why}: pip install "
                          "'spool-video[onnx]'")


def _onnxruntime_diff(path: str, example: torch.Tensor, run: nn.Module) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    worst = 0.0
    for tokens in (example, _longer_clip(example)):
        with torch.no_grad():
            expected = run(tokens)
        got = session.run(None, {"tokens": tokens.detach().cpu().numpy()})
        for value, ref in zip(got, expected, strict=True):
            diff = (torch.from_numpy(value).double() - ref.detach().cpu().double()).abs()
            worst = max(worst, diff.max().item())
    return worst


def export_onnx(model: nn.Module, path: str | os.PathLike, *,
                example_tokens: torch.Tensor | None = None, opset: int = DEFAULT_OPSET,
                check: bool = True, atol: float = 1e-3) -> OnnxExport:
    """Write ``model.forward_tokens`` (a :class:`~spool.models.Spool`, or a classifier wrapping
    one) as an ONNX graph taking ``tokens: [B, T, L, D]`` float32, ``B`` and ``T`` dynamic.

    A Spool's outputs are ``features [B, T+2, L, D]`` and ``context [B, 2D]``; a clip
    classifier's ``logits [B, C]``, a frame classifier's ``logits [B, T, C]``. The backbone is
    not exported: feed the tokens it gives (``model.encode_frames``).

    The graph is traced with the ``dense`` attention backend, whatever the model's own (put
    back afterwards): ``blocked``'s plan of attention calls is Python over the frame count and
    does not trace. Dense attention builds a ``(T+2)L x (T+2)L`` mask and scores every token
    pair, so the exported graph's memory and time are quadratic in ``T``, not linear as the
    model's default: run long videos in clips, or eagerly with ``forward_long``.

    Returns an :class:`OnnxExport`. ``example_tokens``: what the trace runs on (default:
    seeded random ``[1, 4, L, D]``, cast to float32); any length serves, ``T`` stays dynamic
    (keep it short: the check runs eager ``dense`` at ``2T + 1`` frames). ``check``:
    run the file in onnxruntime on the example and on a ``2T + 1``-frame clip made from it,
    and raise ``RuntimeError`` when an output differs from eager by more than ``atol``. The
    model is run in eval mode (no dropout) and left in the mode it was in. A ``ValueError``
    refuses what cannot be exported: a model without a temporal stack (the frame-pooling and
    frame baselines), a temporal stack in another dtype than float32, weights on the meta
    device.
    """
    attention = _check_exportable(model)
    _require(check)
    config = model.config
    if example_tokens is None:
        shape = (1, 4, config.num_spatial_tokens, config.hidden_size)
        example_tokens = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(
            next(model.parameters()).device)  # (the caller's random state left alone)
    example_tokens = example_tokens.float()  # the graph takes what it was traced with
    path = os.fspath(path)
    own = [m.implementation for m in attention]
    was_training = model.training
    try:
        model.eval()
        for module in attention:
            module.implementation = EXPORT_BACKEND
        with torch.no_grad():
            result = model.forward_tokens(example_tokens)
        fields = tuple(name for name, value in result._asdict().items()
                       if isinstance(value, torch.Tensor))
        run = _TokensToTensors(model, fields)
        axes = {"tokens": {0: "batch", 1: "frames"},
                **{name: _time_axes(getattr(result, name)) for name in fields}}
        with torch.no_grad(), warnings.catch_warnings():
            # Python comparisons of traced sizes are frozen, and said to be: the input
            # checks' (passed), the head count's and dense's choice to cache its mask; the
            # check below runs a second length to catch one that mattered. The legacy
            # exporter is deprecated (and says so twice), but the dynamo one needs onnxscript.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript",
                                    DeprecationWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            torch.onnx.export(run, (example_tokens,), path, input_names=["tokens"],
                              output_names=list(fields), dynamic_axes=axes,
                              opset_version=opset, dynamo=False)
        run.eval()  # the exporter put the wrapper, and so the model, back in training mode
        diff = _onnxruntime_diff(path, example_tokens, run) if check else float("nan")
    finally:
        for module, name in zip(attention, own, strict=True):
            module.implementation = name
        model.train(was_training)
    if check:
        logger.info("%s: onnxruntime vs eager forward_tokens, max abs difference %.3g",
                    path, diff)
        if not diff <= atol:
            raise RuntimeError(f"{path}: onnxruntime's outputs differ from eager "
                               f"forward_tokens by up to {diff:.3g} (atol {atol:g})")
    return OnnxExport(path, ("tokens",), fields, diff)
