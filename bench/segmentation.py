"""Temporal action segmentation on synthetic long videos: Spool vs a per-frame probe vs MS-TCN.

Offline, CPU. Everything goes through the library, as a user's run would:

1. ``spool.data.synthetic_segments`` writes the benchmark (MS-TCN layout): 2,400-3,000-frame
   videos whose motion classes come in time-reversed pairs (no single frame tells them
   apart) and whose delayed segments are labelled by a cue more than 1,600 frames earlier;
2. the demo's zero-block DINOv2 with one patch per 32x32 frame, its projection fixed to
   low-frequency cosines (``dct_encoder``; ``--encoder random``: a random projection of all
   the pixels), encodes every frame once (``build_frame_cache``, what ``spool cache --task
   frames`` runs);
3. :class:`~spool.train.trainer.Trainer` (what ``spool train --task frames`` runs) trains
   Spool, the per-frame linear probe and MS-TCN on that cache, one whole video per step;
4. every held-out video is scored whole (``evaluate_segmentation``, what ``spool eval`` runs):
   frame accuracy, edit, F1@{10,25,50} (background is not a segment), plus the accuracy on
   the frames whose label needs the far cue and the segments predicted per true segment.

Writes ``results.json``, ``results.md``, ``ribbons.png`` and appends a line to
``experiments.jsonl`` in ``--out``.

    nice -n 19 python bench/segmentation.py --out seg-bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from spool.data.frame_cache import FrameTokenDataset, build_frame_cache  # noqa: E402
from spool.data.segmentation import read_segmentation  # noqa: E402
from spool.data.synthetic_segments import SEGMENT_CLASSES, make_segmentation_dataset  # noqa: E402
from spool.demo.synthetic import (  # noqa: E402
    DEMO_BACKBONE,
    demo_backbone,
    demo_initializer_range,
)
from spool.metrics.ribbons import plot_ribbons  # noqa: E402
from spool.metrics.segmentation import SegmentationMetrics, to_segments  # noqa: E402
from spool.models.frame_encoder import FrameEncoderModel  # noqa: E402
from spool.models.pretrained import load_pretrained  # noqa: E402
from spool.runtime import configure_logging  # noqa: E402
from spool.train.config import TrainConfig  # noqa: E402
from spool.train.segmentation_eval import evaluate_segmentation  # noqa: E402
from spool.train.trainer import Trainer  # noqa: E402
from spool.video.samplers import FpsSampler  # noqa: E402

BACKGROUND = [SEGMENT_CLASSES.index("background")]
AFTER = [SEGMENT_CLASSES.index("after_a"), SEGMENT_CLASSES.index("after_b")]
NAMES = {"spool": "Spool", "linear_probe": "Per-frame linear probe",
         "ms_tcn": "MS-TCN, 1 stage", "ms_tcn4": "MS-TCN, 4 stages"}


def log(text: str, t0: float = time.perf_counter()) -> None:
    print(f"[{time.perf_counter() - t0:6.0f}s] {text}", flush=True)


def key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a JSON value (a bare word stays a string)."""
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def dct_encoder(size: int, dim: int, patch: int | None = None,
                pooling: int = 1) -> torch.nn.Module:
    """The demo's zero-block DINOv2 whose patch projection is set to low-frequency 2-D
    cosines: most of the ``dim`` outputs read brightness, a sixth each read red-green and
    blue-yellow (the cue is a colour). A random projection of the pixels (what a random init
    gives) scatters "where the shape is" over unrelated directions; smooth basis functions
    keep it smooth, as a trained encoder's features are. Nothing is learnt from the data:
    every model gets the same fixed tokens.

    ``patch``: pixels per patch side (default: the whole frame, one patch). With a grid of
    patches each is projected onto the cosines of its own pixels, and its position embedding
    (random, std 5: about the spread of the projections over a frame's patches, 4.7 on these
    videos, so that a token says which patch it comes from) is added; ``pooling``: the
    encoder's ``token_pooling`` (issue 12)."""
    patch = patch or size
    encoder = FrameEncoderModel(backbone_config=dict(DEMO_BACKBONE, hidden_size=dim,
                                                     patch_size=patch, image_size=size),
                                image_size=size, crop_pct=1.0, token_pooling=pooling).eval()
    grid = (torch.arange(patch) + 0.5) / patch
    freqs = sorted(((u, v) for u in range(patch) for v in range(patch)),
                   key=lambda f: (f[0] + f[1], f))
    colour = {"luma": torch.tensor([1.0, 1.0, 1.0]), "rg": torch.tensor([1.0, -1.0, 0.0]),
              "by": torch.tensor([-0.5, -0.5, 1.0])}
    counts = {"rg": dim // 6, "by": dim // 6}
    counts["luma"] = dim - counts["rg"] - counts["by"]
    weight = []
    for name, n in counts.items():
        for u, v in freqs[:n]:
            basis = torch.outer(torch.cos(torch.pi * u * grid), torch.cos(torch.pi * v * grid))
            weight.append(colour[name][:, None, None] * basis / patch)
    embeddings = encoder.backbone.model.embeddings
    with torch.no_grad():
        embeddings.patch_embeddings.projection.weight.copy_(torch.stack(weight))
        embeddings.patch_embeddings.projection.bias.zero_()
        if patch < size:
            embeddings.position_embeddings.normal_(std=5.0)
    return encoder


def build_data(args: argparse.Namespace) -> tuple[Path, Path]:
    """Write the videos and cache their tokens (each only once for the same settings)."""
    videos = dict(train=args.train, test=args.test, frames=list(args.frames), size=args.size,
                  seed=args.seed, min_cue_distance=args.min_cue_distance)
    settings = dict(videos, dim=args.dim, encoder=args.encoder)
    if args.patch or args.pooling > 1:  # (older caches: one patch, no pooling)
        settings.update(patch=args.patch, pooling=args.pooling)
    data = args.out / "data"
    stamp, video_stamp = args.out / "data_settings.json", data / "videos_settings.json"
    caches = args.out / "cache" / "train", args.out / "cache" / "test"
    if stamp.exists() and json.loads(stamp.read_text()) == settings:
        return caches
    if not video_stamp.exists() or json.loads(video_stamp.read_text()) != videos:
        make_segmentation_dataset(data, args.train, args.test, frames=tuple(args.frames),
                                  size=args.size, seed=args.seed,
                                  min_cue_distance=args.min_cue_distance)
        video_stamp.write_text(json.dumps(videos))
        log(f"wrote {args.train} + {args.test} videos to {data}")
    torch.manual_seed(args.seed)
    if args.encoder == "dct":
        encoder = dct_encoder(args.size, args.dim, args.patch, args.pooling)
    else:  # one random linear projection of all pixels per frame
        encoder = demo_backbone(dict(DEMO_BACKBONE, hidden_size=args.dim,
                                     patch_size=args.size, image_size=args.size), args.size)
    for split, cache in zip(("train", "test"), caches, strict=True):
        samples, names = read_segmentation(data, f"{split}.split1")
        build_frame_cache(encoder, samples, names, cache, FpsSampler(15.0), dtype="float16")
    stamp.write_text(json.dumps(settings))
    log(f"cached every frame's tokens in {caches[0].parent}")
    return caches


def model_settings(args: argparse.Namespace) -> dict[str, tuple[str, dict, dict]]:
    """model key -> (architecture, SpoolConfig fields, TrainConfig fields)."""
    heads = args.heads
    # Head counts must divide the cache's hidden size even where there is no temporal stack.
    shape = dict(num_attention_heads=heads, num_lookback_heads=heads // 2,
                 num_lookahead_heads=heads - heads // 2)
    head = {"context_in_head": True, "smoothing_weight": args.smoothing}
    if args.refine:
        head.update(refinement_stages=args.refine, refinement_layers=args.refine_layers,
                    refinement_window=args.refine_window)
        if args.refine_context:
            head.update(refinement_context=True)
    spool = dict(shape, num_hidden_layers=args.layers, local_frame_range=args.window,
                 hidden_dropout=args.dropout, head_config=head,
                 initializer_range=args.init or demo_initializer_range(args.dim))
    spool.update(dict(args.spool_model))
    common = dict(epochs=args.epochs, lr=args.lr)
    return {
        "spool": ("spool", spool, {**common, **dict(args.spool_train)}),
        "linear_probe": ("linear_probe", shape, dict(epochs=args.probe_epochs, lr=args.probe_lr)),
        "ms_tcn": ("ms_tcn", {**shape, "head_config": {"num_stages": 1}},
                   dict(epochs=args.tcn_epochs, lr=args.tcn_lr)),
        "ms_tcn4": ("ms_tcn", {**shape, "head_config": {"num_stages": 4}},
                    dict(epochs=args.tcn_epochs, lr=args.tcn_lr)),
    }


def mode_filter(pred: np.ndarray, frames: int) -> np.ndarray:
    """Each frame's most frequent prediction in the ``frames`` around it (ties: the lower
    class): a post-processing step, applied to every model alike when asked for."""
    onehot = np.eye(len(SEGMENT_CLASSES))[pred]
    kernel = np.ones(frames)
    counts = np.stack([np.convolve(onehot[:, c], kernel, mode="same")
                       for c in range(onehot.shape[1])], axis=1)
    return counts.argmax(1)


def metrics_of(preds: dict[str, np.ndarray], targets: dict[str, np.ndarray]) -> dict:
    """Frame accuracy, edit, F1@{10,25,50} (``spool.metrics``), the accuracy on the frames
    whose label needs the far cue, and predicted segments per true segment."""
    metrics = SegmentationMetrics(background=BACKGROUND)
    right = total = pred_segments = true_segments = 0
    for name, target in targets.items():
        pred = preds[name]
        metrics.update(pred, target)
        far = np.isin(target, AFTER)
        right += int((pred[far] == target[far]).sum())
        total += int(far.sum())
        pred_segments += len(to_segments(pred, BACKGROUND).labels)
        true_segments += len(to_segments(target, BACKGROUND).labels)
    return {**metrics.compute(), "after_cue_accuracy": 100 * right / max(total, 1),
            "segments_per_true_segment": pred_segments / max(true_segments, 1)}


def score(model: torch.nn.Module, test: FrameTokenDataset) -> tuple[dict, dict, dict]:
    """Every held-out video, whole (``evaluate_segmentation``, as ``spool eval``): metrics,
    predictions and targets ``{video: [T]}``."""
    result = evaluate_segmentation(model, test, background=tuple(BACKGROUND))
    preds = {name: v.pred for name, v in result.videos.items()}
    targets = {name: v.target for name, v in result.videos.items()}
    scores = metrics_of(preds, targets)
    assert abs(scores["f1@50"] - result.scores["f1@50"]) < 1e-9  # one definition
    return scores, preds, targets


def run_model(key: str, arch: str, model: dict, train: dict, caches: tuple[Path, Path],
              args: argparse.Namespace) -> tuple[dict, dict, dict]:
    cfg = TrainConfig(
        task="frames", out_dir=str(args.out / "runs" / args.tag / key), train_cache=str(caches[0]),
        val_cache=str(caches[1]), architecture=arch, model=model, crop_frames=None,
        batch_size=1, weight_decay=0.01, warmup_epochs=0.5, background=["background"],
        num_workers=0, device="cpu", tensorboard=False, quiet=True, log_every=10**9,
        name=NAMES[key], **{"eval_every": 10**6, "seed": args.seed, **train})
    shutil.rmtree(cfg.out_dir, ignore_errors=True)  # a run of an earlier benchmark
    start = time.perf_counter()
    trainer = Trainer(cfg)
    history = trainer.fit()
    seconds = time.perf_counter() - start
    scores, preds, targets = score(trainer.model, FrameTokenDataset(caches[1]))
    params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    result = {**scores, "train_loss": history[-1]["train_loss"],
              "train_acc": history[-1]["train_acc"], "train_seconds": seconds,
              "params": params, "architecture": arch, "model": model, "train": train}
    log(f"{NAMES[key]}: " + ", ".join(f"{k} {v:.1f}" for k, v in result.items()
                                      if isinstance(v, float)))
    return result, preds, targets


def table(results: dict[str, dict]) -> str:
    lines = ["| model | frame acc | edit | F1@10 | F1@25 | F1@50 | after-cue acc | "
             "segments / true | params | train time |", "| --- |" + " ---: |" * 9]
    for key, r in results.items():
        lines.append(
            f"| {NAMES[key]} | {r['accuracy']:.1f} | {r['edit']:.1f} | {r['f1@10']:.1f} | "
            f"{r['f1@25']:.1f} | {r['f1@50']:.1f} | {r['after_cue_accuracy']:.1f} | "
            f"{r['segments_per_true_segment']:.2f} | {r['params']:,} | "
            f"{r['train_seconds']:.0f}s |")
    return "\n".join(lines)


def bars(results: dict[str, dict]) -> list[str]:
    """The issue's bars, each with its numbers."""
    out = []
    if "spool" in results:
        f1 = results["spool"]["f1@50"]
        out.append(f"Spool F1@50 >= 80: {f1:.1f} ({'met' if f1 >= 80 else 'NOT met'})")
    if "linear_probe" in results:
        f1 = results["linear_probe"]["f1@50"]
        out.append(f"probe F1@50 <= 50: {f1:.1f} ({'met' if f1 <= 50 else 'NOT met'})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("seg-bench"))
    ap.add_argument("--train", type=int, default=24)
    ap.add_argument("--test", type=int, default=8)
    ap.add_argument("--frames", type=int, nargs=2, default=(2400, 3000))
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--dim", type=int, default=64, help="the backbone's hidden size")
    ap.add_argument("--encoder", choices=("dct", "random"), default="dct",
                    help="the frame encoder's projection: low-frequency cosines (dct_encoder) "
                         "or random (what a random init gives)")
    ap.add_argument("--patch", type=int, default=None,
                    help="dct: pixels per patch side (default: one patch per frame)")
    ap.add_argument("--pooling", type=int, default=1,
                    help="dct: the frame encoder's token_pooling k (issue 12)")
    ap.add_argument("--min-cue-distance", type=int, default=1600)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--window", type=int, default=4, help="Spool's local_frame_range")
    ap.add_argument("--smoothing", type=float, default=0.15,
                    help="Spool's smoothing loss weight (MS-TCN's, as its baseline has)")
    ap.add_argument("--dropout", type=float, default=0.1, help="Spool's hidden_dropout")
    ap.add_argument("--init", type=float, default=None,
                    help="Spool's initializer_range (default: demo_initializer_range(dim), "
                         "0.069 at 64: the width-scaled init of issue 14)")
    ap.add_argument("--refine", type=int, default=1, help="Spool's refinement_stages")
    ap.add_argument("--refine-layers", type=int, default=2, help="layers per refinement stage")
    ap.add_argument("--refine-window", type=int, default=48,
                    help="a refinement stage's local_frame_range")
    ap.add_argument("--refine-context", action="store_true",
                    help="refinement stages' heads read their pooled context too")
    ap.add_argument("--epochs", type=int, default=20, help="Spool's epochs")
    ap.add_argument("--lr", type=float, default=1e-3, help="Spool's learning rate")
    ap.add_argument("--spool-model", type=key_value, action="append", default=[],
                    metavar="KEY=VALUE", help="more SpoolConfig fields for Spool")
    ap.add_argument("--spool-train", type=key_value, action="append", default=[],
                    metavar="KEY=VALUE", help="more TrainConfig fields for Spool")
    ap.add_argument("--tcn-epochs", type=int, default=20)
    ap.add_argument("--tcn-lr", type=float, default=5e-4)
    ap.add_argument("--probe-epochs", type=int, default=10)
    ap.add_argument("--probe-lr", type=float, default=1e-2)
    ap.add_argument("--models", nargs="+", default=["spool", "linear_probe", "ms_tcn"],
                    choices=list(NAMES))
    ap.add_argument("--ribbons", type=int, default=6, help="held-out videos in ribbons.png")
    # One thread: on a shared, busy machine two threads wait on each other at every op (5x
    # slower here than one).
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smooth-frames", type=int, default=0,
                    help="also score every model after a majority vote over this many frames")
    ap.add_argument("--combine", nargs="+", default=[], metavar="TAG",
                    help="train nothing: one table and ribbons from earlier runs' results")
    ap.add_argument("--tag", default="main",
                    help="names this run's folder (runs/TAG) and outputs (results_TAG.md, ...)")
    args = ap.parse_args()
    configure_logging()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    caches = build_data(args)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results, predictions, targets = {}, {}, {}
    for tag in args.combine:  # earlier runs of this script on the same data
        done = json.loads((args.out / f"results_{tag}.json").read_text())["results"]
        saved = args.out / f"predictions_{tag}.npz"
        for key in done:
            results[key] = done[key]
            if saved.exists():
                arrays = np.load(saved)
                predictions[key] = {k.split("/", 1)[1]: arrays[k] for k in arrays.files
                                    if k.startswith(f"{key}/")}
            else:  # score the saved model again (what `spool eval --cache` does)
                model = load_pretrained(args.out / "runs" / tag / key / "model",
                                        with_backbone=False)
                scores, predictions[key], _ = score(model, FrameTokenDataset(caches[1]))
                assert abs(scores["f1@50"] - done[key]["f1@50"]) < 1e-6, (key, scores)
    for key in args.models if not args.combine else []:
        arch, model, train = model_settings(args)[key]
        results[key], predictions[key], targets = run_model(key, arch, model, train, caches,
                                                            args)
        with open(args.out / "experiments.jsonl", "a") as f:
            f.write(json.dumps({"tag": args.tag, "model": key, "settings": settings,
                                "result": results[key]}) + "\n")
    test = FrameTokenDataset(caches[1])
    targets = {v["name"]: test[i]["labels"].numpy() for i, v in enumerate(test.videos)}
    smoothed = {}
    if args.smooth_frames:
        for key in predictions:
            preds = {v: mode_filter(p, args.smooth_frames) for v, p in predictions[key].items()}
            smoothed[key] = {**results[key], **metrics_of(preds, targets)}
    text = table(results)
    if smoothed:
        text += (f"\n\nThe same predictions after a {args.smooth_frames}-frame majority vote "
                 f"(every model alike):\n\n" + table(smoothed))
    text += "\n\n" + "\n".join(bars(results))
    print("\n" + text)
    suffix = "" if args.tag == "main" else f"_{args.tag}"
    (args.out / f"results{suffix}.md").write_text(text + "\n")
    (args.out / f"results{suffix}.json").write_text(json.dumps(
        {"settings": settings, "results": results, "smoothed": smoothed}, indent=1))
    np.savez_compressed(args.out / f"predictions{suffix}.npz", **{
        f"{key}/{video}": p for key, by_video in predictions.items()
        for video, p in by_video.items()})
    shown = dict(list(targets.items())[:args.ribbons])
    plot_ribbons(args.out / f"ribbons{suffix}.png", shown,
                 {NAMES[k]: {v: p[v] for v in shown} for k, p in predictions.items()},
                 SEGMENT_CLASSES, fps=15, background=BACKGROUND,
                 title="held-out videos: truth, then each model")


if __name__ == "__main__":
    main()
