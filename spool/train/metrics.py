"""Classification metrics (top-k, per-class accuracy, confusion matrix), their plots, and the
per-step / per-epoch CSV logs of a training run."""

from __future__ import annotations

import csv
import json
import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from spool.distributed import all_reduce_sum
from spool.io_utils import atomic_path

STEP_FIELDS = ("step", "epoch", "loss", "lr", "grad_norm")
EPOCH_FIELDS = ("epoch", "step", "lr", "train_loss", "train_top1", "train_top5", "val_loss",
                "val_top1", "val_top5", "epoch_seconds")


def topk_correct(scores: torch.Tensor, labels: torch.Tensor,
                 ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """``scores: [N, C]``, ``labels: [N]`` -> {k: number of rows whose label is in the top k}.

    ``k`` larger than ``C`` counts every row (the label is always among all classes).
    """
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"scores/labels: expected [N, C] and [N], got "
                         f"{tuple(scores.shape)} and {tuple(labels.shape)}")
    # A stable sort, not topk: among tied scores the lowest class comes first, as argmax (the
    # confusion matrix, predictions.csv) takes it; topk's order of ties is unspecified.
    top = scores.sort(dim=1, descending=True, stable=True).indices[:, :max(ks)]
    hits = top == labels.view(-1, 1)
    return {k: int(hits[:, :k].any(dim=1).sum()) for k in ks}


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor,
                     num_classes: int) -> torch.Tensor:
    """``[C, C]`` int64 counts: row = true class, column = predicted class."""
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes,
                                                                          num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    """Recall of each class from a confusion matrix (NaN for a class with no samples)."""
    totals = confusion.sum(dim=1)
    return [float(confusion[i, i] / totals[i]) if totals[i] > 0 else math.nan
            for i in range(confusion.shape[0])]


def average_clip_scores(logits: torch.Tensor) -> torch.Tensor:
    """Test-time averaging: per-clip ``logits: [N, K, C]`` -> mean probabilities ``[N, C]``."""
    return logits.float().softmax(dim=-1).mean(dim=1)


class MetricTracker:
    """Running loss / top-1 / top-5 / confusion matrix; a flat state for all-reduce and resume.

    ``update(scores, labels, loss_sum)`` with ``scores: [N, C]`` (logits or probabilities)
    and the *sum* of the per-sample losses of the batch.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.totals = torch.zeros(4, dtype=torch.float64)  # loss sum, count, top-1, top-5
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, scores: torch.Tensor, labels: torch.Tensor, loss_sum: float) -> None:
        scores, labels = scores.detach().float().cpu(), labels.detach().cpu()
        hits = topk_correct(scores, labels, (1, 5))
        self.totals += torch.tensor([loss_sum, len(labels), hits[1], hits[5]],
                                    dtype=torch.float64)
        self.confusion += confusion_matrix(scores.argmax(dim=1), labels, self.num_classes)

    def all_reduce(self) -> None:
        """Sum the state over ranks (a no-op without torch.distributed)."""
        self.totals = all_reduce_sum(self.totals)
        self.confusion = all_reduce_sum(self.confusion)

    def compute(self) -> dict[str, float]:
        """``loss`` (mean), ``top1``, ``top5`` (fractions) and ``count``."""
        loss_sum, n, c1, c5 = self.totals.tolist()
        if n == 0:
            return {"loss": math.nan, "top1": math.nan, "top5": math.nan, "count": 0}
        return {"loss": loss_sum / n, "top1": c1 / n, "top5": c5 / n, "count": int(n)}

    def state_dict(self) -> dict[str, list]:
        return {"totals": self.totals.tolist(), "confusion": self.confusion.tolist()}

    def load_state_dict(self, state: dict[str, list]) -> None:
        self.totals = torch.tensor(state["totals"], dtype=torch.float64)
        self.confusion = torch.tensor(state["confusion"], dtype=torch.int64)


def plot_confusion_matrix(confusion: torch.Tensor, class_names: Sequence[str],
                          path: str | os.PathLike, title: str = "Confusion matrix") -> None:
    """Row-normalised confusion matrix (colour: share of the true class) with counts, as a
    PNG; names past 30 characters are shortened (metrics.json has them whole)."""
    from spool.metrics.figures import new_figure, save_png

    C = confusion.shape[0]
    rates = confusion.double() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    # Capped: 0.45 in per class made 400 classes a 20,000-pixel PNG that took 16 GB to draw.
    size = min(max(4.0, 0.45 * C + 2), 24.0)
    fig = new_figure(size + 1, size)
    ax = fig.subplots()
    im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    named = C <= 60  # class names stop being legible beyond that
    if named:
        names = [textwrap.shorten(str(n), 30, placeholder="...") for n in class_names]
        ax.set_xticks(range(C), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(C), names, fontsize=8)
    index = "" if named else " (class index; names in order in metrics.json)"
    ax.set_xlabel(f"predicted class{index}")
    ax.set_ylabel(f"true class{index}")
    ax.set_title(title)
    if C <= 30:  # counts stop being legible beyond that
        for i in range(C):
            for j in range(C):
                ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046).set_label(
        "share of the true class" + (" (numbers: counts)" if C <= 30 else ""))
    fig.tight_layout()
    save_png(fig, path, dpi=110)


# The loss axis is logarithmic when the largest loss drawn is this many times the smallest.
LOG_LOSS_SPAN = 30.0


def plot_curves(histories: dict[str, list[dict[str, float]]], path: str | os.PathLike,
                metric: str = "top1", label: str = "top-1", scale: float = 100.0,
                val_name: str = "val", note: str | None = None) -> None:
    """Loss and an accuracy per epoch for one or several runs (``{run name: epoch rows}``), as
    a PNG. Rows hold ``epoch``, ``train_<metric>``, ``train_loss`` and, on the epochs that were
    evaluated, ``val_<metric>`` (and ``val_loss`` where there is one), drawn as ``val_name``;
    ``scale`` takes the accuracies to percent (100: fractions); ``note``: a line under the
    accuracy's title. Many runs share one legend below the plots. Values that are not finite
    (a diverged run) are left out, and the title says so; losses spanning a factor of
    ``LOG_LOSS_SPAN`` or more are drawn on a log axis."""
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    from spool.metrics.figures import new_figure, save_png

    below = len(histories) > 2  # one legend below the plots
    # Columns fill first: an odd number of runs in 2 would split a run's pair of lines.
    columns = 2 if len(histories) % 2 == 0 else 1
    rows_of_legend = 2 * len(histories) // columns
    fig = new_figure(11, 4 + (0.25 * rows_of_legend if below else 0))
    ax_loss, ax_acc = fig.subplots(1, 2)
    table = matplotlib.colormaps["tab10" if len(histories) <= 10 else "tab20"].colors
    dropped, losses = 0, []
    for i, (name, rows) in enumerate(histories.items()):
        name = textwrap.shorten(str(name), 60, placeholder="...")
        for split, style in (("train", "--"), ("val", "-")):
            for key, ax, factor in ((f"{split}_loss", ax_loss, 1),
                                    (f"{split}_{metric}", ax_acc, scale)):
                have = [r for r in rows if r.get(key) not in (None, "")]  # val: some epochs
                finite = [r for r in have if math.isfinite(float(r[key]))]
                dropped += len(have) - len(finite)
                if ax is ax_loss:
                    losses += [float(r[key]) for r in finite]
                if finite:  # markers: a run's first epoch is a point, not a line
                    ax.plot([r["epoch"] for r in finite],
                            [factor * float(r[key]) for r in finite], style, marker="o",
                            color=table[i % len(table)], markersize=3,
                            label=f"{name} {'train' if split == 'train' else val_name}")
    gaps = f" ({dropped} values not finite, left out)" if dropped else ""
    # A loss falling from 2 to 0.005 is a flat line at 0 on a linear axis after epoch 3.
    log = bool(losses) and min(losses) > 0 and max(losses) / min(losses) >= LOG_LOSS_SPAN
    ax_loss.set(xlabel="epoch", ylabel="loss (log scale)" if log else "loss",
                title=f"Loss{gaps}", yscale="log" if log else "linear")
    title = "\n".join([label.capitalize(), *textwrap.wrap(note or "", 60)])
    ax_acc.set(xlabel="epoch", ylabel=f"{label} (%)", title=title, ylim=(0, 100))
    last = max((int(r["epoch"]) for rows in histories.values() for r in rows), default=1)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # not 0.96, 1.04
        ax.set_xlim(0.5, last + 0.5)
        if not below and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, handlelength=3)  # long enough to show train's dashes
    if below:
        handles = {}
        for ax in (ax_acc, ax_loss):
            for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(name, handle)
        fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=columns,
                   fontsize=7, handlelength=3)
    fig.tight_layout(rect=(0, 0.2 * rows_of_legend / (4 + 0.25 * rows_of_legend) if below
                           else 0, 1, 1))
    save_png(fig, path, dpi=110)


def rewrite_csv(path: Path, fields: tuple[str, ...], keep: Any = None,
                rows: list[dict[str, Any]] | None = None) -> None:
    """Start ``path`` with a header, and the rows of a resumed run: ``rows``, or those of the
    file for which ``keep``."""
    if rows is None:
        rows = []
        if path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if keep(r)]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:  # a kill keeps the old
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def append_csv(path: Path, fields: tuple[str, ...], row: dict[str, Any]) -> None:
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields, extrasaction="ignore").writerow(row)


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float (a class with no videos has no accuracy)
    made ``None``, so that ``json.dumps`` writes valid JSON (``null``, not ``NaN``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(value: Any) -> str:
    """``value`` as indented, valid JSON: non-finite numbers become ``null``."""
    return json.dumps(json_safe(value), indent=1, allow_nan=False)
