"""What a write killed with SIGKILL leaves behind is found and removed by the next run
(kill-and-resume review, eighth session)."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from conftest import tiny_config

from spool.claims import is_stale_temporary, remove_stale_temporaries_in

ROOT = Path(__file__).resolve().parent.parent


def _killed_mid_save(target: Path) -> None:
    """A process killed while safetensors writes ``target``: safetensors' own ``.tmpXXXXXX``
    beside the file it was given is half-written when the process dies."""
    child = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        import spool.io_utils as io_utils

        def save_file(tensors, path, metadata=None):
            with open(os.path.join(os.path.dirname(path), ".tmpAbC123"), "wb") as f:
                f.write(b"half")
            os.kill(os.getpid(), signal.SIGKILL)

        io_utils.save_file = save_file
        io_utils.atomic_save_safetensors({{"x": torch.zeros(2)}}, {str(target)!r})
    """)
    result = subprocess.run([sys.executable, "-c", child], capture_output=True)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()


def test_a_killed_safetensors_write_leaves_only_what_a_sweep_removes(tmp_path: Path):
    """Defect: safetensors' own temporary (``.tmpXXXXXX``, beside the file it writes) was
    left in the output folder by a kill, where no sweep recognises it (16.8 MB per kill in a
    frame cache's videos/). It is now written inside a temporary folder of Spool's."""
    _killed_mid_save(tmp_path / "a.safetensors")
    left = list(tmp_path.iterdir())
    assert len(left) == 1 and left[0].is_dir() and is_stale_temporary(left[0])
    assert remove_stale_temporaries_in(tmp_path) == 1 and not list(tmp_path.iterdir())


def test_saving_a_model_or_a_frame_encoder_removes_a_killed_saves_leftovers(tmp_path: Path):
    """Defect: a run killed while saving left its temporaries in ``model/`` (training) and
    in a cache's ``backbone/``; the rerun saved beside them and kept them for good."""
    from spool.models import SpoolForFrameClassification
    from spool.models.frame_encoder import save_frame_encoder

    model = SpoolForFrameClassification(tiny_config(class_names=["a", "b"]))
    for folder in (tmp_path / "model", tmp_path / "backbone"):
        _killed_mid_save(folder / "model.safetensors")
        assert len(list(folder.iterdir())) == 1
    model.save_pretrained(tmp_path / "model")
    save_frame_encoder(model, tmp_path / "backbone")
    for folder in (tmp_path / "model", tmp_path / "backbone"):
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_a_frame_cache_removes_a_killed_runs_half_written_video(tmp_path: Path):
    """Defect: a frame cache killed while writing a video's tokens left them (full size) in
    ``videos/``, and no rerun removed them."""
    import numpy as np

    from spool.data.frame_cache import build_frame_cache
    from spool.data.segmentation import read_segments_csv
    from spool.models.frame_encoder import FrameEncoderModel
    from spool.video import write_video
    from spool.video.samplers import FpsSampler

    write_video(tmp_path / "clip.mkv", np.zeros((10, 32, 32, 3), np.uint8), fps=10,
                codec="ffv1")
    (tmp_path / "segments.csv").write_text("video,start_s,end_s,label\nclip.mkv,0,1,a\n")
    samples, names = read_segments_csv(tmp_path / "segments.csv")
    _killed_mid_save(tmp_path / "cache" / "videos" / "clip.safetensors")
    encoder = FrameEncoderModel(tiny_config()).eval()
    first = build_frame_cache(encoder, samples, names, tmp_path / "cache", FpsSampler(5))
    assert [p.name for p in (tmp_path / "cache" / "videos").iterdir()] == ["clip.safetensors"]
    # Killed before cache.json (every video done): the rerun finishes it, and is not
    # "already done" (review of my change); a rerun over the complete cache is.
    (tmp_path / "cache" / "cache.json").unlink()
    finished = build_frame_cache(encoder, samples, names, tmp_path / "cache", FpsSampler(5))
    again = build_frame_cache(encoder, samples, names, tmp_path / "cache", FpsSampler(5))
    assert (first.reused, finished.reused, again.reused, again.cached) == (False, False,
                                                                          True, 1)


def test_spool_extract_removes_a_killed_outputs_temporary_folder(tmp_path: Path):
    """Review of my change: an output's temporary is now a folder (safetensors' own file
    inside), which the extraction sweep, taking files only, would have kept."""
    from spool.commands.extract import remove_stale_temporaries

    _killed_mid_save(tmp_path / "out" / "sub" / "clip.safetensors")
    assert remove_stale_temporaries(tmp_path / "out") == 1
    assert not list((tmp_path / "out" / "sub").iterdir())


def test_the_extraction_sweep_skips_another_jobs_folder_that_vanishes(tmp_path: Path,
                                                                       monkeypatch):
    """Review of my change: the sweep (rglob) entered other jobs' temporary folders, and one
    removed by its writer between being listed and being read raised FileNotFoundError:
    ``spool extract`` beside another job on the same --out exited 2 at its start."""
    import os

    from spool.claims import temporary_sibling
    from spool.commands.extract import remove_stale_temporaries

    live = temporary_sibling(tmp_path / "out" / "sub" / "a.safetensors")  # this process's
    live.mkdir(parents=True)
    (live / "w").write_bytes(b"x")
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == os.fspath(live):  # its writer removed it after the listing
            raise FileNotFoundError(2, "No such file or directory", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert remove_stale_temporaries(tmp_path / "out") == 0
    assert (live / "w").exists()  # a live writer's folder is left alone


def test_an_output_path_near_the_limit_can_still_be_written(tmp_path: Path):
    """Review of my change: the temporary folder and a file named as the output inside it
    added up to 255 bytes to the path, so a valid 3,900-byte output path failed."""
    from spool.io_utils import atomic_save_safetensors

    parent = tmp_path
    while len(str(parent)) < 3_650:
        parent = parent / ("d" * 200)
    parent.mkdir(parents=True)
    target = parent / ("n" * 218 + ".safetensors")
    assert len(str(target).encode()) < 4_000
    atomic_save_safetensors({"x": torch.zeros(2)}, target)
    assert target.is_file() and [p.name for p in parent.iterdir()] == [target.name]


def test_resuming_a_run_removes_a_killed_writes_temporaries_in_its_folder(tmp_path: Path):
    """Defect (kill test at HEAD): a run killed while writing ``train_config.json``,
    ``metrics.csv`` or ``curves.png`` left their temporaries in the run folder for good;
    ``--resume auto`` swept only ``checkpoints/`` and ``model/``."""
    from spool.train.checkpoint import recover_checkpoints

    _killed_mid_save(tmp_path / "run" / "metrics.csv")
    (tmp_path / "run" / "train_config.json").write_text("{}")
    recover_checkpoints(tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["train_config.json"]


def test_a_signal_right_after_the_temporary_folder_is_made_leaves_nothing(tmp_path: Path,
                                                                          monkeypatch):
    """A stop signal raised between the temporary folder's mkdir and the try that removes it
    left the empty folder behind (crash audit)."""
    import pytest

    from spool.io_utils import atomic_save_safetensors

    made = Path.mkdir

    def mkdir_then_signal(self, *args, **kwargs):
        made(self, *args, **kwargs)
        if self.parent == tmp_path and self.name != "out":
            raise KeyboardInterrupt  # as a handler raises on SIGINT / SIGTERM

    monkeypatch.setattr(Path, "mkdir", mkdir_then_signal)
    with pytest.raises(KeyboardInterrupt):
        atomic_save_safetensors({"x": torch.zeros(2)}, tmp_path / "out.safetensors")
    assert list(tmp_path.iterdir()) == []
