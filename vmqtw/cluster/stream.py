"""
Numbered, acknowledged streams between two nodes: the bookkeeping that makes
"acknowledged" mean "delivered" across cuts, pauses and restarts.

A TCP connection that dies takes whatever was written into it and not yet
read by the peer: every frame sent between a cut and its detection (the
"window of uncertainty" of VerneMQ's clustering page) is gone.  So the data
plane does not trust the connection.  Each node keeps, per peer:

* an :class:`Outbound` stream: every entry gets the next sequence number and
  is kept until the peer acknowledges it; when a new connection to the same
  peer comes up everything unacknowledged is sent again, in order, flagged as
  a redelivery;
* an :class:`Inbound` stream: entries are applied in order, a sequence
  number already applied is dropped (so each entry is applied once per
  incarnation of the receiver), and the highest sequence number up to which
  every entry is *safe* -- applied and, where the broker demands it, stored
  -- is acknowledged in batches.

An incarnation of the sender is named by its ``epoch`` (random bytes drawn
when the stream is made, i.e. when the node starts).  A receiver that sees a
new epoch starts over, and a receiver that restarted (it remembers nothing)
takes the first sequence number it sees as its starting point: what it may
then apply twice was sent again after a failure and carries the redelivery
flag, so subscribers get it with DUP set.

This module is pure (no I/O, no clock): the data plane feeds it what arrives
and sends what it returns, which is what lets deterministic simulations and
property tests drive every interleaving of cuts and reconnects.
"""
from __future__ import annotations

import os
from collections import OrderedDict, deque
from typing import Any, Deque, Iterator, List, Optional, Tuple

import attrs

__all__ = ["Outbound", "OutboundEntry", "Inbound", "new_epoch", "EPOCH_SIZE",
           "APPLY", "DUPLICATE", "GAP"]

#: What :meth:`Inbound.receive` says about an entry.
APPLY = 1
DUPLICATE = 0
GAP = -1

#: Bytes of randomness naming one incarnation of a sending node.
EPOCH_SIZE = 8


def new_epoch() -> bytes:
    """A fresh epoch for a stream made at node start."""
    return os.urandom(EPOCH_SIZE)


@attrs.define(slots=True, eq=False)
class OutboundEntry:
    """One numbered entry kept until the peer acknowledged it."""

    seq: int
    #: What the data plane sends (already plain data for the wire).
    body: Any
    #: Its share of the stream's byte bound.
    size: int
    #: The caller's handle (e.g. the message ref to delete from the outbox
    #: once the peer has it).
    token: Any = None
    #: Sent before on a connection that may have lost it: the receiver must
    #: treat what it applies from it as a possible duplicate.
    redelivery: bool = False
    #: The caller's: whatever waits for this entry to be safe (the data
    #: plane keeps a publisher's acknowledgement here).
    waiter: Any = None


@attrs.define(slots=True)
class Outbound:
    """
    The sending half of one peer's stream.

    ``limit`` bounds the bytes held unacknowledged (VerneMQ's
    ``outgoing_clustering_buffer_size``): past it :meth:`push` refuses, and
    the broker refuses to acknowledge the publish that needed the room,
    rather than dropping something a client was told was safe.
    """

    limit: int
    epoch: bytes = attrs.Factory(new_epoch)
    next_seq: int = 1
    #: Highest sequence number the peer acknowledged.
    acked: int = 0
    #: Highest sequence number handed out for sending on the current link.
    sent: int = 0
    held_bytes: int = 0
    _entries: "OrderedDict[int, OutboundEntry]" = attrs.Factory(OrderedDict)

    def __len__(self) -> int:
        return len(self._entries)

    def has_room(self, size: int) -> bool:
        """Whether an entry of ``size`` bytes fits under the bound now."""
        return self.held_bytes + size <= self.limit or not self._entries

    def push(self, body: Any, size: int, token: Any = None,
             redelivery: bool = False, force: bool = False) -> Optional[OutboundEntry]:
        """
        Number and keep ``body``; None when it does not fit.

        An empty stream always takes one entry, however large, so a single
        message bigger than the bound is not refused forever.  ``force``
        takes it whatever the bound: for what this node already promised
        to keep (an outbox read back after a restart, a moved session's
        queue), where refusing would lose it.
        """
        if not force and not self.has_room(size):
            return None
        entry = OutboundEntry(self.next_seq, body, size, token, redelivery)
        self.next_seq += 1
        self._entries[entry.seq] = entry
        self.held_bytes += size
        return entry

    def unsent(self) -> List[OutboundEntry]:
        """
        Entries not yet written on the current link, in order; they count as
        sent from now on.  Call it when the link is up and writable.
        """
        if self.sent >= self.next_seq - 1:
            return []
        start = max(self.sent, self.acked) + 1
        entries = self._entries
        out = [entries[seq] for seq in range(start, self.next_seq) if seq in entries]
        self.sent = self.next_seq - 1
        return out

    def link_lost(self) -> None:
        """
        The link went (or was replaced): whatever was written and not
        acknowledged may be lost, so it is sent again, as a redelivery, on
        the next link.
        """
        for seq in range(self.acked + 1, self.sent + 1):
            entry = self._entries.get(seq)
            if entry is not None:
                entry.redelivery = True
        self.sent = self.acked

    def acknowledge(self, epoch: bytes, upto: int) -> List[OutboundEntry]:
        """
        The peer has every entry up to ``upto`` safe: release them.  An
        acknowledgement for another epoch (an earlier incarnation of this
        node) releases nothing.
        """
        if epoch != self.epoch or upto <= self.acked:
            return []
        upto = min(upto, self.next_seq - 1)
        released = []
        entries = self._entries
        while entries:
            seq, entry = next(iter(entries.items()))
            if seq > upto:
                break
            del entries[seq]
            self.held_bytes -= entry.size
            released.append(entry)
        self.acked = upto
        if self.sent < upto:
            self.sent = upto
        return released

    def entries(self) -> Iterator[OutboundEntry]:
        """Every entry not yet acknowledged, in order."""
        return iter(self._entries.values())


@attrs.define(slots=True)
class Inbound:
    """
    The receiving half of one peer's stream.

    :meth:`receive` says whether to apply an entry; the caller reports each
    applied entry's safety with :meth:`safe` (at once, or when its store
    write completed) and sends :meth:`ack` when it returns a number.
    Safety may be reported out of order; the acknowledgement only ever
    covers a prefix in which every entry is safe.
    """

    epoch: Optional[bytes] = None
    #: Highest sequence number applied (or dropped as a duplicate).
    applied: int = 0
    #: Highest sequence number up to which every entry is safe.
    safe_upto: int = 0
    #: Highest sequence number acknowledged to the sender.
    acked: int = 0
    #: Sequence numbers applied but not yet safe, in order, with a flag.
    _waiting: Deque[List[Any]] = attrs.Factory(deque)

    def receive(self, epoch: bytes, seq: int, base: int) -> int:
        """
        :data:`APPLY` when entry ``seq`` of ``epoch`` is the next one and
        must be applied; :data:`DUPLICATE` for one already applied (a resend
        after a reconnect); :data:`GAP` for one past the next: entries before
        it were lost with an older connection (or it is a straggler of one
        overtaking the new connection's resend).  A gap is not applied: the
        caller asks the sender to resend from :attr:`safe_upto`, or the
        entries before it would later be taken for duplicates.

        ``base`` is the sender's acknowledged position when it sent the entry:
        a receiver meeting an epoch for the first time (the sender restarted,
        or this node did and remembers nothing) starts after it, since the
        sender keeps everything past it.
        """
        if epoch != self.epoch:
            self.epoch = epoch
            self.applied = self.safe_upto = self.acked = base
            self._waiting.clear()
        if seq <= self.applied:
            return DUPLICATE
        if seq != self.applied + 1:
            return GAP
        self.applied = seq
        self._waiting.append([seq, False])
        return APPLY

    def safe(self, epoch: bytes, seq: int) -> None:
        """Entry ``seq`` (applied earlier) is now safe on this node."""
        if epoch != self.epoch:
            return  # the sender restarted meanwhile; it resends anyway
        waiting = self._waiting
        for item in waiting:
            if item[0] == seq:
                item[1] = True
                break
        while waiting and waiting[0][1]:
            self.safe_upto = waiting.popleft()[0]
        if not waiting:
            self.safe_upto = self.applied

    def ack_due(self, batch: int = 1) -> Optional[Tuple[bytes, int]]:
        """
        ``(epoch, upto)`` to acknowledge when at least ``batch`` entries
        became safe since the last acknowledgement (``batch=1``: any), else
        None.  The caller sends it and the stream counts it as sent.
        """
        if self.epoch is None or self.safe_upto - self.acked < batch:
            return None
        self.acked = self.safe_upto
        return (self.epoch, self.safe_upto)

    def reack(self) -> Tuple[Optional[bytes], int]:
        """
        The current acknowledgement again, for a new link: the previous
        one may have died with the old connection.  The epoch is None while
        nothing was received (the sender learns only that it must resend).
        """
        self.acked = self.safe_upto
        return (self.epoch, self.safe_upto)
