"""Spool vs TimeSformer vs VideoMAE (vs dense-masked Spool), side by side (issues 5 and 12).

Every model is built with random weights from base-size configs at 224x224 (nothing is
downloaded) and run with batch size 1 under ``torch.no_grad`` for T = 8 .. 512 frames:

- Spool: DINOv2-base-sized backbone + 12 temporal blocks, ``blocked`` attention, w=4 with
  ``token_pooling`` k=1, 2 and 4 (the temporal stack sees 257, 1 + 64 and 1 + 16 tokens per
  frame); optionally w=16 (``spool_w16``) and the dense-masked Spool (``dense``,
  ``attn_implementation="reference"``), issue 5's comparison.
- Spool on cached backbone tokens (``forward_tokens``): the temporal stack alone.
- HF ``TimesformerModel`` (base, divided space-time, one model per T since its time embedding
  is sized by ``num_frames``) and HF ``VideoMAEModel`` (base, tubelet 2, ``num_frames=T``).

Measured: forward latency (median of the timed runs after a warm-up), clips/s, frames/s, peak
memory, parameter count, FLOPs (``torch.utils.flop_counter.FlopCounterMode``), the achieved
FLOP/s of Spool's temporal stack against this machine's fp32 matmul peak, and issue 12's bars.

    python bench/peers.py --plan --interleave --profile-ts 32 --time-cap 300   # estimate only
    python bench/peers.py --out docs/benchmarks.md --interleave --profile-ts 32 --time-cap 300
        # ~27 min on 2 quiet cores; VideoMAE stops at T=256 (T=512 is over the time cap)
    python bench/peers.py --out docs/benchmarks.md --models videomae --frames 512
        # optional second part, ~9 min: VideoMAE at T=512 measured, added to the same table
    python bench/peers.py --tiny --out /tmp/peers-tiny/peers.md   # smoke test, toy models

Results accumulate in ``--workdir`` (``peers_store``): a run measures only what is not stored
yet (``--again``: measure again), so ``--models`` / ``--frames`` split the run into parts that
combine into one table, each part rewriting the report from everything stored. A model stops
at the first T where it runs out of memory (estimated before the child starts, or a failed
allocation under the cap) or goes over ``--time-cap`` (seconds of timed runs, estimated from
FLOPs; ``peers_plan``); the report says where and why.

Each (model group, T) runs in its own child process, so a failed allocation cannot take the
benchmark down, and peak memory is that process's resident-set high-water mark (see
``peers_memory.Memory``). Siblings: ``peers_models`` (models, FLOPs), ``peers_memory``,
``peers_child`` (what a child measures), ``peers_plan`` (time estimates), ``peers_store``
(workdir), ``peers_report`` / ``peers_bars`` (markdown, plots, bars).
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
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # this checkout's spool
import peers_plan as plan  # noqa: E402
import peers_store as store  # noqa: E402
from _report import cpu_name, update_section  # noqa: E402
from peers_child import child_main, matmul_peak  # noqa: E402
from peers_memory import GIB, dense_bytes_per_n2, estimate_memory, mem_available  # noqa: E402
from peers_models import (  # noqa: E402
    PEERS,
    VARIANTS,
    count_flops,
    param_counts,
    use_dims,
    useful_temporal_flops,
)
from peers_report import SECTION, plot, render  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FULL_TS = (8, 16, 32, 64, 128, 256, 512)
TINY_TS = (2, 4, 8)
# Fewer runs where one forward takes long: the Spool group at T = 512 is ~5 min per run.
FULL_RUNS = {8: 3, 16: 3, 32: 2}
MODELS = tuple(VARIANTS) + PEERS
DEFAULT_MODELS = ("spool_w4", "spool_w4_k2", "spool_w4_k4") + PEERS  # issue 12's comparison
INTERLEAVE = (8, 128)  # short and long T of the interleaved check (tiny: 2 and 8)


def run_child(job: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--child", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"failed": f"over the time cap: killed after {timeout:,.0f} s"}
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
    """Commit and whether the model code differs from it (others edit it concurrently)."""
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


class Part:
    """One run of the script (a part of the whole benchmark): its settings, the stored
    results it adds to, and in ``--plan`` mode the children it would start, estimated."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.t0 = args, time.perf_counter()
        self.res = store.load(args.workdir, args.tiny)
        self.frames = sorted(args.frames or (TINY_TS if args.tiny else FULL_TS))
        self.models = [m for m in MODELS if m in args.models]
        self.threads = torch.get_num_threads()
        self.peak_n = 512 if args.tiny else 4096  # matmul size of the FLOP/s peak
        self.planned: list[tuple[str, float]] = []  # --plan: (what, estimated seconds)

    def runs(self, T: int) -> int:
        return self.args.repeats or (1 if self.args.tiny else FULL_RUNS.get(T, 1))

    def child(self, job: dict, what: str, estimate: float) -> dict | None:
        if self.args.plan:
            self.planned.append((what, estimate))
            return None
        log(f"{what} (estimated {estimate:,.0f} s)", self.t0)
        job = dict(job, threads=self.threads, tiny=self.args.tiny)
        timeout = self.args.child_timeout
        if self.args.time_cap:  # timed runs under the cap, plus start and warm-up
            timeout = min(timeout, max(3 * self.args.time_cap, estimate * 2) + 120)
        return run_child(job, timeout)

    def cap(self) -> float:
        return min(self.args.mem_cap * GIB, mem_available() - GIB)

    def stop(self, model: str, T: int, stopped: dict) -> bool:
        """True (and the reason recorded) if ``model`` stopped at a smaller T."""
        if model in stopped and stopped[model][0] < T:
            T0, why = stopped[model]
            for name in (model, model + "_cached") if model in VARIANTS else (model,):
                self.res["skipped"][(name, T)] = f"not run: {why} at T={T0}"
            return True
        return False


def run(args: argparse.Namespace) -> dict:
    p = Part(args)
    res, t0 = p.res, p.t0
    part = {"command": args.command, "machine": machine(), "source": source_state(),
            "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    store.forget(res, p.models, p.frames, args.again)
    res["ts"] = sorted(set(res["ts"]) | set(p.frames))
    res["runs"].update({T: p.runs(T) for T in p.frames})
    res["params"] = param_counts()
    il_short, il_long = (2, 8) if args.tiny else INTERLEAVE
    counted = set(res["ts"]) | set(args.profile_ts) | ({il_long} if args.interleave else set())
    todo = counted if args.again else counted - set(res["flops"])  # slow: once per workdir
    for T in sorted(todo):
        res["flops"][T] = {}
        for group in ("spool",) + PEERS:
            res["flops"][T].update(count_flops(group, T))
    if args.plan and not args.again:  # keep the counts for the run that follows
        store.save(args.workdir, res)
    res["useful"] = {T: {key: useful_temporal_flops(T, w, k)
                         for key, (w, k, _) in VARIANTS.items()} for T in res["ts"]}
    log(f"parameters and FLOPs counted (meta device); models {', '.join(p.models)}; "
        f"T = {', '.join(map(str, p.frames))}", t0)
    if not args.plan:
        res["peaks"].append(matmul_peak(args.peak_repeats, p.peak_n))
        log(f"matmul peak {res['peaks'][-1] / 1e9:.1f} GFLOP/s", t0)
    stopped: dict[str, tuple[int, str]] = {}
    for model in p.models:
        if (stop := store.first_stop(res, model)) is not None:
            stopped[model] = stop
    for T in p.frames:
        spool = [k for k in p.models if k in VARIANTS]
        if spool:
            _run_spool(p, T, spool, stopped)
        for name in [m for m in p.models if m in PEERS]:
            _run_peer(p, name, T, stopped)
    if not args.plan:
        res["peaks"].append(matmul_peak(args.peak_repeats, p.peak_n))
    keys = [k for k in (args.interleave_variants or p.models) if k in VARIANTS and k != "dense"]
    if args.interleave and keys and (args.again or "interleave" not in res):
        out = p.child({"kind": "interleave", "short": il_short, "long": il_long,
                       "variants": keys, "short_runs": 3, "budget": int(p.cap())},
                      f"interleaved T={il_short} / T={il_long} check: {', '.join(keys)}",
                      plan.interleave_s(res, keys, il_short, il_long, 3))
        if out and "runs" in out:
            res["interleave"] = out
            store.save(args.workdir, res)
    done = {(x["key"], x["T"]) for x in res["profiles"]}
    for T in args.profile_ts:
        for key in args.profile_variants:
            if (key, T) in done and not args.again:
                continue
            out = p.child({"kind": "profile", "T": T, "key": key, "budget": int(p.cap())},
                          f"profile of {key}'s temporal stack at T={T}",
                          plan.profile_s(res, key, T))
            if out and "failed" not in out and "oom" not in out:
                res["profiles"] = [x for x in res["profiles"] if (x["key"], x["T"]) != (key, T)]
                res["profiles"].append(out)
                store.save(args.workdir, res)
    part["elapsed_s"] = time.perf_counter() - t0
    if not args.plan:
        res["parts"].append(part)
        res["mem_cap"], res["peak_repeats"] = args.mem_cap, args.peak_repeats
        store.save(args.workdir, res)
    log("done", t0)
    return p


def _run_spool(p: Part, T: int, keys: list[str], stopped: dict) -> None:
    """One child for the Spool variants at T that are not measured yet (they share the
    backbone's forward), each only while it fits the memory cap and the time cap."""
    res, args = p.res, p.args
    keys = [k for k in keys if not p.stop(k, T, stopped)
            and ((k + "_cached", T) not in res["rows"] or args.again)]
    keys = [k for k in keys if (k, T) not in res["skipped"]]  # a stored failed allocation
    if not keys:
        return
    cap = p.cap()
    params = res["params"]
    mem = estimate_memory("spool", T, params["backbone"] + sum(
        params[k + "_cached"] for k in keys if k != "dense"))
    if "dense" in keys:
        dense = mem + estimate_memory("dense", T, 0, dense_bytes_per_n2(res)) - int(0.8 * GIB)
        if dense > cap:
            _skip(res, "dense", T, f"OOM: estimated {dense / GIB:.1f} GiB > "
                                   f"{cap / GIB:.1f} GiB cap", stopped)
            keys.remove("dense")
    if mem > cap:
        for key in keys:
            _skip(res, key, T, f"OOM: estimated {mem / GIB:.1f} GiB > {cap / GIB:.1f} GiB cap",
                  stopped)
        return
    runs, keys, dropped = plan.fit_spool(res, T, p.runs(T), keys, args.time_cap)
    for key, why in dropped.items():
        _skip(res, key, T, why, stopped)
    if not keys:
        return
    dense_runs = min(runs, 1 if T >= 32 else runs)
    # The end-to-end check builds and runs the w=4 models again: once, at a small T.
    first = T <= 16 and ("end_to_end" not in res or args.again)
    job = {"kind": "spool", "T": T, "runs": runs, "variants": keys, "budget": int(cap),
           "flop_check": T <= 8, "end_to_end_check": first, "peak": args.peak_repeats,
           "peak_n": p.peak_n,
           "dense_runs": dense_runs}
    res["loads"][("spool", T)] = os.getloadavg()[0]
    out = p.child(job, f"Spool group T={T} ({runs} runs; {', '.join(keys)})",
                  plan.spool_child_s(res, T, runs, keys, dense_runs, first))
    if out is None:
        return
    _collect_spool(res, T, out, keys, stopped)
    store.save(args.workdir, res)  # a part stopped later keeps this child's results


def _run_peer(p: Part, name: str, T: int, stopped: dict) -> None:
    res, args = p.res, p.args
    if p.stop(name, T, stopped) or (((name, T) in res["rows"] or (name, T) in res["skipped"])
                                    and not args.again):
        return
    cap = p.cap()
    est = estimate_memory(name, T, res["params"][name])
    if est > cap:
        _skip(res, name, T, f"OOM: estimated {est / GIB:.1f} GiB > {cap / GIB:.1f} GiB cap",
              stopped)
        return
    runs, why = plan.fit_peer(res, name, T, p.runs(T), args.time_cap)
    if not runs:
        _skip(res, name, T, why, stopped)
        return
    res["loads"][(name, T)] = os.getloadavg()[0]
    out = p.child({"kind": "peer", "name": name, "T": T, "runs": runs, "budget": int(cap),
                   "flop_check": T <= 8}, f"{name} T={T} ({runs} runs)",
                  plan.peer_child_s(res, name, T, runs))
    if out is None:
        return
    if "failed" in out or "oom" in out:
        _skip(res, name, T, out.get("oom") or out["failed"], stopped)
    else:
        if "flop_check" in out:
            res["flop_checks"].setdefault(T, {}).update(out["flop_check"])
        res["rows"][(name, T)] = {"times": out["times"][name]["runs"],
                                  "median": out["times"][name]["median"],
                                  "memory": out["memory"][name],
                                  "cpu_share": out.get("cpu_share")}
    store.save(args.workdir, res)


def _skip(res: dict, key: str, T: int, why: str, stopped: dict) -> None:
    """``key`` (and its cached-tokens row) not measured at T; OOM and the time cap stop it
    for every larger T, other failures (a crash) do not."""
    for name in ((key, key + "_cached") if key in VARIANTS else (key,)):
        res["skipped"][(name, T)] = why
    if "OOM" in why or "time cap" in why:
        stopped.setdefault(key, (T, "OOM" if "OOM" in why else "over the time cap"))


def _collect_spool(res: dict, T: int, out: dict, keys: list[str], stopped: dict) -> None:
    if "failed" in out or "oom" in out:
        for key in keys:
            _skip(res, key, T, out.get("oom") or out["failed"], stopped)
        return
    if "peak" in out:
        res["peaks"].append(out["peak"])
        res["child_peaks"][T] = out["peak"]
    backbone = out["times"]["backbone"]["median"]
    res["backbone"][T] = backbone
    if "end_to_end" in out:
        res["end_to_end"] = (T, out["end_to_end"])
    if "flop_check" in out:
        res["flop_checks"].setdefault(T, {}).update(out["flop_check"])
    for key in keys:
        if key + "_pool" in out["times"]:
            res["pool"][(key, T)] = out["times"][key + "_pool"]["median"]
        if key in out.get("errors", {}):
            _skip(res, key, T, out["errors"][key], stopped)
            continue
        for name in (key, key + "_cached"):
            res["rows"][(name, T)] = {"times": out["times"][name]["runs"],
                                      "median": out["times"][name]["median"],
                                      "memory": out["memory"].get(name),
                                      "cpu_share": out.get("cpu_share"),
                                      "backbone": backbone}  # the same child's, for ratios


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(DEFAULT_MODELS),
                    help="what to run (default: Spool w=4 at k=1, 2, 4, TimeSformer, VideoMAE)")
    ap.add_argument("--frames", "--ts", type=int, nargs="+",
                    help="frame counts T (default 8 .. 512; --tiny: 2, 4, 8)")
    ap.add_argument("--repeats", "--runs", type=int,
                    help="timed runs per T (default 3 at T <= 16, 2 at 32, then 1)")
    ap.add_argument("--time-cap", type=float, default=None, metavar="S",
                    help="seconds per measurement: a (model, T)'s timed runs (a Spool "
                         "variant: backbone + its stack), estimated from FLOPs; runs are cut "
                         "to fit, a model whose one forward is over it stops (default: none)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="results accumulate here (default /tmp/spool-bench-peers, "
                         "--tiny: /tmp/spool-bench-peers-tiny)")
    ap.add_argument("--again", action="store_true", help="measure again what is stored")
    ap.add_argument("--plan", action="store_true",
                    help="print the children this run would start with estimated seconds")
    ap.add_argument("--tiny", action="store_true", help="toy-sized models (smoke test)")
    ap.add_argument("--out", type=Path, help="markdown file to write this section into "
                    "(plots go next to it); nothing is written without it")
    ap.add_argument("--mem-cap", type=float, default=18.0,
                    help="GiB a child may use; estimated above it = reported as OOM")
    ap.add_argument("--peak-repeats", type=int, default=8)
    ap.add_argument("--profile-ts", type=int, nargs="*", default=[],
                    help="also profile the temporal stack at these T")
    ap.add_argument("--profile-variants", nargs="*", choices=list(VARIANTS),
                    default=["spool_w4", "spool_w4_k4"])
    ap.add_argument("--interleave", action="store_true",
                    help="also time Spool at T=8, 8, 8, 128, 8, 8, 8 in one process")
    ap.add_argument("--interleave-variants", nargs="*", choices=list(VARIANTS),
                    help="default: the Spool variants of --models")
    ap.add_argument("--child-timeout", type=float, default=1800)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return
    use_dims(args.tiny)
    if args.workdir is None:
        args.workdir = Path("/tmp/spool-bench-peers" + ("-tiny" if args.tiny else ""))
    args.command = "python " + " ".join([os.path.relpath(__file__, ROOT)]
                                        + (sys.argv[1:] if argv is None else argv))
    p = run(args)
    if args.plan:
        plan.print_plan(p.planned, p.res, p.frames, time.perf_counter() - p.t0)
        return
    section, _ = render(p.res)
    print(section)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        plot(p.res, args.out.parent)
        update_section(args.out, SECTION[3:], section.split("\n", 1)[1])
        print(f"wrote {args.out} and plots in {args.out.parent}", file=sys.stderr)


if __name__ == "__main__":
    main()
