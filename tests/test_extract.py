"""``spool extract`` end to end on generated videos with a tiny backbone."""

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_backbone, tiny_model_args
from safetensors import safe_open
from safetensors.torch import load_file

from spool.cli import main
from spool.extract_inputs import plan_jobs
from spool.video import write_video

D, L = 24, 17


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    (root / "sub").mkdir()
    for name, n in (("a.mp4", 12), ("sub/b.mkv", 9), ("c.avi", 20)):
        frames = rng.integers(0, 256, (n, 32, 48, 3), dtype=np.uint8)
        write_video(root / name, frames, fps=10, codec="mjpeg" if name.endswith("avi")
                    else "libx264")
    (root / "notes.mp4").write_text("this is not a video\n")
    (root / "empty.webm").write_bytes(b"")
    data = (root / "c.avi").read_bytes()
    (root / "cut.avi").write_bytes(data[: len(data) // 3])
    config = root.parent / "backbone.json"
    config.write_text(json.dumps(tiny_backbone()))
    return root, config


def _failures(out) -> dict[str, str]:
    """File name -> message of the videos ``out/failures.csv`` lists."""
    with open(out / "failures.csv", encoding="utf-8", errors="surrogateescape") as f:
        return {os.path.basename(row["path"]): row["message"] for row in csv.DictReader(f)}


def _cut_in_half(root, names) -> None:
    """``cut_NAME``: the first half of the bytes of ``root/NAME``, for each name."""
    for name in names:
        data = (root / name).read_bytes()
        (root / f"cut_{name}").write_bytes(data[: len(data) // 2])


def _extract(inputs, out, config, *extra):
    return main(["extract", *map(str, inputs), "--out", str(out), *tiny_model_args(config),
                 "--no-progress", *extra])


def test_extract_outputs_shapes_metadata_and_failures(videos, tmp_path, capsys):
    root, config = videos
    missing = root / "missing.mp4"
    listing = tmp_path / "list.txt"
    listing.write_text(f"# one path per line\n{root / 'a.mp4'}\n{missing}\n")
    out = tmp_path / "out"
    code = _extract([root, listing], out, config, "--num-frames", "4", "--save-features")
    assert code == 1  # some inputs are bad
    a = load_file(out / "a.safetensors")
    assert a["context"].shape == (1, 2 * D) and a["context"].dtype == torch.float32
    assert a["features"].shape == (1, 6, L, D) and a["features"].dtype == torch.float16
    assert a["frame_indices"].tolist() == [[1, 4, 7, 10]]
    torch.testing.assert_close(a["timestamps"], torch.tensor([[0.1, 0.4, 0.7, 1.0]],
                                                             dtype=torch.float64))
    with safe_open(str(out / "a.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["source"] == str((root / "a.mp4").resolve())
    assert json.loads(meta["sampler"]) == {"name": "uniform", "num_frames": 4}
    assert len(meta["model_config_hash"]) == 16
    assert (out / "sub" / "b.safetensors").is_file() and (out / "c.safetensors").is_file()
    assert set(_failures(out)) == {"notes.mp4", "empty.webm", "cut.avi", "missing.mp4"}
    printed = capsys.readouterr()
    assert "FAILED" in printed.err + printed.out
    assert "3 extracted, 0 already done, 4 failed of 7 videos" in printed.out


def test_extract_resumes_and_redoes_half_written(videos, tmp_path, capsys):
    root, config = videos
    good = [root / "a.mp4", root / "sub" / "b.mkv", root / "c.avi"]
    out = tmp_path / "out"
    assert _extract(good, out, config, "--sampler", "sliding", "--clip-len", "8",
                    "--stride", "6") == 0
    c = load_file(out / "c.safetensors")
    assert c["frame_indices"].shape == (3, 8)  # 20 frames: clips at 0, 6 and the end
    assert c["frame_indices"][-1, -1] == 19
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    (out / "b.safetensors").write_bytes(b"half a file")  # as a non-atomic writer would leave
    # Left by a killed run: a temporary of a process that has exited. A user's file stays.
    script = "import os, sys\nfrom spool.io_utils import atomic_path\n" \
             "writing = atomic_path(sys.argv[1])\nwriting.__enter__()\nos._exit(0)\n"
    subprocess.run([sys.executable, "-c", script, str(out / "a.safetensors")], check=True)
    assert len(list(out.glob(".a.safetensors.spool-*.tmp"))) == 1
    (out / ".notes.tmp").write_bytes(b"not Spool's")
    capsys.readouterr()
    assert _extract(good, out, config, "--sampler", "sliding", "--clip-len", "8",
                    "--stride", "6") == 0
    assert "1 extracted, 2 already done, 0 failed of 3 videos" in capsys.readouterr().out
    assert [p.name for p in out.glob(".*")] == [".notes.tmp"]
    for path, stamp in stamps.items():
        if path.name != "b.safetensors":
            assert path.stat().st_mtime_ns == stamp, f"{path} was redone"
    assert load_file(out / "b.safetensors")["context"].shape == (2, 2 * D)  # 9 frames
    # Other settings are other outputs: everything is redone.
    capsys.readouterr()
    assert _extract(good, out, config, "--num-frames", "3") == 0
    assert "3 extracted, 0 already done" in capsys.readouterr().out


def test_many_clips_of_one_video_show_their_own_progress(videos, tmp_path, capsys):
    """Sliding windows over one long video are the whole job's time: a bar counts its clips
    (the videos' bar would sit at 0/1)."""
    root, config = videos
    assert main(["extract", str(root / "c.avi"), "--out", str(tmp_path / "out"),
                 *tiny_model_args(config), "--sampler", "sliding", "--clip-len", "4",
                 "--stride", "2", "--batch-size", "2"]) == 0
    err = capsys.readouterr().err
    assert "clips:" in err and "0/9 [" in err  # 20 frames: starts 0, 2, ..., 14 and 16


def test_a_video_that_fails_now_loses_its_earlier_output(videos, tmp_path, capsys):
    """A video extracted before, then replaced by a damaged copy: the failure is reported and
    the output of the earlier version removed (it was left for readers of the folder)."""
    root, config = videos
    video, out = tmp_path / "v.mp4", tmp_path / "out"
    video.write_bytes((root / "a.mp4").read_bytes())
    assert _extract([video], out, config, "--num-frames", "4") == 0
    assert (out / "v.safetensors").is_file()
    video.write_text("damaged\n")
    assert _extract([video], out, config, "--num-frames", "4") == 1
    assert "v.mp4" in _failures(out) and not (out / "v.safetensors").exists()


def test_a_long_name_is_extracted_even_one_too_long_for_its_output(videos, tmp_path):
    """A 240-character name is a valid file, but its claim's and temporaries' names were not:
    the whole run stopped with ENAMETOOLONG before any video was extracted. They are now
    shortened; so is an output name over the limit (246 + 12 characters), which failed."""
    root, config = videos
    for n in (236, 246):
        long = tmp_path / ("v" * n + ".mp4")
        long.write_bytes((root / "a.mp4").read_bytes())
        out = tmp_path / f"out{n}"
        assert _extract([long, root / "a.mp4"], out, config, "--num-frames", "2") == 0
        assert (out / "a.safetensors").is_file()
        names = {p.name for p in out.iterdir()}
        assert (f"{long.stem}.safetensors" in names) == (n == 236)
        assert len(names) == 2 and all(name.startswith("v" * 200) for name in names - {
            "a.safetensors"})
        assert not [name for name in names if name.startswith(".")]  # no leftovers


def test_a_name_that_is_not_utf8_is_extracted(videos, tmp_path):
    """Linux names are bytes: claim names built from one raised UnicodeEncodeError, which
    stopped the whole run."""
    root, config = videos
    odd = tmp_path / os.fsdecode(b"caf\xe9.mp4")
    odd.write_bytes((root / "a.mp4").read_bytes())
    out = tmp_path / "out"
    bad = tmp_path / os.fsdecode(b"bad\xe9.mp4")
    bad.write_text("damaged\n")
    assert _extract([odd, bad, root / "a.mp4"], out, config, "--num-frames", "2") == 1
    assert {p.name for p in out.iterdir()} == {os.fsdecode(b"caf\xe9.safetensors"),
                                               "a.safetensors", "failures.csv"}
    assert list(_failures(out)) == [bad.name]  # the name as the file system has it
    bad.unlink()  # a re-run skips what is done, and drops the row of the deleted video
    done = out / os.fsdecode(b"caf\xe9.safetensors")
    made = done.stat().st_mtime_ns
    assert _extract([odd, root / "a.mp4"], out, config, "--num-frames", "2") == 0
    assert not (out / "failures.csv").exists()
    assert done.stat().st_mtime_ns == made  # safetensors' reader refused the name: redone


def test_dotted_names_keep_their_own_outputs(tmp_path):
    """meeting.2024-01-05.mp4 and meeting.2024-01-06.mp4 both became meeting.safetensors
    (with_suffix cut the date), so one video's features overwrote the other's."""
    for day in ("05", "06"):
        (tmp_path / f"meeting.2024-01-{day}.mp4").touch()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "v1.2.mkv").touch()
    names = sorted(str(job.output.relative_to(tmp_path / "out"))
                   for job in plan_jobs([tmp_path], tmp_path / "out"))
    assert names == ["meeting.2024-01-05.safetensors", "meeting.2024-01-06.safetensors",
                     "sub/v1.2.safetensors"]



def test_a_link_to_a_video_beside_it_gives_the_videos_own_name(tmp_path, spool_log):
    """A folder of zebra.mp4 and a link a_alias.mp4 to it gave one output, a_alias.safetensors
    (the first name sorted), without a word; zebra.safetensors was never written."""
    import logging

    spool_log.set_level(logging.INFO, logger="spool")
    (tmp_path / "zebra.mp4").touch()
    (tmp_path / "a_alias.mp4").symlink_to("zebra.mp4")
    jobs = plan_jobs([tmp_path], tmp_path / "out")
    assert [job.output.name for job in jobs] == ["zebra.safetensors"]
    assert (f"a_alias and zebra name one video ({tmp_path / 'zebra.mp4'}): its features are "
            "saved once, as zebra") in spool_log.text


def test_ranks_split_inputs_without_gaps_or_overlap(videos, tmp_path):
    root, _ = videos
    every = plan_jobs([root], tmp_path)
    shares = [plan_jobs([root], tmp_path, rank, 3) for rank in range(3)]
    flat = [job for share in shares for job in share]
    assert sorted(flat, key=str) == sorted(every, key=str) and len(flat) == len(every)
    assert plan_jobs([root], tmp_path, 1, 3) == shares[1]  # stable


def test_extract_under_torchrun_two_processes(videos, tmp_path):
    root, config = videos
    good = [root / "a.mp4", root / "sub" / "b.mkv", root / "c.avi"]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "spool.cli", "extract", *map(str, good), "--out", str(out),
           *tiny_model_args(config), "--no-progress", "--num-frames", "4", "--device", "cpu"]
    # faulthandler: a rank that aborts prints its Python stack (seen once: SIGABRT, no message).
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    # The head of stderr holds a crashed rank's own message; the tail, torchrun's summary.
    assert proc.returncode == 0, proc.stderr[:6000] + "\n[...]\n" + proc.stderr[-2000:]
    assert "3 extracted, 0 already done, 0 failed of 3 videos" in proc.stdout
    assert "(2 processes)" in proc.stdout
    assert len(list(out.rglob("*.safetensors"))) == 3



_RANK_HAZARDS = """
import functools, os, sys, time
import spool.distributed, spool.extract, spool.extract_inputs
if os.environ["RANK"] == "1":  # the folder changed between the ranks' listings
    listed = spool.extract_inputs.plan_jobs
    spool.extract_inputs.plan_jobs = lambda *a, **k: listed(*a, **k)[1:]
    run = spool.extract.FeatureExtractor.run  # and this rank is slow
    spool.extract.FeatureExtractor.run = lambda *a, **k: (time.sleep(3), run(*a, **k))[1]
spool.distributed.wait_for_ranks = functools.partial(spool.distributed.wait_for_ranks,
                                                     say_every_s=1.0)
from spool.cli import main
sys.exit(main())
"""


def test_torchrun_extract_lists_once_waits_aloud_and_reports_failures(videos, tmp_path):
    """Under torchrun (DDP audit): each rank listed the inputs itself, so a folder that changed
    in between left videos to no rank ("0 failed", exit 0, outputs missing); rank 0 waited for
    a hung rank for 7 days without a word; and a failed video made every rank exit 1, so
    torchrun stopped rank 0 (SIGTERM) in the middle of its report."""
    root, config = videos
    bad = root.parent / "bad.mp4"
    bad.write_bytes(b"not a video")
    inputs = [root / "a.mp4", root / "sub" / "b.mkv", root / "c.avi", bad]
    script = tmp_path / "hazards.py"
    script.write_text(_RANK_HAZARDS)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), "extract", *map(str, inputs), "--out", str(out),
           *tiny_model_args(config), "--no-progress", "--num-frames", "4", "--device", "cpu"]
    import spool

    repo = os.path.dirname(os.path.dirname(spool.__file__))  # the script runs outside it
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1",
               PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr[-4000:]
    assert "3 extracted, 0 already done, 1 failed of 4 videos" in proc.stdout, proc.stderr
    assert len(list(out.rglob("*.safetensors"))) == 3 and (out / "failures.csv").is_file()
    assert "rank 0 finished its share of the videos; waiting 1 min" not in proc.stderr
    assert "waiting 0 min for rank 1 (still working, or hung)" in proc.stderr
    # Rank 0 gave the exit status after its report, not killed in the middle of it (-15).
    assert re.search(r"rank\s+: 0 \(local_rank: 0\)\s+exitcode\s+: 1 ", proc.stderr)

def test_ranks_wait_for_each_other_for_days(videos, tmp_path, monkeypatch):
    """The ranks of spool extract meet only at the end: a rank done with its share hours
    before another waited in torch's default timeout (10 min for NCCL) and the job was
    aborted, its summary lost. It joins the group with a week's wait."""
    import torch.distributed

    root, config = videos
    joined = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda **kwargs: joined.update(kwargs))  # the group stays unformed
    assert _extract([root / "a.mp4"], tmp_path / "o", config, "--num-frames", "4") == 0
    assert joined["backend"] == "gloo" and joined["timeout"].total_seconds() >= 86_400


def test_extract_max_pixels_flag(videos, tmp_path, capsys):
    root, config = videos
    assert _extract([root / "a.mp4"], tmp_path / "o", config, "--max-pixels", "40x30") == 1
    assert "48x32" in capsys.readouterr().out + "".join((tmp_path / "o" / "failures.csv")
                                                        .read_text())
    assert _extract([root / "a.mp4"], tmp_path / "o", config, "--max-pixels", "48x32") == 0
    with pytest.raises(SystemExit) as exit_info:
        _extract([root / "a.mp4"], tmp_path / "o", config, "--max-pixels", "4k")
    assert exit_info.value.code == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_no_videos_is_an_error(videos, tmp_path, capsys):
    _, config = videos
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no videos here")
    assert _extract([tmp_path / "empty"], tmp_path / "o", config) == 2
    assert "no videos in" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "value"), [
    ("--batch-size", "0"), ("--num-frames", "0"), ("--stride", "-1"), ("--clip-len", "0"),
    ("--max-frames", "0"), ("--fps", "0"), ("--fps", "nan"),
])
def test_counts_are_checked_when_parsing(videos, tmp_path, capsys, flag, value):
    root, config = videos
    with pytest.raises(SystemExit) as exit_info:
        _extract([root / "a.mp4"], tmp_path / "o", config, flag, value)
    assert exit_info.value.code == 2
    assert f"argument {flag}: expected" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing ran


@pytest.mark.parametrize(("pair", "message"), [
    ("num_attention_heads=0", "num_attention_heads"), ("image_size=0", "image_size"),
    ("num_hidden_layers=-1", "num_hidden_layers"), ("local_frame_range=x", "local_frame_range"),
    ("num_layers=2", "unknown SpoolConfig field(s) ['num_layers']"),
])
def test_bad_model_fields_are_one_line_errors(videos, tmp_path, capsys, pair, message):
    root, config = videos
    try:
        code = _extract([root / "a.mp4"], tmp_path / "o", config, "--model", pair)
    except SystemExit as exit_info:  # rejected while parsing
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_extractor_rejects_batch_size_zero(tiny_model):
    from spool.extract import FeatureExtractor
    from spool.video import make_sampler

    with pytest.raises(ValueError, match="batch_size: expected a positive integer, got 0"):
        FeatureExtractor(tiny_model, make_sampler("uniform", num_frames=2), batch_size=0)


def test_truncated_matroska_and_webm_are_reported(videos, tmp_path, capsys):
    """Without a frame count in the header, frames ending well before the declared duration
    are a truncation; whole files of every container pass."""
    _, config = videos
    frames = np.random.default_rng(1).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    root = tmp_path / "in"
    for name, codec in (("a.mkv", "ffv1"), ("b.webm", "libvpx-vp9"), ("c.mp4", "libx264"),
                        ("d.avi", "mjpeg"), ("e.mkv", "libx264")):
        write_video(root / name, frames, fps=8, codec=codec)
    _cut_in_half(root, ("a.mkv", "b.webm"))
    assert _extract([root], tmp_path / "o", config, "--num-frames", "2") == 1
    failed = _failures(tmp_path / "o")
    assert set(failed) == {"cut_a.mkv", "cut_b.webm"}
    assert all("truncated: the container declares 5.00 s but frames end at" in m
               for m in failed.values())


def _write_with_audio(path, num_frames: int, fps: int, audio_s: float) -> None:
    """An ffv1 Matroska file of ``num_frames`` noise frames and ``audio_s`` s of silence."""
    from fractions import Fraction

    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        video = container.add_stream("ffv1", rate=fps)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=8000)
        audio.layout = "mono"
        samples, done = int(audio_s * 8000), 0
        for i in range(max(num_frames, int(np.ceil(audio_s * fps)))):  # interleaved
            if i < num_frames:
                frame = av.VideoFrame.from_ndarray(
                    rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                container.mux(video.encode(frame))
            if done < samples:
                k = min(8000 // fps, samples - done)
                chunk = av.AudioFrame.from_ndarray(np.zeros((1, k), np.int16), format="s16",
                                                   layout="mono")
                chunk.sample_rate, chunk.pts, chunk.time_base = 8000, done, Fraction(1, 8000)
                container.mux(audio.encode(chunk))
                done += k
        container.mux(video.encode())
        container.mux(audio.encode())


def test_truncated_matroska_with_audio_is_reported(videos, tmp_path):
    """With an audio stream the container's duration covers the audio, which may outlast the
    video: a file is cut short when all its packets end well before that duration."""
    _, config = videos
    root = tmp_path / "in"
    root.mkdir()
    _write_with_audio(root / "same.mkv", 40, 8, 5.0)
    _write_with_audio(root / "long_audio.mkv", 40, 8, 8.0)  # 3 s of sound after the video
    _cut_in_half(root, ("same.mkv", "long_audio.mkv"))
    assert _extract([root], tmp_path / "o", config, "--num-frames", "2") == 1
    failed = _failures(tmp_path / "o")
    assert set(failed) == {"cut_same.mkv", "cut_long_audio.mkv"}
    assert "the container declares 5.00 s" in failed["cut_same.mkv"]
    assert "the container declares 8.00 s" in failed["cut_long_audio.mkv"]


def test_a_full_disk_stops_the_job_with_one_line(videos, tmp_path, capsys, monkeypatch):
    """safetensors' write error is no OSError: a full disk was blamed on every video in turn
    (each computed, then 'FAILED ... SafetensorError'), and spool cache printed a traceback.
    It is an OSError now, and a full disk stops the job: the next video would fail alike."""
    from safetensors import SafetensorError

    import spool.io_utils as io_utils

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: "
                              "StorageFull, message: \"No space left on device\" }) (os error 28)")

    monkeypatch.setattr(io_utils, "save_file", full)
    root, config = videos
    assert _extract([root / "a.mp4", root / "c.avi"], tmp_path / "out", config,
                    "--num-frames", "2") == 2
    captured = capsys.readouterr()
    assert "FAILED" not in captured.out
    assert captured.err.strip().splitlines()[-1].startswith(
        "spool extract: error: [Errno 28] No space left on device: '")
    # No room for the claim files either: the same one line, not a failure per video.
    import errno

    import spool.extract as extract

    def no_room(output, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(output))

    monkeypatch.setattr(extract, "try_claim", no_room)
    assert _extract([root / "a.mp4", root / "c.avi"], tmp_path / "out", config,
                    "--num-frames", "2") == 2
    assert "FAILED" not in capsys.readouterr().out


def test_a_rate_a_video_cannot_take_fails_it_alone_and_keeps_its_earlier_output(
        videos, tmp_path, capsys):
    """`--fps 5000` (for 5) failed every video and deleted each one's features from the run
    before as stale: the file is what it was. The check depends on each video's own rate (a
    slideshow among 30 fps videos), so each such video fails alone, its output kept."""
    root, config = videos
    out = tmp_path / "out"
    inputs = [root / "a.mp4", root / "c.avi"]
    assert _extract(inputs, out, config, "--fps", "2") == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.safetensors")}
    capsys.readouterr()
    assert _extract(inputs, out, config, "--fps", "5000") == 1
    assert capsys.readouterr().out.count("FAILED") == 2
    assert set(_failures(out)) == {"a.mp4", "c.avi"}
    assert "fps: 5000 fps would take each frame of this video" in _failures(out)["a.mp4"]
    assert {p.name: p.read_bytes() for p in out.glob("*.safetensors")} == before


def test_a_setting_error_stops_the_job_naming_the_video_and_keeps_the_failures(
        videos, tmp_path, capsys, monkeypatch):
    """A ValueError that is no bad video's (a setting, a check) stops the job in one line
    naming the video, keeps earlier outputs, and failures.csv still lists what failed
    before the stop (it was written only when the job ended)."""
    import spool.extract as extract

    extract_one = extract.FeatureExtractor._extract

    def refused(self, job, metadata):
        if job.source.name == "notes.mp4":  # the last, in name order
            raise ValueError("chunk_frames: not a setting this model takes")
        return extract_one(self, job, metadata)

    root, config = videos
    out = tmp_path / "out"
    inputs = [root / "a.mp4", root / "cut.avi", root / "notes.mp4"]
    assert _extract(inputs[:1], out, config, "--num-frames", "2") == 0
    before = (out / "a.safetensors").read_bytes()
    monkeypatch.setattr(extract.FeatureExtractor, "_extract", refused)
    capsys.readouterr()
    assert _extract(inputs, out, config, "--num-frames", "3") == 2
    said = capsys.readouterr()
    assert said.err.strip().splitlines()[-1] == (
        f"spool extract: error: {root / 'notes.mp4'}: chunk_frames: not a setting this model "
        "takes")
    assert set(_failures(out)) == {"cut.avi"}
    assert (out / "a.safetensors").read_bytes() != before  # redone at 3 frames, then stopped


def test_a_bug_is_no_bad_video(videos, tmp_path, capsys, monkeypatch):
    """Any exception counted as a bad video, so a bug printed one FAILED line per video and
    never its traceback, even with --debug."""
    import spool.extract as extract

    def bug(self, job, metadata):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(extract.FeatureExtractor, "_extract", bug)
    root, config = videos
    with pytest.raises(TypeError, match="unsupported operand"):
        _extract([root / "a.mp4", root / "c.avi"], tmp_path / "out", config)
    assert "FAILED" not in capsys.readouterr().out


@pytest.mark.parametrize("error", [
    MemoryError("the pass needs about 90 GB"),
    # torch's CPU allocator, past the up-front estimate (a traceback that ended the job)
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 90 GB")])
def test_a_video_too_long_for_memory_is_skipped(videos, tmp_path, capsys, monkeypatch, error):
    """Out of memory on one video (a long one at --per-frame, say): reported, and the rest of
    the job goes on, as in spool eval."""
    import spool.extract as extract

    extract_one = extract.FeatureExtractor._extract

    def short_of_memory(self, job, metadata):
        if job.source.name == "a.mp4":
            raise error
        return extract_one(self, job, metadata)

    monkeypatch.setattr(extract.FeatureExtractor, "_extract", short_of_memory)
    root, config = videos
    out = tmp_path / "out"
    assert _extract([root / "a.mp4", root / "c.avi"], out, config, "--num-frames", "2") == 1
    assert _failures(out) == {"a.mp4": str(error)}
    assert (out / "c.safetensors").is_file() and not (out / "a.safetensors").exists()
