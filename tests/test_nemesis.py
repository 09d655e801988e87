"""
The nemesis suite, short form: every scenario of tests/nemesis briefly, on
its own 3-node cluster, and the promise of issue 16 asserted for each --
no acknowledged message lost, no duplicate without DUP and order per
publisher kept (unless the publisher resent), nothing invented.  The long form is
``.venv/bin/python -m tests.nemesis`` (see tests/nemesis/__init__.py).

Each scenario gets its own range of loopback aliases (127.0.0.100 + 10*i),
so parallel workers never cut each other's nodes; the nft table is shared
and its lock makes cuts take turns.
"""
from __future__ import annotations

from typing import Any

import pytest

from tests.nemesis.scenarios import SCENARIOS, SHORT, run, table

NAMES = list(SCENARIOS)


@pytest.mark.parametrize("name", NAMES)
def test_nemesis_scenario_keeps_the_qos1_promise(name: str, tmp_path: Any) -> None:
    outcome = run(SCENARIOS[name], SHORT, directory=str(tmp_path),
                  first_ip=100 + 10 * NAMES.index(name))
    report = outcome.report
    summary = "%s\n%s" % (table([outcome]), dict(report.examples))
    assert report.acknowledged > 0, summary
    assert outcome.drained, summary
    assert outcome.queue_drops == 0, summary
    assert report.lost == 0, summary
    assert report.unexpected == 0, summary
    # A publisher's resend (after its connection broke) may be routed again
    # with DUP clear and after later messages: see checker.Report.
    assert report.dup_unexplained == 0, summary
    assert report.out_of_order_unexplained == 0, summary
