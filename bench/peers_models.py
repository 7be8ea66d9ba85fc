"""Model builders, parameter counts and FLOP counting for ``bench/peers.py``.

Shapes of the benchmarked models (``Dims``: base size, or tiny for smoke tests), builders for
the Spool group (one frozen DINOv2-base-sized backbone shared by every Spool variant, each
variant a temporal stack with its own token pooling) and the HF peers, and FLOPs counted by
``FlopCounterMode`` on the meta device or by hand (``useful_temporal_flops``). Importing this
module registers a FLOP formula for the CPU SDPA op (see ``_register_cpu_sdpa_flops``).
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count


@dataclasses.dataclass(frozen=True)
class Dims:
    """Shapes of the benchmarked models. ``BASE``: the real run (DINOv2-base at 224 px, patch
    14: L = 1 + 16 * 16 = 257 tokens per frame, D = 768; base-size HF peers). ``TINY``: the
    same code paths at toy sizes, for smoke tests (``--tiny``); its numbers mean nothing."""
    image: int = 224
    patch: int = 14
    hidden: int = 768
    backbone_layers: int = 12
    layers: int = 12  # temporal blocks
    heads: int = 12
    lookback: int = 6
    peer_patch: int = 16
    peer_layers: int = 12
    peer_hidden: int = 768
    peer_heads: int = 12
    peer_mlp: int = 3072

    @property
    def grid(self) -> int:
        return self.image // self.patch

    @property
    def backbone_config(self) -> dict:
        return {"model_type": "dinov2", "hidden_size": self.hidden,
                "num_hidden_layers": self.backbone_layers, "num_attention_heads": self.heads,
                "mlp_ratio": 4, "patch_size": self.patch, "image_size": self.image}

    def peer_config(self) -> dict:
        return {"image_size": self.image, "patch_size": self.peer_patch,
                "hidden_size": self.peer_hidden, "num_hidden_layers": self.peer_layers,
                "num_attention_heads": self.peer_heads, "intermediate_size": self.peer_mlp}


BASE = Dims()
TINY = Dims(image=56, patch=7, hidden=48, backbone_layers=2, layers=2, heads=4, lookback=2,
            peer_patch=8, peer_layers=2, peer_hidden=48, peer_heads=4, peer_mlp=192)
DIMS = BASE  # switched by ``use_dims`` (the parent and every child, from the job)
PREFIX = 1  # the class token, kept by the pooling
DENSE_W = 16  # the dense mask's cost does not depend on w; 16 is the SPEC's default


def use_dims(tiny: bool) -> Dims:
    global DIMS
    DIMS = TINY if tiny else BASE
    return DIMS


# The Spool variants of the group: key -> (w = local_frame_range, k = token_pooling,
# attention implementation). Order = the order their stacks run in each iteration.
VARIANTS = {
    "spool_w4": (4, 1, "blocked"),
    "spool_w4_k2": (4, 2, "blocked"),
    "spool_w4_k4": (4, 4, "blocked"),
    "spool_w16": (16, 1, "blocked"),
    "dense": (DENSE_W, 1, "reference"),
}
PEERS = ("timesformer", "videomae")


def tokens_per_frame(k: int) -> int:
    """L after ``token_pooling=k``: the class token + the (g/k)^2 pooled patches."""
    return PREFIX + (DIMS.grid // k) ** 2




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


def useful_temporal_flops(T: int, w: int, k: int = 1) -> dict[str, int]:
    """FLOPs the temporal stack needs, by hand: the linear layers (24 D^2 per token per layer:
    QKV 6, proj 2, MLP 16) and attention over the allowed (query frame, key frame) pairs only
    (4 L^2 head_dim per pair per head: QK^T and PV), i.e. none of the masked-out entries."""
    F, L, d = T + 2, tokens_per_frame(k), DIMS
    linear = d.layers * F * L * 24 * d.hidden * d.hidden
    # Lookback: frame 0 sees all F frames; frame i >= 1 sees frame 0 and frames max(1, i-w)..i.
    pairs = F + sum(1 + i - max(1, i - w) + 1 for i in range(1, F))  # lookahead: the same count
    attention = d.layers * d.heads * pairs * L * L * 4 * (d.hidden // d.heads)
    return {"linear": linear, "attention": attention, "total": linear + attention}


@contextlib.contextmanager
def meta_attention():
    """Let the attention backends run on the meta device while counting FLOPs: Spool's backend
    registry declares only real device types, so it refuses ``meta``, though the code is the
    same Python on shapes. The registry is restored afterwards."""
    from spool.layers import attention_backends as ab
    saved = dict(ab.ATTENTION_BACKENDS)
    for name in ("blocked", "reference"):
        backend = saved[name]
        ab.register_backend(dataclasses.replace(backend, devices=backend.devices | {"meta"}))
    try:
        yield
    finally:
        ab.ATTENTION_BACKENDS.clear()
        ab.ATTENTION_BACKENDS.update(saved)


def count_flops(group: str, T: int) -> dict[str, int]:
    """FLOPs of one forward, counted by ``FlopCounterMode`` on the meta device (shapes only:
    no memory, no time; every T can be counted, even those that do not fit in memory). Checked
    against a count on real CPU tensors in the T <= 8 runs (``flop_check`` in the results).
    Token pooling (``avg_pool2d``) has no formula and counts 0; it is ~L D adds per frame."""
    out: dict[str, int] = {}
    with torch.device("meta"), meta_attention(), torch.no_grad():  # as the timed runs
        if group == "spool":
            models = build_spool_group(list(VARIANTS))
            video = torch.zeros(1, T, DIMS.image, DIMS.image, 3, dtype=torch.uint8)
            with FlopCounterMode(display=False) as fc:
                tokens = models["backbone"](video)
            out["backbone"] = fc.get_total_flops()
            for key in VARIANTS:
                pooled = pool_tokens(models, key, tokens)
                with FlopCounterMode(display=False) as fc:
                    _temporal(models[key], pooled)
                out[key + "_cached"] = fc.get_total_flops()
                out[key] = out["backbone"] + out[key + "_cached"]
        else:
            model = build_peer(group, T)
            with FlopCounterMode(display=False) as fc:
                model(pixel_values=torch.zeros(1, T, 3, DIMS.image, DIMS.image))
            out[group] = fc.get_total_flops()
    return out


# --------------------------------------------------------------------------------------------
# Models

def variant_config(key: str, with_backbone: bool = False, attn: str | None = None):
    """The ``SpoolConfig`` of one variant; ``with_backbone=False``: the temporal stack alone,
    for the pooled tokens ``[T, L_k, D]`` it is given. ``attn`` overrides its attention
    implementation (``bench/gpu_checks.py``: ``auto``, i.e. blocked)."""
    from spool import SpoolConfig
    w, k, impl = VARIANTS[key]
    impl = attn or impl
    d = DIMS
    extra = {} if with_backbone else {"hidden_size": d.hidden,
                                      "num_spatial_tokens": tokens_per_frame(k)}
    return SpoolConfig(num_hidden_layers=d.layers, num_attention_heads=d.heads,
                       num_lookback_heads=d.lookback, num_lookahead_heads=d.heads - d.lookback,
                       image_size=d.image, local_frame_range=w, backbone_config=d.backbone_config,
                       attn_implementation=impl, token_pooling=k, **extra)


def build_spool_group(keys: list[str], attn: str | None = None) -> dict[str, torch.nn.Module]:
    """``"backbone"``: the frozen frame encoder (no pooling); one temporal stack per variant
    (``Spool(with_backbone=False)``); ``"pool_<k>"``: the pooling a ``token_pooling=k`` model
    applies to the backbone's tokens. The backbone is the same frozen network for every
    variant, so it runs once per iteration and each variant pools its output."""
    from spool import Spool
    from spool.layers.backbone import build_frame_encoder
    from spool.layers.pooling import SpatialTokenPooling
    torch.manual_seed(0)
    encoder, config = build_frame_encoder(variant_config("spool_w4", with_backbone=True))
    assert config.num_spatial_tokens == tokens_per_frame(1) and config.hidden_size == DIMS.hidden
    models: dict[str, torch.nn.Module] = {"backbone": encoder.eval()}
    for key in keys:
        models[key] = Spool(variant_config(key, attn=attn), with_backbone=False).eval()
        k = VARIANTS[key][1]
        if k > 1:
            models[f"pool_{k}"] = SpatialTokenPooling(PREFIX, DIMS.grid, k)
    return models


def pool_tokens(models: dict, key: str, tokens: torch.Tensor) -> torch.Tensor:
    """``[B, T, L, D]`` -> ``[B, T, L_k, D]``: what variant ``key``'s frame encoder returns
    (it pools each chunk of frames; pooling is per frame, so pooling them all at once is the
    same)."""
    k = VARIANTS[key][1]
    if k == 1:
        return tokens
    B, T = tokens.shape[:2]
    return models[f"pool_{k}"](tokens.flatten(0, 1)).unflatten(0, (B, T))


def build_peer(name: str, T: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "timesformer":
        from transformers import TimesformerConfig, TimesformerModel
        return TimesformerModel(TimesformerConfig(num_frames=T, **DIMS.peer_config())).eval()
    from transformers import VideoMAEConfig, VideoMAEModel
    return VideoMAEModel(VideoMAEConfig(num_frames=T, tubelet_size=2, **DIMS.peer_config())
                         ).eval()


def _temporal(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The temporal stack as ``forward_tokens`` runs it, minus the input check (which would
    need real data): context frames + blocks + final norm."""
    return model.temporal(model.context_frames(tokens))


def param_counts() -> dict[str, int]:
    """Parameters per model; a Spool variant's full count is the backbone's + its stack's
    (the pooled variants' context frames are smaller: 2 L_k D)."""
    with torch.device("meta"):
        spool = build_spool_group(list(VARIANTS))
        peers = {name: build_peer(name, 8) for name in PEERS}
    n = {k: sum(p.numel() for p in m.parameters()) for k, m in peers.items()}
    backbone = n["backbone"] = sum(p.numel() for p in spool["backbone"].parameters())
    for key in VARIANTS:
        own = sum(p.numel() for p in spool[key].parameters())
        n[key + "_cached"] = own
        n[key] = own + backbone
    return n
