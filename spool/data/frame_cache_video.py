"""One video's file in a frame cache, written as it is encoded: the tokens chunk by chunk as
the backbone gives them, then the labels at the frames' times. A whole video's tokens never sit
in memory (an hour at 15 fps is gigabytes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from tqdm import tqdm

from spool.data.dataset import UNREADABLE
from spool.data.frame_cache_keys import Keys, cached_state
from spool.data.segmentation import SegmentationSample, warn_if_labels_disagree
from spool.models.long_video import stream_tokens, whole_video_indices
from spool.models.pretrained import SpoolPreTrainedModel
from spool.tensor_files import StreamedTensor, write_streamed_safetensors
from spool.validation import COMPUTE_IN_FLOAT32, STORE_AS_FLOAT32, check_storable
from spool.video.completeness import check_reader_complete
from spool.video.io import VideoReader, probe_video
from spool.video.samplers import FrameSampler

COPY_FRAMES = 256  # frames of tokens copied at once when only the labels are rewritten


class ReadFailed(Exception):
    """The video could not be read (``error``, the reader's own, which may be an ``OSError``)
    while its file was written: raised in its place, so that a failed write (a full disk)
    stops the job instead of being taken for an unreadable video."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


@contextmanager
def reading() -> Iterator[None]:
    """Where only the video is read: its errors come out as :class:`ReadFailed`."""
    try:
        yield
    except UNREADABLE as err:
        raise ReadFailed(err) from err


def write_video_file(model: SpoolPreTrainedModel, sample: SegmentationSample,
                     sampler: FrameSampler, path: Path, keys: Keys, dtype: torch.dtype,
                     progress: bool = False) -> bool:
    """Write ``path`` with the tokens (as ``dtype``) and labels of ``sample``'s sampled frames
    (``progress``: a bar of its frames); False when it holds them already. New labels for the
    tokens it holds are written without the backbone."""
    state = cached_state(path, keys)
    if state == "done":
        return False
    metadata = {"settings": keys.settings, "source": keys.source, "labels": keys.labels,
                "video": sample.video}
    if state == "labels":
        _relabel(sample, path, metadata)
        return True
    with reading():
        reader = VideoReader(sample.video)
    with reader:
        with reading():
            info = reader.info()
            # A file cut short is unreadable here as in spool extract: its labelled tail is gone.
            check_reader_complete(Path(sample.video), reader, info)
            indices = whole_video_indices(reader, sampler, "a frame cache")
        n, times = len(indices), []

        def tokens() -> Iterator[torch.Tensor]:
            # Each chunk back to the CPU at once: a whole video's tokens need not fit the GPU.
            with tqdm(total=n, desc=sample.name, unit="frame", leave=False,
                      disable=not progress, dynamic_ncols=True) as bar:
                chunks = stream_tokens(model, reader, indices)
                while True:
                    with reading():
                        chunk = next(chunks, None)
                    if chunk is None:
                        return
                    times.append(chunk[1])
                    bar.update(len(chunk[0]))
                    yield check_storable(chunk[0], dtype, sample.video,
                                         advice=STORE_AS_FLOAT32,
                                         compute_flag=COMPUTE_IN_FLOAT32)

        def labels() -> torch.Tensor:  # once the tokens are written: their times are known
            warn_if_labels_disagree(sample, info.num_frames, info.duration)
            return torch.from_numpy(sample.labels_at(indices, np.concatenate(times),
                                                     info.start_time))

        config = model.config
        write_streamed_safetensors(path, [
            StreamedTensor("tokens", dtype, (n, config.num_spatial_tokens, config.hidden_size),
                           tokens()),
            StreamedTensor("labels", torch.int64, (n,), _later(labels)),
            StreamedTensor("frame_indices", torch.int64, (n,),
                           [torch.tensor(indices, dtype=torch.int64)]),
            StreamedTensor("timestamps", torch.float64, (n,),
                           _later(lambda: torch.from_numpy(np.concatenate(times)))),
            StreamedTensor("start_time", torch.float64, (1,),
                           [torch.tensor([info.start_time], dtype=torch.float64)]),
        ], metadata)
    return True


def _later(make: Callable[[], torch.Tensor]) -> Iterator[torch.Tensor]:
    """One chunk, made when the writer reaches it."""
    yield make()


def _relabel(sample: SegmentationSample, path: Path, metadata: dict[str, str]) -> None:
    """Rewrite ``path`` with ``sample``'s labels, its tokens copied over in chunks."""
    with safe_open(str(path), framework="pt") as f:
        kept = {k: f.get_tensor(k) for k in f.keys() if k != "tokens"}
        if "start_time" not in kept:  # written before it was kept
            with reading():
                start = probe_video(sample.video).start_time
            kept["start_time"] = torch.tensor([start], dtype=torch.float64)
        kept["labels"] = torch.from_numpy(sample.labels_at(
            kept["frame_indices"].numpy(), kept["timestamps"].numpy(),
            float(kept["start_time"][0])))
        tokens = f.get_slice("tokens")
        shape = tuple(tokens.get_shape())
        chunks = (tokens[i:i + COPY_FRAMES] for i in range(0, shape[0], COPY_FRAMES))
        write_streamed_safetensors(path, [
            StreamedTensor("tokens", tokens[0:0].dtype, shape, chunks),
            *(StreamedTensor(k, v.dtype, tuple(v.shape), [v]) for k, v in kept.items())],
            metadata)
