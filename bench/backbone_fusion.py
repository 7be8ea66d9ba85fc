"""Is there time to win inside the backbone? DINOv2-B at 224 px as HF runs it, against the same
weights with the inference rewrites timm-style ViTs use: q, k and v in one Linear, and each
LayerScale folded into the Linear before it (``lambda * (W x + b) = (lambda W) x + lambda b``).

Issue 12's last bar (Spool k = 4 at or below TimeSformer-base at every T >= 16) is a tie at
the FLOP level, and 93% of Spool k = 4's FLOPs are the backbone's; this measures whether the
backbone leaves any time on the table, with an operator breakdown of where its time goes.

    python bench/backbone_fusion.py --out docs/benchmarks.md    # ~4 minutes on 2 cores
    python bench/backbone_fusion.py --tiny                      # smoke test, seconds
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Dinov2Config, Dinov2Model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import alternate, machine, update_section  # noqa: E402

HEADING = "Backbone: fused QKV and folded LayerScale"
BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=518,
            patch_size=14)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            image_size=32, patch_size=8)


class FusedAttention(nn.Module):
    """``Dinov2Attention`` with its three projections in one Linear (same weights)."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.num_heads, self.head_dim = attn.num_attention_heads, attn.head_dim
        self.qkv = nn.Linear(attn.q_proj.in_features, 3 * attn.q_proj.out_features)
        with torch.no_grad():
            self.qkv.weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight,
                                             attn.v_proj.weight]))
            self.qkv.bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias,
                                           attn.v_proj.bias]))
        self.o_proj = attn.o_proj

    def forward(self, x: torch.Tensor, attention_mask=None, **_) -> tuple[torch.Tensor, None]:
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(B, N, C)), None


def fused_copy(model: Dinov2Model) -> Dinov2Model:
    """A copy of ``model`` with fused QKV and LayerScale folded into ``o_proj`` and ``fc2``."""
    fused = copy.deepcopy(model)
    with torch.no_grad():
        for layer in fused.encoder.layer:
            for scale, linear in ((layer.layer_scale1, layer.attention.o_proj),
                                  (layer.layer_scale2, layer.mlp.fc2)):
                linear.weight.mul_(scale.lambda1[:, None])
                linear.bias.mul_(scale.lambda1)
            layer.layer_scale1, layer.layer_scale2 = nn.Identity(), nn.Identity()
            layer.attention = FusedAttention(layer.attention)
    return fused


def breakdown(model: nn.Module, x: torch.Tensor, top: int = 6) -> list[tuple[str, float]]:
    """Share of self CPU time per operator over one forward."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(pixel_values=x)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows)
    return [(e.key, e.self_cpu_time_total / total) for e in rows[:top]]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=16, help="frames per forward (T)")
    ap.add_argument("--rounds", type=int, default=6, help="alternating timing rounds")
    ap.add_argument("--tiny", action="store_true", help="a tiny model, for a smoke test")
    ap.add_argument("--out", type=Path, help="update this section of a benchmarks file")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(**(TINY if args.tiny else BASE))).eval()
    for layer in model.encoder.layer:  # trained LayerScales are far from their init of 1
        for scale in (layer.layer_scale1, layer.layer_scale2):
            nn.init.uniform_(scale.lambda1, 0.05, 1.0)
    fused = fused_copy(model)
    size = 32 if args.tiny else 224
    x = torch.randn(args.frames, 3, size, size)
    wall = time.perf_counter()
    with torch.inference_mode():
        ref, out = model(pixel_values=x).last_hidden_state, fused(pixel_values=x).last_hidden_state
        diff = (ref - out).abs().max().item()
        if diff > 1e-3 * ref.abs().max().item():
            sys.exit(f"fused backbone differs from HF's: max abs diff {diff:.3g}")
        times = alternate({"HF Dinov2Model": lambda: model(pixel_values=x),
                           "fused QKV + folded LayerScale": lambda: fused(pixel_values=x)},
                          args.rounds)
        ops = breakdown(model, x)
    base = statistics.median(times["HF Dinov2Model"])
    lines = ["| backbone | ms/frame (median) | min | vs HF |", "| --- | --: | --: | --: |"]
    for name, ts in times.items():
        med = statistics.median(ts)
        lines.append(f"| {name} | {1000 * med / args.frames:.1f} | "
                     f"{1000 * min(ts) / args.frames:.1f} | {med / base:.3f} |")
    ratios = [f / h for h, f in zip(*times.values(), strict=True)]
    op_line = ", ".join(f"`{k}` {100 * s:.1f}%" for k, s in ops)
    text = "\n".join(lines) + (
        f"\n\nPer-round ratio fused / HF (alternating order): "
        f"{', '.join(f'{r:.3f}' for r in ratios)}. Max abs difference of the last hidden "
        f"state: {diff:.2g}. Self CPU time of HF's forward by operator: {op_line}.")
    print(text)
    if args.out and not args.tiny:
        command = (f"python bench/backbone_fusion.py --frames {args.frames} "
                   f"--rounds {args.rounds} --out {args.out}")
        update_section(args.out, HEADING, "\n\n".join([
            f"```bash\n{command}\n```",
            f"Machine: {machine()}. Wall time {time.perf_counter() - wall:.0f} s. A "
            f"DINOv2-B-sized `Dinov2Model` (random weights, LayerScales drawn from [0.05, 1]) on "
            f"{args.frames} frames at 224 px, against a copy with q, k, v fused into one Linear "
            "and both LayerScales folded into the Linear before them; the two alternate in "
            "one process.", text]))


if __name__ == "__main__":
    main()
