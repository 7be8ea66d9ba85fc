"""Issue 12's GPU checks in one short run: the CUDA equivalence tests, the attention backends
timed, Spool and its peers in bf16 with and without ``torch.compile`` (MFU against the bf16
matmul peak), and where a Spool forward spends its device time.

    python bench/gpu_checks.py --out docs/benchmarks.md --json $OUT/gpu_checks.json
    python bench/gpu_checks.py --from-json gpu_checks.json [more.json ...] --out docs/benchmarks.md
    python bench/gpu_checks.py --device cpu --tiny --compile-ts --out /tmp/g.md   # smoke test

On the device machine, ``bash bench/gpu_checks.sh`` runs it with its outputs in ``$OUT``; the
second command then writes the section of docs/benchmarks.md from the JSON that came back.

Parts (``--parts``), in this order; each writes the JSON as soon as it is done, so a run cut
short keeps what it measured, and nothing starts after ``--budget-s`` (it is reported skipped):

- ``tests``: the CUDA cases of ``tests/test_devices.py`` and ``tests/test_attention_backends.py``
  (blocked and flex against the dense reference in fp32, with gradients, and in bf16 within
  the tolerance stated in ``tests/test_devices.py``; flex over 12 clip lengths without
  recompiling; a training run and ``spool extract`` on CUDA against the CPU).
- ``backends``: blocked, flex and the dense reference on q, k, v of Spool-base's shapes (12
  heads, head_dim 64, L = 257 tokens per frame, or pooled: ``--backend-pooling``), fp32 and
  bf16, forward and forward + backward: the fastest per cell is what ``auto`` should pick
  (``AUTO_ORDER``).
- ``profile``: Spool k = 1 at ``--profile-t``: backbone, temporal stack, and attention within
  the stack (device time from CUDA events), and the top operators by device time.
- ``peers``: Spool w = 4 with k = 1, 2, 4 (a DINOv2-base-sized backbone, 12 temporal layers,
  ``--spool-attn``), TimeSformer-base and VideoMAE-base, in ``--dtype``: ms per frame, peak
  memory, MFU. Eager at ``--ts``; replayed from CUDA graphs at ``--graph-ts`` (the same
  kernels, none launched from Python: what batch 1 costs without launch overhead); compiled
  at ``--compile-ts``. A model stops at its first T that runs out of device memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings, also when not run as a script
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # this checkout's spool
import gpu_checks_report as report  # noqa: E402
import peers_models as pm  # noqa: E402
from _report import update_section  # noqa: E402
from gpu_timing import (  # noqa: E402
    Clock,
    Stamps,
    cuda_graphed,
    failure,
    is_oom,
    matmul_peak,
    peak_memory,
    sync,
    timed,
)

ROOT = Path(__file__).resolve().parent.parent
TEST_FILES = ["tests/test_devices.py", "tests/test_attention_backends.py"]
PARTS = ("tests", "backends", "profile", "peers")  # compiling (peers) last: the longest
SPOOL_KEYS = ("spool_w4", "spool_w4_k2", "spool_w4_k4")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
MASK_BYTES_CAP = 4e9  # dense masks ([B, H, N, N] bool) beyond this are not tried


# --------------------------------------------------------------------------------------------
# Parts

def part_tests(args, clock: Clock) -> dict:
    # The CUDA cases only: the CPU ones run in CI, and torch 2.11's CPU flex kernel (the device
    # image's torch) corrupts memory with more than one thread ("munmap_chunk(): invalid
    # pointer"), which would abort pytest before the CUDA cases report.
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "--tb=short", "--show-capture=no",
           "-p", "no:cacheprovider", "-k", "cuda", *TEST_FILES]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          timeout=max(30.0, clock.left()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    (args.json.parent / "pytest.log").write_text(proc.stdout + proc.stderr)
    lines = proc.stdout.strip().splitlines()
    return {"command": " ".join(["python", *cmd[1:]]), "returncode": proc.returncode,
            "summary": lines[-1] if lines else proc.stderr[-300:], "tail": proc.stdout[-4000:]}


def _attend(name: str, q, k, v):
    from spool.layers.attention_backends import ATTENTION_BACKENDS
    d = pm.DIMS
    return ATTENTION_BACKENDS[name].function(q, k, v, num_lookback_heads=d.lookback,
                                             local_frame_range=4)


def part_backends(args, device: torch.device, clock: Clock, save=lambda part: None) -> dict:
    from spool.layers.attention_backends import ATTENTION_BACKENDS
    d, rows = pm.DIMS, []
    hd = d.hidden // d.heads
    cells = itertools.product((pm.tokens_per_frame(k) for k in args.backend_pooling),
                              args.backend_dtypes, args.backend_batch, args.backend_ts,
                              args.backends, ("forward", "backward"))
    for L, dtype_name, B, T, name, passes in cells:
        row = {"L": L, "dtype": dtype_name, "T": T, "backend": name, "pass": passes}
        if B != 1:  # rows of runs before --backend-batch are batch 1 and have no "B"
            row["B"] = B
        rows.append(row)
        backward = passes == "backward"
        why = ATTENTION_BACKENDS[name].unsupported(device.type, backward=backward)
        n = (T + 2) * L
        if why is None and name in ("reference", "dense") and B * d.heads * n * n > MASK_BYTES_CAP:
            why = f"its dense mask would take {B * d.heads * n * n / 2**30:.0f} GiB"
        if why is None and clock.left() <= 0:
            why = "time budget spent"
        if why is not None:
            row["skipped"] = why
            continue
        q, k, v = (torch.randn(d.heads, B, T + 2, L, hd, device=device, dtype=DTYPES[dtype_name],
                               requires_grad=backward) for _ in range(3))

        def step(q=q, k=k, v=v, name=name, backward=backward):
            with torch.set_grad_enabled(backward):
                out = _attend(name, q, k, v)
                if backward:
                    out.sum().backward()
        try:
            xs = timed(step, device, args.runs, args.max_cell_s)
            row["ms"] = 1e3 * statistics.median(xs)
        except Exception as err:  # noqa: BLE001 - one cell's failure is reported
            row["skipped"] = failure(err)
        del q, k, v
        print(f"[gpu_checks] {row}", flush=True)
        save({"rows": rows, "fastest": report.fastest_backends(rows)})
    return {"rows": rows, "fastest": report.fastest_backends(rows)}


def _spool_group(args, device, dtype):
    models = pm.build_spool_group(list(SPOOL_KEYS), attn=args.spool_attn)
    return {k: m.to(device=device, dtype=dtype) for k, m in models.items()}


def _wrapper(args, device, mode: str):
    """How a mode runs a zero-argument call: as is, from a CUDA graph, or compiled."""
    if mode == "graphs":
        return lambda fn: cuda_graphed(fn, device)
    if mode == "compiled":
        return lambda fn: torch.compile(fn, dynamic=False, mode=args.compile_mode)
    return lambda fn: fn


def _run_spool(args, device, dtype, T, models, mode: str) -> dict:
    """Backbone once, then each variant's pooling + temporal stack on its tokens. The stack runs
    without ``forward_tokens``'s input check, whose finiteness test syncs with the host (no CUDA
    graph can hold it), in every mode alike."""
    d = pm.DIMS
    video = torch.randint(0, 256, (1, T, d.image, d.image, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1)).to(device)
    wrap = _wrapper(args, device, mode)
    out: dict = {}
    with torch.no_grad():
        backbone = wrap(lambda: models["backbone"](video))
        xs = timed(backbone, device, args.runs, args.max_cell_s)
        out["backbone"] = {"s": statistics.median(xs)}
        tokens = backbone().clone()  # reduce-overhead overwrites its outputs per call
        for key in SPOOL_KEYS:
            model = models[key]
            run = wrap(lambda key=key, model=model:
                       model._temporal_forward(pm.pool_tokens(models, key, tokens)))
            xs = timed(run, device, args.runs, args.max_cell_s)
            mem = (None if mode == "graphs" else
                   peak_memory(device, lambda run=run: (run(), backbone())))
            out[key] = {"s": out["backbone"]["s"] + statistics.median(xs),
                        "stack_s": statistics.median(xs), "peak_bytes": mem}
            del run
    return out


def _run_peer(args, device, dtype, name, T, mode: str) -> dict:
    model = pm.build_peer(name, T).to(device=device, dtype=dtype)
    for module in model.modules():  # VideoMAE keeps its position table as a plain CPU tensor
        table = getattr(module, "position_embeddings", None)  # copied to the device per call,
        if isinstance(table, torch.Tensor) and not isinstance(table, torch.nn.Parameter):
            module.position_embeddings = table.to(device)  # which no CUDA graph can hold
    pixels = torch.randn(1, T, 3, pm.DIMS.image, pm.DIMS.image, device=device, dtype=dtype)
    with torch.no_grad():
        fn = _wrapper(args, device, mode)(lambda: model(pixel_values=pixels))
        xs = timed(fn, device, args.runs, args.max_cell_s)
        mem = None if mode == "graphs" else peak_memory(device, fn)
    return {name: {"s": statistics.median(xs), "peak_bytes": mem}}


def part_peers(args, device: torch.device, clock: Clock, save=lambda part: None) -> dict:
    dtype = DTYPES[args.dtype]
    peak = matmul_peak(device, dtype, args.peak_n)
    rows, stopped = [], {}
    # Every model eager first, then from CUDA graphs, then compiled (minutes of compiling, in
    # the order of --compile-groups): a run cut short by the budget has the first ones.
    ts = {"eager": args.ts, "graphs": args.graph_ts, "compiled": args.compile_ts}
    groups = {"eager": ("spool", *pm.PEERS), "graphs": args.graph_groups,
              "compiled": args.compile_groups}
    plan = [(mode, group, T) for mode in ts for group in groups[mode] for T in ts[mode]]
    spool = _spool_group(args, device, dtype)

    def part() -> dict:
        return {"dtype": args.dtype, "peak_flops": peak, "spec_flops": report.spec_peak(device),
                "rows": rows, "stopped": stopped, "spool_attn": args.spool_attn,
            "compile_mode": args.compile_mode}
    for mode, group, T in plan:
        if stopped.get(group, T + 1) <= T:  # the table says where it stopped
            continue
        # A compile started just before the deadline would outlast the device call.
        if clock.left() <= (args.compile_reserve_s if mode == "compiled" else 0):
            rows.append({"group": group, "T": T, "mode": mode, "skipped": "time budget spent"})
            continue
        try:
            if group == "spool":
                got = _run_spool(args, device, dtype, T, spool, mode)
            else:
                got = _run_peer(args, device, dtype, group, T, mode)
        except Exception as err:  # noqa: BLE001 - one cell's failure is reported
            if is_oom(err):
                stopped.setdefault(group, T)
            rows.append({"group": group, "T": T, "mode": mode, "skipped": failure(err)})
            print(f"[gpu_checks] {rows[-1]}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            torch._dynamo.reset()
            continue
        flops = pm.count_flops(group, T)
        for key, r in got.items():
            rows.append({"group": group, "model": key, "T": T, "mode": mode, **r,
                         "flops": flops.get(key), "cached_flops": flops.get(key + "_cached")})
            print(f"[gpu_checks] {rows[-1]}", flush=True)
        save(part())
        if mode == "compiled":
            torch._dynamo.reset()  # static graphs of one size: not reused, and not counted
            # towards dynamo's recompile limit for the next T
    return part()


def part_profile(args, device: torch.device, clock: Clock) -> dict:
    from spool.layers import attention_backends as ab
    dtype, T = DTYPES[args.dtype], args.profile_t
    models = _spool_group(args, device, dtype)
    backbone, stack = models["backbone"], models["spool_w4"]
    video = torch.randint(0, 256, (1, T, pm.DIMS.image, pm.DIMS.image, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1)).to(device)
    stamps = Stamps(device)
    saved = dict(ab.ATTENTION_BACKENDS)

    def stamped(function):
        def call(*a, **kw):
            start = stamps.mark()
            out = function(*a, **kw)
            stamps.add("attention", start, stamps.mark())
            return out
        return call
    for backend in saved.values():
        ab.register_backend(dataclasses.replace(backend, function=stamped(backend.function)))
    try:
        with torch.no_grad():
            for _ in range(2):  # warm-up at T itself: flex compiles, cuDNN plans per shape
                stack.forward_tokens(backbone(video))
            sync(device)
            stamps.pairs.clear()
            start = stamps.mark()
            tokens = backbone(video)
            middle = stamps.mark()
            stack.forward_tokens(tokens)
            stamps.add("backbone", start, middle)
            stamps.add("stack", middle, stamps.mark())
            totals = stamps.totals()
            table = _profiler_table(device, lambda: stack.forward_tokens(backbone(video)))
    finally:
        ab.ATTENTION_BACKENDS.clear()
        ab.ATTENTION_BACKENDS.update(saved)
    return {"T": T, "dtype": args.dtype, "seconds": totals, "attention_backend":
            ab.select_backend(args.spool_attn, device, dtype=dtype).name, "top_ops": table}


def _profiler_table(device: torch.device, fn) -> str:
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=15)


# --------------------------------------------------------------------------------------------

def write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str))
    os.replace(tmp, path)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--dtype", choices=DTYPES, default="bf16", help="of the peers and profile")
    p.add_argument("--ts", type=int, nargs="*", default=[8, 16, 32, 64, 128, 256, 512],
                   help="T at which the peers run eagerly (none: only --graph-ts, --compile-ts)")
    p.add_argument("--graph-ts", type=int, nargs="*", default=[8, 16, 32, 64, 128],
                   help="T at which the peers also run from CUDA graphs (eager kernels, no "
                        "launches from Python)")
    p.add_argument("--graph-groups", nargs="+", default=["spool", *pm.PEERS],
                   choices=["spool", *pm.PEERS], help="the models run from CUDA graphs")
    p.add_argument("--compile-ts", type=int, nargs="*", default=[64],
                   help="T at which the peers also run under torch.compile (none: eager only)")
    p.add_argument("--compile-groups", nargs="+", default=["spool", *pm.PEERS],
                   choices=["spool", *pm.PEERS], help="the models compiled at --compile-ts")
    p.add_argument("--spool-attn", default="auto", help="Spool's attention in the peers part")
    p.add_argument("--backends", nargs="+", default=["blocked", "dense", "flex", "reference"])
    p.add_argument("--backend-ts", type=int, nargs="+", default=[8, 64, 512])
    p.add_argument("--backend-pooling", type=int, nargs="+", default=[1],
                   help="token pooling k of the backends' shapes (1: L = 257)")
    p.add_argument("--backend-batch", type=int, nargs="+", default=[1],
                   help="batch sizes of the backends' shapes (training batches: where a "
                        "launch-bound batch 1 would mislead)")
    p.add_argument("--backend-dtypes", nargs="+", choices=DTYPES, default=["fp32", "bf16"])
    p.add_argument("--profile-t", type=int, default=64)
    p.add_argument("--runs", type=int, default=5, help="timed runs per cell at most")
    p.add_argument("--max-cell-s", type=float, default=1.0, help="timed seconds per cell at most")
    p.add_argument("--peak-n", type=int, default=8192, help="matmul size of the peak")
    p.add_argument("--budget-s", type=float, default=450.0)
    p.add_argument("--compile-mode", default="default",
                   choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                   help="torch.compile's mode (reduce-overhead: CUDA graphs, against launch-bound "
                        "small kernels)")
    p.add_argument("--compile-reserve-s", type=float, default=90.0,
                   help="no compiled cell starts with less of the budget left")
    p.add_argument("--tiny", action="store_true", help="toy model sizes (smoke test)")
    p.add_argument("--json", type=Path, default=ROOT / "bench/results/gpu_checks.json")
    p.add_argument("--out", type=Path, help="markdown file whose section to (re)write")
    p.add_argument("--from-json", type=Path, nargs="+", help="measure nothing: write the "
                   "report of these JSONs (device runs'), one after the other, into --out")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        runs = [json.loads(path.read_text()) for path in args.from_json]
        texts = [report.render(r) if len(runs) == 1 else
                 f"**Run {i} of {len(runs)}** ({path.name}).\n\n" + report.render(r)
                 for i, (path, r) in enumerate(zip(args.from_json, runs, strict=True), 1)]
        if args.out:
            update_section(args.out, report.HEADING, "\n".join(texts))
        return runs[0]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/gpu_checks.py: no CUDA device here (use --device cpu for a smoke test)")
    pm.use_dims(args.tiny)
    clock = Clock(args.budget_s)
    command = "python bench/gpu_checks.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results: dict = {"command": command, "machine": report.machine(device),
                     "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "tiny": args.tiny, "skipped": []}
    for part in args.parts:
        if clock.left() <= 0:
            results["skipped"].append(part)
            continue
        t = time.perf_counter()
        print(f"[gpu_checks] {part} ...", flush=True)

        def save(partial: dict, part: str = part) -> None:  # a run killed mid-part keeps these
            results[part] = {**partial, "partial": True}
            write_json(args.json, results)
        if part == "tests":
            results[part] = part_tests(args, clock)
        elif part == "profile":
            try:
                results[part] = part_profile(args, device, clock)
            except Exception as err:  # noqa: BLE001 - reported, and the next part still runs
                results[part] = {"error": failure(err)}
        else:
            step = part_backends if part == "backends" else part_peers
            results[part] = step(args, device, clock, save)
        results[part]["elapsed_s"] = time.perf_counter() - t
        write_json(args.json, results)
    text = report.render(results)
    print(text)
    if args.out:
        update_section(args.out, report.HEADING, text)
    return results


if __name__ == "__main__":
    main()
