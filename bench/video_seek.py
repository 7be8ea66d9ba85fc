"""Benchmark: 16 uniformly spaced frames from a 2-minute 720p H.264 video, seeking vs. decoding all.

    python bench/video_seek.py [--workdir DIR] [--gops 250,50,25] [--runs 3] [--no-docs]

Generates the test videos (cached in --workdir), checks that both methods return identical
frames, prints a markdown table and writes it to docs/benchmarks.md under its own heading.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, update_section  # noqa: E402

from spool.video.io import VideoReader, clear_index_cache, read_video_frames, write_video  # noqa: E402
from spool.video.samplers import UniformSampler  # noqa: E402

HEADING = "Video decoding: seeking vs. decoding everything"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def synthetic_frames(num: int, width: int, height: int) -> Iterator[np.ndarray]:
    """A panning textured scene, a moving box and per-frame grain: camera-like decode cost."""
    rng = np.random.default_rng(0)
    pan = 2  # pixels per frame
    small = rng.integers(0, 256, (height // 4 + 2, (width + pan * num) // 4 + 2, 3), np.uint8)
    texture = np.repeat(np.repeat(small, 4, 0), 4, 1)
    # Low-bit grain, different every frame (7 patterns, a period prime to any keyframe
    # interval tested): every frame carries a residual, as real footage does.
    grain = rng.integers(0, 8, (7, height, width, 3), np.uint8)
    for i in range(num):
        frame = texture[:height, i * pan:i * pan + width] ^ grain[i % 7]
        x, y = (7 * i) % (width - 80), (3 * i) % (height - 80)
        frame[y:y + 80, x:x + 80] = (255, 255 - i % 256, 0)
        yield frame


def make_video(workdir: Path, gop: int, seconds: int, fps: int, width: int, height: int) -> Path:
    path = workdir / f"bench_{width}x{height}_{seconds}s_{fps}fps_gop{gop}.mp4"
    if not path.exists():
        tmp = path.with_name(path.stem + ".part.mp4")
        start = time.perf_counter()
        write_video(tmp, synthetic_frames(seconds * fps, width, height), fps=fps,
                    codec="libx264", gop_size=gop,
                    options={"preset": "ultrafast", "crf": "23", "x264-params": "scenecut=0"})
        tmp.rename(path)
        print(f"generated {path.name} in {time.perf_counter() - start:.1f} s", flush=True)
    return path


def median_times(fns: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median wall time of each function; runs are interleaved so that load from other
    processes on a shared machine falls on all methods alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def decode_all(path: Path, indices: list[int], convert_all: bool = False) -> np.ndarray:
    """The baseline: a plain PyAV loop over every frame, converting the picked ones to RGB
    (or every frame, as a read-everything loader does, with ``convert_all``)."""
    wanted, picked = set(indices), {}
    with av.open(str(path)) as c:
        c.streams.video[0].thread_type = "AUTO"
        for i, frame in enumerate(c.decode(video=0)):
            if convert_all or i in wanted:
                rgb = frame.to_ndarray(format="rgb24")
                if i in wanted:
                    picked[i] = rgb
    return np.stack([picked[i] for i in indices])


def bench_one(path: Path, num: int, runs: int, convert_all: bool) -> dict[str, float]:
    with VideoReader(path) as reader:
        n, keys = len(reader), int(np.unique(reader.index.seek_pos).size)
        indices = UniformSampler(num)(n)[0]
        reader.get(indices)
        seeks = reader.num_seeks

    def seek() -> np.ndarray:
        clear_index_cache()  # cold: the packet demux that builds the index is counted
        return read_video_frames(path, indices)[0]

    assert np.array_equal(seek(), decode_all(path, indices)), "seek and full decode disagree"
    fns: dict[str, Callable[[], object]] = {
        "seek": seek,
        "seek_warm": lambda: read_video_frames(path, indices),
        "full": lambda: decode_all(path, indices),
    }
    if convert_all:
        fns["full_rgb"] = lambda: decode_all(path, indices, True)
    return {"frames": n, "keyframes": keys, "seeks": seeks, **median_times(fns, runs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None, help="cache dir for the videos")
    ap.add_argument("--gops", default="250,50,25", help="keyframe intervals (frames) to test")
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-convert-all", action="store_true", help="skip that slow baseline")
    ap.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="spool-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)

    rows = []
    for gop in (int(g) for g in args.gops.split(",")):
        path = make_video(workdir, gop, args.seconds, args.fps, width, height)
        row = bench_one(path, args.frames, args.runs, not args.no_convert_all)
        rows.append((gop, row))
        print(gop, {k: round(v, 3) for k, v in row.items()}, flush=True)

    cmd = "python bench/video_seek.py " + " ".join(sys.argv[1:])
    where = (f"{platform.system()} {platform.machine()}, {machine()}, Python "
             f"{platform.python_version()}, PyAV {av.__version__} (FFmpeg "
             f"{av.ffmpeg_version_info}); load average at the end {os.getloadavg()[0]:.1f} "
             "(the machine may be shared)")
    has_rgb = not args.no_convert_all
    head = ("| keyframe every | seeks | seek, cold index (s) | seek, cached index (s) "
            "| decode all (s) |" + (" decode all + RGB all (s) |" if has_rgb else "")
            + " speed-up (decode all / seek cold) |")
    sep = "|" + "---|" * (head.count("|") - 1)
    table = [head, sep]
    for gop, r in rows:
        table.append(
            f"| {gop} frames ({gop / args.fps:g} s) | {r['seeks']} | {r['seek']:.3f} "
            f"| {r['seek_warm']:.3f} | {r['full']:.3f} |"
            + (f" {r['full_rgb']:.3f} |" if has_rgb else "")
            + f" **{r['full'] / r['seek']:.1f}x** |")
    n = rows[0][1]["frames"]
    meets = [g for g, r in rows if r["full"] / r["seek"] >= 5]
    misses = [g for g, r in rows if r["full"] / r["seek"] < 5]
    verdict = "Bar (seeking >= 5x faster than decoding everything): " + "; ".join(
        f"{what} with a keyframe every {', '.join(map(str, gops))} frames"
        for what, gops in (("met", meets), ("not met", misses)) if gops) + "."
    body = f"""Taking {args.frames} uniformly spaced frames (`UniformSampler({args.frames})`, the
centres of {args.frames} equal segments) from a {args.seconds} s {width}x{height}
{args.fps} fps H.264 video ({n} frames; libx264 ultrafast, crf 23, no B-frames, fixed
keyframe interval).
"seek" is `read_video_frames(path, indices)` (strategy "auto": seek to the keyframe before a
needed frame where that saves decoding); "cold index" counts the packet demux that builds the
frame index, "cached" reuses it (the same file read again, e.g. in a later epoch). "decode all"
is a plain PyAV loop that decodes every frame from the start and converts only the picked ones
to RGB; "+ RGB all" converts every frame, as a read-everything loader does. Median of
{args.runs} runs; seek and decode-all return identical frames (checked).

- Command: `{cmd}`
- Machine: {where}

{chr(10).join(table)}

{verdict}

Seeking decodes from the keyframe before each wanted frame, so its cost is about
{args.frames} x (keyframe interval / 2) frames, against {n} for decoding everything: the
speed-up is bounded by roughly {n} / ({args.frames} x interval / 2), i.e. it depends on the
keyframe interval of the file, not on the reader.
"""
    print(f"\n## {HEADING}\n\n{body}")
    if not args.no_docs:
        update_section(DOCS, HEADING, body)
        print(f"wrote {DOCS}")


if __name__ == "__main__":
    main()
