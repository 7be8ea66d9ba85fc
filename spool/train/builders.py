"""What a training run is made of: datasets, the model, the optimizer and the schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from spool.config import SpoolConfig
from spool.data.cache import CachedTokenDataset, cache_backbone_config, load_cache_backbone
from spool.data.dataset import VideoClipDataset, read_annotations
from spool.models.classification import CLASSIFIER_NAME, classifier_class, load_classifier
from spool.models.pretrained import WEIGHTS_NAME, check_and_load_state_dict
from spool.train.config import BACKBONE_FIELDS, TrainConfig


def model_config(cfg: TrainConfig) -> SpoolConfig:
    """The SpoolConfig of the run without class names: from the cache, ``init`` or ``model``."""
    overrides = dict(cfg.model)
    if cfg.architecture == "frame_pooling":
        # No temporal stack: one nominal head, so any hidden size passes validation.
        overrides = {"num_hidden_layers": 0, "num_attention_heads": 1, "num_lookback_heads": 1,
                     "num_lookahead_heads": 0, **overrides}
    if cfg.gradient_checkpointing:
        overrides["gradient_checkpointing"] = True
    if cfg.train_cache is not None:
        cached = cache_backbone_config(cfg.train_cache)
        clash = {k: v for k, v in overrides.items()
                 if k in BACKBONE_FIELDS and v != getattr(cached, k)}
        if clash:
            raise ValueError(f"model: {sorted(clash)} differ from the backbone the token cache "
                             f"{cfg.train_cache} was made with; rebuild the cache instead")
        # Only the backbone comes from the cache; the temporal part is this run's choice.
        keep = (*BACKBONE_FIELDS, "freeze_backbone", "backbone_chunk_size")
        return SpoolConfig(**{**{k: getattr(cached, k) for k in keep}, **overrides})
    if cfg.init is not None:
        return SpoolConfig.from_pretrained(cfg.init).replace(**overrides)
    return SpoolConfig(**overrides)


def build_datasets(cfg: TrainConfig, image_size: int | None = None
                   ) -> tuple[Dataset, Dataset | None, list[str]]:
    """(train, val or None, class names); the val set uses the train set's class names."""
    if cfg.train_cache is not None:
        train: Dataset = CachedTokenDataset(cfg.train_cache, train=cfg.augment, seed=cfg.seed)
        names = train.class_names
    else:
        samples, names = read_annotations(cfg.train)
        train = VideoClipDataset(samples, names, num_frames=cfg.num_frames,
                                 image_size=image_size or 224, train=cfg.augment,
                                 frame_stride=cfg.frame_stride,
                                 crop_scale=tuple(cfg.crop_scale), hflip=cfg.hflip,
                                 seed=cfg.seed)
    val: Dataset | None = None
    if cfg.val_cache is not None:
        val = CachedTokenDataset(cfg.val_cache)
        if val.class_names != names:
            raise ValueError(f"val_cache: classes {val.class_names} differ from the training "
                             f"classes {names}")
        if cfg.train_cache is not None and (val.meta["backbone_digest"]
                                            != train.meta["backbone_digest"]):
            raise ValueError(f"val_cache: {cfg.val_cache} was made by other backbone weights "
                             f"than {cfg.train_cache}; cache both with the same backbone "
                             f"(spool cache --init {cfg.train_cache}/backbone)")
    elif cfg.val is not None:
        samples, _ = read_annotations(cfg.val, names)
        val = VideoClipDataset(samples, names, num_frames=cfg.num_frames,
                               image_size=image_size or 224, num_clips=cfg.num_clips,
                               frame_stride=cfg.frame_stride, seed=cfg.seed)
    return train, val, names


def build_model(cfg: TrainConfig, config: SpoolConfig, class_names: list[str]) -> nn.Module:
    """The classifier, seeded; backbone weights from the cache, or ``init``'s weights."""
    cls = classifier_class(cfg.architecture)
    init = Path(cfg.init) if cfg.init is not None else None
    if init is not None and (init / CLASSIFIER_NAME).is_file():
        model = load_classifier(init, **cfg.model)
        if not isinstance(model, cls) or model.class_names != class_names:
            raise ValueError(f"init: {init} is a {type(model).__name__} for classes "
                             f"{model.class_names}; this run trains {cls.__name__} on "
                             f"{class_names}")
        return model
    torch.manual_seed(cfg.seed)  # every rank builds the same initial weights
    model = cls(config.replace(class_names=list(class_names)))
    if cfg.train_cache is not None:
        load_cache_backbone(model, cfg.train_cache)
    elif init is not None:  # a Spool checkpoint: its weights, a new head
        from safetensors.torch import load_file

        state = load_file(init / WEIGHTS_NAME)
        target = getattr(model, "spool", None)
        if target is None:
            raise ValueError(f"init: {init} is a Spool checkpoint; use architecture 'spool'")
        check_and_load_state_dict(target, state, str(init / WEIGHTS_NAME))
    return model


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms or the learned context frames."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "context_frames" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup_steps: int, total_steps: int,
                  min_ratio: float) -> Callable[[int], float]:
    """lr factor at step ``s``: linear warm-up to 1, then a cosine down to ``min_ratio``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def epoch_batches(num_samples: int, batch_size: int, world: int, rank: int, seed: int,
                  epoch: int) -> list[list[int]]:
    """This rank's batches of an epoch (``batch_size`` per rank), incomplete ones dropped.

    The order is DistributedSampler's (a permutation seeded by ``seed + epoch``, rank ``r``
    taking positions ``r, r + world, ...``), so batch ``k`` over all ranks holds exactly the
    samples of batch ``k`` of a one-process run with a ``world`` times larger batch.
    """
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(range(num_samples), num_replicas=world, rank=rank,
                                 shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    order = list(sampler)
    full = len(order) // batch_size
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(full)]
