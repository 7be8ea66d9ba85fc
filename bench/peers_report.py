"""Report of ``bench/peers.py``: the markdown section (tables, checks, bars of issue 5, the
METHOD text) and the time/memory plots, rendered from the collected results."""

from __future__ import annotations

import statistics
from pathlib import Path

from peers_memory import MIB

SECTION = "## Peers: Spool vs TimeSformer vs VideoMAE vs dense Spool"

MODELS = {  # key -> (label, colour, line style)
    "spool_w4": ("Spool w=4", "tab:blue", "-"),
    "spool_w16": ("Spool w=16", "tab:green", "-"),
    "spool_w4_cached": ("Spool w=4, cached tokens", "tab:blue", ":"),
    "spool_w16_cached": ("Spool w=16, cached tokens", "tab:green", ":"),
    "dense": ("dense-masked Spool", "tab:red", "-"),
    "dense_cached": ("dense-masked Spool, cached tokens", "tab:red", ":"),
    "timesformer": ("TimeSformer-base", "tab:orange", "-"),
    "videomae": ("VideoMAE-base", "tab:purple", "-"),
}


METHOD = """\
- **Models** (random weights, base-size configs, 224x224, batch 1, fp32, `torch.no_grad`,
  eval mode): Spool = DINOv2-base-sized backbone (hidden 768, 12 layers, patch 14, L = 257
  tokens/frame) + 12 temporal blocks (12 heads: 6 lookback, 6 lookahead), `blocked` attention,
  w = `local_frame_range`; *cached tokens* = the temporal stack alone on backbone tokens
  (`forward_tokens`); dense-masked Spool = the same with `attn_implementation="reference"`
  (the full `(T+2)L x (T+2)L` mask; its cost does not depend on w, run with w=16).
  TimeSformer = HF `TimesformerModel` base (divided space-time, patch 16), one model per T
  (its time embedding is sized by `num_frames`); VideoMAE = HF `VideoMAEModel` base (tubelet 2,
  patch 16, `num_frames=T`, SDPA attention). Spool takes uint8 `[1, T, 224, 224, 3]` and does
  its own normalisation; the HF models take ready `pixel_values`.
- **Latency**: median of the timed runs after a warm-up forward (at the same T for T <= 8,
  at T = 4 above that: a warm-up at T = 128 would cost minutes); runs per T: {runs}
  (the dense-masked Spool: one run for T >= 32).
  frames/s = T / latency, clips/s = 1 / latency.
  One child process per (model group, T). In the Spool child each iteration runs Spool w=16
  end to end (`model(video)`; forward hooks on the backbone split the time into backbone and
  temporal stack), then Spool w=4's and the dense-masked Spool's temporal stacks
  (`forward_tokens`) on the same backbone tokens: the backbone is the same frozen network for
  all three, so it runs once. Their full-model times are backbone + their temporal stack from
  the same iteration (checked against an end-to-end `model(video)` call of Spool w=4 below).
  The *cached tokens* rows are the temporal-stack times.
- **Peak memory**: resident set size (RSS) of the child process, per phase. Before a phase the
  freed heap is returned to the OS (`malloc_trim`), the RSS is read and the kernel's RSS
  high-water mark is reset (`echo 5 > /proc/self/clear_refs`, which also resets `getrusage`'s
  `ru_maxrss`); after it the high-water mark (`VmHWM`) is read. Peak = high-water mark - RSS
  before, i.e. the memory the forward needs on top of the weights and the input (measured on
  the first timed run). For full Spool it is the larger of the backbone phase and the
  temporal phase (which has the backbone's output tokens resident). Before each child the
  peak is estimated; a (model, T) whose estimate exceeds min({cap} GiB, available - 1 GiB) is
  not run and reported as OOM with the estimate, and each child's address space is capped so
  an allocation past that fails in the child instead of invoking the OOM killer.
- **FLOPs**: `torch.utils.flop_counter.FlopCounterMode` over one forward on the meta device
  (same shapes, no memory or time, so T's that do not fit are counted too). Its CPU SDPA op
  (`_scaled_dot_product_flash_attention_for_cpu`) has no formula in torch {torch}, which would
  count attention as 0 on CPU; this script registers the same formula as the CUDA flash op.
  Counted on real CPU tensors for T <= 8 as a check (below). Counted FLOPs of `blocked`
  attention include the masked-out entries inside each block; *useful* FLOPs are by hand:
  linear layers 24 D^2 per token per layer + attention 4 L^2 (D/H) per allowed (query frame,
  key frame) pair per head per layer (about 4 (w+2) L D per token per layer).
- **Matmul peak**: best of {peak_repeats} fp32 `torch.mm` of 4096 x 4096 matrices, measured at
  the start, in each Spool child right before its timed runs, and at the end; the best of all
  is the peak (the machine is shared, so this gives the lowest percentage).
- **Allocator**: every child calls `spool.runtime.tune_cpu_allocator()` first, as the `spool`
  CLI does (glibc keeps large freed blocks instead of mapping fresh pages per tensor); it
  applies to all models alike, the peers and the matmul peak included.
"""


def _fmt_time(s: float) -> str:
    return f"{s:.3g}" if s < 100 else f"{s:.0f}"


def render(res: dict) -> tuple[str, dict]:
    rows, skipped, flops, params = res["rows"], res["skipped"], res["flops"], res["params"]
    ts = res["ts"]
    peak = max(res["peaks"])
    m = res["machine"]
    lines = [SECTION, ""]
    lines += [f"Command: `{res['command']}` (wall time {res['elapsed_s'] / 60:.1f} min).", "",
              f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['threads']} "
              f"threads), Python {m['python']}, {m['mem_total_gib']:.0f} GiB RAM, load "
              f"average at start {m['load'][0]:.2f}. Source: {res['source']}. fp32 matmul "
              f"peak measured in this run: {peak / 1e9:.0f} GFLOP/s (best of "
              + ", ".join(f"{p / 1e9:.0f}" for p in res["peaks"]) + ").", "",
              "Absolute CPU times on a shared 2-core machine are noisy; the ratios between "
              "models from this one run are what to read.", ""]

    # --- main table ---
    lines += ["### Latency, throughput, memory, FLOPs", "",
              "| model | T | latency s (median) | runs | clips/s | frames/s | ms/frame | "
              "peak mem MiB | params M | GFLOPs (counted) | CPU share |",
              "| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |"]
    for key, (label, _, _) in MODELS.items():
        for T in ts:
            gflops = flops.get(T, {}).get(key)
            gf = f"{gflops / 1e9:,.0f}" if gflops else "-"
            p = f"{params[key] / 1e6:.1f}"
            if (key, T) in rows:
                r = rows[(key, T)]
                med = r["median"]
                mem = f"{r['memory'] / MIB:,.0f}" if r["memory"] is not None else "-"
                share = f"{r['cpu_share']:.2f}" if r.get("cpu_share") else "-"
                lines.append(f"| {label} | {T} | {_fmt_time(med)} | {len(r['times'])} | "
                             f"{1 / med:.3g} | {T / med:.3g} | {1000 * med / T:,.0f} | {mem} | "
                             f"{p} | {gf} | {share} |")
            else:
                why = skipped.get((key, T), "not run")
                lines.append(f"| {label} | {T} | {why} | | | | | | {p} | {gf} | |")
    lines += ["", "*CPU share* = CPU time the child process got / (wall time x "
              f"{m['threads']} threads) over its timed runs: about 1 when it had the cores to "
              "itself, lower when other processes on this shared machine took CPU from it. "
              "1-minute load average when each child started: "
              + ", ".join(f"{g} T={T}: {v:.1f}" for (g, T), v in res["loads"].items()) + ".",
              ""]

    # --- time per frame and ratios ---
    def tpf(key: str, T: int) -> float | None:
        r = rows.get((key, T))
        return r["median"] / T if r else None

    lines += ["### Time per frame (ms) and ratio to Spool w=16 at the same T", "",
              "| model | " + " | ".join(f"T={T}" for T in ts) + " | T=max / T=min |",
              "| --- |" + " --: |" * (len(ts) + 1)]
    for key, (label, _, _) in MODELS.items():
        cells = []
        for T in ts:
            x, ref = tpf(key, T), tpf("spool_w16", T)
            if x is None:
                cells.append("-")
            elif ref and key != "spool_w16":
                cells.append(f"{1000 * x:,.0f} ({x / ref:.2f}x)")
            else:
                cells.append(f"{1000 * x:,.0f}")
        done = [T for T in ts if tpf(key, T) is not None]
        growth = (f"{tpf(key, done[-1]) / tpf(key, done[0]):.2f} (T={done[-1]} / T={done[0]})"
                  if len(done) > 1 else "-")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {growth} |")
    lines.append("")
    if res.get("backbone"):
        bb = res["backbone"]
        lines += ["Backbone alone (DINOv2-base-sized; the same work per frame at every T), "
                  "ms/frame: " + ", ".join(f"T={T}: {1000 * s / T:,.0f}"
                                            for T, s in sorted(bb.items())) + ". Its spread "
                  "is the machine's noise. Temporal stack time / backbone time of the same "
                  "iterations (the backbone as a yardstick that is linear in T by construction; "
                  "less sensitive to load changes between children):", "",
                  "| stack | " + " | ".join(f"T={T}" for T in ts) + " |",
                  "| --- |" + " --: |" * len(ts)]
        for key in ("spool_w4_cached", "spool_w16_cached", "dense_cached"):
            cells = [f"{rows[(key, T)]['median'] / bb[T]:.2f}"
                     if (key, T) in rows and T in bb else "-" for T in ts]
            lines.append(f"| {MODELS[key][0]} | " + " | ".join(cells) + " |")
        lines.append("")

    # --- temporal stack FLOP/s ---
    lines += ["### Spool temporal stack: achieved FLOP/s vs the matmul peak", "",
              f"Peak = {peak / 1e9:.0f} GFLOP/s (fp32 `torch.mm` 4096^2, best in this run); the "
              "last column uses the peak measured in the same child process right before its "
              "timed runs (same load from other users of the machine). *Counted* = "
              "FlopCounterMode (includes masked-out scores inside the attention blocks); "
              "*useful* = linear layers + attention over allowed frame pairs only.", "",
              "| w | T | time s | counted GFLOP | useful GFLOP | counted GFLOP/s | "
              "useful GFLOP/s | % peak (counted) | % peak (useful) | % of same-child peak "
              "(counted) |",
              "| --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |"]
    mfu: dict = {}
    for w, key in ((4, "spool_w4_cached"), (16, "spool_w16_cached")):
        for T in ts:
            r = rows.get((key, T))
            if not r:
                continue
            counted = flops[T][key]
            useful = res["useful"][T][w]["total"]
            s = r["median"]
            mfu[(w, T)] = (counted / s / peak, useful / s / peak)
            local = res.get("child_peaks", {}).get(T)
            local = (f"{100 * counted / s / local:.0f}% (of {local / 1e9:.0f})" if local
                     else "-")
            lines.append(f"| {w} | {T} | {_fmt_time(s)} | {counted / 1e9:,.0f} | "
                         f"{useful / 1e9:,.0f} | {counted / s / 1e9:.0f} | {useful / s / 1e9:.0f}"
                         f" | {100 * mfu[(w, T)][0]:.0f}% | {100 * mfu[(w, T)][1]:.0f}% | "
                         f"{local} |")
    lines.append("")

    # --- checks ---
    lines += ["### Checks", ""]
    for T, counts in sorted(res["flop_checks"].items()):
        parts = []
        for k, v in counts.items():
            meta = flops[T].get(k)
            parts.append(f"{k} {v / 1e9:,.1f} vs {meta / 1e9:,.1f}" if meta else k)
        lines.append(f"- FLOPs at T={T}, real CPU tensors vs meta device (GFLOP): "
                     + "; ".join(parts) + ".")
    if "end_to_end_w4" in res:
        T, s = res["end_to_end_w4"]
        comp = rows.get(("spool_w4", T))
        if comp:
            lines.append(f"- Spool w=4 at T={T}: end-to-end `model(video)` {s:.2f} s vs backbone "
                         f"+ temporal stack {comp['median']:.2f} s ({s / comp['median']:.2f}x).")
    first = [(k, T, r["times"][0] / statistics.median(r["times"][1:]))
             for (k, T), r in rows.items() if len(r["times"]) >= 3]
    if first:
        worst = max(first, key=lambda x: abs(x[2] - 1))
        lo, hi = min(x[2] for x in first), max(x[2] for x in first)
        verdict = ("so single runs at large T carry no large warm-up bias" if hi < 1.15 else
                   "a spread from load changes (other processes), not only warm-up")
        lines.append(f"- First timed run / median of the later runs (T with >= 3 runs): "
                     f"{lo:.2f} .. {hi:.2f} (furthest: {MODELS[worst[0]][0]} T={worst[1]}); "
                     f"{verdict}.")
    lines.append("")

    # --- bars ---
    bars = []
    for key in ("spool_w4", "spool_w16"):
        a, b = tpf(key, 8), tpf(key, 128)
        if a and b:
            bars.append(f"- {MODELS[key][0]}: time per frame T=128 / T=8 = {b / a:.2f} "
                        f"({1000 * b:,.0f} vs {1000 * a:,.0f} ms) -> "
                        f"{'met' if b / a <= 1.3 else 'NOT met'} (bar: <= 1.3).")
        else:
            bars.append(f"- {MODELS[key][0]}: T=8 and T=128 not both measured in this run.")
    il = res.get("interleave")
    if il:
        for w, runs in il["runs"].items():
            k = len(runs) // 2
            short = statistics.median(r["s"] / r["T"] for r in runs[:k] + runs[k + 1:])
            ratio = runs[k]["s"] / runs[k]["T"] / short
            bars.append(f"- Spool w={w}, interleaved check (T={il['long']} between T={il['short']}"
                        f" runs in one process, same load): time per frame T={il['long']} / "
                        f"T={il['short']} = {ratio:.2f} -> {'met' if ratio <= 1.3 else 'NOT met'}"
                        " (bar: <= 1.3).")
    dense_ts = [T for T in ts if tpf("dense", T)]
    if len(dense_ts) > 1:
        growth = ", ".join(f"T={T}: {1000 * tpf('dense', T):,.0f}" for T in dense_ts)
        rest = "; ".join(f"T={T}: {skipped.get(('dense', T), 'not run')}"
                         for T in ts if T not in dense_ts)
        bars.append(f"- dense-masked Spool, ms/frame: {growth} "
                    f"({tpf('dense', dense_ts[-1]) / tpf('dense', dense_ts[0]):.2f}x from "
                    f"T={dense_ts[0]} to T={dense_ts[-1]})" + (f"; {rest}" if rest else "")
                    + ".")
    big = {k: v for k, v in mfu.items() if k[1] >= 32}
    if big:
        low = min(big.items(), key=lambda kv: kv[1][0])
        met = all(v[0] >= 0.5 for v in big.values())
        bars.append("- Temporal stack >= 50% of the matmul peak at T >= 32 (counted FLOPs): "
                    + ", ".join(f"w={w} T={T} {100 * c:.0f}% ({100 * u:.0f}% useful)"
                                for (w, T), (c, u) in sorted(big.items()))
                    + f" -> {'met' if met else 'NOT met'} (lowest: w={low[0][0]} "
                      f"T={low[0][1]}).")
    lines += ["### Bars of issue 5", ""] + bars + [""]

    lines += render_interleave(res)

    # --- profiles ---
    if res.get("profiles"):
        lines += ["### Where the temporal stack's time goes (torch.profiler, self CPU time)", ""]
        for p in res["profiles"]:
            lines.append(f"w={p['w']}, T={p['T']}: forward_tokens {p['profiled_s']:.1f} s under "
                         "the profiler. Top ops by self CPU time:")
            lines.append("")
            lines.append("| op | self CPU s | share | calls |")
            lines.append("| --- | --: | --: | --: |")
            for name, us, count in p["ops"][:12]:
                lines.append(f"| `{name}` | {us / 1e6:.2f} | "
                             f"{100 * us / p['self_total_us']:.1f}% | {count} |")
            lines.append("")

    lines += ["### Plots", "", "![time per frame vs T](peers_time.png)", "",
              "![peak memory vs T](peers_memory.png)", "", "### Method", "",
              METHOD.format(runs=", ".join(f"T={T}: {n}" for T, n in res["runs"].items()),
                            cap=res.get("mem_cap", 18), torch=m["torch"],
                            peak_repeats=res.get("peak_repeats", 8)), ""]
    return "\n".join(lines), mfu


INTERLEAVE_HEADING = "### Interleaved check: Spool at T=8 and T=128 in one process"


def render_interleave(res: dict) -> list[str]:
    il = res.get("interleave")
    if not il:
        return []
    short, long_ = il["short"], il["long"]
    lines = [INTERLEAVE_HEADING, "",
             f"Spool (`encode_frames`, then `forward_tokens` on its tokens: what `model(video)` "
             f"runs) on {short}, {short}, {short}, {long_}, {short}, {short}, {short} frames in "
             f"a row in one process, so the T={long_} run and the T={short} runs around it share "
             "the machine's load at the time. Time per frame, ms (CPU share in brackets); "
             "ratios use the median of the 6 short runs:", "",
             f"| w | part | T={short} before | T={long_} | T={short} after | "
             f"T={long_} / T={short} |", "| --: | --- | --: | --: | --: | --: |"]
    for w, runs in il["runs"].items():
        k = len(runs) // 2
        before, longrun, after = runs[:k], runs[k], runs[k + 1:]
        for part, field in (("full model", "s"), ("backbone", "backbone"),
                            ("temporal stack", "stack")):
            def cell(rs: list[dict], f: str = field) -> str:
                return ", ".join(f"{1000 * r[f] / r['T']:,.0f} ({r['share']:.2f})" for r in rs)
            per_frame_short = statistics.median(r[field] / r["T"] for r in before + after)
            ratio = longrun[field] / longrun["T"] / per_frame_short
            lines.append(f"| {w} | {part} | {cell(before)} | {cell([longrun])} | "
                         f"{cell(after)} | {ratio:.2f} |")
    lines.append("")
    return lines


def plot(res: dict, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    for what, ylabel, fname in (("time", "time per frame (s)", "peers_time.png"),
                                ("memory", "peak memory (MiB)", "peers_memory.png")):
        fig, ax = plt.subplots(figsize=(7.5, 5))
        for key, (label, colour, style) in MODELS.items():
            pts = []
            for T in res["ts"]:
                r = res["rows"].get((key, T))
                if r is None:
                    continue
                y = r["median"] / T if what == "time" else (r["memory"] or 0) / MIB
                if y > 0:
                    pts.append((T, y))
            if pts:
                ax.plot(*zip(*pts, strict=True), style, marker="o", color=colour, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(res["ts"], [str(T) for T in res["ts"]])
        ax.set_xlabel("frames T")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel} vs T, batch 1, fp32, {res['machine']['cores']}-core CPU")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
