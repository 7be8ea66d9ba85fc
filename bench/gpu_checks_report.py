"""Markdown report of ``bench/gpu_checks.py``: machine, spec peaks, tables, issue 12's GPU bars."""

from __future__ import annotations

import platform
from collections import defaultdict

import torch

HEADING = "GPU: equivalence, attention backends, bf16, torch.compile and MFU"
# Dense bf16/fp16 tensor-core peaks from the vendors' data sheets (FLOP/s), by name substring.
SPEC_BF16 = {"H200": 989.4e12, "H100 PCIe": 756.5e12, "H100": 989.4e12, "A100": 312e12}
LABELS = {"spool_w4": "Spool k=1", "spool_w4_k2": "Spool k=2", "spool_w4_k4": "Spool k=4",
          "backbone": "backbone alone", "timesformer": "TimeSformer-base",
          "videomae": "VideoMAE-base"}


def machine(device: torch.device) -> str:
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else platform.processor() or "CPU")
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    return f"{where}, torch {torch.__version__}{cuda}"


def spec_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in SPEC_BF16.items() if k in name), None)


def fastest_backends(rows: list[dict]) -> dict:
    """Per (L, dtype, pass): the fastest backend at each T, and how often each one won."""
    cells: dict = defaultdict(dict)
    for r in rows:
        if "ms" in r:
            cells[(r["L"], _batch(r), r["dtype"], r["pass"], r["T"])][r["backend"]] = r["ms"]
    wins: dict = defaultdict(lambda: defaultdict(int))
    for (L, batch, dtype, passes, _), times in cells.items():
        wins[f"L={L}{batch} {dtype} {passes}"][min(times, key=times.get)] += 1
    return {k: dict(v) for k, v in wins.items()}


def _batch(row: dict) -> str:
    """`` B=8`` for a row of another batch than 1 (rows without "B" are batch 1)."""
    return f" B={row['B']}" if row.get("B", 1) != 1 else ""


def _ms(x: float | None) -> str:
    return "" if x is None else f"{x:.3g}"


def _backends(part: dict) -> list[str]:
    names = sorted({r["backend"] for r in part["rows"]})
    batches = {r.get("B", 1) for r in part["rows"]}
    lines = ["### Attention backends: ms per call (q, k, v of 12 heads x head_dim 64, batch "
             + ", ".join(map(str, sorted(batches))) + ")",
             "", "| L | B | dtype | pass | T | " + " | ".join(names) + " |",
             "| ---: | ---: | --- | --- | ---: | " + " | ".join("---:" for _ in names) + " |"]
    cells: dict = defaultdict(dict)
    for r in part["rows"]:
        cells[(r["L"], r.get("B", 1), r["dtype"], r["pass"], r["T"])][r["backend"]] = r
    for (L, B, dtype, passes, T), by_name in cells.items():
        timed = {n: r["ms"] for n, r in by_name.items() if "ms" in r}
        best = min(timed, key=timed.get) if timed else None
        out = []
        for n in names:
            r = by_name.get(n, {})
            text = _ms(r.get("ms")) if "ms" in r else f"- ({r.get('skipped', 'not run')})"
            out.append(f"**{text}**" if n == best else text)
        lines.append(f"| {L} | {B} | {dtype} | {passes} | {T} | " + " | ".join(out) + " |")
    lines += ["", "Fastest (cells won): " + "; ".join(
        f"{cell}: " + ", ".join(f"{n} {c}" for n, c in wins.items())
        for cell, wins in part["fastest"].items()) + ".",
        "`auto` on CUDA tries `AUTO_ORDER['cuda']` in `spool/layers/attention_backends.py`, "
        "each entry up to its number of tokens per clip (F * L); it should follow these "
        "wins.", ""]
    return lines


def _peers(part: dict) -> list[str]:
    peak, spec = part["peak_flops"], part["spec_flops"]
    spec_text = f"{spec / 1e12:.0f} TFLOP/s spec" if spec else "no spec figure for this device"
    mode = part.get("compile_mode", "default")
    lines = [f"### Spool and its peers in {part['dtype']} (batch 1, Spool attention "
             f"`{part['spool_attn']}`" + ("" if mode == "default" else f", compiled with "
                                          f"mode `{mode}`") + ")", "",
             f"Matmul peak measured: {peak / 1e12:.1f} TFLOP/s ({spec_text}). MFU = counted "
             "FLOPs / time / peak.", "",
             "| model | T | mode | ms per frame | stack / backbone | TFLOP/s | MFU (measured) | "
             "MFU (spec) | peak memory (GiB) |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    backbone = {(r["T"], r["mode"]): r["s"] for r in part["rows"] if r.get("model") == "backbone"}
    for r in part["rows"]:
        if "skipped" in r:
            lines.append(f"| {LABELS.get(r['group'], r['group'])} | {r['T']} | {r['mode']} | "
                         f"{r['skipped']} | | | | | |")
            continue
        s, flops = r["s"], r.get("flops")
        rate = flops / s if flops else None
        ratio = (f"{r['stack_s'] / backbone[(r['T'], r['mode'])]:.2f}"
                 if "stack_s" in r and (r["T"], r["mode"]) in backbone else "")
        mem = "" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**30:.2f}"
        lines.append(
            f"| {LABELS.get(r['model'], r['model'])} | {r['T']} | {r['mode']} | "
            f"{1e3 * s / r['T']:.3g} | {ratio} | {'' if rate is None else f'{rate / 1e12:.3g}'} | "
            f"{'' if rate is None else f'{100 * rate / peak:.0f}%'} | "
            f"{'' if rate is None or not spec else f'{100 * rate / spec:.0f}%'} | {mem} |")
    if part["stopped"]:
        lines += ["", "Stopped (out of device memory): " + ", ".join(
            f"{LABELS.get(g, g)} at T = {T}" for g, T in part["stopped"].items()) + "."]
    lines += ["", *_bars(part), ""]
    return lines


def _bars(part: dict) -> list[str]:
    """Issue 12's time bars, read on this device: Spool k=4 vs TimeSformer, k=2 vs VideoMAE."""
    t = {(r["model"], r["T"], r["mode"]): r["s"] for r in part["rows"] if "s" in r}
    out = []
    for mode in ("eager", "graphs", "compiled"):
        for ours, peer, label in (("spool_w4_k4", "timesformer", "Spool k=4 / TimeSformer-base"),
                                  ("spool_w4_k2", "videomae", "Spool k=2 / VideoMAE-base")):
            pairs = sorted((T, t[(ours, T, m)] / t[(peer, T, m)]) for (k, T, m) in t
                           if k == ours and m == mode and (peer, T, m) in t)
            if pairs:
                out.append(f"- {label}, {mode}: " + ", ".join(
                    f"T={T} {ratio:.2f}x" for T, ratio in pairs))
    return out


def _profile(part: dict) -> list[str]:
    if "error" in part:
        return ["### Where Spool k=1 spends its device time", "", f"Not measured: {part['error']}.",
                ""]
    s = part["seconds"]
    total = s["backbone"] + s["stack"]
    attention = s.get("attention", 0.0)
    share = 100 * attention / max(s["stack"], 1e-12)
    return [f"### Where Spool k=1 spends its device time (T = {part['T']}, {part['dtype']}, "
            f"attention `{part['attention_backend']}`)", "",
            f"Backbone {1e3 * s['backbone']:.1f} ms ({100 * s['backbone'] / total:.0f}%), "
            f"temporal stack {1e3 * s['stack']:.1f} ms ({100 * s['stack'] / total:.0f}%), of "
            f"which attention {1e3 * attention:.1f} ms ({share:.0f}% "
            "of the stack).", "", "<details><summary>Top operators</summary>", "", "```",
            part["top_ops"].rstrip(), "```", "", "</details>", ""]


def render(results: dict) -> str:
    lines = [f"Device: {results['machine']}; started {results['started']}.", "",
             f"    {results['command']}", ""]
    if results.get("tiny"):
        lines += ["Toy model sizes (`--tiny`): a smoke test; the numbers mean nothing.", ""]
    if "tests" in results:
        t = results["tests"]
        lines += ["### Equivalence tests on this device", "",
                  f"`{t['command']}`: {t['summary']} (exit {t['returncode']}).", ""]
    if "backends" in results:
        lines += _backends(results["backends"])
    if "peers" in results:
        lines += _peers(results["peers"])
    if "profile" in results:
        lines += _profile(results["profile"])
    if results["skipped"]:
        lines += ["Not run (time budget spent): " + ", ".join(results["skipped"]) + ".", ""]
    cut = [name for name, part in results.items() if isinstance(part, dict) and part.get("partial")]
    if cut:
        lines += ["Cut short (the device call ended while it ran; the rest of it was not "
                  "measured): " + ", ".join(cut) + ".", ""]
    return "\n".join(lines)
