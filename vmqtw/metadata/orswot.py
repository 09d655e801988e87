"""
ORSWOT: an observed-remove set without tombstones, add-wins (riak_dt).

State ``(clock, entries)``, both sorted tuples: ``clock`` is
``((actor, n), ...)``, everything this replica has seen; ``entries`` is
``((element, ((actor, n), ...)), ...)``, each present element with the
dots of the adds that made it present.

* ``add`` takes a new dot of the actor and makes it the element's only
  dot (older dots are covered by the clock anyway).
* ``remove`` drops the element; no tombstone is kept, the clock
  remembers that its dots were seen.
* ``merge`` keeps a dot present on both sides, or on one side when the
  other side's clock has not seen it (so it is a concurrent add, not a
  removal) -- concurrent add and remove end with the element present, and
  a stale copy cannot resurrect a removed element.

Pure functions over immutable tuples, serialisable with msgpack as is.
"""
from __future__ import annotations

from typing import Any, Dict, FrozenSet, Tuple

__all__ = ["ORSWOT", "NotPresent", "new", "add", "remove", "merge",
           "value", "contains", "counter", "dots", "seen"]

Dots = Tuple[Tuple[Any, int], ...]
ORSWOT = Tuple[Tuple[Tuple[Any, int], ...], Tuple[Tuple[Any, Dots], ...]]


class NotPresent(KeyError):
    """Removing an element this replica has not observed."""


def new() -> ORSWOT:
    return ((), ())


def _freeze(clock: Dict[Any, int], entries: Dict[Any, Dict[Any, int]]
            ) -> ORSWOT:
    return (tuple(sorted(clock.items())),
            tuple((e, tuple(sorted(d.items())))
                  for e, d in sorted(entries.items()) if d))


def add(state: ORSWOT, element: Any, actor: Any, after: int = 0) -> ORSWOT:
    """Add ``element`` with a new dot of ``actor`` (above ``after`` too,
    for an actor whose own counter this state may not have seen)."""
    clock = dict(state[0])
    n = max(clock.get(actor, 0), after) + 1
    clock[actor] = n
    entries = {e: dict(d) for e, d in state[1]}
    entries[element] = {actor: n}
    return _freeze(clock, entries)


def remove(state: ORSWOT, element: Any) -> ORSWOT:
    entries = {e: dict(d) for e, d in state[1]}
    if element not in entries:
        raise NotPresent(element)
    del entries[element]
    return _freeze(dict(state[0]), entries)


def _survivors(dots: Dict[Any, int], other_clock: Dict[Any, int]
               ) -> Dict[Any, int]:
    return {a: n for a, n in dots.items() if n > other_clock.get(a, 0)}


def merge(a: ORSWOT, b: ORSWOT) -> ORSWOT:
    if a == b:
        return a
    ca, cb = dict(a[0]), dict(b[0])
    ea = {e: dict(d) for e, d in a[1]}
    eb = {e: dict(d) for e, d in b[1]}
    entries: Dict[Any, Dict[Any, int]] = {}
    for element in set(ea) | set(eb):
        da, db = ea.get(element, {}), eb.get(element, {})
        common = {x: n for x, n in da.items() if db.get(x) == n}
        common.update(_survivors({x: n for x, n in da.items()
                                  if db.get(x) != n}, cb))
        common.update(_survivors({x: n for x, n in db.items()
                                  if da.get(x) != n}, ca))
        if common:
            entries[element] = common
    clock = dict(ca)
    for actor, n in cb.items():
        if n > clock.get(actor, 0):
            clock[actor] = n
    return _freeze(clock, entries)


def value(state: ORSWOT) -> FrozenSet[Any]:
    return frozenset(e for e, _ in state[1])


def counter(state: ORSWOT, actor: Any) -> int:
    """The counter of ``actor`` in the state's clock."""
    return dict(state[0]).get(actor, 0)


def dots(state: ORSWOT, element: Any) -> Dots:
    """The dots of ``element`` (empty when absent)."""
    for e, d in state[1]:
        if e == element:
            return d
    return ()


def seen(state: ORSWOT, dot_list: Dots) -> bool:
    """True when the state's clock covers every dot of ``dot_list``."""
    clock = dict(state[0])
    return all(clock.get(a, 0) >= n for a, n in dot_list)


def contains(state: ORSWOT, element: Any) -> bool:
    return any(e == element for e, _ in state[1])
