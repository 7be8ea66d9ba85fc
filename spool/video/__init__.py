"""Reading video files (PyAV) and choosing which frames to read."""

from spool.video.io import (
    VideoDecodeError,
    VideoInfo,
    VideoReader,
    apply_rotation,
    clear_index_cache,
    probe_video,
    read_video_frames,
    write_video,
)
from spool.video.samplers import (
    FpsSampler,
    FrameSampler,
    SlidingWindowSampler,
    StrideSampler,
    UniformSampler,
    make_sampler,
)

__all__ = [
    "FpsSampler",
    "FrameSampler",
    "SlidingWindowSampler",
    "StrideSampler",
    "UniformSampler",
    "VideoDecodeError",
    "VideoInfo",
    "VideoReader",
    "apply_rotation",
    "clear_index_cache",
    "make_sampler",
    "probe_video",
    "read_video_frames",
    "write_video",
]
