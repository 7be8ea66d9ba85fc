"""The backend registry (capabilities, ``auto``), the blocked plan as data, flex's shape policy."""

import pytest
import torch
from conftest import DEVICES, tiny_config

from spool import Spool, SpoolConfig
from spool.layers.attention_backends import ATTENTION_BACKENDS, select_backend
from spool.layers.attention_blocked import blocked_plan
from spool.layers.attention_flex import flex_attention
from spool.layers.attention_reference import reference_attention
from spool.layers.masks import frame_mask


def test_blocked_plan_covers_exactly_the_mask():
    """Each query frame of the suffix is computed by exactly one call, which lets it see
    exactly the frames SPEC §3 allows (lookback terms; lookahead is the mirror image)."""
    for num_frames in (2, 3, 5, 8, 13, 30):
        for w in (0, 1, 2, 4, 9):
            allowed = frame_mask(num_frames, w, lookahead=False)
            for chunk in (1, 2, 3, 4):
                for query_start in (q for q in (0, 1, 3, 7) if q < num_frames):
                    case = (num_frames, w, chunk, query_start)
                    plan = blocked_plan(*case)
                    owners = [i for call in plan
                              for i in range(call.query_start, call.query_stop)]
                    assert sorted(owners) == list(range(query_start, num_frames)), case
                    pairs = set().union(*(call.allowed_pairs() for call in plan))
                    expected = {(i, j) for i in range(query_start, num_frames)
                                for j in range(num_frames) if allowed[i, j]}
                    assert pairs == expected, case


def test_auto_respects_capabilities():
    assert select_backend("auto", "cpu").name == "blocked"
    assert select_backend("auto", "cuda").name == "blocked"  # measured fastest on an H200
    assert select_backend("flex", "cuda", dtype=torch.float16).name == "flex"
    with pytest.raises(ValueError, match="attn_implementation='flex'.*backward"):
        select_backend("flex", "cpu", backward=True)
    with pytest.raises(ValueError, match="attn_implementation='flex'.*attention_dropout"):
        select_backend("flex", "cuda", dropout=0.1)
    assert not ATTENTION_BACKENDS["reference"].linear


def test_config_rejects_a_backend_that_cannot_do_what_it_asks():
    with pytest.raises(ValueError, match="attn_implementation='flex'.*attention_dropout"):
        SpoolConfig(attn_implementation="flex", attention_dropout=0.1)
    SpoolConfig(attn_implementation="auto", attention_dropout=0.1)  # auto picks blocked


def test_auto_with_attention_dropout_trains():
    """Defect: auto + dropout raised mid-forward on a GPU; it now selects a backend that can,
    and the dropout is applied in training (two seeds differ) and not in eval."""
    for device in ("cpu", "cuda"):
        assert ATTENTION_BACKENDS[select_backend("auto", device, backward=True,
                                                 dropout=0.2).name].dropout
    torch.manual_seed(0)
    model = Spool(tiny_config(attention_dropout=0.2)).train()
    video = torch.rand(1, 3, 32, 32, 3)

    def context(seed):
        torch.manual_seed(seed)
        return model(video).context
    assert not torch.equal(context(1), context(2))
    context(1).sum().backward()
    grads = [p.grad for name, p in model.named_parameters() if ".attn.qkv." in name]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        assert torch.equal(context(1), context(2))


def _qkv(T, H=3, B=1, L=9, hd=8, device="cpu"):
    return [torch.randn(H, B, T + 2, L, hd, device=device) for _ in range(3)]


@pytest.mark.parametrize("device", DEVICES)
def test_flex_stays_compiled_over_many_lengths(device):
    """Twelve clip lengths in one process: flex compiles a bounded number of graphs (dynamic
    shapes, sizes captured as tensors) and never falls back to an uncompiled dense path."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    lengths = [3, 4, 6, 7, 9, 12, 15, 20, 26, 31, 40, 47]
    with torch.no_grad():
        for T in lengths:
            q, k, v = _qkv(T, device=device)
            out = flex_attention(q, k, v, num_lookback_heads=1, local_frame_range=3)
            ref = reference_attention(q, k, v, num_lookback_heads=1, local_frame_range=3)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    graphs = counters["stats"]["unique_graphs"]
    # One graph per length (the old global compiled with dynamic=False and int-capturing
    # mask closures) would hit dynamo's recompile limit (8) and run flex uncompiled.
    assert 1 <= graphs <= 3, f"{graphs} graphs compiled for {len(lengths)} lengths"


def test_blocked_takes_any_layout_of_the_attention_output(monkeypatch):
    """CUDA's flash and memory-efficient kernels return [N, nb, S, hd] with the strides of
    [N, S, nb, hd]; blocked must accept that layout (a plain .view of it fails)."""
    import torch.nn.functional as F

    from spool.layers import attention_blocked

    sdpa = F.scaled_dot_product_attention

    def transposed_layout(*args, **kwargs):
        out = sdpa(*args, **kwargs)
        return out.transpose(1, 2).contiguous().transpose(1, 2)

    q, k, v = _qkv(9)
    ref = reference_attention(q, k, v, num_lookback_heads=1, local_frame_range=3)
    monkeypatch.setattr(attention_blocked.F, "scaled_dot_product_attention", transposed_layout)
    out = attention_blocked.blocked_attention(q, k, v, num_lookback_heads=1, local_frame_range=3)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
