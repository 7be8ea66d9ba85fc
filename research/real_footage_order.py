"""Research (issue 13, part 2): two order-only tasks on real footage with real DINOv2-S tokens.

(a) order verification: is a clip in natural order or are its frames shuffled (Shuffle & Learn);
(b) arrow of time: is a clip played forwards or backwards.
Every clip appears in both classes, so frame pooling (order-blind) cannot beat 50%.
Every video is split by time: clips from its first 70% train, clips from the rest test.

    python research/real_footage_order.py tokens --fps 8          # once: DINOv2-S tokens (.npy)
    python research/real_footage_order.py train --task order --model spool --pool 4 ...

``train`` appends one JSON line per run to ``OUT/results.jsonl`` (settings, accuracies, loss
curve, timings). Not part of the package: a script to find the demo's settings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spool import SpoolConfig  # noqa: E402
from spool.backbones import import_backbone  # noqa: E402
from spool.data.footage import fetch_footage  # noqa: E402
from spool.downloads import cache_dir  # noqa: E402
from spool.models.classification import (  # noqa: E402
    FramePoolingForVideoClassification,
    SpoolForVideoClassification,
)
from spool.train.builders import parameter_groups, warmup_cosine  # noqa: E402
from spool.video import VideoReader  # noqa: E402

# Duplicates of other clips (a damaged re-encode, a 7 KB re-compression) and a 2-fps slideshow.
SKIP = ("Megamind_bugy.avi", "carphone_distorted.mp4", "tree.avi")
TRAIN_FRACTION = 0.7
CENTER = False  # --center: subtract each clip's mean token over time
CLIP_NORM = False  # --clip-norm: centre each clip and scale it to unit RMS over time


def frame_times(reader: VideoReader) -> np.ndarray:
    """Every frame's timestamp (s) without decoding (what ``reader.get`` would return)."""
    if reader.index.exact:
        return reader.index.pts * float(reader.index.time_base)
    rate = reader._stream.average_rate or reader._stream.guessed_rate
    return np.arange(len(reader)) / float(rate)


def compute_tokens(out: Path, fps: float, names: list[str] | None, batch: int,
                   bf16: bool) -> dict[str, float]:
    """DINOv2-S tokens ``[N, 257, 384]`` (fp16) of every clip at ``fps``, cached as .npy."""
    from spool.models.frame_encoder import FrameEncoderModel

    model_dir = import_backbone("dinov2-small", cache_dir("backbones", "dinov2-small"))
    # The whole frame squashed to 224 x 224: what the encoder did when these caches were made
    # (before the centre crop became the default); the demo does the same.
    encoder = FrameEncoderModel(backbone_name=str(model_dir), image_size=224,
                                resize_mode="squash").eval()
    if bf16:
        encoder = encoder.to(torch.bfloat16)
    timings = {}
    for clip in fetch_footage():
        if clip.name in SKIP or (names and clip.name not in names):
            continue
        path = out / f"{clip.name}.{fps:g}fps.npy"
        if path.is_file():
            continue
        start = time.perf_counter()
        with VideoReader(clip.path) as reader:
            times = frame_times(reader)
            wanted = np.arange(times[0], times[-1] + 1e-6, 1 / fps)
            idx = np.searchsorted(times, wanted + 1e-6, side="right") - 1  # at or before
            chunks = []
            for s in range(0, len(idx), batch):
                frames, _ = reader.get(idx[s:s + batch].tolist())
                with torch.inference_mode():
                    chunks.append(encoder.encode_frames(torch.from_numpy(frames)[None])[0]
                                  .to(torch.float16).numpy())
        tokens = np.concatenate(chunks)
        np.save(path.with_suffix(".tmp.npy"), tokens)
        os.replace(path.with_suffix(".tmp.npy"), path)
        np.save(out / f"{clip.name}.{fps:g}fps.times.npy", times[idx])
        timings[clip.name] = time.perf_counter() - start
        print(f"{clip.name}: {len(idx)} frames in {timings[clip.name]:.1f}s", flush=True)
    return timings


def pool_tokens(tokens: np.ndarray, pool: int) -> np.ndarray:
    """``[N, 1 + 16*16, D]`` -> class token + patch grid average-pooled ``pool x pool``:
    ``[N, 1 + (16/pool)^2, D]``; ``pool=0``: class token only; ``pool=1``: unchanged."""
    if pool == 0:
        return tokens[:, :1]
    if pool == 1:
        return tokens
    n, _, d = tokens.shape
    g = int(math.isqrt(tokens.shape[1] - 1))
    grid = tokens[:, 1:].reshape(n, g // pool, pool, g // pool, pool, d).mean(axis=(2, 4))
    return np.concatenate([tokens[:, :1], grid.reshape(n, -1, d)], axis=1)


def _parts(n: int, interleaved: int) -> list[tuple[int, int, bool]]:
    """(first, end, is_test) segments of a video of ``n`` frames: its first 70% and the rest,
    or (diagnosis only) blocks of ``interleaved`` frames, 3 of every 10 held out."""
    if not interleaved:
        cut = int(round(TRAIN_FRACTION * n))  # frames are evenly spaced in time
        return [(0, cut, False), (cut, n, True)]
    return [(lo, min(lo + interleaved, n), (lo // interleaved) % 10 in (2, 5, 8))
            for lo in range(0, n, interleaved)]


def build_clips(out: Path, fps: float, stride: int, clip_len: int, step: int, pool: int,
                interleaved: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """All frames' pooled tokens ``[N, L, D]`` (fp16) and the frame indices ``[C, T]`` of the
    train and test clips of every video (a clip lies wholly in its video's first 70% or in
    the rest)."""
    frames, train, test, counts, offset, names = [], [], [], {}, 0, []
    span = (clip_len - 1) * stride + 1
    for path in sorted(out.glob(f"*.{fps:g}fps.npy")):
        if path.name.endswith(".times.npy"):
            continue
        name = path.name[: -len(f".{fps:g}fps.npy")]
        if name in SKIP:
            continue
        tokens = pool_tokens(np.load(path).astype(np.float32), pool).astype(np.float16)
        frames.append(tokens)
        names.append((name, offset, offset + len(tokens)))
        for lo, hi, is_test in _parts(len(tokens), interleaved):
            starts = np.arange(lo, hi - span + 1, step)
            (test if is_test else train).append(
                offset + starts[:, None] + stride * np.arange(clip_len)[None])
            counts.setdefault(name, []).append(len(starts))
        offset += len(tokens)
    counts["_ranges"] = names  # (video, first frame, end) in the frame array
    return (torch.from_numpy(np.concatenate(frames)), torch.from_numpy(np.concatenate(train)),
            torch.from_numpy(np.concatenate(test)), counts)


def time_profile(model, frames: torch.Tensor, clips: torch.Tensor, task: str, ranges: list,
                 bins: int = 10) -> list[float | None]:
    """Accuracy by where a clip starts in its video (tenths of the video, all videos pooled):
    is what was learnt on the first 70% still right later on?"""
    pos = torch.zeros(len(clips))
    for _, lo, hi in ranges:
        mine = (clips[:, 0] >= lo) & (clips[:, 0] < hi)
        pos[mine] = (clips[mine, 0] - lo).float() / (hi - lo)
    out = []
    for b in range(bins):
        sel = clips[(pos >= b / bins) & (pos < (b + 1) / bins)]
        out.append(round(evaluate(model, frames, sel, task, 3, 256)[0], 3) if len(sel) else None)
    return out


def per_video(model, frames: torch.Tensor, clips: torch.Tensor, task: str, ranges: list,
              seed: int) -> dict[str, float]:
    """Test accuracy of each video's clips (both classes)."""
    out = {}
    for name, lo, hi in ranges:
        mine = clips[(clips[:, 0] >= lo) & (clips[:, 0] < hi)]
        if len(mine):
            out[name] = round(evaluate(model, frames, mine, task, seed, 256)[0], 3)
    return out


def _shuffle(T: int, rng: np.random.Generator, partial: float) -> np.ndarray:
    """A permutation of ``range(T)`` that is neither the identity nor a reversal; with
    probability ``partial`` only a random segment of 3 or more frames is shuffled (a harder
    negative: the rest of the clip stays smooth)."""
    while True:
        p = np.arange(T)
        if rng.random() < partial:
            n = int(rng.integers(3, T + 1))
            s = int(rng.integers(0, T - n + 1))
            p[s:s + n] = rng.permutation(p[s:s + n])
        else:
            p = rng.permutation(T)
        if not ((p == np.arange(T)).all() or (p == np.arange(T)[::-1]).all()):
            return p


def make_batch(frames: torch.Tensor, clips: torch.Tensor, task: str,
               rng: np.random.Generator, flip_natural: bool = False, partial: float = 0.0,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``[2C, T, L, D]`` of every clip twice: label 0 as is, label 1 shuffled (order)
    or reversed (arrow). ``flip_natural`` (order task, training): reverse half of the natural
    clips, which are still in order (a shuffle is never a plain reversal)."""
    T = clips.shape[1]
    if flip_natural and task == "order":
        flip = torch.from_numpy(rng.random(len(clips)) < 0.5)
        clips = torch.where(flip[:, None], clips.flip(1), clips)
    if task == "arrow":
        other = clips.flip(1)
    else:
        perms = [_shuffle(T, rng, partial) for _ in range(len(clips))]
        other = clips[torch.arange(len(clips))[:, None], torch.as_tensor(np.stack(perms))]
    labels = torch.cat([torch.zeros(len(clips)), torch.ones(len(clips))]).long()
    x = frames[torch.cat([clips, other])].float()
    if CENTER or CLIP_NORM:  # remove what every frame of the clip shares (same for both classes)
        x = x - x.mean(dim=1, keepdim=True)
    if CLIP_NORM:  # one scale per clip: how much it moves no longer matters, only how
        x = x / x.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-6)
    return x, labels


def rotate(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The batch's tokens times a random orthogonal matrix (a new one every step): no
    feature direction means anything, only relations between frames do."""
    d = x.shape[-1]
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen))
    return x @ (q * torch.sign(torch.diagonal(r))[None, :])


def build_model(kind: str, L: int, layers: int, heads: int, window: int, dropout: float,
                mlp_ratio: float = 4.0):
    names = ["natural", "altered"]
    config = SpoolConfig(num_hidden_layers=layers, num_attention_heads=heads,
                         num_lookback_heads=heads if kind == "lookback" else heads // 2,
                         num_lookahead_heads=0 if kind == "lookback" else heads - heads // 2,
                         local_frame_range=window, hidden_size=384, num_spatial_tokens=L,
                         class_names=names, hidden_dropout=dropout, mlp_ratio=mlp_ratio)
    if kind == "pool":
        return FramePoolingForVideoClassification(config, with_backbone=False)
    return SpoolForVideoClassification(config, with_backbone=False)


@torch.no_grad()
def evaluate(model, frames: torch.Tensor, clips: torch.Tensor, task: str, seed: int,
             batch: int) -> tuple[float, float]:
    """Accuracy and loss on every clip in both classes (fixed shuffles)."""
    model.eval()
    rng = np.random.default_rng(seed)
    correct, loss, n = 0, 0.0, 0
    for s in range(0, len(clips), batch):
        x, y = make_batch(frames, clips[s:s + batch], task, rng)
        out = model(tokens=x, labels=y)
        correct += int((out.logits.argmax(-1) == y).sum())
        loss += float(out.loss) * len(y)
        n += len(y)
    return correct / n, loss / n


def train(args: argparse.Namespace) -> dict:
    global CENTER, CLIP_NORM
    CENTER, CLIP_NORM = args.center, args.clip_norm
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    frames, train_clips, test_clips, counts = build_clips(args.out, args.fps, args.stride,
                                                          args.clip_len, args.step, args.pool,
                                                          args.interleaved)
    for extra in args.extra_train_strides:  # more natural training clips: other speeds
        train_clips = torch.cat([train_clips, build_clips(
            args.out, args.fps, extra, args.clip_len, args.step, args.pool)[1]])
    L = frames.shape[1]
    if args.standardize:  # per channel, with training-frame statistics: a fixed affine map
        used = frames[train_clips.unique()].float()
        mean, std = used.mean((0, 1)), used.std((0, 1)).clamp_min(1e-3)
        frames = ((frames.float() - mean) / std).half()
    model = build_model(args.model, L, args.layers, args.heads, args.window, args.dropout,
                        args.mlp_ratio)
    opt = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.lr)
    per_epoch = math.ceil(len(train_clips) / args.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(
        int(args.warmup * per_epoch), args.epochs * per_epoch, 0.01))
    rng = np.random.default_rng(args.seed)
    curve = []
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_clips))
        total, seen = 0.0, 0
        for s in range(0, len(order), args.batch_size):
            x, y = make_batch(frames, train_clips[order[s:s + args.batch_size]],
                              args.task, rng, args.flip_natural, args.partial)
            if args.channel_drop:  # one channel mask per sample, the same for all its frames
                keep = torch.rand(x.shape[0], 1, 1, x.shape[3]) >= args.channel_drop
                x = x * keep / (1 - args.channel_drop)
            if args.rotate:
                x = rotate(x, gen)
            loss = model(tokens=x, labels=y).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(loss) * len(y)
            seen += len(y)
        row = {"epoch": epoch + 1, "train_loss": round(total / seen, 4)}
        if args.eval_every and ((epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs):
            row["test_acc"] = round(evaluate(model, frames, test_clips, args.task, 1, 256)[0], 4)
        curve.append(row)
        if not args.quiet:
            print(json.dumps(row), flush=True)
    train_seconds = time.perf_counter() - t0
    test_acc, test_loss = evaluate(model, frames, test_clips, args.task, 1, 256)
    train_acc, train_loss = evaluate(model, frames, train_clips, args.task, 2, 256)
    ranges = counts.pop("_ranges")
    videos = per_video(model, frames, test_clips, args.task, ranges, 1)
    profile = time_profile(model, frames, torch.cat([train_clips, test_clips]), args.task,
                           ranges)
    result = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                           for k, v in vars(args).items() if k != "func"},
              "tokens_per_frame": L, "train_clips": len(train_clips),
              "test_clips": len(test_clips), "clips_per_video": counts,
              "params": sum(p.numel() for p in model.parameters()),
              "test_acc": round(test_acc, 4), "test_loss": round(test_loss, 4),
              "train_acc": round(train_acc, 4), "train_loss_eval": round(train_loss, 4),
              "test_acc_per_video": videos, "acc_by_time_tenth": profile, "curve": curve,
              "train_seconds": round(train_seconds, 1)}
    with open(args.out / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    print(f"{args.task} {args.model} pool={args.pool} fps={args.fps}/{args.stride} "
          f"T={args.clip_len} step={args.step} layers={args.layers} lr={args.lr} "
          f"bs={args.batch_size} ep={args.epochs}: "
          f"test {test_acc:.3f} train {train_acc:.3f} (loss {curve[0]['train_loss']} -> "
          f"{curve[-1]['train_loss']}) {len(train_clips)}/{len(test_clips)} clips, "
          f"{train_seconds:.0f}s; per video {videos}; by tenth of video {profile}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/spool-realdata"))
    parser.add_argument("--threads", type=int, default=2)
    sub = parser.add_subparsers(dest="cmd", required=True)
    tok = sub.add_parser("tokens")
    tok.add_argument("--fps", type=float, default=8)
    tok.add_argument("--names", nargs="*")
    tok.add_argument("--batch", type=int, default=16)
    tok.add_argument("--bf16", action="store_true")
    tr = sub.add_parser("train")
    tr.add_argument("--task", choices=["order", "arrow"], required=True)
    tr.add_argument("--model", choices=["spool", "lookback", "pool"], default="spool")
    tr.add_argument("--fps", type=float, default=8, help="token cache to use")
    tr.add_argument("--stride", type=int, default=1, help="take every k-th cached frame")
    tr.add_argument("--clip-len", type=int, default=8)
    tr.add_argument("--step", type=int, default=2, help="frames between clip starts")
    tr.add_argument("--pool", type=int, default=4, help="0: class token; 1: all; k: k x k")
    tr.add_argument("--layers", type=int, default=2)
    tr.add_argument("--heads", type=int, default=6)
    tr.add_argument("--window", type=int, default=4)
    tr.add_argument("--dropout", type=float, default=0.0)
    tr.add_argument("--epochs", type=int, default=20)
    tr.add_argument("--batch-size", type=int, default=32, help="clips (x2 samples)")
    tr.add_argument("--lr", type=float, default=3e-4)
    tr.add_argument("--warmup", type=float, default=1.0, help="epochs")
    tr.add_argument("--weight-decay", type=float, default=0.05)
    tr.add_argument("--eval-every", type=int, default=5)
    tr.add_argument("--flip-natural", action="store_true",
                    help="order task: reverse half of the natural training clips")
    tr.add_argument("--standardize", action="store_true",
                    help="z-score every token channel with training-frame statistics")
    tr.add_argument("--partial", type=float, default=0.0,
                    help="order task: share of training shuffles that permute a segment only")
    tr.add_argument("--extra-train-strides", type=int, nargs="*", default=[],
                    help="also train on clips taken with these frame strides")
    tr.add_argument("--center", action="store_true",
                    help="subtract each clip's mean token over time (all models)")
    tr.add_argument("--channel-drop", type=float, default=0.0,
                    help="training: zero this share of token channels (same for all frames)")
    tr.add_argument("--interleaved", type=int, default=0, metavar="FRAMES",
                    help="diagnosis only: hold out 3 of every 10 blocks of FRAMES frames "
                         "instead of each video's last 30%%")
    tr.add_argument("--clip-norm", action="store_true",
                    help="centre each clip over time and scale it to unit RMS (all models)")
    tr.add_argument("--rotate", action="store_true",
                    help="training: a random orthogonal map of the channels per sample")
    tr.add_argument("--mlp-ratio", type=float, default=4.0)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.cmd == "tokens":
        start = time.perf_counter()
        timings = compute_tokens(args.out, args.fps, args.names, args.batch, args.bf16)
        print(f"tokens: {time.perf_counter() - start:.1f}s {timings}")
    else:
        train(args)


if __name__ == "__main__":
    main()
