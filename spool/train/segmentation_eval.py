"""Evaluating frame classifiers: every held-out video whole, in one pass, scored as MS-TCN does.

Each video goes through :meth:`FrameClassifier.predict_long` (memory linear in its length),
its predictions against its labels at the sampled frames' own times; frame accuracy, edit and
F1@{10,25,50} are those of :mod:`spool.metrics.segmentation`. Under torch.distributed each rank
takes every ``world``-th video and the sums are all-reduced.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from spool.data.dataset import UNREADABLE, SkippedVideo, report_skipped, skipped_video
from spool.data.frame_cache import FrameTokenDataset
from spool.data.segmentation import (
    SegmentationSample,
    check_segmentation_source,
    warn_if_labels_disagree,
)
from spool.distributed import all_reduce_sum
from spool.io_utils import atomic_write_text
from spool.metrics.ribbons import plot_ribbons
from spool.metrics.segmentation import SegmentationMetrics
from spool.models.frame_classification import FrameClassifier
from spool.models.long_video_state import out_of_memory, out_of_room, release_device_memory
from spool.runtime import warn_once
from spool.train.evaluate import checkpoint_label, skipped_fields, skipped_note
from spool.train.metrics import json_text
from spool.video.completeness import check_file_complete
from spool.video.io import probe_video
from spool.video.samplers import FrameSampler

logger = logging.getLogger(__name__)


@dataclass
class VideoPrediction:
    """One video: predicted and true class indices ``[T]``, the predicted class's probability,
    and the sampled frames' indices and times (seconds from the video's first frame, the
    clock of a segments CSV's labels) where known."""

    pred: np.ndarray
    target: np.ndarray
    score: np.ndarray
    frame_indices: np.ndarray | None = None
    times: np.ndarray | None = None


@dataclass
class SegmentationResult:
    metrics: SegmentationMetrics
    videos: dict[str, VideoPrediction] = field(default_factory=dict)
    skipped: list[SkippedVideo] = field(default_factory=list)  # this rank's unreadable videos
    num_skipped: int = 0  # over every rank
    unlabelled: int = 0  # videos predicted without a labelled frame to score, over every rank

    @property
    def scores(self) -> dict[str, float]:
        return self.metrics.compute()

    def report(self, class_names: list[str], background: tuple[str, ...]) -> dict[str, Any]:
        """What ``metrics.json`` holds: the scores, the classes, the unreadable videos."""
        return {**self.scores, "class_names": class_names, "background": list(background),
                "unlabelled": self.unlabelled, **skipped_fields(self.num_skipped, self.skipped)}


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def evaluate_segmentation(model: FrameClassifier,
                          data: FrameTokenDataset | list[SegmentationSample], *,
                          sampler: FrameSampler | None = None, background: tuple[int, ...] = (),
                          chunk_frames: int = 32, device: torch.device | str = "cpu",
                          keep: bool = True, progress: bool = False,
                          iterate: Callable[[Iterable[int]], Iterable[int]] = iter,
                          offload_dir: str | os.PathLike | None = None
                          ) -> SegmentationResult:
    """Score ``model`` on whole videos: a frame cache's, or video files (``sampler`` picks
    their frames). ``keep``: also return every video's predictions (this rank's);
    ``progress``: bars of the videos and of each video file's frames. A video
    file that cannot be read is reported, left out of the metrics and counted
    (``num_skipped``), as is one whose hidden state would not fit in memory (``offload_dir``
    keeps it in a file there). ``iterate`` wraps the loop over this rank's videos
    (training's validation stops on a signal all ranks agree on)."""
    was_training = model.training
    model.eval().to(device)
    metrics = SegmentationMetrics(background=background)
    result = SegmentationResult(metrics)
    rank, world = _rank_world()
    seen: set[str] = set()
    unlabelled = 0
    for i in iterate(tqdm(range(rank, len(data), world), desc="eval", unit="video",
                          disable=not progress, dynamic_ncols=True)):
        if isinstance(data, FrameTokenDataset):
            item, name = data[i], data.videos[i]["name"]
            try:  # the tokens stay in RAM: the pass takes them to the device a chunk at a time
                out = model.predict_long(item["tokens"], chunk_frames=chunk_frames,
                                         offload_dir=offload_dir)
            except Exception as err:  # one video too long (or its offload's disk full)
                if not out_of_room(err):
                    raise
                release_device_memory(err)
                result.skipped.append(skipped_video(i, data.videos[i].get("video", name), err))
                report_skipped(result.skipped[-1:], seen)
                continue
            out = out._replace(frame_indices=item.get("frame_indices"),
                               timestamps=item.get("timestamps"))  # the cache's, as a file's
            # Only kept predictions write times (for an older cache, they cost a probe).
            start = _cache_start_time(item, data.videos[i]) if keep else None
            target = item["labels"].numpy()
        else:
            sample, name = data[i], data[i].name
            try:
                check_file_complete(Path(sample.video))  # cut short: its labelled tail gone
                out = model.predict_long(sample.video, sampler=sampler,
                                         chunk_frames=chunk_frames, progress=progress,
                                         offload_dir=offload_dir)
                info = probe_video(sample.video)
                start = info.start_time
                warn_if_labels_disagree(sample, info.num_frames, info.duration)
            except Exception as err:  # one video unreadable or too long: the rest go on
                if not (isinstance(err, UNREADABLE) or out_of_memory(err)):
                    raise
                release_device_memory(err)
                result.skipped.append(skipped_video(i, sample.video, err))
                report_skipped(result.skipped[-1:], seen)
                continue
            target = sample.labels_at(out.frame_indices.numpy(), out.timestamps.numpy(), start)
        probs = out.logits.float().softmax(-1).cpu()
        score, pred = probs.max(-1)
        metrics.update(pred.numpy(), target)
        unlabelled += not (np.asarray(target) != metrics.ignore_index).any()
        if keep:
            result.videos[name] = VideoPrediction(
                pred.numpy(), target, score.numpy(),
                None if out.frame_indices is None else out.frame_indices.numpy(),
                None if out.timestamps is None or start is None
                else out.timestamps.numpy() - start)
    metrics.all_reduce()
    result.num_skipped = int(all_reduce_sum(torch.tensor(len(result.skipped))))
    result.unlabelled = int(all_reduce_sum(torch.tensor(unlabelled)))
    model.train(was_training)
    return result


def _cache_start_time(item: dict[str, Any], entry: dict[str, Any]) -> float | None:
    """The pts of the cached video's frame 0: kept in the cache, or for a cache written
    before it was kept, read from the video; None (no times written) if it can't be read."""
    if "start_time" in item:
        return item["start_time"]
    try:
        return probe_video(entry["video"]).start_time
    except UNREADABLE as err:
        warn_once(logger, f"{entry['video']}: its frames' times are left out of the "
                  f"predictions (the frame cache predates start times and the video can't be "
                  f"read: {err}); rebuild the cache to have them",
                  key=("no start time", entry["video"]))
        return None


def write_segmentation_report(result: SegmentationResult, class_names: list[str],
                              out_dir: str | os.PathLike, title: str,
                              max_ribbons: int = 8, background: tuple[str, ...] = (),
                              fps: float | None = None) -> None:
    """``metrics.json``, ``ribbons.png`` (the first ``max_ribbons`` videos, over time when the
    frames were sampled at ``fps``) and ``predictions/<video>.csv`` (frame index, time,
    label, prediction, probability)."""
    out = Path(out_dir)
    earlier = _predicted(out / "metrics.json")
    report = result.report(class_names, background)
    if not result.videos:  # nothing scored: this run's report (what it skipped), and an
        # earlier run's predictions stay, listed, for the next run that scores to replace
        atomic_write_text(out / "metrics.json", json_text({**report, "predicted": earlier}))
        return
    # Until this run's files are all written, metrics.json holds no scores and lists the
    # earlier run's videos too: a run stopped half-way leaves no scores beside files of
    # another run, and no file that a later run would not know to remove.
    both = list(dict.fromkeys([*earlier, *result.videos]))
    atomic_write_text(out / "metrics.json", json_text({"predicted": both}))
    shown = dict(list(result.videos.items())[:max_ribbons])
    if shown:
        plot_ribbons(out / "ribbons.png", {k: v.target for k, v in shown.items()},
                     {title: {k: v.pred for k, v in shown.items()}}, class_names,
                     background=[class_names.index(b) for b in background], fps=fps,
                     title=f"{title}: the first {len(shown)} of {len(result.videos)} videos"
                     if len(shown) < len(result.videos) else None)
    for name, video in result.videos.items():
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["frame_index", "time_s", "label", "prediction", "score"])
        for t in range(len(video.pred)):
            writer.writerow([
                "" if video.frame_indices is None else int(video.frame_indices[t]),
                "" if video.times is None else f"{video.times[t]:.4f}",
                class_names[video.target[t]] if video.target[t] >= 0 else "",
                class_names[video.pred[t]], f"{video.score[t]:.4f}"])
        atomic_write_text(out / "predictions" / f"{name}.csv", buffer.getvalue())
    # An earlier run's files of videos this one did not score (another split, a video now
    # unreadable) would read as this run's; only files that run listed as its own go.
    for name in set(earlier) - set(result.videos):
        (out / "predictions" / f"{name}.csv").unlink(missing_ok=True)
    atomic_write_text(out / "metrics.json", json_text({**report,
                                                       "predicted": list(result.videos)}))


def _predicted(metrics: Path) -> list[str]:
    """The videos an earlier run into the same folder wrote predictions of (its list)."""
    try:
        names = json.loads(metrics.read_text(encoding="utf-8")).get("predicted", [])
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(names, list):
        return []
    bad = {"/", "\0", os.sep, os.altsep or "/"}
    return [n for n in names if isinstance(n, str) and n not in ("", ".", "..")
            and not any(c in n for c in bad)]


def format_segmentation(scores: dict[str, Any]) -> str:
    """One line: videos (and the unreadable ones skipped), frame accuracy, edit,
    F1@{10,25,50} (and the background classes)."""
    background = scores.get("background")
    unscored = scores.get("unlabelled")
    unscored = f" ({unscored} more without a labelled frame, not scored)" if unscored else ""
    return (f"videos: {scores['videos']}{skipped_note(scores)}{unscored}   "
            f"frame accuracy: {scores['accuracy']:.1f}   edit: {scores['edit']:.1f}   "
            f"F1@10: {scores['f1@10']:.1f}   "
            f"F1@25: {scores['f1@25']:.1f}   F1@50: {scores['f1@50']:.1f}"
            + (f"   (background: {', '.join(background)})" if background else ""))


def evaluate_frame_checkpoint(model_dir: str | os.PathLike, data: str | None = None,
                              cache: str | None = None, *, split: str | None = None,
                              fps: float | None = None, background: tuple[str, ...] | None = None,
                              overrides: dict[str, Any] | None = None, device: str = "auto",
                              chunk_frames: int = 32, offload_dir: str | None = None,
                              out_dir: str | os.PathLike | None = None,
                              on_report: Callable[[dict[str, Any]], object] | None = None,
                              progress: bool = False) -> dict[str, Any]:
    """Score a saved frame classifier on whole videos: ``data`` (a segments CSV or an MS-TCN
    root with ``split``, by default ``test.split1``, sampled at ``fps`` or as in training)
    or a frame ``cache`` (sampled when it was made: ``fps`` and ``split`` do not apply).
    ``background``: classes that are not segments (None: those of training);
    ``chunk_frames``, ``offload_dir``: as :meth:`FrameClassifier.predict_long`'s. With
    ``out_dir``: ``metrics.json``, ``ribbons.png`` and ``predictions/<video>.csv``, written
    after ``on_report`` is called with the scores (a failed write does not lose them)."""
    from spool.data.segmentation import read_segmentation
    from spool.models.long_video import default_sampler
    from spool.models.pretrained import checkpoint_backbone_digest, load_pretrained
    from spool.runtime import resolve_device
    from spool.train.builders import check_cache_source, check_sampling
    from spool.video.samplers import make_sampler

    if (data is None) == (cache is None):
        raise ValueError("data/cache: give exactly one of --data and --cache")
    if cache is not None and fps is not None:
        raise ValueError("fps: a frame cache was sampled when it was made; --fps applies to "
                         "videos (--data)")
    check_segmentation_source(data, "data (--data)")  # before the split check: a typo
    if split is not None and (cache is not None or not Path(data).is_dir()):
        raise ValueError(f"split: applies to an MS-TCN root (--data DIR); got "
                         f"{'--cache' if cache is not None else 'a segments CSV'}")
    model = load_pretrained(model_dir, with_backbone=cache is None, **(overrides or {}))
    if not isinstance(model, FrameClassifier):
        raise ValueError(f"{model_dir}: holds a {type(model).__name__}, not a frame classifier")
    names = model.class_names
    if background is None:
        background = tuple(model.config.background_classes or ())
    unknown = sorted(set(background) - set(names))
    if unknown:
        raise ValueError(f"background: {unknown} are not classes of the model ({names})")
    if cache is not None:
        dataset: FrameTokenDataset | list[SegmentationSample] = FrameTokenDataset(cache)
        dataset.use_class_names(names, "cache", "the model's classes")
        check_cache_source(dataset.meta, checkpoint_backbone_digest(model_dir), model.config,
                           "cache", cache, f"the one in {model_dir}",
                           "evaluate the videos (--data) instead")
        check_sampling(dataset.sampling, model.config.sampling, "cache", cache,
                       f"{model_dir} was trained on frames that")
        sampler = None
    else:
        dataset, _ = read_segmentation(data, split or "test.split1", names)
        sampler = make_sampler("fps", target_fps=fps) if fps else default_sampler(model.config)
        trained = (model.config.sampling or {}).get("target_fps")
        if fps and trained and float(fps) != float(trained):  # allowed: a study of the rate
            logger.warning(f"note: --fps {fps:g}: {model_dir} was trained on frames at "
                           f"{trained:g} fps, so its frame window spans other times here")
    result = evaluate_segmentation(model, dataset, sampler=sampler,
                                   background=tuple(names.index(b) for b in background),
                                   chunk_frames=chunk_frames, device=resolve_device(device),
                                   progress=progress, offload_dir=offload_dir)
    report = result.report(names, background)
    if on_report is not None:
        on_report(report)
    if out_dir is not None:
        # Seconds on the ribbons' axis where the frames came at a fixed rate (the CSVs'
        # frame_index counts the video's frames, not the sampled ones).
        rate = (dataset.sampling if sampler is None else sampler.to_dict()) or {}
        write_segmentation_report(result, names, out_dir, checkpoint_label(model_dir),
                                  background=background, fps=rate.get("target_fps"))
    return report
