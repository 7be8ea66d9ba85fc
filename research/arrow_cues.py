"""Research (issue 13): why the arrow of time is not learnt on this footage, measured without Spool.

1. ``drift``: per video, how the class token (and the mean patch token) changes over the
   training part (first 70%) against the held-out part. A model that answers "forwards" when a
   clip changes the way training clips changed is right on a held-out clip only if the video
   keeps changing the same way; a scene that stays put (a static camera, a loop, people coming
   and going) changes back instead.
2. ``probe``: a logistic regression on an odd motion feature of each clip (the mean of
   ``x[t+1] - x[t]`` over the clip, which a reversal negates, so the two classes are mirror
   images), on the class token or on the patch grid pooled k x k (all 257 tokens at k = 1), with
   the demo's time split. Training and held-out accuracy per token set, clip length and L2.

Reads the token caches of ``real_footage_order.py tokens`` (``NAME.8fps.npy``, all 257 tokens).

    python research/arrow_cues.py --cache /tmp/rdx drift
    python research/arrow_cues.py --cache /tmp/rdx probe --pools 0 8 4 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spool.demo.footage_tokens import reduce_tokens  # noqa: E402
from spool.demo.order_tasks import split_clips  # noqa: E402

NAMES = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "vtest.avi", "Megamind.avi",
         "box.mp4", "cup.mp4")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def drift(cache: Path, clip_len: int = 8) -> None:
    for kind in ("cls", "patch-mean"):
        for name in NAMES:
            tokens = np.load(cache / f"{name}.8fps.npy", mmap_mode="r")
            x = (tokens[:, 0] if kind == "cls" else tokens[:, 1:].mean(1)).astype(np.float32)
            cut = int(round(0.7 * len(x)))
            span = clip_len - 1
            train = np.stack([x[s + span] - x[s] for s in range(0, cut - span)]).mean(0)
            test = [x[s + span] - x[s] for s in range(cut, len(x) - span)]
            print(json.dumps({"tokens": kind, "video": name,
                              "cos_net_change_train_vs_heldout": round(
                                  _cos(x[cut - 1] - x[0], x[-1] - x[cut]), 2),
                              "heldout_clips_drifting_like_training": round(
                                  float(np.mean([d @ train > 0 for d in test])), 2)}))


def _odd_features(frames: torch.Tensor, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every clip forwards (label 0) and backwards (1): the mean of ``x[t+1] - x[t]``, which a
    reversal negates."""
    x = frames[clips]
    f = (x[:, 1:] - x[:, :-1]).mean(1)
    return torch.cat([f, -f]), torch.cat([torch.zeros(len(f)), torch.ones(len(f))])


def _logistic(x: torch.Tensor, y: torch.Tensor, l2: float) -> torch.Tensor:
    w = torch.zeros(x.shape[1], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w, y) + l2 * w.pow(2).sum() / len(x)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def probe(cache: Path, pools: list[int], clip_lens: list[int], l2s: list[float]) -> None:
    torch.set_num_threads(1)
    raw = [torch.from_numpy(np.load(cache / f"{n}.8fps.npy").astype(np.float32)) for n in NAMES]
    lengths = [len(r) for r in raw]
    for pool in pools:
        frames = torch.cat([reduce_tokens(r, pool) for r in raw]).flatten(1)
        frames = frames / frames.norm(dim=1, keepdim=True)
        for t in clip_lens:
            train, test, test_video = split_clips(lengths, t, 0.7)
            xtr, ytr = _odd_features(frames, train)
            xte, yte = _odd_features(frames, test)
            scale = xtr.std()
            xtr, xte = xtr / scale, xte / scale
            both = torch.cat([test_video, test_video])
            for l2 in l2s:
                w = _logistic(xtr, ytr, l2)
                right = (xte @ w > 0).float() == yte
                print(json.dumps({
                    "pool": pool, "tokens_per_frame": frames.shape[1] // raw[0].shape[2],
                    "clip_len": t, "l2": l2,
                    "train": round(((xtr @ w > 0).float() == ytr).float().mean().item(), 3),
                    "heldout": round(right.float().mean().item(), 3),
                    "heldout_per_video": {NAMES[v]: round(right[both == v].float().mean().item(), 2)
                                          for v in sorted(set(test_video.tolist()))}}),
                      flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/spool-realdata"))
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("drift")
    p = sub.add_parser("probe")
    p.add_argument("--pools", type=int, nargs="+", default=[0, 8, 4, 2])
    p.add_argument("--clip-lens", type=int, nargs="+", default=[8, 16])
    p.add_argument("--l2", type=float, nargs="+", default=[1e-3, 1e-1, 10.0])
    args = parser.parse_args()
    if args.cmd == "drift":
        drift(args.cache)
    else:
        probe(args.cache, args.pools, args.clip_lens, args.l2)


if __name__ == "__main__":
    main()
