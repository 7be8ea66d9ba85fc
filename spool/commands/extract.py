"""``spool extract``: clip (and frame) features for every video, one file per video."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import sys
import time
from pathlib import Path

from spool import claims
from spool.claims import (
    CLAIM_SUFFIX,
    STALE_AFTER_S,
    remove_stale_claim,
    remove_stale_temporaries_in,
)
from spool.cli_args import (
    add_model_argument,
    positive_float,
    positive_int,
    refuse_file_for_folder,
)

logger = logging.getLogger("spool.commands.extract")

EPILOG = """\
examples:
  spool extract videos/ --out feats/ --checkpoint runs/k400/model
  spool extract list.txt --out feats/ --sampler sliding --clip-len 16 --stride 8 --save-features
  spool extract videos/ --out feats/ --model backbone_name=/models/dinov2-small --backbone-only
  spool extract lecture.mp4 --out feats/ --checkpoint ckpt/ --per-frame --fps 1   # an hour
  torchrun --nproc_per_node=8 -m spool.cli extract videos/ --out feats/ --checkpoint ckpt/

Each video gives OUT/NAME.safetensors with 'context' [n_clips, 2D] (fp32),
'frame_indices' and 'timestamps' [n_clips, T], and with --save-features 'features'
[n_clips, T+2, L, D] (fp16). With --backbone-only, only the backbone runs: 'features'
[n_clips, T, L, D] (fp16) are its tokens, with no 'context'. Without --checkpoint the
temporal layers are random, so use --backbone-only for features. With --per-frame, one
pass over each whole video: 'frame_features' [T, D], 'context' [2D], 'frame_indices' and
'timestamps' [T]. A frame classifier checkpoint writes per-frame 'labels', 'scores' and
'timestamps' (with --save-features the 'frame_features' [T, D] its head reads) and
OUT/NAME.segments.csv. Re-running the same command skips finished videos (outputs are redone
when the weights, the sampler, the preprocessing or the dtype change). Videos that cannot
be read are listed in OUT/failures.csv (a video deleted since is dropped from it by the
next job over its folder); the exit code is 1 if any failed. Several jobs may share OUT:
each video is claimed by one of them.

List files (.txt, .lst, .list): one path per line, relative to the list's folder. A line
whose first non-blank character is '#' is a comment; '#' elsewhere is part of the path, and
a file whose name starts with '#' is listed as ./#name.mp4. FIFOs, devices and broken links
are reported as failures without being opened.
"""


# The samplers each sampler flag applies to; the flags given pick the sampler (see --help).
APPLIES = {"num_frames": ("uniform",), "fps": ("fps",), "stride": ("stride", "sliding"),
           "clip_len": ("sliding",), "max_frames": ("fps", "stride")}
DEFAULTS = {"num_frames": 16, "fps": 2.0, "stride": 8, "clip_len": 16}
SAMPLER_KEYS = {"uniform": ("num_frames",), "fps": ("fps", "max_frames"),
                "stride": ("stride", "max_frames"), "sliding": ("clip_len", "stride")}

BATCH_SIZE = 4  # clips per forward, by default


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def sampler_candidates(args: argparse.Namespace, per_frame: bool) -> list[str] | None:
    """The samplers the sampler flags given allow (None: no flag given, no --sampler);
    a flag that does not apply to ``--sampler``, or flags of different samplers, are refused."""
    given = [k for k in APPLIES if getattr(args, k) is not None]
    if args.sampler is not None:
        if per_frame and args.sampler == "sliding":
            raise ValueError("--sampler: --per-frame (and a frame classifier) runs each whole "
                             "video in one pass, so it takes one clip: uniform, fps or stride, "
                             "not sliding")
        for k in given:
            if args.sampler not in APPLIES[k]:
                raise ValueError(f"{_flag(k)}: applies to --sampler {' or '.join(APPLIES[k])}, "
                                 f"not {args.sampler}")
        return [args.sampler]
    if not given:
        return None
    candidates = {"uniform", "fps", "stride"} | (set() if per_frame else {"sliding"})
    for k in given:
        candidates &= set(APPLIES[k])
    if not candidates:
        applies = "; ".join(f"{_flag(k)}: {' or '.join(APPLIES[k])}" for k in given)
        raise ValueError(f"{' and '.join(map(_flag, given))}: these flags apply to different "
                         f"samplers ({applies}"
                         f"{'; --per-frame: not sliding' if per_frame else ''}); give one")
    return sorted(candidates)


def build_sampler(args: argparse.Namespace, trained: dict | None = None,
                  per_frame: bool = False):
    """The sampler of the flags given; without any, the one the checkpoint was trained with
    (``trained``: its ``config.sampling``) where it suits the mode, else uniform (clips) or
    fps (--per-frame). A note is logged when the sampler differs from training."""
    from spool.video import make_sampler
    from spool.video.samplers import sampler_settings

    trained = dict(trained) if trained else None
    # --per-frame takes each whole video: a training sampler of whole videos, not of clips.
    usable = trained if trained and (not per_frame or trained["name"] in ("fps", "stride")) \
        else None
    candidates = sampler_candidates(args, per_frame)
    default = "fps" if per_frame else "uniform"
    if candidates is None and usable is not None:
        sampler = make_sampler(**usable)
    else:
        candidates = candidates or [default]
        prefer = [n for n in ((usable or {}).get("name"), default) if n in candidates]
        if len(candidates) > 1 and not prefer:
            given = [_flag(k) for k in APPLIES if getattr(args, k) is not None]
            raise ValueError(f"{' '.join(given)}: applies to --sampler "
                             f"{' or '.join(candidates)}; name one with --sampler")
        name = prefer[0] if len(candidates) > 1 else candidates[0]
        # Settings not given come from training when it used this sampler, else the defaults.
        base = dict(usable) if usable and usable["name"] == name else {}
        base.pop("name", None)
        for k in SAMPLER_KEYS[name]:
            value = getattr(args, k)
            key = "target_fps" if k == "fps" else k
            if value is not None:
                base[key] = value
            elif key not in base and k in DEFAULTS:
                base[key] = DEFAULTS[k]
        sampler = make_sampler(name, **base)
    if trained is not None and sampler.to_dict() != sampler_settings(trained):
        logger.warning("note: sampling %s differs from the checkpoint's training sampling %s",
                       json.dumps(sampler.to_dict()), json.dumps(trained))
    return sampler


def check_flags(args: argparse.Namespace, frame_model: bool | None = False) -> None:
    """Refuse flags that the chosen mode would ignore (exit 2): before any work, and again
    once the checkpoint is known to be a frame classifier or not (``frame_model``; None: not
    known yet, so what a frame classifier takes waits for that)."""
    per_frame = args.per_frame or bool(frame_model)
    if args.backbone_only and per_frame:
        raise ValueError("--backbone-only: the backbone's tokens are saved per clip; it does "
                         "not apply to --per-frame" + (" or a frame classifier checkpoint"
                                                       if frame_model else ""))
    for key in ("chunk_frames", "offload_dir"):
        if getattr(args, key) is not None and not per_frame and frame_model is not None:
            raise ValueError(f"{_flag(key)}: applies to --per-frame (or a frame classifier "
                             f"checkpoint)")
    if per_frame and args.batch_size != BATCH_SIZE:
        raise ValueError("--batch-size: applies to clips; --per-frame (or a frame classifier "
                         "checkpoint) runs each video whole, --chunk-frames frames at a time")
    refuse_file_for_folder(args.offload_dir, "--offload-dir")
    if args.checkpoint is None:  # nothing from training: the sampler is known already
        build_sampler(args, None, per_frame)
    else:
        sampler_candidates(args, per_frame)


RANKS_WAIT = datetime.timedelta(days=7)  # torchrun stops the others if a rank dies


def run(args: argparse.Namespace) -> int:
    from spool.distributed import (
        all_gather_objects,
        broadcast_object,
        cleanup_distributed,
        on_rank0,
        setup_distributed,
        wait_for_ranks,
    )
    from spool.extract import FeatureExtractor, load_feature_model
    from spool.extract_inputs import VIDEO_EXTENSIONS, covered_by, plan_jobs
    from spool.io_utils import merge_failures
    from spool.models.frame_classification import FrameClassifier
    from spool.runtime import resolve_dtype

    check_flags(args, None if args.checkpoint else False)
    # The ranks meet only at the end, to sum up: one may finish its share hours before the
    # others (torch's 10 min default for NCCL aborted the job, its summary lost).
    dist = setup_distributed(args.device, timeout=RANKS_WAIT)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        if not os.access(out_dir, os.W_OK | os.X_OK):  # else each video failed on it
            raise ValueError(f"--out: {out_dir} is not writable")
        if dist.is_main:  # only files of processes that are gone: other jobs may share OUT
            remove_stale_temporaries(out_dir)
        # Listed once: ranks listing a folder that changes in between would miss videos.
        every = broadcast_object(on_rank0(dist.is_main, lambda: plan_jobs(args.inputs, out_dir)))
        if not every:  # the same on every rank: all return here, rank 0 last (as below)
            if not dist.is_main:
                return 0
            # The rows of videos deleted from the inputs since go all the same.
            merge_failures(out_dir / "failures.csv", [], [], covers=covered_by(args.inputs, []))
            print(f"spool extract: no videos in {' '.join(args.inputs)}: folders are searched "
                  f"for {' '.join(sorted(VIDEO_EXTENSIONS))} files, list files name one "
                  f"video per line and a CSV its video column; nothing to do", file=sys.stderr)
            return 2
        jobs = every[dist.rank::dist.world_size]  # what plan_jobs(..., rank, world_size) gives
        model = load_feature_model(args.checkpoint, dict(args.model or []),
                                   backbone_only=args.backbone_only)
        # A frame classifier predicts each frame of the whole video: --per-frame is implied.
        frame_model = isinstance(model, FrameClassifier)
        check_flags(args, frame_model)
        sampler = build_sampler(args, model.config.sampling if args.checkpoint else None,
                                per_frame=args.per_frame or frame_model)
        capped = getattr(sampler, "max_frames", None)
        if dist.is_main and (args.per_frame or frame_model) and capped:  # said once
            logger.warning("note: max_frames %d: each video's outputs cover its first %d "
                           "sampled frames only, not the whole video", capped, capped)
        extractor = FeatureExtractor(model, sampler, batch_size=args.batch_size,
                                     device=dist.device,
                                     dtype=resolve_dtype(args.dtype, dist.device),
                                     save_features=args.save_features,
                                     max_pixels=args.max_pixels, per_frame=args.per_frame,
                                     chunk_frames=args.chunk_frames or 32,
                                     offload_dir=args.offload_dir,
                                     backbone_only=args.backbone_only)
        start = time.perf_counter()
        # One bar, rank 0's (a bar per rank interleaves in a log file), its share said.
        share = f" (rank 0: 1/{dist.world_size} of the videos)" if dist.world_size > 1 else ""
        summary = extractor.run(jobs, progress=not args.no_progress and dist.is_main,
                                desc=f"extract{share}",  # (its rows kept if it stops too)
                                failure_log=out_dir / "failures.csv")
        wait_for_ranks("its share of the videos")
        summaries = all_gather_objects((summary.done, summary.skipped, summary.failures,
                                        summary.elsewhere, summary.settled))
    finally:
        cleanup_distributed()
    if not dist.is_main:  # rank 0 reports all and gives the exit status: a rank exiting 1
        return 0  # first would have torchrun stop rank 0 in the middle of its report
    done = sum(s[0] for s in summaries)
    skipped = sum(s[1] for s in summaries)
    failures = [f for s in summaries for f in s[2]]
    elsewhere = sum(s[3] for s in summaries)
    # Shared with any other job writing to this folder: its rows of other videos stay, and
    # the rows of videos this job covers that were deleted since they failed go.
    listed = merge_failures(out_dir / "failures.csv", failures,
                            [path for s in summaries for path in s[4]],
                            covers=covered_by(args.inputs, every))
    total = done + skipped + elsewhere + len(failures)
    busy = f"{elsewhere} claimed by another job, " if elsewhere else ""
    print(f"spool extract: {done} extracted, {skipped} already done, {busy}{len(failures)} failed "
          f"of {total} videos in {time.perf_counter() - start:.1f}s "
          f"({dist.world_size} process{'es' if dist.world_size > 1 else ''}); outputs in "
          f"{os.fspath(out_dir)}" + (f"; failures listed in {out_dir / 'failures.csv'}"
                                     if listed else ""))
    if args.offload_dir is not None:
        _say_stray_states(args.offload_dir, [job.output for job in every])
    if elsewhere:  # a crashed job's claims from elsewhere look the same as a live job's
        print(f"spool extract: the {elsewhere} claimed videos are left to the job holding "
              f"their .NAME.spool-claim file in {os.fspath(out_dir)}; a claim made on another "
              "machine or in another container is taken once unrenewed for "
              f"{claims.STALE_AFTER_S / 3600:g} h: if no other job runs, delete those files "
              "and run again")
    return 1 if failures else 0


def _say_stray_states(offload_dir: str, outputs: list[Path]) -> None:
    """Name the room taken in ``--offload-dir`` by states of no video of this job: nothing
    else would, and each can hold gigabytes."""
    from spool.io_utils import human_size
    from spool.models.long_video_state import stray_states

    stray, size = stray_states(offload_dir, outputs)
    if stray:
        print(f"spool extract: {len(stray)} hidden state(s) in {offload_dir} ({human_size(size)}) "
              "are of no video of this job: another job's that runs there, or left by "
              "videos renamed, deleted or finished without --offload-dir; delete the "
              ".spool-resume-* folders that no running job uses")


def _max_pixels(text: str) -> int:
    from spool.video.limits import parse_max_pixels

    try:
        return parse_max_pixels(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract", help="extract clip/frame features from video files",
        description="Extract Spool clip features (and optionally frame features) from video "
                    "files, one .safetensors file per video.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="video files, directories (searched recursively, following links), "
                        "lists of paths (.txt, .lst, .list) or a CSV with a video column")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    m = p.add_argument_group("model")
    m.add_argument("--checkpoint", metavar="DIR",
                   help="a Spool or classifier checkpoint (save_pretrained), or a hub id")
    add_model_argument(m, "a SpoolConfig field (repeatable): overrides the checkpoint's, or "
                          "without --checkpoint builds an untrained temporal stack on "
                          "backbone_name (default facebook/dinov2-base); e.g. "
                          "backbone_name=DIR, backbone_config=@hf_config.json")
    s = p.add_argument_group(
        "frame sampling",
        "Each flag applies to the samplers named before its colon. Without --sampler, the "
        "flags given pick it (--fps: fps, --clip-len: sliding, --num-frames: uniform; "
        "--stride or --max-frames alone: the default or training sampler if it takes them, "
        "else name --sampler); a flag that does not apply is an error (exit 2). With no "
        "sampler flag, a checkpoint is run as it was trained (its config.sampling; for "
        "--per-frame, if that sampled whole videos); else uniform, or fps with --per-frame. "
        "A sampler other than training's is noted on stderr.")
    s.add_argument("--sampler", choices=["uniform", "fps", "stride", "sliding"],
                   help="how clips are taken (default: see above)")
    s.add_argument("--num-frames", type=positive_int,
                   help="uniform: frames spread over the video (default: 16)")
    s.add_argument("--fps", type=positive_float, help="fps: target rate (default: 2)")
    s.add_argument("--stride", type=positive_int,
                   help="stride: every k-th frame; sliding: clip start step (default: 8)")
    s.add_argument("--clip-len", type=positive_int,
                   help="sliding: frames per clip (default: 16)")
    s.add_argument("--max-frames", type=positive_int,
                   help="fps/stride: keep the first N sampled frames of each video")
    r = p.add_argument_group("running")
    r.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE,
                   help=f"clips per forward (default: {BATCH_SIZE}; not with --per-frame)")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA when available, one GPU per torchrun process")
    r.add_argument("--dtype", "--compute-dtype", dest="dtype",
                   choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="autocast dtype (spool cache's --compute-dtype; outputs are stored as "
                        "said above); auto: bfloat16 on GPU, float32 on CPU")
    r.add_argument("--save-features", action="store_true",
                   help="also save frame features [n_clips, T+2, L, D] in fp16 (a frame "
                   "classifier: the frame_features [T, D] its head reads)")
    r.add_argument("--backbone-only", action="store_true",
                   help="save the backbone's tokens as 'features' [n_clips, T, L, D] (fp16), "
                        "without the temporal layers (random without --checkpoint) or "
                        "'context'; not with --per-frame or a frame classifier")
    r.add_argument("--max-pixels", type=_max_pixels, default="4096x2160", metavar="WxH",
                   help="largest frame to decode, as WIDTHxHEIGHT or a pixel count (0: no "
                        "limit); a video with larger frames (from its header, before decoding) "
                        "is reported as failed instead of exhausting memory (default: "
                        "%(default)s)")
    r.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true",
                   help="no progress bar")
    g = p.add_argument_group("long videos")
    g.add_argument("--per-frame", action="store_true",
                   help="each whole video in one pass (memory linear in its length; implied "
                        "by a frame classifier checkpoint, which predicts every frame): "
                        "frame_features [T, D], context [2D], frame_indices and timestamps "
                        "[T]; with --save-features also features [T+2, L, D] (fp16)")
    g.add_argument("--chunk-frames", type=positive_int,
                   help="--per-frame: frames per temporal chunk (default: 32)")
    g.add_argument("--offload-dir", metavar="DIR",
                   help="--per-frame or a frame classifier: keep the hidden state [T+2, L, "
                        "D] in files under DIR (twice its size on disk) instead of RAM; a "
                        "video interrupted there goes on from its last layer done when the "
                        "command is run again")
    p.set_defaults(func=run)


def remove_stale_temporaries(out_dir: Path, older_than_s: float = STALE_AFTER_S) -> int:
    """Delete the temporaries and claims that killed runs left behind; return their number.

    Only Spool's own (``.NAME.spool-HOST-PID-RANDOM.tmp``, a file or an output's folder;
    ``.NAME.spool-claim``) whose process is gone: exited on this machine and in this PID
    namespace, or older than ``older_than_s`` from elsewhere. The in-flight files of a job
    running beside this one, and a user's ``.notes.tmp``, stay.
    """
    removed = 0
    for root, folders, files in os.walk(out_dir):
        removed += remove_stale_temporaries_in(root, older_than_s)
        # Never into a temporary folder: another job's, which its writer may remove while it
        # is listed (rglob raised then).
        folders[:] = [f for f in folders if not (f.startswith(".") and f.endswith(".tmp"))]
        for name in files:
            if (name.startswith(".") and name.endswith(CLAIM_SUFFIX)
                    and remove_stale_claim(Path(root) / name, older_than_s)):
                removed += 1
    return removed
