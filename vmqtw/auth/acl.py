"""
Topic access control from a mosquitto-style ACL file (VerneMQ's ``vmq_acl``).

Syntax, one statement per line (``#`` comments and blank lines ignored)::

    topic [read|write|readwrite|deny] FILTER     # default readwrite
    user NAME                                    # starts NAME's section
    pattern [read|write|readwrite|deny] FILTER   # %c = client id, %u = user name

Scope, following VerneMQ rather than mosquitto:

* ``topic`` lines *before the first* ``user`` line apply to **every** client,
  anonymous ones included (mosquitto would give them to anonymous clients only).
* ``topic`` lines after ``user NAME`` apply to clients authenticated as NAME.
* ``pattern`` lines apply to every client wherever they appear.  ``%c`` and
  ``%u`` are replaced by the client id and user name.  A rule that uses ``%c``
  (``%u``) never matches a client whose id (name) contains ``+`` or ``#``: those
  would turn the rule into a wildcard (CVE-2017-7650).  ``%u`` never matches an
  anonymous client.
* ``deny`` (a mosquitto extension) wins over every grant that would match.

No matching rule means denied, so an empty ACL denies everything.  A line we do
not understand is skipped with a warning naming ``file:line``; that can only make
the ACL stricter, except for a skipped ``deny`` line, hence the loud warning.

Subscriptions are granted only when one read rule *covers* the whole
subscription filter (every topic the filter can match is readable), e.g.
``sensors/#`` covers ``sensors/+/temp`` but not ``+/temp`` or ``#``.  Because
``deny`` rules and ACL reloads can still take topics away, the broker re-checks
each concrete topic with :meth:`Acl.can_read` at delivery time.
"""
from __future__ import annotations

import re
from types import MappingProxyType
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import attrs
from twisted.logger import Logger

from vmqtw.topic import (Levels, covers, covers_levels, is_concrete, match_levels, matches,
                         validate_filter)

__all__ = ["Acl", "Rule", "topic_matches", "filter_covers", "valid_filter",
           "READ", "WRITE", "READWRITE", "DENY"]

log = Logger()

READ = 1
WRITE = 2
READWRITE = READ | WRITE
DENY = 4
_ACCESS = {"read": READ, "write": WRITE, "readwrite": READWRITE, "deny": DENY}

# The topic algebra lives in vmqtw.topic; these names are this module's API too.
valid_filter = validate_filter
topic_matches = matches
filter_covers = covers



_SUBST = re.compile(r"%[cu]")


@attrs.frozen(slots=True)
class Rule:
    """One ``topic``/``pattern`` statement, with its filter pre-split."""

    access: int
    filter: str
    levels: Levels = attrs.field(eq=False)
    uses_client_id: bool = False
    uses_username: bool = False

    @classmethod
    def make(cls, access: int, filter_: str, pattern: bool = False) -> "Rule":
        return cls(access, filter_, tuple(filter_.split("/")),
                   pattern and "%c" in filter_, pattern and "%u" in filter_)

    def substituted(self, client_id: str, username: Optional[str]) -> Optional[Levels]:
        """The pattern's levels for this client, or None when it must not apply."""
        if not (self.uses_client_id or self.uses_username):
            return self.levels
        if self.uses_client_id and ("+" in client_id or "#" in client_id):
            return None
        if self.uses_username and (username is None or "+" in username or "#" in username):
            return None
        values = {"%c": client_id, "%u": username or ""}
        return tuple(_SUBST.sub(lambda m: values[m.group(0)], self.filter).split("/"))


@attrs.frozen(slots=True)
class Acl:
    """An immutable, thread-safe ACL snapshot."""

    all_rules: Tuple[Rule, ...] = ()
    user_rules: Mapping[str, Tuple[Rule, ...]] = attrs.field(
        factory=lambda: MappingProxyType({}))
    patterns: Tuple[Rule, ...] = ()
    source: str = "<memory>"
    warnings: Tuple[str, ...] = ()

    # -- loading --------------------------------------------------------

    @classmethod
    def parse(cls, text: str, filename: str = "<memory>") -> "Acl":
        all_rules: List[Rule] = []
        users: Dict[str, List[Rule]] = {}
        patterns: List[Rule] = []
        warnings: List[str] = []
        current: Optional[List[Rule]] = None

        def warn(lineno: int, reason: str) -> None:
            message = "{}:{}: {}; line ignored".format(filename, lineno, reason)
            warnings.append(message)
            log.warn("ACL file {problem}", problem=message)

        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keyword, rest = (line.split(None, 1) + ["", ""])[:2]
            if keyword == "user":
                if not rest:
                    warn(lineno, "'user' needs a name")
                    continue
                current = users.setdefault(rest, [])
                continue
            if keyword not in ("topic", "pattern"):
                warn(lineno, "unknown statement {!r}".format(keyword))
                continue
            first, after = (rest.split(None, 1) + ["", ""])[:2]
            access = READWRITE
            filter_ = rest
            if first in _ACCESS:
                access = _ACCESS[first]
                filter_ = after
            if not filter_:
                warn(lineno, "{} without a topic filter".format(keyword))
                continue
            if not valid_filter(filter_):
                warn(lineno, "invalid topic filter {!r}".format(filter_))
                continue
            if keyword == "pattern":
                patterns.append(Rule.make(access, filter_, pattern=True))
            elif current is None:
                all_rules.append(Rule.make(access, filter_))
            else:
                current.append(Rule.make(access, filter_))
        return cls(tuple(all_rules),
                   MappingProxyType({u: tuple(r) for u, r in users.items()}),
                   tuple(patterns), filename, tuple(warnings))

    @classmethod
    def load(cls, path: str) -> "Acl":
        """Read *path* (UTF-8); raises only when the file cannot be read."""
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return cls.parse(text, str(path))

    # -- checks ----------------------------------------------------------

    def _rules_for(self, client_id: str,
                   username: Optional[str]) -> Iterator[Tuple[int, Levels]]:
        """(access, levels) of every rule that applies to this client."""
        for rule in self.all_rules:
            yield rule.access, rule.levels
        if username is not None:
            for rule in self.user_rules.get(username, ()):
                yield rule.access, rule.levels
        for rule in self.patterns:
            levels = rule.substituted(client_id, username)
            if levels is not None:
                yield rule.access, levels

    def _topic_allowed(self, client_id: str, username: Optional[str], topic: str,
                       want: int) -> bool:
        if not topic:
            return False
        levels = tuple(topic.split("/"))
        if not is_concrete(levels):
            return False
        granted = False
        for access, rule_levels in self._rules_for(client_id, username):
            if access & (want | DENY) and match_levels(rule_levels, levels):
                if access & DENY:
                    return False
                granted = True
        return granted

    def can_publish(self, client_id: str, username: Optional[str], topic: str) -> bool:
        """May this client publish to the concrete *topic*?"""
        return self._topic_allowed(client_id, username, topic, WRITE)

    def can_read(self, client_id: str, username: Optional[str], topic: str) -> bool:
        """May this client receive a message on the concrete *topic*?  Called at
        delivery time, after :meth:`can_subscribe` granted a wider filter."""
        return self._topic_allowed(client_id, username, topic, READ)

    def can_subscribe(self, client_id: str, username: Optional[str], filter_: str) -> bool:
        """May this client subscribe to *filter_*?  Only when one read rule covers
        the whole filter and no deny rule covers it."""
        if not valid_filter(filter_):
            return False
        levels = tuple(filter_.split("/"))
        granted = False
        for access, rule_levels in self._rules_for(client_id, username):
            if access & DENY:
                if covers_levels(rule_levels, levels):
                    return False
            elif access & READ and covers_levels(rule_levels, levels):
                granted = True
        return granted
