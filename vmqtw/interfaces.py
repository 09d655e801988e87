"""
The seams of vmqtw.

The broker core reaches storage and replication only through
:class:`IMessageStore` and :class:`IMetadataStore`; everything behind them is
a plugin chosen by name in the configuration.  A conformance suite per
interface lives in :mod:`vmqtw.testing` and runs against every
implementation, so a third party can prove their plugin with the same tests.
"""
from __future__ import annotations

import enum
from typing import Any, Callable, Tuple

from zope.interface import Attribute, Interface

__all__ = ["ChangeOrigin", "IMessageStore", "IMessageStoreFactory", "IMetadataStore",
           "MetadataCallback"]


class ChangeOrigin(enum.Enum):
    """
    Who made a metadata change, as :meth:`IMetadataStore.subscribe`
    callbacks are told.

    A subscriber that writes keys itself must tell the echo of its own write
    from another node's doing: the registry, for one, closes a connection
    when another node takes its session over, but not when it rewrote the
    record itself.  It is the *process* that matters, not the node name: a
    record this node wrote before a restart comes back from a peer as
    ``REMOTE``.
    """

    #: ``put`` or ``delete`` called on this store object, in this process.
    LOCAL = "local"
    #: Merged from another node: a replicated write (broadcast), an
    #: anti-entropy repair, or the settling of concurrent writes.
    REMOTE = "remote"


#: ``callback(prefix, key, old_value, new_value, origin)``; ``new_value`` is
#: ``None`` when the key was deleted and ``old_value`` is ``None`` when it is
#: new; ``origin`` is a :class:`ChangeOrigin`.
MetadataCallback = Callable[[Tuple[str, str], Any, Any, Any, ChangeOrigin], None]


class IMessageStore(Interface):
    """
    Offline QoS 1/2 messages of this node, one queue per subscriber.

    Modelled on VerneMQ's ``msg_store_*`` hooks: a message's payload is stored
    once under its ``ref`` and every subscriber that holds it gets one small
    index entry; the payload is removed when the last index entry is deleted.
    Every method returns a ``Deferred``; a ``write`` fires only once the
    message is as durable as the implementation promises (``durable``),
    because the broker acknowledges the publisher only after that.
    """

    name = Attribute("Short name the store is selected by, e.g. 'leveldb'.")
    durable = Attribute(
        "True when written messages survive a restart of the process.")

    def open():
        """
        Open the store.  Returns a Deferred firing when it is ready.
        """

    def close():
        """
        Flush and close the store.  Returns a Deferred.
        """

    def write(subscriber_id, message):
        """
        Store ``message`` (a :class:`vmqtw.types.Message`) for
        ``subscriber_id`` (a :class:`vmqtw.types.SubscriberId`).

        Writing the same ``message.ref`` for a second subscriber adds an
        index entry only.  Returns a Deferred firing with ``None``.
        """

    def read(subscriber_id, ref):
        """
        Returns a Deferred firing with the stored :class:`Message` or ``None``
        when ``subscriber_id`` holds no message ``ref``.
        """

    def delete(subscriber_id, ref):
        """
        Remove ``subscriber_id``'s index entry for ``ref``; the payload goes
        when no subscriber refers to it any more.  Deleting an absent entry
        is not an error.  Returns a Deferred firing with ``None``.
        """

    def find(subscriber_id):
        """
        Returns a Deferred firing with the list of refs ``subscriber_id``
        holds, in the order they were written.
        """

    def subscribers():
        """
        Returns a Deferred firing with the list of every subscriber id that
        holds at least one message; used to restore offline queues at start.
        """


class IMessageStoreFactory(Interface):
    """
    A plugin (also providing ``twisted.plugin.IPlugin``) that builds a
    message store; found with ``getPlugins`` in :mod:`vmqtw.plugins`.
    """

    name = Attribute("The value of ``message_store`` that selects it.")

    def build(config, reactor):
        """
        Return an unopened :class:`IMessageStore` for ``config`` (a
        :class:`vmqtw.config.Config`).
        """


class IEnhancedAuthenticator(Interface):
    """
    One MQTT 5.0 enhanced authentication method (section 4.12), such as
    ``SCRAM-SHA-256`` or a token scheme: a client names it in CONNECT's
    Authentication Method, and the broker relays Authentication Data
    between the client and this object until it decides.

    Each call returns an :class:`vmqtw.auth.enhanced.AuthStep` (or a
    Deferred firing with one): ``success`` (the client is authenticated,
    as ``username``; CONNACK 0 carries the step's data), ``continue``
    (an AUTH 0x18 carries the step's data to the client, whose answer
    comes to :meth:`proceed` with the step's ``exchange``), or ``fail``
    (CONNACK, or DISCONNECT on re-authentication, with its reason code).
    A method that succeeded replaces the password check: the method is
    the proof.  ACLs still apply, to the user name the step gave.
    """

    method = Attribute("The Authentication Method it speaks, e.g. 'SCRAM-SHA-256'.")

    def begin(info, data):
        """
        A client starts an exchange, at CONNECT or when it re-authenticates
        (AUTH 0x19): ``info`` is a :class:`vmqtw.mqtt.session.ConnectInfo`
        (client id, user name and password as sent, peer), ``data`` the
        client's Authentication Data (bytes or None).
        """

    def proceed(exchange, data):
        """The client answered a ``continue`` step with ``data``."""


class IEnhancedAuthFactory(Interface):
    """
    A plugin (also providing ``twisted.plugin.IPlugin``) that builds an
    enhanced authenticator; found with ``getPlugins`` in
    :mod:`vmqtw.plugins` and turned on by naming it in
    ``enhanced_auth.plugins``.
    """

    name = Attribute("The name ``enhanced_auth.plugins`` lists it by.")

    def build(config, reactor):
        """Return an :class:`IEnhancedAuthenticator` for ``config``."""


class IMetadataStore(Interface):
    """
    Cluster-wide metadata: subscriptions and retained messages.

    Keys and values are plain data built from ``None``, ``bool``, ``int``,
    ``float``, ``str``, ``bytes`` and tuples, so every implementation can
    serialise them without pickle.  Calls are synchronous: reads come from
    memory and a ``put`` is committed locally before it returns (replication
    to other nodes happens afterwards).

    ``subscribe`` callbacks fire for every change of a key whatever caused it
    -- a local write, a replicated write from another node, or a repair after
    a netsplit -- synchronously once the change is committed, and are told
    which it was (:class:`ChangeOrigin`).
    """

    def put(prefix, key, value):
        """Store ``value`` under ``key`` in ``prefix`` (a 2-tuple of str)."""

    def get(prefix, key, default=None):
        """The value under ``key``, or ``default`` when absent or deleted."""

    def delete(prefix, key):
        """Remove ``key`` (a tombstone where the store replicates)."""

    def items(prefix):
        """
        Iterate ``(key, value)`` pairs of ``prefix``, deleted keys skipped.
        """

    def fold(prefix, function, accumulator):
        """
        ``function((key, value), accumulator) -> accumulator`` over
        :meth:`items`; returns the final accumulator.
        """

    def subscribe(prefix, callback):
        """
        Call ``callback(prefix, key, old, new, origin)`` on every change in
        ``prefix`` (see :data:`MetadataCallback`): ``origin`` is
        ``ChangeOrigin.LOCAL`` for a ``put``/``delete`` made on this store
        object, ``ChangeOrigin.REMOTE`` for a change merged from another
        node.  Returns a zero-argument callable that unsubscribes.
        """



class IClusterTransport(Interface):
    """
    Messages between cluster nodes, for metadata replication (plumtree,
    anti-entropy, membership gossip) and later the MQTT data plane.

    Messages are plain data (``None``, ``bool``, ``int``, ``float``, ``str``,
    ``bytes``, tuples, dicts with str keys) so that every implementation can
    serialise them compactly without pickle; tuples arrive as tuples.
    Implementations: an in-memory one driven by ``task.Clock`` for
    deterministic simulations and the TCP one for real nodes.
    """

    node = Attribute("This node's name, e.g. 'vmqtw@127.0.0.1'.")

    def start():
        """Start listening/connecting.  Returns a Deferred."""

    def stop():
        """Close every link and stop reconnecting.  Returns a Deferred."""

    def set_peer_address(peer, address):
        """
        Keep a link to ``peer`` at ``address`` (a ``(host, port)`` tuple),
        reconnecting with backoff; ``address=None`` forgets the peer and
        closes its link.
        """

    def connected(peer):
        """True while an authenticated link to ``peer`` is up."""

    def connected_peers():
        """The names of every peer with an authenticated link up."""

    def cast(peer, channel, message):
        """
        Send ``message`` to ``peer``'s handler for ``channel``, fire and
        forget.  Returns False when it was dropped at once (unknown peer,
        buffer full); True means queued or sent, not delivered.
        """

    def call(peer, method, args, timeout):
        """
        Call ``peer``'s handler for ``method`` with ``*args``.  Returns a
        Deferred firing with its result, or failing with ``PeerUnreachable``,
        ``RemoteCallError`` or a timeout after ``timeout`` seconds.
        """

    def register_cast_handler(channel, handler):
        """``handler(peer, message)`` for casts on ``channel``."""

    def register_call_handler(method, handler):
        """``handler(peer, *args)`` returning a value or a Deferred."""

    def add_peer_listener(on_up, on_down):
        """``on_up(peer)`` / ``on_down(peer)`` when a link comes up/goes."""
