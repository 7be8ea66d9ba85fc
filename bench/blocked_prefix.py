"""The CPU's blocked plan: the first ``w`` frames (whose windows the context frame cuts) in calls
of ``chunk_frames`` queries reading keys up to their own last frame, against one call under a
triangle mask (the plan before; still the GPU's, where small calls are launch-bound).

Same process, the two plans alternating round by round, on a DINOv2-S-wide temporal stack
(D = 384, 6 heads, all 257 tokens of a frame, the default window w = 16): the forward of
``spool extract`` (B = 1) and the forward + backward of ``spool train`` (B = 2).

    python bench/blocked_prefix.py --out docs/benchmarks.md     # ~5 minutes on 2 cores
    python bench/blocked_prefix.py --tiny                       # smoke test, seconds
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

HEADING = "Blocked attention on the CPU: the prefix in chunks"
PLAN = blocked.blocked_plan


def _plan(split: bool):
    """``blocked_plan`` with the prefix split or not, whatever the device asks."""
    def plan(*args, split_prefix: bool = False, **kwargs):
        return PLAN(*args, split_prefix=split, **kwargs)
    return plan


def _computed(plan) -> int:
    return sum(c.num_blocks * c.query_frames * (c.key_frames + c.context_key) for c in plan)


def _model(layers: int, width: int, tokens: int, window: int) -> Spool:
    torch.manual_seed(0)
    config = SpoolConfig(num_hidden_layers=layers, num_attention_heads=width // 64,
                         num_lookback_heads=width // 128, num_lookahead_heads=width // 128,
                         hidden_size=width, num_spatial_tokens=tokens, num_prefix_tokens=1,
                         local_frame_range=window,
                         backbone_config={"model_type": "dinov2", "hidden_size": width})
    return Spool(config, with_backbone=False)


def _with_plan(split: bool, step) -> None:
    """``step()`` with the prefix split or not (:func:`_plan`)."""
    blocked.blocked_plan = _plan(split)
    try:
        step()
    finally:
        blocked.blocked_plan = PLAN


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[16, 32], help="clip lengths T")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    ap.add_argument("--tiny", action="store_true", help="a tiny model, for a smoke test")
    ap.add_argument("--out", type=Path, help="update this section of a benchmarks file")
    args = ap.parse_args(argv)
    width, tokens, layers = (128, 5, 1) if args.tiny else (384, 257, 4)
    window = 16
    model = _model(layers, width, tokens, window)
    rows = []
    for T in args.frames:
        tok1, tok2 = torch.randn(1, T, tokens, width), torch.randn(2, T, tokens, width)

        def forward(tokens=tok1):
            model.eval()
            with torch.no_grad():
                model.forward_tokens(tokens)

        def train_step(tokens=tok2):
            model.train()
            model.zero_grad()
            model.forward_tokens(tokens).context.square().mean().backward()

        c = blocked.default_chunk_frames(window)
        for name, step in (("forward, B = 1 (extract)", forward),
                           ("forward + backward, B = 2 (train)", train_step)):
            times = alternate({split: functools.partial(_with_plan, split, step)
                               for split in (False, True)}, args.rounds)
            one, split = (statistics.median(times[s]) for s in (False, True))
            ratios = [b / a for a, b in zip(times[False], times[True], strict=True)]
            rows.append((T, name, _computed(PLAN(T + 2, window, c)),
                         _computed(PLAN(T + 2, window, c, split_prefix=True)), one * 1e3,
                         split * 1e3, split / one, min(ratios), max(ratios)))
    lines = [
        "```bash",
        "python bench/blocked_prefix.py --out docs/benchmarks.md",
        "```",
        "",
        f"Machine: {machine()}. A temporal stack of {layers} layers, D = {width} "
        f"({width // 64} heads), L = {tokens} tokens a frame, w = {window}, c = "
        f"{blocked.default_chunk_frames(window)}; the two plans alternate, {args.rounds} rounds "
        "after a warm-up. Frame pairs: query-key frame pairs computed per head group (the "
        "mask allows fewer).",
        "",
        "| T | pass | frame pairs, one call | frame pairs, split | ms, one call | ms, split "
        "| split / one call (median) | per round, min-max |",
        "| --: | --- | --: | --: | --: | --: | --: | --- |",
    ]
    for T, name, p1, p2, a, b, ratio, lo, hi in rows:
        lines.append(f"| {T} | {name} | {p1} | {p2} | {a:.0f} | {b:.0f} | {ratio:.3f} | "
                     f"{lo:.3f}-{hi:.3f} |")
    publish(args.out, HEADING, "\n".join(lines))


if __name__ == "__main__":
    main()
