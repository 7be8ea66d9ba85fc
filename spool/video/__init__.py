"""Reading video files (PyAV) and choosing which frames to read."""

from spool.video.chunks import decode_chunks, distinct_frames
from spool.video.formats import VIDEO_EXTENSIONS, is_video_name
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
    ClipSampler,
    FpsSampler,
    FrameSampler,
    SlidingWindowSampler,
    StrideSampler,
    UniformSampler,
    make_sampler,
)

__all__ = [
    "ClipSampler",
    "FpsSampler",
    "FrameSampler",
    "SlidingWindowSampler",
    "StrideSampler",
    "UniformSampler",
    "VIDEO_EXTENSIONS",
    "VideoDecodeError",
    "VideoInfo",
    "VideoReader",
    "apply_rotation",
    "clear_index_cache",
    "decode_chunks",
    "distinct_frames",
    "is_video_name",
    "make_sampler",
    "probe_video",
    "read_video_frames",
    "write_video",
]
