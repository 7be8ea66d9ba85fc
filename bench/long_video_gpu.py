"""Benchmark: ``Spool.forward_long`` on a GPU, the hidden state on the device vs in RAM.

    python bench/long_video_gpu.py [--frames 2000 8000] [--pooling 1 4] [--resumable]
                                   [--json FILE]
                                   [--out docs/benchmarks.md] [--from-json FILE]

A DINOv2-B-sized temporal stack (12 layers, D = 768, 12 heads, w = 16) runs over random tokens
``[T, L, D]`` (L = 1 + (16 / k)^2: the class token and a 16 x 16 patch grid pooled k x k, as
token pooling gives it the stack) under bf16 autocast, once with
the fp32 hidden state ``[T + 2, L, D]`` moved to the device whole and once kept in RAM with each
chunk copied to the device and back (``hidden_on_device=True/False``). With ``--resumable`` a
third run keeps the state on the device with a resumable file on disk, copied there before a
layer once 30 s (and ten times the last copy's time) have passed since the last copy
(``resume=ResumableHiddenState``, as
``spool extract --offload-dir`` does). It reports time per
frame, peak device memory beyond the weights, and how far the results differ from the first.
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


def measure(frames: int, pooling: int, device, resumable: bool = False) -> list[dict]:
    import tempfile

    import torch

    from spool import Spool, SpoolConfig
    from spool.models.long_video_state import ResumableHiddenState

    config = SpoolConfig(hidden_size=768, num_hidden_layers=LAYERS, num_attention_heads=12,
                         num_lookback_heads=6, num_lookahead_heads=6, local_frame_range=W,
                         num_spatial_tokens=1 + (GRID // pooling) ** 2)
    torch.manual_seed(0)
    model = Spool(config, with_backbone=False).eval().to(device)
    tokens = torch.randn(frames, config.num_spatial_tokens, 768,
                         generator=torch.Generator().manual_seed(0))
    cuda = device.type == "cuda"  # the CPU: a smoke test of this script
    rows, outs = [], {}
    runs = [("device", True), ("RAM", False)] + [("device, resumable file", True)] * resumable
    for hidden, on_device in runs:
        folder = tempfile.TemporaryDirectory() if hidden.endswith("file") else None
        resume = folder and ResumableHiddenState(folder.name + "/state", "bench")
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16):
            out = model.forward_long(tokens, chunk_frames=CHUNK, hidden_on_device=on_device,
                                     resume=resume)
        if cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) - base if cuda else 0
        outs[hidden] = out.frame_features.clone()
        if folder:
            folder.cleanup()
        L = model.num_temporal_tokens
        rows.append(dict(frames=frames, pooling=pooling, L=L, hidden=hidden, seconds=seconds,
                         ms_per_frame=1e3 * seconds / frames, peak_device_gib=peak / 2**30,
                         hidden_state_gib=(frames + 2) * L * 768 * 4 / 2**30,
                         max_abs_diff=(outs[hidden] - outs["device"]).abs().max().item()))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict], meta: dict, heading: str = HEADING) -> str:
    about = " ".join(__doc__.split("\n\n")[2].split()).replace("``", "`")
    lines = [f"## {heading}", "", "```bash", meta["command"], "```", "",
             f"Device: {meta['device']}, torch {meta['torch']}. {about}",
             "", "| k | L | frames | hidden state (GiB) | hidden | ms per frame | peak device "
             "memory (GiB) | max abs diff vs the first |", "| --: | --: | --: | --: | --- | --: "
             "| --: | --: |"]
    for r in rows:
        lines.append(f"| {r['pooling']} | {r['L']} | {r['frames']:,} | {r['hidden_state_gib']:.2f} "
                     f"| {r['hidden']} | {r['ms_per_frame']:.3f} | {r['peak_device_gib']:.3f} | "
                     f"{r.get('max_abs_diff', r.get('max_abs_diff_device_vs_ram')):.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[2000, 8000])
    ap.add_argument("--pooling", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--resumable", action="store_true",
                    help="also run with a resumable file on disk (spool extract --offload-dir)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--out", type=Path, help="markdown file whose section to (re)write")
    ap.add_argument("--from-json", type=Path, help="measure nothing: write this run's table")
    ap.add_argument("--section", default=HEADING, help="the heading of --out's section")
    args = ap.parse_args(argv)
    if args.from_json:
        result = json.loads(args.from_json.read_text())
    else:
        import torch

        device = torch.device(args.device)
        rows = [r for k in args.pooling for t in args.frames
                for r in measure(t, k, device, args.resumable)]
        result = dict(rows=rows, meta=dict(
            device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            torch=torch.__version__,
            command="python bench/long_video_gpu.py " + " ".join(argv or sys.argv[1:])))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    text = table(result["rows"], result["meta"], args.section)
    print(text)
    if args.out:
        from _report import update_section

        update_section(args.out, args.section, text.split("\n", 1)[1])


if __name__ == "__main__":
    main()
