"""bench/peers.py without running a model: the report and issue 12's bars from made-up results,
the workdir store, and the time cap. (The script itself is smoke-tested with ``--tiny``.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import peers_bars  # noqa: E402
import peers_plan  # noqa: E402
import peers_report  # noqa: E402
import peers_store  # noqa: E402

TS = [8, 16, 128, 256, 512]
SPOOL_MS = {"spool_w4": 480, "spool_w4_k2": 230, "spool_w4_k4": 185}  # per frame, flat
STACK_MS = {"spool_w4": 300, "spool_w4_k2": 50, "spool_w4_k4": 10}
PEER_MS = {"timesformer": {8: 220, 16: 190, 128: 220, 256: 240},
           "videomae": {8: 76, 16: 85, 128: 273, 256: 470}}


def _row(seconds: float, **extra) -> dict:
    return {"times": [seconds], "median": seconds, "memory": 1 << 20, "cpu_share": 1.0,
            **extra}


def made_up_results() -> dict:
    res = peers_store.new_results(tiny=False)
    res.update(ts=TS, runs={T: 1 for T in TS}, peaks=[340e9], params={}, useful={},
               flops={T: {} for T in TS})
    res["parts"] = [{"command": "python bench/peers.py", "elapsed_s": 60.0,
                     "started": "2026-11-25 21:00 UTC", "source": "commit abc",
                     "machine": {"cpu": "Xeon", "cores": 2, "threads": 2, "torch": "2.13",
                                 "python": "3.11", "mem_total_gib": 23, "load": [0.1]}}]
    for T in TS:
        res["backbone"][T] = 0.175 * T
        for key, ms in SPOOL_MS.items():
            res["rows"][(key, T)] = _row(ms * T / 1000)
            res["rows"][(key + "_cached", T)] = _row(STACK_MS[key] * T / 1000,
                                                     backbone=0.175 * T)
            res["flops"][T][key + "_cached"] = 1e9 * T
            res["useful"][T] = {k: {"total": 1e9 * T} for k in SPOOL_MS}
        for peer, ms in PEER_MS.items():
            if T in ms:
                res["rows"][(peer, T)] = _row(ms[T] * T / 1000)
            res["flops"][T][peer] = 1e9 * T
        res["flops"][T]["backbone"] = 46e9 * T
    res["skipped"][("timesformer", 512)] = "OOM: estimated 19.0 GiB > 18.0 GiB cap"
    res["skipped"][("videomae", 512)] = ("over the time cap: estimated 450 s per forward "
                                         "> 300 s")
    res["params"] = {k: 1 for k in peers_report.MODELS}
    return res


def test_issue12_bars_are_met_or_not_and_say_where_peers_stop():
    res = made_up_results()
    text, _ = peers_report.render(res)
    bars = text.split("### Bars of issue 12", 1)[1].split("###", 1)[0]
    # stack / backbone: 50/175 = 0.29 <= 0.45 (k=2), 10/175 = 0.06 <= 0.15 (k=4)
    assert "Spool w=4, k=2: temporal stack time / backbone time" in bars
    assert bars.count("-> met (bar: <=") == 2
    # k=4 at 185 ms/frame vs TimeSformer 190 at T=16 (met) but 220 at T=8 is not required
    assert "Spool w=4, k=4 at or below TimeSformer-base's" in bars
    k4 = next(line for line in bars.splitlines() if "at or below TimeSformer" in line)
    assert k4.endswith("-> met.") and "OOM: estimated 19.0 GiB" in k4
    k2 = next(line for line in bars.splitlines() if "below VideoMAE-base" in line)
    assert k2.endswith("-> met.") and "over the time cap" in k2
    assert "stops at T=256 (T=512: OOM: estimated" in bars
    assert "stops at T=256 (T=512: over the time cap" in bars
    table = text.split("### Time per frame (ms)", 1)[1].split("###", 1)[0]
    assert "| TimeSformer-base | 220 | 190 | 220 | 240 | OOM |" in table
    assert "| VideoMAE-base | 76 | 85 | 273 | 470 | time cap |" in table


def test_a_slower_spool_is_not_met():
    res = made_up_results()
    for T in TS:  # k=4 at 200 ms/frame: above TimeSformer's 190 at T=16
        res["rows"][("spool_w4_k4", T)] = _row(0.2 * T)
    bars = peers_bars.issue12(res, peers_report.LABELS)
    k4 = next(line for line in bars if "at or below TimeSformer" in line)
    assert k4.endswith("-> NOT met.")


def test_store_round_trip_keeps_pairs_and_forgets_decisions(tmp_path):
    res = made_up_results()
    res["skipped"][("spool_w4", 1024)] = "OOM (allocation failed under the 18 GiB cap: x)"
    peers_store.save(tmp_path, res)
    back = peers_store.load(tmp_path, tiny=False)
    assert back["rows"][("videomae", 256)] == res["rows"][("videomae", 256)]
    assert back["backbone"][512] == res["backbone"][512]
    assert peers_store.first_stop(back, "videomae") == (512, "over the time cap")
    peers_store.forget(back, ["videomae", "spool_w4"], [512, 1024], again=False)
    assert ("videomae", 512) not in back["skipped"]  # decided again by the next part
    assert ("spool_w4", 1024) in back["skipped"]  # a failed allocation is kept
    with pytest.raises(SystemExit, match="full-size"):
        peers_store.load(tmp_path, tiny=True)


def test_time_cap_cuts_runs_then_models():
    res = made_up_results()  # measured rates: videomae 1e9 * 256 FLOP in 120 s at T=256
    runs, why = peers_plan.fit_peer(res, "videomae", 512, 3, cap=1000.0)
    assert runs == 3 and not why
    runs, why = peers_plan.fit_peer(res, "videomae", 512, 3, cap=400.0)
    assert runs == 1  # 240 s per forward
    runs, why = peers_plan.fit_peer(res, "videomae", 512, 1, cap=100.0)
    assert runs == 0 and why.startswith("over the time cap")
    # Spool at T=512: backbone 90 s, stacks 154 / 26 / 5 s per forward
    runs, keys, dropped = peers_plan.fit_spool(res, 512, 2, list(SPOOL_MS), cap=130.0)
    assert list(dropped) == ["spool_w4"] and keys == ["spool_w4_k2", "spool_w4_k4"]
    assert runs == 1  # 115 s for k=2's full model
    runs, keys, dropped = peers_plan.fit_spool(res, 512, 3, list(SPOOL_MS), cap=500.0)
    assert not dropped and runs == 2
