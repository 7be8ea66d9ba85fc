"""Two extraction jobs on one output folder split the videos: each is extracted exactly once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_backbone, tiny_config, tiny_model_args
from safetensors.torch import load_file

import spool.io_utils as io_utils
from spool import Spool, claims
from spool.commands.extract import remove_stale_temporaries
from spool.extract import FeatureExtractor
from spool.extract_inputs import plan_jobs
from spool.io_utils import Claim, atomic_path, claim_path, release_claim, try_claim
from spool.video import make_sampler, write_video

EXTRA_ARGS = ["--no-progress", "--num-frames", "2", "--device", "cpu"]  # children see any GPU


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)  # exited and reaped: no process has this id now (barring reuse)


def _write_videos(folder: Path, n: int) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for i in range(n):
        write_video(folder / f"v{i:02d}.mp4", frames, fps=10)


def test_claims(tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    claim = try_claim(out)
    assert claim is not None and claim.path == claim_path(out)
    assert claim.path == tmp_path / ".x.safetensors.spool-claim"
    record = json.loads(claim.path.read_text())
    assert record["pid"] == os.getpid() and record["host"]
    assert try_claim(out) is None  # held by a live process
    release_claim(claim)
    assert not claim.path.exists()
    # A claim of a process that has exited, on this machine, is taken over.
    claim.path.write_text(json.dumps(dict(record, pid=_dead_pid())))
    taken = try_claim(out)
    assert taken is not None and json.loads(taken.path.read_text())["pid"] == os.getpid()
    release_claim(taken)
    # Another machine: only an old claim is stale.
    other = dict(record, host="elsewhere", time=time.time())
    claim.path.write_text(json.dumps(other))
    assert try_claim(out) is None
    claim.path.write_text(json.dumps(dict(other, time=time.time() - 7 * 3600)))
    assert try_claim(out) is not None
    # A claim file cut short (being written, or by a crash) is stale only once old.
    claim.path.write_text("")
    assert try_claim(out) is None
    os.utime(claim.path, (time.time() - 120, time.time() - 120))
    assert try_claim(out) is not None
    # The PID of a claim given to a later process (a restarted container's PID 1, reuse): the
    # start time differs, so the claim is stale (it counted as live forever).
    claim.path.write_text(json.dumps(dict(record, start=1)))
    retaken = try_claim(out)
    assert retaken is not None
    release_claim(retaken)
    # A takeover's ".break" left by a crash, once old, no longer fails the next attempt.
    claim.path.write_text(json.dumps(dict(record, pid=_dead_pid())))
    brk = claim.path.with_name(claim.path.name + ".break")
    brk.touch()
    assert try_claim(out) is None  # a takeover may be under way
    os.utime(brk, (time.time() - 120, time.time() - 120))
    assert try_claim(out) is None and not brk.exists()  # removed: the next attempt proceeds
    assert try_claim(out) is not None


def test_clean_up_removes_only_spool_files_of_dead_processes(tmp_path: Path) -> None:
    # A killed job's temporary: created through atomic_path by a process that then died.
    script = ("import os, sys\nfrom spool.io_utils import atomic_path\n"
              "writing = atomic_path(sys.argv[1])\nwriting.__enter__()\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "dead.safetensors")],
                   check=True)
    (dead_tmp,) = tmp_path.glob(".dead.safetensors.spool-*.tmp")
    user = [tmp_path / ".notes.tmp", tmp_path / ".a.safetensors.x1y2.tmp"]
    for path in user:
        path.write_text("a user's file")
    dead_claim = claim_path(tmp_path / "gone.safetensors")
    dead_claim.write_text(json.dumps({"host": claims._HOST, "boot": claims._BOOT,
                                      "pid": _dead_pid(), "time": 0, "token": "t"}))
    live_claim = try_claim(tmp_path / "busy.safetensors")
    with atomic_path(tmp_path / "live.safetensors") as live_tmp:
        Path(live_tmp).write_bytes(b"being written")
        assert remove_stale_temporaries(tmp_path) == 2  # dead_tmp and dead_claim
        assert Path(live_tmp).exists()
    assert not dead_tmp.exists() and not dead_claim.exists()
    assert all(path.exists() for path in user) and live_claim.path.exists()
    assert (tmp_path / "live.safetensors").read_bytes() == b"being written"


def test_two_extractors_interleaved_extract_each_video_once(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    _write_videos(videos, 5)
    jobs = plan_jobs([videos], out)
    model = Spool(tiny_config()).eval()
    first, second = (FeatureExtractor(model, make_sampler("uniform", num_frames=2))
                     for _ in range(2))
    calls: Counter[str] = Counter()
    summaries = {}

    def counting(extractor: FeatureExtractor):
        original = extractor.features

        def features(source: Path):
            calls[source.name] += 1
            if extractor is first and "second" not in summaries:
                # The second job starts while the first is inside its first video.
                remove_stale_temporaries(out)
                summaries["second"] = second.run(jobs, progress=False)
            return original(source)
        return features

    monkeypatch.setattr(first, "features", counting(first))
    monkeypatch.setattr(second, "features", counting(second))
    save_file = io_utils.save_file

    def save_then_clean(tensors, tmp, metadata=None) -> None:
        save_file(tensors, tmp, metadata=metadata)
        remove_stale_temporaries(out)  # another job's start-up, between writing and renaming

    monkeypatch.setattr(io_utils, "save_file", save_then_clean)
    summaries["first"] = first.run(jobs, progress=False)
    assert calls == Counter({job.source.name: 1 for job in jobs})
    a, b = summaries["first"], summaries["second"]
    assert (a.done, a.skipped, a.elsewhere, a.failed) == (1, 4, 0, 0)
    assert (b.done, b.skipped, b.elsewhere, b.failed) == (4, 0, 1, 0)
    for job in jobs:
        assert load_file(job.output)["context"].shape[0] == 1
    assert not list(out.glob(".*"))  # no claims or temporaries left


def test_two_processes_share_an_output_folder(tmp_path: Path) -> None:
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    _write_videos(videos, 24)
    config = tmp_path / "backbone.json"
    config.write_text(json.dumps(tiny_backbone()))
    cmd = [sys.executable, "-m", "spool.cli", "extract", str(videos), "--out", str(out),
           *tiny_model_args(config), *EXTRA_ARGS]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    results = [proc.communicate(timeout=300) for proc in procs]
    extracted = 0
    for proc, (stdout, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr[-2000:]
        assert "Traceback" not in stderr
        extracted += int(re.search(r"(\d+) extracted", stdout)[1])
    assert extracted == 24
    assert len(list(out.glob("*.safetensors"))) == 24
    assert not list(out.glob(".*"))


def test_a_live_holder_renews_its_claim_against_other_machines(tmp_path: Path,
                                                               monkeypatch) -> None:
    """Another machine judges a claim by its age: a live run's lock was taken after 6 hours.
    The holder's heartbeat (refresh_claim; the trainer's every RENEW_EVERY_S) renews it."""
    out = tmp_path / "run.lock"
    claim = try_claim(out)
    record = json.loads(claim.path.read_text())
    claim.path.write_text(json.dumps(dict(record, time=time.time() - 7 * 3600)))
    assert claims.refresh_claim(claim)
    monkeypatch.setattr(claims, "_HOST", "another-machine")  # now seen from elsewhere
    assert try_claim(out) is None  # renewed: live
    assert json.loads(claim.path.read_text())["token"] == claim.token
    assert [p.name for p in tmp_path.iterdir()] == [claim.path.name]  # no temporary left
    stolen = Claim(claim.path, "not-ours")
    assert not claims.refresh_claim(stolen)


def test_videos_claimed_elsewhere_are_counted_with_what_to_do(tmp_path: Path, capsys) -> None:
    """A claim from elsewhere (or from before a reboot) is left alone for hours: the summary
    says which files hold them and when they count as stale, not only a count."""
    from spool.cli import main

    frames = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    videos = [write_video(tmp_path / f"{n}.mkv", frames, fps=5, codec="ffv1") for n in "ab"]
    (tmp_path / "bb.json").write_text(json.dumps(tiny_backbone()))
    out = tmp_path / "out"
    out.mkdir()
    claim = try_claim(out / "a.safetensors")
    record = json.loads(claim.path.read_text())
    claim.path.write_text(json.dumps(dict(record, host="elsewhere", time=time.time())))
    args = ["extract", *map(str, videos), "--out", str(out), *EXTRA_ARGS,
            *tiny_model_args(tmp_path / "bb.json")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "1 extracted, 0 already done, 1 claimed by another job" in printed
    assert ".NAME.spool-claim" in printed and "6 h" in printed and "delete those" in printed


def test_a_take_over_lock_of_a_dead_process_is_removed_at_once(tmp_path: Path) -> None:
    """A ".break" a crash left stopped every release for a minute: the release gave up after
    2 s and left its claim to block other machines for 6 hours. The lock now says whose it is,
    and one of a dead process of this machine is removed at once."""
    claim = try_claim(tmp_path / "out.safetensors")
    brk = claim.path.with_name(claim.path.name + ".break")
    brk.write_text(json.dumps({"host": claims._HOST, "boot": claims._BOOT,
                               "pidns": claims._PIDNS, "pid": _dead_pid(),
                               "time": time.time()}))
    release_claim(claim)
    assert not claim.path.exists() and not brk.exists()
    # One of a live process (this one, taking a claim over now) is waited for, as before.
    claim = try_claim(tmp_path / "out.safetensors")
    brk.write_text(json.dumps({"host": claims._HOST, "boot": claims._BOOT,
                               "pidns": claims._PIDNS, "pid": os.getpid(),
                               "time": time.time(), "start": claims.process_start(os.getpid())}))
    release_claim(claim)
    assert claim.path.exists() and brk.exists()


def test_a_job_meeting_a_claim_for_another_video_of_the_same_name_reports_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two jobs over two folders into one --out, each with a v00.mp4: the second, meeting the
    first's claim on v00.safetensors, counted it as being done elsewhere (exit 0), and its own
    video was never extracted. Now it is a failure, as the same clash is without the overlap."""
    out = tmp_path / "out"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        _write_videos(tmp_path / folder, 1)
    model = Spool(tiny_config()).eval()
    first, second = (FeatureExtractor(model, make_sampler("uniform", num_frames=2))
                     for _ in range(2))
    summaries = {}
    features = first.features

    def meanwhile(source: Path):
        if "second" not in summaries:  # while the first job holds the claim
            summaries["second"] = second.run(plan_jobs([tmp_path / "b"], out), progress=False)
        return features(source)

    monkeypatch.setattr(first, "features", meanwhile)
    summaries["first"] = first.run(plan_jobs([tmp_path / "a"], out), progress=False)
    a, b = summaries["first"], summaries["second"]
    assert (a.done, a.failed) == (1, 0)
    assert (b.done, b.elsewhere, b.failed) == (0, 0, 1)
    source, error, message = b.failures[0]
    assert source == str(tmp_path / "b" / "v00.mp4") and error == "FileExistsError"
    assert f"is writing the features of {tmp_path / 'a' / 'v00.mp4'}, another video" in message
