"""Paired check of two close timings in ``bench/peers.py``: Spool w=4 with token pooling k (the
full model: backbone + pooling + temporal stack) against TimeSformer-base, alternated in one
process (A, B, A, B, ...) so that both see the same load; the ratio of each pair is reported.

    python bench/peers_paired.py --ts 16 32 --pairs 5 --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _report import machine, update_section  # noqa: E402

SECTION = "Peers: Spool k=4 vs TimeSformer-base, paired"


def paired(T: int, pairs: int, variant: str) -> dict:
    import peers_models as pm

    from spool.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    models = pm.build_spool_group([variant])
    peer = pm.build_peer("timesformer", T)
    torch.manual_seed(1)
    video = torch.randint(0, 256, (1, T, pm.DIMS.image, pm.DIMS.image, 3), dtype=torch.uint8)
    pixels = torch.randn(1, T, 3, pm.DIMS.image, pm.DIMS.image)
    flops = {"spool": pm.count_flops("spool", T), "timesformer": pm.count_flops("timesformer", T)}

    def spool() -> None:
        tokens = models["backbone"](video)
        models[variant].forward_tokens(pm.pool_tokens(models, variant, tokens))

    def timesformer() -> None:
        peer(pixel_values=pixels)

    rows = []
    with torch.no_grad():
        spool(), timesformer()  # warm-up
        for i in range(pairs):
            order = (spool, timesformer) if i % 2 == 0 else (timesformer, spool)
            times = {}
            for fn in order:
                t = time.perf_counter()
                fn()
                times[fn.__name__] = time.perf_counter() - t
            rows.append(times)
            ratio = times["spool"] / times["timesformer"]
            print(f"T={T} pair {i}: Spool {times['spool']:.2f} s, TimeSformer "
                  f"{times['timesformer']:.2f} s, ratio {ratio:.3f}", flush=True)
    ratios = [r["spool"] / r["timesformer"] for r in rows]
    return {"T": T, "ratios": ratios, "median_ratio": statistics.median(ratios),
            "spool_ms": 1000 * statistics.median(r["spool"] for r in rows) / T,
            "timesformer_ms": 1000 * statistics.median(r["timesformer"] for r in rows) / T,
            "flops": flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ts", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--variant", default="spool_w4_k4")
    parser.add_argument("--tiny", action="store_true", help="toy-sized models (smoke test)")
    parser.add_argument("--out")
    args = parser.parse_args()
    import peers_models as pm

    pm.use_dims(args.tiny)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    results = [paired(T, args.pairs, args.variant) for T in args.ts]
    lines = ["| T | Spool ms/frame (median) | TimeSformer-base ms/frame (median) | "
             "Spool / TimeSformer per pair | median | counted GFLOP Spool / TimeSformer |",
             "| --: | --: | --: | --- | --: | --: |"]
    for r in results:
        flop_ratio = r["flops"]["spool"][args.variant] / r["flops"]["timesformer"]["timesformer"]
        lines.append(f"| {r['T']} | {r['spool_ms']:.0f} | {r['timesformer_ms']:.0f} | "
                     + ", ".join(f"{x:.3f}" for x in r["ratios"])
                     + f" | {r['median_ratio']:.3f} | {flop_ratio:.3f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        command = (f"python bench/peers_paired.py --ts {' '.join(map(str, args.ts))} "
                   f"--pairs {args.pairs} --out {args.out}")
        update_section(args.out, SECTION, "\n\n".join([
            f"```bash\n{command}\n```", f"Machine: {machine()}.",
            "The two models of the peers table whose times per frame are closest, timed "
            "alternately in one process (the order flips every pair), so load from other "
            "processes falls on both alike. Spool is the whole model on uint8 frames (resize, "
            "normalise, DINOv2-B-sized backbone, pooling, 12 temporal layers); TimeSformer-base "
            "gets preprocessed pixels.", table]))


if __name__ == "__main__":
    main()
