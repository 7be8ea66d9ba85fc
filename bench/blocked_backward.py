"""Blocked attention's backward on the CPU: one gradient buffer for a plan's key windows
(``_PlanKeyWindows``, here) against the library's, autograd's own backward of each call's
slices and ``unfold`` (a zero-filled gradient of the whole K or V per call, then their sum).
An alternative measured and not adopted.

Same process, the two alternating round by round, on a DINOv2-S-wide temporal stack (D = 384,
6 heads) in a cached-token training step (forward + backward): all 257 tokens of a frame, and
17 (``token_pooling=4``); the issue-12 window w = 4 and the default w = 16.

    python bench/blocked_backward.py --out docs/benchmarks.md     # ~5 minutes on 2 cores
    python bench/blocked_backward.py --tiny                       # smoke test, seconds
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

import torch

import spool.layers.attention_blocked as blocked
from spool import Spool, SpoolConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import alternate, machine, publish  # noqa: E402

HEADING = "Blocked attention on the CPU: one backward for the key windows (not adopted)"
RUN_PLAN = blocked.run_plan


def _key_span(call: blocked.BlockCall, nF: int, lookahead: bool) -> slice:
    """The memory frames ``call``'s key windows cover, the context frame aside."""
    a = call.key_start
    b = a + (call.num_blocks - 1) * call.query_frames + call.key_frames
    return slice(nF - b, nF - a) if lookahead else slice(a, b)


class _PlanKeyWindows(torch.autograd.Function):
    """``_key_windows`` of every call of a plan, with one backward for them all: one zero
    buffer, each window's gradient added into its frames in place."""

    @staticmethod
    def forward(x, plan, lookahead):
        nF = x.shape[1]
        context = nF - 1 if lookahead else 0
        return tuple(blocked._key_windows(x, call, _key_span(call, nF, lookahead), context,
                                          lookahead) for call in plan)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.plan, ctx.lookahead = inputs
        ctx.shape = x.shape

    @staticmethod
    def backward(ctx, *grads):
        N, nF, L, hd = ctx.shape
        grad = grads[0].new_zeros(ctx.shape)
        context = nF - 1 if ctx.lookahead else 0
        for call, g in zip(ctx.plan, grads, strict=True):
            if g is None:
                continue
            g = g.reshape(N, call.num_blocks, -1, L, hd)
            if call.context_key:
                grad[:, context] += g[:, :, -1 if ctx.lookahead else 0].sum(1)
                g = g[:, :, :-1] if ctx.lookahead else g[:, :, 1:]
            span = grad[:, _key_span(call, nF, ctx.lookahead)]
            step = call.query_frames
            for j in range(call.key_frames):
                span[:, j:j + (call.num_blocks - 1) * step + 1:step] += g[:, :, j]
        return grad, None, None


def _run_plan_one_backward(plan, q, k, v, out, lookahead, dropout_p=0.0):
    """``run_plan`` with :class:`_PlanKeyWindows` for K and V."""
    N, nF, L, hd = q.shape
    for call, key, value in zip(plan, _PlanKeyWindows.apply(k, plan, lookahead),
                                _PlanKeyWindows.apply(v, plan, lookahead), strict=True):
        nb, c = call.num_blocks, call.query_frames
        a, b = call.query_start, call.query_stop
        queries = slice(nF - b, nF - a) if lookahead else slice(a, b)
        mask = None if call.mask is None else blocked._token_mask(call.mask, L, lookahead,
                                                                  q.device, q.dtype)
        result = torch.nn.functional.scaled_dot_product_attention(
            q[:, queries].reshape(N, nb, c * L, hd), key, value, attn_mask=mask,
            dropout_p=dropout_p)
        target = out[:, :, queries].unflatten(2, (nb, c))
        target.copy_(result.unflatten(2, (c, L)).unflatten(0, target.shape[:2]))


def _with(one_backward: bool, step) -> None:
    blocked.run_plan = _run_plan_one_backward if one_backward else RUN_PLAN
    try:
        step()
    finally:
        blocked.run_plan = RUN_PLAN


def _model(layers: int, width: int, tokens: int, window: int) -> Spool:
    torch.manual_seed(0)
    config = SpoolConfig(num_hidden_layers=layers, num_attention_heads=width // 64,
                         num_lookback_heads=width // 128, num_lookahead_heads=width // 128,
                         hidden_size=width, num_spatial_tokens=tokens, num_prefix_tokens=1,
                         local_frame_range=window, attn_implementation="blocked",
                         backbone_config={"model_type": "dinov2", "hidden_size": width})
    return Spool(config, with_backbone=False).train()


def _gradients(model: Spool, tokens: torch.Tensor, one_backward: bool) -> list[torch.Tensor]:
    model.zero_grad()
    _with(one_backward, lambda: model.forward_tokens(tokens).features.square().mean()
          .backward())
    return [p.grad.clone() for p in model.parameters()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=16, help="clip length T")
    ap.add_argument("--batch", type=int, default=4, help="clips per step")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    ap.add_argument("--tiny", action="store_true", help="a tiny model, for a smoke test")
    ap.add_argument("--out", type=Path, help="update this section of a benchmarks file")
    args = ap.parse_args(argv)
    width, layers = (128, 1) if args.tiny else (384, 2)
    cases = [(5, 4)] if args.tiny else [(257, 4), (257, 16), (17, 4)]
    rows = []
    for tokens, window in cases:
        model = _model(layers, width, tokens, window)
        x = torch.randn(args.batch, args.frames, tokens, width)
        before, after = (_gradients(model, x, flag) for flag in (False, True))
        diff = max(float(((a - b).abs() / b.abs().max().clamp_min(1e-30)).max())
                   for a, b in zip(after, before, strict=True))

        def step(model=model, x=x):
            model.zero_grad()
            model.forward_tokens(x).features.square().mean().backward()

        times = alternate({flag: functools.partial(_with, flag, step)
                           for flag in (False, True)}, args.rounds)
        old, new = (statistics.median(times[f]) for f in (False, True))
        ratios = [b / a for a, b in zip(times[False], times[True], strict=True)]
        rows.append((tokens, window, old * 1e3, new * 1e3, new / old, min(ratios),
                     max(ratios), diff))
    lines = [
        "```bash",
        "python bench/blocked_backward.py --out docs/benchmarks.md",
        "```",
        "",
        f"Machine: {machine()}. A temporal stack of {layers} layers, D = {width} "
        f"({width // 64} heads), B = {args.batch}, T = {args.frames}; one training step "
        f"(forward + backward of the features' mean square); the two alternate, {args.rounds} "
        "rounds after a warm-up. Gradient difference: the largest of the parameters' "
        "gradients, relative to each tensor's largest value (the sums run in another order).",
        "",
        "| L | w | ms, autograd's backward | ms, one backward | one / autograd (median) "
        "| per round, min-max | gradient difference |",
        "| --: | --: | --: | --: | --: | --- | --: |",
    ]
    for tokens, window, a, b, ratio, lo, hi, diff in rows:
        lines.append(f"| {tokens} | {window} | {a:.0f} | {b:.0f} | {ratio:.3f} | "
                     f"{lo:.3f}-{hi:.3f} | {diff:.1e} |")
    publish(args.out, HEADING, "\n".join(lines))


if __name__ == "__main__":
    main()
