"""
The one adapter between the nemesis suite and the partition back end.

Everything the suite knows about how links are cut lives here:
``cut(groups, one_way=False)``, ``heal()``, ``close()``, over the test
harness's :class:`tests.clusterharness.Partitions` -- nft when it is usable
(with a table of its own, so long cuts never queue behind other tests'
partitions), else a proxy in front of each node's clustering listener
(nodes register with :attr:`NetworkFaults.partitions` and advertise what it
returns).
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from tests.clusterharness import Partitions

__all__ = ["NetworkFaults", "TABLE"]

#: The nft table of the nemesis suite; no other test uses it.
TABLE = "vmqtwnemesis"


class NetworkFaults:
    """Cuts between groups of loopback IPs; at most one cut at a time."""

    def __init__(self, table: str = TABLE) -> None:
        self.partitions = Partitions(table=table)
        self._cut: Optional[Any] = None

    @property
    def backend(self) -> str:
        return self.partitions.backend

    @property
    def active(self) -> bool:
        return self._cut is not None

    def cut(self, groups: Sequence[Iterable[str]], one_way: bool = False) -> None:
        """Cut every link between different groups (replacing any earlier cut)."""
        self.heal()
        cut = self.partitions.cut(groups, one_way=one_way)
        self._cut = cut
        cut.__enter__()

    def heal(self) -> None:
        """Every link works again."""
        cut, self._cut = self._cut, None
        if cut is not None:
            cut.__exit__(None, None, None)

    def close(self) -> None:
        """Heal and release whatever the back end holds; safe to call twice."""
        try:
            self.heal()
        finally:
            self.partitions.close()
