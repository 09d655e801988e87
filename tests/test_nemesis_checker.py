"""
The nemesis checker on hand-made histories: each count moves when, and
only when, the fault it names is in the history.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence, Tuple

from hypothesis import given
from hypothesis import strategies as st

from tests.nemesis.checker import (PublisherHistory, Receipt, Sent,
                                   SubscriberHistory, Subscription, check,
                                   parse_tag, tag)

TOPIC = "nemesis/t/%s"


def publisher(name: str, acked: Iterable[int], sent: Iterable[int] = (),
              at: float = 10.0, resent: Iterable[int] = ()) -> PublisherHistory:
    seqs = set(acked) | set(sent)
    return PublisherHistory(name, {s: Sent(TOPIC % name, at + s) for s in seqs},
                            frozenset(acked), frozenset(resent))


def subscriber(name: str, receipts: Sequence[Tuple[str, int]], flt: str = "nemesis/t/#",
               start: float = 0.0, dups: Iterable[int] = ()) -> SubscriberHistory:
    dup_at = set(dups)
    return SubscriberHistory(name, (Subscription(flt, start),), tuple(
        Receipt(p, s, i in dup_at, 1) for i, (p, s) in enumerate(receipts)))


def test_tag_round_trip_and_padding() -> None:
    payload = tag("pub-1", 42, size=64)
    assert len(payload) == 64 and payload.startswith(b"pub-1:42:")
    assert parse_tag(payload) == ("pub-1", 42)
    assert parse_tag(tag("p", 7)) == ("p", 7)
    assert parse_tag(b"no tag here") is None
    assert parse_tag(b"p:x:") is None


def test_perfect_history_is_ok() -> None:
    pubs = [publisher("a", range(3)), publisher("b", range(2))]
    got = [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2)]
    report = check(pubs, [subscriber("s1", got), subscriber("s2", got)])
    assert report.ok
    assert (report.acknowledged, report.sent, report.expected, report.delivered) == (5, 5, 10, 10)
    assert (report.lost, report.dup_without_dup, report.out_of_order, report.unexpected) == (0, 0, 0, 0)


def test_lost_counts_pairs_and_messages() -> None:
    pubs = [publisher("a", range(3))]
    report = check(pubs, [subscriber("s1", [("a", 0), ("a", 2)]), subscriber("s2", [("a", 0)])])
    assert (report.lost, report.lost_messages, report.delivered) == (3, 2, 3)
    assert not report.ok
    assert "s1 never got a:1" in report.examples["lost"]


def test_unacknowledged_messages_may_be_missing_or_delivered() -> None:
    """Only acknowledged messages are promised; an unacknowledged one may arrive."""
    pubs = [publisher("a", acked=[0], sent=[1, 2])]
    report = check(pubs, [subscriber("s", [("a", 0), ("a", 2)])])
    assert report.ok and (report.acknowledged, report.sent, report.expected) == (1, 3, 1)


def test_subscription_window_and_filter() -> None:
    """Messages sent before the SUBACK or after the end, or on other topics, are not expected."""
    pubs = [publisher("a", range(4), at=10.0), publisher("b", range(2))]
    window = SubscriberHistory("s", (Subscription("nemesis/t/a", 11.0, 12.0),), ())
    report = check(pubs, [window])
    assert (report.expected, report.lost) == (2, 2)   # a:1 (t=11) and a:2 (t=12)
    assert sorted(report.examples["lost"]) == ["s never got a:1", "s never got a:2"]


def test_duplicates_without_dup_flag_and_after_a_resend() -> None:
    pubs = [publisher("a", range(2), resent=[1])]
    got = [("a", 0), ("a", 0), ("a", 1), ("a", 1), ("a", 1)]
    report = check(pubs, [subscriber("s", got, dups=[4])])
    # a:0 again without DUP; a:1 again without DUP (resent by its publisher); then with DUP.
    assert (report.dup_without_dup, report.dup_after_resend, report.dup_unexplained) == (2, 1, 1)
    assert report.lost == 0 and not report.ok


def test_duplicates_and_reordering_after_a_resend_are_excused() -> None:
    """A resent message may be routed twice with DUP clear and after later ones."""
    pubs = [publisher("a", range(3), resent=[1])]
    report = check(pubs, [subscriber("s", [("a", 0), ("a", 2), ("a", 1), ("a", 1)])])
    assert (report.out_of_order, report.out_of_order_after_resend) == (1, 1)
    assert (report.dup_without_dup, report.dup_after_resend) == (1, 1)
    assert report.ok


def test_out_of_order_counts_first_receipts_only() -> None:
    pubs = [publisher("a", range(4)), publisher("b", range(2))]
    got = [("a", 0), ("a", 2), ("b", 1), ("a", 1), ("b", 0), ("a", 3), ("a", 0)]
    report = check(pubs, [subscriber("s", got, dups=[6])])
    # a:1 after a:2, b:0 after b:1; the DUP copy of a:0 is a duplicate, not a reordering.
    assert (report.out_of_order, report.dup_without_dup, report.lost) == (2, 0, 0)
    assert report.out_of_order_unexplained == 2 and not report.ok


def test_unexpected_receipts() -> None:
    pubs = [publisher("a", [0])]
    got = [("a", 0), ("a", 5), ("ghost", 0), ("", -1)]
    report = check(pubs, [subscriber("s", got)])
    assert (report.unexpected, report.lost) == (3, 0)


# -- properties --------------------------------------------------------------

histories = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(1, 15), min_size=1)


def in_order(counts: Dict[str, int]) -> List[Tuple[str, int]]:
    """Every message of every publisher, publishers interleaved round robin."""
    out: List[Tuple[str, int]] = []
    for i in range(max(counts.values())):
        out.extend((p, i) for p in sorted(counts) if i < counts[p])
    return out


@given(histories, st.integers(1, 3))
def test_every_acknowledged_message_once_in_order_is_ok(counts: Dict[str, int], subs: int) -> None:
    pubs = [publisher(p, range(n)) for p, n in counts.items()]
    got = in_order(counts)
    report = check(pubs, [subscriber("s%d" % i, got) for i in range(subs)])
    assert report.ok
    assert report.delivered == report.expected == subs * sum(counts.values())


@given(histories, st.data())
def test_dropping_receipts_counts_each_as_lost(counts: Dict[str, int], data: st.DataObject) -> None:
    pubs = [publisher(p, range(n)) for p, n in counts.items()]
    got = in_order(counts)
    drop = data.draw(st.sets(st.sampled_from(got)))
    report = check(pubs, [subscriber("s", [m for m in got if m not in drop])])
    assert (report.lost, report.lost_messages) == (len(drop), len(drop))
    assert (report.out_of_order, report.dup_without_dup, report.unexpected) == (0, 0, 0)


@given(histories, st.data())
def test_repeating_receipts_counts_duplicates(counts: Dict[str, int], data: st.DataObject) -> None:
    pubs = [publisher(p, range(n)) for p, n in counts.items()]
    got = in_order(counts)
    again = data.draw(st.lists(st.sampled_from(got), max_size=5))
    flagged = data.draw(st.lists(st.booleans(), min_size=len(again), max_size=len(again)))
    history = got + again
    dups = [len(got) + i for i, f in enumerate(flagged) if f]
    report = check(pubs, [subscriber("s", history, dups=dups)])
    assert report.dup_without_dup == flagged.count(False)
    assert (report.lost, report.out_of_order) == (0, 0)


@given(histories, st.randoms(use_true_random=False))
def test_shuffling_one_publisher_is_out_of_order_unless_sorted(counts: Dict[str, int],
                                                               rnd: object) -> None:
    pubs = [publisher(p, range(n)) for p, n in counts.items()]
    got = in_order(counts)
    rnd.shuffle(got)  # type: ignore[attr-defined]
    report = check(pubs, [subscriber("s", got)])
    per_pub_sorted = all(
        [s for p, s in got if p == name] == sorted(s for p, s in got if p == name)
        for name in counts)
    assert (report.out_of_order == 0) == per_pub_sorted
    assert report.lost == 0


def test_a_reordering_example_names_the_connections() -> None:
    """The example says which connection got each of the pair, so one connection
    reordering (the broker) tells apart from two successive ones."""
    pub = publisher("p", acked=[1, 2, 3])
    receipts = (Receipt("p", 2, False, 1, "n1:10"), Receipt("p", 1, False, 1, "n1:10"),
                Receipt("p", 3, False, 1, "n2:20"))
    report = check([pub], [SubscriberHistory("s", (Subscription("nemesis/t/#", 0.0),), receipts)])
    assert report.out_of_order == 1
    assert report.examples["out_of_order"] == ("s got p:1 after 2 (on n1:10; the same)",)
