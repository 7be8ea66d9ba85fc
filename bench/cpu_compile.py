"""``torch.compile`` (inductor) of Spool's temporal stack on the CPU against eager: the time
each clip length's first call takes (compiling), the steady time per frame, the graphs
compiled over several lengths, and the largest difference from eager.

The stack of issue 12's peers table (DINOv2-B width 768, 12 layers, 12 heads, w = 4) on
4 x 4-pooled tokens (L = 17), `blocked` attention. Same process, eager and compiled
alternating round by round.

    python bench/cpu_compile.py --out docs/benchmarks.md     # ~10 minutes on 2 cores
    python bench/cpu_compile.py --tiny                       # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's spool
from _report import alternate, machine, publish  # noqa: E402

from spool import Spool, SpoolConfig  # noqa: E402

HEADING = "CPU: torch.compile of the temporal stack"


def _stack(tiny: bool) -> Spool:
    width, layers, heads = (64, 2, 4) if tiny else (768, 12, 12)
    config = SpoolConfig(num_hidden_layers=layers, num_attention_heads=heads,
                         num_lookback_heads=heads // 2, num_lookahead_heads=heads // 2,
                         local_frame_range=4, hidden_size=width, num_spatial_tokens=17,
                         num_prefix_tokens=1,
                         backbone_config={"model_type": "dinov2", "hidden_size": width})
    torch.manual_seed(0)
    return Spool(config, with_backbone=False).eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ts", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", type=Path, help="update this section of a benchmarks file")
    args = ap.parse_args(argv)
    from torch._dynamo.utils import counters

    model = _stack(args.tiny)
    compiled = torch.compile(model.forward_tokens)
    width = model.config.hidden_size
    rows = []
    counters.clear()
    with torch.no_grad():
        for T in args.ts:
            tokens = torch.randn(1, T, 17, width, generator=torch.Generator().manual_seed(T))
            start = time.perf_counter()
            first = compiled(tokens).features
            first_s = time.perf_counter() - start
            diff = (first - model.forward_tokens(tokens).features).abs().max().item()
            times = alternate({"eager": lambda t=tokens: model.forward_tokens(t),
                               "compiled": lambda t=tokens: compiled(t)}, args.rounds)
            eager, comp = (statistics.median(times[k]) / T * 1e3 for k in ("eager", "compiled"))
            ratios = [c / e for e, c in zip(times["eager"], times["compiled"], strict=True)]
            rows.append((T, first_s, eager, comp, comp / eager, min(ratios), max(ratios), diff,
                         counters["stats"]["unique_graphs"]))
    what = "tiny stack (smoke test)" if args.tiny else "12 layers, width 768, 12 heads"
    lines = ["```bash", "python bench/cpu_compile.py --out docs/benchmarks.md", "```", "",
             f"Machine: {machine()}. Spool's temporal stack ({what}, w = 4, `blocked`) on "
             f"tokens [1, T, 17, D] (4 x 4 pooling), `torch.compile(model.forward_tokens)` "
             f"(inductor, default dynamic shapes); {args.rounds} rounds after the first call, "
             "eager and compiled alternating. Graphs: unique graphs dynamo compiled so far "
             "(cumulative over the lengths, in this order).", "",
             "| T | first compiled call, s | eager ms/frame | compiled ms/frame "
             "| compiled / eager (median) | per round | max abs diff | graphs so far |",
             "| --: | --: | --: | --: | --: | --- | --: | --: |"]
    for T, first_s, eager, comp, ratio, lo, hi, diff, graphs in rows:
        lines.append(f"| {T} | {first_s:.1f} | {eager:.2f} | {comp:.2f} | {ratio:.2f} | "
                     f"{lo:.2f}-{hi:.2f} | {diff:.1e} | {graphs} |")
    publish(args.out, HEADING, "\n".join(lines))


if __name__ == "__main__":
    main()
