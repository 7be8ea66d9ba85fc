"""Research (issue 13): how much order signal do DINOv2-S tokens carry, with no training?

For every held-out clip (each video's last 30%, as in the demo) compare the clip with a
shuffle of it by one hand-made number: the mean distance between consecutive frames over the
mean distance between any two frames. A clip is called "natural" when its ratio is the lower
of the two. Reads the token caches of ``real_footage_order.py tokens`` (``NAME.8fps.npy``).

    python research/order_oracle.py --cache /tmp/rdx --clip-len 16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SKIP = ("Megamind_bugy.avi", "carphone_distorted.mp4", "tree.avi")


def features(tokens: np.ndarray, kind: str) -> np.ndarray:
    if kind == "cls":
        return tokens[:, 0]
    return tokens[:, 1:].mean(1)  # "patch-mean"


def smoothness(clip: np.ndarray) -> float:
    t = len(clip)
    step = np.linalg.norm(clip[1:] - clip[:-1], axis=1).mean()
    pairs = np.linalg.norm(clip[:, None] - clip[None], axis=2).sum() / (t * (t - 1))
    return step / pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/rdx"))
    parser.add_argument("--clip-len", type=int, default=16)
    parser.add_argument("--fps", type=float, default=8)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    t = args.clip_len
    for kind in ("cls", "patch-mean"):
        right, per_video = [], {}
        for path in sorted(args.cache.glob(f"*.{args.fps:g}fps.npy")):
            name = path.name[: -len(f".{args.fps:g}fps.npy")]
            if name in SKIP or name.endswith(".times"):
                continue
            x = features(np.load(path).astype(np.float32), kind)
            cut = int(round(0.7 * len(x)))
            mine = []
            for s in range(cut, len(x) - t + 1):
                clip = x[s:s + t]
                p = rng.permutation(t)
                while (p == np.arange(t)).all() or (p == np.arange(t)[::-1]).all():
                    p = rng.permutation(t)
                mine.append(smoothness(clip) < smoothness(clip[p]))
            if mine:
                per_video[name] = round(float(np.mean(mine)), 3)
                right += mine
        print(f"{kind}, {t}-frame clips: {100 * np.mean(right):.1f}% of {len(right)} held-out "
              f"clips; per video {per_video}")


if __name__ == "__main__":
    main()
