"""
Shared pytest configuration.

Hypothesis runs without deadlines: the machine is shared by parallel test
workers, and a deadline would turn load into flaky failures.

The header names the partition back end of the run (nft or the proxy, see
tests/clusterharness.py), so a reader of a CI log knows what was cut.  With
``VMQTW_FAIL_ON_SKIP=1`` (set by .ci/run) a skipped test fails instead: CI
installs nft, so nothing may be skipped there.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import pytest
from hypothesis import settings

settings.register_profile("vmqtw", deadline=None)
settings.load_profile("vmqtw")

#: The real-process fixtures (``nodes``, ``partitions``, ``process_group``)
#: for every test module.
pytest_plugins = ["tests.clusterharness", "tests.nodeharness", "tests.pgserver"]

FAIL_ON_SKIP_ENV = "VMQTW_FAIL_ON_SKIP"


def pytest_configure(config: pytest.Config) -> None:
    # Probe nft once, here in the first process: xdist workers inherit the
    # answer through the environment, so the whole run uses one back end.
    from tests.clusterharness import partition_backend
    partition_backend()


def pytest_sessionstart(session: pytest.Session) -> None:
    """
    The run's first lines name the partition back end (and whether skips
    fail), whatever the verbosity: ``-q``, which make test uses, hides
    pytest's header.  Printed once, by the controlling process.
    """
    config = session.config
    if hasattr(config, "workerinput"):
        return
    from tests.clusterharness import describe_backend
    lines = [describe_backend()]
    if os.environ.get(FAIL_ON_SKIP_ENV) == "1":
        lines.append("skips: fail (%s=1)" % (FAIL_ON_SKIP_ENV,))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    for line in lines:
        if reporter is not None:
            reporter.write_line(line)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get(FAIL_ON_SKIP_ENV) == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) \
            else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = "skipped, and %s=1 allows no skips: %s" % (
            FAIL_ON_SKIP_ENV, reason)
