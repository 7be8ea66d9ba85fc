"""The bars of issues 5 and 12 for ``bench/peers.py``: computed from the collected results and
printed as markdown lines, each ending in met / NOT met."""

from __future__ import annotations

import statistics

FLAT = 1.3  # time per frame at the largest T / the smallest: "flat" (issue 5's bar)
STACK_BARS = {"spool_w4_k2": 0.45, "spool_w4_k4": 0.15}  # temporal stack / backbone time
SPOOL_W4 = ("spool_w4", "spool_w4_k2", "spool_w4_k4")  # "Spool" of issue 12: w=4, k=1, 2, 4


def tpf(res: dict, key: str, T: int) -> float | None:
    """Seconds per frame of ``key`` at T, or None where it did not run."""
    r = res["rows"].get((key, T))
    return r["median"] / T if r else None


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _why(res: dict, key: str, T: int) -> str:
    return res["skipped"].get((key, T), "not run")


def stack_ratios(res: dict, key: str) -> dict[int, float]:
    """Temporal stack time / backbone time of the same child, by T (rows from a child of an
    earlier part carry that child's backbone time)."""
    out = {}
    for T in res["ts"]:
        row = res["rows"].get((key + "_cached", T))
        bb = row and (row.get("backbone") or res.get("backbone", {}).get(T))
        if bb:
            out[T] = row["median"] / bb
    return out


def issue12(res: dict, labels: dict[str, str]) -> list[str]:
    lines = []
    # (1) temporal stack / backbone at k = 2 and k = 4
    for key, bar in STACK_BARS.items():
        ratios = stack_ratios(res, key)
        if not ratios:
            lines.append(f"- {labels[key]}: temporal stack / backbone not measured in this run.")
            continue
        worst = max(ratios, key=ratios.get)
        lines.append(f"- {labels[key]}: temporal stack time / backbone time = "
                     + ", ".join(f"T={T}: {r:.2f}" for T, r in ratios.items())
                     + f" (highest T={worst}) -> {_verdict(ratios[worst] <= bar)} "
                     f"(bar: <= {bar} at every T).")
    base = stack_ratios(res, "spool_w4")
    if base:
        lines.append(f"  For reference, k=1 ({labels['spool_w4']}): "
                     + ", ".join(f"T={T}: {r:.2f}" for T, r in base.items()) + ".")
    # (2) and (3): Spool against a peer from some T on
    lines.append(_against(res, labels, "spool_w4_k4", "timesformer", 16, strict=False))
    lines.append(_against(res, labels, "spool_w4_k2", "videomae", 128, strict=True))
    # (4) flat to the largest T, while the peers grow or stop
    lines += _flatness(res, labels)
    return lines


def _against(res: dict, labels: dict[str, str], key: str, peer: str, from_t: int,
             strict: bool) -> str:
    """``key``'s time per frame at or below (``strict``: below) ``peer``'s at every T >=
    ``from_t``; a T where the peer ran out of memory and Spool ran counts for Spool."""
    ts = [T for T in res["ts"] if T >= from_t]
    rel = "below" if strict else "at or below"
    head = f"- {labels[key]} {rel} {labels[peer]}'s time per frame at every T >= {from_t}"
    if not ts:
        return f"{head}: no T >= {from_t} in this run -> not evaluated."
    cells, ok = [], True
    for T in ts:
        s, p = tpf(res, key, T), tpf(res, peer, T)
        if s is None:
            cells.append(f"T={T}: {labels[key]} not measured ({_why(res, key, T)})")
            ok = False
        elif p is None:
            cells.append(f"T={T}: {1000 * s:,.0f} ms vs {labels[peer]} "
                         f"{_why(res, peer, T)}")
        else:
            cells.append(f"T={T}: {1000 * s:,.0f} vs {1000 * p:,.0f} ms ({s / p:.2f}x)")
            ok = ok and (s < p if strict else s <= p)
    return f"{head}: " + "; ".join(cells) + f" -> {_verdict(ok)}."


def _flatness(res: dict, labels: dict[str, str]) -> list[str]:
    ts = res["ts"]
    top = max(ts)
    lines, spool_ok = [], True
    for key in SPOOL_W4 + ("spool_w16",):
        done = [T for T in ts if tpf(res, key, T)]
        if not done:
            lines.append(f"  - {labels[key]}: not measured.")
            spool_ok = spool_ok and key not in SPOOL_W4
            continue
        g = tpf(res, key, done[-1]) / tpf(res, key, done[0])
        reached = done[-1] == top
        flat = g <= FLAT and reached
        if key in SPOOL_W4:
            spool_ok = spool_ok and flat
        stop = "" if reached else f"; stops at T={done[-1]} (T={top}: {_why(res, key, top)})"
        lines.append(f"  - {labels[key]}: {1000 * tpf(res, key, done[0]):,.0f} ms/frame at "
                     f"T={done[0]}, {1000 * tpf(res, key, done[-1]):,.0f} at T={done[-1]} "
                     f"({g:.2f}x){stop}" + ("" if key in SPOOL_W4 else " (not part of the bar)")
                     + ".")
    peers_ok = True
    for peer in ("timesformer", "videomae"):
        done = [T for T in ts if tpf(res, peer, T)]
        if not done:
            lines.append(f"  - {labels[peer]}: not measured.")
            continue
        g = tpf(res, peer, done[-1]) / tpf(res, peer, done[0])
        if done[-1] < top:
            nxt = min(T for T in ts if T > done[-1])
            what = f"stops at T={done[-1]} (T={nxt}: {_why(res, peer, nxt)})"
        else:
            what = "runs to T={}; {}".format(top, "grows" if g > FLAT else "does NOT grow")
        peers_ok = peers_ok and (done[-1] < top or g > FLAT)
        lines.append(f"  - {labels[peer]}: {1000 * tpf(res, peer, done[0]):,.0f} ms/frame at "
                     f"T={done[0]}, {1000 * tpf(res, peer, done[-1]):,.0f} at T={done[-1]} "
                     f"({g:.2f}x); {what}.")
    head = (f"- Spool (w=4, k=1, 2, 4) flat to T={top} (time per frame T={top} / T={min(ts)} "
            f"<= {FLAT}) -> {_verdict(spool_ok)}; the peers grow (> {FLAT}x) or run out of "
            f"memory before T={top} -> {_verdict(peers_ok)}:")
    return [head] + lines


def issue5(res: dict, labels: dict[str, str], mfu: dict) -> list[str]:
    """Issue 5's bars (T=128 vs T=8, dense growth, temporal-stack FLOP/s), at k = 1."""
    bars = []
    for key in ("spool_w4", "spool_w16"):
        a, b = tpf(res, key, 8), tpf(res, key, 128)
        if a and b:
            bars.append(f"- {labels[key]}: time per frame T=128 / T=8 = {b / a:.2f} "
                        f"({1000 * b:,.0f} vs {1000 * a:,.0f} ms) -> "
                        f"{_verdict(b / a <= FLAT)} (bar: <= {FLAT}).")
        else:
            bars.append(f"- {labels[key]}: T=8 and T=128 not both measured in this run.")
    il = res.get("interleave")
    for key, runs in (il["runs"].items() if il else ()):
        k = len(runs) // 2
        short = statistics.median(r["s"] / r["T"] for r in runs[:k] + runs[k + 1:])
        ratio = runs[k]["s"] / runs[k]["T"] / short
        bars.append(f"- {labels[key]}, interleaved check (T={il['long']} between T={il['short']}"
                    f" runs in one process, same load): time per frame T={il['long']} / "
                    f"T={il['short']} = {ratio:.2f} -> {_verdict(ratio <= FLAT)} (bar: <= {FLAT}).")
    dense_ts = [T for T in res["ts"] if tpf(res, "dense", T)]
    if len(dense_ts) > 1:
        growth = ", ".join(f"T={T}: {1000 * tpf(res, 'dense', T):,.0f}" for T in dense_ts)
        rest = "; ".join(f"T={T}: {_why(res, 'dense', T)}"
                         for T in res["ts"] if T not in dense_ts)
        g = tpf(res, "dense", dense_ts[-1]) / tpf(res, "dense", dense_ts[0])
        bars.append(f"- {labels['dense']}, ms/frame: {growth} ({g:.2f}x from T={dense_ts[0]} "
                    f"to T={dense_ts[-1]})" + (f"; {rest}" if rest else "") + ".")
    big = {k: v for k, v in mfu.items() if k[1] >= 32 and k[0] in ("spool_w4", "spool_w16")}
    if big:
        low = min(big.items(), key=lambda kv: kv[1][0])
        bars.append("- Temporal stack >= 50% of the matmul peak at T >= 32 (counted FLOPs, k=1): "
                    + ", ".join(f"{labels[key]} T={T} {100 * c:.0f}% ({100 * u:.0f}% useful)"
                                for (key, T), (c, u) in sorted(big.items()))
                    + f" -> {_verdict(all(v[0] >= 0.5 for v in big.values()))} (lowest: "
                      f"{labels[low[0][0]]} T={low[0][1]}).")
    return bars
