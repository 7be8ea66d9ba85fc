"""Forward time and peak memory of Spool's temporal stack against video length T.

Base size (D=768, 12 heads split 6/6, L=257, w=4, 2 layers), batch 1, fp32 on CPU, for the
``blocked``, ``flex`` (compiled; forward only on CPU) and ``reference`` (dense mask)
attention. Each (implementation, T) runs in its own process so its peak RSS is its own.
Writes a table to docs/benchmarks.md and a PNG plot.

    python bench/scaling.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import available_mb, machine, peak_rss_mb, rss_mb, update_section  # noqa: E402

D, HEADS, L, W, LAYERS = 768, 12, 257, 4, 2
HEADING = "Scaling of the temporal stack with video length"


def dense_bytes(T: int) -> float:
    """Peak of the dense reference: measured at about 14 bytes per element of the
    [H, FL, FL] mask (bool mask, its intermediates and SDPA's float copy of it)."""
    n = (T + 2) * L
    return 14 * HEADS * n * n


def worker(impl: str, T: int, repeats: int) -> dict:
    import torch

    from spool import Spool, SpoolConfig

    config = SpoolConfig(num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                         num_lookback_heads=HEADS // 2, num_lookahead_heads=HEADS // 2,
                         local_frame_range=W, hidden_size=D, num_spatial_tokens=L,
                         attn_implementation=impl)
    model = Spool(config, with_backbone=False).eval()
    tokens = torch.randn(1, T, L, D)
    base = rss_mb()
    times = []
    with torch.no_grad():
        model.forward_tokens(tokens)  # warm-up (and caches the masks)
        for _ in range(repeats):
            start = time.perf_counter()
            model.forward_tokens(tokens)
            times.append(time.perf_counter() - start)
    return {"best_s": min(times), "median_s": statistics.median(times),
            "peak_mb": peak_rss_mb() - base}


def run_one(impl: str, T: int, repeats: int) -> dict:
    if impl == "reference":
        need = dense_bytes(T) / 2**20
        if need > 0.6 * available_mb():
            return {"skipped": f"out of memory: needs ~{need / 1024:.0f} GiB"}
    cmd = [sys.executable, __file__, "--worker", impl, str(T), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode < 0:
        return {"skipped": f"killed by signal {-proc.returncode} (out of memory)"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        return {"skipped": f"failed ({last[:80]})"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for impl, rows in results.items():
        ok = [(T, r) for T, r in rows.items() if "skipped" not in r]
        Ts = [T for T, _ in ok]
        ax_t.plot(Ts, [r["best_s"] / T * 1e3 for T, r in ok], "o-", label=impl)
        ax_m.plot(Ts, [r["peak_mb"] / T for T, r in ok], "o-", label=impl)
    for ax, label in ((ax_t, "forward time per frame (ms)"),
                      (ax_m, "peak memory per frame (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("frames T")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"Spool temporal stack, D={D}, L={L}, w={W}, {LAYERS} layers, CPU fp32")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--impls", nargs="+", default=["blocked", "flex", "reference"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="docs/benchmarks.md")
    parser.add_argument("--plot", default="docs/scaling.png")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.repeats)))
        return

    results: dict[str, dict[int, dict]] = {impl: {} for impl in args.impls}
    for T in args.T:
        for impl in args.impls:
            results[impl][T] = r = run_one(impl, T, args.repeats if T <= 64 else 2)
            print(impl, T, r, flush=True)

    def cell(r: dict, key: str, scale: float, T: int) -> str:
        return r["skipped"] if "skipped" in r else f"{r[key] * scale / T:.1f}"

    lines = ["| T | " + " | ".join(f"{i} ms/frame | {i} MiB/frame" for i in args.impls)
             + " | reference / blocked time |",
             "|---" * (2 * len(args.impls) + 2) + "|"]
    for T in args.T:
        cells = []
        for impl in args.impls:
            r = results[impl][T]
            cells += [cell(r, "best_s", 1e3, T), cell(r, "peak_mb", 1, T)]
        b, ref = results.get("blocked", {}).get(T, {}), results.get("reference", {}).get(T, {})
        ratio = (f"{ref['best_s'] / b['best_s']:.1f}x"
                 if "best_s" in b and "best_s" in ref else "-")
        lines.append(f"| {T} | " + " | ".join(cells) + f" | {ratio} |")
    table = "\n".join(lines)

    bars = []
    b = results.get("blocked", {})
    if all(T in b and "best_s" in b[T] for T in (16, 256)):
        t_ratio = (b[256]["best_s"] / 256) / (b[16]["best_s"] / 16)
        m_ratio = (b[256]["peak_mb"] / 256) / (b[16]["peak_mb"] / 16)
        bars.append(f"- blocked time per frame, T=256 vs T=16: {t_ratio:.2f}x "
                    f"(bar <= 1.3x: {'met' if t_ratio <= 1.3 else 'NOT met'})")
        bars.append(f"- blocked peak memory per frame, T=256 vs T=16: {m_ratio:.2f}x "
                    f"(bar <= 1.5x: {'met' if m_ratio <= 1.5 else 'NOT met'})")
    ref = results.get("reference", {})
    for T in (64, 32):
        if T in ref and "best_s" in ref[T] and "best_s" in b.get(T, {}):
            speedup = ref[T]["best_s"] / b[T]["best_s"]
            bars.append(f"- blocked vs reference at T={T}: {speedup:.1f}x faster"
                        + (f" (bar >= 5x: {'met' if speedup >= 5 else 'NOT met'})"
                           if T == 64 else ""))
            break
    body = (f"Command: `python {' '.join(sys.argv)}`\n\nMachine: {machine()}\n\n"
            f"Temporal stack only (cached backbone tokens), D={D}, {HEADS} heads (6 lookback, "
            f"6 lookahead), L={L}, w={W}, {LAYERS} layers, batch 1, fp32, forward under "
            "`torch.no_grad`; time is the best of the timed runs after one warm-up "
            "(the machine may be shared; the best run is the least disturbed); memory is "
            "the peak RSS of a process of its own above its RSS before the first forward. "
            "`reference` is one SDPA call with the dense `[H, (T+2)L, (T+2)L]` mask; runs it "
            "could not fit in this machine's memory are marked with the estimate.\n\n"
            f"{table}\n\n" + "\n".join(bars) + f"\n\n![scaling]({Path(args.plot).name})\n")
    print(table)
    print("\n".join(bars))
    plot(results, Path(args.plot))
    update_section(args.out, HEADING, body)


if __name__ == "__main__":
    main()
