"""Peak RAM of the plain forward over one long clip, per frame, in frames' worth of hidden
state: the basis of ``spool extract``'s memory check in clip mode (``fps`` and ``stride``
take a whole video as one clip; ``FeatureExtractor._check_memory`` charges 18 frames' worth
of hidden state per frame for the model, 6 for ``--backbone-only``, besides the pixels).

Each case runs in a fresh process: the model, a random clip ``[1, T, H, W, 3]`` (its pixels
allocated before the baseline is read), then ``model(clip)`` (or ``encode_frames``) under
``no_grad``; the growth of peak RSS over two lengths, per frame, over ``L x D x 4`` bytes.

    python bench/clip_memory.py --lengths 250 1000 --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _report import machine, publish  # noqa: E402

SECTION = "Clip mode: peak RAM of the plain forward per frame"
MODELS = {  # random DINOv2 backbones, Spool stacks on their tokens
    "D=96, 64 px, patch 8 (65 tokens), 2+2 layers": dict(
        hidden=96, size=64, patch=8, layers=2, heads=2),
    "D=192, 112 px, patch 14 (65 tokens), 4+4 layers": dict(
        hidden=192, size=112, patch=14, layers=4, heads=3),
}


def _child(spec: dict, frames: int, backbone_only: bool) -> dict:
    import resource

    import torch

    from spool import Spool, SpoolConfig

    heads = spec["heads"]
    config = SpoolConfig(
        backbone_config={"model_type": "dinov2", "hidden_size": spec["hidden"],
                         "num_hidden_layers": spec["layers"], "num_attention_heads": heads,
                         "intermediate_size": 4 * spec["hidden"], "patch_size": spec["patch"],
                         "image_size": spec["size"]},
        image_size=spec["size"], hidden_size=spec["hidden"], num_attention_heads=2 * heads,
        num_lookback_heads=heads, num_lookahead_heads=heads, num_hidden_layers=spec["layers"])
    torch.manual_seed(0)
    model = Spool(config).eval()
    clip = torch.rand(1, frames, spec["size"], spec["size"], 3)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        model.encode_frames(clip) if backbone_only else model(clip)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"growth": (peak - base) * 1024, "tokens": model.config.num_spatial_tokens,
            "hidden": config.hidden_size}


def measure(spec: dict, lengths: list[int], backbone_only: bool) -> dict:
    runs = []
    for frames in lengths:
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(
            [spec, frames, backbone_only])], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    per_frame = (runs[-1]["growth"] - runs[0]["growth"]) / (lengths[-1] - lengths[0])
    frame = runs[0]["tokens"] * runs[0]["hidden"] * 4
    return {"mb": [r["growth"] / 2**20 for r in runs], "per_frame": per_frame,
            "factor": per_frame / frame}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs=2, default=[250, 1000])
    parser.add_argument("--out", default=None, help="docs/benchmarks.md to update")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_child(*json.loads(args.child))))
        return
    lo, hi = args.lengths
    rows = [f"| model | forward | peak RSS growth at T={lo} / T={hi} (MB) | per frame (KB) | "
            "frames' worth of hidden state per frame | charged by the check |",
            "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, spec in MODELS.items():
        for backbone_only in (False, True):
            r = measure(spec, args.lengths, backbone_only)
            rows.append(f"| {name} | {'encode_frames' if backbone_only else 'model(clip)'} | "
                        f"{r['mb'][0]:.0f} / {r['mb'][1]:.0f} | {r['per_frame'] / 1024:.0f} | "
                        f"{r['factor']:.1f} | {6 if backbone_only else 18} |")
            print(rows[-1], flush=True)
    body = (f"Command: `python bench/clip_memory.py --lengths {lo} {hi} --out "
            f"docs/benchmarks.md`\n\nMachine: {machine()}. CPU, fp32, `no_grad`, one process "
            "per case; the clip's pixels are allocated before the baseline (the check charges "
            "them apart).\n\n" + "\n".join(rows) + "\n")
    publish(args.out, SECTION, body)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
