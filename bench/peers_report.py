"""Report of ``bench/peers.py``: the markdown section (tables, checks, the bars of issues 5 and
12 from ``peers_bars``, the METHOD text) and the time/memory plots, rendered from the collected
results."""

from __future__ import annotations

import statistics
from pathlib import Path

from peers_bars import issue5, issue12, stack_ratios, tpf
from peers_memory import MIB
from peers_method import METHOD
from peers_models import VARIANTS, tokens_per_frame

SECTION = "## Peers: Spool vs TimeSformer vs VideoMAE vs dense Spool"

MODELS = {  # key -> (label, colour, line style); k = token_pooling
    "spool_w4": ("Spool w=4", "tab:blue", "-"),
    "spool_w4_k2": ("Spool w=4, k=2", "tab:cyan", "-"),
    "spool_w4_k4": ("Spool w=4, k=4", "tab:olive", "-"),
    "spool_w16": ("Spool w=16", "tab:green", "-"),
    "spool_w4_cached": ("Spool w=4, cached tokens", "tab:blue", ":"),
    "spool_w4_k2_cached": ("Spool w=4, k=2, cached tokens", "tab:cyan", ":"),
    "spool_w4_k4_cached": ("Spool w=4, k=4, cached tokens", "tab:olive", ":"),
    "spool_w16_cached": ("Spool w=16, cached tokens", "tab:green", ":"),
    "dense": ("dense-masked Spool", "tab:red", "-"),
    "dense_cached": ("dense-masked Spool, cached tokens", "tab:red", ":"),
    "timesformer": ("TimeSformer-base", "tab:orange", "-"),
    "videomae": ("VideoMAE-base", "tab:purple", "-"),
}
LABELS = {key: label for key, (label, _, _) in MODELS.items()}
FULL_SPOOL = ("spool_w4", "spool_w4_k2", "spool_w4_k4", "spool_w16")
PEERS = ("timesformer", "videomae")


def _fmt_time(s: float) -> str:
    return f"{s:.3g}" if s < 100 else f"{s:.0f}"


def _shown(res: dict) -> list[str]:
    """The models this run measured or skipped, in MODELS' order."""
    return [k for k in MODELS
            if any((k, T) in res["rows"] or (k, T) in res["skipped"] for T in res["ts"])]


def render(res: dict) -> tuple[str, dict]:
    parts = res["parts"]
    m = parts[-1]["machine"] if parts else {}
    peak = max(res["peaks"])
    lines = [SECTION, ""] + _commands(res)
    lines += [f"Machine: {m.get('cpu')}, {m.get('cores')} cores, torch {m.get('torch')} "
              f"({m.get('threads')} threads), Python {m.get('python')}, "
              f"{m.get('mem_total_gib', 0):.0f} GiB RAM. Source: "
              + "; ".join(sorted({x["source"] for x in parts})) + ". fp32 matmul peak "
              f"measured in this run: {peak / 1e9:.0f} GFLOP/s (best of "
              + ", ".join(f"{p / 1e9:.0f}" for p in res["peaks"]) + ").", "",
              "Absolute CPU times on a shared 2-core machine are noisy; the ratios between "
              "models from this one run are what to read. *k* = `token_pooling`: the temporal "
              "stack sees " + ", ".join(str(tokens_per_frame(k)) for k in (1, 2, 4))
              + " tokens per frame at k = 1, 2, 4.", ""]
    if res.get("tiny"):
        lines += ["**Tiny models (`--tiny`): a smoke test of the script; these numbers say "
                  "nothing about the real models.**", ""]
    lines += _main_table(res)
    lines += _per_frame(res)
    lines += _stack_vs_backbone(res)
    flop_lines, mfu = _flop_rate(res, peak)
    lines += flop_lines
    lines += _checks(res)
    lines += ["### Bars of issue 12", ""] + issue12(res, LABELS) + [""]
    lines += ["### Bars of issue 5", ""] + issue5(res, LABELS, mfu) + [""]
    lines += render_interleave(res)
    lines += _profiles(res)
    lines += ["### Plots", "", "![time per frame vs T](peers_time.png)", "",
              "![peak memory vs T](peers_memory.png)", "", "### Method", "",
              METHOD.format(runs=", ".join(f"T={T}: {n}" for T, n in sorted(res["runs"].items())),
                            cap=res.get("mem_cap", 18), torch=m.get("torch"),
                            peak_repeats=res.get("peak_repeats", 8)), ""]
    return "\n".join(lines), mfu


def _main_table(res: dict) -> list[str]:
    rows, skipped, flops, params = res["rows"], res["skipped"], res["flops"], res["params"]
    lines = ["### Latency, throughput, memory, FLOPs", "",
             "| model | T | latency s (median) | runs | clips/s | frames/s | ms/frame | "
             "peak mem MiB | params M | GFLOPs (counted) | CPU share |",
             "| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |"]
    for key in _shown(res):
        for T in res["ts"]:
            gflops = flops.get(T, {}).get(key)
            gf = f"{gflops / 1e9:,.0f}" if gflops else "-"
            p = f"{params[key] / 1e6:.1f}"
            if (key, T) in rows:
                r = rows[(key, T)]
                med = r["median"]
                mem = f"{r['memory'] / MIB:,.0f}" if r["memory"] is not None else "-"
                share = f"{r['cpu_share']:.2f}" if r.get("cpu_share") else "-"
                lines.append(f"| {LABELS[key]} | {T} | {_fmt_time(med)} | {len(r['times'])} | "
                             f"{1 / med:.3g} | {T / med:.3g} | {1000 * med / T:,.0f} | {mem} | "
                             f"{p} | {gf} | {share} |")
            else:
                why = skipped.get((key, T), "not run")
                lines.append(f"| {LABELS[key]} | {T} | {why} | | | | | | {p} | {gf} | |")
    threads = res["parts"][-1]["machine"]["threads"] if res["parts"] else "?"
    lines += ["", "*CPU share* = CPU time the child process got / (wall time x "
              f"{threads} threads) over its timed runs: about 1 when it had the cores to "
              "itself, lower when other processes on this shared machine took CPU from it. "
              "1-minute load average when each child started: "
              + ", ".join(f"{g} T={T}: {v:.1f}" for (g, T), v in res["loads"].items()) + ".",
              ""]
    return lines


def _commands(res: dict) -> list[str]:
    """The command of every part whose results are in the table (one, or several run one
    after another into the same workdir)."""
    parts = res["parts"]
    if len(parts) == 1:
        x = parts[0]
        return [f"Command: `{x['command']}` (wall time {x['elapsed_s'] / 60:.1f} min, load "
                f"average at start {x['machine']['load'][0]:.2f}).", ""]
    total = sum(x["elapsed_s"] for x in parts)
    return [f"Commands, run one after another into the same workdir (results combined; "
            f"wall time {total / 60:.1f} min in all):", ""] + [
        f"- `{x['command']}` ({x['started']}, {x['elapsed_s'] / 60:.1f} min, load average at "
        f"start {x['machine']['load'][0]:.2f})" for x in parts] + [""]


def _cell_missing(res: dict, key: str, T: int) -> str:
    """Why a table cell is empty, in a word: "OOM", "time cap" or "-" (not run, failed)."""
    why = res["skipped"].get((key, T), "")
    return "OOM" if "OOM" in why else "time cap" if "time cap" in why else "-"


def _per_frame(res: dict) -> list[str]:
    ts = res["ts"]
    lines = ["### Time per frame (ms)", "",
             "OOM / time cap: not run at that T (memory estimate over the cap, an allocation "
             "that failed under it, its timed runs estimated over the time cap, or one of those "
             "at a smaller T; the table above says which).", "",
             "| model | " + " | ".join(f"T={T}" for T in ts) + " | T=max / T=min |",
             "| --- |" + " --: |" * (len(ts) + 1)]
    for key in _shown(res):
        cells = [f"{1000 * tpf(res, key, T):,.0f}" if tpf(res, key, T) else
                 _cell_missing(res, key, T) for T in ts]
        done = [T for T in ts if tpf(res, key, T)]
        growth = (f"{tpf(res, key, done[-1]) / tpf(res, key, done[0]):.2f} "
                  f"(T={done[-1]} / T={done[0]})" if len(done) > 1 else "-")
        lines.append(f"| {LABELS[key]} | " + " | ".join(cells) + f" | {growth} |")
    lines.append("")
    pairs = [(k, p) for k in FULL_SPOOL for p in PEERS
             if any(tpf(res, k, T) for T in ts) and any((p, T) in res["rows"] for T in ts)]
    if pairs:
        lines += ["Spool's time per frame / the peer's at the same T (below 1: Spool is "
                  "faster; *peer OOM* / *peer time cap*: only Spool ran):", "",
                  "| Spool / peer | " + " | ".join(f"T={T}" for T in ts) + " |",
                  "| --- |" + " --: |" * len(ts)]
        for key, peer in pairs:
            cells = []
            for T in ts:
                s, p = tpf(res, key, T), tpf(res, peer, T)
                cells.append(f"{s / p:.2f}" if s and p else
                             f"peer {_cell_missing(res, peer, T)}"
                             if s and _cell_missing(res, peer, T) != "-" else "-")
            lines.append(f"| {LABELS[key]} / {LABELS[peer]} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _stack_vs_backbone(res: dict) -> list[str]:
    bb, ts = res.get("backbone"), res["ts"]
    if not bb:
        return []
    lines = ["### Temporal stack vs backbone", "",
             "Backbone alone (DINOv2-base-sized; the same work per frame at every T), ms/frame: "
             + ", ".join(f"T={T}: {1000 * s / T:,.0f}" for T, s in sorted(bb.items()))
             + ". Its spread is the machine's noise."]
    for key in [k for k in FULL_SPOOL if VARIANTS[k][1] > 1]:
        pool = {T: s for (k, T), s in res["pool"].items() if k == key}
        if pool:
            lines[-1] += (f" Token pooling k={VARIANTS[key][1]} (part of the frame encoder), "
                          "ms/frame: " + ", ".join(f"T={T}: {1000 * s / T:.2f}"
                                                   for T, s in sorted(pool.items())) + ".")
    lines += ["", "Temporal stack time / backbone time of the same iterations (the backbone as "
              "a yardstick that is linear in T by construction; less sensitive to load changes "
              "between children):", "",
              "| stack | L | " + " | ".join(f"T={T}" for T in ts) + " |",
              "| --- | --: |" + " --: |" * len(ts)]
    for key in [k for k in VARIANTS if k + "_cached" in _shown(res)]:
        ratios = stack_ratios(res, key)
        cells = [f"{ratios[T]:.2f}" if T in ratios else _cell_missing(res, key + "_cached", T)
                 for T in ts]
        lines.append(f"| {LABELS[key + '_cached']} | {tokens_per_frame(VARIANTS[key][1])} | "
                     + " | ".join(cells) + " |")
    return lines + [""]


def _flop_rate(res: dict, peak: float) -> tuple[list[str], dict]:
    lines = ["### Spool temporal stack: achieved FLOP/s vs the matmul peak", "",
             f"Peak = {peak / 1e9:.0f} GFLOP/s (fp32 `torch.mm` 4096^2, best in this run); the "
             "last column uses the peak measured in the same child process right before its "
             "timed runs (same load from other users of the machine). *Counted* = "
             "FlopCounterMode (includes masked-out scores inside the attention blocks); "
             "*useful* = linear layers + attention over allowed frame pairs only.", "",
             "| stack | L | T | time s | counted GFLOP | useful GFLOP | counted GFLOP/s | "
             "useful GFLOP/s | % peak (counted) | % peak (useful) | % of same-child peak "
             "(counted) |",
             "| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |"]
    mfu: dict = {}
    for key in FULL_SPOOL:
        for T in res["ts"]:
            r = res["rows"].get((key + "_cached", T))
            if not r:
                continue
            counted = res["flops"][T][key + "_cached"]
            useful = res["useful"][T][key]["total"]
            s = r["median"]
            mfu[(key, T)] = (counted / s / peak, useful / s / peak)
            local = res.get("child_peaks", {}).get(T)
            local = (f"{100 * counted / s / local:.0f}% (of {local / 1e9:.0f})" if local
                     else "-")
            lines.append(f"| {LABELS[key]} | {tokens_per_frame(VARIANTS[key][1])} | {T} | "
                         f"{_fmt_time(s)} | {counted / 1e9:,.0f} | {useful / 1e9:,.0f} | "
                         f"{counted / s / 1e9:.0f} | {useful / s / 1e9:.0f} | "
                         f"{100 * mfu[(key, T)][0]:.0f}% | {100 * mfu[(key, T)][1]:.0f}% | "
                         f"{local} |")
    return lines + [""], mfu


def _checks(res: dict) -> list[str]:
    lines = ["### Checks", ""]
    for T, counts in sorted(res["flop_checks"].items()):
        parts = []
        for k, v in counts.items():
            meta = res["flops"][T].get(k)
            parts.append(f"{k} {v / 1e9:,.1f} vs {meta / 1e9:,.1f}" if meta else k)
        lines.append(f"- FLOPs at T={T}, real CPU tensors vs meta device (GFLOP): "
                     + "; ".join(parts) + ".")
    if "end_to_end" in res:
        T, checks = res["end_to_end"]
        for key, c in checks.items():
            comp = res["rows"].get((key, T))
            if comp:
                lines.append(f"- {LABELS[key]} at T={T}: end-to-end `model(video)` "
                             f"{c['seconds']:.2f} s vs backbone + pooling + temporal stack "
                             f"{comp['median']:.2f} s ({c['seconds'] / comp['median']:.2f}x); "
                             f"features equal to {c['max_abs_diff']:.1e} (max abs difference).")
    first = [(k, T, r["times"][0] / statistics.median(r["times"][1:]))
             for (k, T), r in res["rows"].items() if len(r["times"]) >= 3]
    if first:
        worst = max(first, key=lambda x: abs(x[2] - 1))
        lo, hi = min(x[2] for x in first), max(x[2] for x in first)
        verdict = ("so single runs at large T carry no large warm-up bias" if hi < 1.15 else
                   "a spread from load changes (other processes), not only warm-up")
        lines.append(f"- First timed run / median of the later runs (T with >= 3 runs): "
                     f"{lo:.2f} .. {hi:.2f} (furthest: {LABELS[worst[0]]} T={worst[1]}); "
                     f"{verdict}.")
    return lines + [""]


def _profiles(res: dict) -> list[str]:
    if not res.get("profiles"):
        return []
    lines = ["### Where the temporal stack's time goes (torch.profiler, self CPU time)", ""]
    for p in res["profiles"]:
        lines += [f"{LABELS[p['key']]}, T={p['T']}: forward_tokens {p['profiled_s']:.1f} s "
                  "under the profiler. Top ops by self CPU time:", "",
                  "| op | self CPU s | share | calls |", "| --- | --: | --: | --: |"]
        for name, us, count in p["ops"][:12]:
            lines.append(f"| `{name}` | {us / 1e6:.2f} | "
                         f"{100 * us / p['self_total_us']:.1f}% | {count} |")
        lines.append("")
    return lines


def render_interleave(res: dict) -> list[str]:
    il = res.get("interleave")
    if not il:
        return []
    short, long_ = il["short"], il["long"]
    lines = [f"### Interleaved check: Spool at T={short} and T={long_} in one process", "",
             f"Spool (`encode_frames`, then `forward_tokens` on its tokens: what `model(video)` "
             f"runs) on {short}, {short}, {short}, {long_}, {short}, {short}, {short} frames in "
             f"a row in one process, so the T={long_} run and the T={short} runs around it share "
             "the machine's load at the time. Time per frame, ms (CPU share in brackets); "
             "ratios use the median of the 6 short runs. *Backbone* includes the token pooling "
             "of the pooled models:", "",
             f"| model | part | T={short} before | T={long_} | T={short} after | "
             f"T={long_} / T={short} |", "| --- | --- | --: | --: | --: | --: |"]
    for key, runs in il["runs"].items():
        k = len(runs) // 2
        before, longrun, after = runs[:k], runs[k], runs[k + 1:]
        for part, field in (("full model", "s"), ("backbone", "backbone"),
                            ("temporal stack", "stack")):
            def cell(rs: list[dict], f: str = field) -> str:
                return ", ".join(f"{1000 * r[f] / r['T']:,.0f} ({r['share']:.2f})" for r in rs)
            per_frame_short = statistics.median(r[field] / r["T"] for r in before + after)
            ratio = longrun[field] / longrun["T"] / per_frame_short
            lines.append(f"| {LABELS[key]} | {part} | {cell(before)} | {cell([longrun])} | "
                         f"{cell(after)} | {ratio:.2f} |")
    lines.append("")
    return lines


def plot(res: dict, out_dir: Path) -> list[Path]:
    """Time per frame and peak memory vs T, log-log; a model that ran out of memory is marked
    where it stops."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    for what, ylabel, fname in (("time", "time per frame (s)", "peers_time.png"),
                                ("memory", "peak memory (MiB)", "peers_memory.png")):
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for key in _shown(res):
            label, colour, style = MODELS[key]
            pts = []
            for T in res["ts"]:
                r = res["rows"].get((key, T))
                if r is None:
                    continue
                y = r["median"] / T if what == "time" else (r["memory"] or 0) / MIB
                if y > 0:
                    pts.append((T, y))
            if not pts:
                continue
            ax.plot(*zip(*pts, strict=True), style, marker="o", color=colour, label=label)
            stop = [T for T in res["ts"] if T > pts[-1][0] and _cell_missing(res, key, T) != "-"]
            if stop:
                ax.plot(*pts[-1], marker="x", markersize=12, color=colour)
                ax.annotate(f"{_cell_missing(res, key, stop[0])} at T={stop[0]}", pts[-1],
                            textcoords="offset points",
                            xytext=(6, -10), fontsize=7, color=colour)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(res["ts"], [str(T) for T in res["ts"]])
        ax.set_xlabel("frames T")
        ax.set_ylabel(ylabel)
        cores = res["parts"][-1]["machine"]["cores"] if res["parts"] else "?"
        ax.set_title(f"{ylabel} vs T, batch 1, fp32, {cores}-core CPU")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
