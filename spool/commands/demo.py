"""``spool demo``: the main job. Offline, on CPU, in a few minutes; exits 1 when its bar is
not met."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from spool.cli_args import positive_int


def run(args: argparse.Namespace) -> int:
    import torch

    from spool.demo.synthetic import (
        POOLING,
        SPOOL,
        DemoSettings,
        bar_met,
        format_table,
        run_demo,
    )

    # One intra-op thread: these tensors are tiny, and thread hand-offs cost more than they
    # save (and much more on a busy machine).
    torch.set_num_threads(args.threads)
    settings = DemoSettings(seed=args.seed)
    if args.epochs is not None:
        settings.epochs = args.epochs
    if args.per_class is not None:
        settings.per_class = args.per_class
    jobs = args.jobs if args.jobs is not None else min(2, os.cpu_count() or 1)
    start = time.perf_counter()
    results = run_demo(Path(args.out), settings, jobs=jobs, threads=args.threads,
                       verbose=not args.quiet)
    took = time.perf_counter() - start
    print()
    print(format_table(results))
    spool = results[SPOOL]["val_top1"]
    pool = results[POOLING]["val_top1"]
    chance = 1 / len(settings.classes)
    print(f"\nchance {100 * chance:.0f}%; a model blind to order can reach at most "
          f"{100 * 2 * chance:.0f}% (it can tell the pairs apart, not the twins)")
    ok = bar_met(results)
    print(f"bar (Spool >= 90%, frame pooling <= 60%): {'met' if ok else 'NOT met'} "
          f"(Spool {100 * spool:.1f}%, frame pooling {100 * pool:.1f}%); "
          f"total {took / 60:.1f} min; curves: {Path(args.out) / 'curves.png'}")
    return 0 if ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo", help="train Spool vs a frame-pooling baseline on order-only synthetic videos",
        description="Offline, CPU: synthetic time-reversal videos, a tiny random DINOv2, "
                    "cached tokens, Spool vs lookback-only Spool vs frame pooling.")
    parser.add_argument("--out", default="spool-demo", help="output directory (spool-demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="training epochs per model")
    parser.add_argument("--per-class", type=positive_int, default=None,
                        help="videos per class")
    parser.add_argument("--jobs", type=positive_int, default=None,
                        help="models trained at once, one process each (default: 2 if there "
                             "are 2 cores)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch intra-op threads per process (1)")
    parser.add_argument("--quiet", action="store_true")
    parser.set_defaults(func=run)
