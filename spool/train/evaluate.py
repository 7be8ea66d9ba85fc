"""Evaluation loop: decoded clips or cached tokens, several clips per video, any number of ranks."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from spool.data.dataset import worker_init_fn
from spool.train.metrics import MetricTracker, average_clip_scores


@dataclass
class EvalResult:
    """Metrics over every rank and, for the samples this rank saw, the scores ``[n, C]``."""

    tracker: MetricTracker
    indices: list[int] = field(default_factory=list)
    scores: torch.Tensor | None = None

    @property
    def metrics(self) -> dict[str, float]:
        return self.tracker.compute()


def autocast_context(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; nothing on CPU (bf16 matmuls there are slow)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The ``video=`` or ``tokens=`` keyword of a batch, on ``device``."""
    key = "tokens" if "tokens" in batch else "video"
    return {key: batch[key].to(device, non_blocking=True)}


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset: Dataset, num_classes: int, *,
             batch_size: int = 8, num_workers: int = 0, device: torch.device | str = "cpu",
             amp: bool = True, keep_scores: bool = False) -> EvalResult:
    """Loss, top-1/top-5 and confusion matrix of ``model`` on ``dataset``.

    Items with ``video: [K, T, H, W, 3]`` (``K`` clips) are scored by the mean of the clips'
    softmax probabilities, and the loss is the NLL of that mean. Under torch.distributed each
    rank takes every ``world``-th sample (no padding, so nothing is counted twice) and the
    metrics are summed over ranks.
    """
    device = torch.device(device)
    rank, world = 0, 1
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    indices = list(range(rank, len(dataset), world))
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                        worker_init_fn=worker_init_fn, pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    tracker = MetricTracker(num_classes)
    result = EvalResult(tracker)
    all_scores = []
    for batch in loader:
        inputs = model_inputs(batch, device)
        labels = batch["label"].to(device)
        (key, x), = inputs.items()
        multi = key == "video" and x.ndim == 6
        if multi:
            B, K = x.shape[:2]
            x = x.flatten(0, 1)
        with autocast_context(device, amp):
            logits = model(**{key: x}).logits.float()
        if multi:
            scores = average_clip_scores(logits.view(B, K, -1))
            loss_sum = F.nll_loss(scores.clamp_min(1e-12).log(), labels, reduction="sum")
        else:
            scores = logits
            loss_sum = F.cross_entropy(logits, labels, reduction="sum")
        tracker.update(scores, labels, float(loss_sum))
        if keep_scores:
            result.indices.extend(batch["index"].tolist())
            all_scores.append(scores.cpu())
    tracker.all_reduce()
    if keep_scores:
        result.scores = torch.cat(all_scores) if all_scores else torch.zeros(0, num_classes)
    model.train(was_training)
    return result
