"""
Moved to :mod:`vmqtw.testing.memory_transport` (a test tool, not part of a
node).  This alias stays only until ``tests/brokerharness.py`` imports the
new place; nothing else may use it.
"""
from vmqtw.testing.memory_transport import (InMemoryNetwork,
                                            InMemoryTransport,
                                            PeerUnreachable, RemoteCallError)

__all__ = ["InMemoryNetwork", "InMemoryTransport", "PeerUnreachable",
           "RemoteCallError"]
