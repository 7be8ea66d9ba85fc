"""Train and evaluate time per video, and peak memory, of the frame classifiers on 4,000-frame
videos (cached tokens, CPU).

Each (model, size) runs in a fresh process, so its peak RSS (``ru_maxrss``) is its own: a
training step on one whole video (forward, backward, AdamW step), then ``predict_long`` on
it (what ``spool eval`` runs per video). Sizes:

- ``bench``: bench/segmentation.py's models (tokens ``[T, 2, 64]``, Spool 2 layers, w=16);
- ``small``: DINOv2-S tokens pooled to a 2x2 grid + class token (``[T, 5, 384]``, what
  ``--model token_pooling=8`` gives at 224 px), Spool 4 layers, 6 heads, w=16.

    nice -n 19 python bench/segmentation_timing.py --frames 4000 --out timing.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

SIZES = {"bench": dict(hidden_size=64, num_spatial_tokens=2, num_hidden_layers=2,
                       num_attention_heads=4, num_lookback_heads=2, num_lookahead_heads=2,
                       local_frame_range=16),
         "small": dict(hidden_size=384, num_spatial_tokens=5, num_hidden_layers=4,
                       num_attention_heads=6, num_lookback_heads=3, num_lookahead_heads=3,
                       local_frame_range=16)}
MODELS = {"spool": ("spool", {"head_config": {"context_in_head": True,
                                              "smoothing_weight": 0.15}}),
          "linear_probe": ("linear_probe", {}),
          "ms_tcn": ("ms_tcn", {"head_config": {"num_stages": 1}}),
          "ms_tcn4": ("ms_tcn", {"head_config": {"num_stages": 4}})}


def child(model_key: str, size: str, frames: int, steps: int, threads: int,
          window: int | None) -> dict:
    """One measurement, in this process (run by :func:`main` in a fresh one)."""
    import torch

    from spool.config import SpoolConfig
    from spool.models.frame_baselines import frame_classifier_class

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    arch, extra = MODELS[model_key]
    names = [f"c{i}" for i in range(9)]
    shape = dict(SIZES[size], **({} if window is None else {"local_frame_range": window}))
    config = SpoolConfig(**shape, **extra, class_names=names)
    model = frame_classifier_class(arch)(config, with_backbone=False)
    D, L = config.hidden_size, config.num_spatial_tokens
    tokens = torch.randn(1, frames, L, D)
    labels = torch.randint(0, len(names), (1, frames))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for _ in range(steps + 1):  # the first step warms up (allocations, kernels)
        start = time.perf_counter()
        loss = model(tokens=tokens, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    train_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    model.eval()
    evals = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        model.predict_long(tokens[0], chunk_frames=32)
        evals.append(time.perf_counter() - start)
    return {"model": model_key, "size": size, "frames": frames, "tokens": [L, D],
            "local_frame_range": config.local_frame_range,
            "params": sum(p.numel() for p in model.parameters()),
            "train_s": min(times[1:]), "train_s_all": times,
            "eval_s": min(evals[1:]), "eval_s_all": evals,
            "peak_rss_gib_after_train": train_rss,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=4000)
    ap.add_argument("--steps", type=int, default=2, help="timed repeats (after one warm-up)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--window", type=int, default=None, help="Spool's local_frame_range")
    ap.add_argument("--out", default="segmentation_timing.json")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = child(*args.child, args.frames, args.steps, args.threads, args.window)
        print(json.dumps(result))
        return
    results = []
    for size in args.sizes:
        for key in args.models:
            load_before = os.getloadavg()
            out = subprocess.run(
                [sys.executable, __file__, "--child", key, size, "--frames", str(args.frames),
                 "--steps", str(args.steps), "--threads", str(args.threads),
                 *([] if args.window is None else ["--window", str(args.window)])],
                capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["loadavg_1min"] = [load_before[0], os.getloadavg()[0]]
            results.append(result)
            print(f"{size:6s} {key:13s} train {result['train_s']:6.2f} s/video  eval "
                  f"{result['eval_s']:6.2f} s/video  peak RSS {result['peak_rss_gib']:.2f} GiB "
                  f"(load {result['loadavg_1min'][0]:.1f} -> {result['loadavg_1min'][1]:.1f})",
                  flush=True)
            with open(args.out, "w") as f:
                json.dump({"cpus": os.cpu_count(), "threads": args.threads,
                           "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
