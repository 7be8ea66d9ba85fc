"""Re-running `spool cache`: a complete cache is reused, a changed command keeps the old cache
until the new one replaces it, and unreadable videos are reported and left out."""

from __future__ import annotations

import csv
import json
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import test_cache
from test_cache import Killed, _dataset, _dataset_of_copies, _decoded
from train_helpers import tiny_video_dataset

from spool.cli import main
from spool.data import cache, token_space
from spool.data.cache import CachedTokenDataset, build_cache
from spool.data.dataset import VideoSample

model, full = test_cache.model, test_cache.full  # test_cache's fixtures, used here too



def test_the_same_command_over_a_complete_cache_reuses_it(model, full, tmp_path: Path,
                                                          monkeypatch) -> None:
    out = tmp_path / "cache"
    shutil.copytree(full, out)
    stamp = (out / "tokens.npy").stat().st_mtime_ns
    seen = _decoded(monkeypatch)
    summary = build_cache(model, _dataset(model), out, batch_size=4)
    assert summary.reused and summary.cached == 16 and seen == []
    assert (out / "tokens.npy").stat().st_mtime_ns == stamp


def test_cli_says_already_done(tmp_path: Path, capsys) -> None:
    root = tiny_video_dataset()
    args = ["cache", "--data", str(root / "val.txt"), "--out", str(tmp_path / "c"), "--model",
            "image_size=32", "--model", "backbone_config=" + json.dumps(
                {"model_type": "dinov2", "hidden_size": 24, "num_hidden_layers": 1,
                 "num_attention_heads": 2, "intermediate_size": 48, "patch_size": 8,
                 "image_size": 32}),
            "--num-frames", "4", "--num-workers", "0", "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0
    assert "spool cache: already done: " in capsys.readouterr().out


def test_a_changed_command_keeps_the_old_cache_until_it_is_replaced(model, full, tmp_path: Path,
                                                                    monkeypatch) -> None:
    out = tmp_path / "cache"
    shutil.copytree(full, out)
    _decoded(monkeypatch, die_at=9)
    with pytest.raises(Killed):  # other settings (2 frames), killed half-way
        build_cache(model, _dataset(model, num_frames=2), out, batch_size=4)
    monkeypatch.undo()
    assert np.array_equal(CachedTokenDataset(out).tokens, np.load(full / "tokens.npy"))
    build_cache(model, _dataset(model, num_frames=2), out, batch_size=4)
    assert CachedTokenDataset(out)[0]["tokens"].shape[0] == 2


def test_killed_while_replacing_the_old_cache(model, full, tmp_path: Path,
                                              monkeypatch) -> None:
    """Between the move of the new tokens and cache.json: the next run finishes the job
    without encoding again."""
    out = tmp_path / "cache"
    shutil.copytree(full, out)

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(cache, "save_frame_encoder", killed)
    with pytest.raises(Killed):
        build_cache(model, _dataset(model, num_frames=2), out, batch_size=4)
    monkeypatch.undo()
    assert not (out / "cache.json").exists()
    seen = _decoded(monkeypatch)
    build_cache(model, _dataset(model, num_frames=2), out, batch_size=4)
    assert seen == [] and CachedTokenDataset(out)[0]["tokens"].shape[0] == 2


def test_no_room_for_both_caches_says_it_starts_over(model, full, tmp_path: Path, monkeypatch,
                                                      spool_log) -> None:
    out = tmp_path / "cache"
    shutil.copytree(full, out)
    usage = namedtuple("usage", "total used free")
    room = (out / "tokens.npy").stat().st_size  # one cache's worth
    monkeypatch.setattr(token_space.shutil, "disk_usage", lambda path: usage(
        10**9, 10**9, room // 2 + (0 if (out / "tokens.npy").exists() else room)))
    build_cache(model, _dataset(model, num_frames=3), out, batch_size=4)  # 3/4 of the room
    assert "removing the old cache and starting over" in spool_log.text
    assert CachedTokenDataset(out).num_frames == 3


def test_a_video_changed_since_is_encoded_again_and_nothing_else(model, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """A video re-encoded or replaced under the same path has other tokens: its row is encoded
    again in place (the cache was reused as it stood before)."""
    dataset = _dataset_of_copies(model, tmp_path / "videos")
    out = tmp_path / "cache"
    before = np.load(build_cache(model, dataset, out, batch_size=4).path / "tokens.npy")
    shutil.copy(dataset.samples[0].path, dataset.samples[3].path)  # video 3 replaced
    seen = _decoded(monkeypatch)
    again = build_cache(model, dataset, out, batch_size=4)
    assert seen == [3] and again.reused and again.changed == 1 and again.retried == 0
    after = np.load(out / "tokens.npy")
    assert np.array_equal(after[3], before[0])
    assert all(np.array_equal(after[i], before[i]) for i in range(16) if i != 3)
    seen.clear()
    assert build_cache(model, dataset, out, batch_size=4).changed == 0 and seen == []
    # A cache.json from before versions were recorded: every video is encoded again, once.
    meta = json.loads((out / "cache.json").read_text())
    del meta["sources"]
    (out / "cache.json").write_text(json.dumps(meta))
    assert build_cache(model, dataset, out, batch_size=4).changed == 16 and seen == list(range(16))


def test_an_unreadable_video_is_reported_and_left_out(model, full, tmp_path: Path,
                                                      spool_log, monkeypatch) -> None:
    bad = tmp_path / "text.mp4"
    bad.write_text("not a video\n")
    dataset = _dataset(model)
    good = list(dataset.samples)
    dataset.samples.insert(5, VideoSample(str(bad), 0))
    out = tmp_path / "cache"
    summary = build_cache(model, dataset, out, batch_size=4)
    assert [f.path for f in summary.failures] == [str(bad)] and summary.cached == 16
    assert [r.message for r in spool_log.records if r.levelname == "WARNING"] == [
        f"FAILED {bad}: VideoDecodeError: {summary.failures[0].message}"]
    cached = CachedTokenDataset(out)
    assert cached.samples == good and cached.meta["failures"][0][0] == str(bad)
    expected = np.load(full / "tokens.npy")
    assert all(np.array_equal(cached[i]["tokens"].numpy(), expected[i, 0]) for i in range(16))
    with open(out / "failures.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "error", "message"] and rows[1][:2] == [str(bad), "VideoDecodeError"]
    again = build_cache(model, dataset, out, batch_size=4)  # the same command: kept, still said
    assert again.reused and [f.path for f in again.failures] == [str(bad)]
    assert again.retried == 1 and not again.relabelled  # tried again, still unreadable

    # The file fixed (a copy of the first video): the same command reads it now, into the row
    # it left unused, and encodes nothing else.
    shutil.copy(good[0].path, bad)
    seen = _decoded(monkeypatch)
    fixed = build_cache(model, dataset, out, batch_size=4)
    assert seen == [5]
    assert fixed.reused and fixed.retried == 1 and fixed.failures == [] and fixed.cached == 17
    assert not fixed.relabelled
    cached = CachedTokenDataset(out)
    assert cached.samples == dataset.samples and not cached.meta["failures"]
    assert np.array_equal(cached[5]["tokens"].numpy(), expected[0, 0])
    assert all(np.array_equal(cached[i + (i >= 5)]["tokens"].numpy(), expected[i, 0])
               for i in range(16))
    assert not (out / "failures.csv").exists()


def test_failures_csv_names_a_relative_video_by_its_resolved_path(model, tmp_path: Path,
                                                                 monkeypatch) -> None:
    """A cache listed a bad video as the annotation file's relative path, which names nothing
    from another working directory; `spool extract` lists resolved paths."""
    monkeypatch.chdir(tmp_path)
    Path("text.mp4").write_text("not a video\n")
    dataset = _dataset(model)
    dataset.samples = [*dataset.samples[:2], VideoSample("text.mp4", 0)]
    summary = build_cache(model, dataset, tmp_path / "cache", batch_size=4)
    with open(tmp_path / "cache" / "failures.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows[1:]] == [str(tmp_path.resolve() / "text.mp4")]
    assert CachedTokenDataset(tmp_path / "cache").meta["failures"][0][0] == rows[1][0]
    assert [f.path for f in summary.failures] == ["text.mp4"]  # as the caller named it


def test_cli_cache_exits_1_naming_the_bad_video(tmp_path: Path, capsys) -> None:
    root = tiny_video_dataset()
    bad = tmp_path / "text.mp4"
    bad.write_text("not a video\n")
    (tmp_path / "list.txt").write_text((root / "val.txt").read_text().replace(
        "videos/", f"{root}/videos/") + f"{bad} grow\n")
    shutil.copy(root / "classes.txt", tmp_path / "classes.txt")
    args = ["cache", "--data", str(tmp_path / "list.txt"), "--out", str(tmp_path / "c"),
            "--model", "image_size=32", "--model", "backbone_config=" + json.dumps(
                {"model_type": "dinov2", "hidden_size": 24, "num_hidden_layers": 1,
                 "num_attention_heads": 2, "intermediate_size": 48, "patch_size": 8,
                 "image_size": 32}), "--num-frames", "4", "--num-workers", "2", "--quiet"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "cached 8 videos" in captured.out
    assert f"listed in {tmp_path / 'c' / 'failures.csv'}" in captured.err
    assert "Traceback" not in captured.err
    assert main(args) == 1  # the same command: the cache is kept, the bad video tried again
    out = capsys.readouterr().out
    assert "already done: " in out
    assert "tried again the 1 that could not be read before (0 read now)" in out


def test_new_labels_classes_or_seed_keep_the_tokens(model, full, tmp_path: Path,
                                                   monkeypatch) -> None:
    """The settings key held the labels, the class names and the seed, which do not change a
    token: fixing one label re-encoded every video. cache.json is rewritten instead."""
    out = tmp_path / "cache"
    shutil.copytree(full, out)
    stamp = (out / "tokens.npy").stat().st_mtime_ns
    seen = _decoded(monkeypatch)
    relabelled = _dataset(model)
    relabelled.samples[3] = VideoSample(relabelled.samples[3].path, 0)
    relabelled.class_names = [*relabelled.class_names, "extra"]
    relabelled.seed = 7  # no augmentation: it picks nothing
    summary = build_cache(model, relabelled, out, batch_size=4)
    assert summary.reused and summary.relabelled  # said: "wrote the new labels into ..."
    assert seen == [] and (out / "tokens.npy").stat().st_mtime_ns == stamp
    assert not build_cache(model, relabelled, out, batch_size=4).relabelled
    cached = CachedTokenDataset(out)
    assert cached.class_names[-1] == "extra" and cached[3]["label"] == 0
    # A cache.json keyed by an earlier version (the labels in its key) is reused too.
    meta = json.loads((out / "cache.json").read_text())
    legacy = {k: v for k, v in meta.items() if k not in ("sources", "settings_key", "failures")}
    (out / "cache.json").write_text(json.dumps({**meta, "settings_key": cache._digest(legacy)}))
    summary = build_cache(model, relabelled, out, batch_size=4)
    assert summary.reused and not summary.relabelled and seen == []  # the same labels
    assert json.loads((out / "cache.json").read_text())["settings_key"] == meta["settings_key"]


def test_a_signal_while_the_progress_is_saved_keeps_the_rows_done(model, full, tmp_path: Path,
                                                                 monkeypatch) -> None:
    """Defect (kill-and-resume review): a Ctrl-C landing while the rows were flushed, before
    the first periodic record, left none: "made with other settings; starting over", and
    every video was encoded again though the CLI had said what was finished was kept."""
    from spool.data.token_rows import PartialTokens

    class Signalled(BaseException):  # as KeyboardInterrupt, which pytest would act on
        pass

    out = tmp_path / "cache"
    real, calls = PartialTokens.save_progress, []

    def save_progress(self, finished: bool = False) -> None:
        calls.append(finished)
        if len(calls) == 1:
            raise Signalled  # the signal, at the start of the save
        real(self, finished)

    monkeypatch.setattr(PartialTokens, "save_progress", save_progress)
    _decoded(monkeypatch, die_at=9)
    with pytest.raises(Signalled):  # the run stops at video 9; the save is interrupted
        build_cache(model, _dataset(model), out, batch_size=4)
    monkeypatch.undo()
    seen = _decoded(monkeypatch)
    build_cache(model, _dataset(model), out, batch_size=4)
    assert seen and min(seen) >= 8  # the batch holding video 9 and after, nothing before
    assert np.array_equal(CachedTokenDataset(out).tokens, np.load(full / "tokens.npy"))


def test_a_lasting_error_saving_the_progress_is_raised_once(model, tmp_path: Path,
                                                           monkeypatch) -> None:
    """Review of my change: the retry after an interrupted save also retried a full disk,
    which raised twice; and a signal followed by a failing retry lost the signal."""
    import errno

    from spool.data import token_rows
    from spool.data.token_rows import PartialTokens

    partial = PartialTokens(tmp_path, (2, 3), np.dtype(np.float16), "key", [None, None])
    partial.write(np.array([0]), np.zeros((1, 3), np.float16))
    calls = []

    def full_disk(*args, **kwargs):
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(token_rows, "atomic_write_text", full_disk)
    with pytest.raises(OSError, match="No space") as caught:
        partial.close()
    assert len(calls) == 1 and caught.value.__context__ is None

    (tmp_path / "b").mkdir()
    partial = PartialTokens(tmp_path / "b", (2, 3), np.dtype(np.float16), "key", [None, None])
    signalled = [KeyboardInterrupt]

    def signal_then_full(*args, **kwargs):
        if signalled:
            raise signalled.pop()()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(token_rows, "atomic_write_text", signal_then_full)
    try:
        partial.close()
    except KeyboardInterrupt:
        pass  # the signal, as asked; the retry's error is only logged
    else:
        raise AssertionError("the signal was lost")


_TINY_BACKBONE = json.dumps({"model_type": "dinov2", "hidden_size": 24, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "intermediate_size": 48,
                             "patch_size": 8, "image_size": 32})


@pytest.mark.parametrize("task", ["clips", "frames"])
def test_the_same_videos_typed_another_way_are_the_same_cache(tmp_path: Path, capsys,
                                                              monkeypatch, task: str) -> None:
    """Found walking the README through: `--data clips/train.txt` then
    `--data /abs/clips/train.txt` rebuilt the whole cache ("made with other settings")."""
    from train_helpers import segmentation_videos

    root = tiny_video_dataset() if task == "clips" else segmentation_videos((320, 360), (15, 30))
    data = root / ("val.txt" if task == "clips" else "test.csv")
    monkeypatch.chdir(root.parent)
    common = ["--out", str(tmp_path / "c"), "--model", "image_size=32", "--model",
              "backbone_config=" + _TINY_BACKBONE, "--quiet"]
    task_args = (["--num-frames", "4", "--num-workers", "0"] if task == "clips"
                 else ["--task", "frames", "--fps", "5"])
    assert main(["cache", "--data", str(data.relative_to(root.parent))] + common
                + task_args) == 0
    capsys.readouterr()
    seen = _decoded(monkeypatch)
    from spool.data import frame_cache_video
    monkeypatch.setattr(frame_cache_video, "VideoReader", lambda path: seen.append(path))
    assert main(["cache", "--data", str(data)] + common + task_args) == 0
    assert seen == []  # no video decoded again
    assert "spool cache: already done: " in capsys.readouterr().out  # frames: "cached in 0.0s"
    if task == "clips":  # another setting is named
        common.remove("--quiet")
        assert main(["cache", "--data", str(data)] + common + ["--num-frames", "2",
                                                               "--num-workers", "0"]) == 0
        assert "other settings (num_frames, sampler, shape)" in capsys.readouterr().out


def test_a_cache_keyed_on_paths_as_typed_is_still_taken(model, tmp_path: Path,
                                                        monkeypatch) -> None:
    """Caches made before the key took the videos' real paths are not made again."""
    import dataclasses
    import os

    def typed_relative():
        dataset = _dataset(model)
        dataset.samples = [dataclasses.replace(s, path=os.path.relpath(s.path))
                           for s in dataset.samples]
        return dataset

    monkeypatch.chdir(tiny_video_dataset())
    key = cache._settings_key
    monkeypatch.setattr(cache, "_settings_key", lambda meta, fixed, resolve=True: key(
        meta, fixed, resolve=False))
    build_cache(model, typed_relative(), tmp_path / "c", batch_size=4)
    monkeypatch.setattr(cache, "_settings_key", key)
    seen = _decoded(monkeypatch)
    assert build_cache(model, typed_relative(), tmp_path / "c", batch_size=4).reused
    assert seen == []


def test_a_video_linked_to_new_content_redoes_its_own_row(model, tmp_path: Path,
                                                          monkeypatch) -> None:
    """Videos that are links to content (git-annex, DVC, hub snapshots): a new version of
    one moves its link. Keying on real paths made that a new cache, every video encoded
    again; only its row is."""
    import dataclasses
    import os

    dataset = _dataset_of_copies(model, tmp_path / "content")
    (tmp_path / "links").mkdir()
    links = []
    for i, sample in enumerate(dataset.samples):
        links.append(tmp_path / "links" / f"{i}{Path(sample.path).suffix}")
        links[-1].symlink_to(sample.path)
    dataset.samples = [dataclasses.replace(s, path=str(link))
                       for s, link in zip(dataset.samples, links, strict=True)]
    build_cache(model, dataset, tmp_path / "c", batch_size=4)
    new = tmp_path / "content" / "new.mp4"
    shutil.copy(os.path.realpath(links[3]), new)
    links[3].unlink()
    links[3].symlink_to(new)
    seen = _decoded(monkeypatch)
    summary = build_cache(model, dataset, tmp_path / "c", batch_size=4)
    assert summary.reused and seen == [3]


def test_the_settings_named_as_changed_are_those_that_changed(tmp_path: Path, capsys) -> None:
    """With augmented views, '(augmentation, dtype)' was said for a new --dtype alone: the
    record's crop_scale is a JSON list, today's a tuple."""
    data = tiny_video_dataset() / "val.txt"
    run = ["cache", "--data", str(data), "--out", str(tmp_path / "c"), "--model",
           "image_size=32", "--model", "backbone_config=" + _TINY_BACKBONE, "--num-frames",
           "4", "--num-workers", "0", "--views", "2"]
    assert main(run) == 0
    capsys.readouterr()
    assert main(run + ["--dtype", "float16"]) == 0
    assert "made with other settings (dtype)" in capsys.readouterr().out


def test_a_cache_with_a_failed_video_names_only_what_changed(tmp_path: Path, capsys) -> None:
    """cache.json's samples leave out the video that could not be read: 'samples' was named
    as changed for every new setting ('(num_frames, sampler, samples, shape)')."""
    root = tiny_video_dataset()
    broken = tmp_path / "broken.mkv"
    broken.write_bytes(b"not a video" * 100)
    lines = [f"{root / p} {label}" for p, label in
             (line.split() for line in (root / "val.txt").read_text().splitlines())]
    lines.insert(3, f"{broken} grow")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    run = ["cache", "--data", str(tmp_path / "list.txt"), "--out", str(tmp_path / "c"),
           "--model", "image_size=32", "--model", "backbone_config=" + _TINY_BACKBONE,
           "--num-workers", "0"]
    assert main(run + ["--num-frames", "4"]) == 1
    capsys.readouterr()
    assert main(run + ["--num-frames", "2"]) == 1
    assert "made with other settings (num_frames, sampler, shape)" in capsys.readouterr().out
    assert main(run + ["--num-frames", "2", "--dtype", "float16"]) == 1
    assert "made with other settings (dtype)" in capsys.readouterr().out


def test_a_kill_while_changed_rows_are_redone_leaves_them_to_redo(model, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """Rows of a changed video were overwritten in place while cache.json still vouched for
    them: killed mid-way, then the old file put back with its mtime (cp -p, a backup), the
    next run said "already done" over the other video's tokens."""
    import os

    from spool.data import token_rows

    dataset = _dataset_of_copies(model, tmp_path / "videos")
    out = tmp_path / "cache"
    build_cache(model, dataset, out, batch_size=4)
    fresh = np.load(out / "tokens.npy")
    path = Path(dataset.samples[3].path)
    backup = tmp_path / "v3.bak"
    shutil.copy2(path, backup)
    shutil.copy(dataset.samples[0].path, path)  # replaced: its row is redone in place
    real = token_rows.RowsToRedo.write

    def killed(self, indices, tokens):
        real(self, indices, tokens)
        raise Killed

    monkeypatch.setattr(token_rows.RowsToRedo, "write", killed)
    with pytest.raises(Killed):
        build_cache(model, dataset, out, batch_size=4)
    monkeypatch.setattr(token_rows.RowsToRedo, "write", real)
    shutil.copy2(backup, path)  # the old file back, size and mtime as cache.json recorded
    os.utime(path, ns=(backup.stat().st_atime_ns, backup.stat().st_mtime_ns))
    again = build_cache(model, dataset, out, batch_size=4)
    assert again.changed == 1
    assert np.array_equal(np.load(out / "tokens.npy"), fresh)


def test_a_partial_cache_of_other_settings_says_which(model, tmp_path: Path, monkeypatch,
                                                      spool_log) -> None:
    """A killed run's partial cache, continued with other settings, was dropped with "made with
    other settings; starting over": hours of work gone, and no word of which setting did it."""
    import logging

    from spool.data import token_rows

    spool_log.set_level(logging.INFO, logger="spool")
    out = tmp_path / "cache"
    monkeypatch.setattr(token_rows, "PROGRESS_EVERY_S", 0.0)
    with monkeypatch.context() as patch, pytest.raises(Killed):  # spool_log's patch stays
        _decoded(patch, die_at=9)
        build_cache(model, _dataset(model, num_frames=4), out, batch_size=4)
    build_cache(model, _dataset(model, num_frames=2), out, batch_size=4)
    assert ("the partial cache there (8 of 16 videos done) was made with other settings "
            "(num_frames, sampler, shape); starting over") in spool_log.text


def test_a_complete_cache_reused_beside_a_partial_one_says_it_is_there(
        model, tmp_path: Path, monkeypatch, spool_log) -> None:
    """A run with other settings killed over a complete cache, then the complete cache's own
    command: "already done", while the killed run's partial file (as large as the cache)
    stayed beside it unmentioned."""
    import logging

    from spool.data import token_rows

    spool_log.set_level(logging.INFO, logger="spool")
    out = tmp_path / "cache"
    build_cache(model, _dataset(model, num_frames=2), out, batch_size=4)
    monkeypatch.setattr(token_rows, "PROGRESS_EVERY_S", 0.0)
    with monkeypatch.context() as patch, pytest.raises(Killed):
        _decoded(patch, die_at=9)
        build_cache(model, _dataset(model, num_frames=4), out, batch_size=4)
    partial = out / token_rows.PARTIAL_NAME
    assert partial.is_file()
    spool_log.clear()
    assert build_cache(model, _dataset(model, num_frames=2), out, batch_size=4).reused
    assert (f"{out}: {token_rows.PARTIAL_NAME} (" in spool_log.text
            and "holds an unfinished cache of other settings, kept so that their command "
                "resumes it; delete it and .tokens.progress.json to free the space"
            in spool_log.text)
    assert partial.is_file()  # the killed command still resumes it
