"""
Exceptions shared across layers, so that code written against an interface
(e.g. ``IClusterTransport``) can catch them whatever the implementation.
"""
from __future__ import annotations

from twisted.internet import defer

__all__ = ["PeerUnreachable", "RemoteCallError", "CallTimeout", "BacklogFull",
           "StoreUnavailable"]


class PeerUnreachable(Exception):
    """No authenticated link to the peer, or it went down during a call."""


class RemoteCallError(Exception):
    """The peer's call handler failed; the message is ``"Type: text"``."""


class CallTimeout(defer.TimeoutError):
    """No reply to a ``call`` within its timeout."""


class BacklogFull(Exception):
    """
    Another node's unacknowledged backlog has no room for a message: the
    publish is routed nowhere and not acknowledged (the client resends).
    """


class StoreUnavailable(Exception):
    """
    The message store cannot take writes now (its database is away): the
    message is not acknowledged (the client resends it).  The store says
    so once in the log, not once per message.
    """
