"""What ``spool extract`` takes as input: links, FIFOs, list files; nothing hangs or is skipped."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_backbone, tiny_model_args

from spool.extract_inputs import collect_inputs
from spool.video import write_video

EXTRA_ARGS = ["--no-progress", "--num-frames", "2", "--device", "cpu"]  # children see any GPU


def _names(inputs: list[Path]) -> list[str]:
    return [name.as_posix() for _, name in collect_inputs(inputs)]


def test_directory_links_are_followed_once(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "real").mkdir(parents=True)
    (elsewhere / "deep").mkdir(parents=True)
    for path in (root / "a.mp4", root / "real" / "b.mkv", elsewhere / "c.mp4",
                 elsewhere / "deep" / "d.webm", root / "notes.txt"):
        path.write_bytes(b"")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    (root / "real" / "loop").symlink_to(root, target_is_directory=True)  # a cycle
    (elsewhere / "back").symlink_to(root / "real", target_is_directory=True)  # seen already
    assert _names([root]) == ["a", "linked/c", "linked/deep/d", "real/b"]


def test_fifos_and_broken_links_are_listed_to_be_reported(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.mp4")
    (tmp_path / "broken.mp4").symlink_to(tmp_path / "gone.mp4")
    (tmp_path / "unrelated_broken").symlink_to(tmp_path / "gone")
    assert _names([tmp_path]) == ["broken", "pipe"]


def test_list_file_comments_hashes_and_byte_order_mark(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    lines = ["first.mp4", "# a comment", "   # an indented comment", "#leading.mp4",
             "./#leading.mp4", "hash#1.mp4", "  spaced.mp4  ", ""]
    listing.write_text("\n".join(lines), encoding="utf-8-sig")
    found = collect_inputs([listing])
    assert [name.as_posix() for _, name in found] == ["first", "#leading", "hash#1", "spaced"]
    assert [src for src, _ in found] == [tmp_path / n for n in
                                         ("first.mp4", "#leading.mp4", "hash#1.mp4",
                                          "spaced.mp4")]


def test_extract_reports_fifo_and_broken_link_without_hanging(tmp_path: Path) -> None:
    videos, elsewhere = tmp_path / "videos", tmp_path / "elsewhere"
    videos.mkdir()
    frames = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for path in (videos / "good.mp4", elsewhere / "linked.mp4", tmp_path / "hash#1.mp4",
                 tmp_path / "#leading.mp4"):
        write_video(path, frames, fps=10)
    (videos / "sub").symlink_to(elsewhere, target_is_directory=True)
    os.mkfifo(videos / "pipe.mp4")  # opening it for reading would block forever
    (videos / "broken.mp4").symlink_to(tmp_path / "deleted.mp4")
    listing = tmp_path / "list.txt"
    listing.write_text("# made by hand\nhash#1.mp4\n./#leading.mp4\n", encoding="utf-8-sig")
    config = tmp_path / "backbone.json"
    config.write_text(json.dumps(tiny_backbone()))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "spool.cli", "extract", str(videos), str(listing),
           "--out", str(out), *tiny_model_args(config), *EXTRA_ARGS]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "4 extracted, 0 already done, 2 failed of 6 videos" in proc.stdout
    with open(out / "failures.csv") as f:
        failed = {Path(row["path"]).name: row["message"] for row in csv.DictReader(f)}
    assert failed.keys() == {"pipe.mp4", "broken.mp4"}
    assert "not a video file: a FIFO" in failed["pipe.mp4"]
    assert "missing target" in failed["broken.mp4"]
    for name in ("good", "sub/linked", "hash#1", "#leading"):
        assert (out / f"{name}.safetensors").is_file(), name


def test_failures_of_deleted_videos_go_and_other_jobs_rows_stay(tmp_path: Path) -> None:
    """failures.csv kept the row of a video deleted since it failed, forever: a job now drops
    the rows of gone videos it covers (under its input folder, or beside a video it names),
    and keeps those of other jobs sharing the output folder, gone or not."""
    from spool.cli import main

    mine, other, out = tmp_path / "mine", tmp_path / "other", tmp_path / "out"
    (mine / "sub").mkdir(parents=True)
    other.mkdir()
    for path in (mine / "a.mp4", mine / "sub" / "b.mp4", mine / "c.mp4", other / "d.mp4"):
        path.write_text("not a video\n")  # each fails to decode: a row in failures.csv
    config = tmp_path / "backbone.json"
    config.write_text(json.dumps(tiny_backbone()))

    def extract(folder: Path) -> int:
        return main(["extract", str(folder), "--out", str(out), *tiny_model_args(config),
                     *EXTRA_ARGS])

    def listed() -> set[str]:
        with open(out / "failures.csv", newline="") as f:
            return {Path(row["path"]).relative_to(tmp_path).as_posix()
                    for row in csv.DictReader(f)}

    # A list covers the folders of the videos it names: e.mp4, deleted and unlisted, goes.
    (tmp_path / "picked").mkdir()
    for name in ("e.mp4", "f.mp4"):
        (tmp_path / "picked" / name).write_text("not a video\n")
    picks = tmp_path / "picks.txt"
    picks.write_text("picked/e.mp4\npicked/f.mp4\n")
    assert extract(picks) == 1
    (tmp_path / "picked" / "e.mp4").unlink()
    picks.write_text("picked/f.mp4\n")
    assert extract(picks) == 1
    assert listed() == {"picked/f.mp4"}

    assert extract(mine) == 1 and extract(other) == 1
    assert listed() == {"mine/a.mp4", "mine/sub/b.mp4", "mine/c.mp4", "other/d.mp4",
                        "picked/f.mp4"}
    (mine / "a.mp4").unlink()
    (mine / "sub" / "b.mp4").unlink()
    (mine / "sub").rmdir()  # a whole sub-folder gone
    (other / "d.mp4").unlink()  # another job's: its row stays until that job runs again
    assert extract(mine) == 1
    assert listed() == {"mine/c.mp4", "other/d.mp4", "picked/f.mp4"}
    (mine / "c.mp4").unlink()  # nothing left to extract: still no stale row
    assert extract(mine) == 2
    assert listed() == {"other/d.mp4", "picked/f.mp4"}
    (tmp_path / "picked" / "f.mp4").unlink()
    assert extract(other) == 2 and extract(picks) == 1  # f.mp4 is named: it fails, missing
    assert listed() == {"picked/f.mp4"}
    assert not list(out.glob(".*"))  # no temporaries or claims left


def test_a_list_that_does_not_exist_is_an_error_not_a_bad_video(tmp_path: Path, capsys,
                                                                monkeypatch) -> None:
    """`spool extract nolist.txt` reported one failed video, "No such video file"."""
    from spool.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="No such list of videos"):
        collect_inputs(["nolist.txt"])
    (tmp_path / "bb.json").write_text(json.dumps(tiny_backbone()))
    assert main(["extract", "nolist.txt", "--out", "o", *tiny_model_args("bb.json")]) == 2
    assert "error: [Errno 2] No such list of videos: 'nolist.txt'" in capsys.readouterr().err


def test_a_segments_csv_gives_its_videos(tmp_path: Path) -> None:
    """spool cache, train and eval take a segments CSV; spool extract read it as a video and
    failed it ('cannot open as a video file'). Its video column is read, each video once,
    relative to the CSV as training reads it."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "data.csv").write_text(
        "video,start_s,end_s,label\nvideos/a b.mp4,0,1,x\nvideos/a b.mp4,1,2,y\n"
        f"./videos/c.mp4,0,3,x\n{tmp_path / 'd.mkv'},0,1,y\n videos/e.mp4,0,1,x\n")
    assert collect_inputs([tmp_path / "data.csv"]) == [
        (tmp_path / "videos/a b.mp4", Path("a b")), (tmp_path / "videos/c.mp4", Path("c")),
        (tmp_path / "d.mkv", Path("d")),
        (tmp_path / " videos/e.mp4", Path("e"))]  # as training reads it: not stripped
    (tmp_path / "other.csv").write_text("path,label\na.mp4,x\n")
    with pytest.raises(ValueError, match=r"other.csv: expected a CSV with a 'video' column .* "
                                         r"found 'path,label'"):
        collect_inputs([tmp_path / "other.csv"])
    with pytest.raises(FileNotFoundError):
        collect_inputs([tmp_path / "missing.csv"])
