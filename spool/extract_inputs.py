"""Inputs of ``spool extract``: video files, folders and lists of paths, dealt out as jobs.

Every named input is kept, also a path that does not exist or is no regular file, so that it
is reported as a failure rather than silently dropped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

# VIDEO_EXTENSIONS is re-exported: spool extract names it when it finds no video.
from spool.data.segmentation import csv_videos
from spool.file_names import NAME_MAX, fit_name
from spool.io_utils import read_text_file
from spool.tensor_files import read_safetensors_metadata
from spool.video.formats import VIDEO_EXTENSIONS as VIDEO_EXTENSIONS
from spool.video.formats import is_video_name

LIST_EXTENSIONS = {".txt", ".lst", ".list"}
_LONGEST_SUFFIX = ".segments.csv"  # of the files named after a video (NAME.safetensors too)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoJob:
    """One input video and where its features go."""

    source: Path
    output: Path


def collect_inputs(inputs: Iterable[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """``(video, name relative to the output directory without suffix)`` for every input.

    An input is a video file, a directory (searched recursively for video extensions,
    following links to directories, skipping hidden names; names keep the sub-folders) or a
    text file listing one path per line (relative paths are relative to the list; a line
    whose first non-blank character is ``#`` is a comment, so a file named ``#x.mp4`` is
    listed as ``./#x.mp4``); an annotation file's ``path label`` lines give their paths, and
    a CSV's ``video`` column (a segments CSV's) its videos.
    A named path that does not exist or is not a regular file (a FIFO, a device, a broken
    link) is kept, so that it is reported as a failure rather than silently dropped; a list
    that does not exist is an error (``FileNotFoundError``).
    """
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for video in _scan_directory(path):
                found.append((video, video.relative_to(path).with_suffix("")))
        elif path.suffix.lower() in {*LIST_EXTENSIONS, ".csv"} and not os.path.lexists(path):
            raise FileNotFoundError(2, "No such list of videos", str(path))  # not a bad video
        elif path.suffix.lower() in LIST_EXTENSIONS and path.is_file():
            found += _listed(path)
        elif path.suffix.lower() == ".csv" and path.is_file():
            found += _listed_in_csv(path)
        else:
            found.append((path, Path(path.stem)))
    return found


def _listed(listing: Path) -> list[tuple[Path, Path]]:
    """The videos a list names. An annotation file for training (``path label`` lines) is
    read as its paths: when a line names no file but its path without the last word does,
    each line that names no file, and no video but for its last word, loses that word."""
    def entry(line: str) -> Path:
        return Path(line) if Path(line).is_absolute() else listing.parent / line

    def label_after_video(line: str) -> bool:
        return (len(line.split()) > 1 and not os.path.lexists(entry(line))
                and not is_video_name(line) and is_video_name(line.rsplit(maxsplit=1)[0]))

    lines = [line.strip() for line in read_text_file(listing, "a list of video paths")
             .splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    labelled = [label_after_video(line) for line in lines]
    if any(flag and entry(line.rsplit(maxsplit=1)[0]).is_file()
           for line, flag in zip(lines, labelled, strict=True)):
        lines = [line.rsplit(maxsplit=1)[0] if flag else line
                 for line, flag in zip(lines, labelled, strict=True)]
        logger.info("%s: read as an annotation file: %d 'path label' lines, the labels left "
                    "out", listing, sum(labelled))
    return [(entry(line), Path(Path(line).stem)) for line in lines]


def _listed_in_csv(table: Path) -> list[tuple[Path, Path]]:
    """The videos of a CSV with a ``video`` column (a segments CSV: ``video,start_s,end_s,
    label``), each once, in order; relative paths are relative to the CSV, as training
    reads them."""
    reader = csv.DictReader(io.StringIO(read_text_file(table, "a CSV of videos"), newline=""))
    if "video" not in (reader.fieldnames or ()):
        raise ValueError(f"{table}: expected a CSV with a 'video' column (a segments CSV's "
                         f"header is video,start_s,end_s,label), found "
                         f"{','.join(reader.fieldnames or ()) or 'nothing'!r}")
    names = (row["video"] or "" for row in reader)  # as training reads them: not stripped
    return [(where, Path(Path(name).stem))
            for name, where in csv_videos(table, (n for n in names if n.strip())).items()]


def _scan_directory(root: Path) -> list[Path]:
    """Entries with a video extension under ``root``, whatever their file type.

    Links to directories are followed (``Path.rglob`` skipped them silently), each real
    directory once, so a link loop ends; the plain tree is walked before any link, so a folder
    that is also linked keeps its real name. FIFOs, devices and broken links are listed too:
    they are reported as failures, never opened.
    """
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    links: deque[Path] = deque()

    def walk(folder: Path) -> None:
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            found.append(folder)  # unreadable: reported as a failure, not skipped
            return
        for entry in entries:
            if entry.name.startswith("."):  # hidden, as glob has it: macOS's ._NAME.mp4 files
                continue
            path = Path(entry.path)
            if _is_dir(entry):
                if entry.is_symlink():
                    links.append(path)
                else:
                    walk(path)
            elif is_video_name(path):
                found.append(path)

    walk(root)
    while links:
        walk(links.popleft())
    return sorted(found)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:
        return False


def plan_jobs(inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
              rank: int = 0, world_size: int = 1) -> list[VideoJob]:
    """This rank's share of the videos: sorted by absolute path, every ``world_size``-th one
    from ``rank``, so ranks never overlap and together cover every input."""
    out_dir = Path(out_dir)
    # A broken link stays itself (resolving it would report its target instead).
    found = {(src.resolve() if src.exists() else src.absolute(), name)
             for src, name in collect_inputs(inputs)}
    # A video found twice (in a folder and a list naming it, or through a link) is one job,
    # under its own file name if found by it, else the name that keeps the most folders.
    pairs, seen = [], {}
    for src, name in sorted(found, key=lambda p: (p[0], p[1].name != p[0].stem,
                                                  -len(p[1].parts), p[1])):
        if src not in seen:
            seen[src] = name
            pairs.append((src, name))
        elif name.name != seen[src].name and rank == 0:
            logger.info(f"{name} and {seen[src]} name one video ({src}): its features are "
                        f"saved once, as {seen[src]}")
    names: dict[Path, int] = {}
    for _, name in pairs:
        names[name] = names.get(name, 0) + 1
    jobs = []
    for src, name in pairs:
        # The same file name from different places: both kept, distinctly, each under a
        # digest of its path but the one whose features the plain name holds already (an
        # earlier run's: a run that adds the other keeps them, not a copy under a new name).
        output = _output(out_dir, name)
        if names[name] > 1 and output_source(output) != as_recorded(src):
            digest = hashlib.sha1(str(src).encode()).hexdigest()[:8]
            output = _output(out_dir, name.with_name(f"{name.name}-{digest}"))
        jobs.append(VideoJob(src, output))
    return jobs[rank::world_size]


def _output(out_dir: Path, name: Path) -> Path:
    """``OUT/NAME.safetensors``, a name near the file system's limit shortened (appended, not
    with_suffix: "meeting.2024-01-05" has a "suffix" that would be cut)."""
    stem = name.name
    if len(os.fsencode(stem)) + len(_LONGEST_SUFFIX) > NAME_MAX:
        stem = fit_name(stem, len(_LONGEST_SUFFIX))
    return out_dir / name.with_name(stem + ".safetensors")


def output_source(output: Path) -> str | None:
    """The video whose features ``output`` holds (its metadata's ``source``), if any."""
    try:
        meta = read_safetensors_metadata(output) if output.is_file() else None
    except OSError:  # not a name this file system takes, say: nothing held
        return None
    return (meta or {}).get("source")


def other_source(output: Path, source: str) -> str | None:
    """The video ``output`` was made from, when that is another file that still exists."""
    other = output_source(output)
    return other if other not in (None, source) and Path(other).is_file() else None


def name_clash(output: Path, other: str, verb: str) -> FileExistsError:
    """The error for ``output``, which ``verb`` (holds, is writing) the features of ``other``."""
    return FileExistsError(f"{output} {verb} the features of {other}, another video of the "
                           "same name; extract both in one run (it keeps the name, this one gets "
                           "a digest of its path) or into another --out")


def as_recorded(source: Path) -> str:
    """``source`` as an output's metadata records it: UTF-8, other bytes escaped."""
    return os.fsencode(source).decode("utf-8", errors="backslashreplace")


def covered_by(inputs: Iterable[str | os.PathLike],
               jobs: Iterable[VideoJob]) -> Callable[[str], bool]:
    """Whether a video path is one that a job over ``inputs`` would find if it were there: it
    lies under an input folder, or in the folder of a video the job reads (found, listed or
    named). A ``failures.csv`` row of such a video that is gone is stale; jobs sharing the
    output folder over other places keep theirs."""
    trees = [Path(item).resolve() for item in inputs if Path(item).is_dir()]
    folders = {job.source.parent.resolve() for job in jobs}

    def covers(video: str) -> bool:
        # Resolved as the sources are (a video's path in failures.csv is its resolved one).
        parent = Path(video).parent.resolve()
        return parent in folders or any(parent.is_relative_to(tree) for tree in trees)

    return covers
