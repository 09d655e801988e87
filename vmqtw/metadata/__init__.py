"""
Cluster metadata: subscriptions and retained messages, replicated.

The broker sees only :class:`vmqtw.interfaces.IMetadataStore`; this package
provides the single-node store (``local``, the lead's) and the replicated
one, built in layers so that each can be tested alone:

pure (no I/O, no clock reads)
    ``codec``       canonical msgpack of keys and objects (no pickle)
    ``dvvset``      dotted version vector sets over immutable tuples
    ``mdobject``    a DVV set of ``(boxed, ts, node)``: write, LWW
                    resolution (deterministic, history kept), merge, hash
    ``hashtree``    Merkle trees per prefix (1024 segments, 32 buckets)
    ``orswot``      add-wins observed-remove set of member names

domain (injected clock and transport)
    ``store``       :class:`ReplicatedMetadataStore`: dict per prefix,
                    write-through LevelDB, events, the plumtree handler;
                    one persisted DVV actor per data directory and one dot
                    counter across keys, so dots are never reused
    ``broadcast``   :class:`PlumtreeBroadcast`: eager/lazy trees per root,
                    prune / i_have / graft, batched lazy announcements,
                    bounded outstanding table, exchange tick
    ``exchange``    :class:`AntiEntropy`: Merkle exchange, repair both ways
    ``tombstone_gc`` :class:`TombstoneCollector`: a tombstone goes once
                    every member has seen it (memory stays bounded)
    ``membership``  :class:`PeerService`: ORSWOT members + addresses,
                    join / leave / gossip, liveness, ``ready``

    ``node``        :class:`MetadataNode`: all of the above for one node,
                    wired to a transport and a clock (what the broker uses)

test tools (in :mod:`vmqtw.testing`, not here: a node never needs them)
    ``vmqtw.testing.memory_transport``  the in-memory
                    :class:`IClusterTransport` with partitions, drops,
                    delays and counters (TCP is in :mod:`vmqtw.cluster`)
    ``vmqtw.testing.simulation``  :class:`SimCluster`: N nodes on one
                    ``task.Clock``

A local ``put`` commits (dict, LevelDB, tree, events) and hands
``(mid, object)`` to plumtree; receivers merge and forward along the tree;
what a lost message or a netsplit leaves behind is repaired by i_have/graft
and by anti-entropy, which also runs soon after a peer reconnects.
Concurrent writes become siblings that every reader resolves identically
by ``(ts, node)``.
"""
