"""Does the context frames' initial scale (SPEC: std 0.02) destabilise training on real
DINOv2 tokens (std about 1.8)? `spool train`'s defaults on a small real-token cache, with the
context frames at std 0.02 and at std 1.0 (the tokens' order of scale).

    python research/context_frame_scale.py WORKDIR          # clips, caches, 4 runs, a table

Clips: 2-s pieces of the real footage (`spool demo --real` fetches it), labelled by their
source video (7 classes); the first 70% of each video trains, the rest is held out. Tokens:
the converted DINOv2-S at 224 px, patches pooled 4 x 4 (17 tokens), 8 frames per clip.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import spool.layers.context as context
from spool.train.config import TrainConfig
from spool.train.trainer import train
from spool.video import write_video
from spool.video.io import VideoReader

VIDEOS = ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "vtest.avi",
          "Megamind.avi", "box.mp4", "cup.mp4"]
CACHE = Path.home() / ".cache" / "spool"


def make_clips(work: Path) -> None:
    (work / "clips").mkdir(parents=True, exist_ok=True)
    split: dict[str, list[str]] = {"train": [], "val": []}
    for name in VIDEOS:
        with VideoReader(CACHE / "footage" / name) as reader:
            info = reader.info()
            per = round(2 * info.fps)
            count = info.num_frames // per
            for c in range(count):
                frames, _ = reader.get(list(range(c * per, (c + 1) * per)))
                step = max(1, frames.shape[1] // 240)
                h, w = frames.shape[1] // step // 2 * 2, frames.shape[2] // step // 2 * 2
                path = write_video(work / "clips" / f"{Path(name).stem}_{c:03d}.mp4",
                                   frames[:, ::step, ::step][:, :h, :w], fps=info.fps)
                split["train" if c < 0.7 * count else "val"].append(
                    f"clips/{path.name} {Path(name).stem}")
    for key, lines in split.items():
        (work / f"{key}.txt").write_text("\n".join(lines) + "\n")


def run(work: Path, name: str, std: float, seed: int) -> None:
    original = context.ContextFrames.__init__

    def scaled(self, num_tokens: int, hidden_size: int, _std: float = 0.02) -> None:
        original(self, num_tokens, hidden_size, std)
    context.ContextFrames.__init__ = scaled
    try:
        train(TrainConfig(train_cache=str(work / "cache_train"),
                          val_cache=str(work / "cache_val"), out_dir=str(work / "runs" / name),
                          tensorboard=False, quiet=True, seed=seed))
    finally:
        context.ContextFrames.__init__ = original


def main() -> None:
    work = Path(sys.argv[1])
    if not (work / "train.txt").exists():
        make_clips(work)
    for split in ("train", "val"):
        if not (work / f"cache_{split}" / "cache.json").exists():
            subprocess.run(["spool", "cache", "--data", str(work / f"{split}.txt"), "--out",
                            str(work / f"cache_{split}"), "--model",
                            f"backbone_name={CACHE / 'backbones' / 'dinov2-small'}",
                            "--model", "token_pooling=4", "--num-frames", "8", "--quiet"],
                           check=True)
    print("| context std | seed | grad norm, steps 1-3 | loss, steps 1-6 | train loss, epoch 1 "
          "| held-out top-1, epochs 1-10 |\n| --: | --: | --- | --- | --: | --- |")
    for std in (0.02, 1.0):
        for seed in (0, 1):
            name = f"std{std}_seed{seed}"
            if not (work / "runs" / name / "results.json").exists():
                run(work, name, std, seed)
            steps = list(csv.DictReader(open(work / "runs" / name / "steps.csv")))
            epochs = list(csv.DictReader(open(work / "runs" / name / "metrics.csv")))
            print(f"| {std} | {seed} | "
                  + " ".join(f"{float(r['grad_norm']):.1f}" for r in steps[:3]) + " | "
                  + " ".join(f"{float(r['loss']):.2f}" for r in steps[:6])
                  + f" | {float(epochs[0]['train_loss']):.2f} | "
                  + " ".join(f"{100 * float(r['val_top1']):.0f}" for r in epochs) + " |")


if __name__ == "__main__":
    main()
