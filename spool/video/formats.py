"""The file extensions Spool takes for videos: one list for every command.

``spool extract`` folders, class folders of ``spool cache`` / ``spool train`` / ``spool eval``
and MS-TCN ``videos/`` all search for these, so the same folder gives the same videos to each.
"""

from __future__ import annotations

from pathlib import Path

# In order of preference where a name is looked up by stem (MS-TCN ``videos/<stem>.*``).
# Camcorders write .mts/.m2ts (AVCHD), DVDs .vob, broadcast .mxf. Not .ogg: mostly audio.
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".ts",
                    ".flv", ".wmv", ".3gp", ".ogv", ".gif", ".mts", ".m2ts", ".vob", ".mxf",
                    ".dv", ".f4v", ".3g2", ".asf", ".divx", ".y4m")


def is_video_name(path: str | Path) -> bool:
    """Whether ``path``'s extension (any case) is a video's."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS
