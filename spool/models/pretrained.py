"""Saving and loading Spool models: ``config.json`` + ``model.safetensors``, local or on the hub.

Every artifact (Spool, the classifiers, the frame encoder of a token cache) names its class in
``config.json``'s ``architectures``, as transformers does, and :func:`load_pretrained` rebuilds
whichever it is. Loading is strict: every tensor must be present with its shape. Hub ids go
through ``huggingface_hub`` (``PyTorchModelHubMixin``), which also gives ``push_to_hub`` with a
model card.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from transformers.initialization import no_init_weights

from spool.config import CONFIG_NAME, SpoolConfig, check_known_fields
from spool.errors import CheckpointMismatchError, CheckpointNotFoundError, SpoolLoadError
from spool.io_utils import (
    atomic_save_safetensors,
    looks_like_path,
    remove_stale_temporaries_in,
)
from spool.layers.backbone import backbone_weights_follow, names_another_backbone
from spool.models.module_utils import ModuleUtilsMixin
from spool.models.weights import (
    WEIGHTS_NAME,
    backbone_digest,
    check_and_load_state_dict,
    read_weights,
    without_backbone,
)
from spool.validation import check_tokens, check_video

logger = logging.getLogger(__name__)

LEGACY_CLASSIFIER_NAME = "classifier.json"  # written before config.json named architectures
_NO_INIT_LOCK = threading.Lock()  # one load at a time inside no_init_weights
MODEL_CLASSES: dict[str, type[SpoolPreTrainedModel]] = {}


def checkpoint_backbone_digest(directory: str | os.PathLike) -> str | None:
    """:func:`weights_digest` of the frame encoder inside a saved checkpoint (keys below its
    ``backbone.``), comparable with the live module's ``frame_encoder.state_dict()``;
    ``directory``: a checkpoint directory or hub id."""
    return backbone_digest(read_weights(resolve_checkpoint(directory) / WEIGHTS_NAME))


def resolve_checkpoint(name_or_path: str | os.PathLike, *,
                       also_looked_in: Sequence[str] = (), **hub_kwargs: Any) -> Path:
    """A local checkpoint directory, or the snapshot of hub id ``name_or_path``.
    ``also_looked_in``: other folders a relative name was looked for in as a path (a config
    file's, described), named in the error when it is neither a folder nor on the hub."""
    name = os.fspath(name_or_path)
    if os.path.isdir(name):
        return Path(name)
    if looks_like_path(name) or os.path.exists(name):
        raise CheckpointNotFoundError(
            f"{name!r}: not a directory. Spool checkpoints are directories with {CONFIG_NAME} "
            f"and {WEIGHTS_NAME}, written by save_pretrained")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", WEIGHTS_NAME],
                                      **hub_kwargs))
    except Exception as err:  # offline, unknown id, no access: one message for all
        raise CheckpointNotFoundError(_neither_folder_nor_hub_id(
            name, err, also_looked_in, hub_kwargs.get("local_files_only", False))) from err


def _neither_folder_nor_hub_id(name: str, err: Exception, also_looked_in: Sequence[str],
                               local_only: bool) -> str:
    """Why ``name`` loads neither way. A relative path typo (``runs/a`` for ``runs/a1``) reads
    as a hub id, so the folders looked in are named beside the hub's answer."""
    from huggingface_hub import constants

    folders = [*also_looked_in, f"{os.path.abspath(name)} (relative to the current directory)"]
    hub = ("hub access is off: HF_HUB_OFFLINE" if getattr(constants, "HF_HUB_OFFLINE", False)
           else "hub access is off: local_files_only" if local_only else "offline or not found")
    cause = " ".join(str(err).split())  # the hub's messages span lines; the CLI prints one
    return (f"{name!r}: no folder {' or '.join(folders)}, and not a hub id the hub could "
            f"provide ({hub}). For a folder, check the path; for a hub id, download it where "
            f"there is network (`hf download {name} --local-dir DIR`) and pass DIR. Cause: "
            f"{type(err).__name__}: {cause}")


def checkpoint_architecture(config: SpoolConfig, directory: Path) -> str | None:
    """The class a checkpoint holds: ``architectures[0]``, or the legacy marker file's."""
    if config.architectures:
        return config.architectures[0]
    legacy = directory / LEGACY_CLASSIFIER_NAME
    if legacy.is_file():
        try:
            data = json.loads(legacy.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as err:
            raise SpoolLoadError(f"{legacy}: not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise SpoolLoadError(f"{legacy}: expected a JSON object with 'architecture'")
        return data.get("architecture")
    return None


def _legacy_sampling(directory: Path) -> dict[str, Any] | None:
    """The clip sampling a legacy checkpoint's ``classifier.json`` recorded (``"clip":
    {"num_frames", "frame_stride"}``), as ``config.sampling`` records it now; else None."""
    from spool.video.samplers import clip_sampler

    legacy = directory / LEGACY_CLASSIFIER_NAME
    try:
        clip = json.loads(legacy.read_text(encoding="utf-8")).get("clip")
        return clip_sampler(int(clip["num_frames"]), clip.get("frame_stride")).to_dict()
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # none recorded (or unreadable: checkpoint_architecture says so)


class SpoolPreTrainedModel(ModuleUtilsMixin, nn.Module, PyTorchModelHubMixin,
                           library_name="spool", tags=["video", "video-classification", "spool"]):
    """Base of every saveable Spool model: a :class:`SpoolConfig` and strict safetensors.

    Subclasses register themselves by class name, which ``save_pretrained`` writes into
    ``config.json``'s ``architectures`` and :func:`load_pretrained` reads back.
    """

    config: SpoolConfig
    # Constructor keywords that are not config fields (``from_pretrained`` passes them on).
    init_keywords: ClassVar[tuple[str, ...]] = ("with_backbone",)
    # False for the baselines: no temporal layers (nor heads to split hidden_size).
    has_temporal_stack: ClassVar[bool] = True
    # A task model around a Spool (``self.spool``): it loads a plain Spool's checkpoint under
    # a new head, as transformers' task models load their base model's.
    wraps_spool: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        MODEL_CLASSES[cls.__name__] = cls

    @property
    def config(self) -> SpoolConfig:
        return self._config

    @config.setter
    def config(self, config: SpoolConfig) -> None:
        self._config = config
        if "_built_from" not in self.__dict__:  # the layers read it once, when built
            self._built_from = _as_saved(config.to_dict())

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "config" in state:  # pickled before ``config`` was a property
            state["_config"] = state.pop("config")
            state["_built_from"] = _as_saved(state["_config"].to_dict())
        super().__setstate__(state)

    def check_config_as_built(self, fields: Sequence[str] | None = None) -> None:
        """Raise if a field of ``config`` (of ``fields``, default all) that changes what the
        network computes was set after the model was built: its layers still compute the old
        value, so a config saved from it would describe another network than its weights.
        Renaming the classes (as many) is a rename, not another network."""
        built = self._built_from
        now = {k: v for k, v in self.config.to_dict().items() if fields is None or k in fields}
        renamed = len(now.get("class_names") or ()) == len(built["class_names"] or ())
        changed = _changed_fields(built, now, ("initializer_range",
                                               *(("class_names",) if renamed else ())))
        if changed:
            raise ValueError(f"config: {', '.join(changed)} set after the model was built, "
                             "which its layers do not follow; build a model from the new "
                             f"config ({type(self).__name__}(config)) and load these weights "
                             "into it, or set the field back")

    @property
    def frame_encoder(self) -> nn.Module | None:
        """The backbone module (``FrameEncoder``), or None for a temporal-only model."""
        return getattr(self, "backbone", None)

    def config_for_saving(self, check: bool = True) -> SpoolConfig:
        """The config written with the weights: it names the class and, since the weights
        hold the backbone, its architecture (so loading never needs the hub). A named
        backbone stays named: a model built anew from this config takes its pretrained
        weights (``use_pretrained_backbone``), not random ones. ``check``: refuse a config
        changed since the model was built (:meth:`check_config_as_built`)."""
        if check:
            self.check_config_as_built()
        config = self.config.replace(architectures=[type(self).__name__])
        encoder = self.frame_encoder
        if encoder is not None and config.backbone_config is None:
            config = config.replace(backbone_config=encoder.model.config.to_dict(),
                                    use_pretrained_backbone=True)
        return config

    def no_weight_decay(self) -> set[str]:
        """Names of parameters the optimizer must not decay (biases and norms aside)."""
        return set()

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        """``video: [B, T, H, W, 3]`` -> backbone tokens ``[B, T, L, D]``."""
        encoder = self.frame_encoder
        if encoder is None:
            raise ValueError("video: this model was built with with_backbone=False; pass "
                             "cached backbone tokens instead (tokens=...)")
        check_video(video)
        return encoder(video)

    def tokens_from(self, video: torch.Tensor | None, tokens: torch.Tensor | None
                    ) -> torch.Tensor:
        """The backbone tokens ``[B, T, L, D]`` of exactly one of ``video [B, T, H, W, 3]`` and
        cached ``tokens`` (checked, and cast to the parameters' dtype: a float16 cache)."""
        if (video is None) == (tokens is None):
            raise ValueError("video/tokens: pass exactly one of video [B, T, H, W, 3] or "
                             "tokens [B, T, L, D]")
        if tokens is None:
            return self.encode_frames(video)
        check_tokens(tokens, self.config.num_spatial_tokens, self.config.hidden_size)
        encoder = self.frame_encoder
        own = set() if encoder is None else {id(p) for p in encoder.parameters()}
        dtype = next((p.dtype for p in self.parameters()
                      if id(p) not in own and p.is_floating_point()), torch.float32)
        return tokens.to(dtype)  # the head's dtype, whatever the cache's (float16)

    def save_pretrained(self, save_directory: str | os.PathLike, *,
                        model_card_kwargs: dict[str, Any] | None = None, **_: Any) -> None:
        """Write ``config.json`` and ``model.safetensors`` (each atomically); a model card
        (``README.md``) only on the way to the hub."""
        config = self.config_for_saving()  # first: it refuses a config changed since built
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries_in(directory)  # a killed save's
        atomic_save_safetensors(self.state_dict(), directory / WEIGHTS_NAME,
                                metadata={"format": "pt"})
        config.save_pretrained(directory)
        if model_card_kwargs is not None:
            self.generate_model_card(**model_card_kwargs).save(directory / "README.md")

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload ``save_pretrained``'s files and a model card to the hub."""
        kwargs["model_card_kwargs"] = kwargs.get("model_card_kwargs") or {}
        return super().push_to_hub(repo_id, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *,
                        revision: str | None = None, cache_dir: str | None = None,
                        local_files_only: bool = False, token: str | bool | None = None,
                        force_download: bool = False, **kwargs: Any):
        """Load a local directory or hub id written by ``save_pretrained``, in eval mode (as
        transformers' models load; ``model.train()`` to fine-tune).

        ``kwargs`` override config fields (e.g. ``attn_implementation``) or are constructor
        keywords (``with_backbone=False``: the temporal part only, for cached tokens). A
        classifier class on a plain Spool's checkpoint loads it under a new head, given
        ``class_names``. The weights are not drawn before they are loaded: while the model is
        built, ``torch.nn.init`` does nothing, in every thread (as in transformers).
        """
        directory = resolve_checkpoint(
            pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir,
            local_files_only=local_files_only, token=token, force_download=force_download)
        config = SpoolConfig.from_pretrained(directory)
        held = checkpoint_architecture(config, directory)
        if config.sampling is None:  # how it was trained, where a legacy checkpoint says
            config = config.replace(sampling=_legacy_sampling(directory))
        new_head = (held or "Spool") == "Spool" and cls.wraps_spool  # None: a legacy Spool
        if held is not None and held != cls.__name__ and not new_head:
            raise CheckpointMismatchError(
                f"{directory}: holds a {held}, not a {cls.__name__}; load it with "
                f"spool.models.load_pretrained (or {held}.from_pretrained)")
        init = {k: kwargs.pop(k) for k in list(kwargs) if k in cls.init_keywords}
        check_known_fields(kwargs, f"{directory}: holds a {held or cls.__name__}",
                           also=tuple(cls.init_keywords))
        with_backbone = init.get("with_backbone", True)
        if with_backbone and config.backbone_config is None:
            raise SpoolLoadError(
                f"{directory / CONFIG_NAME}: no backbone_config, so building the backbone would "
                f"fetch {config.backbone_name!r}; pass with_backbone=False for the temporal "
                "part alone (a model saved without a backbone, run on cached tokens), or save "
                "the model with its backbone through save_pretrained, which records the config")
        swapped = [k for k in ("backbone_name", "backbone_config")
                   if with_backbone and k in kwargs
                   and names_another_backbone(k, kwargs[k], config)]
        if swapped:  # its weights are the saved backbone's: the new value would be a label
            raise ValueError(f"{swapped[0]}: {directory} holds the weights of its backbone, "
                             f"{config.backbone_name!r}, not {kwargs[swapped[0]]!r}; another "
                             "backbone needs a new model (and its tokens a new cache)")
        if new_head:
            return cls._with_new_head(directory, config, kwargs, init)
        renamed = kwargs.get("class_names")
        if config.class_names and renamed is not None and list(renamed) != config.class_names:
            logger.warning("%s: class_names %s rename the classes it was trained on, %s, in "
                           "order (each output still predicts the class it was trained on)",
                           directory, list(renamed), config.class_names)
        # The checkpoint holds every weight (loaded strictly, next): none is drawn first (the
        # stack's truncated normals were 85% of a load), nor the backbone's fetched.
        # no_init_weights swaps torch.nn.init's functions process-wide and puts back what it
        # found: two loads at once in threads could leave them switched off for good.
        with _NO_INIT_LOCK, backbone_weights_follow(), no_init_weights():
            model = cls(config.replace(**kwargs), **init)
        weights = directory / WEIGHTS_NAME
        state = read_weights(weights)
        try:
            check_and_load_state_dict(model, state, str(weights), ignore_backbone=not with_backbone)
        except CheckpointMismatchError as err:
            changed = _fields_behind(cls, config, init, kwargs, state)
            if not changed:
                raise
            raise CheckpointMismatchError(
                f"{err}; the fields given ({', '.join(changed)}) build another network than "
                "the one saved there") from err
        # class_names have their note above; a backbone named another way is the same one
        changed = _changed_fields(config.to_dict(), kwargs, ("class_names", "backbone_name",
                                                   "backbone_config", "initializer_range"))
        if changed:
            logger.warning("%s: loaded with %s: another network than the one saved, so its "
                           "outputs are not the saved model's", directory, ", ".join(changed))
        return model.eval()  # dropout off: two calls on the same input agree

    @classmethod
    def _with_new_head(cls, directory: Path, config: SpoolConfig, kwargs: dict[str, Any],
                       init: dict[str, Any]):
        """A new ``cls`` whose Spool is the one saved in ``directory`` (its head untrained)."""
        if not kwargs.get("class_names"):
            raise ValueError(f"{directory}: holds a Spool without a head; a {cls.__name__} "
                             "built on it needs class_names=[...] for its new head")
        # The head's settings are this model's, not those of a head the Spool was saved from.
        fresh = {"architectures": None, "background_classes": None, "head_config": None}
        with backbone_weights_follow():  # the checkpoint holds the backbone's weights
            model = cls(config.replace(**{**fresh, **kwargs}), **init)
        weights = directory / WEIGHTS_NAME
        check_and_load_state_dict(model.spool, read_weights(weights), str(weights),
                                  ignore_backbone=not init.get("with_backbone", True))
        new = sorted({k.split(".")[0] for k in model.state_dict() if not k.startswith("spool.")})
        logger.warning("%s: its Spool is %s's; %s newly initialised: train before use",
                       cls.__name__, directory, ", ".join(new))
        return model.eval()


def _as_saved(value: Any) -> Any:
    """``value`` as ``config.json`` holds it ((1, 2) as [1, 2])."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return value


def _changed_fields(old: dict[str, Any], new: dict[str, Any], skip: Sequence[str] = ()
                    ) -> list[str]:
    """The config fields of ``new`` (``old -> new``) whose value is not ``old``'s, as
    ``config.json`` holds them, and changes what the network computes (not the
    ``RUNTIME_FIELDS``, nor ``skip``)."""
    return [f"{k} {old[k]!r} -> {v!r}" for k, v in new.items()
            if k not in (*SpoolConfig.RUNTIME_FIELDS, *skip)
            and _as_saved(old[k]) != _as_saved(v)]


def _fields_behind(cls: type, config: SpoolConfig, init: dict[str, Any],
                   kwargs: dict[str, Any], state: dict[str, torch.Tensor]) -> list[str]:
    """The config fields in ``kwargs`` (``old -> new``) behind a checkpoint that does not
    load: none unless the saved ``config`` alone builds a network of ``state``'s tensors
    (built on the meta device: no memory, no weights)."""
    changed = _changed_fields(config.to_dict(), kwargs)
    if not changed:
        return []
    try:
        with torch.device("meta"), backbone_weights_follow():
            saved = cls(config, **init).state_dict()
    except Exception:  # only a better message is at stake
        return []
    if not init.get("with_backbone", True):
        state = without_backbone(state)
    same = saved.keys() == state.keys() and all(
        saved[k].shape == v.shape for k, v in state.items())
    return changed if same else []


def lookup_architecture(aliases: dict[str, type], name: str, task: str) -> type:
    """The class for ``name``: a short alias (``spool``) or a class name of ``aliases``."""
    known = {cls.__name__: cls for cls in aliases.values()}
    cls = aliases.get(name) or known.get(name)
    if cls is None:
        raise ValueError(f"architecture: expected one of {sorted(aliases)} or {sorted(known)} "
                         f"for {task}, got {name!r}")
    return cls


HUB_KWARGS = ("revision", "cache_dir", "local_files_only", "token", "force_download")


def peek_architecture(pretrained_model_name_or_path: str | os.PathLike,
                      **hub_kwargs: Any) -> str:
    """The class name a checkpoint holds, from its ``config.json`` alone (``hub_kwargs``:
    ``HUB_KWARGS``, for a hub id)."""
    directory = resolve_checkpoint(pretrained_model_name_or_path, **hub_kwargs)
    return checkpoint_architecture(SpoolConfig.from_pretrained(directory), directory) or "Spool"


def load_pretrained(pretrained_model_name_or_path: str | os.PathLike,
                    **kwargs: Any) -> SpoolPreTrainedModel:
    """Load any Spool artifact: the class named by its ``config.json`` (``Spool`` when a
    legacy checkpoint names none)."""
    import spool.models  # noqa: F401  (registers every model class)

    directory = resolve_checkpoint(pretrained_model_name_or_path, **{
        k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs})
    held = checkpoint_architecture(SpoolConfig.from_pretrained(directory), directory) or "Spool"
    if held not in MODEL_CLASSES:
        raise SpoolLoadError(f"{directory / CONFIG_NAME}: unknown architecture {held!r}; known: "
                             f"{sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[held].from_pretrained(directory, **kwargs)
