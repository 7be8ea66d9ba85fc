"""Feature extraction over many videos: one ``.safetensors`` per video, resumable, fault-tolerant.

Each output holds ``context [n_clips, 2D]`` (fp32), optionally ``features [n_clips, T+2, L, D]``
(fp16), ``frame_indices [n_clips, T]`` and ``timestamps [n_clips, T]`` (seconds), with
metadata: source path (size, modification time), sampler settings, model config hash.
Outputs are written atomically: a re-run skips finished videos and redoes any a killed run left
half-written. Under ``torchrun`` the sorted inputs are dealt out round-robin over the ranks.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from spool import __version__
from spool.claims import claim_record, kept_alive
from spool.config import settings_hash
from spool.extract_inputs import VideoJob, name_clash, other_source
from spool.extract_outputs import (
    is_done,
    remove_outputs,
    source_metadata,
    stored_float32,
    stored_half,
)
from spool.io_utils import (
    OUT_OF_ROOM,
    atomic_save_safetensors,
    merge_failures,
    release_claim,
    try_claim,
)
from spool.layers.backbone import architecture_record
from spool.models.frame_classification import FrameClassifier
from spool.models.frame_encoder import FrameEncoderModel
from spool.models.long_video import check_memory
from spool.models.long_video_state import (
    ResumableHiddenState,
    out_of_memory,
    pass_folder,
    release_device_memory,
    resumable_pass,
)
from spool.models.spool import Spool
from spool.models.weights import weights_digest, weights_dtype_record
from spool.runtime import autocast_to, print_line, rank_prefix
from spool.tensor_files import (
    StreamedTensor,
    write_streamed_safetensors,
)
from spool.video import FrameSampler, VideoReader
from spool.video.completeness import check_file_complete, check_reader_complete
from spool.video.index import UNREADABLE
from spool.video.limits import DEFAULT_MAX_PIXELS, pixel_budget
from spool.video.samplers import SamplingError

logger = logging.getLogger(__name__)


@dataclass
class ExtractSummary:
    done: int = 0
    skipped: int = 0
    elsewhere: int = 0  # claimed by another job writing to the same folder
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # path, error, message
    settled: list[str] = field(default_factory=list)  # the videos done or found done

    @property
    def failed(self) -> int:
        return len(self.failures)


def _settings_metadata(model: Spool, sampler: FrameSampler, save_features: bool,
                       dtype: torch.dtype, backbone_only: bool = False) -> dict[str, str]:
    """What an output depends on: the weights (a digest of every tensor), the config (which
    holds the preprocessing policy; a named backbone's architecture besides), the sampler, the
    compute dtype, the weights' dtype when not float32, and what is saved. The
    backbone's tokens (``backbone_only``) depend on the frame encoder alone."""
    if backbone_only:  # the temporal layers and their settings play no part
        config_hash = settings_hash(model.config.frame_encoder_fields(layout=False))
        weights = model.backbone.state_dict()
    else:
        config_hash = model.config.outputs_hash()  # not memory/speed settings
        weights = model.state_dict()
    architecture = {k: json.dumps(v, sort_keys=True)
                    for k, v in architecture_record(model).items()}
    return {"format": "pt", "spool_version": __version__,
            "model_config_hash": config_hash, "weights_digest": weights_digest(weights),
            **weights_dtype_record(model.backbone if backbone_only else model),
            **architecture,
            "preprocessing": json.dumps(dataclasses.asdict(model.config.preprocessing()),
                                        sort_keys=True),
            "sampler": json.dumps(sampler.to_dict(), sort_keys=True),
            "dtype": str(dtype).removeprefix("torch."),
            "save_features": str(save_features)}


def load_feature_model(checkpoint: str | None, overrides: dict | None = None, *,
                       backbone_only: bool = False) -> Spool | FrameClassifier:
    """What to run over the videos: a Spool checkpoint, the Spool inside a clip classifier, a
    frame classifier (its per-frame predictions), or without ``checkpoint`` an untrained
    temporal stack on the backbone that ``overrides`` (SpoolConfig fields) name (with
    ``backbone_only``, only its backbone is used: no warning about the random layers)."""
    from spool.config import SpoolConfig
    from spool.layers.backbone import backbone_weights_follow
    from spool.models.pretrained import load_pretrained

    overrides = dict(overrides or {})
    if checkpoint is not None:
        model = load_pretrained(checkpoint, **overrides)
        if isinstance(model, FrameClassifier):
            return model
        if backbone_only and isinstance(model, FrameEncoderModel):  # a cache's backbone/
            with backbone_weights_follow():  # the cache's weights are loaded next
                spool = Spool(model.config)  # no temporal layers: its backbone is all that runs
            loaded = spool.load_state_dict(model.state_dict(), strict=False)
            if loaded.unexpected_keys or any(k.startswith("backbone.")
                                             for k in loaded.missing_keys):  # else random
                raise ValueError(f"--checkpoint: {checkpoint}'s frame encoder does not fit a "
                                 f"Spool backbone ({loaded})")
            return spool
        spool = model if isinstance(model, Spool) else getattr(model, "spool", None)
        if not isinstance(spool, Spool):
            raise ValueError(f"--checkpoint: {checkpoint} holds a {type(model).__name__}, "
                             "which has no Spool features")
        return spool
    torch.manual_seed(0)  # untrained temporal layers: at least the same ones every run
    if not backbone_only:  # the random layers change the tokens as much as a trained one would
        logger.warning("no --checkpoint: the temporal layers are random (untrained, seed 0), "
                       "so 'context' and 'features' are not meaningful features; "
                       "--backbone-only saves the backbone's own tokens as 'features'")
    return Spool(SpoolConfig(**overrides))


class FeatureExtractor:
    """Runs ``model`` over each video and writes one file per video.

    Clip mode (default): the sampler's clips, ``batch_size`` at a time -> ``context [n_clips,
    2D]``, ``frame_indices`` / ``timestamps [n_clips, T]``, with ``save_features`` also
    ``features [n_clips, T + 2, L, D]`` (fp16). ``per_frame=True``: the whole video in one pass
    (:meth:`Spool.forward_long`, the sampler's one clip) -> ``frame_features [T, D]``,
    ``context [2D]``, ``frame_indices`` / ``timestamps [T]``, with ``save_features`` also
    ``features [T + 2, L, D]`` (fp16, streamed to the file). ``backbone_only=True`` (clip
    mode): the backbone's tokens, ``features [n_clips, T, L, D]`` (fp16), without the temporal
    layers and without ``context``. A frame classifier as ``model``: its per-frame predictions
    and segments (:mod:`spool.extract_frames`).
    """

    def __init__(self, model: Spool | FrameClassifier, sampler: FrameSampler, *,
                 batch_size: int = 4,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 save_features: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS,
                 per_frame: bool = False, chunk_frames: int = 32,
                 offload_dir: str | os.PathLike | None = None,
                 backbone_only: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
        model.check_config_as_built()  # outputs record model.config's fields
        self.model = model.eval().to(device)
        self.sampler = sampler
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_pixels = max_pixels  # larger frames are refused from the header (0: no limit)
        self.per_frame = per_frame
        self.chunk_frames = chunk_frames
        self.offload_dir = offload_dir
        self.progress = False
        predictions = isinstance(model, FrameClassifier)
        if backbone_only and (predictions or per_frame):
            raise ValueError("backbone_only: the backbone's tokens are saved per clip, not with "
                             "per_frame or a frame classifier")
        self.backbone_only = backbone_only
        self.save_features = save_features or backbone_only  # the tokens are the output
        self.settings = _settings_metadata(model, sampler, self.save_features, dtype,
                                           backbone_only)
        if predictions:  # NAME.segments.csv counts from the first frame (pts before), and
            self.settings["segments_clock"] = "first_frame"  # its last segment ends a step on
            self.settings["segments_end"] = "sampling_step"
        self.settings["mode"] = ("frame_predictions" if predictions else
                                 "backbone" if backbone_only else
                                 "per_frame" if per_frame else "clips")
        self.preprocessing = model.config.preprocessing()

    @torch.no_grad()
    def features(self, source: Path) -> dict[str, torch.Tensor]:
        """Decode the sampled clips of ``source`` and run the model on them, batch by batch.
        Frames are preprocessed as soon as they are decoded and dropped once no remaining
        clip needs them, so sliding windows over a long video hold a window's worth of
        frames at the model's size, not the decoded video.
        """
        with VideoReader(source) as reader:
            info = reader.info()
            check_reader_complete(source, reader, info)
            clips = self.sampler(info.num_frames, info.fps,
                                 timestamps=reader.frame_times())
            self._check_memory(clips)
            # first_needed[k]: the lowest frame any clip from k on reads.
            first_needed = np.minimum.accumulate([min(c) for c in clips][::-1])[::-1]
            frames: dict[int, torch.Tensor] = {}
            times: dict[int, float] = {}
            contexts, features = [], []
            autocast = self._autocast()
            bar = tqdm(total=len(clips), unit="clip", desc="clips", leave=False,  # of one video
                       disable=not self.progress or len(clips) <= self.batch_size)
            for start in range(0, len(clips), self.batch_size):
                batch = clips[start:start + self.batch_size]
                missing = sorted({i for clip in batch for i in clip} - set(frames))
                if missing:
                    decoded, stamps = reader.get(missing)
                    # The preprocessing policy on the decoding side, as the datasets apply it.
                    for i, frame, t in zip(missing, self.preprocessing(
                            torch.from_numpy(decoded)), stamps, strict=True):
                        frames[i], times[i] = frame, float(t)
                video = torch.stack([torch.stack([frames[i] for i in clip]) for clip in batch])
                with autocast:
                    if self.backbone_only:
                        features.append(stored_half(self.model.encode_frames(
                            video.to(self.device))))
                    else:
                        out = self.model(video.to(self.device))
                        contexts.append(stored_float32(out.context))
                        if self.save_features:
                            features.append(stored_half(out.features))
                rest = start + self.batch_size
                needed = first_needed[rest] if rest < len(clips) else info.num_frames
                for i in [i for i in frames if i < needed]:
                    del frames[i]
                bar.update(len(batch))
            bar.close()
        result = {"frame_indices": torch.tensor(clips, dtype=torch.int64),
                  "timestamps": torch.tensor([[times[i] for i in clip] for clip in clips],
                                             dtype=torch.float64)}
        if contexts:
            result["context"] = torch.cat(contexts)
        if self.save_features:
            result["features"] = torch.cat(features)
        return result

    def _check_memory(self, clips: list) -> None:
        """A ``MemoryError`` (this video fails; an out-of-memory kill would end the job)
        before decoding when a batch of clips (a whole video, for ``fps`` and ``stride``)
        would not fit in RAM: its pixels, and on the CPU about 18 frames' worth of hidden
        state per frame (backbone tokens alone: 6). On a GPU, running out fails it alone."""
        frames = max(map(len, clips)) * min(self.batch_size, len(clips))
        config = self.model.config
        needed = frames * 3 * 4 * config.image_size ** 2
        if self.device.type == "cpu":
            stack = 0 if self.backbone_only else 12 * self.model.num_temporal_tokens
            needed += frames * 4 * config.hidden_size * (6 * config.num_spatial_tokens + stack)
        check_memory(needed, f"{frames} frames through the model at once",
                     "Sample fewer frames (a lower --fps, a larger --stride)" +
                     ("" if self.backbone_only else ", or use --per-frame, which streams a "
                      "whole video through forward_long"))

    def _write_per_frame(self, source: Path, output: Path, metadata: dict[str, str],
                         resume: ResumableHiddenState | None) -> None:
        """The whole video in one pass, written chunk by chunk (the full features too)."""
        out = self.model.forward_long(source, sampler=self.sampler,
                                      chunk_frames=self.chunk_frames,
                                      keep_features=self.save_features, resume=resume,
                                      offload_dir=self.offload_dir, progress=self.progress)
        T, D = out.frame_features.shape
        tensors = [StreamedTensor("frame_features", torch.float32, (T, D),
                                  [stored_float32(out.frame_features)]),
                   StreamedTensor("context", torch.float32, (2 * D,),
                                  [stored_float32(out.context)]),
                   StreamedTensor("frame_indices", torch.int64, (T,), [out.frame_indices]),
                   StreamedTensor("timestamps", torch.float64, (T,), [out.timestamps])]
        if self.save_features:
            feats = out.features
            tensors.append(StreamedTensor(
                "features", torch.float16, tuple(feats.shape),
                (stored_half(feats[i:i + self.chunk_frames])
                 for i in range(0, len(feats), self.chunk_frames))))
        write_streamed_safetensors(output, tensors, dict(metadata, num_frames=str(T)))

    def _autocast(self) -> torch.autocast:
        """The model's forward in ``dtype`` (a no-op in float32)."""
        return autocast_to(self.dtype, self.device)

    def _extract(self, job: VideoJob, metadata: dict[str, str]) -> None:
        from spool.extract_frames import write_frame_predictions

        with pixel_budget(self.max_pixels):
            autocast = self._autocast()  # --dtype holds for every mode (the metadata says it)
            if isinstance(self.model, FrameClassifier) or self.per_frame:
                # With --offload-dir an interrupted video goes on where it stopped.
                with (nullcontext() if self.offload_dir is None else resumable_pass(
                        self.offload_dir, str(job.output), _state_key(metadata))) as resume:
                    check_file_complete(job.source)  # a cut file: its state goes too
                    with autocast:
                        if self.per_frame and not isinstance(self.model, FrameClassifier):
                            self._write_per_frame(job.source, job.output, metadata, resume)
                            return
                        write_frame_predictions(
                            self.model, job.source, job.output, self.sampler, metadata,
                            chunk_frames=self.chunk_frames, offload_dir=self.offload_dir,
                            resume=resume, progress=self.progress,
                            save_features=self.save_features)
                return
            tensors = self.features(job.source)
        metadata["num_clips"] = str(len(tensors["frame_indices"]))
        atomic_save_safetensors(tensors, job.output, metadata=metadata)

    def _finished(self, job: VideoJob, expected: dict[str, str]) -> bool:
        """Whether ``job``'s outputs are there, of this file and these settings. A video that
        is gone is not (it is read, and reported), whatever an earlier run left."""
        from spool.extract_frames import segments_path

        if "source_size" not in expected or not is_done(job.output, expected):
            return False
        return self.settings["mode"] != "frame_predictions" or segments_path(job.output).is_file()

    def run(self, jobs: list[VideoJob], *, progress: bool = True, desc: str = "extract",
            failure_log: Path | None = None) -> ExtractSummary:
        """Extract each job's video (``progress``: a bar of them, ``desc`` its label); with
        ``failure_log``, its rows are merged into that ``failures.csv`` when the run ends, or
        stops on an error or a signal (what it found is kept)."""
        summary = ExtractSummary()
        self.progress = progress  # a whole-video mode's bars for its frames and layers too
        stopped = True
        try:
            for job in tqdm(jobs, unit="video", disable=not progress, dynamic_ncols=True,
                            desc=desc):
                self._run_job(job, summary)
            stopped = False
        finally:
            if failure_log is not None:  # on a stop, the stop's own error comes first
                with suppress(OSError) if stopped else nullcontext():
                    merge_failures(failure_log, summary.failures, summary.settled)
        return summary

    def _run_job(self, job: VideoJob, summary: ExtractSummary) -> None:
        """One video: skipped when done, claimed, extracted, or reported as failed."""
        expected = dict(self.settings, **source_metadata(job.source))
        try:  # an output or claim name too long for the file system fails this video
            if self._finished(job, expected):
                summary.skipped += 1
                summary.settled.append(str(job.source))
                if self.offload_dir is not None:  # killed between writing and tidying
                    ResumableHiddenState(pass_folder(self.offload_dir, str(job.output)),
                                         "").remove()
                return
            # Jobs sharing the output folder split the videos: one claim file per output.
            claim = try_claim(job.output, source=expected["source"])
        except (OSError, UnicodeError) as err:
            if isinstance(err, OSError) and err.errno in OUT_OF_ROOM:
                raise  # no room for a claim: none for the features either
            _report_failure(summary, job, err)
            return
        if claim is None:
            other = claim_record(job.output).get("source", expected["source"])
            if other == expected["source"]:
                summary.elsewhere += 1
            else:  # the same output name from another folder: it would never be written
                _report_failure(summary, job, name_clash(job.output, other, "is writing"))
            return
        try:
            if self._finished(job, expected):  # finished since the first look
                summary.skipped += 1
                summary.settled.append(str(job.source))
                return
            other = other_source(job.output, expected["source"])
            if other is not None:  # not overwritten: they are another video's features
                _report_failure(summary, job, name_clash(job.output, other, "holds"))
                return
            try:
                with kept_alive(claim):
                    self._extract(job, expected)
            except Exception as err:
                if isinstance(err, OSError) and err.errno in OUT_OF_ROOM:
                    raise  # a full disk is no bad video: the next would fail alike
                if isinstance(err, UNREADABLE):
                    if "source_size" in expected:  # not when the video is gone: kept
                        remove_outputs(job.output)  # of another version of the file
                elif isinstance(err, SamplingError) or out_of_memory(err):
                    release_device_memory(err)  # a video at odds with the settings (its rate,
                    # its length): kept, as the file is what it was, and the others go on
                elif isinstance(err, ValueError):  # a setting no video takes: stop, say which
                    raise ValueError(f"{job.source}: {err}") from err
                else:  # a bug: its traceback
                    raise
                _report_failure(summary, job, err)
                return
            if self.settings["mode"] != "frame_predictions":  # a classifier's, earlier
                remove_outputs(job.output, keep_main=True)
            summary.done += 1
            summary.settled.append(str(job.source))
        finally:
            release_claim(claim)


def _state_key(metadata: dict[str, str]) -> str:
    """What a long video's hidden state depends on: not what is written of it."""
    return settings_hash({k: v for k, v in metadata.items() if k != "save_features"})


def _report_failure(summary: ExtractSummary, job: VideoJob, err: BaseException) -> None:
    message = str(err).replace("\n", " ")
    summary.failures.append((str(job.source), type(err).__name__, message))
    print_line(f"{rank_prefix()}FAILED {job.source}: {type(err).__name__}: {message}")
