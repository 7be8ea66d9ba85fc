"""Processes of this machine: which boot and PID namespace this is, and whether a process of
it is alive (what a claim or a temporary records to tell when its writer is gone)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["boot_id", "machine_id", "pid_namespace", "process_alive", "process_start"]


def boot_id() -> str:
    try:  # a process id from before a reboot names nothing
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_namespace() -> str:
    try:  # "pid:[4026531836]": containers, unshare -p: the same PID is another process there
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def machine_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:  # stable across reboots, unlike the boot id: tells a reboot from a namesake
            return Path(path).read_text().strip()
        except OSError:
            pass
    return ""


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/<pid>/stat``), or None:
    tells a process from a later one given the same PID (a restarted container's PID 1)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        return int(stat_line.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine exists (an unrelated process may reuse it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except OSError:
        return True  # cannot tell: assume it is alive, never delete what it may own
    return True
