"""`SpoolConfig`: every hyper-parameter of a Spool model, JSON-serialisable."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from spool.errors import CheckpointNotFoundError, SpoolLoadError

CONFIG_NAME = "config.json"
RESIZE_MODES = ("center_crop", "squash", "pad")
DEFAULT_CROP_PCT = 224 / 256  # DINOv2's image processor: shortest edge 256, centre crop 224
_FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32


def _check(condition: bool, argument: str, expected: str, given: Any) -> None:
    if not condition:
        raise ValueError(f"{argument}: expected {expected}, got {given!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """An int or float, not a bool (``True`` is an int to Python, never a setting)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class SpoolConfig:
    """Configuration of a :class:`~spool.models.spool.Spool` model.

    Args:
        num_hidden_layers: number of temporal transformer blocks.
        num_attention_heads: total heads per block (lookback + lookahead).
        num_lookahead_heads: heads whose local window looks forward in time.
        num_lookback_heads: heads whose local window looks backward in time.
        image_size: frames are brought to ``image_size x image_size``.
        local_frame_range: ``w`` of the attention mask (``spool/layers/masks.py``), the
            frames each frame sees on its side.
        backbone_name: hub id or local directory of an HF vision model.
        backbone_config: an HF config as a dict (with ``model_type``); when given, the
            backbone is built from it with random weights instead of being downloaded.
        use_pretrained_backbone: True: the backbone takes ``backbone_name``'s pretrained
            weights even beside a ``backbone_config``, which is then the record of its
            architecture that ``save_pretrained`` writes (``from_pretrained`` builds from it
            offline, the weights being the checkpoint's). None (default): pretrained unless
            a ``backbone_config`` is given; False: random weights from ``backbone_config``.
        resize_mode, crop_pct: the preprocessing policy of every path
            (:class:`~spool.video.transforms.FramePreprocessing`): ``center_crop`` of
            ``crop_pct`` of the shorter side (DINOv2's convention), ``squash`` or ``pad``.
            ``crop_pct=None`` (and the default ``resize_mode``): the backbone's own, from its
            ``preprocessor_config.json`` (its centre crop, or a squash where it resizes to
            a square without one, as ViT's does), else 224/256.
        token_pooling: ``k``: the patch grid is average-pooled ``k x k`` for the temporal
            stack (class and register tokens kept), so ``L`` is the pooled count
            (224 px, /14: ``k=2`` -> 1 + 64, ``k=4`` -> 1 + 16); 1 (default): every token.
        token_merging: ``k``: the patch tokens the model is given are merged ``k x k`` before
            the temporal stack, each cell's tokens concatenated and projected to ``D`` by a
            learned Linear initialised to their mean. Unlike ``token_pooling`` it is part of
            the model, not of the frame encoder: the cache keeps every token, and the stack
            and its features have the merged count. 1 (default): off.
        freeze_backbone: no gradients into the backbone, which stays in eval mode.
        backbone_chunk_size: frames passed through the backbone at once.
        attn_implementation: ``auto`` or a registered backend (``reference``, ``blocked``,
            ``dense``, ``flex``; see :mod:`spool.layers.attention_backends`).
        attention_chunk_frames: query frames per block in ``blocked`` attention
            (``None``: chosen from ``local_frame_range``).
        gradient_checkpointing: recompute each block in the backward pass to save memory.
        class_names: labels of the classification heads.
        background_classes: frame classifiers: the classes that are not segments in edit and
            F1 (set by training, the default of evaluation).
        classifier_dropout: dropout before a classification head.
        sampling: the frame sampler of training clips (``FrameSampler.to_dict()``), the
            default of evaluation and extraction.
        head_config: settings of a task head or baseline beyond the fields here (e.g.
            MS-TCN's ``num_stages``); None: its defaults.
        architectures: what a saved checkpoint holds (set by ``save_pretrained``).
        hidden_size, num_spatial_tokens: ``D`` and ``L``, filled in from the backbone.
        num_prefix_tokens: how many of the ``L`` tokens come before the square patch grid
            (class and register tokens), filled in from the backbone where it shows its patch
            grid, and recorded with a token cache, so ``token_merging`` keeps them apart on
            cached tokens. None (configs from before it was recorded): inferred from ``L`` as
            the largest square grid that fits, which misreads a small grid after registers
            (1 + 4 + 2x2 = 9 tokens reads as 3x3).
        image_mean, image_std: the backbone's normalisation, filled in from a local
            backbone's ``preprocessor_config.json`` unless set to other values.
    """

    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_lookahead_heads: int = 6
    num_lookback_heads: int = 6
    image_size: int = 224
    local_frame_range: int = 16
    backbone_name: str = "facebook/dinov2-base"
    backbone_config: dict | None = None
    use_pretrained_backbone: bool | None = None
    resize_mode: str = "center_crop"
    crop_pct: float | None = None
    token_pooling: int = 1
    token_merging: int = 1
    freeze_backbone: bool = True
    backbone_chunk_size: int = 32
    attn_implementation: str = "auto"
    attention_chunk_frames: int | None = None
    mlp_ratio: float = 4.0
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    layer_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    initializer_range: float = 0.02
    gradient_checkpointing: bool = False
    class_names: list[str] | None = None
    background_classes: list[str] | None = None
    classifier_dropout: float = 0.0
    sampling: dict | None = None
    head_config: dict | None = None
    architectures: list[str] | None = None
    hidden_size: int | None = None
    num_spatial_tokens: int | None = None
    num_prefix_tokens: int | None = None
    image_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    image_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])

    # Fields that describe the frame encoder (backbone and preprocessing): a token cache fixes
    # them, and two models with equal values see the same tokens.
    FRAME_ENCODER_FIELDS = ("backbone_name", "backbone_config", "image_size", "resize_mode",
                            "crop_pct", "image_mean", "image_std", "token_pooling",
                            "hidden_size", "num_spatial_tokens", "num_prefix_tokens")
    LAYOUT_FIELDS = ("num_prefix_tokens",)  # filled from the backbone; the tokens' layout

    # Fields that change how a model runs (memory, speed, training) but not what it computes
    # in eval mode: an extracted output does not depend on them (:meth:`outputs_hash`).
    RUNTIME_FIELDS = ("freeze_backbone", "backbone_chunk_size", "attn_implementation",
                      "attention_chunk_frames", "gradient_checkpointing", "hidden_dropout",
                      "attention_dropout", "classifier_dropout", "sampling", "architectures",
                      "background_classes", "use_pretrained_backbone")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent argument."""
        for name in ("num_hidden_layers", "num_attention_heads", "num_lookahead_heads",
                     "num_lookback_heads", "local_frame_range"):
            value = getattr(self, name)
            _check(_is_int(value) and value >= 0, name, "an integer >= 0", value)
        _check(self.num_attention_heads > 0, "num_attention_heads", "at least 1 head",
               self.num_attention_heads)
        heads = self.num_lookback_heads + self.num_lookahead_heads
        _check(heads == self.num_attention_heads,
               "num_lookback_heads + num_lookahead_heads",
               f"== num_attention_heads ({self.num_attention_heads})",
               f"{self.num_lookback_heads} + {self.num_lookahead_heads} = {heads}")
        for name in ("image_size", "backbone_chunk_size", "token_pooling",
                     "token_merging"):
            _check(_is_int(getattr(self, name)) and getattr(self, name) > 0, name,
                   "a positive integer", getattr(self, name))
        _check(isinstance(self.backbone_name, str) and self.backbone_name != "",
               "backbone_name", "a hub id or a directory (a non-empty string)",
               self.backbone_name)
        _check(self.backbone_config is None or (
            isinstance(self.backbone_config, dict)
            and isinstance(self.backbone_config.get("model_type"), str)),
            "backbone_config", "None or a dict with a 'model_type' key (e.g. 'dinov2')",
            self.backbone_config)
        pretrained = self.use_pretrained_backbone
        _check((pretrained is None or isinstance(pretrained, bool))
               and (pretrained is not False or self.backbone_config is not None),
            "use_pretrained_backbone", "None, true or false (false: random weights from a "
            "backbone_config)", self.use_pretrained_backbone)
        _check(isinstance(self.resize_mode, str) and self.resize_mode in RESIZE_MODES,
               "resize_mode", f"one of {RESIZE_MODES}", self.resize_mode)
        _check(self.crop_pct is None or (_is_number(self.crop_pct) and 0 < self.crop_pct <= 1),
               "crop_pct", "None or a fraction in (0, 1]", self.crop_pct)
        for name in ("freeze_backbone", "gradient_checkpointing"):
            _check(isinstance(getattr(self, name), bool), name, "true or false",
                   getattr(self, name))
        _check(isinstance(self.attn_implementation, str), "attn_implementation",
               "a backend name (a string)", self.attn_implementation)
        _check(self.attention_chunk_frames is None or (
            _is_int(self.attention_chunk_frames) and self.attention_chunk_frames > 0),
            "attention_chunk_frames", "None or a positive integer", self.attention_chunk_frames)
        for name in ("hidden_dropout", "attention_dropout", "classifier_dropout"):
            value = getattr(self, name)
            _check(_is_number(value) and 0.0 <= value < 1.0, name, "a probability in [0, 1)",
                   value)
        for name in ("mlp_ratio", "layer_norm_eps", "rope_theta", "initializer_range"):
            value = getattr(self, name)
            _check(_is_number(value) and math.isfinite(value) and value > 0, name,
                   "a finite number > 0", value)
        # Values that pass the above but give NaN/Inf outputs: an eps that is 0 in float32
        # (0/0 on a constant frame), a RoPE base whose inverse overflows, weights whose
        # products overflow.
        _check(self.layer_norm_eps >= _FLOAT32_TINY, "layer_norm_eps",
               f"a number >= {_FLOAT32_TINY:.3g} (float32 rounds smaller ones to 0)",
               self.layer_norm_eps)
        _check(self.rope_theta >= 1, "rope_theta", "a RoPE base >= 1 (10000 is usual)",
               self.rope_theta)
        _check(self.initializer_range <= 1, "initializer_range",
               "a standard deviation in (0, 1] (0.02 is usual)", self.initializer_range)
        _check(self.mlp_ratio <= 64, "mlp_ratio", "a ratio in (0, 64] (4 is usual)",
               self.mlp_ratio)
        self._validate_lists()
        for name in ("hidden_size", "num_spatial_tokens"):
            value = getattr(self, name)
            _check(value is None or (_is_int(value) and value > 0), name,
                   "None (read from the backbone) or a positive integer", value)
        _check(self.num_prefix_tokens is None or (
            _is_int(self.num_prefix_tokens) and self.num_prefix_tokens >= 0),
            "num_prefix_tokens", "None (inferred from the token count) or an integer >= 0",
            self.num_prefix_tokens)
        if self.num_prefix_tokens is not None and self.num_spatial_tokens is not None:
            from spool.layers.pooling import split_patch_grid

            split_patch_grid(self.num_spatial_tokens, self.num_prefix_tokens)  # or ValueError
        if self.hidden_size is not None and self.num_hidden_layers > 0:
            # Heads split the hidden size only where there are temporal layers.
            _check(self.hidden_size % self.num_attention_heads == 0, "hidden_size",
                   f"divisible by num_attention_heads ({self.num_attention_heads})",
                   self.hidden_size)
            head_dim = self.hidden_size // self.num_attention_heads
            _check(head_dim % 2 == 0, "hidden_size / num_attention_heads",
                   "an even head dimension (rotary embeddings rotate pairs)", head_dim)
            _check(int(self.hidden_size * self.mlp_ratio) > 0, "mlp_ratio",
                   f"a ratio giving the MLP at least one unit (hidden_size {self.hidden_size})",
                   self.mlp_ratio)
        # The attention registry's rules (a backend that cannot do what is asked).
        from spool.layers.attention_backends import select_backend

        select_backend(self.attn_implementation, dropout=self.attention_dropout)

    def _validate_lists(self) -> None:
        """The list- and dict-valued fields (they come from JSON files as often as code)."""
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            _check(isinstance(value, (list, tuple)) and len(value) == 3
                   and all(_is_number(v) and math.isfinite(v) for v in value), name,
                   "3 finite numbers (RGB)", value)
        # Pixels are in [0, 1]: a mean outside it, or a std so small that the normalised
        # pixels overflow in the backbone, is a mistake (e.g. 0..255 values).
        _check(all(0 <= m <= 1 for m in self.image_mean), "image_mean",
               "3 values in [0, 1] (pixels are scaled to [0, 1])", self.image_mean)
        _check(all(1e-3 <= s <= 1 for s in self.image_std), "image_std",
               "3 values in [0.001, 1] (pixels are scaled to [0, 1])", self.image_std)
        for name in ("class_names", "background_classes", "architectures"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, (list, tuple))
                                     and all(isinstance(v, str) for v in value)),
                   name, "None or a list of strings", value)
        if self.class_names is not None:
            _check(len(set(self.class_names)) == len(self.class_names), "class_names",
                   "distinct names", self.class_names)
        if self.background_classes:
            _check(set(self.background_classes) <= set(self.class_names or ()),
                   "background_classes", f"names among class_names {self.class_names}",
                   self.background_classes)
        _check(self.sampling is None or isinstance(self.sampling, dict), "sampling",
               "None or a dict of sampler settings", self.sampling)
        _check(self.head_config is None or isinstance(self.head_config, dict), "head_config",
               "None or a dict of head settings", self.head_config)

    @property
    def head_dim(self) -> int:
        if self.hidden_size is None:
            raise ValueError("hidden_size: not known yet (it is read from the backbone)")
        return self.hidden_size // self.num_attention_heads

    def preprocessing(self):
        """The :class:`~spool.video.transforms.FramePreprocessing` of this config."""
        from spool.video.transforms import FramePreprocessing

        crop_pct = DEFAULT_CROP_PCT if self.crop_pct is None else self.crop_pct
        return FramePreprocessing(self.image_size, self.resize_mode, crop_pct)

    def frame_encoder_fields(self, layout: bool = True) -> dict[str, Any]:
        """The fields that describe the frame encoder (see ``FRAME_ENCODER_FIELDS``).

        ``layout=False`` leaves out ``LAYOUT_FIELDS``, which say how the tokens are laid out
        but not what they are: token caches key on the rest, so filling in such a field (as
        this version does for caches made before it) redoes no cache.
        """
        return {k: getattr(self, k) for k in self.FRAME_ENCODER_FIELDS
                if layout or k not in self.LAYOUT_FIELDS}

    # Frame-encoder fields that change the tokens without changing the weights' digest (the
    # normalisation is a non-persistent buffer): what a token cache must agree on with a model.
    TOKEN_FIELDS = ("image_size", "resize_mode", "crop_pct", "image_mean", "image_std",
                    "token_pooling")

    def token_field_differences(self, recorded: dict[str, Any] | None) -> list[str]:
        """The :attr:`TOKEN_FIELDS` whose values differ from ``recorded`` (the frame-encoder
        fields a cache was made with; a cache from before they were recorded: none)."""
        return differing_token_fields(self.frame_encoder_fields(), recorded)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def config_hash(self) -> str:
        """Short stable hash of the configuration, for provenance in outputs."""
        return hashlib.sha256(self.to_json_string().encode()).hexdigest()[:16]

    def outputs_hash(self) -> str:
        """:meth:`config_hash` of the fields an eval forward depends on (not the
        ``RUNTIME_FIELDS``): equal for configs whose models compute the same outputs."""
        # The tokens' layout matters only to token merging (filling it in redoes no output).
        skip = (*self.RUNTIME_FIELDS, *(self.LAYOUT_FIELDS if self.token_merging == 1 else ()))
        return settings_hash({k: v for k, v in self.to_dict().items() if k not in skip})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpoolConfig:
        """A config from its fields; a ``ValueError`` names unknown keys and bad values."""
        return cls(**data)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        from spool.io_utils import atomic_write_text

        atomic_write_text(os.path.join(directory, CONFIG_NAME), self.to_json_string() + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> SpoolConfig:
        """The config ``save_pretrained`` wrote in ``directory``: ``CheckpointNotFoundError``
        when there is none, ``SpoolLoadError`` when it cannot be read (spool.errors)."""
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            inner = os.path.join(directory, "model")  # a training run's folder, given whole
            raise CheckpointNotFoundError(
                f"{path}: no {CONFIG_NAME}; " + (
                    f"did you mean {inner}, the model of the run in {directory}?"
                    if os.path.isfile(os.path.join(inner, CONFIG_NAME)) else
                    f"is {directory} a Spool checkpoint written by save_pretrained?"))
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SpoolLoadError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise SpoolLoadError(f"{path}: expected a JSON object of SpoolConfig fields")
        if "model_type" in data and "num_lookback_heads" not in data:
            raise SpoolLoadError(
                f"{directory}: a Hugging Face {data['model_type']} model, not a Spool checkpoint; "
                f"use it as a backbone: --model backbone_name={directory} (Python: "
                f"Spool(backbone_name={str(directory)!r}, ...))")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise SpoolLoadError(f"{path}: {err}") from err

    def replace(self, **changes: Any) -> SpoolConfig:
        return dataclasses.replace(self, **changes)


_HF = "a keyword of transformers, not Spool's: "
_CAST = _HF + "cast the model with .to(dtype), or run it under torch.autocast"
_LABELS = _HF + "give class_names=[...], one name per class"
_TRANSFORMERS_KEYWORDS = {
    "config": "the config goes first, positionally: Spool(config), or its fields as keywords",
    "torch_dtype": _CAST, "dtype": _CAST, "num_labels": _LABELS, "id2label": _LABELS,
    "label2id": _LABELS, "device_map": _HF + "move the model with .to(device)",
    "ignore_mismatched_sizes": _HF + "a Spool checkpoint (model.spool.save_pretrained(DIR)) "
                               "loads under a new head: SpoolForFrameClassification"
                               ".from_pretrained(DIR, class_names=[...])"}


def check_known_fields(keys: Any, what: str, also: tuple[str, ...] = ()) -> None:
    """``ValueError`` naming keys that are no field (nor ``also``), each with its look-alike."""
    import difflib

    known = sorted(f.name for f in dataclasses.fields(SpoolConfig))
    unknown = sorted(set(keys) - set(known) - set(also))
    if unknown:
        close = {k: difflib.get_close_matches(k, [*known, *also], n=1) for k in unknown
                 if k not in _TRANSFORMERS_KEYWORDS}
        hints = "".join(f"; {k!r}: {_TRANSFORMERS_KEYWORDS[k]}" for k in unknown
                        if k in _TRANSFORMERS_KEYWORDS)
        hints += "".join(f"; {k!r}: did you mean {m[0]!r}?" for k, m in close.items() if m)
        raise ValueError(f"{what}: unknown SpoolConfig field(s) {unknown}{hints}; known "
                         f"fields: {known}" + (f" (and {list(also)})" if also else ""))


_dataclass_init = SpoolConfig.__init__


@functools.wraps(_dataclass_init)
def _init_naming_unknown_keys(self: SpoolConfig, *args: Any, **kwargs: Any) -> None:
    check_known_fields(kwargs, "config")  # SPEC §2: a ValueError (the dataclass's: TypeError)
    _dataclass_init(self, *args, **kwargs)


SpoolConfig.__init__ = _init_naming_unknown_keys  # type: ignore[method-assign]


def settings_hash(data: dict[str, Any]) -> str:
    """Short stable hash of JSON-able settings, for keying outputs on them."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def backbone_identity(name: str) -> str:
    """``backbone_name`` as a ``--model`` flag gives it: a local directory by its real path
    (``./dino``, ``/models/dino/`` and a link to it are one backbone, from any working
    directory: the outputs and caches keyed on it are kept), a hub id as given. Resolved
    once, when given: a checkpoint's config keeps the name it was trained with."""
    return os.path.realpath(name) if os.path.isdir(name) else name


def differing_token_fields(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[str]:
    """The :attr:`SpoolConfig.TOKEN_FIELDS` that both records hold, with different values."""
    a, b = (json.loads(json.dumps(x or {})) for x in (a, b))
    return [k for k in SpoolConfig.TOKEN_FIELDS if k in a and k in b and a[k] != b[k]]
