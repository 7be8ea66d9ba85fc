"""The synthetic demo (``spool demo``, the main job). Offline, on CPU, in a few minutes.

1. Writes a synthetic dataset whose classes are time-reversed twins (``spool.data.synthetic``):
   every video of one class has a twin in the other class with the same frames reversed.
2. Builds a tiny randomly initialised DINOv2 (defined here, nothing is downloaded) and caches
   its tokens for every video once (``spool cache``).
3. Trains, on the cache, Spool (lookback + lookahead heads), a lookback-only Spool and the
   frame-pooling baseline (same backbone, no temporal stack), and evaluates them on held-out
   videos. Frame pooling sees a video and its twin as the same set of frames, so it cannot
   beat chance within a pair.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spool.demo.processes import map_in_processes

# The random backbone: DINOv2's embeddings and final LayerNorm at toy size, no blocks (a
# random block mostly scrambles what the patches say; see demo_backbone for the positions).
DEMO_BACKBONE = dict(model_type="dinov2", hidden_size=64, num_hidden_layers=0,
                     num_attention_heads=4, intermediate_size=128, patch_size=16, image_size=64)


def demo_backbone(backbone: dict[str, Any], image_size: int,
                  position_scale: float | None = None, token_pooling: int = 1) -> Any:
    """A :class:`FrameEncoderModel` around a randomly initialised HF backbone (seed torch
    first); frames are square, so the preprocessing keeps all of each (``crop_pct=1``).
    ``token_pooling``: ``SpoolConfig.token_pooling`` (its patch grid pooled ``k x k``).

    ``position_scale``: multiply the position embeddings by this. A random init draws them
    with the std of the patch projection's *weights*, so they come out about
    ``sqrt(3 * patch**2)`` times smaller than the patch embeddings (28x at patch 16) and the
    tokens barely say where they are; a trained DINOv2's tokens do. Scaling them by that
    factor restores the balance; without it nothing that reads tokens as a set (Spool's
    temporal attention included: its positions are over time only) can tell left from right.
    """
    import torch

    from spool.models.frame_encoder import FrameEncoderModel

    encoder = FrameEncoderModel(backbone_config=backbone, image_size=image_size, crop_pct=1.0,
                                token_pooling=token_pooling)
    encoder.eval()
    if position_scale is not None:
        with torch.no_grad():
            encoder.backbone.model.embeddings.position_embeddings.mul_(position_scale)
    return encoder


def demo_initializer_range(hidden_size: int, reference: float = 0.02,
                           reference_size: int = 768) -> float:
    """The init std that puts a temporal stack of width ``hidden_size`` where Spool's default
    (``reference`` = 0.02, chosen at ``reference_size`` = 768) puts a ViT-B-wide one.

    A Linear's outputs scale with ``std * sqrt(width)`` and an attention logit (q . k) with its
    square, so at the demo's width (64) 0.02 starts the attention logits 12x flatter than at
    768 (std 0.02 instead of 0.24) and the MLP's pre-activations 3.4x smaller: attention is
    uniform and GELU linear, and a uniform attention pools a window of frames as a set, blind
    to where the square is. At init a linear probe on the pooled context tells ``grow`` from
    ``shrink`` (92%) but hardly ``left_to_right`` from ``right_to_left`` (60%); that needs the
    attention to turn position-selective, which grows from the product of two near-zero
    matrices (Wq, Wk), slowly and by a seed-dependent amount. So runs sat at chance for 2 to 4
    epochs and some missed the bar (issue 14; ``bench/demo_plateau.py``).
    """
    return reference * (reference_size / hidden_size) ** 0.5


SPOOL = "Spool (lookback + lookahead heads)"
POOLING = "Frame pooling (same backbone, no temporal stack)"


@dataclass
class DemoSettings:
    """Everything the demo's numbers depend on (the README table is for these defaults)."""

    per_class: int = 800
    val_fraction: float = 0.25
    classes: tuple[str, ...] = ("left_to_right", "right_to_left", "grow", "shrink")
    video_frames: int = 16
    video_size: int = 64
    num_frames: int = 8
    image_size: int = 64
    backbone: dict[str, Any] = field(default_factory=lambda: dict(DEMO_BACKBONE))
    position_scale: float = (3 * 16 * 16) ** 0.5  # see demo_backbone
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    initializer_range: float = demo_initializer_range(DEMO_BACKBONE["hidden_size"])
    local_frame_range: int = 4
    token_pooling: int = 1  # k: the 4x4 patch grid pooled k x k (1 + 16 / k**2 tokens)
    token_merging: int = 1  # k: the tokens merged k x k by Spool (learned; cache keeps all)
    views: int = 3
    crop_scale: tuple[float, float] = (0.6, 1.0)
    epochs: int = 16
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.05
    hidden_dropout: float = 0.1
    dropout: float = 0.0
    seed: int = 0


def min_per_class(val_fraction: float) -> int:
    """The fewest videos per class that leave at least one held-out and one training video
    of each class (``make_synthetic_dataset`` holds out ``round(n * val_fraction)``)."""
    return next(n for n in range(1, 1000) if 1 <= round(n * val_fraction) < n)


def _models(s: DemoSettings) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(run folder, display name, architecture, SpoolConfig fields) of the three models."""
    heads = s.num_attention_heads
    temporal = dict(num_hidden_layers=s.num_hidden_layers, num_attention_heads=heads,
                    local_frame_range=s.local_frame_range, hidden_dropout=s.hidden_dropout,
                    classifier_dropout=s.dropout, initializer_range=s.initializer_range,
                    token_merging=s.token_merging)
    return [
        ("spool", SPOOL, "spool", {**temporal, "num_lookback_heads": heads // 2,
                                   "num_lookahead_heads": heads - heads // 2}),
        ("spool_lookback", "Spool, lookback heads only", "spool",
         {**temporal, "num_lookback_heads": heads, "num_lookahead_heads": 0}),
        ("frame_pooling", POOLING, "frame_pooling", {"classifier_dropout": s.dropout}),
    ]


def _train_one(job: tuple[str, dict[str, Any], int]) -> tuple[str, dict[str, Any], list]:
    """Train one model of the demo (runs in a worker process when jobs > 1)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from spool.runtime import configure_logging
    from spool.train.config import TrainConfig
    from spool.train.trainer import Trainer

    configure_logging()
    name, config, threads = job
    torch.set_num_threads(threads)
    start = time.perf_counter()
    trainer = Trainer(TrainConfig(**config))
    history = trainer.fit()
    final = history[-1]
    params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return name, {"val_top1": final["val_top1"], "train_top1": final["train_top1"],
                  "val_loss": final["val_loss"], "trainable_params": params,
                  "train_seconds": time.perf_counter() - start,
                  "run_dir": config["out_dir"]}, history


def run_demo(out: Path, s: DemoSettings, jobs: int = 1, threads: int = 1,
             verbose: bool = True) -> dict[str, dict[str, Any]]:
    """Run the whole demo under ``out`` (``jobs`` models trained at once); returns
    ``{model name: results}`` and writes ``results.json`` and ``curves.png``."""
    import torch

    from spool.data.cache import build_cache
    from spool.data.dataset import VideoClipDataset, read_annotations
    from spool.data.synthetic import make_synthetic_dataset
    from spool.io_utils import atomic_write_text
    from spool.models.spool import Spool
    from spool.train.metrics import plot_curves
    from spool.video.samplers import clip_sampler
    from spool.video.transforms import RandomResizedCrop

    def say(text: str) -> None:
        if verbose:
            print(f"[{time.perf_counter() - t0:5.0f}s] {text}", flush=True)

    if s.per_class < min_per_class(s.val_fraction):  # before anything is written
        raise ValueError(f"per_class: at least {min_per_class(s.val_fraction)} videos per class "
                         f"leave a held-out set ({s.val_fraction:.0%} are held out), got "
                         f"{s.per_class}")
    torch.manual_seed(s.seed)
    encoder = demo_backbone(s.backbone, s.image_size, s.position_scale, s.token_pooling)
    for _, _, arch, fields in _models(s):  # refused here, not after the data and caches
        if arch == "spool":
            Spool(encoder.config.replace(**fields), with_backbone=False)
    t0 = time.perf_counter()
    for name in ("results.json", "curves.png"):  # an earlier run's, not to read as this one's
        (out / name).unlink(missing_ok=True)
    data = out / "data"
    ds = make_synthetic_dataset(data, s.per_class, s.classes, num_frames=s.video_frames,
                                size=s.video_size, seed=s.seed, val_fraction=s.val_fraction)
    say(f"wrote {len(ds.train)} training and {len(ds.val)} held-out videos "
        f"({', '.join(s.classes)}) to {data}")

    for split, views in (("train", s.views), ("val", 1)):
        samples, names = read_annotations(data / f"{split}.txt")
        clips = VideoClipDataset(samples, names, clip_sampler(s.num_frames),
                                 encoder.config.preprocessing(),
                                 RandomResizedCrop(tuple(s.crop_scale)), seed=s.seed)
        build_cache(encoder, clips, out / "cache" / split, views=views, batch_size=16,
                    num_workers=1)
    L, D = encoder.config.num_spatial_tokens, encoder.config.hidden_size
    say(f"cached backbone tokens [{s.num_frames} frames, {L} tokens, D={D}] of every video "
        f"({s.views} views of each training video) in {out / 'cache'}")

    todo = []
    for folder, name, arch, model in _models(s):
        shutil.rmtree(out / "runs" / folder, ignore_errors=True)  # an earlier demo's run
        config = dict(out_dir=str(out / "runs" / folder), train_cache=str(out / "cache" / "train"),
                      val_cache=str(out / "cache" / "val"), architecture=arch, model=model,
                      # A small --per-class: one batch of the whole training set.
                      epochs=s.epochs, batch_size=min(s.batch_size, len(ds.train)), lr=s.lr,
                      weight_decay=s.weight_decay, eval_every=2,
                      seed=s.seed, num_workers=0, device="cpu", tensorboard=False,
                      quiet=not verbose, log_every=10**9, name=name)
        todo.append((name, config, threads))
    say(f"training {len(todo)} models on the cache, {jobs} at a time")
    done = map_in_processes(_train_one, todo, jobs)
    results = {name: r for name, r, _ in done}
    histories = {name: h for name, _, h in done}
    plot_curves(histories, out / "curves.png")
    summary = {"settings": asdict(s), "results": results,
               "total_seconds": time.perf_counter() - t0}
    atomic_write_text(out / "results.json", json.dumps(summary, indent=1))
    say(f"done; curves in {out / 'curves.png'}")
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| model | held-out top-1 | train top-1 | trainable params | train time |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        lines.append(f"| {name} | {100 * r['val_top1']:.1f}% | {100 * r['train_top1']:.1f}% | "
                     f"{r['trainable_params']:,} | {r['train_seconds']:.0f}s |")
    return "\n".join(lines)




def bar_met(results: dict[str, dict[str, Any]]) -> bool:
    """The demo's bar: Spool >= 90% held-out top-1 and frame pooling <= 60%."""
    return results[SPOOL]["val_top1"] >= 0.9 and results[POOLING]["val_top1"] <= 0.6
