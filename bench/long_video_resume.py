"""What a resumable long pass costs: ``forward_long`` with its hidden state in RAM, in an
offload file, and in a resumable state (``resume=``, what ``spool extract --per-frame
--offload-dir`` uses: two files, a copy of the state before each layer, a synced record), and
a resumable pass interrupted halfway through a layer then taken up again (the two runs'
total, the interrupted layer's lost half included).

The modes alternate within each round in one process, so load from other processes falls on
all alike; the table gives the median over rounds and the ratio to RAM.

    python bench/long_video_resume.py --frames 600 --rounds 3 --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _report import machine, publish  # noqa: E402

SECTION = "Long videos: the cost of a resumable pass"
MODES = ("RAM", "offload_dir", "resume", "resume, interrupted in the middle layer")


def _model(layers: int, tokens: int, hidden: int):
    import torch

    from spool import Spool, SpoolConfig

    heads = hidden // 64
    torch.manual_seed(0)
    config = SpoolConfig(hidden_size=hidden, num_spatial_tokens=tokens, num_hidden_layers=layers,
                         num_attention_heads=heads, num_lookback_heads=heads // 2,
                         num_lookahead_heads=heads - heads // 2, local_frame_range=16)
    return Spool(config, with_backbone=False).eval()


def _run(model, tokens, mode: str, scratch: Path) -> float:
    import spool.layers.streaming as streaming
    from spool.models.long_video_state import resumable_pass

    start = time.perf_counter()
    if mode == "RAM":
        model.forward_long(tokens)
    elif mode == "offload_dir":
        model.forward_long(tokens, offload_dir=scratch)
    elif mode == "resume":
        with resumable_pass(scratch, "v.safetensors", "k") as state:
            model.forward_long(tokens, resume=state)
    else:
        real, calls = streaming._stream_layer, []
        middle = model.config.num_hidden_layers // 2

        def stopped(block, x, chunk, device, progress=None):
            calls.append(1)
            if len(calls) - 1 == middle:  # half the layer's chunks, then the "signal"
                def halfway(n, seen=[0]):  # noqa: B006
                    seen[0] += n
                    if seen[0] >= x.shape[0] // 2:
                        raise KeyboardInterrupt
                return real(block, x, chunk, device, halfway)
            return real(block, x, chunk, device, progress)

        streaming._stream_layer = stopped
        try:
            with resumable_pass(scratch, "v.safetensors", "k") as state:
                model.forward_long(tokens, resume=state)
        except KeyboardInterrupt:
            pass
        finally:
            streaming._stream_layer = real
        with resumable_pass(scratch, "v.safetensors", "k") as state:
            model.forward_long(tokens, resume=state)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--tokens", type=int, default=65, help="L (65: DINOv2 at 224, k = 2)")
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="docs/benchmarks.md to update")
    args = parser.parse_args()
    import torch

    model = _model(args.layers, args.tokens, args.hidden)
    tokens = torch.randn(args.frames, args.tokens, args.hidden)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as scratch:
        for r in range(args.rounds):
            order = MODES if r % 2 == 0 else MODES[::-1]
            for mode in order:
                times[mode].append(_run(model, tokens, mode, Path(scratch)))
                print(f"round {r}: {mode}: {times[mode][-1]:.1f} s", flush=True)
    ram = statistics.median(times["RAM"])
    state_mb = 2 * (args.frames + 2) * args.tokens * args.hidden * 4 / 2**20
    rows = ["| hidden state | s per pass (median) | per round | vs RAM |",
            "| --- | --: | --- | --: |"]
    for mode in MODES:
        median = statistics.median(times[mode])
        rows.append(f"| {mode} | {median:.1f} | {', '.join(f'{t:.1f}' for t in times[mode])} "
                    f"| {median / ram:.3f} |")
    command = (f"python bench/long_video_resume.py --frames {args.frames} --tokens "
               f"{args.tokens} --hidden {args.hidden} --layers {args.layers} --rounds "
               f"{args.rounds} --out docs/benchmarks.md")
    body = (f"Command: `{command}`\n\nMachine: {machine()}. Temporal stack only (random "
            f"weights, {args.layers} layers, D = {args.hidden}, w = 16, chunks of 32 frames) "
            f"over random tokens [{args.frames}, {args.tokens}, {args.hidden}], fp32; the "
            f"resumable state takes {state_mb:.0f} MB on disk (two copies). The modes "
            "alternate in one process, the order reversed every round.\n\n"
            + "\n".join(rows) + "\n")
    publish(args.out, SECTION, body)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
