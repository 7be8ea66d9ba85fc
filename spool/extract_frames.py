"""Per-frame predictions of a frame classifier, for ``spool extract --checkpoint <frame model>``.

Each video gives ``NAME.safetensors`` with ``labels [T]`` (class indices), ``scores [T, C]``
(class probabilities), ``frame_indices`` and ``timestamps [T]`` (the frames' pts, seconds),
with ``--save-features`` the per-frame ``frame_features [T, D]`` the head reads, the class
names in its metadata, and ``NAME.segments.csv``: one row per run of equal labels
(``start_s,end_s,label,score``, the end exclusive: the next frame's time, or the video's last
frame's time plus one sampling step). The CSV counts seconds from the video's first frame, as
a segments CSV of labels does, so it can be read back as one.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import torch

from spool.io_utils import atomic_save_safetensors, atomic_write_text
from spool.metrics.segmentation import to_segments
from spool.models.frame_classification import FrameClassifier
from spool.models.long_video_state import ResumableHiddenState
from spool.validation import EXTRACT_IN_FLOAT32, check_storable
from spool.video.io import VideoInfo, probe_video
from spool.video.samplers import FrameSampler


def segments_path(output: Path) -> Path:
    """``NAME.segments.csv`` beside ``NAME.safetensors``."""
    return output.with_name(output.name.removesuffix(".safetensors") + ".segments.csv")


def write_frame_predictions(model: FrameClassifier, source: str | os.PathLike,
                            output: Path, sampler: FrameSampler, metadata: dict[str, str], *,
                            chunk_frames: int = 32,
                            offload_dir: str | os.PathLike | None = None,
                            resume: ResumableHiddenState | None = None,
                            progress: bool = False, save_features: bool = False) -> None:
    """Predict every sampled frame of ``source`` in one pass and write both files;
    ``save_features``: with the per-frame ``frame_features [T, D]`` the head reads, from the
    same pass."""
    out = model.predict_long(source, sampler=sampler, chunk_frames=chunk_frames,
                             offload_dir=offload_dir, resume=resume, progress=progress)
    probs = check_storable(out.logits.float(), torch.float32,  # (the job names the video)
                           compute_flag=EXTRACT_IN_FLOAT32).softmax(-1).cpu()
    score, labels = probs.max(-1)
    times = out.timestamps.double()
    names = model.class_names
    info = probe_video(source)
    ends = torch.cat((times[1:], times.new_tensor([last_end(times, sampler, info)])))
    # Labels count from the first frame (``SegmentationSample.labels_at``); pts need not.
    starts, ends = times - info.start_time, ends - info.start_time
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["start_s", "end_s", "label", "score"])
    writer.writerows(segment_rows(labels, score, starts, ends, names))
    # An earlier run's CSV goes first and this one's comes last: a re-run takes the pair as
    # finished (``extract_outputs.is_done``, and the CSV there) only when both are this run's.
    # (Written first, a run killed before its .safetensors left its CSV beside another run's.)
    segments_path(output).unlink(missing_ok=True)
    tensors = {"labels": labels, "scores": probs, "frame_indices": out.frame_indices,
               "timestamps": times}
    if save_features:
        tensors["frame_features"] = out.frame_features.float()
    atomic_save_safetensors(
        tensors, output,
        metadata={**metadata, "class_names": json.dumps(names), "num_frames": str(len(labels))})
    atomic_write_text(segments_path(output), buffer.getvalue())


def segment_rows(labels: torch.Tensor, score: torch.Tensor, starts: torch.Tensor,
                 ends: torch.Tensor, names: list[str]) -> list[list[str]]:
    """``start_s, end_s, label, score`` per run of equal labels of the frames ``[starts,
    ends)``. Where frames repeat (sampled above the video's rate), a copy followed by another
    of the same time spans nothing: the time's last copy holds it, so that no row is empty
    (nor one for a last frame at the video's declared end)."""
    spans = ends > starts
    if not spans.any():  # one frame whose time is the video's end: the row says which
        spans[-1] = True
    labels, score, starts, ends = labels[spans], score[spans], starts[spans], ends[spans]
    segments = to_segments(labels.numpy())
    return [[f"{starts[a]:.4f}", f"{ends[b - 1]:.4f}", names[int(label)],
             f"{float(score[a:b].mean()):.4f}"]
            for label, a, b in zip(segments.labels, segments.starts, segments.ends, strict=True)]


def last_end(times: torch.Tensor, sampler: FrameSampler, info: VideoInfo) -> float:
    """Where the last sampled frame's segment ends (pts, seconds): one sampling step after it
    (the sampler's at the video's rate, or the frames' own last step between two distinct
    frames where that is longer), but not past the video's end (it overshot: 80.0 s for a
    79.5 s video). Frames repeat where more are sampled than the video has."""
    step = sampler.step_seconds(info.fps)
    gaps = torch.diff(times)
    gaps = gaps[gaps > 0]
    if len(gaps):
        step = max(step, float(gaps[-1]))
    end = float(times[-1]) + step
    if info.duration > 0:  # 0: unknown
        end = min(end, info.start_time + info.duration)
    return max(end, float(times[-1]))
