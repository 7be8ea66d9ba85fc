"""Time estimates for ``bench/peers.py``: the per-measurement time cap and ``--plan``.

A forward's time is estimated as its counted FLOPs (``FlopCounterMode`` on the meta device) over
a rate: the rate that model measured at its largest T so far (in this run or the workdir), else
a nominal rate from the previous full run on the 2-core Xeon (docs/benchmarks.md, peers
section, commit 68a7ec1). Rates fall slowly with T (VideoMAE's attention), so the estimate
of the next T is a little low; the child is killed at ``child_timeout`` anyway.
"""

from __future__ import annotations

import peers_models as pm

# GFLOP/s (counted FLOPs / median time) in the previous full run: backbone 371 GFLOP in
# 1.35 s at T=8; Spool w=4 / w=16 stacks 592 / 680 GFLOP in 2.46 / 2.79 s; dense 1,575 GFLOP
# in 34 s at T=16; TimeSformer 392 in 1.78 s and 6,376 in 28.5 s; VideoMAE 158 in 0.61 s and
# 7,961 in 35 s. The pooled stacks (L = 65 and 17) were not run then: their matmuls have 4x
# and 16x fewer rows and their attention blocks are tiny, so they are guessed lower.
NOMINAL_GFLOPS = {"backbone": 265, "spool_w4": 230, "spool_w4_k2": 150, "spool_w4_k4": 90,
                  "spool_w16": 220, "dense": 45, "timesformer": 220, "videomae": 220}
CHILD_START_S = {"spool": 12.0, "peer": 6.0}  # interpreter, imports, random init (a guess)
PEAK_S = 4.0  # matmul peak: 9 fp32 4096^2 products at ~340 GFLOP/s
WARMUP_T = 4


def _s(seconds: float) -> str:
    return f"{seconds:,.0f} s" if seconds >= 10 else f"{seconds:.2g} s"


def rate(res: dict, key: str) -> float:
    """FLOP/s of ``key`` ("backbone", a Spool variant's stack, or a peer) at its largest
    measured T, else the nominal rate."""
    if key == "backbone":
        done = sorted(res.get("backbone", {}).items())
        if done and done[-1][0] in res["flops"]:
            T, s = done[-1]
            return res["flops"][T]["backbone"] / s
    else:
        row = key + "_cached" if key in pm.VARIANTS else key
        done = sorted(T for (k, T) in res["rows"] if k == row and T in res["flops"])
        if done:
            T = done[-1]
            return res["flops"][T][row] / res["rows"][(row, T)]["median"]
    return NOMINAL_GFLOPS[key] * 1e9


def forward_s(res: dict, key: str, T: int) -> float:
    """Estimated seconds of one forward of ``key`` at T (a Spool variant: its stack only)."""
    row = key + "_cached" if key in pm.VARIANTS else key
    return res["flops"][T][row] / rate(res, key)


def spool_iteration_s(res: dict, T: int, keys: list[str]) -> float:
    return forward_s(res, "backbone", T) + sum(forward_s(res, k, T) for k in keys)


def fit_spool(res: dict, T: int, runs: int, keys: list[str], cap: float | None
              ) -> tuple[int, list[str], dict[str, str]]:
    """Runs and variants of the Spool child at T under the time cap. A variant's measurement
    is its full model, backbone + its stack: one over the cap is left out (with its reason),
    and the runs are cut so the costliest variant kept stays under it."""
    if cap is None:
        return runs, list(keys), {}
    bb = forward_s(res, "backbone", T)
    full = {k: bb + forward_s(res, k, T) for k in keys}
    dropped = {k: f"over the time cap: estimated {_s(s)} per forward > {_s(cap)}"
               for k, s in full.items() if s > cap}
    keys = [k for k in keys if k not in dropped]
    if not keys:
        return 0, keys, dropped
    return max(1, min(runs, int(cap // max(full[k] for k in keys)))), keys, dropped


def fit_peer(res: dict, name: str, T: int, runs: int, cap: float | None) -> tuple[int, str]:
    """Runs of a peer at T under the time cap; 0 and the reason if one forward is over it."""
    one = forward_s(res, name, T)
    if cap is None:
        return runs, ""
    if one > cap:
        return 0, f"over the time cap: estimated {_s(one)} per forward > {_s(cap)}"
    return max(1, min(runs, int(cap // one))), ""


def spool_child_s(res: dict, T: int, runs: int, keys: list[str], dense_runs: int,
                  first: bool) -> float:
    """The whole Spool child: start, warm-up, FLOP check (T <= 8), matmul peak, timed runs
    and the end-to-end check (first T)."""
    plain = [k for k in keys if k != "dense"]
    it = spool_iteration_s(res, T, plain)
    dense = forward_s(res, "dense", T) if "dense" in keys else 0.0
    warm_t = T if T <= 8 else min(WARMUP_T, T)
    s = CHILD_START_S["spool"] + PEAK_S + (it + dense) * warm_t / T
    s += runs * it + dense_runs * dense + (it + dense if T <= 8 else 0.0)
    if first:  # end-to-end check: the w=4 variants again, each through a full model
        s += sum(forward_s(res, "backbone", T) + forward_s(res, k, T)
                 for k in ("spool_w4", "spool_w4_k2", "spool_w4_k4") if k in keys)
    return s


def peer_child_s(res: dict, name: str, T: int, runs: int) -> float:
    one = forward_s(res, name, T)
    warm = one * (T if T <= 8 else WARMUP_T) / T
    return CHILD_START_S["peer"] + warm + runs * one + (one if T <= 8 else 0.0)


def interleave_s(res: dict, keys: list[str], short: int, long_: int, short_runs: int) -> float:
    frames = 2 * short_runs * short + long_ + WARMUP_T
    return sum(CHILD_START_S["spool"] / 2 + frames / long_ * (
        forward_s(res, "backbone", long_) + forward_s(res, k, long_)) for k in keys)


def profile_s(res: dict, key: str, T: int) -> float:
    return CHILD_START_S["spool"] / 2 + 1.1 * forward_s(res, key, T) * (T + WARMUP_T) / T


def print_plan(planned: list[tuple[str, float]], res: dict, frames: list[int],
               counting_s: float) -> None:
    """``--plan``: each child with its estimated seconds, what is skipped and why, the total."""
    for what, s in planned:
        print(f"{s:8,.0f} s  {what}")
    for key in sorted(k for k in res["skipped"] if k[1] in frames
                      and not k[0].endswith("_cached")):
        print(f"  skipped {key[0]} T={key[1]}: {res['skipped'][key]}")
    total = sum(s for _, s in planned)
    print(f"estimated total: {total / 60:.1f} min (+ {counting_s:.0f} s of FLOP counting, "
          "done now)")
