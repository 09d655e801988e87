"""
At most one log line per kind of event and interval, with the count of the
ones left out: a client retrying a wrong password in a loop, or publishing
where the ACL denies it, must not flood the log, and the operator still
learns how many there were.  Pure: the caller gives the time.
"""
from __future__ import annotations

from typing import Dict, Optional

import attrs

__all__ = ["LogRateLimiter"]


@attrs.define(slots=True)
class LogRateLimiter:
    """
    ``admit(kind, now)`` says whether a line of ``kind`` may be logged now:
    None when one was logged less than ``interval`` seconds ago (this one
    is counted as suppressed), else how many were suppressed since the
    last line of that kind (to be said in this one).
    """

    interval: float = 10.0
    _last: Dict[str, float] = attrs.field(factory=dict, init=False)
    _suppressed: Dict[str, int] = attrs.field(factory=dict, init=False)

    def admit(self, kind: str, now: float) -> Optional[int]:
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return None
        self._last[kind] = now
        return self._suppressed.pop(kind, 0)
