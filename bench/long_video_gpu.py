"""Benchmark: ``Spool.forward_long`` on a GPU, the hidden state on the device vs in RAM.

    python bench/long_video_gpu.py [--frames 2000 8000] [--pooling 1 4] [--json FILE]
                                   [--out docs/benchmarks.md] [--from-json FILE]

A DINOv2-B-sized temporal stack (12 layers, D = 768, 12 heads, w = 16) runs over random tokens
``[T, L, D]`` (L = 1 + (16 / k)^2: the class token and a 16 x 16 patch grid pooled k x k, as
token pooling gives it the stack) under bf16 autocast, once with
the fp32 hidden state ``[T + 2, L, D]`` moved to the device whole and once kept in RAM with each
chunk copied to the device and back (``hidden_on_device=True/False``). It reports time per
frame, peak device memory beyond the weights, and how far the two results differ.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

HEADING = "Long videos on a GPU: hidden state on the device vs in RAM"
W, LAYERS, CHUNK, GRID = 16, 12, 32, 16


def measure(frames: int, pooling: int, device) -> list[dict]:
    import torch

    from spool import Spool, SpoolConfig

    config = SpoolConfig(hidden_size=768, num_hidden_layers=LAYERS, num_attention_heads=12,
                         num_lookback_heads=6, num_lookahead_heads=6, local_frame_range=W,
                         num_spatial_tokens=1 + (GRID // pooling) ** 2)
    torch.manual_seed(0)
    model = Spool(config, with_backbone=False).eval().to(device)
    tokens = torch.randn(frames, config.num_spatial_tokens, 768,
                         generator=torch.Generator().manual_seed(0))
    cuda = device.type == "cuda"  # the CPU: a smoke test of this script
    rows, outs = [], {}
    for on_device in (True, False):
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16):
            out = model.forward_long(tokens, chunk_frames=CHUNK, hidden_on_device=on_device)
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) - base if cuda else 0
        outs[on_device] = out.frame_features
        L = model.num_temporal_tokens
        rows.append(dict(frames=frames, pooling=pooling, L=L, hidden="device" if on_device
                         else "RAM", seconds=seconds, ms_per_frame=1e3 * seconds / frames,
                         peak_device_gib=peak / 2**30,
                         hidden_state_gib=(frames + 2) * L * 768 * 4 / 2**30))
        print(json.dumps(rows[-1]), flush=True)
    diff = (outs[True] - outs[False]).abs().max().item()
    for row in rows:
        row["max_abs_diff_device_vs_ram"] = diff
    return rows


def table(rows: list[dict], meta: dict) -> str:
    about = " ".join(__doc__.split("\n\n")[2].split()).replace("``", "`")
    lines = [f"## {HEADING}", "", "```bash", meta["command"], "```", "",
             f"Device: {meta['device']}, torch {meta['torch']}. {about}",
             "", "| k | L | frames | hidden state (GiB) | hidden | ms per frame | peak device "
             "memory (GiB) | max abs diff device vs RAM |", "| --: | --: | --: | --: | --- | --: "
             "| --: | --: |"]
    for r in rows:
        lines.append(f"| {r['pooling']} | {r['L']} | {r['frames']:,} | {r['hidden_state_gib']:.2f} "
                     f"| {r['hidden']} | {r['ms_per_frame']:.3f} | {r['peak_device_gib']:.3f} | "
                     f"{r['max_abs_diff_device_vs_ram']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--pooling", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--out", type=Path, help="markdown file whose section to (re)write")
    ap.add_argument("--from-json", type=Path, help="measure nothing: write this run's table")
    args = ap.parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
    else:
        import torch

        device = torch.device(args.device)
        rows = [r for k in args.pooling for t in args.frames for r in measure(t, k, device)]
        result = dict(rows=rows, meta=dict(
            device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            torch=torch.__version__,
            command="python bench/long_video_gpu.py " + " ".join(argv or sys.argv[1:])))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    text = table(result["rows"], result["meta"])
    print(text)
    if args.out:
        from _report import update_section

        update_section(args.out, HEADING, text.split("\n", 1)[1])


if __name__ == "__main__":
    main()
