"""What ``spool extract`` records of each output, and when an output is done: the video it was
made from (path, size, modification time), the weights and settings; outputs that are not
done are of another version of the file or other settings, and are redone or removed."""

from __future__ import annotations

from pathlib import Path

import torch

from spool.extract_frames import segments_path
from spool.extract_inputs import as_recorded
from spool.io_utils import file_version
from spool.tensor_files import read_safetensors_metadata
from spool.validation import EXTRACT_IN_FLOAT32, check_storable


def source_metadata(source: Path) -> dict[str, str]:
    """Which video an output was made from: its path, size and modification time (an output
    of another file, or of an earlier version of this one, is redone)."""
    version = file_version(source)
    name = as_recorded(source)  # safetensors metadata is UTF-8
    if version is None:  # reported as a failure when it is read
        return {"source": name}
    return {"source": name, "source_size": str(version[0]),
            "source_mtime_ns": str(version[1])}


def is_done(output: Path, settings: dict[str, str]) -> bool:
    """An output that opens and was made with the same weights and settings (an output missing
    any of today's keys was made by an older version and is redone)."""
    if not output.is_file():
        return False
    meta = read_safetensors_metadata(output)
    if meta is None:  # a damaged file is simply redone
        return False
    return all(meta.get(k) == v for k, v in settings.items() if k != "spool_version")


def remove_outputs(output: Path, keep_main: bool = False) -> None:
    """What an earlier run wrote for this video: not done (``is_done``), so it is of another
    version of the file or other settings, and would be read as this run's otherwise
    (``keep_main``: all but ``output``, which this run has just written)."""
    for path in (segments_path(output),) if keep_main else (output, segments_path(output)):
        path.unlink(missing_ok=True)


def stored_half(features: torch.Tensor) -> torch.Tensor:
    """``features`` as the float16 they are stored in, on the CPU (an overflow is an error;
    the job names the video)."""
    return check_storable(features, torch.float16, advice="check the model's weights",
                          compute_flag=EXTRACT_IN_FLOAT32).to(torch.float16).cpu()


def stored_float32(values: torch.Tensor) -> torch.Tensor:
    """``values`` as float32 on the CPU, if finite (else an error; the job names the video)."""
    return check_storable(values.float(), torch.float32, compute_flag=EXTRACT_IN_FLOAT32).cpu()
