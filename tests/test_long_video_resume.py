"""A long pass interrupted with its hidden state on disk goes on where it stopped."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from conftest import CUDA_ONLY, tiny_config

import spool.layers.streaming as streaming
import spool.models.long_video as long_video
import spool.models.long_video_state as long_video_state
from spool import Spool
from spool.models.long_video_state import ResumableHiddenState
from spool.video import write_video
from spool.video.samplers import StrideSampler

TOKENS = dict(hidden_size=24, num_spatial_tokens=5)


def _interrupt_layer(monkeypatch, at: int, error: BaseException | None = None) -> list[int]:
    """Make the ``at``-th call of a layer (counting from 0) raise ``error`` (KeyboardInterrupt)
    halfway through (after writing garbage into its buffer, as a killed layer leaves it),
    once; returns the list that records each call's block."""
    calls: list[int] = []
    real, interrupted = streaming._stream_layer, []

    def layer(block, x, *args, **kwargs):
        calls.append(id(block))
        if len(calls) - 1 == at and not interrupted:
            interrupted.append(True)
            x[len(x) // 2:] = 1e6
            raise KeyboardInterrupt if error is None else error
        return real(block, x, *args, **kwargs)

    monkeypatch.setattr(streaming, "_stream_layer", layer)
    return calls


@pytest.mark.parametrize("at", [0, 1, 2])  # in the first, the middle, the last layer
def test_a_pass_interrupted_in_a_layer_goes_on_from_the_last_finished_one(
        tmp_path, monkeypatch, at, spool_log):
    spool_log.set_level(logging.INFO, logger="spool")
    model = Spool(tiny_config(num_hidden_layers=3, local_frame_range=2, **TOKENS),
                  with_backbone=False).eval()
    tokens = torch.randn(23, model.config.num_spatial_tokens, model.config.hidden_size)
    want = model.forward_long(tokens, chunk_frames=4, keep_features=True)
    calls = _interrupt_layer(monkeypatch, at)
    with pytest.raises(KeyboardInterrupt):
        model.forward_long(tokens, chunk_frames=4,
                           resume=ResumableHiddenState(tmp_path / "state", "k"))
    record = json.loads((tmp_path / "state" / "state.json").read_text())
    assert record["encoded"] == 23 and record["layers"] == at
    calls.clear()
    got = model.forward_long(tokens, chunk_frames=4, keep_features=True,
                             resume=ResumableHiddenState(tmp_path / "state", "k"))
    assert len(calls) == 3 - at  # the layers done before are not run again
    # Said (long-video audit: only a bar starting part-way showed it, none with --quiet).
    assert (f"{tmp_path / 'state'}: resuming the pass: 23 of 23 frames encoded, {at} temporal "
            f"layer(s) done") in spool_log.text
    torch.testing.assert_close(got.features, want.features, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.context, want.context, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", CUDA_ONLY)
@pytest.mark.parametrize("on_device", [True, False])  # the state whole on the GPU, or chunks
def test_a_pass_on_the_gpu_interrupted_goes_on_to_the_cpus_result(
        tmp_path, monkeypatch, device, on_device):
    """The model on a GPU: the state on the device is copied to its file before each layer
    (or stays in the file, a chunk at a time on the device); a resumed pass gives the CPU's
    uninterrupted result."""
    model = Spool(tiny_config(num_hidden_layers=3, local_frame_range=2, **TOKENS),
                  with_backbone=False).eval()
    tokens = torch.randn(23, model.config.num_spatial_tokens, model.config.hidden_size)
    want = model.forward_long(tokens, chunk_frames=4, keep_features=True)
    model.to(device)
    monkeypatch.setattr(long_video_state, "COMMIT_EVERY_S", 0.0)  # a copy before each layer
    calls = _interrupt_layer(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        model.forward_long(tokens, chunk_frames=4, hidden_on_device=on_device,
                           resume=ResumableHiddenState(tmp_path / "state", "k"))
    assert json.loads((tmp_path / "state" / "state.json").read_text())["layers"] == 1
    calls.clear()
    got = model.forward_long(tokens, chunk_frames=4, keep_features=True,
                             hidden_on_device=on_device,
                             resume=ResumableHiddenState(tmp_path / "state", "k"))
    assert len(calls) == 2
    torch.testing.assert_close(got.features.cpu(), want.features, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.context.cpu(), want.context, atol=1e-4, rtol=1e-4)


def test_another_key_starts_afresh(tmp_path, monkeypatch, spool_log):
    """What the state depends on changed (the weights, the video, the settings): its folder
    is emptied and the pass starts from the first frame."""
    spool_log.set_level(logging.INFO, logger="spool")
    model = Spool(tiny_config(num_hidden_layers=2, **TOKENS), with_backbone=False).eval()
    tokens = torch.randn(9, model.config.num_spatial_tokens, model.config.hidden_size)
    calls = _interrupt_layer(monkeypatch, 1)
    folder = tmp_path / ".spool-resume-0123"  # resumable_pass's: all in it is Spool's
    with pytest.raises(KeyboardInterrupt):
        model.forward_long(tokens, resume=ResumableHiddenState(folder, "old"))
    (folder / "stray").write_text("x")
    other = torch.randn_like(tokens)
    calls.clear()
    got = model.forward_long(other, resume=ResumableHiddenState(folder, "new"))
    assert len(calls) == 2 and not (folder / "stray").exists()
    assert (f"{folder}: the state saved there is of another pass (other weights, settings, "
            "video or length); starting afresh") in spool_log.text
    monkeypatch.undo()
    torch.testing.assert_close(got.context, model.forward_long(other).context)


def test_an_interrupted_encoding_goes_on_from_the_last_chunk_recorded(tmp_path, monkeypatch):
    """Frames encoded before the interruption (recorded every COMMIT_EVERY_S) are not decoded
    or encoded again; the result and timestamps are an uninterrupted pass's."""
    model = Spool(tiny_config(num_hidden_layers=2, backbone_chunk_size=4)).eval()
    frames = np.random.default_rng(0).integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    path = write_video(tmp_path / "v.mkv", frames, fps=10, codec="ffv1")
    sampler = StrideSampler(1)
    want = model.forward_long(path, sampler=sampler, chunk_frames=4)
    monkeypatch.setattr(long_video_state, "COMMIT_EVERY_S", 0.0)
    real, asked = long_video.stream_tokens, []

    def stream(model, reader, indices):  # the first pass stops after 3 chunks (12 frames)
        asked.append(len(indices))
        for n, chunk in enumerate(real(model, reader, indices)):
            if n == 3 and len(asked) == 1:
                raise KeyboardInterrupt
            yield chunk

    monkeypatch.setattr(long_video, "stream_tokens", stream)
    with pytest.raises(KeyboardInterrupt):
        model.forward_long(path, sampler=sampler, chunk_frames=4,
                           resume=ResumableHiddenState(tmp_path / "s", "k"))
    got = model.forward_long(path, sampler=sampler, chunk_frames=4,
                             resume=ResumableHiddenState(tmp_path / "s", "k"))
    assert asked == [30, 18]  # the second pass decodes the 18 frames not yet recorded
    torch.testing.assert_close(got.context, want.context, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.frame_features, want.frame_features, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.timestamps, want.timestamps)
    assert torch.equal(got.frame_indices, want.frame_indices)


def test_a_state_held_elsewhere_is_copied_to_disk_before_a_layer_when_due(tmp_path,
                                                                          monkeypatch):
    """A hidden state on a GPU computes in place there; before a layer, once COMMIT_EVERY_S
    have passed since the last record, its state goes into the buffer not recorded, then the
    record names it (here: a RAM tensor stands in). Sooner, nothing is copied: on an H200 a
    copy before every layer made the pass 7x slower."""
    clock = [0.0]
    monkeypatch.setattr(long_video_state, "_clock", lambda: clock[0])
    state = ResumableHiddenState(tmp_path / "s", "k").open((5, 2, 3))
    on_device = torch.randn(5, 2, 3)
    assert state.before_layer(0, on_device) is on_device and state.layers_done == 0
    clock[0] += long_video_state.COMMIT_EVERY_S - 1
    assert state.before_layer(1, on_device) is on_device and state.layers_done == 0
    clock[0] += 1
    assert state.before_layer(2, on_device) is on_device
    assert state.layers_done == 2 and torch.equal(state.hidden, on_device)
    saved = on_device.clone()
    on_device.add_(1)
    clock[0] += long_video_state.COMMIT_EVERY_S - 1  # counted from the last copy
    assert state.before_layer(3, on_device) is on_device and state.layers_done == 2
    assert state.hidden.data_ptr() == state.buffers[1].data_ptr()
    reopened = ResumableHiddenState(tmp_path / "s", "k").open((5, 2, 3))
    assert reopened.layers_done == 2 and torch.equal(reopened.hidden, saved)


def test_a_state_slow_to_copy_is_copied_less_often(tmp_path, monkeypatch):
    """Copies take at most a tenth of the pass: a 70 GiB state copied every 30 s would spend
    more time copying than computing."""
    clock = [0.0]
    monkeypatch.setattr(long_video_state, "_clock", lambda: clock[0])
    real_copy = long_video_state._copy

    def slow_copy(src, dst):  # 5 s a copy
        real_copy(src, dst)
        clock[0] += 5

    monkeypatch.setattr(long_video_state, "_copy", slow_copy)
    state = ResumableHiddenState(tmp_path / "s", "k").open((5, 2, 3))
    on_device = torch.randn(5, 2, 3)
    clock[0] += long_video_state.COMMIT_EVERY_S
    state.before_layer(1, on_device)
    assert state.layers_done == 1
    clock[0] += 49  # since the copy ended: 10 x 5 s is due, 30 s is not enough
    state.before_layer(2, on_device)
    assert state.layers_done == 1
    clock[0] += 1
    state.before_layer(3, on_device)
    assert state.layers_done == 3


def test_spool_extract_per_frame_goes_on_with_the_video_it_was_interrupted_in(
        tmp_path, monkeypatch, capsys):
    """An hour of video is hours of work: with --offload-dir, a run stopped in a layer keeps
    the layers done, the same command goes on from there, and the state is removed once the
    output is written (a video that fails removes it too)."""
    import json as json_

    from conftest import tiny_backbone, tiny_model_args
    from safetensors.torch import load_file

    from spool.cli import main

    frames = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    video = write_video(tmp_path / "v.mp4", frames, fps=10, codec="libx264")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    (tmp_path / "backbone.json").write_text(json_.dumps(tiny_backbone()))
    flags = [*tiny_model_args(tmp_path / "backbone.json"), "--no-progress", "--per-frame",
             "--stride", "1", "--chunk-frames", "4", "--model", "num_hidden_layers=2"]
    assert main(["extract", str(video), *flags, "--out", str(tmp_path / "plain")]) == 0
    scratch = tmp_path / "scratch"
    run = ["extract", str(tmp_path / "bad.mp4"), str(video), *flags, "--out",
           str(tmp_path / "out"), "--offload-dir", str(scratch)]
    assert main(run) == 1 and not list(scratch.iterdir())  # bad.mp4 failed, v.mp4 done
    (tmp_path / "out" / "v.safetensors").unlink()
    calls = _interrupt_layer(monkeypatch, 1)  # in the second of 2 layers
    capsys.readouterr()
    assert main(run) == 130
    assert "interrupted" in capsys.readouterr().err
    assert [p.name.startswith(".spool-resume-") for p in scratch.iterdir()] == [True]
    calls.clear()
    assert main(run) == 1  # bad.mp4 fails again; v.mp4 goes on from its first layer's end
    assert len(calls) == 1 and not list(scratch.iterdir())
    got, want = load_file(tmp_path / "out" / "v.safetensors"), load_file(
        tmp_path / "plain" / "v.safetensors")
    for name in ("frame_features", "context", "timestamps", "frame_indices"):
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5)
    # Killed after writing the output, before tidying up: the next run's skip tidies.
    left = long_video_state.pass_folder(scratch, str(tmp_path / "out" / "v.safetensors"))
    left.mkdir()
    assert main(run) == 1 and not left.exists()


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory"),
                                   MemoryError("no room in RAM"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory")])
def test_running_out_of_memory_keeps_the_layers_done(tmp_path, monkeypatch, capsys, error):
    """An OOM in a layer failed the video and removed its state: the rerun with smaller
    chunks, or the state in RAM, encoded the video again from its first frame. It is kept
    when it holds work; an OOM before any work leaves no folder behind."""
    import json as json_

    from conftest import tiny_backbone, tiny_model_args
    from safetensors.torch import load_file

    from spool.cli import main

    frames = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    video = write_video(tmp_path / "v.mp4", frames, fps=10, codec="libx264")
    (tmp_path / "backbone.json").write_text(json_.dumps(tiny_backbone()))
    flags = [*tiny_model_args(tmp_path / "backbone.json"), "--no-progress", "--per-frame",
             "--stride", "1", "--chunk-frames", "4", "--model", "num_hidden_layers=2"]
    assert main(["extract", str(video), *flags, "--out", str(tmp_path / "plain")]) == 0
    scratch = tmp_path / "scratch"
    run = ["extract", str(video), *flags, "--out", str(tmp_path / "out"),
           "--offload-dir", str(scratch)]
    calls = _interrupt_layer(monkeypatch, 1, error)  # in the second of 2 layers
    capsys.readouterr()
    assert main(run) == 1
    assert f"v.mp4: {type(error).__name__}: {error}" in capsys.readouterr().out  # its failure
    (kept,) = scratch.iterdir()
    assert json_.loads((kept / "state.json").read_text())["layers"] == 1
    calls.clear()
    assert main(run) == 0 and len(calls) == 1 and not list(scratch.iterdir())
    got, want = load_file(tmp_path / "out" / "v.safetensors"), load_file(
        tmp_path / "plain" / "v.safetensors")
    torch.testing.assert_close(got["frame_features"], want["frame_features"])

    (tmp_path / "out" / "v.safetensors").unlink()

    def no_room(*args, **kwargs):
        raise error

    monkeypatch.setattr(ResumableHiddenState, "commit_encoded", no_room)
    assert main(run) == 1 and not list(scratch.iterdir())


@pytest.mark.parametrize("record", [
    {"key": "k", "shape": 5, "encoded": 0, "layers": 0, "current": 0},
    {"key": "k", "shape": [11, 5, 24], "encoded": 0, "current": 0},
    {"key": "k", "shape": [11, 5, 24], "encoded": 0, "layers": 1, "current": 2},
    {"key": "k", "shape": [11, 5, 24], "encoded": 99, "layers": 0, "current": 0},
    None,  # the folder is a file
])
def test_a_damaged_record_or_folder_starts_afresh(tmp_path, record):
    """A record that makes no sense (edited, another version's) is not taken up, nor does it
    fail the video (a TypeError, KeyError or IndexError before)."""
    model = Spool(tiny_config(num_hidden_layers=2, **TOKENS), with_backbone=False).eval()
    tokens = torch.randn(9, 5, 24)
    folder = tmp_path / ".spool-resume-0123"
    if record is None:
        folder.write_text("in the way")
    else:
        folder.mkdir()
        (folder / "state.json").write_text(json.dumps(record))
    got = model.forward_long(tokens, resume=ResumableHiddenState(folder, "k"))
    torch.testing.assert_close(got.context, model.forward_long(tokens).context)


def test_a_cut_state_is_said_to_be_damaged_not_of_another_pass(tmp_path, monkeypatch,
                                                                spool_log):
    """A state whose files were cut (its record this pass's) was said to be "of another pass
    (other weights, settings, video or length)"."""
    spool_log.set_level(logging.INFO, logger="spool")
    model = Spool(tiny_config(num_hidden_layers=2, **TOKENS), with_backbone=False).eval()
    tokens = torch.randn(9, 5, 24)
    folder = tmp_path / "state"
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):  # (spool_log's
        _interrupt_layer(patch, 1)  # patch stays)
        model.forward_long(tokens, resume=ResumableHiddenState(folder, "k"))
    with open(folder / "hidden1.f32", "r+b") as f:
        f.truncate(100)
    got = model.forward_long(tokens, resume=ResumableHiddenState(folder, "k"))
    assert f"{folder}: the state saved there is cut short or damaged; starting afresh" in \
        spool_log.text
    torch.testing.assert_close(got.context, model.forward_long(tokens).context)


def test_a_full_disk_is_an_error_before_any_work(tmp_path, monkeypatch):
    """The state's files were sparse: a full disk met writing them killed the process with
    SIGBUS (exit 135) on every run. Their blocks are reserved first: a MemoryError naming
    the room needed (that video fails, as one too long for RAM), and no folder left behind."""
    import errno
    import os

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    model = Spool(tiny_config(num_hidden_layers=1, **TOKENS), with_backbone=False).eval()
    with pytest.raises(MemoryError, match=r"no room for the hidden state on disk: .* KiB more"):
        with long_video_state.resumable_pass(tmp_path, "out.safetensors", "k") as state:
            model.forward_long(torch.randn(9, 5, 24), resume=state)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MemoryError, match="no room for the hidden state"):  # offload_dir alone
        model.forward_long(torch.randn(9, 5, 24), offload_dir=tmp_path)


def test_the_state_is_found_however_the_output_is_typed(tmp_path, monkeypatch):
    """Named after the output as typed, a state made with --out feats was not found with
    --out $PWD/feats; two projects' feats/NAME shared one folder, and one job could take up
    the other's buffers."""
    monkeypatch.chdir(tmp_path)
    relative = long_video_state.pass_folder("scratch", "feats/v.safetensors")
    assert relative == long_video_state.pass_folder(
        "scratch", str(tmp_path / "sub" / ".." / "feats" / "v.safetensors"))
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path / "other")
    assert long_video_state.pass_folder("scratch", "feats/v.safetensors") != relative


def test_the_room_the_state_needs_is_said_whole(tmp_path, monkeypatch):
    """The message named one file's size and the room left after the others were reserved:
    '6.0 MiB more (4.0 MiB free)' for a state of 12 MiB."""
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(long_video_state.shutil, "disk_usage", lambda p: usage(1, 1, 1000))
    model = Spool(tiny_config(num_hidden_layers=1, **TOKENS), with_backbone=False).eval()
    with pytest.raises(MemoryError, match=r"it takes 10\.4 KiB in .* \(two copies of \[11, 5, "
                                          r"24\] fp32\), 1000 bytes free"):
        model.forward_long(torch.randn(9, 5, 24), resume=ResumableHiddenState(tmp_path / "s", "k"))


def test_a_full_disk_writing_the_output_keeps_the_layers_done(tmp_path, monkeypatch, capsys):
    """ENOSPC stops the job (no bad video), and took the state with it: the rerun, once room
    was made, encoded the video from its first frame."""
    import errno
    import json as json_

    from conftest import tiny_backbone, tiny_model_args

    import spool.extract as extract
    from spool.cli import main

    frames = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    video = write_video(tmp_path / "v.mp4", frames, fps=10, codec="libx264")
    (tmp_path / "backbone.json").write_text(json_.dumps(tiny_backbone()))
    run = ["extract", str(video), *tiny_model_args(tmp_path / "backbone.json"),
           "--no-progress", "--per-frame", "--stride", "1", "--out", str(tmp_path / "out"),
           "--offload-dir", str(tmp_path / "scratch")]
    real = extract.write_streamed_safetensors

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, f"No space left on device: writing {path}")

    monkeypatch.setattr(extract, "write_streamed_safetensors", full)
    assert main(run) == 2
    assert "No space left on device: writing " in capsys.readouterr().err
    (kept,) = (tmp_path / "scratch").iterdir()
    assert json_.loads((kept / "state.json").read_text())["layers"] == 1  # all done
    monkeypatch.setattr(extract, "write_streamed_safetensors", real)
    calls = _interrupt_layer(monkeypatch, 99)  # counts the layers run
    assert main(run) == 0 and calls == [] and not kept.exists()


def test_a_folder_of_other_things_is_refused_not_emptied(tmp_path):
    """The README's ResumableHiddenState(DIR, key) emptied DIR: a user's files and another
    job's state went. A folder of other things (or a file) is refused and left as it is."""
    model = Spool(tiny_config(num_hidden_layers=1, **TOKENS), with_backbone=False).eval()
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "important.txt").write_text("precious")
    (tmp_path / "notes.txt").write_text("mine")
    for place in (tmp_path / "scratch", tmp_path / "notes.txt"):
        with pytest.raises(ValueError, match="holds other things than a hidden state"):
            model.forward_long(torch.randn(9, 5, 24), resume=ResumableHiddenState(place, "k"))
    assert (tmp_path / "scratch" / "important.txt").read_text() == "precious"
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_one_key_over_two_videos_is_two_states(tmp_path):
    """The same key (and folder) for another video took up the first one's state: its
    features and timestamps. The video file and the sampler are part of the key."""
    model = Spool(tiny_config(num_hidden_layers=1, backbone_chunk_size=4)).eval()
    rng = np.random.default_rng(0)
    videos = [write_video(tmp_path / f"{n}.mkv", rng.integers(0, 256, (12, 32, 32, 3),
                                                              dtype=np.uint8), fps=10,
                          codec="ffv1") for n in "ab"]
    state = tmp_path / "state"
    model.forward_long(videos[0], sampler=StrideSampler(1),
                       resume=ResumableHiddenState(state, "k"))
    got = model.forward_long(videos[1], sampler=StrideSampler(1),
                             resume=ResumableHiddenState(state, "k"))
    want = model.forward_long(videos[1], sampler=StrideSampler(1))
    torch.testing.assert_close(got.context, want.context, atol=1e-5, rtol=1e-5)


def test_a_state_opened_again_keeps_its_progress(tmp_path, monkeypatch):
    """open() added the video to the key in place: a second forward_long with the same state
    object (a retry after an error, a notebook after Ctrl-C) took its own state for another
    key's and started over."""
    model = Spool(tiny_config(num_hidden_layers=2, backbone_chunk_size=4)).eval()
    frames = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    video = write_video(tmp_path / "v.mkv", frames, fps=10, codec="ffv1")
    state = ResumableHiddenState(tmp_path / "s", "k")
    calls = _interrupt_layer(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        model.forward_long(video, sampler=StrideSampler(1), resume=state)
    calls.clear()
    model.forward_long(video, sampler=StrideSampler(1), resume=state)
    assert len(calls) == 1  # the second layer only


def test_states_of_no_video_of_the_job_are_named_with_their_room(tmp_path, capsys):
    """A state left by a video renamed or deleted since stayed in --offload-dir for good,
    gigabytes each, and nothing said so: the job's summary now names them (and leaves them:
    another job may be running there)."""
    import json as json_

    from conftest import tiny_backbone, tiny_model_args

    from spool.cli import main

    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    video = write_video(tmp_path / "v.mp4", frames, fps=10, codec="libx264")
    (tmp_path / "backbone.json").write_text(json_.dumps(tiny_backbone()))
    scratch = tmp_path / "scratch"
    gone = long_video_state.pass_folder(scratch, str(tmp_path / "out" / "renamed.safetensors"))
    gone.mkdir(parents=True)
    (gone / "hidden0.f32").write_bytes(b"\1" * 2**20)
    mine = long_video_state.pass_folder(scratch, str(tmp_path / "out" / "v.safetensors"))
    assert long_video_state.stray_states(scratch, [tmp_path / "out" / "v.safetensors"])[0] == [
        gone]
    mine.mkdir()  # a state of this job's video (it goes on from it): not stray
    assert long_video_state.stray_states(scratch, [tmp_path / "out" / "v.safetensors"])[0] == [
        gone]
    capsys.readouterr()
    assert main(["extract", str(video), *tiny_model_args(tmp_path / "backbone.json"),
                 "--no-progress", "--per-frame", "--stride", "1", "--out",
                 str(tmp_path / "out"), "--offload-dir", str(scratch)]) == 0
    out = capsys.readouterr().out
    assert f"1 hidden state(s) in {scratch} (1.0 MiB) are of no video of this job" in out
    assert gone.is_dir() and not mine.exists()
