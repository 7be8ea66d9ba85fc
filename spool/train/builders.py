"""What a training run is made of: datasets, the model, the optimizer and the schedule."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from spool.config import SpoolConfig, backbone_identity, differing_token_fields
from spool.data.cache import (
    CACHE_META,
    CachedTokenDataset,
    cache_backbone_config,
    load_cache_backbone,
)
from spool.data.dataset import VideoClipDataset, read_annotations
from spool.errors import CheckpointNotFoundError
from spool.layers.backbone import backbone_weights_follow
from spool.models.classification import VideoClassifier, classifier_class
from spool.models.pretrained import (
    checkpoint_architecture,
    checkpoint_backbone_digest,
    load_pretrained,
    resolve_checkpoint,
)
from spool.models.spool import Spool
from spool.models.weights import (
    _BACKBONE_KEY,
    backbone_digest,
    check_and_load_state_dict,
    weights_digest,
    without_backbone,
)
from spool.train.config import TrainConfig
from spool.video.samplers import clip_sampler
from spool.video.transforms import RandomResizedCrop

logger = logging.getLogger(__name__)


def model_class(cfg: TrainConfig) -> type:
    """The class of model the run trains (its task's ``architecture``)."""
    if cfg.task == "frames":
        from spool.models.frame_baselines import frame_classifier_class
        return frame_classifier_class(cfg.architecture)
    return classifier_class(cfg.architecture)


def init_gone(cfg: TrainConfig) -> bool:
    """Whether the run names an ``init`` that cannot be found (moved or cleaned away since
    the run began, a hub id offline)."""
    if cfg.init is None:
        return False
    try:
        resolve_init(cfg)
    except CheckpointNotFoundError:
        return True
    return False


def model_config(cfg: TrainConfig, resumed: Path | None = None) -> SpoolConfig:
    """The SpoolConfig of the run without class names: ``init``'s (its head settings only
    when the run continues its class; or, resuming a run whose init is gone, that of the
    checkpoint ``resumed``, which holds every weight), the token cache's frame encoder, then
    ``model``."""
    overrides = dict(cfg.model)
    if not model_class(cfg).has_temporal_stack:  # nor heads to split hidden_size
        overrides = {"num_hidden_layers": 0, **overrides}
    if cfg.gradient_checkpointing:
        overrides["gradient_checkpointing"] = True
    base = SpoolConfig()
    if cfg.init is not None and resumed is not None:
        logger.warning(f"init {cfg.init}: not found; resuming from {resumed}, which holds the "
                       "model's config and weights")
        base = SpoolConfig.from_pretrained(resumed).replace(architectures=None,
                                                            background_classes=None)
    elif cfg.init is not None:
        init = load_pretrained(resolve_init(cfg), with_backbone=False)
        # The run's own background classes (frames task) replace the init's.
        head = {} if type(init) is model_class(cfg) else {"head_config": None}
        base = init.config.replace(architectures=None, background_classes=None, **head)
    if cfg.train_cache is None:
        return base.replace(**overrides)
    if overrides.get("freeze_backbone") is False:
        raise ValueError("model: freeze_backbone=false does not apply to --train-cache (the "
                         "backbone is never run); train on videos (--train-data) to fine-tune it")
    cached = cache_backbone_config(cfg.train_cache)
    fixed = SpoolConfig.FRAME_ENCODER_FIELDS
    def compared(key: str, value: Any) -> Any:  # a backbone folder maybe recorded relative
        return backbone_identity(value) if key == "backbone_name" else value

    clash = {k: v for k, v in overrides.items()
             if k in fixed and compared(k, v) != compared(k, getattr(cached, k))}
    if clash:
        raise ValueError(f"model: {sorted(clash)} differ from the backbone the token cache "
                         f"{cfg.train_cache} was made with; rebuild the cache instead")
    # Only the frame encoder comes from the cache; the temporal part is this run's choice.
    # The run's values win: the fixed fields equal the cache's (checked above), and the
    # others (the chunk size of a later run of the backbone) do not change the tokens.
    keep = (*fixed, "freeze_backbone", "backbone_chunk_size", "use_pretrained_backbone")
    return base.replace(**{**{k: getattr(cached, k) for k in keep}, **overrides})


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
        # Its backbone and token settings are checked against the model's (build_model).
        check_sampling(val.sampling, training_sampling(train), "val_cache", cfg.val_cache)
    elif cfg.val_data is not None:
        samples, _ = read_annotations(cfg.val_data, names)
        frames, stride = cfg.num_frames, cfg.frame_stride
        if cfg.train_cache is not None and train.sampling:  # clips like the cached ones
            frames = train.sampling.get("num_frames", frames)
            stride = train.sampling.get("frame_stride")
        sampler = clip_sampler(frames, stride, cfg.num_clips)
        val = VideoClipDataset(samples, names, sampler, config.preprocessing(), seed=cfg.seed)
    return train, val, names


def training_sampling(train: Dataset) -> dict[str, Any] | None:
    """How the training set's clips or frames are sampled (``FrameSampler.to_dict()``)."""
    return train.sampling if hasattr(train, "sampling") else train.sampler.to_dict()


def check_sampling(found: dict[str, Any] | None, expected: dict[str, Any] | None, what: str,
                   cache: str, against: str = "training") -> None:
    """``ValueError`` when token cache ``cache`` was sampled otherwise than ``against``
    (either unknown: no check)."""
    from spool.video.samplers import sampler_settings

    if found and expected and sampler_settings(found) != sampler_settings(expected):
        raise ValueError(f"{what}: {cache} holds tokens sampled as {found}, but {against} "
                         f"{'samples' if against == 'training' else 'were sampled as'} "
                         f"{expected}; cache the videos with the same sampling")


def build_model(cfg: TrainConfig, config: SpoolConfig, class_names: list[str],
                **fields: Any) -> torch.nn.Module:
    """The run's model, seeded: a new one of ``cfg``'s class (``fields`` on its config), the
    token cache's frame encoder, then what fits of ``init`` (said in the log)."""
    torch.manual_seed(cfg.seed)  # every rank builds the same initial weights
    cls = model_class(cfg)
    if config.head_config and issubclass(cls, VideoClassifier):
        raise ValueError(f"model: head_config {sorted(config.head_config)} does not apply to "
                         f"{cls.__name__}, which takes no head settings (for one an --init "
                         "checkpoint carries: --model head_config=null)")
    # The cache's frame encoder, or the init's weights, replace the backbone's: not fetched.
    with backbone_weights_follow() if cfg.train_cache or cfg.init else nullcontext():
        model = cls(config.replace(class_names=list(class_names), **fields))
    if cfg.train_cache is not None:
        load_cache_backbone(model, cfg.train_cache)
    if cfg.init is not None:
        note = load_initial_weights(model, cfg)
        if not cfg.quiet and (not dist.is_initialized() or dist.get_rank() == 0):
            logger.info(f"[{cfg.name}] {note}" if cfg.name else note)
    if cfg.val_cache is not None:
        if not config.freeze_backbone:  # the tokens would go stale as the backbone trains
            raise ValueError("val_cache: holds the tokens of the backbone as it was, but this "
                             "run fine-tunes it (freeze_backbone=false); validate on the "
                             "videos instead (--val-data)")
        check_cache_backbone(model, cfg.val_cache, "val_cache")
        if cfg.train_cache is not None:
            _note_compute_dtypes(cfg.train_cache, cfg.val_cache)
    return model


def _note_compute_dtypes(train_cache: str, val_cache: str) -> None:
    """A warning when the two caches' backbones ran in other dtypes (``spool cache
    --compute-dtype``): the same frames give tokens apart by the lower one's precision."""
    made_in = [json.loads((Path(c) / CACHE_META).read_text()).get("compute_dtype", "float32")
               for c in (train_cache, val_cache)]
    if made_in[0] != made_in[1]:
        logger.warning(f"val_cache: {val_cache} was made in {made_in[1]}, train_cache "
                       f"{train_cache} in {made_in[0]} (spool cache --compute-dtype): their "
                       "tokens differ by the lower precision, and so may the scores")


def check_cache_source(meta: dict[str, Any], digest: str | None, config: SpoolConfig,
                       what: str, cache: str, owner: str, advice: str) -> None:
    """``ValueError`` unless the token cache ``cache`` (``meta``: its record) was made by the
    frame encoder of ``owner``: the same weights (``digest``; None: not known) and the same
    token settings, which the weights' digest misses (normalisation, resize, pooling)."""
    if digest is not None and digest != meta["backbone_digest"]:
        raise ValueError(f"{what}: {cache} was made by another backbone than {owner}; {advice}")
    differ = config.token_field_differences(meta.get("frame_encoder"))
    if differ:
        raise ValueError(f"{what}: {cache} was made with other {', '.join(differ)} than "
                         f"{owner}; {advice}")


def check_cache_backbone(model: torch.nn.Module, cache: str, what: str) -> None:
    """``ValueError`` unless token cache ``cache`` was made by ``model``'s frame encoder."""
    meta = json.loads((Path(cache) / CACHE_META).read_text())
    encoder = model.frame_encoder
    check_cache_source(meta, None if encoder is None else weights_digest(encoder.state_dict()),
                       model.config, what, cache, "the model's",
                       "cache it with the backbone and settings the run trains with")


def check_resumed_backbone(model: torch.nn.Module, weights: dict[str, torch.Tensor],
                           cfg: TrainConfig, checkpoint: Path) -> None:
    """``ValueError`` when a run on a token cache resumes a checkpoint whose backbone is not
    the cache's (the cache was made again since, with other weights): its weights would
    carry the old backbone on, and the steps to come would learn from the new one's tokens."""
    digest = backbone_digest(weights)
    if cfg.train_cache is None or digest is None or model.frame_encoder is None:
        return
    if digest != weights_digest(model.frame_encoder.state_dict()):
        raise ValueError(f"train_cache: {cfg.train_cache} was made by another backbone than "
                         f"the one of {checkpoint}, which this run would resume (made again "
                         "since?); train on a cache of that backbone, or start a new run "
                         "(another --out-dir)")


def _load(target: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
          keep_backbone: bool) -> None:
    """Load ``state`` strictly into ``target``; ``keep_backbone``: all but the backbone,
    which keeps its weights."""
    if keep_backbone:
        own = target.state_dict()
        state = {**{k: v for k, v in own.items() if _BACKBONE_KEY.search(k)},
                 **without_backbone(state)}
    check_and_load_state_dict(target, state, source)


def resolve_init(cfg: TrainConfig) -> Path:
    """``init``'s checkpoint directory (a folder, or a hub id's snapshot); the error names
    every folder it was looked for in (a config file's too) and the hub."""
    try:
        directory = resolve_checkpoint(cfg.init, also_looked_in=cfg.init_looked_in)
    except CheckpointNotFoundError as err:
        raise CheckpointNotFoundError(f"init (--init): {err}") from err
    if checkpoint_architecture(SpoolConfig.from_pretrained(directory), directory) == \
            "FrameEncoderModel":  # a cache's backbone/: it has no temporal layers to start from
        raise ValueError(f"init: {cfg.init} holds a frame encoder (a token cache's backbone), "
                         "not a model to start from; train on that cache's tokens with "
                         "--train-cache, or --init a Spool model (a run's model/)")
    return directory


def load_initial_weights(model: torch.nn.Module, cfg: TrainConfig) -> str:
    """Load ``init`` into a new ``model``: all of it when it is a model of the same class and
    classes, else its Spool (a Spool checkpoint, or the Spool inside another model) under the
    new head. With a token cache the model keeps the cache's frame encoder, and an init made
    with another backbone is refused. Returns what was loaded, for the log."""
    cached = cfg.train_cache is not None
    directory = resolve_init(cfg)
    init = load_pretrained(directory, with_backbone=not cached, **cfg.model)
    if cached:
        digest = checkpoint_backbone_digest(directory)
        if digest is not None and digest != weights_digest(model.frame_encoder.state_dict()):
            raise ValueError(f"init: {cfg.init} was trained on another backbone than the one "
                             f"that made {cfg.train_cache}; cache the videos with its backbone "
                             f"(spool cache --init {cfg.init}) or train on videos")
        differ = differing_token_fields(model.config.frame_encoder_fields(),
                                        init.config.frame_encoder_fields())
        if differ:
            raise ValueError(f"init: {cfg.init} was trained on tokens made with other "
                             f"{', '.join(differ)} than {cfg.train_cache}")
    kind, names = type(model).__name__, model.class_names
    where = " (the backbone is the cache's)" if cached else ""
    if type(init) is type(model) and init.class_names == names:
        _load(model, init.state_dict(), f"init {cfg.init}", cached)
        return f"init: continuing the {kind} of {cfg.init}, all its weights{where}"
    source = init if isinstance(init, Spool) else getattr(init, "spool", None)
    target = getattr(model, "spool", None)
    if not isinstance(source, Spool) or target is None:
        held = type(init).__name__
        if hasattr(init, "class_names"):
            held += f" for classes {init.class_names}"
        raise ValueError(f"init: {cfg.init} holds a {held}; a new {kind} for {names} can "
                         f"start only from a Spool, a model with a Spool inside, or a {kind} "
                         "for the same classes")
    _load(target, source.state_dict(), f"init {cfg.init}", cached)
    parts = "its temporal layers" if cached else "its backbone and temporal layers"
    return f"init: the Spool of {cfg.init} ({parts}){where}; a new head for {len(names)} classes"


# A fine-tuned backbone's learned tokens and position embeddings, by the end of their names
# (transformers' DINOv2 and ViT embeddings; SigLIP's and CLIP's positions are an Embedding's
# table): not decayed, as timm, MAE and VideoMAE fine-tune ViTs.
_EMBEDDINGS = (".cls_token", ".mask_token", ".register_tokens", ".position_embeddings",
               ".position_embedding.weight")


_EMBEDDINGS_BEFORE = _EMBEDDINGS[:-1]  # checkpoints of earlier versions: SigLIP's decayed


def parameter_groups(model: VideoClassifier, weight_decay: float,
                     embeddings: tuple[str, ...] = _EMBEDDINGS) -> list[dict]:
    """Weight decay on matrices only: not on biases, norms, a fine-tuned backbone's learned
    tokens and position embeddings (``embeddings``: their names' ends), or what the model
    declares in ``no_weight_decay()`` (the learned context frames)."""
    skip = model.no_weight_decay()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        embedding = ".backbone." in f".{name}" and f".{name}".endswith(embeddings)
        (no_decay if p.ndim < 2 or name in skip or embedding else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: VideoClassifier, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` at ``cfg.lr``."""
    return torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr)


def regroup_as_saved(optimizer: torch.optim.Optimizer, model: VideoClassifier,
                     cfg: TrainConfig, saved: dict) -> None:
    """Resuming: a run whose checkpoint an earlier version made with other weight-decay groups
    (it decayed a SigLIP's or CLIP's position table) keeps them to its end, said; a
    ``ValueError`` when no grouping Spool made matches ``saved`` (an optimizer state)."""
    sizes = [len(group["params"]) for group in saved["param_groups"]]
    if sizes == [len(group["params"]) for group in optimizer.param_groups]:
        return
    before = parameter_groups(model, cfg.weight_decay, _EMBEDDINGS_BEFORE)
    if sizes != [len(group["params"]) for group in before]:
        raise ValueError(f"resume: the checkpoint's optimizer holds groups of {sizes} "
                         "parameters, which no grouping of this model's gives; start a new "
                         "run (--init the checkpoint's model)")
    for group, old in zip(optimizer.param_groups, before, strict=True):
        group["params"] = old["params"]
    logger.info("resume: the run goes on with the weight-decay groups it began with, made by "
                "an earlier version: its backbone's position table is decayed, which a new run "
                "would leave undecayed")


def last_step_lr(scheduler: torch.optim.lr_scheduler.LambdaLR) -> float:
    """The first group's rate at the last step taken, by the schedule's own count of steps (a
    resume with another batch size sets that apart from the optimizer steps taken)."""
    return scheduler.base_lrs[0] * scheduler.lr_lambdas[0](scheduler.last_epoch - 1)


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
