"""What the synthetic demo's Spool can tell apart at initialisation (issue 14's plateau).

For each init seed: a ridge probe on the pooled context of the untrained model (view 0 of
every training video in the demo's cache, 2/3 fit, 1/3 held out) for each pair of
time-reversed classes, and the spread of the first block's attention logits. One JSON line
per init std.

    python bench/demo_init_probe.py CACHE_DIR --std 0.02 0.069 --log plateau.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def probe(features: np.ndarray, labels: np.ndarray, pair: tuple[int, int]) -> float:
    """Held-out top-1 of a ridge classifier telling class ``pair[0]`` from ``pair[1]``."""
    keep = np.isin(labels, pair)
    x, t = features[keep], np.where(labels[keep] == pair[0], 1.0, -1.0)
    n = len(t) * 2 // 3
    x = (x - x[:n].mean(0)) / (x[:n].std(0) + 1e-6)
    a = np.c_[x, np.ones(len(x))]
    w = np.linalg.solve(a[:n].T @ a[:n] + np.eye(a.shape[1]), a[:n].T @ t[:n])
    return float(((a[n:] @ w > 0) == (t[n:] > 0)).mean())


def measure(cache: Path, std: float, seeds: list[int]) -> dict:
    from spool.demo.synthetic import SPOOL, DemoSettings, _models
    from spool.train.builders import build_model, model_config
    from spool.train.config import TrainConfig

    _, _, arch, fields = next(m for m in _models(DemoSettings()) if m[1] == SPOOL)
    meta = json.loads((cache / "train" / "cache.json").read_text())
    labels = np.array([label for _, label in meta["samples"]])
    tokens = torch.from_numpy(np.ascontiguousarray(
        np.load(cache / "train" / "tokens.npy", mmap_mode="r")[:, 0])).float()
    names = meta["class_names"]
    pairs = [(names.index(a), names.index(b)) for a, b in
             (("left_to_right", "right_to_left"), ("grow", "shrink")) if a in names]
    out: dict = {"tag": "init_probe", "initializer_range": std, "seeds": seeds,
                 "probe": {f"{names[a]}/{names[b]}": [] for a, b in pairs},
                 "attention_logit_std": []}
    for seed in seeds:
        cfg = TrainConfig(out_dir=str(cache / "probe_run"), train_cache=str(cache / "train"),
                          architecture=arch, model={**fields, "initializer_range": std},
                          seed=seed)
        model = build_model(cfg, model_config(cfg), names).eval()
        with torch.no_grad():
            context = torch.cat([model.spool.forward_tokens(tokens[i:i + 100]).context
                                 for i in range(0, len(tokens), 100)]).numpy()
            block = model.spool.temporal.layers[0]
            x = model.spool.context_frames(tokens[:32])
            q, k, _ = block.attn.project_qkv(block.norm1(x), torch.arange(x.shape[1]))
            logits = q @ k.transpose(-1, -2) / math.sqrt(block.attn.head_dim)
        for a, b in pairs:
            out["probe"][f"{names[a]}/{names[b]}"].append(round(probe(context, labels, (a, b)), 3))
        out["attention_logit_std"].append(round(float(logits.std()), 4))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cache", type=Path, help="the demo's cache folder (train/)")
    parser.add_argument("--std", type=float, nargs="+", default=[0.02, 0.069])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--log", type=Path, required=True, help="JSON lines, appended")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for std in args.std:
        row = measure(args.cache, std, args.seeds)
        with open(args.log, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
