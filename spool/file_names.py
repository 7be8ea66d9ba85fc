"""File names Spool derives from a video's: kept within the file system's limit."""

from __future__ import annotations

import hashlib
import os

NAME_MAX = 255  # bytes in one file name: ext4, XFS, btrfs, APFS, NTFS (in UTF-16 units)


def fit_name(name: str, extra: int) -> str:
    """``name``, or a prefix of it and a digest of the whole, so that ``extra`` more bytes fit
    in one file name: a video's name may be up to the limit, its claim and temporaries too.
    A name that is not UTF-8 (Linux names are bytes) becomes its digest alone: libraries that
    take paths as UTF-8 (safetensors) could not write a temporary of that name."""
    raw = os.fsencode(name)
    digest = "~" + hashlib.sha1(raw).hexdigest()[:16]
    try:
        name.encode()
    except UnicodeEncodeError:
        return digest
    if len(raw) + extra <= NAME_MAX:
        return name
    return raw[:NAME_MAX - extra - len(digest)].decode(errors="ignore") + digest
