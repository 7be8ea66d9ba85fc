"""Whole long videos through Spool in one pass, with memory linear in their length.

Frames are decoded, preprocessed and encoded by the backbone in chunks as the file is read, so
decoded pixels never accumulate; their tokens go straight into the hidden state ``[T + 2, L,
D]`` (in RAM, or in a file under ``offload_dir``), which the temporal stack then updates in
place, chunk by chunk (:mod:`spool.layers.streaming`). On a GPU the hidden state moves to the
device when it fits there with room to spare (from RAM or its file); otherwise it stays there
and each chunk visits the device, so device memory does not grow with the video. The result is
the plain forward's, to fp32 round-off.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from spool.io_utils import file_location, file_version, human_size
from spool.layers.streaming import check_chunk_frames, stream_temporal_stack
from spool.models.long_video_state import ResumableHiddenState, reserve
from spool.runtime import available_memory_bytes, warn_once
from spool.validation import check_tokens
from spool.video.io import VideoReader
from spool.video.samplers import FpsSampler, FrameSampler, make_sampler

logger = logging.getLogger(__name__)


@dataclass
class LongVideoOutput:
    """``frame_features [T, D]`` (each frame's final features averaged over its tokens),
    ``context [2D]`` (the clip representation), and, for a video file, ``frame_indices [T]``
    and ``timestamps [T]`` (seconds, the file's pts: not 0 first where the stream starts later)
    of the sampled frames. ``features [T + 2, L, D]`` (the
    hidden state itself, no copy) only with ``keep_features=True``."""

    frame_features: torch.Tensor
    context: torch.Tensor
    frame_indices: torch.Tensor | None = None
    timestamps: torch.Tensor | None = None
    features: torch.Tensor | None = None


def default_sampler(config) -> FrameSampler:
    """How a whole video is sampled when no sampler is given: as the model was trained (its
    ``config.sampling``, when that takes whole videos: ``fps`` or ``stride``), else 1 fps."""
    trained = getattr(config, "sampling", None)
    if isinstance(trained, dict) and trained.get("name") in ("fps", "stride"):
        return make_sampler(**trained)
    if trained is None:
        warn_once(logger, "note: no sampler given and the model records no training rate "
                  "(config.sampling, which spool train writes): videos are sampled at 1 fps; "
                  "pass sampler= (spool.video.make_sampler) or set config.sampling")
    return FpsSampler(1.0)


def memory_estimate(num_frames: int, num_tokens: int, hidden_size: int, chunk_frames: int,
                    local_frame_range: int, offload: bool = False) -> int:
    """Bytes of RAM a long forward needs beyond the model's weights: the fp32 hidden state
    ``[T + 2, L, D]`` (unless offloaded to disk) and a per-chunk workspace that does not grow
    with ``T`` (about 25 frames' worth of hidden state per frame of chunk and window, which
    never span more than the video and its two context frames)."""
    frame = num_tokens * hidden_size * 4
    hidden = 0 if offload else (num_frames + 2) * frame
    workspace = min(chunk_frames + 2 * local_frame_range, num_frames + 2)
    return hidden + 25 * workspace * frame


LONG_ADVICE = ("Sample fewer frames (a lower fps), pool the patch tokens (token_pooling), use a "
               "smaller chunk_frames, or keep the hidden state on disk (offload_dir=..., "
               "spool extract or spool eval --offload-dir)")


def check_memory(needed: int, what: str, advice: str = LONG_ADVICE) -> None:
    """A ``MemoryError`` before any work when ``needed`` bytes exceed what is available; its
    message ends with ``advice`` (by default :func:`forward_long`'s ways out)."""
    available = available_memory_bytes()
    if available is not None and needed > available:
        raise MemoryError(f"{what} needs about {human_size(needed)} but "
                          f"{human_size(available)} are available. {advice}")


def _hidden_buffer(shape: tuple[int, ...], offload_dir: str | os.PathLike | None
                   ) -> torch.Tensor:
    if offload_dir is None:
        return torch.empty(shape)
    Path(offload_dir).mkdir(parents=True, exist_ok=True)
    # An unlinked temporary: the kernel pages it out under pressure and frees it on exit.
    with tempfile.TemporaryFile(dir=offload_dir) as f:
        reserve(f, int(np.prod(shape)) * 4, Path(offload_dir))
        array = np.memmap(f, dtype=np.float32, mode="r+", shape=shape)
    return torch.from_numpy(array)


def check_long_call(model: torch.nn.Module, what: str, chunk_frames: int) -> None:
    """What the long-video paths refuse before any work: training mode; a temporal part
    (every parameter but the backbone's, whose tokens are cast) in a dtype other than
    float32, the hidden state's (in RAM or a file); a ``chunk_frames`` that is not an
    integer >= 1."""
    if model.training:
        raise ValueError(f"{what}: inference only; call model.eval() first")
    encoder = getattr(model, "frame_encoder", None)
    backbone = set() if encoder is None else {id(p) for p in encoder.parameters()}
    dtypes = {p.dtype for p in model.parameters()
              if id(p) not in backbone and p.is_floating_point()}
    other = sorted(str(d) for d in dtypes - {torch.float32})
    if other:
        raise ValueError(f"{what}: expected a float32 model (its hidden state is float32), got "
                         f"{', '.join(other)} outside the backbone; keep the weights in float32 "
                         "and compute in bfloat16/float16 under torch.autocast")
    check_chunk_frames(chunk_frames)


def one_video_tokens(tokens: torch.Tensor, config) -> torch.Tensor:
    """One video's tokens ``[T, L, D]``, given as that or as ``[1, T, L, D]``, checked against
    ``config`` (its L and D; finite floats); a batch of several is refused (the long-video
    paths take one video at a time)."""
    if tokens.ndim in (4, 5) and tokens.shape[-1] == 3 != config.hidden_size:
        raise ValueError(f"video: a tensor is taken as backbone tokens [T, L, D]; shape "
                         f"{tuple(tokens.shape)} looks like decoded frames [T, H, W, 3]: pass "
                         "the file's path, or the frames' tokens (model.encode_frames)")
    if tokens.ndim == 4 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.ndim != 3:
        raise ValueError(f"video: expected one video's tokens [T, L, D] (or [1, T, L, D]), got "
                         f"shape {tuple(tokens.shape)}; pass the videos of a batch one by one")
    check_tokens(tokens[None], config.num_spatial_tokens, config.hidden_size)
    return tokens


def whole_video_indices(reader: VideoReader, sampler: FrameSampler, what: str) -> list[int]:
    """The frames ``sampler`` takes from the video of ``reader``, as one clip: the long-video
    paths run a whole video in one pass (a sampler of several clips is refused)."""
    if not isinstance(sampler, FrameSampler):
        raise ValueError(f"sampler: expected a FrameSampler, e.g. spool.video.make_sampler("
                         f"'fps', target_fps=2.0), got {sampler!r}")
    info = reader.info()
    clips = sampler(info.num_frames, info.fps, timestamps=reader.frame_times())
    if len(clips) != 1:
        raise ValueError(f"sampler: {what} takes one clip per video, {sampler!r} gave "
                         f"{len(clips)}; use an fps, stride or uniform sampler")
    return clips[0]


def stream_tokens(model, reader: VideoReader, indices: list[int]
                  ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Decode, preprocess and encode frames ``indices`` of ``reader`` ``backbone_chunk_size``
    distinct frames at a time (each encoded once: ``VideoReader.get_chunks``): yields (tokens
    ``[n, L, D]``, timestamps ``[n]``) per chunk, so decoded pixels never accumulate.
    ``model``: any Spool model with a backbone (``model.frame_encoder``)."""
    encoder = model.frame_encoder
    if encoder is None:
        raise ValueError("model: has no backbone (built with with_backbone=False?), so it "
                         "cannot encode video frames; pass tokens instead")
    chunk = model.config.backbone_chunk_size
    preprocessing = model.config.preprocessing()
    device = next(encoder.parameters()).device
    for frames, stamps, positions in reader.get_chunks(indices, chunk):
        pixels = preprocessing(torch.from_numpy(frames)).to(device)  # each frame encoded once
        with torch.no_grad():
            tokens = encoder(pixels[None])[0]
        yield tokens[torch.from_numpy(positions).to(tokens.device)], stamps[positions]


def _encode_video(model, reader: VideoReader, indices: list[int], hidden: torch.Tensor,
                  times: np.ndarray, bar: tqdm | None, start: int = 0,
                  on_chunk: Callable[[int], None] | None = None) -> None:
    """Encode ``indices[start:]`` chunk by chunk into ``hidden[1 + start:-1]`` and their
    timestamps into ``times[start:]``; ``on_chunk(frames done)`` after each chunk."""
    done = start
    for tokens, stamps in stream_tokens(model, reader, indices[start:]):
        tokens = model.merge_tokens(tokens)
        hidden[1 + done:1 + done + len(tokens)] = tokens.to(hidden.device, torch.float32)
        times[done:done + len(tokens)] = stamps
        done += len(tokens)
        if bar is not None:
            bar.update(len(tokens))
        if on_chunk is not None:
            on_chunk(done)


def hidden_fits_on_device(num_bytes: int, device: torch.device) -> bool:
    """Whether a hidden state of ``num_bytes`` goes onto ``device`` whole: at most half of the
    device's free memory (the rest is the workspace's and other users'), counting what
    PyTorch holds cached but unused (an earlier video's state: the driver calls it taken).
    The CPU holds it already; a device that cannot report its free memory gets it whole, as
    a tensor would."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return num_bytes <= free // 2


def _chunks(x: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, x.shape[0], size):
        yield x[start:start + size]


@torch.no_grad()
def forward_long(model, video: str | os.PathLike | torch.Tensor, *,
                 sampler: FrameSampler | None = None, chunk_frames: int = 32,
                 keep_features: bool = False, offload_dir: str | os.PathLike | None = None,
                 hidden_on_device: bool | None = None, progress: bool = False,
                 resume: ResumableHiddenState | None = None) -> LongVideoOutput:
    """Run ``model`` (a :class:`~spool.models.spool.Spool`) over a whole video in one pass.

    ``video``: a file path (decoded with ``sampler``; by default at the rate the model was
    trained at, its ``config.sampling``, else 1 fps: :func:`default_sampler`; a file cut
    short is read as far as it goes, where ``spool extract`` and ``spool eval`` refuse it:
    :func:`spool.video.completeness.check_file_complete` first does the same), or backbone
    tokens ``[T, L, D]`` (``[1, T, L, D]`` too). ``chunk_frames`` frames go through each
    temporal layer at a time; ``offload_dir`` keeps the hidden state in a file there instead
    of RAM. With the model on a GPU, ``hidden_on_device`` says whether the hidden state moves
    there whole (faster) or stays in RAM / its file with one chunk at a time on the device
    (device memory bounded whatever the length); None: whole when it takes at most half the
    device's free memory. A ``MemoryError`` comes before any work when the estimate exceeds
    what is free. ``resume``: the hidden state lives in its folder instead (twice, on disk),
    and a pass interrupted there goes on from the last chunk of frames encoded or layer done;
    the caller removes the folder once the result is kept.
    """
    check_long_call(model, "forward_long", chunk_frames)
    config = model.config
    D = config.hidden_size
    L = model.num_temporal_tokens  # the hidden state's; the input's with no token_merging
    reader, indices = None, None
    if isinstance(video, torch.Tensor):
        tokens = one_video_tokens(video, config)
        num_frames = tokens.shape[0]
    else:
        if model.backbone is None:
            raise ValueError("video: this model has no backbone (with_backbone=False); pass "
                             "its cached tokens [T, L, D] instead of a file")
        sampler = sampler or default_sampler(config)
        reader = VideoReader(video)
        try:
            indices = whole_video_indices(reader, sampler, "forward_long")
        except BaseException:
            reader.close()
            raise
        num_frames = len(indices)
    needed = memory_estimate(num_frames, L, D, chunk_frames, config.local_frame_range,
                             offload=offload_dir is not None or resume is not None)
    try:
        check_memory(needed, f"forward_long over {num_frames} frames ([{num_frames + 2}, {L}, "
                             f"{D}] fp32 hidden state)")
        if resume is not None:  # a state of another video or sampling is not taken up
            source = "" if reader is None else json.dumps(
                [file_location(video), file_version(video), sampler.to_dict()])
            hidden = resume.open((num_frames + 2, L, D), source).hidden
        else:
            hidden = _hidden_buffer((num_frames + 2, L, D), offload_dir)
        done = 0 if resume is None else resume.encoded
        if done == 0:
            hidden[0] = model.context_frames.start.detach().float().cpu()
            hidden[-1] = model.context_frames.end.detach().float().cpu()
        bar = tqdm(total=num_frames, initial=done, unit="frame", desc="encode",
                   disable=not progress, leave=False)
        on_chunk = None if resume is None else resume.commit_encoded
        timestamps = None
        if reader is not None:
            times = np.empty(num_frames) if resume is None else resume.timestamps
            if done < num_frames:
                _encode_video(model, reader, indices, hidden, times, bar, done, on_chunk)
            timestamps = np.array(times)  # not a view of a file that goes with the state
        else:
            for start in range(done, num_frames, chunk_frames):  # merged a chunk at a time
                chunk = model.merge_tokens(tokens[start:start + chunk_frames])
                hidden[1 + start:1 + start + len(chunk)] = chunk.to("cpu", torch.float32)
                if on_chunk is not None:
                    on_chunk(start + len(chunk))
        if resume is not None and done < num_frames:
            resume.commit_encoded(num_frames, force=True)
        bar.close()
    finally:
        if reader is not None:
            reader.close()
    device = model.context_frames.start.device
    if hidden_on_device is None:  # offload_dir is about RAM: a file is read to the device too
        hidden_on_device = hidden_fits_on_device(hidden.numel() * hidden.element_size(), device)
    work = hidden.to(device) if hidden_on_device else hidden
    first = 0 if resume is None else resume.layers_done
    # Counted in frames through layers: a layer over a long video takes minutes.
    layers = tqdm(total=config.num_hidden_layers * (num_frames + 2), unit="frame",
                  initial=first * (num_frames + 2), disable=not progress, leave=False,
                  desc=f"temporal ({config.num_hidden_layers} "
                       f"layer{'s' * (config.num_hidden_layers != 1)})")
    work = stream_temporal_stack(model.temporal, work, chunk_frames, layers.update,
                                 start_layer=first,
                                 before_layer=None if resume is None else resume.before_layer)
    layers.close()
    frame_features = torch.cat([c.mean(1).cpu() for c in _chunks(work[1:-1], chunk_frames)])
    context = torch.cat((work[0].mean(0), work[-1].mean(0))).cpu()
    features = work
    if keep_features and work.device != hidden.device:  # back to RAM or the file, not a copy
        features = hidden if resume is None else resume.free  # (not the recorded state)
        for start in range(0, len(work), chunk_frames):
            features[start:start + chunk_frames] = work[start:start + chunk_frames].cpu()
    return LongVideoOutput(
        frame_features, context,
        None if indices is None else torch.tensor(indices, dtype=torch.int64),
        None if timestamps is None else torch.from_numpy(timestamps),
        features if keep_features else None)
