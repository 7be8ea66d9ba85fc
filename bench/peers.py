"""Spool vs TimeSformer vs VideoMAE vs dense-masked Spool, side by side (issue 5).

Every model is built with random weights from base-size configs at 224x224 (nothing is
downloaded) and run with batch size 1 under ``torch.no_grad`` for T = 8 .. 128 frames:

- Spool, w=4 and w=16: DINOv2-base-sized backbone + 12 temporal blocks, ``blocked`` attention.
- Spool on cached backbone tokens (``forward_tokens``): the temporal stack alone.
- dense-masked Spool: ``attn_implementation="reference"``, the full ``(T+2)L x (T+2)L`` mask.
- HF ``TimesformerModel`` (base, divided space-time, one model per T since its time embedding
  is sized by ``num_frames``) and HF ``VideoMAEModel`` (base, tubelet 2, ``num_frames=T``).

Measured: forward latency (median of the timed runs after a warm-up), clips/s, frames/s, peak
memory, parameter count, FLOPs (``torch.utils.flop_counter.FlopCounterMode``), and the achieved
FLOP/s of Spool's temporal stack against this machine's fp32 matmul peak measured in the same run.

    python bench/peers.py --out docs/benchmarks.md           # full run (~25 min on 2 cores)
    python bench/peers.py --quick --out /tmp/peers.md        # development: T = 2, 4, one run

Each (model group, T) runs in its own child process, so a failed allocation cannot take the
benchmark down, and peak memory is that process's resident-set high-water mark (see
``peers_memory.Memory``). Method details are written next to the tables (``METHOD``).

This file is the command line and the run (parent side); the rest lives next to it:
``peers_models.py`` (models, parameters, FLOPs), ``peers_memory.py`` (peak RSS, caps,
estimates), ``peers_child.py`` (what a child process measures) and ``peers_report.py``
(markdown section, plots).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings, also when not run as a script
from _report import cpu_name, update_section  # noqa: E402
from peers_child import child_main, matmul_peak  # noqa: E402
from peers_memory import GIB, estimate_memory, mem_available  # noqa: E402
from peers_models import (  # noqa: E402
    DENSE_W,
    L_TOKENS,
    SPOOL_WS,
    count_flops,
    param_counts,
    useful_temporal_flops,
)
from peers_report import SECTION, plot, render  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FULL_TS = (8, 16, 32, 64, 128)
FULL_RUNS = {8: 3, 16: 3, 32: 2, 64: 1, 128: 1}
QUICK_TS = (2, 4)


def run_child(job: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--child", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"failed": f"child exited {proc.returncode}: {' | '.join(tail)[:300]}"}


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "mem_total_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB,
            "load": os.getloadavg()}


def source_state() -> str:
    """Commit and whether the attention code differs from it (others edit it concurrently)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True,
                                  cwd=str(ROOT)).stdout
        except OSError:
            return ""
    head = git("rev-parse", "--short", "HEAD").strip()
    dirty = git("status", "--porcelain", "--", "spool")
    changed = sorted({line[3:] for line in dirty.splitlines() if len(line) > 3})
    return f"commit {head}" + (f", uncommitted changes in {', '.join(changed)}" if changed else "")


def log(msg: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    ts = args.ts or (QUICK_TS if args.quick else FULL_TS)
    runs = {T: (args.runs or (1 if args.quick else FULL_RUNS.get(T, 1))) for T in ts}
    threads = torch.get_num_threads()
    res: dict = {"machine": machine(), "source": source_state(), "ts": list(ts), "runs": runs,
                 "command": args.command, "rows": {}, "skipped": {}, "flops": {},
                 "peaks": [], "flop_checks": {}, "loads": {}}
    log(f"machine: {res['machine']}", t0)
    res["peaks"].append(matmul_peak(args.peak_repeats))
    log(f"matmul peak {res['peaks'][-1] / 1e9:.1f} GFLOP/s", t0)
    res["params"] = param_counts()
    for T in ts:
        for group in ("spool", "timesformer", "videomae"):
            res["flops"].setdefault(T, {}).update(count_flops(group, T))
    res["useful"] = {T: {w: useful_temporal_flops(T, w) for w in SPOOL_WS + (DENSE_W,)}
                     for T in ts}
    log("parameters and FLOPs counted (meta device)", t0)
    dense_fits = True
    for T in ts:
        cap = min(args.mem_cap * GIB, mem_available() - GIB)
        # --- Spool group (w=16 end to end, w=4 and dense on the same tokens) ---
        est_spool = estimate_memory("spool", T)
        est_dense = est_spool + estimate_memory("dense", T, _dense_bytes_per_n2(res))
        dense = dense_fits and est_dense <= cap
        if not dense:
            reason = (f"OOM: estimated {est_dense / GIB:.1f} GiB > {cap / GIB:.1f} GiB cap"
                      if dense_fits else "not run: OOM at a smaller T")
            for key in ("dense", "dense_cached"):
                res["skipped"][(key, T)] = reason
            dense_fits = dense_fits and est_dense <= cap
        job = {"kind": "spool", "T": T, "runs": runs[T], "dense": dense, "threads": threads,
               "budget": int(cap), "flop_check": T <= 8, "end_to_end_check": T == min(ts),
               "peak": args.peak_repeats, "dense_runs": 1 if T >= 32 else runs[T]}
        if "spool" not in args.groups:
            pass
        elif est_spool > cap:
            for key in ("spool_w4", "spool_w16", "spool_w4_cached", "spool_w16_cached"):
                res["skipped"][(key, T)] = f"OOM: estimated {est_spool / GIB:.1f} GiB"
        else:
            log(f"Spool group T={T} ({runs[T]} runs, dense={'yes' if dense else 'no'})", t0)
            res["loads"][("spool", T)] = os.getloadavg()[0]
            out = run_child(job, args.child_timeout)
            _collect_spool(res, T, out)
        # --- peers ---
        for name in ("timesformer", "videomae"):
            if name not in args.groups:
                continue
            est = estimate_memory(name, T)
            if est > cap:
                res["skipped"][(name, T)] = f"OOM: estimated {est / GIB:.1f} GiB"
                continue
            log(f"{name} T={T} ({runs[T]} runs)", t0)
            res["loads"][(name, T)] = os.getloadavg()[0]
            job = {"kind": "peer", "name": name, "T": T, "runs": runs[T], "threads": threads,
                   "budget": int(cap), "flop_check": T <= 8}
            out = run_child(job, args.child_timeout)
            _collect_peer(res, name, T, out)
    res["peaks"].append(matmul_peak(args.peak_repeats))
    log(f"matmul peak (end) {res['peaks'][-1] / 1e9:.1f} GFLOP/s", t0)
    if args.interleave:
        log("interleaved T=8 / T=128 check of the temporal stack", t0)
        out = run_child({"kind": "interleave", "short": 8, "long": 128, "ws": list(SPOOL_WS),
                         "short_runs": 3, "threads": threads, "budget": int(args.mem_cap * GIB)},
                        args.child_timeout)
        if "runs" in out:
            res["interleave"] = out
    res["profiles"] = []
    for T in args.profile_ts:
        for w in args.profile_ws:
            log(f"profiling Spool temporal stack w={w} T={T}", t0)
            out = run_child({"kind": "profile", "T": T, "w": w, "threads": threads,
                             "budget": int(args.mem_cap * GIB)}, args.child_timeout)
            if "failed" not in out and "oom" not in out:
                res["profiles"].append(out)
    res["elapsed_s"] = time.perf_counter() - t0
    log("done", t0)
    return res


def _dense_bytes_per_n2(res: dict) -> float:
    """Bytes per (F L)^2 of the dense-masked temporal stack, from its largest measured T
    (240 before any is measured: a bool and four fp32 [H, N, N] tensors, H = 12)."""
    done = [(T, r["memory"]) for (k, T), r in res["rows"].items()
            if k == "dense_cached" and r["memory"]]
    if not done:
        return 240.0
    T, mem = max(done)
    return 1.1 * mem / ((T + 2) * L_TOKENS) ** 2


def _collect_spool(res: dict, T: int, out: dict) -> None:
    keys = ("spool_w4", "spool_w16", "spool_w4_cached", "spool_w16_cached", "dense",
            "dense_cached")
    if "failed" in out or "oom" in out:
        for key in keys:
            res["skipped"].setdefault((key, T), out.get("oom") or out["failed"])
        return
    if "peak" in out:
        res["peaks"].append(out["peak"])
        res.setdefault("child_peaks", {})[T] = out["peak"]
    res.setdefault("backbone", {})[T] = out["times"]["backbone"]["median"]
    if "end_to_end_w4" in out:
        res["end_to_end_w4"] = (T, out["end_to_end_w4"])
    if "flop_check" in out:
        res["flop_checks"][T] = out["flop_check"]
    for key in keys:
        if key in out["times"]:
            res["rows"][(key, T)] = {"times": out["times"][key]["runs"],
                                     "median": out["times"][key]["median"],
                                     "memory": out["memory"].get(key),
                                     "cpu_share": out.get("cpu_share")}
        elif key.split("_cached")[0] in out.get("errors", {}):
            res["skipped"][(key, T)] = out["errors"][key.split("_cached")[0]]


def _collect_peer(res: dict, name: str, T: int, out: dict) -> None:
    if "failed" in out or "oom" in out:
        res["skipped"][(name, T)] = out.get("oom") or out["failed"]
        return
    if "flop_check" in out:
        res["flop_checks"].setdefault(T, {}).update(out["flop_check"])
    res["rows"][(name, T)] = {"times": out["times"][name]["runs"],
                              "median": out["times"][name]["median"],
                              "memory": out["memory"][name],
                              "cpu_share": out.get("cpu_share")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="T = 2, 4 and one timed run")
    parser.add_argument("--ts", type=int, nargs="+", help="frame counts (default 8 .. 128)")
    parser.add_argument("--runs", type=int, help="timed runs per T (default by T)")
    parser.add_argument("--out", type=Path, help="markdown file to write this section into "
                        "(plots go next to it); nothing is written without it")
    parser.add_argument("--mem-cap", type=float, default=18.0,
                        help="GiB a child may use; estimated above it = reported as OOM")
    parser.add_argument("--peak-repeats", type=int, default=8)
    parser.add_argument("--profile-ts", type=int, nargs="*", default=[],
                        help="also profile the temporal stack at these T")
    parser.add_argument("--profile-ws", type=int, nargs="*", default=[4, 16])
    parser.add_argument("--interleave", action="store_true",
                        help="also time the temporal stack at T=8, 128, 8 in one process")
    parser.add_argument("--child-timeout", type=float, default=1800)
    parser.add_argument("--groups", nargs="+", default=["spool", "timesformer", "videomae"],
                        help="run only these (development)")
    parser.add_argument("--json", type=Path, help="also dump the raw results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return
    args.command = "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:])
    res = run(args)
    res["mem_cap"], res["peak_repeats"] = args.mem_cap, args.peak_repeats
    section, _ = render(res)
    print(section)
    if args.json:
        raw = dict(res, rows={f"{k}@{T}": v for (k, T), v in res["rows"].items()},
                   skipped={f"{k}@{T}": v for (k, T), v in res["skipped"].items()},
                   loads={f"{k}@{T}": v for (k, T), v in res["loads"].items()})
        args.json.write_text(json.dumps(raw, indent=1, default=str))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        plot(res, args.out.parent)
        update_section(args.out, SECTION[3:], section.split("\n", 1)[1])
        print(f"wrote {args.out} and plots in {args.out.parent}", file=sys.stderr)


if __name__ == "__main__":
    main()
