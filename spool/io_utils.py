"""Atomic file writes: a long job never leaves a half-written output under its final name.

Temporaries are named ``.NAME.spool-HOST-PID-RANDOM.tmp`` (HOST: a hash of host name, boot
and PID namespace), so a clean-up can tell Spool's own from a user's files and whether the
process that writes one is still alive. Claims (``.NAME.spool-claim``) let jobs that share an
output folder split the work: whoever creates the claim file first writes that output.
"""

from __future__ import annotations

import csv
import ctypes
import errno
import io
import json
import os
import re
import shutil
import stat
import struct
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from spool.claims import (  # noqa: F401 - re-exported: the claims lived here
    CLAIM_SUFFIX,
    STALE_AFTER_S,
    Claim,
    claim_holder,
    claim_path,
    is_stale_temporary,
    lock_directory,
    refresh_claim,
    release_claim,
    remove_stale_claim,
    remove_stale_temporaries_in,
    temporary_sibling,
    try_claim,
)
from spool.errors import CheckpointNotFoundError, SpoolLoadError


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """A text file a user hands over (a list, labels, annotations), as UTF-8 (a byte-order
    mark dropped: Windows editors write one); a file that is not text is refused naming it,
    as a video given in its place would be."""
    try:  # bytes decoded, not read_text: newlines stay as written (csv needs "\r\n" kept)
        return Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: expected {what} (UTF-8 text), but byte {err.start} is not "
                         "text: is it a video or another binary file?") from None


def human_size(n: float) -> str:
    """``n`` bytes as a person reads them: ``"512 bytes"``, ``"1.5 MiB"``, ``"2.0 GiB"``."""
    unit = 0
    while n >= 1024 and unit < 3:
        n, unit = n / 1024, unit + 1
    return f"{n:.0f} bytes" if unit == 0 else f"{n:.1f} {('KiB', 'MiB', 'GiB')[unit - 1]}"


OUT_OF_ROOM = (errno.ENOSPC, errno.EDQUOT)  # a full disk or quota: not one input's fault


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, mode = _create_temporary(path)
    try:
        yield tmp
        # Writers that replace the file (safetensors writes its own 0600 temporary and renames
        # it over ours) lose the mode; give the output what open() would have.
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            os.chmod(tmp, mode)
        fsync_path(tmp)  # the data must be on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(err, OSError) and err.errno is not None and err.filename is None:
            raise OSError(err.errno, err.strerror, str(path)) from err  # which file (disk)
        raise
    fsync_directory(path.parent)


def _create_temporary(path: Path) -> tuple[str, int]:
    """Create an empty ``.NAME.RANDOM.tmp`` beside ``path``; return it and its mode.

    The mode is what ``open()`` gives a new file (0666 less the umask): ``tempfile.mkstemp``
    creates files 0600 whatever the umask, and the rename kept that, so outputs were
    unreadable to everyone else.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = temporary_sibling(path)
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        return str(tmp), mode
    raise FileExistsError(f"{path.parent}: could not create a temporary file for {path.name}")


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a written file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: str | os.PathLike) -> None:
    """Flush a directory entry (a rename into it) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # e.g. Windows cannot open directories: the rename is all it has
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories; the data is synced already
    finally:
        os.close(fd)


def reserve_space(path: str | os.PathLike, size: int) -> bool:
    """Allocate the first ``size`` bytes of file ``path`` on disk (Linux ``fallocate``), so
    that writing them later through a memory map cannot fail for want of space (which is
    SIGBUS, without a message). False where the file system or platform cannot do it (no
    emulation by writing zeros); ``OSError`` (ENOSPC) when the disk is too full."""
    try:
        fallocate = ctypes.CDLL(None, use_errno=True).fallocate64
    except (OSError, AttributeError):
        return False
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fd = os.open(path, os.O_RDWR)
    try:
        if fallocate(fd, 0, 0, size) == 0:
            return True
        code = ctypes.get_errno()
    finally:
        os.close(fd)
    if code == errno.ENOSPC:
        raise OSError(code, f"no space left on the device for {size} bytes", str(path))
    return False


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                            metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` through a temporary file and a rename, with its header
    in a fixed order: safetensors writes the metadata from a hash map whose order changes
    with every call, so the same tensors gave different bytes."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safetensors writes a temporary of its own (".tmpXXXXXX") beside the file it is given and
    # renames it: given one inside a folder of ours, a killed write leaves only that folder,
    # which remove_stale_temporaries_in recognises.
    folder = temporary_sibling(path)
    written = folder / "w"  # short: the folder's name is as long as a temporary file's was
    try:  # from the mkdir on: a signal just after it left the empty folder behind
        folder.mkdir()
        with atomic_path(written) as tmp:
            try:
                save_file(tensors, tmp, metadata=metadata)
            except SafetensorError as err:  # an I/O error (a full disk) is an OSError here
                code = re.search(r"os error (\d+)", str(err))
                if code is None:
                    raise
                raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from err
            _sort_safetensors_header(tmp)
        os.replace(written, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    fsync_directory(path.parent)


def read_safetensors_header(f: BinaryIO) -> tuple[int, dict]:
    """(length, parsed JSON) of the header of the safetensors file open in ``f`` at its start;
    ``ValueError`` (``struct.error`` for a file under 8 bytes) when it cannot be one."""
    (n,) = struct.unpack("<Q", f.read(8))
    if n > os.fstat(f.fileno()).st_size - 8:
        raise ValueError(f"a header of {n} bytes is longer than the file")
    return n, json.loads(f.read(n))


def _sort_safetensors_header(path: str | os.PathLike) -> None:
    """Rewrite a safetensors header in place with its keys sorted (same length: the same
    JSON in another order; the padding after it is spaces)."""
    with open(path, "r+b") as f:
        n, header = read_safetensors_header(f)
        raw = json.dumps(header, sort_keys=True, separators=(",", ":"),
                         ensure_ascii=False).encode()
        if len(raw) <= n:  # else leave it: still a valid file
            f.seek(8)
            f.write(raw + b" " * (n - len(raw)))


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)


# --- who writes what: process identity, stale temporaries, claims ------------------------------

def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a local path: a hub id is ``name`` or ``org/name``, so an
    absolute path, ``./``, ``~`` or a second slash mean a path."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1


def file_location(path: str | os.PathLike) -> str:
    """Where ``path`` is, however it was typed (relative, ``..``, linked folders): its folder's
    real path and its own name. A link to the file itself is not followed: in git-annex, DVC
    or hub snapshots it points at content, and a new version of one video would move it."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(folder), name)


def file_version(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(size, modification time in ns)`` of ``path``, or None if it cannot be stat'ed: what
    tells an output made from this file from one made from an earlier version of it."""
    try:
        st = os.stat(path)
    except OSError:  # reported as a failure when it is read
        return None
    return st.st_size, st.st_mtime_ns


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename. File names
    that are not UTF-8 (in CSV rows) are written as the bytes the file system holds."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8", errors="surrogateescape")


def write_failures(path: str | os.PathLike,
                   failures: Iterable[tuple[str, str, str]]) -> None:
    """The ``failures.csv`` of a batch job (``path, error, message`` per video that could not
    be read), written atomically; none is left when nothing failed."""
    rows = [list(f) for f in failures]
    if not rows:
        Path(path).unlink(missing_ok=True)
        return
    buffer = io.StringIO()
    csv.writer(buffer).writerows([["path", "error", "message"], *rows])
    atomic_write_text(path, buffer.getvalue())


def merge_failures(path: str | os.PathLike, failures: Iterable[tuple[str, str, str]],
                   settled: Iterable[str], wait_s: float = 60.0,
                   covers: Callable[[str], bool] | None = None) -> int:
    """Update the ``failures.csv`` that jobs sharing an output folder keep together: rows of
    videos this job read (``settled``) or failed on go, and so do rows of videos it
    ``covers`` that no longer exist (deleted since they failed; no job would ever read them
    again to clear the row); this job's ``failures`` come in, and other jobs' rows stay.
    Returns the rows it now holds. Jobs take turns (a claim on it)."""
    failures = [list(f) for f in failures]
    drop = set(settled) | {f[0] for f in failures}

    def stale(video: str) -> bool:
        return video in drop or (covers is not None and not os.path.lexists(video)
                                 and covers(video))

    deadline = time.monotonic() + wait_s
    while (claim := try_claim(path)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: another job held it for over {wait_s:.0f} s")
        time.sleep(0.05)
    try:
        kept = []
        if Path(path).is_file():
            with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
                kept = [row for row in list(csv.reader(f))[1:] if row and not stale(row[0])]
        write_failures(path, kept + failures)
        return len(kept) + len(failures)
    finally:
        release_claim(claim)


def read_json(path: str | os.PathLike, fix: str) -> Any:
    """The JSON in ``path``; a missing file is a :class:`CheckpointNotFoundError`, an unreadable
    one a :class:`SpoolLoadError`, both naming the file and ``fix`` (what to do about it)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: not found; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise SpoolLoadError(f"{path}: not valid JSON ({err}); {fix}") from err
