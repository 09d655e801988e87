"""vmqtw.waits.joined: one Deferred for the stores a PUBACK waits for."""
from __future__ import annotations

from twisted.internet.defer import Deferred, FirstError

from vmqtw.waits import joined


def test_no_waits_is_none_and_one_wait_is_itself():
    assert joined(None) is None and joined([]) is None
    d: Deferred = Deferred()
    assert joined([d]) is d


def test_several_fire_when_all_have_and_fail_when_one_failed():
    first, second = Deferred(), Deferred()
    both = joined([first, second])
    assert both is not None
    first.callback(None)
    assert not both.called
    second.callback(None)
    assert both.called
    bad, good = Deferred(), Deferred()
    failed = joined([bad, good])
    assert failed is not None
    bad.errback(IOError("disk full"))
    good.callback(None)
    errors = []
    failed.addErrback(errors.append)
    assert errors and errors[0].check(FirstError)
    assert errors[0].value.subFailure.check(IOError)
