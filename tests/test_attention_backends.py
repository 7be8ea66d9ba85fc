"""The backend registry (capabilities, ``auto``), the blocked plan as data, flex's shape policy."""

import dataclasses
import itertools

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
    exactly the frames SPEC §3 allows (lookback terms; lookahead is the mirror image), with the
    prefix in one call or split (the CPU's plan)."""
    for num_frames, w in itertools.product((2, 3, 5, 8, 13, 30), (0, 1, 2, 4, 9)):
        allowed = frame_mask(num_frames, w, lookahead=False)
        starts = [q for q in (0, 1, 3, 7) if q < num_frames]
        for chunk, query_start, split in itertools.product((1, 2, 3, 4), starts, (False, True)):
            case = (num_frames, w, chunk, query_start, split)
            plan = blocked_plan(*case)
            owners = [i for call in plan for i in range(call.query_start, call.query_stop)]
            assert sorted(owners) == list(range(query_start, num_frames)), case
            pairs = set().union(*(call.allowed_pairs() for call in plan))
            expected = {(i, j) for i in range(query_start, num_frames)
                        for j in range(num_frames) if allowed[i, j]}
            assert pairs == expected, case


def test_the_cpu_plan_computes_fewer_masked_scores():
    """The prefix split in calls of chunk_frames queries (T = 16, w = 16, c = 4): 212 frame
    pairs per head group instead of 308, of which 188 are allowed (the profile's finding)."""
    def computed(plan):
        return sum(c.num_blocks * c.query_frames * (c.key_frames + c.context_key) for c in plan)

    assert computed(blocked_plan(18, 16, 4)) == 308
    assert computed(blocked_plan(18, 16, 4, split_prefix=True)) == 212


def test_auto_respects_capabilities():
    assert select_backend("auto", "cpu").name == "blocked"
    assert select_backend("auto", "cuda").name == "blocked"  # measured fastest on an H200
    assert select_backend("flex", "cuda", dtype=torch.float16).name == "flex"
    with pytest.raises(ValueError, match="attn_implementation='flex'.*backward"):
        select_backend("flex", "cpu", backward=True)
    with pytest.raises(ValueError, match="attn_implementation='flex'.*attention_dropout"):
        select_backend("flex", "cuda", dropout=0.1)
    assert not ATTENTION_BACKENDS["reference"].linear
    assert not ATTENTION_BACKENDS["dense"].linear


def test_auto_never_takes_a_quadratic_backend(monkeypatch):
    """SPEC §3: no backend but one asked for by name may build a (T+2)L x (T+2)L mask. auto
    took dense on CUDA for clips of up to 5,000 tokens (faster there on an H200), so the
    SPEC's default model at T = 16 built its full mask without being asked."""
    from spool.layers import attention_backends as ab

    shapes = [(1, 18, 17), (32, 34, 17), (1, 18, 257), (1, 66, 65), (8, 258, 17)]
    for device in ("cpu", "cuda"):
        for shape in (*shapes, None):
            for backward in (False, True):
                backend = select_backend("auto", device, shape=shape, backward=backward)
                assert backend.linear and backend.name == "blocked", (device, shape)
    # An order that lists one (a user's registration) is passed over, not taken.
    monkeypatch.setitem(ab.AUTO_ORDER, "cuda", (("dense", None), ("reference", None)))
    assert select_backend("auto", "cuda", shape=(1, 18, 17)).name == "blocked"
    assert select_backend("dense", "cuda").name == "dense"  # by name it is there


def test_the_attention_module_gives_auto_the_batch_shape(monkeypatch):
    """``auto`` gets (B, F, L): a test between two clips' token counts splits them."""
    from spool.layers import attention_backends as ab

    calls = []
    for name in ("blocked", "dense"):
        backend = ab.ATTENTION_BACKENDS[name]

        def spy(q, *a, _name=name, _f=backend.function, **kw):
            calls.append((_name, q.shape[2] * q.shape[3]))
            return _f(q, *a, **kw)
        monkeypatch.setitem(ab.ATTENTION_BACKENDS, name,  # dense as if linear: auto takes it
                            dataclasses.replace(backend, function=spy, linear=True))
    shapes = []
    monkeypatch.setitem(ab.AUTO_ORDER, "cpu", (
        ("dense", lambda B, F, L: shapes.append((B, F, L)) or F * L <= 100), ("blocked", None)))
    model = Spool(tiny_config(num_hidden_layers=1)).eval()
    with torch.no_grad():
        for T in (2, 12):
            model(torch.rand(1, T, 32, 32, 3))
    assert [n for n, _ in calls] == ["dense", "blocked"], calls
    assert calls[0][1] <= 100 < calls[1][1]
    assert shapes == [(1, 4, calls[0][1] // 4), (1, 14, calls[1][1] // 14)], shapes


def test_config_rejects_a_backend_that_cannot_do_what_it_asks(tmp_path):
    with pytest.raises(ValueError, match="attn_implementation='flex'.*attention_dropout"):
        SpoolConfig(attn_implementation="flex", attention_dropout=0.1)
    SpoolConfig(attn_implementation="auto", attention_dropout=0.1)  # auto picks blocked
    # A model trained with dropout, loaded for inference with flex: the error says how.
    Spool(tiny_config(attention_dropout=0.1)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="for inference .* pass attention_dropout=0.0"):
        Spool.from_pretrained(tmp_path, attn_implementation="flex")
    model = Spool.from_pretrained(tmp_path, attn_implementation="flex", attention_dropout=0.0)
    assert model.config.attn_implementation == "flex"


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


def test_compiled_blocked_attention_shares_its_graphs_across_long_clip_lengths():
    """torch.compile of blocked attention compiled a graph per clip length (divmod of the
    symbolic length broke the trace, then unfold's shape rule pinned it), so past dynamo's
    recompile limit (8) every new length ran uncompiled. Clips longer than the window plus a
    block share graphs (one per length modulo the block), and agree with eager."""
    from torch._dynamo.utils import counters

    from spool.layers.attention_blocked import blocked_attention

    torch._dynamo.reset()
    counters.clear()
    w = 4  # blocks of 2 query frames (the default w = 16 has blocks of 4: twice the graphs)
    compiled = torch.compile(blocked_attention, backend="eager")

    def run(T: int) -> None:
        q, k, v = _qkv(T)
        kwargs = dict(num_lookback_heads=1, local_frame_range=w)
        torch.testing.assert_close(compiled(q, k, v, **kwargs),
                                   blocked_attention(q, k, v, **kwargs), atol=0, rtol=0)

    with torch.no_grad():
        first = list(range(w + 6, w + 9))  # every length modulo the block
        for T in first:
            run(T)
        graphs = counters["stats"]["unique_graphs"]
        for T in (w + 13, 2 * w + 31, 3 * w + 45, 128, 301):
            run(T)
    assert counters["stats"]["unique_graphs"] == graphs, "a longer clip compiled a new graph"
    assert graphs <= 3, f"{graphs} graphs for {len(first)} lengths"


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


def test_dense_keeps_few_small_masks(monkeypatch):
    """Clips of many lengths keep at most 8 dense masks, and none over the size cap."""
    from spool.layers import attention_dense

    cache = attention_dense._cached_additive_mask
    cache.cache_clear()
    for T in range(1, 21):
        q, k, v = _qkv(T, H=2, L=3, hd=4)
        out = attention_dense.dense_attention(q, k, v, num_lookback_heads=1, local_frame_range=2)
        torch.testing.assert_close(out, reference_attention(q, k, v, num_lookback_heads=1,
                                                            local_frame_range=2))
    assert cache.cache_info().currsize == 8
    cache.cache_clear()
    monkeypatch.setattr(attention_dense, "CACHED_MASK_BYTES", 0)
    attention_dense.dense_attention(q, k, v, num_lookback_heads=1, local_frame_range=2)
    assert cache.cache_info().currsize == 0


def test_masks_used_while_a_cuda_graph_is_captured_are_kept(monkeypatch):
    """A captured graph holds only a mask's address: once evicted from the cache its memory
    would be reused under the graph's replays. Masks used during a capture stay."""
    from spool.layers import attention_dense, masks

    cache = attention_dense._cached_additive_mask
    cache.cache_clear()
    args = (18, 5, 2, False, torch.float32, torch.device("cpu"))
    monkeypatch.setattr(masks, "_capturing", lambda: True)
    captured = attention_dense.dense_token_bias(*args)
    monkeypatch.setattr(masks, "_capturing", lambda: False)
    for T in range(1, 21):  # evicts it from the LRU cache
        attention_dense.dense_token_bias(T, 5, 2, False, torch.float32, torch.device("cpu"))
    assert attention_dense.dense_token_bias(*args) is captured


def test_attention_compiles_whole_in_a_cuda_process(monkeypatch):
    """The capture query of the mask cache broke dynamo's graph at every attention call
    where CUDA is initialised (fullgraph failed: "torch.* op returned non-Tensor")."""
    import torch.cuda.graphs

    from spool.layers.attention_dense import dense_attention

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # as after any CUDA use
    # What torch.cuda.is_current_stream_capturing asks CUDA (none here): a bool, not a tensor.
    monkeypatch.setattr(torch.cuda.graphs, "_cuda_isCurrentStreamCapturing", lambda: False)
    torch._dynamo.reset()
    q = torch.randn(4, 1, 4, 8, 16)
    compiled = torch.compile(lambda q: dense_attention(q, q, q, num_lookback_heads=2,
                                                       local_frame_range=2),
                             backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(q), dense_attention(q, q, q, num_lookback_heads=2,
                                                            local_frame_range=2))
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["blocked", "dense", "flex"])
def test_a_trace_on_fake_tensors_leaves_later_outputs_alone(backend: str) -> None:
    """A first call on fake tensors (torch.export's default, FakeTensorMode, the ONNX exporter)
    left a fake mask in the process-wide cache: every later model of that shape gave wrong
    outputs (max error 0.1 with blocked) or NaN (dense), with no error."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from spool.layers import attention_blocked, attention_dense, masks

    model = Spool(tiny_config(num_hidden_layers=2, attn_implementation=backend)).eval()
    tokens = torch.randn(1, 5, model.config.num_spatial_tokens, model.config.hidden_size)
    caches = (attention_blocked._token_mask, attention_dense._cached_additive_mask,
              masks.flex_block_mask)
    for cache in caches:
        cache.cache_clear()
    with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = model.temporal(model.context_frames(mode.from_tensor(tokens)))
    assert fake.shape == (1, 7, *tokens.shape[2:])  # with the two context frames
    with torch.no_grad():
        after = model.forward_tokens(tokens).features
        for cache in caches:
            cache.cache_clear()
        fresh = model.forward_tokens(tokens).features
    torch.testing.assert_close(after, fresh, rtol=0, atol=0)
