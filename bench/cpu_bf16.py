"""bfloat16 on the CPU: ``spool extract --dtype bfloat16`` (autocast) against float32 for the
real DINOv2-S backbone (converted offline: ``spool backbone import dinov2-small``) and a
DINOv2-S-wide temporal stack, with the error it costs. Worth it only on a CPU with bfloat16
arithmetic (AVX-512 BF16 or AMX); elsewhere autocast emulates it, slowly.

Same process, float32 and bfloat16 alternating round by round.

    python bench/cpu_bf16.py --out docs/benchmarks.md     # ~3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

import torch

from spool import Spool, SpoolConfig
from spool.downloads import cache_dir
from spool.models.frame_encoder import FrameEncoderModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import alternate, machine, publish  # noqa: E402

HEADING = "CPU: bfloat16 autocast against float32"


def _cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return "unknown"
    return ", ".join(f for f in ("avx512_bf16", "amx_bf16") if f in flags) or "none"


def _run(step, bf16: bool) -> None:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        step()


def _rounds(step, rounds: int) -> tuple[float, float, list[float]]:
    """Median seconds of ``step`` in float32 and in bfloat16, and the per-round ratios."""
    times = alternate({bf16: functools.partial(_run, step, bf16) for bf16 in (False, True)},
                      rounds)
    ratios = [b / a for a, b in zip(times[False], times[True], strict=True)]
    return statistics.median(times[False]), statistics.median(times[True]), ratios


def _error(step) -> tuple[float, float]:
    """Mean |bf16 - fp32| over the float32 output's std, and the lowest cosine of a token."""
    with torch.no_grad():
        ref = step()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = step().float()
    cos = torch.nn.functional.cosine_similarity(low.flatten(0, -2), ref.flatten(0, -2), dim=-1)
    return ((low - ref).abs().mean() / ref.std()).item(), cos.min().item()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default=str(cache_dir("backbones", "dinov2-small")),
                    help="a DINOv2-S folder (default: the one `spool backbone import` makes)")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, help="update this section of a benchmarks file")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    encoder = FrameEncoderModel(backbone_name=args.backbone).eval().backbone
    video = torch.randint(0, 256, (1, args.frames, 224, 224, 3), dtype=torch.uint8)
    with torch.no_grad():
        tokens = encoder(video)
    stack = Spool(SpoolConfig(num_hidden_layers=12, num_attention_heads=6, num_lookback_heads=3,
                              num_lookahead_heads=3, hidden_size=384,
                              num_spatial_tokens=tokens.shape[2], num_prefix_tokens=1,
                              backbone_config={"model_type": "dinov2", "hidden_size": 384}),
                  with_backbone=False).eval()
    rows = []
    for name, step in (("backbone (DINOv2-S, 224 px)", lambda: encoder(video)),
                       ("temporal stack (12 layers, w = 16)",
                        lambda: stack.forward_tokens(tokens).features)):
        fp32, bf16, ratios = _rounds(step, args.rounds)
        err, cos = _error(step)
        rows.append((name, fp32 / args.frames * 1e3, bf16 / args.frames * 1e3, bf16 / fp32,
                     min(ratios), max(ratios), err, cos))
    lines = ["```bash", "python bench/cpu_bf16.py --out docs/benchmarks.md", "```", "",
             f"Machine: {machine()}; bfloat16 arithmetic: {_cpu_flags()}. {args.frames} frames "
             f"of 224 x 224 (random pixels), batch 1; {args.rounds} rounds after a warm-up, the "
             "two dtypes alternating. Error: mean |bf16 - fp32| over the float32 output's "
             "standard deviation, and the lowest cosine similarity of a token.", "",
             "| part | fp32 ms/frame | bf16 ms/frame | bf16 / fp32 (median) | per round "
             "| error / std | lowest token cosine |",
             "| --- | --: | --: | --: | --- | --: | --: |"]
    for name, a, b, ratio, lo, hi, err, cos in rows:
        lines.append(f"| {name} | {a:.1f} | {b:.1f} | {ratio:.2f} | {lo:.2f}-{hi:.2f} | "
                     f"{err:.4f} | {cos:.5f} |")
    publish(args.out, HEADING, "\n".join(lines))


if __name__ == "__main__":
    main()
