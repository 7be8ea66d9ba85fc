"""Research (issue 13): the real demo's own training (``spool.demo.order_tasks.train_model``,
``RealDemoSettings`` per task) on a given token cache, one model on one task, with setting
overrides; appends one JSON line (the ``real_footage_results.jsonl`` fields) to ``--log``.

Caches: ``real_footage_order.py tokens`` (``NAME.8fps.npy``, all 257 tokens; pooled here with
``--pool``) or a demo's ``tokens/`` directory (``NAME.safetensors``, as the demo stored them).

    python research/demo_on_cache.py --npy /tmp/spool-realdata --task order --seed 1
    python research/demo_on_cache.py --npy /tmp/spool-realdata --task arrow --pool 4 \\
        --set '{"rotate": true}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spool.demo.footage_tokens import reduce_tokens  # noqa: E402
from spool.demo.order_tasks import split_clips, train_model  # noqa: E402
from spool.demo.real_footage import RealDemoSettings  # noqa: E402

NAMES = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "vtest.avi", "Megamind.avi",
         "box.mp4", "cup.mp4")  # the demo's order


def load(args: argparse.Namespace) -> list[torch.Tensor]:
    if args.npy:
        return [reduce_tokens(torch.from_numpy(np.load(args.npy / f"{n}.8fps.npy")
                                               .astype(np.float32)), args.pool).half()
                for n in NAMES]
    from safetensors.torch import load_file

    tokens = [load_file(str(args.demo_tokens / f"{n}.safetensors"))["tokens"] for n in NAMES]
    return [reduce_tokens(t.float(), args.pool).half() if args.pool else t for t in tokens]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--npy", type=Path, help="a real_footage_order.py token cache")
    src.add_argument("--demo-tokens", type=Path, help="a demo's tokens/ directory")
    parser.add_argument("--pool", type=int, default=0, help="0: class token; k: k x k grid")
    parser.add_argument("--task", choices=["order", "arrow"], default="order")
    parser.add_argument("--kind", choices=["spool", "lookback", "frame_pooling"],
                        default="spool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", default="{}", help="JSON: settings to change")
    parser.add_argument("--log", type=Path, default=Path("results.jsonl"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    videos = load(args)
    lengths = [len(v) for v in videos]
    frames = torch.cat(videos)
    settings = {**RealDemoSettings(seed=args.seed).for_task(args.task), **json.loads(args.set)}
    train, test, test_video = split_clips(lengths, settings["clip_len"],
                                          settings["train_fraction"])
    start, cpu = time.perf_counter(), time.process_time()
    r = train_model(dict(kind=args.kind, settings=settings, frames=frames, train=train,
                         test=test, figure=torch.zeros(0, settings["clip_len"], dtype=torch.long),
                         threads=1, out_dir=None))
    right = torch.tensor(r["test_correct"]).view(2, -1)
    row = {"settings": {"cmd": "demo_on_cache", "cache": str(args.npy or args.demo_tokens),
                        "task": args.task, "model": args.kind, "pool": args.pool,
                        "seed": args.seed, "changed": json.loads(args.set)},
           "tokens_per_frame": frames.shape[1], "frames_per_video": lengths,
           "train_clips": len(train), "test_clips": len(test),
           "test_acc": round(r["test_top1"], 4), "train_acc": round(r["train_top1"], 4),
           "test_acc_per_video": {NAMES[v]: round(right[:, test_video == v].float().mean()
                                                  .item(), 3)
                                  for v in sorted(set(test_video.tolist()))},
           "curve": [{k: round(v, 4) for k, v in h.items()} for h in r["history"]],
           "train_seconds": round(time.perf_counter() - start, 1),
           "cpu_seconds": round(time.process_time() - cpu, 1)}
    with open(args.log, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)


if __name__ == "__main__":
    main()
