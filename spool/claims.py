"""Claims: which process holds an output or a run directory, and when a holder is gone.

A claim file (``.NAME.spool-claim``) holds host, boot id, PID namespace, process id and start
time. Made here (this host name, boot and PID namespace), its process is checked (gone, or its
PID given to a later process: stale); otherwise (another machine, even one of the same host
name; another container or PID namespace, where our PID names another process) no process can
be checked and a claim is stale once old (a live holder refreshes it: :func:`refresh_claim`).
Temporaries are judged the same way by their name's tag, a hash of the same three.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from spool.file_names import fit_name
from spool.processes import boot_id, machine_id, pid_namespace, process_alive, process_start
from spool.runtime import EVERY_RANK

logger = logging.getLogger(__name__)

_HOST = socket.gethostname()
_TEMPORARY = re.compile(r"\..+\.spool-([0-9a-f]{8})-(\d+)-[0-9a-f]{8}\.tmp")
CLAIM_SUFFIX = ".spool-claim"
# A claim from another machine or PID namespace cannot be checked for a live process: after
# this long it is taken to be left by a crash. (Made here: the process is checked, whatever the
# age; made here before a reboot, known by the machine id: stale at once.)
STALE_AFTER_S = 6 * 3600.0
_GRACE_S = 60.0  # a claim file still being written, or a take-over lock left by a crash


_BOOT = boot_id()
_PIDNS = pid_namespace()
_MACHINE = machine_id()
# Where a PID names the same process as here: host name, boot (two machines may share a host
# name) and PID namespace. A temporary's tag (of a hash of the host name alone before) and a
# claim's "pidns" (absent before) that differ are judged by age alone.
_HOST_TAG = hashlib.sha1(f"{_HOST}\n{_BOOT}\n{_PIDNS}".encode()).hexdigest()[:8]


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A fresh hidden name beside ``path`` for a file or folder being written by this process
    (``.NAME.spool-HOST-PID-RANDOM.tmp``, HOST a hash of host name, boot and PID namespace:
    :func:`is_stale_temporary` can tell when the writer is gone; a NAME too long for that is
    shortened)."""
    path = Path(path)
    tag = f".spool-{_HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    return path.parent / f".{fit_name(path.name, 1 + len(tag))}{tag}"


def is_stale_temporary(path: Path, older_than_s: float = STALE_AFTER_S) -> bool:
    """True for a Spool temporary whose writer is gone: a process of this machine and PID
    namespace that has exited, or (anywhere) one written longer than ``older_than_s`` ago.
    Other files, a user's ``.notes.tmp`` included, are never stale."""
    match = _TEMPORARY.fullmatch(path.name)
    if match is None:
        return False
    if match[1] == _HOST_TAG and not process_alive(int(match[2])):
        return True
    return _age_s(path) > older_than_s


def remove_stale_temporaries_in(directory: str | os.PathLike,
                                older_than_s: float = STALE_AFTER_S) -> int:
    """Delete the stale temporaries (files or folders, :func:`is_stale_temporary`) directly in
    ``directory``, left by killed writers; return their number (0 for no such directory)."""
    removed = 0
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return 0
    for path in entries:
        if not is_stale_temporary(path, older_than_s):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


@dataclass(frozen=True)
class Claim:
    """The right to write one output, held by this process until ``release_claim``."""

    path: Path
    token: str


def claim_path(output: str | os.PathLike) -> Path:
    """``.NAME.spool-claim`` beside ``output`` (a NAME too long for that is shortened)."""
    output = Path(output)
    return output.with_name(f".{fit_name(output.name, 1 + len(CLAIM_SUFFIX))}{CLAIM_SUFFIX}")


def try_claim(output: str | os.PathLike, stale_after_s: float = STALE_AFTER_S,
              source: str | None = None) -> Claim | None:
    """Claim ``output`` for this process, or None if another live job holds it. The claim
    file is created exclusively beside the output and holds host, process id, time and
    ``source`` (what the output is made from; :func:`claim_record` reads it). A claim whose
    process is gone (this machine and PID namespace) or older than ``stale_after_s``
    (anywhere else) is taken over."""
    return _claim_file(claim_path(output), stale_after_s, {"source": source} if source else {})


def claim_record(output: str | os.PathLike) -> dict:
    """What the claim of ``output`` holds ({}: no claim, or not readable)."""
    return _parse(_read_bytes(claim_path(output)) or b"")


def _claim_file(path: Path, stale_after_s: float, extra: dict | None = None) -> Claim | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if (claim := _create_claim(path, extra)) is not None:
        return claim
    raw = _read_bytes(path)
    if raw is None:  # released meanwhile
        return _create_claim(path, extra)
    if not _claim_is_stale(path, raw, stale_after_s):
        return None
    return _take_over(path, raw, extra)


def lock_directory(directory: str | os.PathLike, what: str,
                   name: str = ".spool.lock") -> Claim:
    """Hold ``directory`` for this process (``what`` it is doing there, for the message):
    an exclusive lock file ``name`` inside it, a claim as :func:`try_claim` makes (taken over
    when its process is gone). Raises :class:`~spool.errors.SpoolBusyError` naming the holder
    while a live one has it; release with :func:`release_claim`."""
    from spool.errors import SpoolBusyError

    path = Path(directory) / name
    claim = _claim_file(path, STALE_AFTER_S)
    if claim is None:  # once more: that attempt may have removed a crash's take-over lock
        time.sleep(0.05)  # (and another job judging it stale too has removed it by now)
        claim = _claim_file(path, STALE_AFTER_S)
    if claim is None:
        raise SpoolBusyError(f"{directory}: another {what} is using it ({claim_holder(path)}); "
                             "wait for it to end or choose another directory")
    return claim


def claim_holder(path: str | os.PathLike) -> str:
    """Who holds the claim or lock file ``path``, in words."""
    record = _parse(_read_bytes(Path(path)) or b"")
    if not _well_formed(record):
        return f"lock file {path}"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record["time"])))
    return f"process {record['pid']} on {record['host']} since {since}; lock file {path}"


def release_claim(claim: Claim) -> None:
    """Delete the claim file if it is still this claim (it may have been taken over): under
    the take-over lock, lest a claim that another job took meanwhile go instead."""
    try:
        lock = _lock(claim.path, _LOCK_WAIT_S)
    except OSError:  # no lock can be made there: as well as can be done without one
        _release(claim)
        return
    if lock is None:  # another job is taking it over: it replaces the file
        logger.debug(f"{claim.path}: left to the job taking it over")
        return
    try:
        _release(claim)
    finally:
        lock.unlink(missing_ok=True)


def _release(claim: Claim) -> None:
    if _parse(_read_bytes(claim.path) or b"").get("token") == claim.token:
        claim.path.unlink(missing_ok=True)


def remove_stale_claim(path: Path, stale_after_s: float = STALE_AFTER_S) -> bool:
    """Delete the claim file ``path`` if it is stale (as ``try_claim`` judges it)."""
    raw = _read_bytes(path)
    if raw is None or not _claim_is_stale(path, raw, stale_after_s):
        return False
    if (claim := _take_over(path, raw)) is not None:
        release_claim(claim)
    return claim is not None


def _own_record() -> dict:
    """Who holds a claim or lock: this process, machine, boot and PID namespace, and when."""
    return {"host": _HOST, "machine": _MACHINE, "boot": _BOOT, "pidns": _PIDNS,
            "pid": os.getpid(), "time": time.time(), "start": process_start(os.getpid())}


def _create_claim(path: Path, extra: dict | None = None) -> Claim | None:
    token = secrets.token_hex(8)
    record = {**(extra or {}), **_own_record(), "token": token}
    return Claim(path, token) if _create_holding(path, json.dumps(record)) else None


def _create_holding(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text``; False if it exists. Written beside it and linked in
    (atomic and exclusive), so a claim or lock is never seen empty: a kill between making and
    writing one left it to read as another job's for a minute. Written in place where hard
    links are refused (FAT, some SMB mounts: any error but "exists")."""
    written = temporary_sibling(path)
    try:
        try:
            written.write_text(text)
        except OSError as err:  # a full disk
            raise OSError(err.errno, err.strerror, str(path)) from err
        try:
            os.link(written, path)
            return True
        except FileExistsError:  # NFS may say so of a link it made (a retried request)
            return os.stat(written).st_nlink == 2
        except OSError:
            pass
    finally:
        written.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError as err:  # a full disk: left empty, it would read as another job's a minute
        path.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from err
    return True


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


def _well_formed(record: dict) -> bool:
    try:
        return isinstance(record["host"], str) and 0 < int(record["pid"]) < 2**31 and \
            math.isfinite(float(record["time"]))
    except (KeyError, TypeError, ValueError, OverflowError):
        return False


def _made_here(record: dict) -> bool:
    """Whether the claim's PID names a process of this machine's PID namespace: the same host
    name, boot and PID namespace (a claim of an older version, without one, is judged by age)."""
    return (record["host"], record.get("boot"), record.get("pidns")) == (_HOST, _BOOT, _PIDNS)


def _made_before_a_reboot(record: dict) -> bool:
    """Whether the claim was made on this machine (host name and machine id) in an earlier
    boot, so that its process is gone (else a crashed run could not be resumed for hours)."""
    return (bool(_MACHINE) and (record["host"], record.get("machine")) == (_HOST, _MACHINE)
            and record.get("boot") not in (None, _BOOT))


def _claim_is_stale(path: Path, raw: bytes, stale_after_s: float) -> bool:
    record = _parse(raw)
    if not _well_formed(record):
        return _age_s(path) > _GRACE_S  # being written now, or cut short by a crash
    if _made_before_a_reboot(record):
        return True
    if _made_here(record):
        return _process_gone(record)
    return time.time() - float(record["time"]) > stale_after_s


def _process_gone(record: dict) -> bool:
    """Whether the process of a record made here has exited, or its PID names a later
    process now (a restarted container's PID 1): another start time."""
    pid, started = int(record["pid"]), record.get("start")
    return not process_alive(pid) or (started is not None
                                      and process_start(pid) not in (None, started))


def _lock(path: Path, wait_s: float = 0.0) -> Path | None:
    """The lock (``NAME.break``, made exclusively) under which a claim file ``path`` is
    replaced or deleted, or None if another job holds it ``wait_s`` later; one left by a crash
    (its process gone, or old) is removed, for the next attempt. Delete it when done."""
    lock = path.with_name(path.name + ".break")
    deadline = time.monotonic() + wait_s
    while True:
        if _create_holding(lock, json.dumps(_own_record())):  # whose: a crash's goes at once
            return lock
        if _age_s(lock) > _GRACE_S or _holder_gone(lock):
            # Not retaken at once: another job that judged it stale too could be about to
            # remove it, ours then, and both would go on. The next attempt takes it.
            lock.unlink(missing_ok=True)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _holder_gone(lock: Path) -> bool:
    """Whether the take-over lock ``lock`` was left by a process of this machine that has
    exited (an empty or older one is judged by its age alone)."""
    record = _parse(_read_bytes(lock) or b"")
    return _well_formed(record) and _made_here(record) and _process_gone(record)


_LOCK_WAIT_S = 2.0  # the owner's renewal and release wait this long for another's take-over


def _take_over(path: Path, raw: bytes, extra: dict | None = None) -> Claim | None:
    """Replace the stale claim ``raw`` at ``path`` by one of ours, one job at a time."""
    lock = _lock(path)
    if lock is None:  # another job is taking it over, or its owner renewing or releasing it
        return None  # (retrying here let two jobs that both saw it stale hold the claim)
    try:
        if _read_bytes(path) == raw:  # not replaced by a fresh claim meanwhile
            path.unlink(missing_ok=True)
        return _create_claim(path, extra)
    finally:
        lock.unlink(missing_ok=True)


def refresh_claim(claim: Claim) -> bool:
    """Renew the time of ``claim`` (a heartbeat), so that jobs on other machines, which judge
    it by age, do not take it from a live holder. False, with a warning, if it is no longer
    ours or cannot be written (a file-system hiccup must not stop a long job).

    Checked and rewritten under the take-over lock: a job that took the claim between the
    check and the rewrite would otherwise have its claim overwritten by ours, both holding it.
    """
    try:
        lock = _lock(claim.path, _LOCK_WAIT_S)
    except OSError as err:
        logger.warning(f"{claim.path}: could not renew it ({err}); trying again later",
                       extra=EVERY_RANK)
        return False
    if lock is None:
        logger.warning(f"{claim.path}: another job is taking it over; trying again later",
                       extra=EVERY_RANK)
        return False
    try:
        record = _parse(_read_bytes(claim.path) or b"")
        if record.get("token") != claim.token:
            logger.warning(f"{claim.path}: held by another job now "
                           f"({claim_holder(claim.path)})", extra=EVERY_RANK)
            return False
        tmp = temporary_sibling(claim.path)  # a crash's leftover is cleaned up as any temporary
        try:
            tmp.write_text(json.dumps(dict(record, time=time.time())))
            os.replace(tmp, claim.path)  # whole or not at all: never seen half-written
        except OSError as err:
            tmp.unlink(missing_ok=True)
            logger.warning(f"{claim.path}: could not renew it ({err}); trying again later",
                           extra=EVERY_RANK)
            return False
        return True
    finally:
        lock.unlink(missing_ok=True)


RENEW_EVERY_S = 600.0  # well within STALE_AFTER_S


@contextmanager
def kept_alive(claim: Claim, every_s: float = RENEW_EVERY_S) -> Iterator[None]:
    """Renew ``claim`` every ``every_s`` seconds from a background thread while the block runs:
    one long video can take longer than :data:`STALE_AFTER_S` to extract, and jobs on other
    machines judge the claim by its age."""
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(every_s):
            refresh_claim(claim)

    thread = threading.Thread(target=renew, name="spool-claim-renewal", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
