"""Which claims and temporaries are stale: a PID is checked only where it names the same
process (this host name, boot and PID namespace); anywhere else a claim is judged by its age."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import spool
from spool import claims
from spool.claims import claim_path, is_stale_temporary, release_claim, try_claim
from spool.commands.extract import remove_stale_temporaries

OLD = time.time() - 7 * 3600  # older than STALE_AFTER_S


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)  # exited and reaped: no process has this id now (barring reuse)


def _take(out: Path) -> None:
    claim = try_claim(out)
    assert claim is not None
    release_claim(claim)


def _age(path: Path, seconds: float) -> None:
    os.utime(path, (time.time() - seconds, time.time() - seconds))


# A job elsewhere that claims an output, writes its temporary and (as seen from here, where
# its PID names no process) is gone: another PID namespace (a container, ``unshare -p``) or
# another machine of the same host name, whose identity the job reads from /proc.
_ELSEWHERE = """
import os, pathlib, sys
pidns, boot, out = sys.argv[1:]
readlink, read_text = os.readlink, pathlib.Path.read_text
os.readlink = lambda p, *a, **k: pidns if str(p) == "/proc/self/ns/pid" else readlink(p, *a, **k)
fake = {"/proc/sys/kernel/random/boot_id": boot}
if boot == "another-boot-id":  # another machine: another machine id too (else: a reboot)
    fake.update({"/etc/machine-id": "another-machine", "/var/lib/dbus/machine-id": "another"})
pathlib.Path.read_text = lambda self, *a, **k: (
    fake[str(self)] if str(self) in fake else read_text(self, *a, **k))
from spool.claims import temporary_sibling, try_claim
assert try_claim(out) is not None
tmp = temporary_sibling(out)
tmp.write_bytes(b"being written")
print(tmp)
"""


@pytest.mark.skipif(not Path("/proc/self/ns/pid").exists(), reason="no /proc: Linux only")
@pytest.mark.parametrize("where", ["another PID namespace", "another machine, same name"])
def test_claims_and_temporaries_made_elsewhere_are_judged_by_age(tmp_path: Path,
                                                                where: str) -> None:
    """The holder's PID means nothing here: a fresh claim and temporary of a live job there
    were taken and deleted at once (its PID judged in this namespace, or its boot id differs)."""
    pidns = os.readlink("/proc/self/ns/pid")  # as claims reads them
    boot = Path("/proc/sys/kernel/random/boot_id").read_text()
    if where == "another PID namespace":
        pidns = "pid:[1]"
    else:
        boot = "another-boot-id"
    out = tmp_path / "video.safetensors"
    root = str(Path(spool.__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _ELSEWHERE, pidns, boot, str(out)], env=env,
                          capture_output=True, text=True, check=True)
    tmp = Path(proc.stdout.strip())
    record = json.loads(claim_path(out).read_text())
    assert record["host"] == claims._HOST  # the same host name
    assert try_claim(out) is None  # held there, as far as can be told
    assert not is_stale_temporary(tmp)
    assert remove_stale_temporaries(tmp_path) == 0 and tmp.exists()
    claim_path(out).write_text(json.dumps(dict(record, time=OLD)))  # no heartbeat for long
    _age(tmp, 7 * 3600)
    assert is_stale_temporary(tmp)
    assert try_claim(out) is not None


def test_claim_records_are_judged_by_where_they_were_made(tmp_path: Path,
                                                          monkeypatch) -> None:
    monkeypatch.setattr(claims, "_MACHINE", "this-machine")  # whether /etc/machine-id or not
    out = tmp_path / "x.safetensors"
    mine = try_claim(out)
    record = json.loads(mine.path.read_text())
    release_claim(mine)
    dead = _dead_pid()

    def taken(**changes) -> bool:
        mine.path.write_text(json.dumps(dict(record, **{"pid": dead, **changes})))
        claim = try_claim(out)
        if claim is not None:
            release_claim(claim)
        return claim is not None

    assert taken()  # here, and its process is gone
    assert not taken(pidns="pid:[1]")  # another namespace: that PID may be alive there
    assert not taken(pidns="pid:[1]", pid=os.getpid())
    assert taken(pidns="pid:[1]", time=OLD)
    # Another machine of the same host name: by age.
    assert not taken(boot="another-boot-id", machine="another-machine")
    assert taken(boot="another-boot-id", machine="another-machine", time=OLD)
    assert not taken(boot="another-boot-id", machine=None, pid=os.getpid())  # no machine id
    # This machine before a reboot: its processes are gone, so at once (a crashed training run
    # on a rebooted VM waited 6 hours), even with a PID that is alive now.
    assert taken(boot="another-boot-id", pid=os.getpid())
    monkeypatch.setattr(claims, "_MACHINE", "")  # none to tell a reboot from a namesake
    assert not taken(boot="another-boot-id", machine="", pid=os.getpid())
    monkeypatch.setattr(claims, "_MACHINE", "this-machine")
    old_format = {k: v for k, v in record.items() if k != "pidns"}  # a previous version's
    mine.path.write_text(json.dumps(dict(old_format, pid=dead)))
    assert try_claim(out) is None  # where it was made cannot be told: by age
    mine.path.write_text(json.dumps(dict(old_format, pid=dead, time=OLD)))
    _take(out)
    # A record that is not one (a hand edit, a stranger's file) is never a crash: it is stale
    # only once its file is old, as a claim cut short.
    host = claims._HOST
    for bad in ({"host": host, "pid": "x", "time": 0}, {"host": host, "pid": 1, "time": "now"},
                {"host": host, "pid": 2**40, "time": 0}, {"host": 1, "pid": 1, "time": 0},
                {"host": host, "pid": 1, "time": float("inf")}):
        mine.path.write_text(json.dumps(dict(record, **bad)))
        assert try_claim(out) is None and claims.claim_holder(mine.path).startswith("lock")
        _age(mine.path, 120)
        _take(out)


def test_old_format_temporaries_are_judged_by_age(tmp_path: Path) -> None:
    """A temporary named by a previous version (tag: a hash of the host name alone) may be a
    live job's of another namespace or machine of this name: only its age tells."""
    import hashlib

    tag = hashlib.sha1(claims._HOST.encode()).hexdigest()[:8]
    tmp = tmp_path / f".x.safetensors.spool-{tag}-{_dead_pid()}-0123abcd.tmp"
    tmp.write_bytes(b"")
    assert not is_stale_temporary(tmp)
    _age(tmp, 7 * 3600)
    assert is_stale_temporary(tmp)


def _another_job_takes_it_after_a_read(monkeypatch, out: Path) -> list:
    """From the next read of a claim file on, another job has taken the claim of ``out`` if it
    could (held by the returned list): between an owner's check of its token and what it does."""
    real_read, others = claims._read_bytes, []

    def read_then_another_job_takes_it(path: Path) -> bytes | None:
        raw = real_read(path)
        if not others:
            others.append(None)
            others[0] = try_claim(out)
        return raw

    monkeypatch.setattr(claims, "_read_bytes", read_then_another_job_takes_it)
    return others


def _unrenewed_for_long(claim: claims.Claim) -> None:
    """As seen from elsewhere, ``claim`` has not been renewed for long: another job takes it."""
    record = json.loads(claim.path.read_text())
    claim.path.write_text(json.dumps(dict(record, host="elsewhere", time=OLD)))


def test_a_take_over_during_a_renewal_is_not_undone(tmp_path: Path, monkeypatch) -> None:
    """Another job took the claim between the owner's check of its token and its rewrite: the
    rewrite overwrote the new holder's claim, both held it. Under the take-over lock, the other
    job waits its turn (and finds the claim renewed)."""
    out = tmp_path / "run.lock"
    claim = try_claim(out)
    _unrenewed_for_long(claim)
    others = _another_job_takes_it_after_a_read(monkeypatch, out)
    renewed = claims.refresh_claim(claim)
    monkeypatch.undo()
    holder = json.loads(claim.path.read_text())["token"]
    believers = [c.token for c in [claim] * renewed + others if c is not None]
    assert believers == [holder]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".break")]


def test_a_take_over_during_a_release_is_not_undone(tmp_path: Path, monkeypatch) -> None:
    """The same between a release's check and its deletion: the new holder's claim went."""
    out = tmp_path / "run.lock"
    claim = try_claim(out)
    _unrenewed_for_long(claim)
    others = _another_job_takes_it_after_a_read(monkeypatch, out)
    release_claim(claim)
    monkeypatch.undo()
    if others[0] is not None:  # it took the claim: it holds it still
        assert json.loads(claim.path.read_text())["token"] == others[0].token
    else:
        assert not claim.path.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".break")]


def test_a_claim_is_renewed_while_its_video_is_extracted(tmp_path: Path, monkeypatch) -> None:
    """extract's per-video claims had no heartbeat: a video taking over STALE_AFTER_S (a long
    one, per frame, on the CPU) was taken by a job on another machine and done twice."""
    import numpy as np
    from conftest import tiny_config

    import spool.extract as extract
    from spool import Spool
    from spool.claims import kept_alive
    from spool.video import make_sampler, write_video

    claim = try_claim(tmp_path / "v.safetensors")

    def renewed_at() -> float:
        return json.loads(claim.path.read_text())["time"]

    stamps = [renewed_at()]
    with kept_alive(claim, every_s=0.05):
        for _ in range(3):
            time.sleep(0.12)
            stamps.append(renewed_at())
    assert stamps == sorted(set(stamps)), stamps  # renewed between every two looks
    after = renewed_at()
    time.sleep(0.15)
    assert renewed_at() == after  # the renewal stopped with the block
    release_claim(claim)
    # Extraction runs each video inside it.
    entered = []
    monkeypatch.setattr(extract, "kept_alive", lambda c: (entered.append(c.path.name),
                                                         kept_alive(c, every_s=3600))[1])
    video = write_video(tmp_path / "a.mkv", np.zeros((4, 32, 32, 3), np.uint8), fps=5,
                        codec="ffv1")
    model = Spool(tiny_config(num_hidden_layers=1)).eval()
    job = extract.VideoJob(video, tmp_path / "out" / "a.safetensors")
    summary = extract.FeatureExtractor(model, make_sampler("uniform", num_frames=2)).run(
        [job], progress=False)
    assert summary.done == 1 and entered == [".a.safetensors.spool-claim"]


def test_a_claim_that_cannot_be_written_is_not_left_empty(tmp_path, monkeypatch):
    """A full disk: the empty claim file stayed, and a rerun within a minute (once room was
    made) said the video was another job's and exited 0. Also where files cannot be hard
    linked (FAT, some SMB mounts), where the claim is written in place."""
    import errno
    import os
    from pathlib import Path

    def full(self, *args, **kwargs):
        with open(self, "w"):  # made, then the write fails
            raise OSError(errno.ENOSPC, "No space left on device")

    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fd, *args, **kwargs):
            self.file = real_fdopen(fd, *args, **kwargs)

        def __enter__(self):
            return self

        def __exit__(self, *args):
            self.file.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    for patches in ([(Path, "write_text", full)],
                    [(os, "link", no_links), (os, "fdopen", Full)]):
        for target, name, value in patches:
            monkeypatch.setattr(target, name, value)
        with pytest.raises(OSError, match="No space left"):
            try_claim(tmp_path / "v.safetensors")
        monkeypatch.undo()
        assert list(tmp_path.iterdir()) == []
        claim = try_claim(tmp_path / "v.safetensors")  # at once, not a minute later
        assert claim is not None
        release_claim(claim)
    monkeypatch.setattr(os, "link", no_links)
    claim = try_claim(tmp_path / "v.safetensors")
    assert claim is not None and claims.claim_record(tmp_path / "v.safetensors")["token"]
    assert try_claim(tmp_path / "v.safetensors") is None  # still exclusive
    release_claim(claim)


def test_a_claim_is_never_seen_empty(tmp_path, monkeypatch):
    """The claim file was made empty and then written: a kill in between left an empty claim,
    which read as another job's for a minute (spool extract: the video "claimed by another
    job", exit 0, not extracted). It is written beside and linked in."""
    real = claims.json.dumps

    def killed(obj, *args, **kwargs):
        if isinstance(obj, dict) and "token" in obj:
            raise KeyboardInterrupt  # the process dies while writing its record
        return real(obj, *args, **kwargs)

    monkeypatch.setattr(claims.json, "dumps", killed)
    with pytest.raises(KeyboardInterrupt):
        try_claim(tmp_path / "v.safetensors")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    assert try_claim(tmp_path / "v.safetensors") is not None


def test_a_directory_lock_left_with_a_crashs_take_over_lock_is_taken_at_once(tmp_path):
    """A kill during a job's release left its lock and the lock's ".break", both of a dead
    process: the next `spool train` / `spool cache` there was refused once, naming it."""
    from spool.claims import _own_record, lock_directory

    record = json.dumps({**_own_record(), "pid": _dead_pid(), "start": None, "token": "t"})
    (tmp_path / ".spool.lock").write_text(record)
    (tmp_path / ".spool.lock.break").write_text(record)
    claim = lock_directory(tmp_path, "spool cache")
    assert json.loads(claim.path.read_text())["token"] == claim.token
    release_claim(claim)


@pytest.mark.parametrize("error", [13, 31, 95, 102, 524])
def test_a_claim_is_made_in_place_wherever_links_fail(tmp_path, monkeypatch, error):
    """Only four errno values fell back to writing in place: EACCES, EMLINK, NFS's 524 or
    macOS's EOPNOTSUPP made every claim fail. Any error but "exists" falls back."""
    import os

    def refused(src, dst):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "link", refused)
    claim = try_claim(tmp_path / "v.safetensors")
    assert claim is not None and try_claim(tmp_path / "v.safetensors") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [".v.safetensors.spool-claim"]


def test_a_link_nfs_says_exists_but_made_is_a_claim(tmp_path, monkeypatch):
    """NFS may answer "exists" to a retried link(2) that it made: the claim, ours, read as
    another live job's (the video never extracted). The temporary's link count tells."""
    import os

    real = os.link

    def made_then_exists(src, dst):
        real(src, dst)
        raise FileExistsError(17, "File exists")

    monkeypatch.setattr(os, "link", made_then_exists)
    claim = try_claim(tmp_path / "v.safetensors")
    assert claim is not None and claims.claim_record(tmp_path / "v.safetensors")["token"]
