"""Two tasks that only the order of frames can solve, on cached tokens, and their training.

- ``order``: is the clip in its natural order (label 0) or are its frames shuffled (1)?
- ``arrow``: is the clip shown forwards (0) or backwards (1)?

Every clip appears once in each class, so a model blind to order (frame pooling) sees the same
input twice with two labels and scores exactly 50%. Clips are windows of consecutive cached
frames; each video is split by time (its first ``train_fraction`` gives the training clips,
the rest the held-out ones), so no held-out frame is seen in training.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

TASKS = {"order": ("natural order", "shuffled"), "arrow": ("forwards", "backwards")}


def split_clips(lengths: list[int], clip_len: int, train_fraction: float,
                step: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frame indices ``[C, clip_len]`` into the concatenated videos of the training and the
    held-out clips, and the video of every held-out clip. A clip lies wholly in its video's
    first ``train_fraction`` (by frame count: frames are evenly spaced in time) or wholly in
    the rest."""
    train, test, test_video, offset = [], [], [], 0
    for v, n in enumerate(lengths):
        cut = int(round(train_fraction * n))
        for lo, hi, into in ((0, cut, train), (cut, n, test)):
            starts = np.arange(lo, hi - clip_len + 1, step)
            into.append(offset + starts[:, None] + np.arange(clip_len)[None])
            if into is test:
                test_video.append(np.full(len(starts), v))
        offset += n

    def cat(parts: list[np.ndarray], shape: tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(parts).astype(np.int64).reshape(shape))

    return (cat(train, (-1, clip_len)), cat(test, (-1, clip_len)), cat(test_video, (-1,)))


def _shuffle(t: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``range(t)`` that is neither the identity nor the reversal (a reversed
    clip is still in order)."""
    if t < 3:  # two frames have no other order: the loop below would never end
        raise ValueError(f"clip_len: the order task needs clips of at least 3 frames, got {t}")
    while True:
        p = rng.permutation(t)
        if not ((p == np.arange(t)).all() or (p == np.arange(t)[::-1]).all()):
            return p


def altered(clips: torch.Tensor, task: str, rng: np.random.Generator) -> torch.Tensor:
    """The second class of every clip: its frames shuffled (``order``) or reversed."""
    if task == "arrow":
        return clips.flip(1)
    perms = torch.as_tensor(np.stack([_shuffle(clips.shape[1], rng) for _ in clips]))
    return clips.gather(1, perms)


def normalise_clips(x: torch.Tensor) -> torch.Tensor:
    """Subtract each clip's mean token over time and scale the clip to unit RMS: what is left
    is how the frames differ, on one scale for slow and fast footage."""
    x = x - x.mean(dim=1, keepdim=True)
    return x / x.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-6)


def model_input(model, x: torch.Tensor) -> torch.Tensor:
    """Spool's input is the normalised clip; frame pooling gets the tokens as they are (the
    clip's mean over time, all it reads, would be zero after normalising)."""
    from spool.models.classification import FramePoolingForVideoClassification

    return x if isinstance(model, FramePoolingForVideoClassification) else normalise_clips(x)


def make_batch(frames: torch.Tensor, clips: torch.Tensor, task: str, rng: np.random.Generator,
               flip_natural: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``[2C, T, L, D]`` of every clip in both classes and the labels ``[2C]``.
    ``flip_natural`` (``order``, training): reverse half of the natural clips, which are still
    in order, so the model cannot answer ``order`` by the arrow of time."""
    first = clips
    if flip_natural and task == "order":
        flip = torch.from_numpy(rng.random(len(clips)) < 0.5)
        first = torch.where(flip[:, None], clips.flip(1), clips)
    labels = torch.cat([torch.zeros(len(clips)), torch.ones(len(clips))]).long()
    return frames[torch.cat([first, altered(clips, task, rng)])].float(), labels


def random_rotation(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``x`` times a random orthogonal ``D x D`` matrix. Training only: a new one every step,
    so no feature direction means anything and only relations between frames (distances,
    similarities) carry the label. On footage this scarce it is what stops the model from
    memorising the training videos (the test accuracy rose from about 0.8 to 0.9)."""
    d = x.shape[-1]
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen))
    return x @ (q * torch.sign(torch.diagonal(r))[None, :])


def build_model(kind: str, settings: dict[str, Any], num_tokens: int, hidden: int):
    """``spool`` (lookback + lookahead heads), ``lookback`` (lookback heads only) or
    ``frame_pooling``, without a backbone (trained on cached tokens)."""
    from spool.config import SpoolConfig
    from spool.models.classification import (
        FramePoolingForVideoClassification,
        SpoolForVideoClassification,
    )

    heads = settings["num_attention_heads"]
    back = heads if kind == "lookback" else heads // 2
    config = SpoolConfig(
        num_hidden_layers=settings["num_hidden_layers"], num_attention_heads=heads,
        num_lookback_heads=back, num_lookahead_heads=heads - back,
        local_frame_range=settings["local_frame_range"], mlp_ratio=settings["mlp_ratio"],
        hidden_dropout=settings["hidden_dropout"], hidden_size=hidden,
        num_spatial_tokens=num_tokens, class_names=list(TASKS[settings["task"]]))
    if kind == "frame_pooling":
        return FramePoolingForVideoClassification(config, with_backbone=False)
    return SpoolForVideoClassification(config, with_backbone=False)


def _probabilities(model, x: torch.Tensor, rotations: int, seed: int) -> torch.Tensor:
    """Class probabilities ``[B, 2]`` of the raw tokens ``x``: with ``rotations`` > 0 (a model
    trained under random rotations), their mean over that many random rotations, the same for
    every batch (generator seeded with ``seed``): the model is trained to give every rotation
    the same answer and does so only roughly, so one rotation, the identity included, is a
    noisy sample of its answer."""
    x = model_input(model, x)
    if not rotations:
        return model(tokens=x).logits.softmax(-1)
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([model(tokens=random_rotation(x, gen)).logits.softmax(-1)
                        for _ in range(rotations)]).mean(0)


@torch.no_grad()
def evaluate(model, frames: torch.Tensor, clips: torch.Tensor, task: str, seed: int,
             batch: int = 256, rotations: int = 0) -> tuple[float, float, torch.Tensor]:
    """Accuracy and loss over every clip in both classes (shuffles fixed by ``seed``), and
    whether each sample was right (``[2C]``: the clips as they are, then altered);
    ``rotations``: see ``_probabilities``."""
    model.eval()
    rng = np.random.default_rng(seed)
    right, loss = [], 0.0
    for s in range(0, len(clips), batch):
        x, y = make_batch(frames, clips[s:s + batch], task, rng)
        prob = _probabilities(model, x, rotations, seed)
        right.append((prob.argmax(-1) == y).view(2, -1))
        loss += float(F.nll_loss(prob.clamp_min(1e-12).log(), y)) * len(y)
    correct = torch.cat(right, dim=1).flatten() if right else torch.zeros(0, dtype=torch.bool)
    n = max(1, len(correct))
    return float(correct.float().sum()) / n, loss / n, correct


@torch.no_grad()
def altered_probability(model, x: torch.Tensor, rotations: int = 0,
                        seed: int = 0) -> torch.Tensor:
    """The model's probability that each clip in ``x [B, T, L, D]`` (raw tokens) is altered
    (shuffled / backwards); ``rotations``: see ``_probabilities``."""
    model.eval()
    return _probabilities(model, x.float(), rotations, seed)[:, 1]


def train_model(job: dict[str, Any]) -> dict[str, Any]:
    """Train one model on one task (a worker process's entry point when jobs run in
    parallel). ``job``: ``kind``, ``settings`` (task and hyper-parameters), ``frames``
    ``[N, L, D]``, ``train``/``test`` clips, ``figure`` clips ``[K, T]`` (frame indices in the
    order shown), ``threads``, ``out_dir``. Returns the history, accuracies, and each figure
    clip's probability of being altered."""
    torch.set_num_threads(job["threads"])
    if job.get("verbose"):  # a worker process's spool logger says its epochs, as the main's
        from spool.runtime import configure_logging

        configure_logging()
    s, kind = job["settings"], job["kind"]
    task, seed = s["task"], s["seed"]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    frames, train, test = job["frames"], job["train"], job["test"]
    model = build_model(kind, s, frames.shape[1], frames.shape[2])
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    start = time.perf_counter()
    history: list[dict[str, Any]] = []
    if kind != "frame_pooling" or s["train_frame_pooling"]:
        history = _fit(model, kind, frames, train, test, s, rng, gen)
    seconds = time.perf_counter() - start
    # Trained under random rotations: the final answers average over test_rotations of them
    # (the per-epoch validation in the history uses the tokens as they are, to stay cheap).
    rot = s["test_rotations"] if s["rotate"] and kind != "frame_pooling" else 0
    test_acc, test_loss, correct = evaluate(model, frames, test, task, seed + 1, rotations=rot)
    train_acc, _, _ = evaluate(model, frames, train, task, seed + 2, rotations=rot)
    if job.get("out_dir"):
        model.save_pretrained(job["out_dir"])
    figure = job["figure"]
    prob = altered_probability(model, frames[figure], rot, seed + 1) if len(figure) \
        else torch.zeros(0)
    return {"task": task, "kind": kind, "test_top1": test_acc, "test_loss": test_loss,
            "test_rotations": rot, "train_top1": train_acc, "trainable_params": params,
            "train_seconds": seconds, "history": history, "test_correct": correct.tolist(),
            "figure_prob_altered": prob.tolist()}


def make_optimizer(model, s: dict[str, Any], num_clips: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (decay on matrices only) and its warm-up + cosine schedule over ``s["epochs"]``
    epochs of ``num_clips`` training clips."""
    from spool.train.builders import parameter_groups, warmup_cosine

    opt = torch.optim.AdamW(parameter_groups(model, s["weight_decay"]), lr=s["lr"])
    per_epoch = math.ceil(num_clips / s["batch_size"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(
        int(s["warmup_epochs"] * per_epoch), s["epochs"] * per_epoch, 0.01))
    return opt, sched


def train_step(model, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
               sched: torch.optim.lr_scheduler.LambdaLR,
               gen: torch.Generator | None) -> tuple[float, int]:
    """One step on raw tokens ``x`` (randomly rotated with ``gen``, none if ``None``):
    (summed loss, correct answers) of the batch."""
    x = model_input(model, x)
    if gen is not None:
        x = random_rotation(x, gen)
    out = model(tokens=x, labels=y)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return float(out.loss.detach()) * len(y), int((out.logits.argmax(-1) == y).sum())


def _fit(model, kind: str, frames: torch.Tensor, train: torch.Tensor, test: torch.Tensor,
         s: dict[str, Any], rng: np.random.Generator, gen: torch.Generator) -> list[dict]:
    task, bs = s["task"], s["batch_size"]
    opt, sched = make_optimizer(model, s, len(train))
    history = []
    for epoch in range(1, s["epochs"] + 1):
        model.train()
        order = torch.randperm(len(train))
        loss_sum, right, seen = 0.0, 0, 0
        for b in range(0, len(order), bs):
            x, y = make_batch(frames, train[order[b:b + bs]], task, rng, s["flip_natural"])
            loss, correct = train_step(model, x, y, opt, sched, gen if s["rotate"] else None)
            loss_sum, right, seen = loss_sum + loss, right + correct, seen + len(y)
        row = {"epoch": epoch, "train_loss": loss_sum / seen, "train_top1": right / seen}
        if epoch % s["eval_every"] == 0 or epoch == s["epochs"]:
            row["val_top1"], row["val_loss"], _ = evaluate(model, frames, test, task,
                                                           s["seed"] + 1)
        history.append(row)
        held_out = f", held-out {row['val_top1']:.1%}" if "val_top1" in row else ""
        logger.info(f"{task}, {kind}: epoch {epoch}/{s['epochs']}: train loss "
                    f"{row['train_loss']:.3f}, top-1 {row['train_top1']:.1%}{held_out}")
    return history
