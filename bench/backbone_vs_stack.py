"""Time per frame: the DINOv2-S backbone at 224 px next to Spool's temporal stack (inference).

The backbone is the converted DINOv2-S (``spool backbone import dinov2-small``) when it is in
Spool's cache, else a randomly initialised model of the same size (the time is the same). The
temporal stack runs on that backbone's tokens (D = 384): on all 257 tokens per frame, and on
the class token alone as ``spool demo --real`` does, in the demo's configuration and in a
deeper one.

    python bench/backbone_vs_stack.py --out docs/benchmarks.md     # ~2 minutes on 2 cores
    python bench/backbone_vs_stack.py --tiny                       # smoke test, seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's spool
from _report import machine, update_section  # noqa: E402

HEADING = "Backbone vs temporal stack: time per frame"
DINOV2_SMALL = dict(model_type="dinov2", hidden_size=384, num_hidden_layers=12,
                    num_attention_heads=6, intermediate_size=1536, patch_size=14,
                    image_size=224)
TINY = dict(model_type="dinov2", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=64, patch_size=8, image_size=32)
# (label, layers, heads, local_frame_range, mlp_ratio)
STACKS = [("demo: 2 layers, 6 heads, w=4, MLP x1", 2, 6, 4, 1.0),
          ("12 layers, 6 heads, w=16, MLP x4", 12, 6, 16, 4.0)]


def timed(fn, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def backbone(tiny: bool, random_weights: bool):
    """(FrameEncoderModel, description)."""
    from spool.models.frame_encoder import FrameEncoderModel

    if tiny:
        torch.manual_seed(0)
        return (FrameEncoderModel(backbone_config=TINY, image_size=32, crop_pct=1.0).eval(),
                "tiny random DINOv2 (smoke test)")
    from spool.downloads import cache_dir

    converted = cache_dir("backbones", "dinov2-small")
    if not random_weights and (converted / "model.safetensors").is_file():
        return (FrameEncoderModel(backbone_name=str(converted), image_size=224).eval(),
                f"DINOv2-S converted weights ({converted})")
    torch.manual_seed(0)
    return (FrameEncoderModel(backbone_config=DINOV2_SMALL, image_size=224).eval(),
            "DINOv2-S-sized random init (no converted weights found)")


def stack(layers: int, heads: int, window: int, mlp_ratio: float, tokens: int, hidden: int):
    from spool.config import SpoolConfig
    from spool.models.spool import Spool

    config = SpoolConfig(num_hidden_layers=layers, num_attention_heads=heads,
                         num_lookback_heads=heads // 2, num_lookahead_heads=heads - heads // 2,
                         local_frame_range=window, mlp_ratio=mlp_ratio, hidden_size=hidden,
                         num_spatial_tokens=tokens)
    return Spool(config, with_backbone=False).eval()


def measure(args: argparse.Namespace) -> tuple[list[tuple[str, str, int, float]], str]:
    encoder, what = backbone(args.tiny, args.random)
    size = encoder.config.image_size
    frames = torch.randint(0, 256, (1, args.frames, size, size, 3), dtype=torch.uint8)
    rows = []
    with torch.inference_mode():
        tokens = encoder.encode_frames(frames)
        secs = timed(lambda: encoder.encode_frames(frames), args.repeat)
        L, D = tokens.shape[2], tokens.shape[3]
        rows.append(("backbone", what, L, secs / args.frames))
        stacks = STACKS[:1] if args.tiny else STACKS
        for label, layers, heads, window, ratio in stacks:
            heads = min(heads, D // 8)  # --tiny: D = 32
            for length in (L, 1):
                model = stack(layers, heads, window, ratio, length, D)
                x = tokens[:, :, :length].contiguous()
                secs = timed(lambda m=model, x=x: m.forward_tokens(x), args.repeat)
                rows.append(("temporal stack", label, length, secs / args.frames))
    return rows, what


def table(rows: list[tuple[str, str, int, float]]) -> str:
    base = rows[0][3]
    lines = ["| part | configuration | tokens per frame | ms per frame | vs backbone |",
             "| --- | --- | ---: | ---: | ---: |"]
    for part, label, length, secs in rows:
        lines.append(f"| {part} | {label} | {length} | {1000 * secs:.2f} | "
                     f"{secs / base:.3f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32, help="frames per timed call (32)")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls; median (5)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    parser.add_argument("--random", action="store_true",
                        help="random DINOv2-S-sized weights even if the converted ones exist")
    parser.add_argument("--tiny", action="store_true", help="smoke test at toy size")
    parser.add_argument("--out", help="write the table under its heading in this markdown")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, _ = measure(args)
    text = table(rows)
    print(text)
    if args.out:
        command = "python bench/backbone_vs_stack.py " + " ".join(sys.argv[1:])
        body = (f"`{command}` on {machine()}; inference, batch 1, {args.frames} frames per "
                f"call, median of {args.repeat} calls.\n\n{text}\n\n"
                "The backbone runs once per frame and its tokens can be cached (`spool "
                "cache`); the temporal stack runs on every frame's tokens at the backbone's "
                "width: on all of them, or on the class token alone as `spool demo --real` does. "
                "\"vs backbone\" is the stack's time per frame over the backbone's.")
        update_section(args.out, HEADING, body)
        print(f"wrote the table under '## {HEADING}' in {args.out}")


if __name__ == "__main__":
    main()
