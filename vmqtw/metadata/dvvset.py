"""
Dotted version vector sets (compact DVV), as pure functions over tuples.

A clock is ``(entries, anon)``:

* ``entries`` -- a tuple sorted by id of ``(id, n, values)``: ``n`` is the
  highest counter seen from ``id`` and ``values`` that id's still-live
  values, newest first (the i-th value has the dot ``(id, n - i)``);
* ``anon`` -- a tuple of values without a dot yet (a client value plus the
  context it read), kept sorted by canonical encoding and free of
  duplicates so that equal clocks have equal representations.

Why DVV sets and not plain version vectors: with server ids a plain vector
cannot say "this write saw v1 but not the concurrent v2 of the same server";
a dot per value can, so no false conflicts arise (Preguica et al.).

Anonymous values are transient: the store always turns them into events
(:func:`update`) before persisting, and the algebraic laws (``sync``
associative, ...) are only promised for clocks without them, as in the
reference implementation.

Everything here is pure and allocation-light: clocks are immutable tuples,
safe to share between the store, the broadcast layer and the wire.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from vmqtw.metadata.codec import encode

__all__ = ["Clock", "new", "new_with_context", "join", "update",
           "update_server", "sync", "sync_all", "less", "equal", "values",
           "size", "ids", "lww", "last", "reconcile", "map_values",
           "descends", "context_descends", "counter_of"]

Entry = Tuple[Any, int, Tuple[Any, ...]]
Clock = Tuple[Tuple[Entry, ...], Tuple[Any, ...]]
Context = Tuple[Tuple[Any, int], ...]

EMPTY: Clock = ((), ())


def _canonical_union(a: Tuple[Any, ...], b: Tuple[Any, ...]) -> Tuple:
    """Union of two anonymous value lists, sorted by encoding, no dups."""
    seen: Dict[bytes, Any] = {}
    for v in a + b:
        seen.setdefault(encode(v), v)
    return tuple(seen[k] for k in sorted(seen))


def new(value: Any) -> Clock:
    """A clock with one anonymous value and no causal history."""
    return ((), (value,))


def new_with_context(context: Iterable[Tuple[Any, int]], value: Any) -> Clock:
    """
    A client write: ``value`` (anonymous) that has seen ``context`` (as
    returned by :func:`join`).
    """
    entries = tuple((i, n, ()) for i, n in sorted(context))
    return (entries, (value,))


def join(clock: Clock) -> Context:
    """The causal context of ``clock``: ``((id, n), ...)`` sorted by id."""
    return tuple((i, n) for i, n, _ in clock[0])


def _event(entries: Tuple[Entry, ...], ident: Any, value: Any,
           counter: Optional[int] = None) -> Tuple[Entry, ...]:
    """
    Add ``value`` as the next event of ``ident``.

    ``counter`` (optional) is the dot to use when it is larger than the
    next one: a replica that numbers its events with one counter across all
    keys never reuses a dot for a key whose history it forgot (a collected
    tombstone).  Skipping counters is only sound when ``ident`` has no live
    values in the entry (their dots are implied by position), so then the
    plain next counter is used.
    """
    out: List[Entry] = []
    done = False
    for entry in entries:
        i, n, vals = entry
        if not done:
            if i == ident:
                m = n + 1
                if counter is not None and counter > m and not vals:
                    m = counter
                out.append((i, m, (value,) + vals))
                done = True
                continue
            if i > ident:
                out.append((ident, max(1, counter or 1), (value,)))
                done = True
        out.append(entry)
    if not done:
        out.append((ident, max(1, counter or 1), (value,)))
    return tuple(out)


def update(clock: Clock, ident: Any, counter: Optional[int] = None
           ) -> Clock:
    """
    Turn the single anonymous value of ``clock`` into a new event of
    ``ident`` (a client clock from :func:`new` / :func:`new_with_context`).
    """
    entries, anon = clock
    (value,) = anon
    return (_event(entries, ident, value, counter), ())


def update_server(client: Clock, server: Clock, ident: Any,
                  counter: Optional[int] = None) -> Clock:
    """
    Apply client write ``client`` to the server clock ``server`` as
    ``ident``: the server values the client context covers are dropped,
    concurrent ones survive as siblings, the server's anonymous values
    survive, and the client value becomes a new event of ``ident``.
    """
    centries, (value,) = client
    entries, anon = sync((centries, ()), server)
    return (_event(entries, ident, value, counter), anon)


def _merge_entry(n1: int, l1: Tuple, n2: int, l2: Tuple) -> Tuple[int, Tuple]:
    """One id of :func:`sync`: values of the side with the larger counter
    that the other side has not covered (seen and dropped)."""
    if n1 < n2:
        n1, l1, n2, l2 = n2, l2, n1, l1
    if n1 - len(l1) >= n2 - len(l2):
        return n1, l1
    return n1, l1[:n1 - n2 + len(l2)]


def _sync_entries(e1: Tuple[Entry, ...], e2: Tuple[Entry, ...]
                  ) -> Tuple[Entry, ...]:
    out: List[Entry] = []
    i = j = 0
    len1, len2 = len(e1), len(e2)
    while i < len1 and j < len2:
        a, b = e1[i], e2[j]
        if a[0] == b[0]:
            n, vals = _merge_entry(a[1], a[2], b[1], b[2])
            out.append((a[0], n, vals))
            i += 1
            j += 1
        elif a[0] < b[0]:
            out.append(a)
            i += 1
        else:
            out.append(b)
            j += 1
    out.extend(e1[i:])
    out.extend(e2[j:])
    return tuple(out)


def sync(a: Clock, b: Clock) -> Clock:
    """
    Merge two clocks: per id the larger counter and the values not covered
    by the other side; anonymous values of the dominating side, or the union
    when neither dominates.  Commutative, associative and idempotent.
    """
    if a == b:
        return a
    entries = _sync_entries(a[0], b[0])
    if less(a, b):
        anon = b[1]
    elif less(b, a):
        anon = a[1]
    elif a[1] == b[1]:
        anon = a[1]
    else:
        anon = _canonical_union(a[1], b[1])
    return (entries, anon)


def sync_all(clocks: Iterable[Clock]) -> Clock:
    """:func:`sync` over any number of clocks."""
    result = EMPTY
    for clock in clocks:
        result = sync(result, clock)
    return result


def counter_of(clock: Clock, ident: Any) -> int:
    """The counter of ``ident`` in ``clock`` (0 when absent)."""
    for i, n, _ in clock[0]:
        if i == ident:
            return n
    return 0


def _counters(clock: Clock) -> dict:
    return {i: n for i, n, _ in clock[0]}


def context_descends(a: Context, b: Context) -> bool:
    """True when context ``a`` has seen every event of context ``b``."""
    ca = dict(a)
    for i, n in b:
        if ca.get(i, 0) < n:
            return False
    return True


def descends(a: Clock, b: Clock) -> bool:
    """True when ``a`` has seen every event ``b`` has (``b <= a``)."""
    return context_descends(join(a), join(b))


def less(a: Clock, b: Clock) -> bool:
    """
    Strictly older: every counter of ``b`` is >= ``a``'s, and ``b`` has a
    larger counter or an id ``a`` lacks.
    """
    cb = _counters(b)
    strict = len(cb) > len(a[0])
    for i, n, _ in a[0]:
        m = cb.get(i)
        if m is None or m < n:
            return False
        if m > n:
            strict = True
    return strict


def equal(a: Clock, b: Clock) -> bool:
    """Same ids, counters and value counts (values themselves not compared)."""
    if len(a[0]) != len(b[0]) or len(a[1]) != len(b[1]):
        return False
    for (i1, n1, l1), (i2, n2, l2) in zip(a[0], b[0]):
        if i1 != i2 or n1 != n2 or len(l1) != len(l2):
            return False
    return True


def values(clock: Clock) -> Tuple[Any, ...]:
    """Every sibling: entry values (by id, newest first), then anonymous."""
    out: List[Any] = []
    for _, _, vals in clock[0]:
        out.extend(vals)
    out.extend(clock[1])
    return tuple(out)


def size(clock: Clock) -> int:
    """The number of siblings."""
    return sum(len(v) for _, _, v in clock[0]) + len(clock[1])


def ids(clock: Clock) -> Tuple[Any, ...]:
    """The ids in the causal history."""
    return tuple(i for i, _, _ in clock[0])


def last(key: Callable[[Any], Any], clock: Clock) -> Any:
    """The sibling with the largest ``key(value)``."""
    return max(values(clock), key=key)


def lww(key: Callable[[Any], Any], clock: Clock) -> Clock:
    """
    Keep only the sibling with the largest ``key(value)``; the causal
    history (counters) is unchanged.
    """
    winner = last(key, clock)
    entries, anon = clock
    out: List[Entry] = []
    found = False
    for i, n, vals in entries:
        if not found and vals and any(v is winner for v in vals):
            out.append((i, n, (winner,)))
            found = True
        else:
            out.append((i, n, ()))
    return (tuple(out), () if found else (winner,))


def reconcile(function: Callable[[Tuple[Any, ...]], Any], clock: Clock
              ) -> Clock:
    """A client clock holding ``function(values)`` that has seen ``clock``."""
    return new_with_context(join(clock), function(values(clock)))


def map_values(function: Callable[[Any], Any], clock: Clock) -> Clock:
    """Apply ``function`` to every value, keeping the causal structure."""
    entries, anon = clock
    return (tuple((i, n, tuple(function(v) for v in vals))
                  for i, n, vals in entries),
            tuple(function(v) for v in anon))
