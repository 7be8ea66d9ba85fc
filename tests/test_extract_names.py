"""Output names of `spool extract`: a video found twice is one job; a name near the file-name
limit is shortened; another video's output of the same name is not overwritten."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import tiny_config

from spool.extract import FeatureExtractor
from spool.extract_inputs import plan_jobs
from spool.models.spool import Spool
from spool.video import write_video
from spool.video.samplers import UniformSampler


def _video(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.random.default_rng(seed).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    return write_video(path, frames, fps=10, codec="ffv1")


def _extractor() -> FeatureExtractor:
    torch.manual_seed(0)
    return FeatureExtractor(Spool(tiny_config()).eval(), UniformSampler(2))


def test_a_video_in_a_folder_and_a_list_is_one_job(tmp_path: Path) -> None:
    """Named by both, it was extracted twice (as sub/clip and as clip)."""
    video = _video(tmp_path / "videos" / "sub" / "clip.mkv")
    (tmp_path / "list.txt").write_text("videos/sub/clip.mkv\n")
    jobs = plan_jobs([tmp_path / "videos", tmp_path / "list.txt"], tmp_path / "out")
    assert [(j.source, j.output) for j in jobs] == [
        (video, tmp_path / "out" / "sub" / "clip.safetensors")]


def test_a_name_near_the_limit_is_shortened(tmp_path: Path) -> None:
    """248 bytes + .mp4 is a legal name; + .safetensors is not (Errno 36)."""
    video = _video(tmp_path / ("L" * 248 + ".mkv"))
    (job,) = plan_jobs([video], tmp_path / "out")
    assert len(job.output.name.encode()) + len(".segments.csv") - len(".safetensors") <= 255
    assert job.output.name.startswith("L" * 200) and job.output.name.endswith(".safetensors")
    summary = _extractor().run([job], progress=False)
    assert summary.done == 1 and job.output.is_file()
    short = plan_jobs([_video(tmp_path / "short.mkv")], tmp_path / "out")[0]
    assert short.output.name == "short.safetensors"  # names that fit are kept as they are
    # Two of them from different folders: looking for the plain name's holder raised
    # ENAMETOOLONG and ended the whole job; both are planned, and the one an earlier run
    # wrote (under the shortened name) keeps it.
    other = _video(tmp_path / "b" / ("L" * 248 + ".mkv"), 1)
    jobs = plan_jobs([video, other], tmp_path / "out")
    assert [j.output for j in jobs if j.source == video.resolve()] == [job.output]
    assert len({j.output for j in jobs}) == 2


def test_another_videos_output_of_the_same_name_is_not_overwritten(tmp_path: Path) -> None:
    """c1/clip.mkv then c2/clip.mkv into one folder: the second silently replaced the first's
    features, and each later run redid both."""
    first = _video(tmp_path / "c1" / "clip.mkv", 0)
    second = _video(tmp_path / "c2" / "clip.mkv", 1)
    out = tmp_path / "out"
    assert _extractor().run(plan_jobs([first], out), progress=False).done == 1
    before = (out / "clip.safetensors").read_bytes()
    summary = _extractor().run(plan_jobs([second], out), progress=False)
    assert summary.done == 0 and len(summary.failures) == 1
    assert "holds the features of" in summary.failures[0][2]
    assert (out / "clip.safetensors").read_bytes() == before
    assert _extractor().run(plan_jobs([first], out), progress=False).skipped == 1
    # Both in one run: each gets a digest of its path, and nothing is refused.
    summary = _extractor().run(plan_jobs([first, second], tmp_path / "both"), progress=False)
    assert summary.done == 2 and not summary.failures
    assert sorted(p.name[:5] for p in (tmp_path / "both").glob("*.safetensors")) == [
        "clip-", "clip-"]
    # Added to the first's folder: the first keeps the name it has (it was renamed, redone,
    # and its old file left for a reader to find), the second gets a digest.
    jobs = plan_jobs([first, second], out)
    assert [j.output.name for j in jobs][0] == "clip.safetensors"
    assert jobs[1].output.name.startswith("clip-")
    summary = _extractor().run(jobs, progress=False)
    assert (summary.skipped, summary.done) == (1, 1)
    # A video that was moved away is not "another video": its old output is redone.
    first.rename(tmp_path / "c1" / "moved.mkv")
    assert _extractor().run(plan_jobs([second], out), progress=False).done == 1


def test_hidden_files_and_folders_are_not_scanned(tmp_path: Path) -> None:
    """macOS leaves ._NAME.mp4 beside each copied video (not a video): each was reported as a
    failed video. Hidden names are skipped in folder scans, as glob skips them; a hidden file
    named on its own is still taken."""
    from spool.data.dataset import scan_class_folders

    videos = tmp_path / "videos"
    real = _video(videos / "a" / "clip.mkv")
    (videos / "a" / "._clip.mkv").write_bytes(b"\0\5\26\7 AppleDouble")
    _video(videos / "a" / ".cache" / "thumb.mkv")
    _video(videos / ".trash" / "old.mkv")
    assert [j.source for j in plan_jobs([videos], tmp_path / "out")] == [real]
    samples, names = scan_class_folders(videos)
    assert names == ["a"] and [s.path for s in samples] == [str(real)]
    hidden = videos / "a" / "._clip.mkv"
    assert [j.source for j in plan_jobs([hidden], tmp_path / "out")] == [hidden]
