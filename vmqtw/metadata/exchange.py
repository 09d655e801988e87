"""
Anti-entropy: compare Merkle trees with a peer and repair both sides.

The initiator drives; the responder only answers small RPCs over the
transport (``md_aae_*``), so any node can serve several exchanges at once
while it runs at most one of its own (the broadcast layer's
``exchange_limit``).  Steps:

1. fetch the peer's ``(prefix, top)`` list; equal tops need nothing more;
2. per differing prefix, compare bucket hashes, then the segment hashes of
   differing buckets, then the ``(key, object hash)`` leaves of differing
   segments -- a prefix one side lacks simply differs everywhere;
3. for every differing key fetch the peer's object and merge it locally,
   then send ours (after the merge) where it still differs.

Repairs fire change events like any merge but are not rebroadcast:
everyone repairs with everyone over time.  The trees are cached hashes, so
a write that races an exchange is at worst repaired by the next one.
"""
from __future__ import annotations

from typing import Any, Dict, Generator, List, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from vmqtw.metadata.codec import decode
from vmqtw.metadata import mdobject
from vmqtw.metadata.codec import encode

__all__ = ["AntiEntropy"]

log = Logger()

Prefix = Tuple[str, str]


class AntiEntropy:
    """Exchange sessions and their responder RPCs for one store."""

    def __init__(self, store: Any, transport: Any, timeout: float = 60.0,
                 batch: int = 500) -> None:
        self.store = store
        self.transport = transport
        self.timeout = timeout
        self.batch = batch
        #: Keys found different by this node's exchanges, in total.
        self.repaired = 0
        self.exchanges = 0
        store.exchanger = self.exchange
        for name in ("summary", "buckets", "segments", "keys", "get",
                     "merge"):
            transport.register_call_handler("md_aae_" + name,
                                            getattr(self, "_rpc_" + name))

    # -- responder ---------------------------------------------------------------
    def _rpc_summary(self, peer: str) -> tuple:
        return tuple((p[0], p[1], top) for p, top in self.store.tree.prefixes())

    def _rpc_buckets(self, peer: str, p1: str, p2: str) -> tuple:
        return self.store.tree.buckets((p1, p2))

    def _rpc_segments(self, peer: str, p1: str, p2: str, buckets: tuple
                      ) -> tuple:
        tree = self.store.tree
        return tuple(tree.segment_hashes((p1, p2), b) for b in buckets)

    def _rpc_keys(self, peer: str, p1: str, p2: str, segments: tuple
                  ) -> tuple:
        return self.store.tree.key_hashes((p1, p2), segments)

    def _rpc_get(self, peer: str, p1: str, p2: str, keys: tuple) -> tuple:
        raw = self.store.raw
        return tuple(raw((p1, p2), decode(k)[2]) for k in keys)

    def _rpc_merge(self, peer: str, p1: str, p2: str, objects: tuple) -> int:
        merged = 0
        for kenc, obj in objects:
            if self.store.merge_object((p1, p2), decode(kenc)[2], obj):
                merged += 1
        return merged

    # -- initiator -----------------------------------------------------------------
    def _call(self, peer: str, method: str, *args: Any) -> defer.Deferred:
        return self.transport.call(peer, "md_aae_" + method, args,
                                   self.timeout)

    @defer.inlineCallbacks
    def exchange(self, peer: str) -> Generator[defer.Deferred[Any], Any, int]:
        """
        One exchange with ``peer``; fires with the number of keys that
        differed (and were repaired in either direction).
        """
        tree = self.store.tree
        remote_tops = {(p1, p2): top for p1, p2, top in
                       (yield self._call(peer, "summary"))}
        local_tops = dict(tree.prefixes())
        differing = 0
        for prefix in sorted(set(remote_tops) | set(local_tops)):
            if remote_tops.get(prefix) == local_tops.get(prefix):
                continue
            differing += yield self._exchange_prefix(
                peer, prefix, prefix in remote_tops)
        self.exchanges += 1
        self.repaired += differing
        if differing:
            log.info("anti-entropy with {peer} repaired {n} keys", peer=peer,
                     n=differing)
        return differing

    @defer.inlineCallbacks
    def _exchange_prefix(self, peer: str, prefix: Prefix,
                         remote_has: bool) -> Generator[defer.Deferred[Any], Any, int]:
        tree = self.store.tree
        p1, p2 = prefix
        remote_buckets = (yield self._call(peer, "buckets", p1, p2)) \
            if remote_has else ()
        buckets = tree.diff_buckets(prefix, remote_buckets)
        if remote_buckets:
            remote_segs = yield self._call(peer, "segments", p1, p2,
                                           tuple(buckets))
        else:
            remote_segs = tuple(() for _ in buckets)
        segments: List[int] = []
        for b, rsegs in zip(buckets, remote_segs):
            lsegs = tree.segment_hashes(prefix, b)
            for j in range(tree.width):
                if not rsegs or rsegs[j] != lsegs[j]:
                    segments.append(b * tree.width + j)
        remote_keys: Dict[bytes, bytes] = {}
        if remote_has:
            for i in range(0, len(segments), 256):
                chunk = tuple(segments[i:i + 256])
                remote_keys.update((yield self._call(peer, "keys", p1, p2,
                                                     chunk)))
        local_keys = dict(tree.key_hashes(prefix, segments))
        diff = sorted(k for k in set(remote_keys) | set(local_keys)
                      if remote_keys.get(k) != local_keys.get(k))
        for i in range(0, len(diff), self.batch):
            yield self._repair(peer, prefix, diff[i:i + self.batch],
                               remote_keys)
        return len(diff)

    @defer.inlineCallbacks
    def _repair(self, peer: str, prefix: Prefix, keys: List[bytes],
                remote_keys: Dict[bytes, bytes]) -> Generator[defer.Deferred[Any], Any, None]:
        p1, p2 = prefix
        wanted = tuple(k for k in keys if k in remote_keys)
        remote_objs = (yield self._call(peer, "get", p1, p2, wanted)) \
            if wanted else ()
        store = self.store
        for kenc, obj in zip(wanted, remote_objs):
            if obj is not None:
                store.merge_object(prefix, decode(kenc)[2], obj)
        push = []
        for kenc in keys:
            local = store.raw(prefix, decode(kenc)[2])
            if local is None:
                continue
            if mdobject.hash_bytes(encode(local)) != remote_keys.get(kenc):
                push.append((kenc, local))
        if push:
            yield self._call(peer, "merge", p1, p2, tuple(push))
