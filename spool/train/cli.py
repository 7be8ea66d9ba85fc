"""Command-line flags of a training run (``spool train`` and ``python -m spool.train``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from spool.cli_args import (
    add_model_argument,
    nonnegative_int,
    positive_float,
    positive_float_or_none,
    positive_int,
)
from spool.errors import SpoolLoadError
from spool.runtime import process_rank
from spool.train.checkpoint import CHECKPOINT_DIR
from spool.train.config import (
    RUN_CONTROL_FIELDS,
    TrainConfig,
    init_looked_in,
    read_config_file,
)
from spool.train.resume_settings import CONFIG_FILE

logger = logging.getLogger("spool.train")


# Each setting that is on or off has both flags (--hflip, --no-hflip): a resume, which takes
# the run's settings, may turn it either way.
ON_OFF = argparse.BooleanOptionalAction


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``spool train`` / ``python -m spool.train``; each overrides ``--config``."""
    S = argparse.SUPPRESS  # unset flags stay absent, so the config file's value holds
    parser.add_argument("--config", help="JSON file of TrainConfig fields; flags override it")
    parser.add_argument("--task", choices=("clips", "frames"), default=S,
                        help="clips: clip classification (default); frames: per-frame "
                             "classification (temporal action segmentation)")
    g = parser.add_argument_group("data")
    g.add_argument("--train-data", "--train", dest="train_data", default=S,
                   help="annotation file ('path label' lines) or a directory with one "
                        "sub-folder per class")
    g.add_argument("--val-data", "--val", dest="val_data", default=S,
                   help="held-out videos, same forms as --train-data")
    g.add_argument("--train-cache", default=S, help="token cache from `spool cache` (the "
                   "backbone is not run)")
    g.add_argument("--val-cache", default=S, help="token cache of the held-out videos")
    g.add_argument("--num-frames", type=positive_int, default=S,
                   help="frames per clip (16); not with --train-cache, whose clips are fixed")
    g.add_argument("--frame-stride", type=positive_int, default=S,
                   help="frames between sampled frames (default: spread over the video); not "
                        "with --train-cache")
    g.add_argument("--augment", action=ON_OFF, default=S,
                   help="random crop / temporal jitter (on by default)")
    g.add_argument("--crop-scale", type=positive_float, nargs=2, default=S,
                   metavar=("MIN", "MAX"), help="area range of the random crop (0.4 1.0)")
    g.add_argument("--hflip", action=ON_OFF, default=S,
                   help="random horizontal flips (off by default: they swap left/right motion)")
    g.add_argument("--num-clips", type=positive_int, default=S,
                   help="clips per video at evaluation")
    g.add_argument("--num-workers", type=nonnegative_int, default=S,
                   help="DataLoader workers (2)")
    g = parser.add_argument_group("frames task")
    g.add_argument("--crop-frames", type=positive_int, default=S,
                   help="training crops of up to this many frames (512)")
    g.add_argument("--fps", type=positive_float, default=S,
                   help="rate frames are sampled at from videos (15; a cache has its own)")
    g.add_argument("--background", nargs="+", default=S, metavar="CLASS",
                   help="classes that are not segments in edit and F1 (MS-TCN's bg_class)")
    g.add_argument("--train-split", default=S, help="MS-TCN root: training bundle "
                   "(train.split1)")
    g.add_argument("--val-split", default=S, help="MS-TCN root: held-out bundle (test.split1)")
    g = parser.add_argument_group("model")
    g.add_argument("--architecture", choices=("spool", "frame_pooling", "linear_probe",
                                              "ms_tcn"), default=S,
                   help="clips: spool, frame_pooling; frames: spool, linear_probe, ms_tcn")
    g.add_argument("--init", default=S, help="start from this Spool or classifier checkpoint")
    add_model_argument(g, "a SpoolConfig field, value as JSON (repeatable), e.g. "
                          "--model num_hidden_layers=2 --model backbone_name=/path/dinov2",
                       default=S)
    g.add_argument("--gradient-checkpointing", action=ON_OFF, default=S,
                   help="recompute activations in the backward pass: less memory (off)")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=S, help="epochs (10)")
    g.add_argument("--batch-size", type=positive_int, default=S, help="global batch (8)")
    g.add_argument("--eval-batch-size", type=positive_int, default=S, help="evaluation batch")
    g.add_argument("--lr", type=positive_float, default=S, help="peak lr (5e-4)")
    for flag, kind, text in (
            ("--weight-decay", float, "AdamW weight decay (0.05)"),
            ("--warmup-epochs", float, "linear warm-up (1.0)"),
            ("--min-lr-ratio", float, "final lr / peak lr of the cosine (0.01)"),
            ("--grad-clip", positive_float_or_none,
             "max gradient norm (1.0; none: no clipping)"),
            ("--label-smoothing", float, "(0.0)"), ("--seed", int, "(0)")):
        g.add_argument(flag, type=kind, default=S, help=text)
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default=S,
                   help="where it trains (auto: CUDA when available)")
    g.add_argument("--amp", action=ON_OFF, default=S, help="bf16 autocast on GPU (on)")
    g = parser.add_argument_group("output")
    g.add_argument("--out-dir", default=S, help="run directory (runs/spool)")
    g.add_argument("--save-every", type=nonnegative_int, default=S,
                   help="checkpoint every N steps (0: at each epoch's end)")
    g.add_argument("--keep-checkpoints", type=positive_int, default=S,
                   help="step checkpoints kept (2)")
    g.add_argument("--eval-every", type=positive_int, default=S,
                   help="evaluate every N epochs (1)")
    g.add_argument("--resume", default=S, help="a checkpoint directory, or 'auto' for the "
                   "newest one in --out-dir")
    g.add_argument("--stop-after-steps", type=positive_int, default=S,
                   help="checkpoint and stop after this step (a time-boxed or preempted run; "
                        "not saved with the run)")
    g.add_argument("--log-every", type=positive_int, default=S, help="print every N steps (10)")
    g.add_argument("--tensorboard", action=ON_OFF, default=S, help="TensorBoard logs (on)")
    g.add_argument("--quiet", action=ON_OFF, default=S,
                   help="no progress lines, only what must be said (off)")
    g.add_argument("--name", default=S, help="prefix of the printed lines (several runs at once)")


# Settings of one invocation (and, in files saved before b04eba8, its run control): a resume
# that takes the run's own train_config.json does not take these from it.
INVOCATION_FIELDS = ("quiet", "name", "num_workers", "device", *RUN_CONTROL_FIELDS)
ONE_OF = (("train_data", "train_cache"), ("val_data", "val_cache"))  # a flag's replaces its pair's
# Settings of how one side's videos are read, which its cache fixed when it was made (the
# sampling, num_frames or fps, stays: it is the cache's too, and a resume compares it).
VIDEO_READING = {"train_cache": ("crop_scale", "hflip", "train_split"),
                 "val_cache": ("num_clips", "val_split")}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``--config`` file (if any) with every flag that was given on top. A resume
    (``--resume``) into an ``--out-dir`` without ``--config`` takes the run's own
    ``train_config.json``: the run goes on with its settings, the flags given change them.
    Without ``--out-dir``, a checkpoint of ``RUN/checkpoints/`` resumes into ``RUN``."""
    data: dict[str, Any] = {}
    flags = {k: v for k, v in vars(args).items()
             if k not in ("config", "func", "command", "debug")}
    config = getattr(args, "config", None)
    if not config and "out_dir" not in flags and flags.get("resume", "auto") != "auto":
        checkpoint = Path(flags["resume"])  # (else the run went on in runs/spool, split)
        if checkpoint.parent.name == CHECKPOINT_DIR:
            flags["out_dir"] = str(checkpoint.parent.parent)
    run_file = None  # a resume's run settings, where no --config gives them
    if config:  # may be partial: the flags complete it
        data = read_config_file(config)
    elif "resume" in flags and "out_dir" in flags:
        run_file = Path(flags["out_dir"], CONFIG_FILE)
        config, data = _run_settings(run_file, flags)
    if "model" in flags:  # --model KEY=VALUE pairs add to the file's model fields
        base = data.get("model", {})
        flags["model"] = {**(base if isinstance(base, dict) else {}), **dict(flags["model"])}
    data.update(flags)
    if "fps" in flags and data.get("train_cache") and "resume" not in flags:
        # TrainConfig sees only values: --fps at its default would pass unsaid
        raise ValueError("fps (--fps): does not apply to --train-cache, whose tokens were made "
                         "already (spool cache --fps)")
    try:
        cfg = TrainConfig.from_dict(data)
    except ValueError as err:
        where = f" (in {config} or the flags)" if config else ""
        if run_file is not None and not config:
            where = f" (none read from {run_file}, where a resume finds its run's settings)"
        raise ValueError(f"{err}{where}") from err
    if config and "init" not in flags:  # the file's init, not a flag's
        cfg.init_looked_in = init_looked_in(config, cfg.init)
    return cfg


def _run_settings(saved: Path, flags: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """A resumed run's own settings, for the flags given to complete: its file and fields,
    but not the settings of the invocation that saved them, nor the other of a pair a flag
    sets. A damaged file is said and left out (the flags may give every setting)."""
    if not saved.is_file():
        return None, {}
    try:
        data = read_config_file(saved)
    except SpoolLoadError as err:
        if process_rank() == 0:  # said once under torchrun
            logger.warning(f"{err}: resuming with the flags given alone")
        return None, {}
    for pair in ONE_OF:
        if any(name in flags for name in pair):
            data = {k: v for k, v in data.items() if k not in pair}
    for cache, fields in VIDEO_READING.items():
        if cache in flags:
            data = {k: v for k, v in data.items() if k not in fields or k in flags}
    return str(saved), {k: v for k, v in data.items() if k not in INVOCATION_FIELDS}

