"""Training epoch time: from a token cache vs. through the frozen backbone (issue 4's bar: 10x).

Both runs train the same classifier on the same clips (no augmentation, so the cache holds
exactly what the backbone would produce); the cached run never decodes a video nor runs the
backbone. Data and backbone are the synthetic demo's (``spool demo``), or a
DINOv2-small/base-sized random backbone at 224 px (``--backbone small|base``) to show what a
realistic backbone costs.

    python bench/train_cache.py --out docs/benchmarks.md
    python bench/train_cache.py --backbone small --per-class 8 --out docs/benchmarks.md
    python bench/train_cache.py --backbone base --per-class 8 --out docs/benchmarks.md
    python bench/train_cache.py --backbone base --per-class 8 --token-pooling 4 --out ...

``--token-pooling k`` pools each frame's patch grid k x k before the temporal stack
(``SpoolConfig.token_pooling``): the cache holds the pooled tokens and the video run pools the
backbone's output the same way, so both train the same model on the same inputs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # this checkout's spool
from _report import machine, update_section  # noqa: E402

SECTION = "## Training: cached tokens vs. frozen backbone"
BACKBONES = {  # random DINOv2-sized backbones at 224 px (patch 14)
    "small": dict(model_type="dinov2", hidden_size=384, num_hidden_layers=12,
                  num_attention_heads=6, intermediate_size=1536, patch_size=14, image_size=224),
    "base": dict(model_type="dinov2", hidden_size=768, num_hidden_layers=12,
                 num_attention_heads=12, intermediate_size=3072, patch_size=14, image_size=224),
}


def measure(args: argparse.Namespace) -> dict:
    from spool.data.cache import build_cache
    from spool.data.dataset import VideoClipDataset, read_annotations
    from spool.data.synthetic import make_synthetic_dataset
    from spool.demo.synthetic import DemoSettings, demo_backbone
    from spool.train.config import TrainConfig
    from spool.train.trainer import Trainer
    from spool.video.samplers import clip_sampler

    s = DemoSettings()
    image_size = s.image_size if args.backbone == "demo" else 224
    root = Path(tempfile.mkdtemp(prefix="spool-bench-"))
    make_synthetic_dataset(root / "data", args.per_class, s.classes, num_frames=s.video_frames,
                           size=s.video_size, seed=0, val_fraction=0.0)
    torch.manual_seed(0)
    encoder = demo_backbone(BACKBONES.get(args.backbone, s.backbone), image_size,
                            s.position_scale if args.backbone == "demo" else None)
    if args.token_pooling > 1:
        encoder = with_token_pooling(encoder, args.token_pooling)
    # As a local Hugging Face directory, so the video run loads the very same weights.
    encoder.backbone.model.save_pretrained(root / "hf_backbone")
    samples, names = read_annotations(root / "data" / "train.txt")
    clips = VideoClipDataset(samples, names, clip_sampler(s.num_frames),
                             encoder.config.preprocessing())
    start = time.perf_counter()
    build_cache(encoder, clips, root / "cache", batch_size=16, num_workers=args.workers)
    cache_seconds = time.perf_counter() - start

    heads = s.num_attention_heads
    model = dict(num_hidden_layers=s.num_hidden_layers, num_attention_heads=heads,
                 num_lookback_heads=heads // 2, num_lookahead_heads=heads - heads // 2,
                 local_frame_range=s.local_frame_range)
    common = dict(augment=False, epochs=args.epochs, batch_size=s.batch_size, lr=s.lr,
                  num_workers=args.workers, device="cpu", tensorboard=False, quiet=True,
                  warmup_epochs=0.0)
    video = TrainConfig(out_dir=str(root / "run_video"),
                        train_data=str(root / "data" / "train.txt"),
                        model={**model, "backbone_name": str(root / "hf_backbone"),
                               "image_size": image_size, "crop_pct": 1.0,
                               "token_pooling": args.token_pooling},
                        num_frames=s.num_frames, **common)  # the cache's clips: made so
    cached = TrainConfig(out_dir=str(root / "run_cache"), train_cache=str(root / "cache"),
                         model=model, **common)
    seconds = {}
    for name, cfg in (("cache", cached), ("video", video)):
        shutil.rmtree(cfg.out_dir, ignore_errors=True)  # a run of an earlier benchmark
        trainer = Trainer(cfg)
        if name == "cache":
            flops = count_flops(encoder, trainer.model, s.num_frames, image_size)
        history = trainer.fit()
        # Later epochs: the first one also pays for warming up allocators and workers.
        seconds[name] = min(row["epoch_seconds"] for row in history[-max(1, args.epochs - 1):])
    return {"videos": len(samples), "cache_seconds": cache_seconds, **seconds, **flops,
            "tokens": tuple(encoder.config.__dict__[k] for k in ("num_spatial_tokens",
                                                                 "hidden_size")),
            "image_size": image_size, "frames": s.num_frames}


def with_token_pooling(encoder: torch.nn.Module, k: int) -> torch.nn.Module:
    """The same frame encoder (same weights) with ``token_pooling=k``."""
    from spool.models.frame_encoder import FrameEncoderModel

    pooled = FrameEncoderModel(encoder.config.replace(token_pooling=k)).eval()
    pooled.load_state_dict(encoder.state_dict())
    return pooled


def count_flops(encoder: torch.nn.Module, classifier: torch.nn.Module, num_frames: int,
                image_size: int) -> dict[str, float]:
    """FLOPs per video: the frozen backbone's forward vs. the classifier's training step
    (forward + backward) on its tokens. A cached epoch skips the first, so the speed-up
    cannot exceed ``1 + backbone / step`` however fast decoding is."""
    from torch.utils.flop_counter import FlopCounterMode

    video = torch.randint(0, 256, (1, num_frames, image_size, image_size, 3), dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        tokens = encoder.encode_frames(video)
    backbone = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        classifier.logits_from_tokens(tokens).sum().backward()
    classifier.zero_grad(set_to_none=True)
    return {"backbone_gflop": backbone / 1e9, "step_gflop": counter.get_total_flops() / 1e9}


def render(args: argparse.Namespace, r: dict, machine: str) -> str:
    label = ("demo backbone (random DINOv2, 0 blocks, 64 px, patch 16)" if args.backbone == "demo"
             else f"DINOv2-{args.backbone}-sized random backbone (12 blocks, "
                  f"D={BACKBONES[args.backbone]['hidden_size']}, 224 px, patch 14)")
    pooling = ""
    if args.token_pooling > 1:
        label += f", token pooling k={args.token_pooling}"
        pooling = f" --token-pooling {args.token_pooling}"
    speedup = r["video"] / r["cache"]
    return "\n".join([
        f"### {label}",
        "",
        f"`python bench/train_cache.py --backbone {args.backbone} --per-class {args.per_class} "
        f"--epochs {args.epochs} --workers {args.workers}{pooling}` on {machine}.",
        "",
        "| training data | epoch time | videos/s | speed-up |",
        "| --- | ---: | ---: | ---: |",
        f"| through the frozen backbone (decode + backbone + temporal stack) | "
        f"{r['video']:.1f}s | {r['videos'] / r['video']:.1f} | 1x |",
        f"| token cache (temporal stack only) | {r['cache']:.2f}s | "
        f"{r['videos'] / r['cache']:.1f} | **{speedup:.1f}x** |",
        "",
        f"{r['videos']} training videos, {r['frames']} frames each, tokens [L, D] = "
        f"{list(r['tokens'])}; building the cache once took {r['cache_seconds']:.1f}s "
        f"(= {r['cache_seconds'] / r['video']:.1f} epochs through the backbone). "
        f"Bar (>= 10x): {'met' if speedup >= 10 else 'NOT met'}.",
        "",
        f"FLOPs per video (FlopCounterMode): frozen backbone forward {r['backbone_gflop']:.2f} "
        f"GFLOP, temporal stack + head forward and backward {r['step_gflop']:.2f} GFLOP. The "
        f"cache removes only the first (and the decoding), so the speed-up in FLOPs is at most "
        f"1 + {r['backbone_gflop']:.2f} / {r['step_gflop']:.2f} = "
        f"{1 + r['backbone_gflop'] / r['step_gflop']:.1f}x.",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=("demo", "small", "base"), default="demo")
    parser.add_argument("--per-class", type=int, default=150, help="videos per class")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--token-pooling", type=int, default=1, metavar="K",
                        help="pool each frame's patch grid K x K for the temporal stack "
                             "(SpoolConfig.token_pooling; default 1: every token)")
    parser.add_argument("--out", help="markdown file to write this benchmark's section into")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = measure(args)
    text = render(args, result, machine())
    print(text)
    if args.out:
        update_subsection(args.out, text)


def update_subsection(path: str, text: str) -> None:
    """Keep the other sub-sections (other backbones, other token pooling) when rewriting this
    one; a sub-section is this one if its heading line is the same (not merely a prefix)."""
    current = Path(path).read_text() if Path(path).exists() else ""
    heading = text.split("\n", 1)[0]
    body = ""
    if SECTION in current:
        body = current.split(SECTION, 1)[1].split("\n## ", 1)[0]
    parts = [p for p in ("### " + b for b in body.split("### ")[1:])
             if p.split("\n", 1)[0] != heading]
    intro = ("Epoch time of `spool train` on the demo's videos: through the frozen backbone "
             "vs. from `spool cache`'s tokens (same model, same clips, CPU).\n\n"
             "The cache saves the decoding and the backbone's forward pass, not the temporal "
             "stack's forward and backward pass, so the speed-up is at most 1 + (backbone "
             "forward) / (stack forward + backward). Spool's temporal layers run on every "
             "token of every frame at the backbone's width, so one temporal layer's training "
             "step costs about 3.7 backbone blocks' forward: with a 12-block backbone and "
             "the demo's 2 temporal layers the bound is 2.6x in FLOPs (counted below), and "
             "the measured epochs come to 1.5-1.9x. The issue's 10x bar would need about 33 "
             "backbone blocks per temporal layer (one temporal layer on a 40-block "
             "DINOv2-giant, say); the cache pays off because it is built "
             "once (0.4 of an epoch through the backbone) and then every epoch, every "
             "hyper-parameter trial and every head trained on it skips the backbone.\n\n"
             "With token pooling (`--token-pooling k`, `SpoolConfig.token_pooling`) the "
             "temporal stack trains on 1 + (g/k)^2 tokens per frame instead of 1 + g^2 (a g x g "
             "patch grid), so its step costs roughly k^2 times less while the backbone's "
             "forward stays the same: the FLOP bound rises accordingly (counted in each "
             "sub-section).")
    update_section(path, SECTION[3:], "\n\n".join([intro, *(p.strip() for p in parts), text]))


if __name__ == "__main__":
    main()
