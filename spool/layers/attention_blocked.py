"""Blocked temporal attention: SDPA over blocks of frames, linear in ``T``.

The work is described by a *plan*, a tuple of :class:`BlockCall` (which query frames read which
key frames, under which frame-level mask), built by :func:`blocked_plan` and run by
:func:`run_plan`. A plan is written in lookback terms: frame 0 is the context frame that sees
and is seen by every frame, and frame ``i`` also sees ``i - w .. i``. Lookahead heads run the
same plan on the mirror image of time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from spool.layers.masks import cached_mask, frames_to_tokens, head_groups


@dataclass(frozen=True)
class BlockCall:
    """One SDPA call, in lookback frame indices.

    ``num_blocks`` blocks of ``query_frames`` consecutive query frames, the first starting at
    ``query_start``; block ``b`` reads the ``key_frames`` frames from ``key_start + b *
    query_frames`` on, preceded by the context frame 0 when ``context_key``. ``mask`` is the
    frame-level ``[query_frames, context_key + key_frames]`` allowed matrix shared by every block
    (``None``: everything allowed).
    """

    query_start: int
    query_frames: int
    key_start: int
    key_frames: int
    num_blocks: int = 1
    context_key: bool = False
    mask: tuple[tuple[bool, ...], ...] | None = None

    @property
    def query_stop(self) -> int:
        return self.query_start + self.num_blocks * self.query_frames

    def allowed_pairs(self) -> set[tuple[int, int]]:
        """Every (query frame, key frame) pair this call lets attend (for tests and checks)."""
        pairs = set()
        for b in range(self.num_blocks):
            keys = ([0] if self.context_key else []) + list(
                range(self.key_start + b * self.query_frames,
                      self.key_start + b * self.query_frames + self.key_frames))
            for qi in range(self.query_frames):
                for ki, j in enumerate(keys):
                    if self.mask is None or self.mask[qi][ki]:
                        pairs.add((self.query_start + b * self.query_frames + qi, j))
        return pairs


def default_chunk_frames(local_frame_range: int) -> int:
    """Query frames per block: a block of ``c`` frames reads ``c + w + 1`` key frames, so a
    larger ``c`` copies K/V fewer times and a smaller one wastes fewer masked scores
    (docs/benchmarks.md, "Scaling")."""
    return max(1, min((local_frame_range + 1) // 2, 4))


def _band(c: int, w: int) -> tuple[tuple[bool, ...], ...]:
    """Context column, then query ``q`` sees window position ``p`` iff ``q <= p <= q + w``."""
    return tuple((True, *(q <= p <= q + w for p in range(c + w))) for q in range(c))


@lru_cache(maxsize=256)
def blocked_plan(num_frames: int, local_frame_range: int, chunk_frames: int,
                 query_start: int = 0, split_prefix: bool = False) -> tuple[BlockCall, ...]:
    """The calls that compute query frames ``query_start .. num_frames - 1`` of a sequence whose
    frame 0 is the (lookback) context frame.

    ``query_start = 0``: the whole sequence, context row included. A later start serves the
    chunked long-video forward, which computes a suffix of a local window of frames.
    ``split_prefix``: the first ``local_frame_range`` frames (whose windows the context frame
    cuts) in calls of ``chunk_frames`` queries, each reading keys up to its last frame, not
    one call under a triangle mask: fewer masked scores for more calls (the CPU's choice;
    a GPU's small calls are launch-bound).
    """
    nF, w = num_frames, local_frame_range
    calls: list[BlockCall] = []
    if query_start == 0:
        calls.append(BlockCall(0, 1, 0, nF))  # the context frame sees everything
    num_prefix = min(w, nF - 1)  # frames 1..P: windows cut by the context frame
    first = max(1, query_start)
    step = chunk_frames if split_prefix else max(1, num_prefix)
    for start in range(first, num_prefix + 1, step):
        stop = min(start + step, num_prefix + 1)
        mask = tuple(tuple(j <= i for j in range(stop)) for i in range(start, stop))
        calls.append(BlockCall(start, stop - start, 0, stop, mask=mask))
    first = max(num_prefix + 1, query_start)  # windows wholly inside the real frames
    num_rest = nF - first
    if num_rest <= 0:
        return tuple(calls)
    c = min(chunk_frames, num_rest)
    num_blocks = num_rest // c  # not divmod: torch.compile traces // and - with symbolic T
    num_tail = num_rest - num_blocks * c
    calls.append(BlockCall(first, c, first - w, c + w, num_blocks, True,
                           None if c == 1 else _band(c, w)))
    end = first + num_blocks * c
    if num_tail:
        calls.append(BlockCall(end, num_tail, end - w, num_tail + w, 1, True,
                               _band(num_tail, w)))
    return tuple(calls)


@cached_mask
def _token_mask(mask: tuple[tuple[bool, ...], ...], num_tokens: int, lookahead: bool,
                device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    allowed = torch.tensor(mask, dtype=torch.bool, device=device)
    return frames_to_tokens(allowed, num_tokens, lookahead, dtype)


def _key_windows(x: torch.Tensor, call: BlockCall, keys: slice, context: int,
                 lookahead: bool) -> torch.Tensor:
    """Overlapping windows of ``key_frames`` frames every ``query_frames`` frames, with the
    context frame added when the call asks: ``[N, num_blocks, (ctx + key_frames) * L, hd]``."""
    N, _, L, hd = x.shape
    nb = call.num_blocks
    if torch.compiler.is_compiling():  # unfold's shape rule would pin T to a constant
        starts = torch.arange(nb, device=x.device) * call.query_frames
        frames = starts[:, None] + torch.arange(call.key_frames, device=x.device)
        win = x[:, keys][:, frames]  # [N, nb, key_frames, L, hd]
    else:
        win = x[:, keys].unfold(1, call.key_frames, call.query_frames).permute(0, 1, 4, 2, 3)
    if call.context_key:
        ctx = x[:, context:context + 1, None].expand(N, nb, 1, L, hd)
        win = torch.cat((win, ctx) if lookahead else (ctx, win), dim=2)
    return win.reshape(N, nb, -1, hd)


def run_plan(plan: tuple[BlockCall, ...], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             out: torch.Tensor, lookahead: bool, dropout_p: float = 0.0) -> None:
    """Execute ``plan`` for one head group; writes the query frames it covers into ``out``.

    ``q, k, v: [G * B, F, L, hd]`` (heads of the group x batch, contiguous); ``out: [G, B, F,
    L, hd]``, any strides (the caller's output layout). Lookahead runs the plan on the mirror
    image of time: lookback frame ``t`` is memory frame ``F - 1 - t``, so a window's frames are
    reversed and its context frame comes last.
    """
    N, nF, L, hd = q.shape

    def frames(a: int, b: int) -> slice:  # lookback frames [a, b) -> memory frames
        return slice(nF - b, nF - a) if lookahead else slice(a, b)

    context = nF - 1 if lookahead else 0
    for call in plan:
        nb, c = call.num_blocks, call.query_frames
        queries = frames(call.query_start, call.query_stop)
        keys = frames(call.key_start, call.key_start + (nb - 1) * c + call.key_frames)
        mask = None if call.mask is None else _token_mask(call.mask, L, lookahead, q.device,
                                                          q.dtype)
        result = F.scaled_dot_product_attention(
            q[:, queries].reshape(N, nb, c * L, hd),
            _key_windows(k, call, keys, context, lookahead),
            _key_windows(v, call, keys, context, lookahead), attn_mask=mask,
            dropout_p=dropout_p)
        # Split dims only (always views): CUDA's kernels return ``result`` with the strides of
        # [N, c*L, nb, hd], which no merge of dims could view; one strided copy writes it.
        target = out[:, :, queries].unflatten(2, (nb, c))  # [G, B, nb, c, L, hd]
        target.copy_(result.unflatten(2, (c, L)).unflatten(0, target.shape[:2]))


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                      num_lookback_heads: int, local_frame_range: int,
                      chunk_frames: int | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """The ``blocked`` backend: ``q, k, v: [H, B, F, L, hd]`` -> ``[B, F, L, H, hd]``.

    Heads-first inputs make each head group one contiguous ``[Hg * B, ...]`` batch; the output
    is written straight into the layout the output projection reads.
    """
    H, B, nF, L, hd = q.shape
    c = chunk_frames or default_chunk_frames(local_frame_range)
    plan = blocked_plan(nF, local_frame_range, c, split_prefix=q.device.type == "cpu")
    out = q.new_empty(B, nF, L, H, hd)
    out_heads_first = out.permute(3, 0, 1, 2, 4)
    for lookahead, heads in head_groups(H, num_lookback_heads):
        x = [t[heads].view(-1, nF, L, hd) for t in (q, k, v)]
        run_plan(plan, *x, out_heads_first[heads], lookahead, dropout_p)
    return out
