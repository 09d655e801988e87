"""
MQTT over WebSocket (``listener.ws.<name>``, ``listener.wss.<name>``).

The WebSocket protocol itself (HTTP upgrade, framing, masking, control
frames, the closing handshake) is autobahn's: hand-written framing is a
class of bugs a broker need not own.  What is ours is small:

* the opening handshake's answer (:func:`answer_opening`, pure): the path
  VerneMQ serves, ``/mqtt``, and the subprotocol.  MQTT over WebSocket
  needs ``mqtt`` [MQTT-6.0.0-3]; VerneMQ also takes ``mqttv3.1`` (old
  clients) and picks the first one the client offers that it knows.  A
  client offering neither is refused, as VerneMQ refuses it;
* the bytes: every binary message's payload goes into the same
  :class:`~vmqtw.mqtt.protocol.MQTTProtocol` a TCP connection feeds, as
  it arrives (a packet may span messages, a message may hold several
  packets [MQTT-6.0.0-2]), so the MQTT decoder bounds a packet's size, not
  autobahn's message buffer.  A text message closes the connection
  [MQTT-6.0.0-1].  Each write of the MQTT side is one binary message.

The MQTT protocol sees :class:`WebSocketStream` as its transport; it is
attached when the TCP (or TLS) connection is made, so the CONNECT deadline
(``connect_timeout``) also bounds a client that never finishes the HTTP
upgrade, and a connection in its handshake counts against
``listener.max_connections`` as any other.  Aborting goes straight to the
socket; pausing reading (backpressure) pauses the socket.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence, Set, Union

import attrs
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IHandshakeListener, IReactorTime, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from txaio.tx import make_logger
from zope.interface import implementer

from vmqtw.mqtt.protocol import MQTTFactory, MQTTProtocol, _IConnection
from vmqtw.mqtt.session import CONNECTED

__all__ = ["MQTT_PATH", "SUBPROTOCOLS", "Accept", "Refuse", "answer_opening",
           "WebSocketStream", "MQTTWebSocketProtocol", "MQTTWebSocketFactory"]

#: The path VerneMQ serves MQTT on (``ws://host:port/mqtt``).
MQTT_PATH = "/mqtt"
#: The subprotocols taken, as VerneMQ's: ``mqtt`` [MQTT-6.0.0-3] and the
#: ``mqttv3.1`` of MQTT 3.1 clients.
SUBPROTOCOLS = ("mqtt", "mqttv3.1")
#: The most bytes of an HTTP upgrade request kept before it is complete: a
#: client sending endless headers is cut off, not buffered.
MAX_HANDSHAKE_BYTES = 16 * 1024
log = Logger()

#: Close code 1003: "received a type of data it cannot accept" (RFC 6455 7.4.1).
CLOSE_UNSUPPORTED_DATA = 1003


@attrs.frozen(slots=True)
class Accept:
    """Upgrade, answering ``Sec-WebSocket-Protocol: <subprotocol>``."""

    subprotocol: str


@attrs.frozen(slots=True)
class Refuse:
    """Answer the upgrade request with HTTP ``code`` and ``reason``."""

    code: int
    reason: str


def answer_opening(path: str, offered: Sequence[str]) -> Union[Accept, Refuse]:
    """
    What to answer a WebSocket upgrade request for ``path`` offering the
    subprotocols ``offered`` (in the client's order of preference).
    """
    if path != MQTT_PATH:
        return Refuse(ConnectionDeny.NOT_FOUND, "MQTT is served on %s only" % (MQTT_PATH,))
    for subprotocol in offered:
        if subprotocol in SUBPROTOCOLS:
            return Accept(subprotocol)
    return Refuse(ConnectionDeny.BAD_REQUEST,
                  "MQTT over WebSocket needs the subprotocol mqtt (offered: %s)"
                  % (", ".join(offered) or "none",))


@implementer(ITransport)
class WebSocketStream:
    """
    The transport :class:`MQTTProtocol` writes to and steers: the methods
    of a TCP transport it uses, over one WebSocket connection.
    """

    #: :class:`MQTTProtocol` registers itself as this stream's producer,
    #: passed on to the socket's transport (TCP or TLS), which pauses it
    #: while its buffer is full.
    passes_producer_on = True

    def __init__(self, websocket: "MQTTWebSocketProtocol") -> None:
        self.websocket = websocket

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.websocket.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.websocket.unregisterProducer()

    def write(self, data: bytes) -> None:
        websocket = self.websocket
        if websocket.state == WebSocketServerProtocol.STATE_OPEN:
            websocket.sendMessage(data, isBinary=True)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """
        A clean close: the WebSocket closing handshake (autobahn closes the
        socket on the client's answer, or a second later), or, before the
        upgrade or once a close frame is out, the socket once what was
        written is sent.
        """
        websocket = self.websocket
        if websocket.state == WebSocketServerProtocol.STATE_OPEN:
            websocket.sendClose(1000)
        elif websocket.transport is not None:
            websocket.transport.loseConnection()

    def abortConnection(self) -> None:
        transport = self.websocket.transport
        if transport is not None:
            transport.abortConnection()

    def pauseProducing(self) -> None:
        self.websocket.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.websocket.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.abortConnection()

    def getPeer(self) -> Any:
        return self.websocket.transport.getPeer()

    def getHost(self) -> Any:
        return self.websocket.transport.getHost()

    def getPeerCertificate(self) -> Any:
        """The client certificate of a wss connection (None on plain ws)."""
        get_certificate = getattr(self.websocket.transport, "getPeerCertificate", None)
        return get_certificate() if get_certificate is not None else None


@implementer(IHandshakeListener)
class MQTTWebSocketProtocol(WebSocketServerProtocol):
    """One WebSocket connection carrying one MQTT connection."""

    #: autobahn's own log lines (three per refused upgrade, one at warning
    #: level, anyone can cause) are kept to errors; this module logs the
    #: refusals and closes an operator needs, at info, once each.
    log = make_logger(level="error")
    factory: "MQTTWebSocketFactory"
    # The TCP (or TLS) connection; set by Twisted before connectionMade.
    transport: _IConnection

    def __init__(self, mqtt: MQTTProtocol) -> None:
        super().__init__()
        self.mqtt = mqtt

    # -- from the socket -----------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self.mqtt.makeConnection(WebSocketStream(self))

    def dataReceived(self, data: bytes) -> None:
        if (self.state == WebSocketServerProtocol.STATE_CONNECTING
                and len(self.data) + len(data) > MAX_HANDSHAKE_BYTES):
            log.info("closing {peer}: WebSocket upgrade request over {limit} bytes",
                     peer=self.mqtt.session.peer, limit=MAX_HANDSHAKE_BYTES)
            self.mqtt.abort()
            return
        super().dataReceived(data)

    def handshakeCompleted(self) -> None:
        """wss: the TLS handshake is done; the MQTT side takes the certificate's name."""
        self.mqtt.handshakeCompleted()

    def connectionLost(self, reason: Any = None) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.mqtt.connectionLost(reason)

    # -- from autobahn ---------------------------------------------------------------

    def onConnect(self, request: ConnectionRequest) -> Optional[str]:
        answer = answer_opening(request.path, request.protocols)
        if isinstance(answer, Refuse):
            log.info("refusing WebSocket client {peer}: {reason}",
                     peer=self.mqtt.session.peer, reason=answer.reason)
            raise ConnectionDeny(answer.code, answer.reason)
        return answer.subprotocol

    # Message payloads are streamed, frame by frame, into the MQTT decoder:
    # nothing is gathered here, so these replace autobahn's buffering hooks.

    def onMessageBegin(self, isBinary: bool) -> None:
        if not isBinary and not self.mqtt.closing:
            # [MQTT-6.0.0-1]: MQTT travels in binary messages only.  The close
            # frame says why; then the socket closes (no closing handshake).
            mqtt = self.mqtt
            if mqtt.session.state != CONNECTED:
                log.info("closing {peer}: a WebSocket text message", peer=mqtt.session.peer)
            mqtt.session.ending("protocol error: a WebSocket text message")
            self.sendCloseFrame(CLOSE_UNSUPPORTED_DATA,
                                b"MQTT is carried in binary WebSocket messages only")
            mqtt.close()

    def onMessageFrameBegin(self, length: int) -> None:
        pass

    def onMessageFrameData(self, payload: bytes) -> None:
        if self.mqtt.closing:
            return
        self.mqtt.dataReceived(payload)

    def onMessageFrameEnd(self) -> None:
        pass

    def onMessageEnd(self) -> None:
        pass

    def onClose(self, wasClean: bool, code: Optional[int], reason: Optional[str]) -> None:
        """The client closed (or the connection ended): the socket follows; nothing here."""


class MQTTWebSocketFactory(WebSocketServerFactory):
    """
    The WebSocket side of one ``listener.ws``/``listener.wss``: each
    connection gets an :class:`MQTTProtocol` from ``mqtt`` (which refuses
    past ``listener.max_connections``).  ``connections`` is the MQTT
    factory's, so :class:`~vmqtw.service.ListenerService` closes them when
    the listener stops.
    """

    noisy = False

    def __init__(self, mqtt: MQTTFactory, clock: IReactorTime, secure: bool = False) -> None:
        # No Server header: the library and its version are nobody's business.
        super().__init__(url="%s://localhost/mqtt" % ("wss" if secure else "ws",),
                         protocols=list(SUBPROTOCOLS), server=None, reactor=clock)
        self.mqtt = mqtt
        # No HTML status page for a plain GET; the CONNECT deadline of the
        # MQTT side bounds the upgrade, so autobahn's own timer stays off;
        # no permessage-deflate (an inflation bomb is not worth the bytes);
        # no UTF-8 check of text messages: any text message is refused with
        # 1003 (and its close frame sent) before its payload is looked at.
        self.setProtocolOptions(webStatus=False, openHandshakeTimeout=0,
                                closeHandshakeTimeout=1, failByDrop=True,
                                utf8validateIncoming=False)

    @property
    def connections(self) -> Set[MQTTProtocol]:
        return self.mqtt.connections

    def buildProtocol(self, addr: Any) -> Optional[Protocol]:
        mqtt = self.mqtt.buildProtocol(addr)
        if mqtt is None:
            return None  # refused (max_connections): Twisted closes the socket
        protocol = MQTTWebSocketProtocol(mqtt)
        protocol.factory = self
        return protocol
