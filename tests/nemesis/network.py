"""
The one adapter between the nemesis suite and the partition back end.

Everything the suite knows about how links are cut lives here:
``cut(groups, one_way=False)``, ``heal()``, ``close()``.  Today it drives
:class:`tests.clusterharness.Partition` (an nft table of its own, so it
never queues behind other tests' partitions on the shared table's lock);
when the harness grows a back end that picks nft or a proxy, only this
module changes.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

from tests.clusterharness import Partition, nft_available

__all__ = ["NetworkFaults", "TABLE", "available"]

#: The nft table of the nemesis suite; no other test uses it.
TABLE = "vmqtwnemesis"


def available() -> bool:
    """Can this process cut links (nft as root)?"""
    return nft_available()


class NetworkFaults:
    """Cuts between groups of loopback IPs; at most one cut at a time."""

    def __init__(self, table: str = TABLE) -> None:
        self.table = table
        self._partition: Optional[Partition] = None

    @property
    def active(self) -> bool:
        return self._partition is not None and self._partition.active

    def cut(self, groups: Sequence[Iterable[str]], one_way: bool = False) -> None:
        """Cut every link between different groups (replacing any earlier cut)."""
        self.close()
        partition = Partition(groups, one_way=one_way, table=self.table)
        self._partition = partition
        partition.cut()

    def heal(self) -> None:
        """Every link works again."""
        self.close()

    def close(self) -> None:
        """Heal and release whatever the back end holds; safe to call twice."""
        partition, self._partition = self._partition, None
        if partition is not None:
            partition.close()
