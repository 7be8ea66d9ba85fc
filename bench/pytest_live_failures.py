"""A pytest plugin for device runs (``-p pytest_live_failures``, ``bench`` on the path): each
failure's traceback is appended to ``$PYTEST_FAILURES_LOG`` as it happens, so that a run cut off
by the device call's time limit keeps them (pytest prints them only at its end)."""

from __future__ import annotations

import os


def pytest_runtest_logreport(report) -> None:
    # Under pytest-xdist the controller sees every worker's reports: only it writes.
    if not report.failed or "PYTEST_XDIST_WORKER" in os.environ:
        return
    with open(os.environ.get("PYTEST_FAILURES_LOG", "pytest_failures.log"), "a") as log:
        log.write(f"=== {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")
