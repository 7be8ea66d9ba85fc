"""Model builders, parameter counts and FLOP counting for ``bench/peers.py``.

Base-size shapes of the benchmarked models, builders for the Spool group (w=16 with its
backbone; w=4 and the dense-masked Spool sharing it) and the HF peers, and FLOPs counted by
``FlopCounterMode`` on the meta device or by hand (``useful_temporal_flops``). Importing this
module registers a FLOP formula for the CPU SDPA op (see ``_register_cpu_sdpa_flops``).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

# DINOv2-base at 224 (patch 14): L = 1 + 16 * 16 = 257 tokens per frame, D = 768.
DINOV2_BASE = {"model_type": "dinov2", "hidden_size": 768, "num_hidden_layers": 12,
               "num_attention_heads": 12, "mlp_ratio": 4, "patch_size": 14, "image_size": 224}
L_TOKENS, HIDDEN, LAYERS, HEADS, LOOKBACK = 257, 768, 12, 12, 6
SPOOL_WS = (4, 16)
DENSE_W = 16  # the dense mask's cost does not depend on w; 16 is the SPEC's default


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
