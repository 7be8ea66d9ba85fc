"""bench/gpu_checks.py on the CPU at toy sizes: every part it can run here fills its JSON and
report, and a device run's JSON renders into docs the same way (``--from-json``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import gpu_checks  # noqa: E402
import gpu_checks_report  # noqa: E402


def test_gpu_checks_smoke_on_cpu(tmp_path):
    out, js = tmp_path / "bench.md", tmp_path / "g.json"
    gpu_checks.main(["--device", "cpu", "--tiny", "--parts", "backends", "peers", "profile",
                     "--ts", "4", "8", "--graph-ts", "4", "--compile-ts", "--backend-ts", "4",
                     "--backend-pooling", "1", "4", "--backend-batch", "1", "2",
                     "--backends", "blocked", "reference", "--backend-dtypes", "bf16",
                     "--peak-n", "128", "--runs", "1", "--profile-t", "8",
                     "--json", str(js), "--out", str(out)])
    results = json.loads(js.read_text())
    backends = results["backends"]
    assert {(r["backend"], r["pass"]) for r in backends["rows"] if "ms" in r} == {
        (b, p) for b in ("blocked", "reference") for p in ("forward", "backward")}
    assert set(backends["fastest"]) == {f"L={L}{b} bf16 {p}" for L in (65, 5)
                                        for b in ("", " B=2") for p in ("forward", "backward")}
    peers = results["peers"]
    names = ("backbone", "spool_w4", "spool_w4_k2", "spool_w4_k4", "timesformer", "videomae")
    cells = {(r["model"], r["T"], r["mode"]) for r in peers["rows"]}
    assert cells == {(m, T, "eager") for T in (4, 8) for m in names} | {
        (m, 4, "graphs") for m in names}
    assert all(r["s"] > 0 and r["flops"] > 0 for r in peers["rows"] if r["model"] != "backbone")
    profile = results["profile"]["seconds"]
    assert 0 < profile["attention"] < profile["stack"]
    text = out.read_text()
    assert f"## {gpu_checks_report.HEADING}" in text
    assert "Spool k=4 / TimeSformer-base, eager: T=4" in text
    assert "Spool k=4 / TimeSformer-base, graphs: T=4" in text
    gpu_checks.main(["--from-json", str(js), "--out", str(tmp_path / "again.md")])
    assert (tmp_path / "again.md").read_text() == text


def test_fastest_backends_counts_wins_per_cell():
    rows = [{"L": 17, "dtype": "bf16", "pass": "forward", "T": T, "backend": b, "ms": ms}
            for T, times in {8: {"blocked": 1.0, "flex": 2.0}, 32: {"blocked": 3.0, "flex": 2.5},
                             128: {"blocked": 9.0, "flex": 5.0}}.items()
            for b, ms in times.items()]
    rows.append({"L": 17, "dtype": "bf16", "pass": "forward", "T": 512, "backend": "reference",
                 "skipped": "its dense mask would take 40 GiB"})
    assert gpu_checks_report.fastest_backends(rows) == {"L=17 bf16 forward": {"blocked": 1,
                                                                              "flex": 2}}


def test_a_run_killed_mid_part_keeps_what_it_measured(tmp_path, monkeypatch):
    def killed(*args, **kwargs):  # the device call's time limit, as it lands mid-part
        raise KeyboardInterrupt

    monkeypatch.setattr(gpu_checks, "_run_peer", killed)
    js = tmp_path / "g.json"
    try:
        gpu_checks.main(["--device", "cpu", "--tiny", "--parts", "peers", "--ts", "4",
                         "--compile-ts", "--peak-n", "128", "--runs", "1", "--json", str(js)])
    except KeyboardInterrupt:
        pass
    peers = json.loads(js.read_text())["peers"]
    assert peers["partial"] is True
    assert {r["model"] for r in peers["rows"]} == {"backbone", "spool_w4", "spool_w4_k2",
                                                    "spool_w4_k4"}
    gpu_checks.main(["--from-json", str(js), "--out", str(tmp_path / "g.md")])
    assert "Cut short (the device call ended while it ran" in (tmp_path / "g.md").read_text()
