"""Research (issue 13): the arrow of time on patch tokens, with horizontal-flip augmentation done
on the PIXELS.

Hypothesis: what generalises from the first 70% of a video to the rest is "things move the
way they face", which needs patch tokens; the shortcut the models take instead (the net drift
of the training part) is balanced by flipping the frames left-right before the backbone: a
right-facing walker walking right becomes a left-facing walker walking left, still forwards,
while any net left/right drift cancels. (Flipping the token grid is not the same: DINOv2's
features encode which way a thing faces.)

1. ``tokens``: DINOv2-S tokens (all 257, fp16) of every demo frame at 8 fps, squashed to 224,
   as they are (``plain/``) or flipped left-right (``flip/``), ``NAME.safetensors`` each.
2. ``train``: the demo's arrow-of-time training (``RealDemoSettings(...).for_task("arrow")``,
   ``spool.demo.order_tasks``: same split, clips, normalisation, model, optimiser), on the
   class token plus the patch grid pooled ``--pool`` x ``--pool``, with ``--flip``: each
   training clip is drawn from the plain or the flipped tokens at random every time it is
   drawn. Held-out (the last 30% of every video, unchanged) is scored on the plain clips, on
   the flipped ones, and with the two probabilities averaged. One JSON line per run.

    OMP_NUM_THREADS=1 nice -n 19 python research/arrow_flip.py tokens --out /tmp/arrow --flip 0
    OMP_NUM_THREADS=1 nice -n 19 python research/arrow_flip.py tokens --out /tmp/arrow --flip 1
    OMP_NUM_THREADS=1 nice -n 19 python research/arrow_flip.py train --cache /tmp/arrow \\
        --pool 4 --flip --seed 0 --log /tmp/arrow/runs.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spool.demo.footage_tokens import reduce_tokens  # noqa: E402
from spool.demo.order_tasks import (  # noqa: E402
    _probabilities,
    build_model,
    make_batch,
    make_optimizer,
    split_clips,
    train_step,
)
from spool.demo.real_footage import RealDemoSettings  # noqa: E402

NAMES = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "vtest.avi", "Megamind.avi",
         "box.mp4", "cup.mp4")  # the demo's order


def tokens(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    from spool.demo.footage_tokens import demo_backbone_dir, demo_videos
    from spool.models.frame_encoder import FrameEncoderModel
    from spool.video import VideoReader
    from spool.video.samplers import FpsSampler

    torch.set_num_threads(1)
    encoder = FrameEncoderModel(backbone_name=str(demo_backbone_dir(False)), image_size=224,
                                resize_mode="squash").eval()
    out = args.out / ("flip" if args.flip else "plain")
    out.mkdir(parents=True, exist_ok=True)
    videos = dict(demo_videos(False))
    for name in NAMES:
        file = out / f"{name}.safetensors"
        if file.is_file():
            continue
        start = time.perf_counter()
        with VideoReader(videos[name]) as reader:
            info = reader.info()
            indices = FpsSampler(args.fps)(len(reader), fps=info.fps)[0]
            chunks, times = [], []
            for s in range(0, len(indices), 16):
                frames, t = reader.get(indices[s:s + 16])
                if args.flip:
                    frames = np.ascontiguousarray(frames[:, :, ::-1])
                with torch.inference_mode():
                    chunks.append(encoder.encode_frames(torch.from_numpy(frames)[None])[0]
                                  .to(torch.float16))
                times.append(t)
        tok = torch.cat(chunks)
        tmp = file.with_name(f".{file.name}.part")
        save_file({"tokens": tok.contiguous(),
                   "times": torch.from_numpy(np.concatenate(times).astype(np.float64))},
                  str(tmp), metadata={"fps": str(args.fps), "flip": str(args.flip),
                                      "resize_mode": "squash"})
        tmp.rename(file)
        print(f"{name}: {tuple(tok.shape)} in {time.perf_counter() - start:.0f}s", flush=True)


def load(cache: Path, flip: bool, pool: int) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    d = cache / ("flip" if flip else "plain")
    return [reduce_tokens(load_file(str(d / f"{n}.safetensors"))["tokens"].float(), pool).half()
            for n in NAMES]


@torch.no_grad()
def probabilities(model, frames: torch.Tensor, clips: torch.Tensor, task: str,
                  batch: int = 128, rotations: int = 0) -> torch.Tensor:
    """P(backwards) ``[2C]``: every clip forwards, then every clip backwards; ``rotations``
    (a model trained under random rotations): the mean over that many (the demo's
    ``_probabilities``, same rotations for every batch)."""
    model.eval()
    rng = np.random.default_rng(0)
    out = []
    for s in range(0, len(clips), batch):
        x, _ = make_batch(frames, clips[s:s + batch], task, rng)
        out.append(_probabilities(model, x, rotations, 1)[:, 1].view(2, -1))
    return torch.cat(out, dim=1).flatten()


def scores(p: torch.Tensor, n: int, video: torch.Tensor | None = None) -> dict:
    y = torch.cat([torch.zeros(n), torch.ones(n)])
    right = ((p >= 0.5).float() == y).view(2, -1)
    row = {"acc": round(float(right.float().mean()), 4)}
    if video is not None:
        row["per_video"] = {NAMES[v]: round(float(right[:, video == v].float().mean()), 3)
                            for v in sorted(set(video.tolist()))}
    return row


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    plain = load(args.cache, False, args.pool)
    lengths = [len(v) for v in plain]
    frames_plain = torch.cat(plain)
    n = len(frames_plain)
    frames = torch.cat([frames_plain, torch.cat(load(args.cache, True, args.pool))])
    assert len(frames) == 2 * n
    s = {**RealDemoSettings(seed=args.seed).for_task("arrow"), **json.loads(args.set)}
    task, seed, bs = s["task"], s["seed"], s["batch_size"]
    train_clips, test, test_video = split_clips(lengths, s["clip_len"], s["train_fraction"])
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_model(args.kind, s, frames.shape[1], frames.shape[2])
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    wall, cpu = time.perf_counter(), time.process_time()
    history = []
    if args.kind != "frame_pooling" or s["train_frame_pooling"]:
        opt, sched = make_optimizer(model, s, len(train_clips))
        for epoch in range(1, s["epochs"] + 1):
            model.train()
            order = torch.randperm(len(train_clips))
            loss_sum, right, seen = 0.0, 0, 0
            for b in range(0, len(order), bs):
                clips = train_clips[order[b:b + bs]]
                if args.flip:  # the flipped frames of a clip are n further on
                    clips = clips + n * torch.from_numpy(rng.random(len(clips)) < 0.5)[:, None]
                x, y = make_batch(frames, clips, task, rng)
                loss, correct = train_step(model, x, y, opt, sched,
                                           gen if s["rotate"] else None)
                loss_sum, right, seen = loss_sum + loss, right + correct, seen + len(y)
            row = {"epoch": epoch, "train_loss": round(loss_sum / seen, 4),
                   "train_top1": round(right / seen, 4)}
            if epoch % s["eval_every"] == 0 or epoch == s["epochs"]:
                p_plain = probabilities(model, frames, test, task)
                p_flip = probabilities(model, frames, test + n, task)
                row["val_plain"] = scores(p_plain, len(test))["acc"]
                row["val_averaged"] = scores((p_plain + p_flip) / 2, len(test))["acc"]
            history.append(row)
            print(json.dumps(row), flush=True)
    # Trained under random rotations: held-out answers averaged over --test-rotations of them
    # (the demo uses 16; training accuracy and the per-epoch curve use the tokens as they are).
    rot = args.test_rotations if s["rotate"] and args.kind != "frame_pooling" else 0
    p_test = {"plain": probabilities(model, frames, test, task, rotations=rot),
              "flipped": probabilities(model, frames, test + n, task, rotations=rot)}
    p_test["averaged"] = (p_test["plain"] + p_test["flipped"]) / 2
    p_train = {"plain": probabilities(model, frames, train_clips, task),
               "flipped": probabilities(model, frames, train_clips + n, task)}
    p_train["averaged"] = (p_train["plain"] + p_train["flipped"]) / 2
    row = {"settings": {"cmd": "arrow_flip", "cache": str(args.cache), "task": task,
                        "model": args.kind, "pool": args.pool, "flip": args.flip,
                        "seed": seed, "changed": json.loads(args.set),
                        "epochs": s["epochs"], "lr": s["lr"], "rotate": s["rotate"],
                        "test_rotations": rot},
           "tokens_per_frame": frames.shape[1], "frames_per_video": lengths,
           "train_clips": len(train_clips), "test_clips": len(test), "params": params,
           "train_acc": {k: scores(v, len(train_clips))["acc"] for k, v in p_train.items()},
           "test_acc": {k: scores(v, len(test))["acc"] for k, v in p_test.items()},
           "test_acc_per_video": {k: scores(v, len(test), test_video)["per_video"]
                                  for k, v in p_test.items()},
           "curve": history, "wall_seconds": round(time.perf_counter() - wall, 1),
           "cpu_seconds": round(time.process_time() - cpu, 1)}
    with open(args.log, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)


def probe(args: argparse.Namespace) -> None:
    """A logistic regression on each clip's mean frame-to-frame change (``arrow_cues.py``'s
    odd feature: a reversal negates it), trained on the plain clips or on the plain and the
    flipped ones; held-out scored plain, flipped and with the two logits averaged."""
    from research.arrow_cues import _logistic

    torch.set_num_threads(1)
    for pool in args.pools:
        plain = load(args.cache, False, pool)
        lengths = [len(v) for v in plain]
        frames = torch.cat([torch.cat(plain), torch.cat(load(args.cache, True, pool))])
        frames = frames.float().flatten(1)
        frames = frames / frames.norm(dim=1, keepdim=True)
        n = len(frames) // 2
        train_clips, test, test_video = split_clips(lengths, 8, 0.7)

        def feats(clips: torch.Tensor, frames: torch.Tensor = frames) -> torch.Tensor:
            x = frames[clips]
            return (x[:, 1:] - x[:, :-1]).mean(1)

        ftr, ftr_f, fte, fte_f = (feats(train_clips), feats(train_clips + n), feats(test),
                                  feats(test + n))
        scale = ftr.std()
        for aug in (False, True):
            x = torch.cat([ftr, -ftr] + ([ftr_f, -ftr_f] if aug else [])) / scale
            y = torch.tensor(([0.0] * len(ftr) + [1.0] * len(ftr)) * (2 if aug else 1))
            for l2 in args.l2:
                w = _logistic(x, y, l2)
                logit = {"plain": torch.cat([fte, -fte]) / scale @ w,
                         "flipped": torch.cat([fte_f, -fte_f]) / scale @ w}
                logit["averaged"] = (logit["plain"] + logit["flipped"]) / 2
                ltr = torch.cat([ftr, -ftr]) / scale @ w
                print(json.dumps({
                    "pool": pool, "flip_aug": aug, "l2": l2,
                    "train_plain": scores(torch.sigmoid(ltr), len(ftr))["acc"],
                    **{f"heldout_{k}": scores(torch.sigmoid(v), len(fte))["acc"]
                       for k, v in logit.items()},
                    "heldout_averaged_per_video": scores(torch.sigmoid(logit["averaged"]),
                                                         len(fte), test_video)["per_video"]}),
                    flush=True)


def drift(args: argparse.Namespace) -> None:
    """Per video, how much flipping the pixels changes the drift a model can fit, in the
    model's own view (cell (i, j) of a flipped frame shows cell (i, g-1-j) of the plain one,
    mirrored): the mean change ``x[t+7] - x[t]`` of the training clips (first 70%) of the
    plain and of the flipped tokens (class token; class + 4x4 grid), their cosine (1: the
    drift is left-right symmetric, flipping leaves it; -1: it is all left/right motion, flip
    augmentation cancels it), and the share of held-out clips that change like the mean
    training clip of the plain tokens and of the plain and flipped ones together (what flip
    augmentation trains on)."""

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return round(float(F.cosine_similarity(a, b, dim=0)), 2)

    for pool in (0, 4):
        plain, flip = load(args.cache, False, pool), load(args.cache, True, pool)
        for name, a, b in zip(NAMES, plain, flip, strict=True):
            a, b = a.float().flatten(1), b.float().flatten(1)
            cut = int(round(0.7 * len(a)))
            d_a = torch.stack([a[s + 7] - a[s] for s in range(0, cut - 7)])
            d_b = torch.stack([b[s + 7] - b[s] for s in range(0, cut - 7)])
            t_a = torch.stack([a[s + 7] - a[s] for s in range(cut, len(a) - 7)])
            t_b = torch.stack([b[s + 7] - b[s] for s in range(cut, len(a) - 7)])
            mix = torch.cat([d_a, d_b]).mean(0)
            print(json.dumps({
                "tokens": "class" if not pool else f"class + {pool}x{pool}", "video": name,
                "cos_train_drift_plain_vs_flipped": cos(d_a.mean(0), d_b.mean(0)),
                "heldout_like_train_plain": round(float((t_a @ d_a.mean(0) > 0)
                                                        .float().mean()), 2),
                "heldout_like_train_mix": round(float(((t_a @ mix > 0).float().mean()
                                                       + (t_b @ mix > 0).float().mean()) / 2), 2),
            }), flush=True)


def table(args: argparse.Namespace) -> None:
    """The README table from a ``train`` log: one row per run."""
    short = {"bigbuckbunny.mp4": "bbb", "bikes.mp4": "bikes", "carphone_pristine.mp4": "car",
             "vtest.avi": "vtest", "Megamind.avi": "mega", "box.mp4": "box", "cup.mp4": "cup"}
    print("| model, setting, seed | epochs | train (plain / averaged) | held-out plain | "
          "held-out flipped | held-out averaged | averaged, per video | CPU min |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for line in open(args.log):
        r = json.loads(line)
        s, tr, te = r["settings"], r["train_acc"], r["test_acc"]
        name = (f"{s['model']}, {'flip' if s['flip'] else 'no flip'}"
                f"{' + rotation' if s['rotate'] else ''}, {s['seed']}")
        per = ", ".join(f"{short[k]} {100 * v:.0f}"
                        for k, v in r["test_acc_per_video"]["averaged"].items())
        print(f"| {name} | {s['epochs']} | {100 * tr['plain']:.1f}% / {100 * tr['averaged']:.1f}%"
              f" | {100 * te['plain']:.1f}% | {100 * te['flipped']:.1f}% | "
              f"**{100 * te['averaged']:.1f}%** | {per} | {r['cpu_seconds'] / 60:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokens")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--flip", type=int, choices=[0, 1], default=0)
    t.add_argument("--fps", type=float, default=8.0)
    r = sub.add_parser("train")
    r.add_argument("--cache", type=Path, required=True)
    r.add_argument("--pool", type=int, default=4, help="0: class token; k: k x k grid")
    r.add_argument("--flip", action="store_true", help="flip augmentation in training")
    r.add_argument("--kind", choices=["spool", "lookback", "frame_pooling"], default="spool")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--set", default="{}", help="JSON: settings to change")
    r.add_argument("--log", type=Path, default=Path("arrow_runs.jsonl"))
    r.add_argument("--test-rotations", type=int, default=4,
                   help="with rotate: held-out answers averaged over this many rotations")
    p = sub.add_parser("probe")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--pools", type=int, nargs="+", default=[0, 4, 2])
    p.add_argument("--l2", type=float, nargs="+", default=[1e-3, 1e-1, 10.0])
    d = sub.add_parser("drift")
    d.add_argument("--cache", type=Path, required=True)
    tb = sub.add_parser("table")
    tb.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()
    {"tokens": tokens, "train": train, "probe": probe, "drift": drift,
     "table": table}[args.cmd](args)


if __name__ == "__main__":
    main()
