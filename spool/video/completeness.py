"""Whether a video file is whole: a file cut short (a download or copy that stopped) is
reported, not read as a shorter video."""

from __future__ import annotations

from pathlib import Path

import av

from spool.video.index import VideoDecodeError, main_video_stream, open_file
from spool.video.io import VideoReader


def _declared_end(container: av.container.InputContainer, stream: av.VideoStream
                  ) -> float | None:
    """Where the header says the file ends, in seconds: ``stream``'s duration, else the
    container's (which covers every stream)."""
    if stream.duration and stream.time_base:
        return float((stream.start_time or 0) + stream.duration) * float(stream.time_base)
    if container.duration:
        # FFmpeg's Matroska demuxer gives the segment's end as its duration, others the time
        # from the start: the earlier reading, so a file starting late is not called cut.
        start = container.start_time or 0
        return min(container.duration, start + container.duration) / av.time_base
    return None


def check_complete(source: Path, num_frames: int, end_s: float | None = None,
                   fps: float | None = None, others_end_s: float | None = None,
                   discarded: int = 0, start_s: float = 0.0) -> None:
    """Raise ``VideoDecodeError`` for a file cut short: its header announces more frames than
    its packets hold, or (containers without a frame count, as Matroska/WebM) its packets end
    well before the duration it declares. ``end_s``: where the frames end (the last one's pts
    plus its duration, seconds; ``start_s``: the first one's); ``others_end_s``: where the
    other streams' packets end (the reader's ``index.others_end``), since audio may outlast
    the video; ``discarded``: packets the header counts but an edit list leaves out (a file
    trimmed by ``-ss ... -c copy``, ``index.discarded``). The tolerance keeps normal files (an
    unknown last frame duration, B-frame delays, rounded timestamps) from being flagged."""
    with open_file(str(source), metadata_errors="ignore") as container:
        stream = main_video_stream(container)
        announced, tb = stream.frames, stream.time_base
        declared = _declared_end(container, stream) if not announced and end_s is not None else None
        avi = container.format.name == "avi"
        listed = float(stream.duration * tb) if stream.duration and tb else None
        rate = float(stream.guessed_rate or 0) or fps  # nominal: fps averages what is there
    present = num_frames + discarded
    if announced and fps:
        if avi and end_s is not None and tb:
            # AVI counts frame slots (its time base is one), and a dropped frame is an empty
            # chunk the demuxer skips: the frames' last slot says how many the file holds.
            # (Its duration does not: with the index at the end cut off, FFmpeg sets it to
            # the frames it found.)
            present = max(present, round((end_s - start_s) / float(tb)))
        elif listed is not None and listed * rate < announced - 1:
            # An MP4 edit list that shows fewer samples than the file holds (a lossless trim):
            # the demuxer drops the rest without a mark.
            announced = round(listed * rate)
    if announced and present < announced - 1:
        raise VideoDecodeError(f"{source}: truncated: the header announces {announced} frames "
                               f"but only {num_frames} are in the file")
    if declared is not None:
        slack = max(1.0, 3 / fps if fps else 0.0, 0.02 * declared)
        end = max(end_s, others_end_s if others_end_s is not None else end_s)
        if end < declared - slack:
            what = "frames" if end == end_s else "packets"
            raise VideoDecodeError(f"{source}: truncated: the container declares {declared:.2f} "
                                   f"s but {what} end at {end:.2f} s (or its duration is "
                                   "wrong: remuxing it, e.g. ffmpeg -i IN -c copy OUT, "
                                   "writes the right one)")


def check_reader_complete(source: Path, reader: VideoReader, info) -> None:
    """:func:`check_complete` with what ``reader``'s index knows of the file."""
    check_complete(source, info.num_frames, _frames_end(info), info.fps,
                   reader.index.others_end, reader.index.discarded, info.start_time)


def check_file_complete(source: Path) -> None:
    """:func:`check_complete` for the paths that read the video themselves (whole-video)."""
    with VideoReader(source) as reader:
        check_reader_complete(source, reader, reader.info())


def _frames_end(info) -> float | None:
    """Where the frames end by their timestamps (None: not counted from timestamps)."""
    return info.start_time + info.duration if info.num_frames_exact else None
