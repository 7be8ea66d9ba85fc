"""Research (issue 13): does more real footage teach the arrow of time? The demo's own pipeline
(``run_real_demo``, arrow task only, its settings) on its 7 clips plus the camera-shot clips
of the four best extra registry sources in ``footage_sources.md`` (torchvision's and
libopenshot's Debian source tarballs, the idtrackerai sdist, Debian's python3-mecavideo):
28 videos, 306 s at 8 fps instead of 130 s.

The extra clips are not fetched here: ``--footage`` is a directory holding them and
``videos.json`` (one record per file: ``cls``, ``pkg``, ``inner``, ``local``), as the search
behind ``footage_sources.md`` left them. Clips that do not decode at 8 fps are skipped.

    python research/arrow_more_footage.py --footage /tmp/footage-search --seed 0 --out /tmp/a0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spool.demo.footage_tokens import demo_videos  # noqa: E402
from spool.demo.real_footage import RealDemoSettings, run_real_demo  # noqa: E402
from spool.video import VideoReader  # noqa: E402
from spool.video.samplers import FpsSampler  # noqa: E402

SOURCES = ("pytorch-vision", "libopenshot", "idtrackerai", "python3-mecavideo")


def extra_clips(root: Path, fps: float) -> list[tuple[str, Path]]:
    """(name, path) of the camera-shot clips of ``SOURCES`` that decode at ``fps``."""
    found = []
    for record in json.loads((root / "videos.json").read_text()):
        if record["cls"] != "REAL" or not record["pkg"].startswith(SOURCES):
            continue
        name = record["pkg"].split()[0] + "__" + Path(record["inner"]).name
        path = root / record["local"]
        try:
            with VideoReader(path) as reader:
                reader.get(FpsSampler(fps)(len(reader), fps=reader.info().fps)[0])
        except Exception as err:  # a damaged clip is reported and left out
            print(f"skipped {name}: {err}", flush=True)
            continue
        found.append((name, path))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--footage", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = RealDemoSettings(seed=args.seed, tasks=("arrow",))
    videos = demo_videos(download=False) + extra_clips(args.footage, settings.fps)
    summary = run_real_demo(args.out, settings, videos=videos, download=False, figures=False)
    for name, r in summary["results"]["arrow"].items():
        print(f"{name}: held-out {100 * r['test_top1']:.1f}%, train {100 * r['train_top1']:.1f}%")


if __name__ == "__main__":
    main()
