"""Atomic writes: the mode ``open()`` would give, data synced before the rename."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from spool.io_utils import (
    atomic_path,
    atomic_save_safetensors,
    atomic_write,
    claim_path,
    merge_failures,
    write_failures,
)


def _writers(tmp_path: Path) -> dict[str, Path]:
    out = {"text": tmp_path / "a.json", "tensors": tmp_path / "b.safetensors",
           "csv": tmp_path / "failures.csv"}
    atomic_write(out["text"], lambda p: Path(p).write_text("{}"))
    atomic_save_safetensors({"x": torch.zeros(2)}, out["tensors"])
    write_failures(out["csv"], [("a.mp4", "VideoDecodeError", "bad")])
    return out


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_mode_the_umask_gives(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        written = _writers(tmp_path)
        (tmp_path / "plain").write_text("as open() makes it")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == want
    for kind, path in written.items():
        assert stat.S_IMODE(path.stat().st_mode) == want, kind
    assert not list(tmp_path.glob(".*.tmp"))


def test_file_is_synced_before_the_rename_and_the_folder_after(tmp_path: Path,
                                                              monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def spy_replace(src, dst) -> None:
        events.append(("replace", os.fspath(src)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    target = tmp_path / "out.bin"
    with atomic_path(target) as tmp:
        Path(tmp).write_bytes(b"payload")
    assert events == [("fsync", tmp), ("replace", tmp), ("fsync", str(tmp_path))]
    assert target.read_bytes() == b"payload"


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.bin") as tmp:
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("writer died")
    assert list(tmp_path.iterdir()) == []


def test_failures_csv_lists_the_failures_and_goes_when_none_are_left(tmp_path: Path) -> None:
    path = tmp_path / "failures.csv"
    write_failures(path, [("a.mp4", "VideoDecodeError", "bad, really")])
    assert path.read_text().splitlines() == ["path,error,message",
                                             'a.mp4,VideoDecodeError,"bad, really"']
    write_failures(path, [])  # a later run where every video read
    assert not path.exists()


def test_jobs_sharing_a_folder_keep_each_others_failures(tmp_path: Path) -> None:
    """Job B finishing after job A left A's failures alone (it wrote its own list over it)."""
    path = tmp_path / "failures.csv"
    write_failures(path, [("a.mp4", "VideoDecodeError", "bad"), ("b.mp4", "OSError", "gone")])
    # This job read a.mp4 now (fixed since), failed on c.mp4, never saw b.mp4 (another job's).
    assert merge_failures(path, [("c.mp4", "VideoDecodeError", "cut")], ["a.mp4"]) == 2
    assert path.read_text().splitlines() == ["path,error,message", "b.mp4,OSError,gone",
                                             "c.mp4,VideoDecodeError,cut"]
    assert merge_failures(path, [("b.mp4", "OSError", "again")], []) == 2  # replaced, not doubled
    assert "b.mp4,OSError,again" in path.read_text().splitlines()
    assert merge_failures(path, [], ["b.mp4", "c.mp4"]) == 0 and not path.exists()
    assert not claim_path(path).exists()  # the turn is given back


def test_claims_and_temporaries_of_names_near_the_limit_fit(tmp_path):
    """A name up to the file system's limit gets a claim and temporaries whose names fit (a
    prefix and a digest of the whole name), distinct for names that share that prefix."""
    from spool.claims import claim_path, is_stale_temporary, temporary_sibling

    names = ["é" * 120 + "a.safetensors", "é" * 120 + "b.safetensors", "v" * 255,
             os.fsdecode(b"caf\xe9.safetensors"), os.fsdecode(b"\xe9" * 250)]  # not UTF-8
    claims = [claim_path(tmp_path / name) for name in names]
    assert len({c.name for c in claims}) == len(names)
    assert claims[0] == claim_path(tmp_path / names[0])  # the same output, the same claim
    for name, claim in zip(names, claims, strict=True):
        assert len(os.fsencode(claim.name)) <= 255
        claim.write_text("")  # the file system takes it
        tmp = temporary_sibling(tmp_path / name)
        assert len(os.fsencode(tmp.name)) <= 255 and tmp.parent == tmp_path
        tmp.write_text("")
        assert not is_stale_temporary(tmp)  # its writer (this process) is alive
    short = tmp_path / "a.safetensors"
    assert claim_path(short).name == ".a.safetensors.spool-claim"


def test_rows_of_covered_videos_that_are_gone_go(tmp_path: Path) -> None:
    """Only a row whose video the job covers and that no longer exists is dropped."""
    path = tmp_path / "failures.csv"
    (tmp_path / "here.mp4").write_text("still here")
    rows = [(str(tmp_path / n), "OSError", "bad") for n in ("here.mp4", "gone.mp4", "other.mp4")]
    write_failures(path, rows)
    mine = {str(tmp_path / "here.mp4"), str(tmp_path / "gone.mp4")}
    assert merge_failures(path, [], [], covers=mine.__contains__) == 2
    assert [r.split(",")[0] for r in path.read_text().splitlines()[1:]] == [
        str(tmp_path / "here.mp4"), str(tmp_path / "other.mp4")]


def test_saved_tensors_are_the_same_bytes_every_time(tmp_path):
    """safetensors writes metadata from a hash map whose order changes with every call: the
    same tensors and metadata gave different bytes (8 saves, 8 files)."""
    from safetensors.torch import load_file, safe_open

    from spool.io_utils import atomic_save_safetensors

    tensors = {"t": torch.zeros(2), "a": torch.arange(3)}
    metadata = {"video": "a", "source": "b", "settings": "c", "name": "café"}
    files = set()
    for i in range(8):
        atomic_save_safetensors(tensors, tmp_path / f"{i}.safetensors", metadata=metadata)
        files.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(files) == 1
    loaded = load_file(tmp_path / "0.safetensors")
    assert torch.equal(loaded["a"], tensors["a"]) and torch.equal(loaded["t"], tensors["t"])
    with safe_open(str(tmp_path / "0.safetensors"), "pt") as f:
        assert f.metadata() == metadata


def test_a_full_disk_names_the_file_it_was_writing(tmp_path):
    """'[Errno 28] No space left on device' alone did not say which disk (--out or
    --offload-dir) was full."""
    import errno

    from spool.io_utils import atomic_path, atomic_write_text

    with pytest.raises(OSError) as caught:
        with atomic_path(tmp_path / "state.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(tmp_path / "state.json")
    assert list(tmp_path.iterdir()) == []
    atomic_write_text(tmp_path / "ok.txt", "x")  # others pass as they are
