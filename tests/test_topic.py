"""
Tests for vmqtw.topic: topic name and topic filter validation.
"""
from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmqtw.topic import (depth, is_dollar, parse_shared, split,
                         validate_filter, validate_topic)


@pytest.mark.parametrize("topic", [
    "a", "a/b", "/", "//", "a//b", "/a", "a/", "$SYS/broker", "$",
    "sport/tennis/player1", "caf\u00e9/\u6f22\u5b57", " ",
])
def test_valid_topic_names(topic: str) -> None:
    """Any non-empty name without wildcards or NUL is a topic name,
    including empty levels and '$' names [MQTT-4.7.3-1], [MQTT-4.7.2-1]."""
    assert validate_topic(topic)


@pytest.mark.parametrize("topic, why", [
    ("", "empty name [MQTT-4.7.3-1]"),
    ("a/+", "wildcard '+' in a name [MQTT-4.7.1-1]"),
    ("a/#", "wildcard '#' in a name [MQTT-4.7.1-1]"),
    ("+", "wildcard '+' in a name [MQTT-4.7.1-1]"),
    ("#", "wildcard '#' in a name [MQTT-4.7.1-1]"),
    ("a+b", "'+' inside a level is still a wildcard char [MQTT-4.7.1-1]"),
    ("a#", "'#' inside a level is still a wildcard char [MQTT-4.7.1-1]"),
    ("a/\x00", "U+0000 [MQTT-4.7.3-2]"),
    ("\x00", "U+0000 [MQTT-4.7.3-2]"),
])
def test_invalid_topic_names(topic: str, why: str) -> None:
    """Topic names that a PUBLISH must be refused for."""
    assert not validate_topic(topic), why


@pytest.mark.parametrize("flt", [
    "#", "+", "a/#", "a/+", "+/+", "+/#", "/#", "/+", "a/+/b", "+/a/#",
    "sport/tennis/#", "a//b", "/", "$SYS/#", "$SYS/+/x", "a/b", "$",
    "$share/g/a/b", "$share/g/#", "$share/g/+/x", "$share/group/+",
    "$sharex/a", "x/$share/y",
])
def test_valid_filters(flt: str) -> None:
    """'#' as the whole last level, '+' as whole levels, empty levels and
    well-formed shared subscriptions are accepted [MQTT-4.7.1-2],
    [MQTT-4.7.1-3]."""
    assert validate_filter(flt)


@pytest.mark.parametrize("flt, why", [
    ("", "empty filter [MQTT-4.7.3-1]"),
    ("a/#/b", "'#' not last [MQTT-4.7.1-2]"),
    ("#/a", "'#' not last [MQTT-4.7.1-2]"),
    ("a/b#", "'#' not a whole level [MQTT-4.7.1-2]"),
    ("a#", "'#' not a whole level [MQTT-4.7.1-2]"),
    ("#/#", "two '#' [MQTT-4.7.1-2]"),
    ("a/##", "'##' is not a level wildcard [MQTT-4.7.1-2]"),
    ("a+/b", "'+' not a whole level [MQTT-4.7.1-3]"),
    ("a/+b", "'+' not a whole level [MQTT-4.7.1-3]"),
    ("++", "'++' is not a level wildcard [MQTT-4.7.1-3]"),
    ("a/b+/#", "'+' not a whole level [MQTT-4.7.1-3]"),
    ("a/\x00", "U+0000 [MQTT-4.7.3-2]"),
    ("$share/ab", "shared subscription without a filter"),
    ("$share//t", "shared subscription with an empty group"),
    ("$share/ab/", "shared subscription with an empty filter [MQTT-4.7.3-1]"),
    ("$share/+/t", "shared group holding a wildcard"),
    ("$share/g#/t", "shared group holding a wildcard"),
    ("$share/g/a/#/b", "shared inner filter invalid [MQTT-4.7.1-2]"),
    ("$share/g/a+", "shared inner filter invalid [MQTT-4.7.1-3]"),
    ("$share/g\x00/t", "U+0000 in the group [MQTT-4.7.3-2]"),
    ("$share/", "shared subscription with nothing after the prefix"),
    ("$share", "bare $share: no group and no filter"),
])
def test_invalid_filters(flt: str, why: str) -> None:
    """Filters that SUBSCRIBE must refuse (SUBACK 0x80) and never store."""
    assert not validate_filter(flt), why


def test_parse_shared() -> None:
    """Shared subscriptions split into (group, filter); plain filters give
    None; malformed shared forms raise instead of passing as plain ones."""
    assert parse_shared("$share/g/a/b") == ("g", "a/b")
    assert parse_shared("$share/g/#") == ("g", "#")
    assert parse_shared("$share/g//") == ("g", "/")
    assert parse_shared("a/b") is None
    assert parse_shared("$sharex/a/b") is None
    assert parse_shared("$SYS/#") is None
    for bad in ("$share/ab", "$share//t", "$share/+/t", "$share", "$share/g/"):
        with pytest.raises(ValueError):
            parse_shared(bad)


def test_depth_limit() -> None:
    """max_depth counts levels (VerneMQ topic_max_depth); 0 is unlimited."""
    assert validate_topic("a/b/c", max_depth=3)
    assert not validate_topic("a/b/c/d", max_depth=3)
    assert validate_topic("a/" * 50 + "a")
    assert validate_filter("a/+/#", max_depth=3)
    assert not validate_filter("a/+/c/#", max_depth=3)
    assert validate_filter("$share/g/a/b", max_depth=2)
    assert not validate_filter("$share/g/a/b/c", max_depth=2)
    assert not validate_topic("//", max_depth=2)


def test_split_and_dollar() -> None:
    """Empty levels are levels; '$' topics are recognised by the first char
    [MQTT-4.7.2-1]."""
    assert split("a//b") == ["a", "", "b"]
    assert split("/") == ["", ""]
    assert split("a") == ["a"]
    assert depth("a//b") == 3
    assert is_dollar("$SYS/x")
    assert is_dollar("$")
    assert not is_dollar("a/$SYS")
    assert not is_dollar("")


def test_30000_levels_linear_without_recursion() -> None:
    """A 65,535-byte topic of ~30,000 levels (CVE-2019-11779) is validated
    and refused by depth in linear time, with no RecursionError."""
    deep_topic = "/".join(["a"] * 30000)
    deep_filter = "/".join(["+"] * 29999 + ["#"])
    bad_filter = "/".join(["+"] * 29999 + ["a+"])
    start = time.perf_counter()
    for _ in range(10):
        assert validate_topic(deep_topic)
        assert not validate_topic(deep_topic, max_depth=10)
        assert validate_filter(deep_filter)
        assert not validate_filter(deep_filter, max_depth=10)
        assert not validate_filter(bad_filter)
        assert validate_filter("$share/g/" + deep_filter)
    assert time.perf_counter() - start < 2.0


LEVEL = st.sampled_from(["a", "b", "", "$x", "+", "#", "a+", "#b", "\x00"])


def _reference_filter_ok(flt: str) -> bool:
    """Filter rules restated level by level, independent of the module."""
    if flt == "" or "\x00" in flt:
        return False
    levels = flt.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.lists(LEVEL, min_size=1, max_size=6))
def test_filter_validation_matches_reference(levels: list) -> None:
    """Random filters are accepted exactly when every level obeys
    [MQTT-4.7.1-2], [MQTT-4.7.1-3] and [MQTT-4.7.3-2]."""
    flt = "/".join(levels)
    assert validate_filter(flt) == _reference_filter_ok(flt)
    expected_topic = (flt != "" and not any(c in flt for c in "+#\x00"))
    assert validate_topic(flt) == expected_topic
