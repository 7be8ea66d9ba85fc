"""Atomic file writes: a long job never leaves a half-written output under its final name.

Temporaries are named ``.NAME.spool-HOST-PID-RANDOM.tmp`` (HOST: a hash of the host name), so
a clean-up can tell Spool's own from a user's files and whether the process that writes one
is still alive. Claims (``.NAME.spool-claim``) let jobs that share an output folder split the
work: whoever creates the claim file first writes that output.
"""

from __future__ import annotations

import csv
import ctypes
import errno
import hashlib
import io
import json
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from spool.errors import CheckpointNotFoundError, SpoolLoadError


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
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
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


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A fresh hidden name beside ``path`` for a file or folder being written by this process
    (``.NAME.spool-HOST-PID-RANDOM.tmp``: :func:`is_stale_temporary` can tell when the writer
    is gone)."""
    path = Path(path)
    tag = f"spool-{_HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}"
    return path.parent / f".{path.name}.{tag}.tmp"


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
    """``safetensors.torch.save_file`` through a temporary file and a rename."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and move the result onto ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)


# --- who writes what: process identity, stale temporaries, claims ------------------------------

def _pid_namespace() -> int | None:
    try:  # containers sharing a host name each number their processes on their own
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


_HOST = socket.gethostname()
_PIDNS = _pid_namespace()
# A temporary's writer is checked only within its own PID namespace (another's is judged by age).
_HOST_TAG = hashlib.sha1(f"{_HOST}/{_PIDNS}".encode()).hexdigest()[:8]
_TEMPORARY = re.compile(r"\..+\.spool-([0-9a-f]{8})-(\d+)-[0-9a-f]{8}\.tmp")
CLAIM_SUFFIX = ".spool-claim"
# A claim from another machine cannot be checked for a live process: after this long it is
# taken to be left by a crash. (Same machine: the process is checked, whatever the age.)
STALE_AFTER_S = 6 * 3600.0
_GRACE_S = 60.0  # a claim file still being written, or a take-over lock left by a crash


def _boot_id() -> str:
    try:  # a process id from before a reboot names nothing
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


_BOOT = _boot_id()


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat``), or None:
    tells a process from a later one given the same PID (a restarted container's PID 1)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        return int(stat_line.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine exists (an unrelated process may reuse it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return True  # cannot tell: assume it is alive, never delete what it may own
    return True


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def is_stale_temporary(path: Path, older_than_s: float = STALE_AFTER_S) -> bool:
    """True for a Spool temporary whose writer is gone: a process of this machine that has
    exited, or (any machine) one written longer than ``older_than_s`` ago. Other files,
    a user's ``.notes.tmp`` included, are never stale."""
    match = _TEMPORARY.fullmatch(path.name)
    if match is None:
        return False
    if match[1] == _HOST_TAG and not process_alive(int(match[2])):
        return True
    return _age_s(path) > older_than_s


@dataclass(frozen=True)
class Claim:
    """The right to write one output, held by this process until ``release_claim``."""

    path: Path
    token: str


def claim_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(f".{output.name}{CLAIM_SUFFIX}")


def try_claim(output: str | os.PathLike, stale_after_s: float = STALE_AFTER_S
              ) -> Claim | None:
    """Claim ``output`` for this process, or None if another live job holds it.

    The claim file is created with ``O_EXCL`` beside the output and holds host, process id and
    time. A claim whose process is gone (this machine) or older than ``stale_after_s`` (another
    machine) is taken over.
    """
    return _claim_file(claim_path(output), stale_after_s)


def _claim_file(path: Path, stale_after_s: float) -> Claim | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    claim = _create_claim(path)
    if claim is not None:
        return claim
    raw = _read_bytes(path)
    if raw is None:  # released meanwhile
        return _create_claim(path)
    if not _claim_is_stale(path, raw, stale_after_s):
        return None
    return _take_over(path, raw)


def lock_directory(directory: str | os.PathLike, what: str,
                   name: str = ".spool.lock") -> Claim:
    """Hold ``directory`` for this process (``what`` it is doing there, for the message):
    an exclusive lock file ``name`` inside it, a claim as :func:`try_claim` makes (taken over
    when its process is gone). Raises :class:`~spool.errors.SpoolBusyError` naming the holder
    while a live one has it; release with :func:`release_claim`."""
    from spool.errors import SpoolBusyError

    path = Path(directory) / name
    claim = _claim_file(path, STALE_AFTER_S)
    if claim is None:
        raise SpoolBusyError(f"{directory}: another {what} is using it ({claim_holder(path)}); "
                             "wait for it to end or choose another directory")
    return claim


def claim_holder(path: str | os.PathLike) -> str:
    """Who holds the claim or lock file ``path``, in words."""
    record = _parse(_read_bytes(Path(path)) or b"")
    if not {"host", "pid", "time"} <= record.keys():
        return f"lock file {path}"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record["time"])))
    return f"process {record['pid']} on {record['host']} since {since}; lock file {path}"


def release_claim(claim: Claim) -> None:
    """Delete the claim file if it is still this claim (it may have been taken over)."""
    raw = _read_bytes(claim.path)
    if raw is not None and _parse(raw).get("token") == claim.token:
        claim.path.unlink(missing_ok=True)


def remove_stale_claim(path: Path, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Delete the claim file ``path`` if it is stale (as ``try_claim`` judges it)."""
    raw = _read_bytes(path)
    if raw is None or not _claim_is_stale(path, raw, stale_after_s):
        return False
    claim = _take_over(path, raw)
    if claim is not None:
        release_claim(claim)
    return claim is not None


def _create_claim(path: Path) -> Claim | None:
    token = secrets.token_hex(8)
    record = {"host": _HOST, "boot": _BOOT, "pid": os.getpid(), "time": time.time(),
              "token": token, "pidns": _PIDNS, "start": process_start(os.getpid())}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record))
    return Claim(path, token)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _parse(raw: bytes) -> dict:
    try:
        record = json.loads(raw)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _claim_is_stale(path: Path, raw: bytes, stale_after_s: float) -> bool:
    record = _parse(raw)
    if not {"host", "pid", "time"} <= record.keys():
        return _age_s(path) > _GRACE_S  # being written now, or cut short by a crash
    if record["host"] == _HOST and record.get("pidns", _PIDNS) == _PIDNS:
        pid = int(record["pid"])
        if record.get("boot") != _BOOT or not process_alive(pid):
            return True
        started = record.get("start")  # a later process that was given the same PID
        return started is not None and process_start(pid) not in (None, started)
    # Another machine, or another PID namespace of this one: no process to check.
    return time.time() - float(record["time"]) > stale_after_s


def _take_over(path: Path, raw: bytes) -> Claim | None:
    """Replace the stale claim ``raw`` at ``path`` by one of ours, one job at a time."""
    lock = path.with_name(path.name + ".break")
    try:
        os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except FileExistsError:  # another job is taking it over
        if _age_s(lock) <= _GRACE_S:
            return None
        lock.unlink(missing_ok=True)  # left by a crash: try again, once
        try:
            os.close(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            return None
    try:
        if _read_bytes(path) == raw:  # not replaced by a fresh claim meanwhile
            path.unlink(missing_ok=True)
        return _create_claim(path)
    finally:
        lock.unlink(missing_ok=True)


def file_version(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(size, modification time in ns)`` of ``path``, or None if it cannot be stat'ed: what
    tells an output made from this file from one made from an earlier version of it."""
    try:
        st = os.stat(path)
    except OSError:  # reported as a failure when it is read
        return None
    return st.st_size, st.st_mtime_ns


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


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
                   settled: Iterable[str], wait_s: float = 60.0) -> int:
    """Update the ``failures.csv`` that jobs sharing an output folder keep together: rows of
    videos this job read (``settled``) or failed on go, this job's ``failures`` come in, and
    other jobs' rows stay. Returns the rows it now holds. Jobs take turns (a claim on it)."""
    failures = [list(f) for f in failures]
    drop = set(settled) | {f[0] for f in failures}
    deadline = time.monotonic() + wait_s
    while (claim := try_claim(path)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: another job held it for over {wait_s:.0f} s")
        time.sleep(0.05)
    try:
        kept = []
        if Path(path).is_file():
            with open(path, newline="", encoding="utf-8") as f:
                kept = [row for row in list(csv.reader(f))[1:] if row and row[0] not in drop]
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
