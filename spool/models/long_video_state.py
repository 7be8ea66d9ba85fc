"""A long video's hidden state kept on disk between runs, so that an interrupted pass goes on.

``forward_long`` over hours of video spends its time encoding frames with the backbone, then in
each temporal layer. With a :class:`ResumableHiddenState` the hidden state ``[T + 2, L, D]``
lives in two files in a folder, and a record (``state.json``, replaced atomically once the data
it describes is on disk) says how far the pass got: how many frames are encoded (into buffer
0), then how many temporal layers are done and which buffer holds their output. Each layer
runs on a copy in the other buffer, so the last finished state is never written over: an
interruption loses at most the layer, or the last half-minute of encoding, in progress. A state
computed on a GPU is copied to disk before a layer once half a minute has passed since the last
record, and ten times the last copy's time (copying before every layer cost more than the
layers): an interruption there loses the layers since. The record's ``key`` names what the
state depends on (the video's version, the weights, the settings); a folder holding another
key, or another shape, is emptied and started afresh.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from spool.io_utils import OUT_OF_ROOM, atomic_write_text, file_location, human_size
from spool.runtime import EVERY_RANK

logger = logging.getLogger(__name__)

RECORD_NAME = "state.json"
# A video too long for RAM (the up-front check's MemoryError) or for a device's memory.
OUT_OF_MEMORY = (MemoryError, torch.OutOfMemoryError)
COMMIT_EVERY_S = 30.0  # progress on a device is recorded at most this often (each commit syncs)
COPY_SHARE = 0.1  # and a state on a device is copied to disk for at most this share of the time
_clock = time.monotonic


class ResumableHiddenState:
    """The hidden state of one pass in ``folder``, valid for ``key``; :meth:`open` it with the
    pass's shape ``(T + 2, L, D)``. Its disk use is twice the hidden state's (fp32)."""

    def __init__(self, folder: str | os.PathLike, key: str) -> None:
        self.folder = Path(folder)
        self.key = key
        self.record: dict = {}
        self.buffers: list[torch.Tensor] = []
        self._arrays: list[np.memmap] = []
        self._last_commit = _clock()
        self._copy_seconds = 0.0

    def open(self, shape: tuple[int, int, int], source: str = "") -> ResumableHiddenState:
        """Take up the folder's state when it is this key's, ``source``'s (what the pass
        reads: forward_long names the video file and sampler) and shape's, else start afresh
        (a ``MemoryError`` when the disk has no room for it: a full disk met while writing a
        mapped file would kill the process instead). A folder holding anything but such a
        state is refused, not emptied."""
        shape = tuple(int(n) for n in shape)
        names = ("hidden0.f32", "hidden1.f32", "timestamps.f64")
        sizes = (4 * int(np.prod(shape)),) * 2 + (8 * (shape[0] - 2),)
        self._check_own_folder(names)
        key = f"{self.key}|{source}" if source else self.key  # not kept: open() may come again
        record = self._read_record()
        fresh = (record is None or not _valid(record, key, shape)
                 or any(not _has_size(self.folder / n, s) for n, s in zip(names, sizes,
                                                                           strict=True)))
        if fresh:
            if record is not None:  # said: hours of work may go with it
                why = ("is of another pass (other weights, settings, video or length)"
                       if not _valid(record, key, shape) else "is cut short or damaged")
                logger.info(f"{self.folder}: the state saved there {why}; starting afresh",
                            extra=EVERY_RANK)
            self.remove()
            self.folder.mkdir(parents=True)
            free = shutil.disk_usage(self.folder).free
            if free < sum(sizes):  # said whole; reserve() catches what this estimate misses
                raise MemoryError(f"no room for the hidden state on disk: it takes "
                                  f"{human_size(sum(sizes))} in {self.folder.parent} (two copies "
                                  f"of [{', '.join(map(str, shape))}] fp32), "
                                  f"{human_size(free)} free")
            for name, size in zip(names, sizes, strict=True):
                with open(self.folder / name, "wb") as f:
                    reserve(f, size, self.folder)
            record = {"key": key, "shape": list(shape), "encoded": 0, "layers": 0,
                      "current": 0}
        self.record = record
        self._arrays = [np.memmap(self.folder / names[0], np.float32, "r+", shape=shape),
                        np.memmap(self.folder / names[1], np.float32, "r+", shape=shape),
                        np.memmap(self.folder / names[2], np.float64, "r+",
                                  shape=(shape[0] - 2,))]
        self.buffers = [torch.from_numpy(a) for a in self._arrays[:2]]
        if fresh:
            self._write_record()
        elif self.encoded or self.layers_done:  # else only the bars would show it
            logger.info(f"{self.folder}: resuming the pass: {self.encoded} of {shape[0] - 2} "
                        f"frames encoded, {self.layers_done} temporal layer(s) done",
                        extra=EVERY_RANK)  # each rank's own video
        return self

    @property
    def encoded(self) -> int:
        """Frames whose tokens are in buffer 0 (in order, from the first)."""
        return int(self.record["encoded"])

    @property
    def layers_done(self) -> int:
        """Temporal layers done (the number of layers, then the final norm follows)."""
        return int(self.record["layers"])

    @property
    def hidden(self) -> torch.Tensor:
        """The buffer that holds the last finished state."""
        return self.buffers[self.record["current"]]

    @property
    def free(self) -> torch.Tensor:
        """The other buffer: work in progress, if anything."""
        return self.buffers[1 - self.record["current"]]

    @property
    def timestamps(self) -> np.ndarray:
        """``[T]`` seconds of the encoded frames (the rest is not written yet)."""
        return self._arrays[2]

    def commit_encoded(self, frames: int, force: bool = False) -> None:
        """Record that the first ``frames`` frames are encoded (every half minute or so)."""
        if force or _clock() - self._last_commit >= COMMIT_EVERY_S:
            self._sync(self._arrays[0], self._arrays[2])
            self.record["encoded"] = int(frames)
            self._write_record()
            self._last_commit = _clock()

    def before_layer(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Called before temporal layer ``layer`` (the number of layers: before the final norm)
        with ``x``, the state after the layers before it. Records that state, the first time,
        and returns where the layer computes in place: a copy in the other buffer when ``x`` is
        one of them, else ``x`` itself (on a device), whose state is copied to disk when
        ``COMMIT_EVERY_S`` have passed since the last record, and at least ten times the last
        copy's time (copies take at most ``COPY_SHARE`` of the pass)."""
        index = next((i for i, b in enumerate(self.buffers) if _same(b, x)), None)
        if index is None:  # the state is on a device: the free buffer takes a copy of it
            wait = max(COMMIT_EVERY_S, self._copy_seconds / COPY_SHARE)
            if layer > self.layers_done and _clock() - self._last_commit >= wait:
                start, index = _clock(), 1 - self.record["current"]
                _copy(x, self.buffers[index])
                self._commit_layer(layer, index)
                self._copy_seconds = _clock() - start
            return x
        if layer > self.layers_done:
            self._commit_layer(layer, index)
        target = self.buffers[1 - index]
        _copy(x, target)
        return target

    def _check_own_folder(self, names: tuple[str, ...]) -> None:
        """``ValueError`` unless the folder is free for a state: missing, a state's, or (its
        hidden name is Spool's: ``resumable_pass``) anything left there."""
        if self.folder.name.startswith(".spool-resume-") or not os.path.lexists(self.folder):
            return
        own = {*names, RECORD_NAME}
        if not self.folder.is_dir() or self.folder.is_symlink() or any(
                not p.is_file() or not (p.name in own or p.name.startswith(f".{RECORD_NAME}."))
                for p in self.folder.iterdir()):
            raise ValueError(f"resume: {self.folder} holds other things than a hidden state; "
                             "give a folder of its own (resumable_pass makes one per pass)")

    def remove(self) -> None:
        """Delete the folder (the pass's output is written, or the video failed)."""
        self._arrays, self.buffers = [], []
        if self.folder.is_dir() and not self.folder.is_symlink():
            shutil.rmtree(self.folder, ignore_errors=True)
        else:  # a file, a link: in the way of the folder
            self.folder.unlink(missing_ok=True)

    def _commit_layer(self, layer: int, index: int) -> None:
        self._sync(self._arrays[index])
        self.record.update(layers=int(layer), current=int(index))
        self._write_record()
        self._last_commit = _clock()

    @staticmethod
    def _sync(*arrays: np.memmap) -> None:
        for array in arrays:
            array.flush()

    def _read_record(self) -> dict | None:
        try:
            record = json.loads((self.folder / RECORD_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _write_record(self) -> None:
        atomic_write_text(self.folder / RECORD_NAME, json.dumps(self.record, sort_keys=True))


def reserve(f: BinaryIO, size: int, folder: Path) -> None:
    """Make the open file ``f`` (in ``folder``) ``size`` bytes long with its blocks reserved:
    a ``MemoryError`` naming the room needed now, where a sparse file would fail later, as a
    SIGBUS that kills the process, when a page of it is written to a full disk."""
    try:
        os.posix_fallocate(f.fileno(), 0, size)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # cannot reserve here: sparse
            f.truncate(size)
            return
        free = shutil.disk_usage(folder).free
        # As for RAM (check_memory): this video's state does not fit, a shorter one's may.
        raise MemoryError(f"no room for the hidden state on disk: {human_size(size)} more in "
                          f"{folder} ({human_size(free)} free; {os.strerror(err.errno)})") from err


def _valid(record: dict, key: str, shape: tuple[int, ...]) -> bool:
    """A record of this key and shape whose counts make sense (else it is started afresh)."""
    try:
        return (record.get("key") == key and tuple(record["shape"]) == shape
                and 0 <= int(record["encoded"]) <= shape[0] - 2
                and 0 <= int(record["layers"]) and record["current"] in (0, 1))
    except (KeyError, TypeError, ValueError):
        return False


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.device == b.device and a.data_ptr() == b.data_ptr() and a.shape == b.shape


def _copy(src: torch.Tensor, dst: torch.Tensor, frames: int = 64) -> None:
    """``dst[:] = src``, a few frames at a time (either may be a file or on a device)."""
    for start in range(0, src.shape[0], frames):
        dst[start:start + frames] = src[start:start + frames].to(dst.device)


def pass_folder(folder: str | os.PathLike, name: str) -> Path:
    """Where in ``folder`` the state of the pass called ``name`` (an output's path) lives: a
    hidden folder named by the digest of where that output is, however its path was typed."""
    where = file_location(name).encode("utf-8", "surrogateescape")
    return Path(folder) / f".spool-resume-{hashlib.sha1(where).hexdigest()[:16]}"


def stray_states(folder: str | os.PathLike, outputs: list[str | os.PathLike]
                 ) -> tuple[list[Path], int]:
    """The pass states in ``folder`` of none of ``outputs`` (another job's, or left by a video
    renamed, deleted or finished without ``folder`` since), and their bytes on disk."""
    mine = {pass_folder(folder, str(output)).name for output in outputs}
    stray = sorted(p for p in Path(folder).glob(".spool-resume-*")
                   if p.name not in mine and p.is_dir() and not p.is_symlink())
    size = 0
    for state in stray:
        with suppress(OSError):  # removed by the job it is of, meanwhile
            size += sum(file.stat().st_blocks * 512 for file in state.iterdir())
    return stray, size


@contextmanager
def resumable_pass(folder: str | os.PathLike, name: str, key: str
                   ) -> Iterator[ResumableHiddenState]:
    """The state of the pass called ``name`` in ``folder`` (:func:`pass_folder`), valid for
    ``key``. Removed when the block ends or raises an error (its result is kept, or its input
    is bad); kept when it is interrupted (Ctrl-C, a termination signal's exception, a kill),
    or when it holds work done and runs out of room (a full disk, RAM or device memory), for
    the same pass to go on from."""
    state = ResumableHiddenState(pass_folder(folder, name), key)
    try:
        yield state
    except Exception as err:
        if not (out_of_room(err) and state.record
                and (state.encoded or state.layers_done)):
            state.remove()
        raise
    state.remove()


def out_of_room(err: BaseException) -> bool:
    """No fault of the input: the same pass goes on with smaller chunks, the state in RAM
    rather than on the device, or after room is made on the disk."""
    return out_of_memory(err) or isinstance(err, OSError) and err.errno in OUT_OF_ROOM


_ALLOCATOR_FAILED = "can't allocate memory"  # torch's CPU allocator, in a RuntimeError


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is memory running out: RAM (``MemoryError``, or the ``RuntimeError``
    of torch's CPU allocator, which the up-front estimate can miss) or a device's."""
    return isinstance(err, OUT_OF_MEMORY) or (
        isinstance(err, RuntimeError) and _ALLOCATOR_FAILED in str(err))


def said_out_of_room(error: str, message: str) -> bool:
    """Memory or disk space running out (:func:`out_of_memory`, or an ``OSError`` of a full
    disk), of an error known by its type's name and its message (a report's row of a skipped
    video)."""
    code = re.match(r"\[Errno (\d+)\]", message)  # OSError's str() when it has an errno
    return error in {kind.__name__ for kind in OUT_OF_MEMORY} or (
        error == "RuntimeError" and _ALLOCATOR_FAILED in message) or (
        code is not None and int(code.group(1)) in OUT_OF_ROOM)


def release_device_memory(err: BaseException) -> None:
    """After a GPU out-of-memory error, the failed pass's tensors (held by the traceback's
    frames) and the cached blocks go back for the next video."""
    if isinstance(err, torch.cuda.OutOfMemoryError) and torch.cuda.is_available():
        err.__traceback__ = None
        torch.cuda.empty_cache()
