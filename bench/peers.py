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
``_Memory``). Method details are written next to the tables (``METHOD``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Peers: Spool vs TimeSformer vs VideoMAE vs dense Spool"
GIB = 1024 ** 3
MIB = 1024 ** 2

# DINOv2-base at 224 (patch 14): L = 1 + 16 * 16 = 257 tokens per frame, D = 768.
DINOV2_BASE = {"model_type": "dinov2", "hidden_size": 768, "num_hidden_layers": 12,
               "num_attention_heads": 12, "mlp_ratio": 4, "patch_size": 14, "image_size": 224}
L_TOKENS, HIDDEN, LAYERS, HEADS, LOOKBACK = 257, 768, 12, 12, 6
SPOOL_WS = (4, 16)
DENSE_W = 16  # the dense mask's cost does not depend on w; 16 is the SPEC's default
FULL_TS = (8, 16, 32, 64, 128)
FULL_RUNS = {8: 3, 16: 3, 32: 2, 64: 1, 128: 1}
QUICK_TS = (2, 4)
WARMUP_T = 4  # T > 8: warm up at this T (a warm-up at T = 128 would cost minutes)

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


# --------------------------------------------------------------------------------------------
# FLOPs

def _register_cpu_sdpa_flops() -> None:
    """``FlopCounterMode`` has no formula for the CPU flash-attention op that SDPA dispatches to
    on CPU, so SDPA would count 0 FLOPs there; count it like the CUDA flash op (QK^T and PV)."""
    from torch.utils import flop_counter
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if op in flop_counter.flop_registry or op.default in flop_counter.flop_registry:
        return

    @register_flop_formula(op)
    def _cpu_flash_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)


_register_cpu_sdpa_flops()


def useful_temporal_flops(T: int, w: int) -> dict[str, int]:
    """FLOPs the temporal stack needs, by hand: the linear layers (24 D^2 per token per layer:
    QKV 6, proj 2, MLP 16) and attention over the allowed (query frame, key frame) pairs only
    (4 L^2 head_dim per pair per head: QK^T and PV), i.e. none of the masked-out entries."""
    F = T + 2
    tokens = F * L_TOKENS
    linear = LAYERS * tokens * 24 * HIDDEN * HIDDEN
    # Lookback: frame 0 sees all F frames; frame i >= 1 sees frame 0 and frames max(1, i-w)..i.
    pairs = F + sum(1 + i - max(1, i - w) + 1 for i in range(1, F))  # lookahead: the same count
    attention = LAYERS * HEADS * pairs * L_TOKENS * L_TOKENS * 4 * (HIDDEN // HEADS)
    return {"linear": linear, "attention": attention, "total": linear + attention}


def count_flops(group: str, T: int) -> dict[str, int]:
    """FLOPs of one forward, counted by ``FlopCounterMode`` on the meta device (shapes only:
    no memory, no time; every T can be counted, even those that do not fit in memory). Checked
    against a count on real CPU tensors in the T <= 8 runs (``flop_check`` in the results)."""
    out: dict[str, int] = {}
    with torch.device("meta"):
        if group == "spool":
            models = build_spool_group(T, dense=True)
            video = torch.zeros(1, T, 224, 224, 3, dtype=torch.uint8)
            with FlopCounterMode(display=False) as fc:
                tokens = models["spool_w16"].backbone(video)
            out["backbone"] = fc.get_total_flops()
            for key in ("spool_w16", "spool_w4", "dense"):
                with FlopCounterMode(display=False) as fc:
                    _temporal(models[key], tokens)
                out[key + "_cached"] = fc.get_total_flops()
                out[key] = out["backbone"] + out[key + "_cached"]
        else:
            model = build_peer(group, T)
            with FlopCounterMode(display=False) as fc:
                model(pixel_values=torch.zeros(1, T, 3, 224, 224))
            out[group] = fc.get_total_flops()
    return out


# --------------------------------------------------------------------------------------------
# Models

def build_spool_group(T: int, dense: bool) -> dict[str, torch.nn.Module]:
    """Spool w=16 with its backbone; Spool w=4 and the dense-masked Spool share that backbone
    (it is the same frozen network for all of them, so it runs once per iteration)."""
    from spool import Spool, SpoolConfig
    torch.manual_seed(0)
    m16 = Spool(num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_lookback_heads=LOOKBACK,
                num_lookahead_heads=HEADS - LOOKBACK, image_size=224, local_frame_range=16,
                backbone_config=DINOV2_BASE, attn_implementation="blocked").eval()
    assert m16.config.num_spatial_tokens == L_TOKENS and m16.config.hidden_size == HIDDEN
    models = {"spool_w16": m16}
    variants = [("spool_w4", 4, "blocked")] + ([("dense", DENSE_W, "reference")] if dense else [])
    for key, w, impl in variants:
        cfg = SpoolConfig(num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                          num_lookback_heads=LOOKBACK, num_lookahead_heads=HEADS - LOOKBACK,
                          image_size=224, local_frame_range=w, backbone_config=DINOV2_BASE,
                          attn_implementation=impl, hidden_size=HIDDEN,
                          num_spatial_tokens=L_TOKENS)
        model = Spool(cfg, with_backbone=False).eval()
        model.backbone = m16.backbone
        models[key] = model
    return models


def build_peer(name: str, T: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "timesformer":
        from transformers import TimesformerConfig, TimesformerModel
        return TimesformerModel(TimesformerConfig(num_frames=T, image_size=224)).eval()
    from transformers import VideoMAEConfig, VideoMAEModel
    return VideoMAEModel(VideoMAEConfig(num_frames=T, image_size=224, tubelet_size=2)).eval()


def _temporal(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The temporal stack as ``forward_tokens`` runs it, minus the input check (which would
    need real data): context frames + blocks + final norm."""
    return model.temporal(model.context_frames(tokens))


def param_counts() -> dict[str, int]:
    with torch.device("meta"):
        spool = build_spool_group(8, dense=True)
        peers = {name: build_peer(name, 8) for name in ("timesformer", "videomae")}
    n = {k: sum(p.numel() for p in m.parameters()) for k, m in peers.items()}
    backbone = sum(p.numel() for p in spool["spool_w16"].backbone.parameters())
    for key in ("spool_w16", "spool_w4", "dense"):
        own = sum(p.numel() for name, p in spool[key].named_parameters()
                  if not name.startswith("backbone."))
        n[key + "_cached"] = own
        n[key] = own + backbone
    return n


# --------------------------------------------------------------------------------------------
# Memory

class _Memory:
    """Peak resident memory of this process, per phase.

    ``begin()`` returns freed heap memory to the OS (``malloc_trim``), records the current RSS
    and resets the kernel's RSS high-water mark (``echo 5 > /proc/self/clear_refs``, Linux;
    this also resets ``getrusage().ru_maxrss``). ``peak()`` reads the high-water mark
    (``VmHWM``); peak - RSS at ``begin()`` is what the phase needed on top of what was already
    resident (weights, inputs). Large tensors are ``mmap``ed by glibc and come back to the OS
    when freed, so the high-water mark sees every allocation that was live at once.
    """

    def __init__(self) -> None:
        self.libc = ctypes.CDLL("libc.so.6")
        self.page_kb = os.sysconf("SC_PAGE_SIZE") // 1024
        try:
            self._clear()
            self.resettable = True
        except OSError:
            self.resettable = False

    @staticmethod
    def _clear() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page_kb * 1024

    @staticmethod
    def status(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)

    def begin(self) -> int:
        self.libc.malloc_trim(0)
        start = self.rss()
        if self.resettable:
            self._clear()
        return start

    def peak(self) -> int:
        if self.resettable:
            return self.status("VmHWM")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _limit_memory(budget: int, mem: _Memory) -> None:
    """Safety net: cap the address space so this process's RSS cannot pass ``budget``; an
    allocation beyond it fails with a RuntimeError (reported as OOM) instead of waking the
    kernel's OOM killer, which could pick someone else's process on this shared machine."""
    vm = mem.status("VmSize")
    limit = vm + max(budget - mem.rss(), 256 * MIB)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def estimate_memory(key: str, T: int, dense_per_n2: float = 240.0) -> int:
    """Rough upper estimate of a child's peak RSS in bytes, checked before it is started.
    ``dense_per_n2``: bytes per (F L)^2 of the dense attention, fitted from the smaller T's
    measured in the same run when there are any (``run``)."""
    base = int(0.8 * GIB)  # python + torch + transformers
    act = (T + 2) * L_TOKENS * HIDDEN * 4  # one [T+2, L, D] fp32 activation
    if key == "spool":
        params = (86_600_000 + 3 * 85_600_000) * 4
        return base + params + 20 * act + 600 * MIB  # blocked stack + backbone chunk of 32
    if key == "dense":
        N = (T + 2) * L_TOKENS
        # reference attention: the bool [H, N, N] mask and fp32 [H, N, N] scores/probabilities
        return int(dense_per_n2 * N * N) + 12 * act
    if key == "timesformer":
        n = 196 * T + 1
        scores = 3 * 4 * HEADS * (T * 197 * 197 + 196 * T * T)  # eager spatial + temporal
        return base + 121_300_000 * 4 + 20 * n * HIDDEN * 4 + scores
    if key == "videomae":
        n = 196 * T // 2
        return base + 86_300_000 * 4 + 20 * n * HIDDEN * 4  # SDPA (CPU flash): no N^2 buffer
    raise KeyError(key)


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# --------------------------------------------------------------------------------------------
# Child processes

def _is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, MemoryError) or ("alloc" in text and "memory" in text)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def child_spool(job: dict) -> dict:
    """Each iteration: Spool w=16 end to end on the video (hooks split backbone / temporal
    time and memory), then Spool w=4's and the dense-masked Spool's temporal stacks on the same
    backbone tokens (``forward_tokens``)."""
    T, runs, mem = job["T"], job["runs"], _Memory()
    models = build_spool_group(T, dense=job["dense"])
    m16 = models["spool_w16"]
    stacks = [k for k in ("spool_w4", "dense") if k in models]
    torch.manual_seed(1)
    video = torch.randint(0, 256, (1, T, 224, 224, 3), dtype=torch.uint8)
    _limit_memory(job["budget"], mem)

    state: dict = {}

    def pre_hook(module, args):
        state["t_b0"] = time.perf_counter()

    def post_hook(module, args, output):
        state["t_b1"] = time.perf_counter()
        state["tokens"] = output
        if state.get("measure"):
            state["hwm_backbone"] = mem.peak()
            state["rss_tokens"] = mem.begin()
        state["t_b1_end"] = time.perf_counter()

    m16.backbone.register_forward_pre_hook(pre_hook)
    m16.backbone.register_forward_hook(post_hook)

    def iteration(clip: torch.Tensor, measure: bool, dense: bool = True) -> dict:
        r: dict = {}
        state.clear()
        state["measure"] = measure
        rss0 = mem.begin() if measure else 0
        t0 = time.perf_counter()
        m16(clip)
        t1 = time.perf_counter()
        hook_cost = state["t_b1_end"] - state["t_b1"]
        r["backbone"] = state["t_b1"] - state["t_b0"]
        r["spool_w16_cached"] = t1 - state["t_b1_end"]
        r["spool_w16"] = t1 - t0 - hook_cost
        tokens = state.pop("tokens")
        if measure:
            r["mem_backbone"] = state["hwm_backbone"] - rss0
            r["mem_spool_w16_cached"] = mem.peak() - state["rss_tokens"]
            tokens_bytes = state["rss_tokens"] - rss0
            r["mem_spool_w16"] = max(r["mem_backbone"],
                                     tokens_bytes + r["mem_spool_w16_cached"])
        for key in [k for k in stacks if dense or k != "dense"]:
            try:
                start = mem.begin() if measure else 0
                t = time.perf_counter()
                m = models[key]
                m.forward_tokens(tokens)
                r[key + "_cached"] = time.perf_counter() - t
                r[key] = r["backbone"] + r[key + "_cached"]
                if measure:
                    r["mem_" + key + "_cached"] = mem.peak() - start
                    r["mem_" + key] = max(r["mem_backbone"],
                                          tokens_bytes + r["mem_" + key + "_cached"])
            except RuntimeError as err:
                if not _is_oom(err):
                    raise
                r[key + "_error"] = f"OOM (allocation failed under the {job['budget'] / GIB:.0f}" \
                                    f" GiB cap: {str(err)[:120]})"
                stacks.remove(key)
        return r

    out: dict = {"T": T, "first_vs_median": {}}
    with torch.no_grad():
        if job["flop_check"]:  # warm-up on real tensors under the FLOP counter
            flops = {}
            with FlopCounterMode(display=False) as fc:
                tokens = m16.backbone(video)
            flops["backbone"] = fc.get_total_flops()
            for key in ["spool_w16"] + stacks:
                with FlopCounterMode(display=False) as fc:
                    models[key].forward_tokens(tokens)
                flops[key + "_cached"] = fc.get_total_flops()
            out["flop_check"] = flops
            del tokens
        warm_t = T if T <= 8 else min(WARMUP_T, T)
        iteration(video[:, :warm_t].contiguous(), measure=False)
        if job.get("peak"):
            out["peak"] = matmul_peak(job["peak"])
        cpu0, wall0 = time.process_time(), time.perf_counter()
        results = [iteration(video, measure=(i == 0), dense=i < job.get("dense_runs", runs))
                   for i in range(runs)]
        out["cpu_share"] = _cpu_share(cpu0, wall0, job["threads"])
        if job.get("end_to_end_check"):
            t = time.perf_counter()
            models["spool_w4"](video)
            out["end_to_end_w4"] = time.perf_counter() - t
    keys = ["backbone", "spool_w16", "spool_w16_cached"] + [
        k + s for k in ("spool_w4", "dense") for s in ("", "_cached")]
    times = {}
    for key in keys:
        xs = [r[key] for r in results if key in r]
        if xs:
            times[key] = {"median": _median(xs), "runs": xs}
    out["times"] = times
    out["memory"] = {k[4:]: v for k, v in results[0].items() if k.startswith("mem_")}
    out["errors"] = {k[:-6]: v for r in results for k, v in r.items() if k.endswith("_error")}
    return out


def _cpu_share(cpu0: float, wall0: float, threads: int) -> float:
    """CPU time this process got / (wall time x threads) since ``cpu0, wall0``: about 1 when
    it had its cores to itself (idle OpenMP threads spin), lower when other processes took
    CPU time from it."""
    return (time.process_time() - cpu0) / ((time.perf_counter() - wall0) * threads)


def child_peer(job: dict) -> dict:
    name, T, runs, mem = job["name"], job["T"], job["runs"], _Memory()
    model = build_peer(name, T)
    warm = model if T <= 8 else build_peer(name, WARMUP_T)
    torch.manual_seed(1)
    pixels = torch.randn(1, T, 3, 224, 224)
    _limit_memory(job["budget"], mem)
    out: dict = {"T": T}
    with torch.no_grad():
        if job["flop_check"]:
            with FlopCounterMode(display=False) as fc:
                model(pixel_values=pixels)
            out["flop_check"] = {name: fc.get_total_flops()}
        warm_t = T if T <= 8 else WARMUP_T
        warm(pixel_values=pixels[:, :warm_t].contiguous())
        del warm
        xs = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(runs):
            start = mem.begin() if i == 0 else 0
            t = time.perf_counter()
            model(pixel_values=pixels)
            xs.append(time.perf_counter() - t)
            if i == 0:
                out["memory"] = {name: mem.peak() - start}
        out["cpu_share"] = _cpu_share(cpu0, wall0, job["threads"])
    out["times"] = {name: {"median": _median(xs), "runs": xs}}
    return out


def child_profile(job: dict) -> dict:
    """torch.profiler over ``forward_tokens`` of Spool's temporal stack (w, T)."""
    from spool import Spool, SpoolConfig
    T, w = job["T"], job["w"]
    cfg = SpoolConfig(num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                      num_lookback_heads=LOOKBACK, num_lookahead_heads=HEADS - LOOKBACK,
                      image_size=224, local_frame_range=w, attn_implementation="blocked",
                      hidden_size=HIDDEN, num_spatial_tokens=L_TOKENS)
    model = Spool(cfg, with_backbone=False).eval()
    tokens = torch.randn(1, T, L_TOKENS, HIDDEN)
    with torch.no_grad():
        model.forward_tokens(tokens[:, :WARMUP_T].contiguous())
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            model.forward_tokens(tokens)
            profiled = time.perf_counter() - t
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ops = sorted(((e.key, e.self_cpu_time_total, e.count) for e in events),
                 key=lambda x: -x[1])
    return {"T": T, "w": w, "profiled_s": profiled,
            "self_total_us": total, "ops": ops[:25],
            "table": events.table(sort_by="self_cpu_time_total", row_limit=20)}


def matmul_peak(repeats: int, n: int = 4096) -> float:
    """fp32 ``torch.mm`` of two n x n matrices, best FLOP/s of ``repeats`` runs."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best


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


def child_main(job: dict) -> None:
    torch.set_num_threads(job["threads"])
    kind = job["kind"]
    try:
        if kind == "spool":
            out = child_spool(job)
        elif kind == "profile":
            out = child_profile(job)
        else:
            out = child_peer(job)
    except RuntimeError as err:
        if not _is_oom(err):
            raise
        out = {"oom": f"allocation failed under the {job['budget'] / GIB:.0f} GiB cap: "
                      f"{str(err)[:160]}"}
    print("RESULT " + json.dumps(out), flush=True)


# --------------------------------------------------------------------------------------------
# The run

def machine() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
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


# --------------------------------------------------------------------------------------------
# Report

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
                   skipped={f"{k}@{T}": v for (k, T), v in res["skipped"].items()})
        args.json.write_text(json.dumps(raw, indent=1, default=str))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        plot(res, args.out.parent)
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _report import update_section  # shared with the other bench scripts
        update_section(args.out, SECTION[3:], section.split("\n", 1)[1])
        print(f"wrote {args.out} and plots in {args.out.parent}", file=sys.stderr)


if __name__ == "__main__":
    main()
