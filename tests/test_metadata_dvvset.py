"""
T1: dotted version vector sets -- the worked examples of the design note
(§4) exactly, and the algebraic laws with hypothesis.
"""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from vmqtw.metadata import dvvset as d


def put(server, ctx, value, ident):
    """A server-side write of ``value`` that has seen ``ctx``."""
    if server is None:
        return d.update(d.new_with_context(ctx, value), ident)
    return d.update_server(d.new_with_context(ctx, value), server, ident)


def test_mary_peter_no_false_conflict():
    """Peter's write that saw v1 drops v1 but keeps Mary's concurrent v2."""
    c1 = d.update(d.new("v1"), "a")
    assert c1 == ((("a", 1, ("v1",)),), ())
    peter_ctx = d.join(c1)
    assert peter_ctx == (("a", 1),)
    c2 = d.update_server(d.new("v2"), c1, "a")
    assert c2 == ((("a", 2, ("v2", "v1")),), ())
    c3 = d.update_server(d.new_with_context(peter_ctx, "v3"), c2, "a")
    assert c3 == ((("a", 3, ("v3", "v2")),), ())
    assert d.values(c3) == ("v3", "v2")
    assert d.less(c2, c3) and not d.less(c3, c2)


def test_partition_example():
    """§4 partition example: {A} | {B,C}, siblings, resolution dominates."""
    v1 = put(None, (), "v1", "A")
    assert v1 == ((("A", 1, ("v1",)),), ())
    a = put(v1, d.join(v1), "v2", "A")
    assert a == ((("A", 2, ("v2",)),), ())
    b = put(v1, d.join(v1), "v3", "B")
    assert b == ((("A", 1, ()), ("B", 1, ("v3",))), ())
    c = b if d.less(v1, b) else v1
    assert c == b
    assert not d.less(a, b) and not d.less(b, a)
    healed = d.sync(a, b)
    assert healed == d.sync(b, a)
    assert healed == ((("A", 2, ("v2",)), ("B", 1, ("v3",))), ())
    assert d.join(healed) == (("A", 2), ("B", 1))
    resolved = d.update_server(d.new_with_context(d.join(healed), "v3"),
                               healed, "C")
    assert resolved == ((("A", 2, ()), ("B", 1, ()), ("C", 1, ("v3",))), ())
    assert d.less(a, resolved) and d.less(b, resolved)
    assert d.less(healed, resolved)
    assert d.sync(resolved, a) == resolved


def test_partition_delete_gives_delete_sibling():
    """Had A deleted instead, the siblings are {'$deleted', v3}."""
    v1 = put(None, (), "v1", "A")
    a = put(v1, d.join(v1), "$deleted", "A")
    b = put(v1, d.join(v1), "v3", "B")
    assert sorted(d.values(d.sync(a, b))) == ["$deleted", "v3"]


def test_lww_and_last():
    clock = d.sync(put(None, (), (1, "x"), "A"), put(None, (), (5, "y"), "B"))
    assert d.last(lambda v: v[0], clock) == (5, "y")
    kept = d.lww(lambda v: v[0], clock)
    assert d.values(kept) == ((5, "y"),)
    assert d.join(kept) == d.join(clock)


def test_equal_ignores_values_but_not_counts():
    a = put(None, (), "x", "A")
    b = put(None, (), "y", "A")
    assert d.equal(a, b)
    assert not d.equal(a, d.sync(a, put(None, (), "z", "B")))


def test_reconcile_gives_one_value_that_descends():
    clock = d.sync(put(None, (), 1, "A"), put(None, (), 2, "B"))
    client = d.reconcile(lambda vals: sum(vals), clock)
    assert client[1] == (3,)
    final = d.update_server(client, clock, "C")
    assert d.values(final) == (3,)
    assert d.less(clock, final)


# -- properties -------------------------------------------------------------

IDS = ("A", "B", "C")


@st.composite
def histories(draw):
    """
    Clocks as replicas really produce them: a random sequence of writes
    (with the replica's own context, a stale one, or none) and syncs
    between replicas.  Returns every clock seen.
    """
    replicas = {i: None for i in IDS}
    replicas["A"] = put(None, (), 0, "A")
    seen = [replicas["A"]]
    counter = 0
    for _ in range(draw(st.integers(1, 12))):
        op = draw(st.sampled_from(("write", "blind", "sync")))
        r = draw(st.sampled_from(IDS))
        if op == "sync":
            other = draw(st.sampled_from(IDS))
            if replicas[r] is not None and replicas[other] is not None:
                replicas[r] = d.sync(replicas[r], replicas[other])
        else:
            counter += 1
            cur = replicas[r]
            ctx = d.join(cur) if (cur is not None and op == "write") else ()
            replicas[r] = put(cur, ctx, counter, r)
        if replicas[r] is not None:
            seen.append(replicas[r])
    return seen


clocks = histories().flatmap(lambda seen: st.sampled_from(seen))
triples = histories().flatmap(
    lambda seen: st.tuples(st.sampled_from(seen), st.sampled_from(seen),
                           st.sampled_from(seen)))

SETTINGS = settings(max_examples=150, deadline=None)


@SETTINGS
@given(triples)
def test_sync_commutative(t):
    a, b, _ = t
    assert d.sync(a, b) == d.sync(b, a)


@SETTINGS
@given(triples)
def test_sync_associative(t):
    a, b, c = t
    assert d.sync(d.sync(a, b), c) == d.sync(a, d.sync(b, c))


@SETTINGS
@given(clocks)
def test_sync_idempotent(a):
    assert d.sync(a, a) == a


@SETTINGS
@given(triples)
def test_less_is_strict_partial_order(t):
    a, b, c = t
    assert not d.less(a, a)
    if d.less(a, b):
        assert not d.less(b, a)
        if d.less(b, c):
            assert d.less(a, c)


@SETTINGS
@given(clocks, st.sampled_from(IDS))
def test_update_with_context_dominates(x, ident):
    y = d.update_server(d.new_with_context(d.join(x), "new"), x, ident)
    assert d.less(x, y)
    assert d.values(y) == ("new",)
    assert d.sync(x, y) == y


@SETTINGS
@given(triples)
def test_sync_descends_both(t):
    a, b, _ = t
    s = d.sync(a, b)
    assert d.descends(s, a) and d.descends(s, b)
