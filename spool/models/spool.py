"""The Spool model: frame encoder, context frames, bidirectional temporal transformer."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from spool.config import SpoolConfig
from spool.layers.backbone import FrameEncoder
from spool.layers.context import ContextFrames, pool_context
from spool.layers.pooling import TokenMerging
from spool.layers.transformer import TemporalTransformer
from spool.models.frame_encoder import config_and_frame_encoder
from spool.models.pretrained import SpoolPreTrainedModel
from spool.validation import check_tokens, check_video, parameter_dtype

if TYPE_CHECKING:
    from spool.models.long_video import LongVideoOutput
    from spool.models.long_video_state import ResumableHiddenState
    from spool.video.samplers import FrameSampler


class SpoolOutput(NamedTuple):
    """``features: [B, T + 2, L, D]`` (frame 0 start context, T+1 end context; ``L`` merged
    with ``token_merging``);
    ``context: [B, 2D]`` (pooled start and end context frames). Tuple-unpackable."""

    features: torch.Tensor
    context: torch.Tensor


def _init_weights(module: nn.Module, std: float) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class Spool(SpoolPreTrainedModel):
    """Bidirectional temporal transformer over a foundation image model.

    ``Spool(num_hidden_layers=12, num_attention_heads=12, num_lookahead_heads=6,
    num_lookback_heads=6, image_size=224, local_frame_range=16,
    backbone_name="facebook/dinov2-base")`` or ``Spool(config)``.

    ``model(video)`` with ``video: [B, T, H, W, 3]`` (uint8, or float in [0, 1]) and
    ``model.forward_tokens(tokens)`` with cached backbone tokens ``[B, T, L, D]`` both
    return a :class:`SpoolOutput`. With ``with_backbone=False`` no backbone is built (for
    training on cached tokens); ``config.hidden_size`` and ``config.num_spatial_tokens``
    must then be set.
    """

    def __init__(self, config: SpoolConfig | None = None, /, *, with_backbone: bool = True,
                 **kwargs: Any) -> None:
        super().__init__()
        self.backbone: FrameEncoder | None
        config, self.backbone = config_and_frame_encoder(config, kwargs, with_backbone)
        self.config = config
        # The class/register tokens are the config's num_prefix_tokens (the backbone's, also on
        # cached tokens), since the token count alone can misread them as patches.
        self.token_merging = (TokenMerging(config.num_spatial_tokens, config.hidden_size,
                                           config.token_merging, config.num_prefix_tokens)
                              if config.token_merging > 1 else None)
        self.context_frames = ContextFrames(self.num_temporal_tokens, config.hidden_size,
                                            config.initializer_range)
        self.temporal = TemporalTransformer(config)
        self.temporal.apply(lambda m: _init_weights(m, config.initializer_range))

    @property
    def num_temporal_tokens(self) -> int:
        """Tokens per frame in the temporal stack and its features: ``L``, or fewer with
        ``token_merging``."""
        if self.token_merging is None:
            return self.config.num_spatial_tokens
        return self.token_merging.num_tokens

    def no_weight_decay(self) -> set[str]:
        # Decay would pull the merge's mean initialisation towards zero, shrinking the tokens.
        merge = {"token_merging.proj.weight"} if self.token_merging is not None else set()
        return {"context_frames.start", "context_frames.end", *merge}

    def merge_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Backbone tokens ``[..., L, D]`` -> ``[..., L', D]`` merged by ``token_merging`` (on
        the merge's device and dtype); without it, the tokens as they are."""
        if self.token_merging is None:
            return tokens
        return self.token_merging(tokens.to(self.token_merging.proj.weight))

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        """``video: [B, T, H, W, 3]`` -> backbone tokens ``[B, T, L, D]`` (what to cache)."""
        if self.backbone is None:
            raise ValueError("video: this model was built with with_backbone=False; pass "
                             "cached backbone tokens to forward_tokens instead")
        check_video(video)
        return self.backbone(video)

    def forward(self, video: torch.Tensor) -> SpoolOutput:
        """``video: [B, T, H, W, 3]`` -> ``SpoolOutput(features [B, T+2, L, D], context [B, 2D])``.
        """
        return self._temporal_forward(self.encode_frames(video))

    def forward_tokens(self, tokens: torch.Tensor) -> SpoolOutput:
        """Cached backbone ``tokens: [B, T, L, D]`` (any floating dtype: they are cast to the
        model's, as a float16 token cache needs) -> :class:`SpoolOutput`."""
        check_tokens(tokens, self.config.num_spatial_tokens, self.config.hidden_size)
        return self._temporal_forward(tokens)

    def forward_long(self, video: str | os.PathLike | torch.Tensor, *,
                     sampler: FrameSampler | None = None, chunk_frames: int = 32,
                     keep_features: bool = False, offload_dir: str | os.PathLike | None = None,
                     hidden_on_device: bool | None = None, progress: bool = False,
                     resume: ResumableHiddenState | None = None) -> LongVideoOutput:
        """A whole video in one pass with memory linear in its length: a file path (decoded
        in chunks with ``sampler``, by default at the training rate of ``config.sampling``,
        else 1 fps) or tokens ``[T, L, D]``. The same result as ``forward`` to fp32
        round-off; the keywords are :func:`spool.models.long_video.forward_long`'s."""
        from spool.models.long_video import forward_long

        return forward_long(self, video, sampler=sampler, chunk_frames=chunk_frames,
                            keep_features=keep_features, offload_dir=offload_dir,
                            hidden_on_device=hidden_on_device, progress=progress,
                            resume=resume)

    def _temporal_forward(self, tokens: torch.Tensor) -> SpoolOutput:
        # Tokens in the temporal stack's dtype (a float16 cache, a backbone of its own dtype).
        tokens = self.merge_tokens(tokens).to(parameter_dtype(self.temporal, self.context_frames))
        features = self.temporal(self.context_frames(tokens))
        return SpoolOutput(features, pool_context(features))
