"""Benchmark: whole long videos through Spool in one pass (``Spool.forward_long``).

    python bench/long_video.py [--frames 900 1800 3600 7200] [--sizes small base]
                               [--workdir DIR] [--no-docs] [--again]

For each model size and video length, a fresh process decodes a synthetic 224x224 video of that
many frames, encodes every frame with a randomly initialised DINOv2-S- or B-sized backbone and
runs 12 temporal layers (w = 16) chunk by chunk. It reports peak RSS and time per frame, the
RSS slope per frame against the bar (4x the fp32 hidden state of a frame plus the stored
output), writes a table and a plot to docs/benchmarks.md / docs/long_video.png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

HEADING = "Long videos in one pass"
SIZES = {  # DINOv2 ViT-S/14 and ViT-B/14 at 224 px (random weights), 12 temporal layers
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                  intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072),
}
W, LAYERS, CHUNK = 16, 12, 32


def make_video(path: Path, num_frames: int) -> Path:
    """A 224x224 clip of moving, textured content (written once, cached)."""
    import numpy as np

    from spool.video import write_video

    if path.is_file():
        return path
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (224 + 8 * num_frames // 50 + 8, 224 + 8, 3), np.uint8)

    def frames():
        for i in range(num_frames):
            top = (8 * i) // 50
            yield np.ascontiguousarray(texture[top:top + 224, (i % 8):(i % 8) + 224])

    return write_video(path, frames(), fps=25, codec="libx264", gop_size=50)


def child(size: str, num_frames: int, video: str) -> dict:
    """One measurement, in its own process (peak RSS is per process)."""
    import torch

    from spool import Spool
    from spool.runtime import tune_cpu_allocator
    from spool.video.samplers import StrideSampler

    tune_cpu_allocator()  # as the spool CLI runs
    torch.manual_seed(0)
    backbone = dict(model_type="dinov2", patch_size=14, image_size=224, **SIZES[size])
    heads = SIZES[size]["hidden_size"] // 64  # head_dim 64, as the backbone's own heads
    model = Spool(num_hidden_layers=LAYERS, num_attention_heads=heads,
                  num_lookback_heads=heads // 2, num_lookahead_heads=heads - heads // 2,
                  local_frame_range=W, image_size=224, backbone_config=backbone).eval()
    encode = {"seconds": 0.0}
    forward = model.backbone.forward

    encode["cpu_seconds"] = 0.0

    def timed(*args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        out = forward(*args, **kwargs)
        encode["seconds"] += time.perf_counter() - start
        encode["cpu_seconds"] += time.process_time() - cpu
        return out

    model.backbone.forward = timed
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    load_before = os.getloadavg()[0]
    start, cpu = time.perf_counter(), time.process_time()
    out = model.forward_long(video, sampler=StrideSampler(1), chunk_frames=CHUNK)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert out.frame_features.shape[0] == num_frames
    L, D = model.config.num_spatial_tokens, model.config.hidden_size
    return {"size": size, "frames": num_frames, "L": L, "D": D, "heads": heads,
            "seconds": seconds, "cpu_seconds": cpu_seconds,
            "encode_seconds": encode["seconds"], "encode_cpu_seconds": encode["cpu_seconds"],
            "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "peak_rss": peak, "rss_before": rss_before,
            "threads": torch.get_num_threads()}


def measure(size: str, num_frames: int, workdir: Path) -> dict:
    video = make_video(workdir / f"synthetic_{num_frames}.mp4", num_frames)
    cmd = [sys.executable, __file__, "--child", size, str(num_frames), str(video)]
    # Passive OpenMP waiting: CPU time then counts work, not spinning, so it stays a fair
    # measure when other jobs share the cores (wall time does not).
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"size": size, "frames": num_frames, "error": proc.stderr.strip()[-400:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(rows: list[dict]) -> str:
    from _report import machine

    GiB = 2**30
    lines = ["| model | frames | peak RSS (GiB) | CPU ms/frame (all) | CPU backbone | "
             "CPU temporal | wall ms/frame | load avg (start, end) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']} | {r['frames']} | failed: {r['error'][:80]} |"
                         " | | | | |")
            continue
        n = r["frames"]
        lines.append(f"| DINOv2-{r['size'][0].upper()}-sized | {n} | "
                     f"{r['peak_rss'] / GiB:.2f} | {1000 * r['cpu_seconds'] / n:.0f} | "
                     f"{1000 * r['encode_cpu_seconds'] / n:.0f} | "
                     f"{1000 * (r['cpu_seconds'] - r['encode_cpu_seconds']) / n:.0f} | "
                     f"{1000 * r['seconds'] / n:.0f} | {r['load'][0]}, {r['load'][1]} |")
    notes = []
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for r in rows:
        if r["size"] == "base" and r["frames"] >= 3600 and "error" not in r:
            notes.append(f"- base, {r['frames']} frames in one pass: peak RSS "
                         f"{r['peak_rss'] / GiB:.2f} GiB of this machine's {total / GiB:.1f} GiB "
                         f"(bar: runs in one pass on this machine: met).")
    for size in SIZES:
        done = sorted((r for r in rows if r["size"] == size and "error" not in r),
                      key=lambda r: r["frames"])
        if len(done) < 2:
            continue
        lo, hi = done[0], done[-1]
        frame = lo["L"] * lo["D"] * 4
        slope = (hi["peak_rss"] - lo["peak_rss"]) / (hi["frames"] - lo["frames"])
        bar = 4 * frame + lo["D"] * 4 + 16  # + frame features, index and timestamp
        ratio = (hi["cpu_seconds"] / hi["frames"]) / (lo["cpu_seconds"] / lo["frames"])
        wall = (hi["seconds"] / hi["frames"]) / (lo["seconds"] / lo["frames"])
        notes.append(
            f"- {size}: RSS slope {slope / 2**20:.2f} MiB/frame from {lo['frames']} to "
            f"{hi['frames']} frames = {slope / frame:.2f}x the fp32 hidden state of a frame "
            f"(L={lo['L']}, D={lo['D']}: {frame / 2**20:.2f} MiB); bar <= "
            f"{bar / 2**20:.2f} MiB/frame: {'met' if slope <= bar else 'NOT met'}. "
            f"CPU time per frame at {hi['frames']} / at {lo['frames']}: {ratio:.2f} (bar <= "
            f"1.2: {'met' if ratio <= 1.2 else 'NOT met'}; wall time: {wall:.2f}).")
    commands = list(dict.fromkeys(r.get("command", "?") for r in rows))
    return ("Commands (results accumulate in the workdir): "
            + ", then ".join(f"`{c}`" for c in commands)
            + f"\n\nMachine: {machine()}. Each row is a fresh process: a "
            f"synthetic 224x224 H.264 video of that many frames, every frame sampled, decoded "
            f"and encoded in chunks by a random DINOv2-sized backbone, then {LAYERS} temporal "
            f"layers (w = {W}, D / 64 heads: 6 for S, 12 for B) over {CHUNK}-frame chunks, "
            f"in place (`Spool.forward_long`). Peak RSS is the process's (model weights "
            f"included). Time is the process's CPU time (user + system, OpenMP waiting "
            f"passively): the machine is shared, and the wall time, given beside it with the "
            f"load average, moves with whatever else runs.\n\n"
            + "\n".join(lines) + "\n\n" + "\n".join(notes)
            + "\n\n![long videos](long_video.png)\n")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(10, 3.8))
    for size in SIZES:
        done = sorted((r for r in rows if r["size"] == size and "error" not in r),
                      key=lambda r: r["frames"])
        if not done:
            continue
        n = [r["frames"] for r in done]
        ax_mem.plot(n, [r["peak_rss"] / 2**30 for r in done], "o-", label=size)
        ax_time.plot(n, [1000 * r["cpu_seconds"] / r["frames"] for r in done], "o-",
                     label=size)
    ax_mem.set(xlabel="frames in one pass", ylabel="peak RSS (GiB)", title="Memory",
               ylim=(0, None))
    ax_time.set(xlabel="frames in one pass", ylabel="CPU ms per frame", title="Time per frame",
                ylim=(0, None))
    for ax in (ax_mem, ax_time):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[900, 1800, 3600])
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--workdir", default=os.path.join("/tmp", "spool-bench-long"))
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--again", action="store_true", help="measure again what is stored")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # Results accumulate in the workdir, so the sizes can be measured in separate runs (each
    # takes a while) and the report shows them all; a measured (size, frames) is kept.
    store = workdir / "results.json"
    done = {(r["size"], r["frames"]): r for r in
            (json.loads(store.read_text()) if store.is_file() else [])}
    command = "python bench/long_video.py " + " ".join(sys.argv[1:])
    for size in args.sizes:
        for n in args.frames:
            if (size, n) not in done or "error" in done[(size, n)] or args.again:
                done[(size, n)] = dict(measure(size, n, workdir), command=command.strip())
                store.write_text(json.dumps(list(done.values()), indent=1))
            print(json.dumps(done[(size, n)]), flush=True)
    rows = sorted(done.values(), key=lambda r: (list(SIZES).index(r["size"]), r["frames"]))
    text = report(rows)
    print(text)
    if not args.no_docs:
        from _report import update_section

        plot(rows, ROOT / "docs" / "long_video.png")
        update_section(ROOT / "docs" / "benchmarks.md", HEADING, text)


if __name__ == "__main__":
    main()
