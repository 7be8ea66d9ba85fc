"""What a training run is made of: datasets, the model, the optimizer and the schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from spool.config import SpoolConfig, differing_token_fields
from spool.data.cache import CachedTokenDataset, cache_backbone_config, load_cache_backbone
from spool.data.dataset import VideoClipDataset, read_annotations
from spool.models.classification import VideoClassifier, classifier_class
from spool.models.pretrained import load_pretrained
from spool.models.spool import Spool
from spool.train.config import TrainConfig
from spool.video.samplers import clip_sampler
from spool.video.transforms import RandomResizedCrop


def model_config(cfg: TrainConfig) -> SpoolConfig:
    """The SpoolConfig of the run without class names: from the cache, ``init`` or ``model``."""
    overrides = dict(cfg.model)
    if cfg.architecture == "frame_pooling":
        overrides = {"num_hidden_layers": 0, **overrides}  # no temporal stack
    if cfg.gradient_checkpointing:
        overrides["gradient_checkpointing"] = True
    if cfg.train_cache is not None:
        cached = cache_backbone_config(cfg.train_cache)
        fixed = SpoolConfig.FRAME_ENCODER_FIELDS
        clash = {k: v for k, v in overrides.items() if k in fixed and v != getattr(cached, k)}
        if clash:
            raise ValueError(f"model: {sorted(clash)} differ from the backbone the token cache "
                             f"{cfg.train_cache} was made with; rebuild the cache instead")
        # Only the frame encoder comes from the cache; the temporal part is this run's choice.
        keep = (*fixed, "freeze_backbone", "backbone_chunk_size")
        return SpoolConfig(**{**{k: getattr(cached, k) for k in keep}, **overrides})
    if cfg.init is not None:
        return load_pretrained(cfg.init, with_backbone=False).config.replace(
            architectures=None, **overrides)
    return SpoolConfig(**overrides)


def build_datasets(cfg: TrainConfig, config: SpoolConfig
                   ) -> tuple[Dataset, Dataset | None, list[str]]:
    """(train, val or None, class names); the val set uses the train set's class names. Video
    datasets use ``config``'s preprocessing policy."""
    if cfg.train_cache is not None:
        train: Dataset = CachedTokenDataset(cfg.train_cache, augment=cfg.augment,
                                            seed=cfg.seed)
        names = train.class_names
    else:
        samples, names = read_annotations(cfg.train_data)
        augmentation = (RandomResizedCrop(tuple(cfg.crop_scale), cfg.hflip) if cfg.augment
                        else None)
        # An unreadable video is replaced by a readable one (and reported), not fatal.
        train = VideoClipDataset(samples, names, clip_sampler(cfg.num_frames, cfg.frame_stride),
                                 config.preprocessing(), augmentation, seed=cfg.seed,
                                 substitute=True)
    val: Dataset | None = None
    if cfg.val_cache is not None:
        val = CachedTokenDataset(cfg.val_cache)
        val.use_class_names(names, "val_cache", "the training classes")
        if cfg.train_cache is not None and (val.meta["backbone_digest"]
                                            != train.meta["backbone_digest"]):
            raise ValueError(f"val_cache: {cfg.val_cache} was made by other backbone weights "
                             f"than {cfg.train_cache}; cache both with the same backbone "
                             f"(spool cache --init {cfg.train_cache}/backbone)")
        if cfg.train_cache is not None:
            differ = differing_token_fields(train.meta.get("frame_encoder"),
                                            val.meta.get("frame_encoder"))
            if differ:
                raise ValueError(f"val_cache: {cfg.val_cache} was made with other "
                                 f"{', '.join(differ)} than {cfg.train_cache}; cache both with "
                                 "the same settings")
    elif cfg.val_data is not None:
        samples, _ = read_annotations(cfg.val_data, names)
        frames, stride = cfg.num_frames, cfg.frame_stride
        if cfg.train_cache is not None and train.sampling:  # clips like the cached ones
            frames = train.sampling.get("num_frames", frames)
            stride = train.sampling.get("frame_stride")
        sampler = clip_sampler(frames, stride, cfg.num_clips)
        val = VideoClipDataset(samples, names, sampler, config.preprocessing(), seed=cfg.seed)
    return train, val, names


def build_model(cfg: TrainConfig, config: SpoolConfig, class_names: list[str]
                ) -> VideoClassifier:
    """The classifier, seeded; backbone weights from the cache, or ``init``'s weights."""
    cls = classifier_class(cfg.architecture)
    if cfg.init is not None:
        init = load_pretrained(cfg.init, **cfg.model)
        if isinstance(init, VideoClassifier):
            if not isinstance(init, cls) or init.class_names != class_names:
                raise ValueError(f"init: {cfg.init} is a {type(init).__name__} for classes "
                                 f"{init.class_names}; this run trains {cls.__name__} on "
                                 f"{class_names}")
            return init
    torch.manual_seed(cfg.seed)  # every rank builds the same initial weights
    model = cls(config.replace(class_names=list(class_names)))
    load_initial_weights(model, cfg)
    return model


def load_initial_weights(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """A new model's starting weights: the token cache's frame encoder, or the Spool of
    ``init`` (a Spool checkpoint, or the Spool inside another model) under a new head."""
    if cfg.train_cache is not None:
        load_cache_backbone(model, cfg.train_cache)
    elif cfg.init is not None:
        init = load_pretrained(cfg.init, **cfg.model)
        source = init if isinstance(init, Spool) else getattr(init, "spool", None)
        target = getattr(model, "spool", None)
        if not isinstance(source, Spool) or target is None:
            raise ValueError(f"init: {cfg.init} holds a {type(init).__name__}; a new "
                             f"{type(model).__name__} can start only from the Spool of a "
                             "Spool or Spool-classifier checkpoint")
        target.load_state_dict(source.state_dict())


def parameter_groups(model: VideoClassifier, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms, or what the model declares in
    ``no_weight_decay()`` (the learned context frames)."""
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name in skip else decay).append(p)
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
