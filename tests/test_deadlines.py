"""The connections' shared deadline timer (vmqtw.mqtt.deadlines)."""
from __future__ import annotations

from typing import List, Tuple

from twisted.internet.task import Clock

from vmqtw.mqtt.deadlines import Deadlines


class Target:
    def __init__(self, name: str, log: List[Tuple[str, float]]) -> None:
        self.name = name
        self.log = log
        self.again: float = 0.0

    def deadline_passed(self, now: float) -> None:
        self.log.append((self.name, now))


def test_never_early_at_most_a_tick_late_one_timer_for_all() -> None:
    """A deadline fires once its time passed (rounded up to 0.1 s), and a
    thousand connections share one DelayedCall."""
    clock = Clock()
    clock.advance(1000)
    deadlines = Deadlines(clock)
    log: List[Tuple[str, float]] = []
    targets = [Target("t%d" % i, log) for i in range(1000)]
    for i, target in enumerate(targets):
        deadlines.add(1000 + 5 + i * 0.001, target)   # 5.000 .. 5.999 s from now
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(4.99)
    assert log == []
    clock.advance(0.01)
    assert [name for name, _ in log] == ["t0"]
    for _ in range(110):
        clock.advance(0.01)
    assert sorted(name for name, _ in log) == sorted(t.name for t in targets)
    assert all(when >= 1005 + int(name[1:]) * 0.001 - 1e-9 for name, when in log)
    assert all(when - (1005 + int(name[1:]) * 0.001) <= 0.11 for name, when in log)
    assert len(deadlines) == 0 and not clock.getDelayedCalls()


def test_discarded_deadline_does_not_fire() -> None:
    clock = Clock()
    deadlines = Deadlines(clock)
    log: List[Tuple[str, float]] = []
    a, b = Target("a", log), Target("b", log)
    handle = deadlines.add(2.0, a)
    deadlines.add(2.0, b)
    deadlines.discard(handle, a)
    clock.advance(3)
    assert [name for name, _ in log] == ["b"]


def test_a_deadline_added_while_firing_before_the_armed_one_is_kept() -> None:
    """A target that re-adds itself while its tick fires, to a time before
    the timer's next tick, is still told in time."""
    clock = Clock()
    deadlines = Deadlines(clock)
    log: List[Tuple[str, float]] = []

    class Again(Target):
        def deadline_passed(self, now: float) -> None:
            super().deadline_passed(now)
            if len(self.log) == 1:
                deadlines.add(now + 30, far)    # arms the timer for t=31 ...
                deadlines.add(now + 2, self)    # ... then this one, earlier

    far = Target("far", log)
    deadlines.add(1.0, Again("again", log))
    clock.advance(1)
    clock.advance(2)
    assert log == [("again", 1.0), ("again", 3.0)]
    clock.advance(28)
    assert log[-1] == ("far", 31.0)
