"""Fixtures of the end-to-end suite: the tools, and per-group stacks started and stopped by PID.

A failing test's report carries the tail of every live process's log (Redis, upstream,
dispatcher, gateway and any extra), and the stack's folder is kept (its path is printed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import harness


@pytest.fixture(scope="session")
def tools() -> harness.Tools:
    try:
        return harness.find_tools()
    except LookupError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def workroot():
    root = Path(tempfile.mkdtemp(prefix="tyk-e2e-"))
    yield root
    if not os.environ.get("E2E_KEEP"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and harness.LIVE:
        report.sections.append(("process logs (tails)", harness.report_live_logs()))
        os.environ["E2E_KEEP"] = "1"  # keep the folders of a failing run
