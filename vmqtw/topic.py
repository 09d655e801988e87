"""
Topic name and topic filter validation (pure, no I/O).

Every check here runs on untrusted input straight off the wire, so each one
is a single linear pass built from ``str`` methods: no recursion on the
number of levels (a 65,535-byte topic can hold 30,000+ levels, CVE-2019-11779)
and no backtracking. The codec has already refused ill-formed UTF-8 and
lengths above 65,535 bytes; what is left for this module are the MQTT rules
about wildcards, empty names, U+0000 and the broker's depth limit.

The subscription trie and the retain tree trust their inputs; callers must
pass topics and filters through this module first.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

__all__ = [
    "SEPARATOR",
    "SINGLE",
    "MULTI",
    "SHARE_PREFIX",
    "split",
    "is_dollar",
    "depth",
    "validate_topic",
    "validate_filter",
    "parse_shared",
    "matches",
    "covers",
    "match_levels",
    "covers_levels",
    "is_concrete",
]

#: The topic level separator.
SEPARATOR = "/"
#: The single-level wildcard; it must fill a whole level [MQTT-4.7.1-3].
SINGLE = "+"
#: The multi-level wildcard; it must be the whole last level [MQTT-4.7.1-2].
MULTI = "#"
#: First level that marks a shared subscription ``$share/<group>/<filter>``.
SHARE_PREFIX = "$share"

_NUL = "\x00"


def split(topic: str) -> List[str]:
    """
    The levels of a topic or filter.

    Empty levels are real levels in MQTT (``a//b`` has three, ``/`` has two),
    which is exactly what ``str.split`` gives.
    """
    return topic.split(SEPARATOR)


def is_dollar(topic: str) -> bool:
    """
    Whether ``topic`` is in the server-reserved ``$`` space.

    Such topics are never matched by filters that start with a wildcard
    [MQTT-4.7.2-1], so ``#`` subscribers never see ``$SYS``.
    """
    return topic[:1] == "$"


def depth(topic: str) -> int:
    """The number of levels, counted without building the level list."""
    return topic.count(SEPARATOR) + 1


def validate_topic(topic: str, max_depth: int = 0) -> bool:
    """
    Whether ``topic`` may be used as a PUBLISH topic name (or a will topic).

    Refuses an empty name [MQTT-4.7.3-1], any wildcard character
    [MQTT-4.7.1-1] (a topic name is matched, it never matches), U+0000
    [MQTT-4.7.3-2], and more than ``max_depth`` levels when ``max_depth`` is
    positive (VerneMQ's ``topic_max_depth``; 0 means unlimited).
    """
    if not topic:
        return False
    if SINGLE in topic or MULTI in topic or _NUL in topic:
        return False
    if max_depth > 0 and depth(topic) > max_depth:
        return False
    return True


def _valid_plain_filter(flt: str, max_depth: int) -> bool:
    """
    The rules for a filter without the ``$share`` wrapper.

    The per-level loop only runs when a wildcard is present, so the common
    literal filter costs a few C-level scans.
    """
    if not flt or _NUL in flt:
        return False
    if max_depth > 0 and depth(flt) > max_depth:
        return False
    has_single = SINGLE in flt
    has_multi = MULTI in flt
    if not has_single and not has_multi:
        return True
    if has_multi:
        # '#' must be the whole last level and appear nowhere else
        # [MQTT-4.7.1-2]: either the filter is '#' or it ends in '/#', and
        # that is its only '#'.
        if flt.count(MULTI) != 1:
            return False
        if flt != MULTI and not flt.endswith(SEPARATOR + MULTI):
            return False
    if has_single:
        # '+' must occupy a whole level [MQTT-4.7.1-3].
        for level in flt.split(SEPARATOR):
            if SINGLE in level and level != SINGLE:
                return False
    return True


def parse_shared(flt: str) -> Optional[Tuple[str, str]]:
    """
    Split a shared subscription ``$share/<group>/<filter>`` into its parts.

    Returns ``None`` when ``flt`` is not a shared subscription at all (its
    first level is not ``$share``), so callers can route plain filters
    without a second check. A filter whose first level *is* ``$share`` but
    that is malformed raises ``ValueError`` instead of being mistaken for a
    plain ``$``-topic subscription: ``$share/ab`` (no filter), ``$share//t``
    (empty group), a group holding ``+`` or ``#``, or an invalid inner filter
    (MQTT 5 section 4.8.2; CVE-2025-68699). The inner filter is returned
    unvalidated against depth; :func:`validate_filter` applies the limit.
    """
    if flt != SHARE_PREFIX and not flt.startswith(SHARE_PREFIX + SEPARATOR):
        return None
    parts = flt.split(SEPARATOR, 2)
    if len(parts) < 3:
        raise ValueError("shared subscription without a topic filter")
    group, inner = parts[1], parts[2]
    if not group:
        raise ValueError("shared subscription with an empty group name")
    if SINGLE in group or MULTI in group or _NUL in group:
        raise ValueError("shared subscription group holds a wildcard or NUL")
    if not _valid_plain_filter(inner, 0):
        raise ValueError("shared subscription with an invalid topic filter")
    return group, inner


def validate_filter(flt: str, max_depth: int = 0) -> bool:
    """
    Whether ``flt`` may be used in SUBSCRIBE or UNSUBSCRIBE.

    Refuses an empty filter [MQTT-4.7.3-1], U+0000 [MQTT-4.7.3-2], ``#``
    other than as the whole last level [MQTT-4.7.1-2], ``+`` other than as a
    whole level [MQTT-4.7.1-3], and more than ``max_depth`` levels when
    ``max_depth`` is positive. A well-formed ``$share/<group>/<filter>`` is
    accepted (the depth limit applies to its inner filter); a malformed one
    is refused, see :func:`parse_shared`.
    """
    try:
        shared = parse_shared(flt)
    except ValueError:
        return False
    if shared is not None:
        return _valid_plain_filter(shared[1], max_depth)
    return _valid_plain_filter(flt, max_depth)


# -- filter algebra (used by the ACL; the routing trie has its own walk) ------

Levels = Tuple[str, ...]


def is_concrete(levels: Levels) -> bool:
    """No wildcard in any of ``levels`` (a topic name, not a filter)."""
    return not any("+" in level or "#" in level for level in levels)


def match_levels(filter_: Levels, topic: Levels) -> bool:
    """Does the split filter match the split topic?  Iterative, linear."""
    # [MQTT-4.7.2-1]: a filter starting with a wildcard never matches a topic
    # starting with '$'.
    if topic and topic[0].startswith("$") and filter_ and filter_[0] in ("+", "#"):
        return False
    for i, f in enumerate(filter_):
        if f == "#":
            # 'a/#' matches 'a' too [MQTT-4.7.1-2].
            return True
        if i >= len(topic):
            return False
        if f != "+" and f != topic[i]:
            return False
    return len(filter_) == len(topic)


def matches(filter_: str, topic: str) -> bool:
    """Does the concrete *topic* match *filter_*?"""
    return match_levels(tuple(filter_.split("/")), tuple(topic.split("/")))


def covers_levels(outer: Levels, inner: Levels) -> bool:
    """Does every topic the split filter ``inner`` matches match ``outer``?"""
    # Level 0: a wildcard in *inner* only reaches non-'$' topics, which any
    # wildcard in *outer* reaches as well; a '$' literal in *inner* is reachable
    # only by the same literal in *outer*.
    if inner and outer and inner[0].startswith("$") and outer[0] in ("+", "#"):
        return False
    for i, o in enumerate(outer):
        if o == "#":
            return True
        if i >= len(inner):
            return False
        s = inner[i]
        if s == "#":
            # Inner '#' at level i also matches the parent (i levels); outer can
            # only follow with '+/#', which needs i + 1 levels.  At level 0 there
            # is no empty parent topic, so '+/#' is as wide as '#' there.
            return i == 0 and o == "+" and outer[1:] == ("#",)
        if o == "+":
            continue
        if s == "+" or s != o:
            return False
    # Equal depth: covered.  Deeper inner: it reaches topics outer cannot.
    return len(inner) == len(outer)


def covers(outer: str, inner: str) -> bool:
    """Does every topic matched by filter *inner* also match filter *outer*?"""
    return covers_levels(tuple(outer.split("/")), tuple(inner.split("/")))
