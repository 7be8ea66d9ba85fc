"""Child-process side of ``bench/peers.py``: the measurements one child makes.

``peers.py --child <json>`` calls ``child_main``, which runs one job (a Spool group or an HF
peer at one T, a profile of the temporal stack, or the interleaved short/long T check) and
prints its result as one ``RESULT <json>`` line. ``matmul_peak`` is also used by the parent.
"""

from __future__ import annotations

import json
import statistics
import time

import peers_models as pm
import torch
from peers_memory import GIB, Memory, is_oom, limit_memory
from peers_models import (
    VARIANTS,
    build_peer,
    build_spool_group,
    pool_tokens,
    tokens_per_frame,
    use_dims,
    variant_config,
)
from torch.utils.flop_counter import FlopCounterMode

WARMUP_T = 4  # T > 8: warm up at this T (a warm-up at T = 128 would cost minutes)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def child_spool(job: dict) -> dict:
    """Each iteration: the shared backbone on the video once, then every variant's token
    pooling and temporal stack (``forward_tokens``) on its output; a variant's full-model time
    is backbone + its pooling + its stack from the same iteration."""
    T, runs, mem = job["T"], job["runs"], Memory()
    models = build_spool_group(job["variants"])
    backbone = models["backbone"]
    stacks = list(job["variants"])
    torch.manual_seed(1)
    video = torch.randint(0, 256, (1, T, pm.DIMS.image, pm.DIMS.image, 3), dtype=torch.uint8)
    limit_memory(job["budget"], mem)

    def iteration(clip: torch.Tensor, measure: bool, dense: bool = True) -> dict:
        r: dict = {}
        rss0 = mem.begin() if measure else 0
        t = time.perf_counter()
        tokens = backbone(clip)
        r["backbone"] = time.perf_counter() - t
        if measure:
            r["mem_backbone"] = mem.peak() - rss0
        for key in [k for k in stacks if dense or k != "dense"]:
            try:
                t = time.perf_counter()
                pooled = pool_tokens(models, key, tokens)
                r[key + "_pool"] = time.perf_counter() - t
                start = mem.begin() if measure else 0
                t = time.perf_counter()
                models[key].forward_tokens(pooled)
                r[key + "_cached"] = time.perf_counter() - t
                r[key] = r["backbone"] + r[key + "_pool"] + r[key + "_cached"]
                if measure:
                    # Full model: its backbone phase, or its own tokens + its stack's peak.
                    # The backbone phase is the unpooled one; a pooled model pools each
                    # chunk of frames as it goes, so this is an upper bound for it.
                    r["mem_" + key + "_cached"] = mem.peak() - start
                    r["mem_" + key] = max(r["mem_backbone"], pooled.numel() * 4
                                          + r["mem_" + key + "_cached"])
                del pooled
            except RuntimeError as err:
                if not is_oom(err):
                    raise
                r[key + "_error"] = f"OOM (allocation failed under the {job['budget'] / GIB:.0f}" \
                                    f" GiB cap: {str(err)[:120]})"
                stacks.remove(key)
        return r

    out: dict = {"T": T}
    with torch.no_grad():
        if job["flop_check"]:  # warm-up on real tensors under the FLOP counter
            flops = {}
            with FlopCounterMode(display=False) as fc:
                tokens = backbone(video)
            flops["backbone"] = fc.get_total_flops()
            for key in stacks:
                pooled = pool_tokens(models, key, tokens)
                with FlopCounterMode(display=False) as fc:
                    models[key].forward_tokens(pooled)
                flops[key + "_cached"] = fc.get_total_flops()
            out["flop_check"] = flops
            del tokens, pooled
        warm_t = T if T <= 8 else min(WARMUP_T, T)
        iteration(video[:, :warm_t].contiguous(), measure=False)
        if job.get("peak"):
            out["peak"] = matmul_peak(job["peak"], job.get("peak_n", 4096))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        results = [iteration(video, measure=(i == 0), dense=i < job.get("dense_runs", runs))
                   for i in range(runs)]
        out["cpu_share"] = _cpu_share(cpu0, wall0, job["threads"])
        if job.get("end_to_end_check"):
            out["end_to_end"] = _end_to_end(models, video)
    times = {}
    for key in ["backbone"] + [k + s for k in VARIANTS for s in ("", "_cached", "_pool")]:
        xs = [r[key] for r in results if key in r]
        if xs:
            times[key] = {"median": _median(xs), "runs": xs}
    out["times"] = times
    out["memory"] = {k[4:]: v for k, v in results[0].items() if k.startswith("mem_")}
    out["errors"] = {k[:-6]: v for r in results for k, v in r.items() if k.endswith("_error")}
    return out


def _end_to_end(models: dict, video: torch.Tensor) -> dict:
    """A check of the group's shortcut: each w=4 variant built as a plain ``Spool`` with its
    own frame encoder (``token_pooling=k``) and the group's weights, timed on ``model(video)``
    once, its features compared with backbone -> pooling -> stack."""
    from spool import Spool
    tokens = models["backbone"](video)
    backbone_state = {f"backbone.{k}": v for k, v in models["backbone"].state_dict().items()}
    out = {}
    for key in [k for k in ("spool_w4", "spool_w4_k2", "spool_w4_k4") if k in models]:
        model = Spool(variant_config(key, with_backbone=True)).eval()
        model.load_state_dict({**backbone_state, **models[key].state_dict()})
        t = time.perf_counter()
        features = model(video).features
        seconds = time.perf_counter() - t
        expected = models[key].forward_tokens(pool_tokens(models, key, tokens)).features
        out[key] = {"seconds": seconds, "max_abs_diff": (features - expected).abs().max().item()}
        del model
    return out


def _cpu_share(cpu0: float, wall0: float, threads: int) -> float:
    """CPU time this process got / (wall time x threads) since ``cpu0, wall0``: about 1 when
    it had its cores to itself (idle OpenMP threads spin), lower when other processes took
    CPU time from it."""
    return (time.process_time() - cpu0) / ((time.perf_counter() - wall0) * threads)


def child_peer(job: dict) -> dict:
    name, T, runs, mem = job["name"], job["T"], job["runs"], Memory()
    model = build_peer(name, T)
    warm = model if T <= 8 else build_peer(name, WARMUP_T)
    torch.manual_seed(1)
    pixels = torch.randn(1, T, 3, pm.DIMS.image, pm.DIMS.image)
    limit_memory(job["budget"], mem)
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
    """torch.profiler over ``forward_tokens`` of one variant's temporal stack at T."""
    from spool import Spool
    T, key = job["T"], job["key"]
    model = Spool(variant_config(key), with_backbone=False).eval()
    tokens = torch.randn(1, T, tokens_per_frame(VARIANTS[key][1]), pm.DIMS.hidden)
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
    return {"T": T, "key": key, "profiled_s": profiled,
            "self_total_us": total, "ops": ops[:25],
            "table": events.table(sort_by="self_cpu_time_total", row_limit=20)}


def child_interleave(job: dict) -> dict:
    """Spool (backbone, then temporal stack on its tokens) at a short and a long T in one
    process, alternating short, long, short, so both see the same load from other processes (a
    check of linear cost that does not depend on the load staying the same between children)."""
    from spool import Spool
    short, long_, threads = job["short"], job["long"], job["threads"]
    torch.manual_seed(1)
    video = torch.randint(0, 256, (1, long_, pm.DIMS.image, pm.DIMS.image, 3), dtype=torch.uint8)
    out: dict = {}
    for key in job["variants"]:
        torch.manual_seed(0)
        model = Spool(variant_config(key, with_backbone=True)).eval()
        runs = []
        with torch.no_grad():
            model(video[:, :WARMUP_T].contiguous())
            for T in [short] * job["short_runs"] + [long_] + [short] * job["short_runs"]:
                clip = video[:, :T].contiguous()
                cpu0, wall0 = time.process_time(), time.perf_counter()
                tokens = model.encode_frames(clip)
                t1 = time.perf_counter()
                model.forward_tokens(tokens)
                t2 = time.perf_counter()
                runs.append({"T": T, "s": t2 - wall0, "backbone": t1 - wall0, "stack": t2 - t1,
                             "share": _cpu_share(cpu0, wall0, threads)})
        out[key] = runs
        del model
    return {"short": short, "long": long_, "runs": out}


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


def child_main(job: dict) -> None:
    from spool.runtime import tune_cpu_allocator

    tune_cpu_allocator()  # what the spool CLI does; applies to every model alike
    torch.set_num_threads(job["threads"])
    use_dims(job.get("tiny", False))
    kind = job["kind"]
    try:
        if kind == "spool":
            out = child_spool(job)
        elif kind == "profile":
            out = child_profile(job)
        elif kind == "interleave":
            out = child_interleave(job)
        else:
            out = child_peer(job)
    except RuntimeError as err:
        if not is_oom(err):
            raise
        out = {"oom": f"allocation failed under the {job['budget'] / GIB:.0f} GiB cap: "
                      f"{str(err)[:160]}"}
    print("RESULT " + json.dumps(out), flush=True)
