"""
The broker's configuration: VerneMQ's ``vernemq.conf`` (cuttlefish) format.

Everything the broker can be told lives in ONE table, ``SCHEMA``: each
``Setting`` names its key, its value type, its default and the sentence that
documents it.  Parsing, the typed ``Config`` object, the error messages and
the shipped ``etc/vernemq.conf`` are all derived from that table, so the
documentation an operator reads can never drift from what the code accepts.

The file format, as cuttlefish reads it::

    ## doc lines start with '##', ordinary comments with '#'
    key = value          # a '#' after the value starts a comment too
    listener.tcp.<name> = 127.0.0.1:1883

Errors are collected for the whole file and reported together, one line per
problem in the form ``FILE:LINE: key: what is wrong; allowed: what is
allowed``, because an operator fixing a config file wants the full list, not
one round trip per typo.

This module is pure: no reactor, no clock.  The only contact with the outside
world is ``load_config`` reading the file and resolving ``platform_data_dir``
against the working directory.
"""
from __future__ import annotations

import difflib
import ipaddress
import os
import re
import textwrap
from typing import Any, Callable, Iterable, Mapping, Sequence

import attrs

__all__ = [
    "Address",
    "ByteSize",
    "Config",
    "ConfigError",
    "describe_runtime_key",
    "Duration",
    "Enum",
    "Flag",
    "Identifier",
    "Integer",
    "NodeName",
    "PENDING_NOTE",
    "RUNTIME_KEYS",
    "Path",
    "Problem",
    "SCHEMA",
    "Setting",
    "Text",
    "load_config",
    "parse_config",
    "parse_runtime_value",
    "render_runtime_value",
    "render_default_config",
    "render_quickstart_config",
]


# ---------------------------------------------------------------------------
# Errors


@attrs.frozen(slots=True)
class Problem:
    """One thing wrong in a config file, located precisely enough to fix it."""

    filename: str
    line: int
    key: str
    wrong: str
    allowed: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}: {self.key}: {self.wrong}; allowed: {self.allowed}"


class ConfigError(Exception):
    """
    The configuration cannot be used.

    ``problems`` holds every problem found (empty when the file could not be
    read at all); ``str()`` is one line per problem, or a single sentence.
    """

    def __init__(self, problems: Sequence[Problem] | str) -> None:
        if isinstance(problems, str):
            self.problems: tuple[Problem, ...] = ()
            message = problems
        else:
            self.problems = tuple(problems)
            message = "\n".join(str(p) for p in self.problems)
        super().__init__(message)


class _Invalid(Exception):
    """A value type's complaint: what is wrong with the text (no location)."""


# ---------------------------------------------------------------------------
# Value types.  Each one parses the text after '=', renders a Python value
# back to text (so the template and round-trip tests share one spelling),
# and describes what it allows for the docs and the error messages.


_INT_RE = re.compile(r"-?[0-9]+\Z")


def _quote(text: str) -> str:
    return repr(text)


@attrs.frozen(slots=True)
class Flag:
    """``on`` or ``off`` only: cuttlefish flags are strict, so are we."""

    def parse(self, text: str) -> bool:
        if text == "on":
            return True
        if text == "off":
            return False
        raise _Invalid(f"{_quote(text)} is not a flag")

    def render(self, value: bool) -> str:
        return "on" if value else "off"

    def describe(self) -> str:
        return "on or off"


@attrs.frozen(slots=True)
class Integer:
    """A decimal integer within ``[minimum, maximum]`` (either may be open)."""

    minimum: int | None = None
    maximum: int | None = None

    def parse(self, text: str) -> int:
        if not _INT_RE.match(text):
            raise _Invalid(f"{_quote(text)} is not an integer")
        value = int(text)
        self._check_range(text, value)
        return value

    def _check_range(self, text: str, value: int) -> None:
        if self.minimum is not None and value < self.minimum:
            raise _Invalid(f"{_quote(text)} is too small")
        if self.maximum is not None and value > self.maximum:
            raise _Invalid(f"{_quote(text)} is too large")

    def render(self, value: int) -> str:
        return str(value)

    def describe(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"an integer from {self.minimum} to {self.maximum}"
        if self.minimum is not None:
            return f"an integer >= {self.minimum}"
        if self.maximum is not None:
            return f"an integer <= {self.maximum}"
        return "an integer"


_BYTE_UNITS = (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024))
_BYTESIZE_RE = re.compile(r"([0-9]+)(KB|MB|GB)?\Z")


def _render_bytes(n: int) -> str:
    for suffix, factor in _BYTE_UNITS:
        if n and n % factor == 0:
            return f"{n // factor}{suffix}"
    return str(n)


@attrs.frozen(slots=True)
class ByteSize:
    """
    A size in bytes: a bare integer, or an integer with ``KB``, ``MB`` or
    ``GB`` (powers of 1024, upper case, as cuttlefish writes them).
    """

    minimum: int = 0
    maximum: int | None = None

    def parse(self, text: str) -> int:
        m = _BYTESIZE_RE.match(text)
        if not m:
            raise _Invalid(f"{_quote(text)} is not a byte size")
        value = int(m.group(1)) * dict(_BYTE_UNITS).get(m.group(2) or "", 1)
        if value < self.minimum:
            raise _Invalid(f"{_quote(text)} is too small")
        if self.maximum is not None and value > self.maximum:
            raise _Invalid(f"{_quote(text)} is too large")
        return value

    def render(self, value: int) -> str:
        return _render_bytes(value)

    def describe(self) -> str:
        bounds = f"from {_render_bytes(self.minimum)}"
        if self.maximum is not None:
            bounds += f" to {_render_bytes(self.maximum)}"
        return f"a byte size {bounds}: an integer, optionally followed by KB, MB or GB (e.g. 64KB, 16MB)"


# Milliseconds per unit; the largest first so rendering is greedy.
_DURATION_UNITS = (("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000),
                   ("m", 60_000), ("s", 1000), ("ms", 1))
_DURATION_PART_RE = re.compile(r"([0-9]+)(ms|w|d|h|m|s)")
_DURATION_RE = re.compile(r"(?:[0-9]+(?:ms|w|d|h|m|s))+\Z")


@attrs.frozen(slots=True)
class Duration:
    """
    A span of time, parsed to seconds (float).

    Written as one or more ``<integer><unit>`` parts (``20s``, ``500ms``,
    ``1h30m``; units w, d, h, m = minutes, s, ms) or as a bare integer in
    the key's own ``unit``, so ``retry_interval = 20`` keeps meaning 20
    seconds as it does in VerneMQ.  With ``never`` set, the word ``never``
    is accepted too and parses to ``None``.
    """

    unit: str = "s"
    min_seconds: float = 0.0
    max_seconds: float | None = None
    never: bool = False

    def parse(self, text: str) -> float | None:
        if self.never and text == "never":
            return None
        if _INT_RE.match(text) and not text.startswith("-"):
            ms = int(text) * dict(_DURATION_UNITS)[self.unit]
        elif _DURATION_RE.match(text):
            ms = sum(int(n) * dict(_DURATION_UNITS)[u] for n, u in _DURATION_PART_RE.findall(text))
        else:
            raise _Invalid(f"{_quote(text)} is not a duration")
        seconds = ms / 1000
        if seconds < self.min_seconds:
            raise _Invalid(f"{_quote(text)} is too short")
        if self.max_seconds is not None and seconds > self.max_seconds:
            raise _Invalid(f"{_quote(text)} is too long")
        return seconds

    def render(self, value: float | None) -> str:
        if value is None:
            return "never"
        # One part in the largest unit that divides exactly reads best
        # (65535s, 90s, 1h, 500ms) and always parses back to the same value.
        ms = round(value * 1000)
        if ms == 0:
            return "0s"
        for suffix, factor in _DURATION_UNITS:
            if ms % factor == 0:
                return f"{ms // factor}{suffix}"
        raise AssertionError("unreachable: every count of ms divides by 1")

    def describe(self) -> str:
        text = "never or a duration" if self.never else "a duration"
        text += f" such as 500ms, 20s, 5m, 1h, 1d, 1w or 1h30m, or an integer in {_UNIT_NAMES[self.unit]}"
        bounds = []
        if self.min_seconds:
            bounds.append(f"at least {self.render(self.min_seconds)}")
        if self.max_seconds is not None:
            bounds.append(f"at most {self.render(self.max_seconds)}")
        if bounds:
            text += " (" + ", ".join(bounds) + ")"
        return text


_UNIT_NAMES = {"ms": "milliseconds", "s": "seconds", "m": "minutes", "h": "hours",
               "d": "days", "w": "weeks"}

_ADDRESS_RE = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<v4>[^:\[\]]*)):(?P<port>[0-9]+)\Z")


@attrs.frozen(slots=True)
class Address:
    """
    ``IP:PORT`` to listen on, parsed to ``(host, port)``.

    IPv6 addresses are bracketed (``[::1]:1883``) so the port separator is
    unambiguous; the host comes back without brackets.  Port 0 asks the OS
    for a free port, which tests rely on; an address others ``dial`` needs
    a real port.
    """

    dial: bool = False

    def parse(self, text: str) -> tuple[str, int]:
        m = _ADDRESS_RE.match(text)
        if not m:
            raise _Invalid(f"{_quote(text)} is not IP:PORT")
        try:
            if m.group("v6") is not None:
                host = str(ipaddress.IPv6Address(m.group("v6")))
            else:
                host = str(ipaddress.IPv4Address(m.group("v4")))
        except ValueError:
            raise _Invalid(f"{_quote(text)} does not start with an IP address") from None
        port = int(m.group("port"))
        if port > 65535:
            raise _Invalid(f"{_quote(text)} has a port above 65535")
        if self.dial and port == 0:
            raise _Invalid(f"{_quote(text)} has port 0, which other nodes cannot dial")
        return (host, port)

    def render(self, value: tuple[str, int]) -> str:
        host, port = value
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def describe(self) -> str:
        if self.dial:
            return ("IP:PORT with an IPv4 address or a bracketed IPv6 address and a port from "
                    "1 to 65535, e.g. 203.0.113.7:44053 or [2001:db8::7]:44053")
        return ("IP:PORT with an IPv4 address or a bracketed IPv6 address and a port from "
                "0 to 65535 (0 picks a free port), e.g. 127.0.0.1:1883 or [::1]:1883")


@attrs.frozen(slots=True)
class Enum:
    """One word from a fixed list."""

    choices: tuple[str, ...]

    def parse(self, text: str) -> str:
        if text not in self.choices:
            raise _Invalid(f"{_quote(text)} is not a valid choice")
        return text

    def render(self, value: str) -> str:
        return value

    def describe(self) -> str:
        return "one of " + ", ".join(self.choices)


_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@attrs.frozen(slots=True)
class Identifier:
    """A plugin-style name; ``known`` only shapes the description."""

    known: tuple[str, ...] = ()

    def parse(self, text: str) -> str:
        if not _IDENTIFIER_RE.match(text):
            raise _Invalid(f"{_quote(text)} is not a name")
        return text

    def render(self, value: str) -> str:
        return value

    def describe(self) -> str:
        known = ", ".join(self.known)
        prefix = f"{known} or " if known else ""
        return f"{prefix}the name of a plugin (letters, digits and _, not starting with a digit)"


_NODENAME_RE = re.compile(r"[A-Za-z0-9_-]+@[A-Za-z0-9_.-]+\Z")


@attrs.frozen(slots=True)
class NodeName:
    """``name@host``, the shape of an Erlang node name that VerneMQ uses."""

    def parse(self, text: str) -> str:
        if not _NODENAME_RE.match(text):
            raise _Invalid(f"{_quote(text)} is not name@host")
        return text

    def render(self, value: str) -> str:
        return value

    def describe(self) -> str:
        return "name@host (letters, digits, _ and - before the @; a host name or IP after it), e.g. vmqtw@127.0.0.1"


@attrs.frozen(slots=True)
class Text:
    """Any non-empty text (a '#' must be written '\\#')."""

    def parse(self, text: str) -> str:
        if not text:
            raise _Invalid("the value is empty")
        return text

    def render(self, value: str) -> str:
        return value.replace("#", "\\#")

    def describe(self) -> str:
        return "a non-empty string"


@attrs.frozen(slots=True)
class Path:
    """A file or directory path; relative ones are relative to the working directory."""

    def parse(self, text: str) -> str:
        if not text:
            raise _Invalid("the value is empty")
        return text

    def render(self, value: str) -> str:
        return value.replace("#", "\\#")

    def describe(self) -> str:
        return "a path (relative paths are resolved against the working directory)"


@attrs.frozen(slots=True)
class Versions:
    """A comma-separated list of MQTT protocol levels, e.g. ``3,4,5``."""

    known: tuple[int, ...] = (3, 4, 5)

    def parse(self, text: str) -> tuple[int, ...]:
        levels: list[int] = []
        for part in text.split(","):
            part = part.strip()
            if not _INT_RE.match(part) or int(part) not in self.known:
                raise _Invalid(f"{_quote(part)} is not a protocol version")
            if int(part) not in levels:
                levels.append(int(part))
        return tuple(sorted(levels))

    def render(self, value: tuple[int, ...]) -> str:
        return ",".join(str(level) for level in value)

    def describe(self) -> str:
        return "protocol levels separated by commas, from " + ", ".join(map(str, self.known))


@attrs.frozen(slots=True)
class Names:
    """A comma-separated list of plugin-style names, e.g. ``scram,token``."""

    def parse(self, text: str) -> tuple[str, ...]:
        names: list[str] = []
        for part in text.split(","):
            part = part.strip()
            if not _IDENTIFIER_RE.match(part):
                raise _Invalid(f"{_quote(part)} is not a name")
            if part not in names:
                names.append(part)
        return tuple(names)

    def render(self, value: tuple[str, ...]) -> str:
        return ",".join(value)

    def describe(self) -> str:
        return "names (letters, digits and _) separated by commas"


ValueType = (Flag | Integer | ByteSize | Duration | Address | Enum | Identifier | NodeName | Text
             | Path | Versions | Names)


# ---------------------------------------------------------------------------
# The schema


_NAME_SLOT = "<name>"
_NAME_RE = re.compile(r"[A-Za-z0-9_-]+\Z")
_KEY_RE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")


def _attr_for(key: str) -> str:
    return key.replace(".", "_")


@attrs.frozen(slots=True)
class Setting:
    """
    One key of ``vernemq.conf``.

    ``default`` is the parsed Python value used when the file does not set
    the key; ``None`` means "unset" (the attribute is then ``None``, or an
    empty mapping for a ``<name>`` key), and the template shows ``example``
    commented out instead.  ``attr`` is the ``Config`` attribute; it
    defaults to the key with dots turned into underscores.

    ``pending`` marks a key that is accepted (so VerneMQ configuration files
    keep loading) but has no effect yet; it names the issue that will give
    it one.  The template documents it as such and leaves it commented out,
    so the shipped file promises nothing the broker does not do.
    """

    key: str
    type: ValueType
    default: Any
    doc: str
    example: str | None = None
    default_name: str = "default"
    attr: str = attrs.field(default=attrs.Factory(lambda self: _attr_for(self.key), takes_self=True))
    pending: str | None = None

    @property
    def templated(self) -> bool:
        return _NAME_SLOT in self.key

    def matches(self, key: str) -> str | None:
        """The ``<name>`` filled in by ``key``, ``""`` for an exact fixed key, else None."""
        if not self.templated:
            return "" if key == self.key else None
        prefix, _, suffix = self.key.partition(_NAME_SLOT)
        if key.startswith(prefix) and key.endswith(suffix) and len(key) > len(prefix) + len(suffix):
            name = key[len(prefix):len(key) - len(suffix)]
            if _NAME_RE.match(name):
                return name
        return None

    def concrete_key(self, name: str | None = None) -> str:
        return self.key.replace(_NAME_SLOT, name or self.default_name)


_SECONDS_65535 = 65535.0

SCHEMA: tuple[Setting, ...] = (
    # -- node ---------------------------------------------------------------
    Setting(
        "nodename", NodeName(), "vmqtw@127.0.0.1",
        "The name of this node: name@host.  Every node of a cluster needs its own "
        "name, and other nodes use it to address this one, so the host part "
        "should be the address they reach it on.  Changing it on a node that "
        "already has data makes it a different node."),
    Setting(
        "distributed_cookie", Text(), "vmq",
        "The shared secret that nodes prove to each other before they exchange "
        "anything.  All nodes of a cluster must use the same cookie.  CHANGE "
        "IT: anyone who knows the default can join a cluster that uses it.  "
        "The cookie itself never crosses the wire."),
    Setting(
        "platform_data_dir", Path(), "./data",
        "Where the node keeps its state: the message store and the metadata "
        "(subscriptions, retained messages, cluster membership).  A relative "
        "path is resolved against the working directory when the broker "
        "starts."),
    # -- listeners ----------------------------------------------------------
    Setting(
        "listener.tcp.<name>", Address(), ("127.0.0.1", 1883),
        "An MQTT listener over plain TCP, as IP:PORT.  <name> is any word you "
        "choose; define as many listeners as you like, each under its own "
        "name.  If no listener.tcp key is set at all, listener.tcp.default = "
        "127.0.0.1:1883 is used.  Use 0.0.0.0 (or [::]) to accept connections "
        "on every interface.",
        attr="tcp_listeners"),
    Setting(
        "listener.ssl.<name>", Address(), None,
        "An MQTT listener over TLS, as IP:PORT.  <name> is any word you choose; "
        "none is defined by default.  Needs listener.ssl.certfile and "
        "listener.ssl.keyfile.",
        example="127.0.0.1:8883", attr="ssl_listeners"),
    Setting(
        "listener.ssl.certfile", Path(), None,
        "The PEM file with the certificate (chain) the TLS listeners present.",
        example="./etc/server.crt"),
    Setting(
        "listener.ssl.keyfile", Path(), None,
        "The PEM file with the private key of listener.ssl.certfile.",
        example="./etc/server.key"),
    Setting(
        "listener.ssl.cafile", Path(), None,
        "The PEM file with the certificate authorities that client "
        "certificates are checked against.  Needed when "
        "listener.ssl.require_certificate is on.",
        example="./etc/ca.crt"),
    Setting(
        "listener.ssl.require_certificate", Flag(), False,
        "When on, TLS clients must present a certificate signed by a CA in "
        "listener.ssl.cafile, or the handshake fails."),
    Setting(
        "listener.ssl.use_identity_as_username", Flag(), False,
        "When on, the common name of a client certificate is used as the MQTT "
        "user name, replacing whatever the CONNECT packet carries."),
    Setting(
        "listener.ws.<name>", Address(), None,
        "An MQTT listener over WebSocket, as IP:PORT: browsers and other "
        "WebSocket clients connect to ws://IP:PORT/mqtt offering the "
        "subprotocol mqtt (or mqttv3.1); a client offering neither is "
        "refused.  MQTT travels in binary messages; a text message closes "
        "the connection.  <name> is any word you choose; none is defined by "
        "default.",
        example="127.0.0.1:8080", attr="ws_listeners"),
    Setting(
        "listener.wss.<name>", Address(), None,
        "An MQTT listener over WebSocket and TLS (wss://IP:PORT/mqtt), as "
        "IP:PORT.  <name> is any word you choose; none is defined by default.  "
        "Needs listener.wss.certfile and listener.wss.keyfile (the wss "
        "listeners have their own TLS keys, as in VerneMQ).",
        example="127.0.0.1:8443", attr="wss_listeners"),
    Setting(
        "listener.wss.certfile", Path(), None,
        "The PEM file with the certificate (chain) the WebSocket TLS "
        "listeners present.",
        example="./etc/server.crt"),
    Setting(
        "listener.wss.keyfile", Path(), None,
        "The PEM file with the private key of listener.wss.certfile.",
        example="./etc/server.key"),
    Setting(
        "listener.wss.cafile", Path(), None,
        "The PEM file with the certificate authorities that client "
        "certificates on the WebSocket TLS listeners are checked against.  "
        "Needed when listener.wss.require_certificate is on.",
        example="./etc/ca.crt"),
    Setting(
        "listener.wss.require_certificate", Flag(), False,
        "When on, WebSocket TLS clients must present a certificate signed by "
        "a CA in listener.wss.cafile, or the handshake fails."),
    Setting(
        "listener.wss.use_identity_as_username", Flag(), False,
        "When on, the common name of a WebSocket TLS client's certificate is "
        "used as the MQTT user name, replacing whatever the CONNECT packet "
        "carries."),
    Setting(
        "listener.http.<name>", Address(), None,
        "An HTTP listener for monitoring, as IP:PORT: GET /metrics answers the "
        "node's metrics in the Prometheus text format, GET /health 200 OK "
        "while the node serves MQTT in a whole cluster and 503 with the "
        "reason while it does not (a netsplit, removed from its cluster, "
        "leaving it, starting), for a load balancer's health check.  None "
        "is defined by default; the shipped file defines "
        "listener.http.default = 127.0.0.1:8888, as VerneMQ's does.  Keep it "
        "on an address only your monitoring reaches: it has no "
        "authentication.",
        example="127.0.0.1:8888", attr="http_listeners"),
    Setting(
        "listener.max_connections", Integer(minimum=1), 10000,
        "The most connections each listener accepts at the same time; further "
        "connections are closed right after they are accepted."),
    Setting(
        "listener.allowed_protocol_versions", Versions(), (3, 4, 5),
        "The MQTT versions clients may speak, as protocol levels: 3 is MQTT "
        "3.1, 4 is MQTT 3.1.1, 5 is MQTT 5.0.  A CONNECT naming another is "
        "refused with CONNACK 'unacceptable protocol version'."),
    Setting(
        "listener.vmq.clustering", Address(), ("127.0.0.1", 44053),
        "Where this node accepts connections from the other nodes of its "
        "cluster, as IP:PORT.  MQTT messages between nodes travel over these "
        "links.  Other nodes must be able to reach this address, so on a real "
        "cluster it is not 127.0.0.1."),
    Setting(
        "listener.vmq.clustering.advertise", Address(dial=True), None,
        "The IP:PORT the other nodes of the cluster dial to reach this node, "
        "when that is not listener.vmq.clustering itself: a node behind NAT "
        "or port forwarding, or in a container whose published port differs "
        "from the one it listens on.  The node tells the cluster this "
        "address (membership gossip, cluster join); it still listens on "
        "listener.vmq.clustering.  With TLS between nodes, its certificate "
        "needs a subject alternative name for this IP.  When not set, the "
        "node advertises listener.vmq.clustering.",
        example="203.0.113.7:44053"),
    Setting(
        "cluster.tls.certfile", Path(), None,
        "The PEM file with this node's certificate (chain) for TLS between "
        "nodes.  TLS between nodes is on when this key is set; "
        "cluster.tls.keyfile and cluster.tls.cafile are then required, and "
        "every node of the cluster must use TLS.  Each node's certificate "
        "needs a subject alternative name matching its listener.vmq.clustering "
        "address (an IP SAN, or a DNS SAN for a host name) and must allow both "
        "TLS server and client authentication (extended key usages serverAuth "
        "and clientAuth): a node is the server of the links it accepts and the "
        "client of those it dials.  Nodes still prove distributed_cookie "
        "inside TLS.  vmqtw-admin uses the same three files to reach its node.",
        example="./etc/node.crt"),
    Setting(
        "cluster.tls.keyfile", Path(), None,
        "The PEM file with the unencrypted private key of cluster.tls.certfile.",
        example="./etc/node.key"),
    Setting(
        "cluster.tls.cafile", Path(), None,
        "The PEM file with the certificate authorities the other nodes' "
        "certificates must chain to; a peer whose certificate they did not "
        "sign cannot link with this node, whatever cookie it holds.",
        example="./etc/cluster-ca.crt"),
    # -- MQTT ---------------------------------------------------------------
    Setting(
        "allow_anonymous", Flag(), False,
        "When on, clients may connect without a user name and password.  "
        "Leave it off on anything reachable from other machines."),
    Setting(
        "max_client_id_size", Integer(minimum=23, maximum=65535), 100,
        "The longest client identifier accepted, in bytes.  MQTT requires "
        "accepting at least 23 bytes; longer ones are refused with CONNACK "
        "'identifier rejected'."),
    Setting(
        "max_message_size", ByteSize(maximum=256 * 1024**2), 0,
        "The largest MQTT packet a client may send; a client sending a larger "
        "one is disconnected.  0 means no limit other than MQTT's own (256MB)."),
    Setting(
        "max_inflight_messages", Integer(minimum=0, maximum=65535), 20,
        "How many QoS 1 and 2 messages may be on their way to one client, "
        "unacknowledged, at the same time.  0 means no limit; 1 guarantees "
        "in-order delivery even across retries."),
    Setting(
        "max_online_messages", Integer(minimum=-1), 1000,
        "How many messages may wait in the queue of a connected client beyond "
        "those in flight; more are dropped (and counted).  -1 means no limit "
        "(not recommended); 0 blocks delivery entirely."),
    Setting(
        "max_offline_messages", Integer(minimum=-1), 1000,
        "How many QoS 1 and 2 messages are kept for a persistent session while "
        "its client is away; more are dropped (and counted).  -1 means no "
        "limit (not recommended); 0 keeps none."),
    Setting(
        "queue_type", Enum(("fifo", "lifo")), "fifo",
        "Which messages a full queue keeps: fifo delivers oldest first and "
        "drops new arrivals when full; lifo delivers newest first and drops "
        "the oldest."),
    Setting(
        "retry_interval", Duration(unit="s", min_seconds=1), 20.0,
        "How long to wait for a client's PUBACK, PUBREC or PUBCOMP before "
        "sending the message (or PUBREL) again.  A bare number is in seconds."),
    Setting(
        "max_keepalive", Duration(unit="s", min_seconds=1, max_seconds=_SECONDS_65535), _SECONDS_65535,
        "The longest keep-alive a client may ask for; larger requests are cut "
        "down to it.  65535s, the largest MQTT can express, means no cap.  A "
        "bare number is in seconds."),
    Setting(
        "topic_alias_max_client", Integer(minimum=0, maximum=65535), 0,
        "The highest topic alias an MQTT 5.0 client may use in its PUBLISHes "
        "(told to it when it connects); a higher one ends its connection "
        "(DISCONNECT 'topic alias invalid').  0 means clients may not use "
        "topic aliases."),
    Setting(
        "topic_alias_max_broker", Integer(minimum=0, maximum=65535), 0,
        "The most topic aliases the broker uses towards an MQTT 5.0 client "
        "(also bounded by the client's own topic alias maximum): a topic "
        "sent to it is given an alias the first time, and later messages on "
        "that topic carry only the alias; the least recently used alias is "
        "reused when all are taken.  0 means the broker sends no aliases."),
    Setting(
        "receive_max_broker", Integer(minimum=1, maximum=65535), 65535,
        "How many QoS 1 and 2 messages an MQTT 5.0 client may send without "
        "waiting for their acknowledgements, told to it when it connects "
        "(its receive maximum).  The client's own receive maximum likewise "
        "narrows max_inflight_messages towards it."),
    Setting(
        "shared_subscription_policy", Enum(("prefer_local", "local_only", "random")),
        "prefer_local",
        "Which member of a shared subscription ($share/<group>/<filter>) gets a "
        "message published on this node: prefer_local takes an online member on "
        "this node, else one on another node, else an offline persistent member "
        "here; local_only keeps to members on this node; random takes any "
        "online member here or member elsewhere.  Members take turns."),
    Setting(
        "max_message_rate", Integer(minimum=0), 0,
        "The most PUBLISH packets per second one client may send; past it, "
        "reading from that client pauses until the second is over (it is "
        "slowed down, not disconnected, and nothing is dropped).  0 means no "
        "limit."),
    Setting(
        "topic_max_depth", Integer(minimum=0), 10,
        "The most levels a topic or topic filter may have (a/b/c has 3); "
        "deeper ones are refused.  0 means no limit (not recommended: deep "
        "topics cost memory and CPU)."),
    Setting(
        "max_subscriptions_per_client", Integer(minimum=0), 0,
        "The most topic filters one client may be subscribed to; further "
        "SUBSCRIBEs are refused per filter.  0 means no limit."),
    Setting(
        "persistent_client_expiration", Duration(unit="s", min_seconds=1, never=True), None,
        "How long a persistent session (clean session off) survives without "
        "its client reconnecting; then it and its stored messages are removed.  "
        "never keeps them forever, as MQTT 3.1.1 itself does.  Note that m "
        "means minutes (VerneMQ's own reading of this key took m as months)."),
    Setting(
        "connect_timeout", Duration(unit="s", min_seconds=0.001), 10.0,
        "How long a new connection may take to send its CONNECT packet; "
        "connections that stay silent longer are closed, so idle sockets cannot "
        "pile up.  A bare number is in seconds."),
    # -- storage ------------------------------------------------------------
    Setting(
        "message_store", Identifier(known=("leveldb", "postgresql", "memory")), "leveldb",
        "Where QoS 1 and 2 messages for offline persistent sessions are kept: "
        "leveldb (on disk, under platform_data_dir, per node), postgresql (one "
        "database shared by the cluster: see postgresql.dsn), memory (lost on "
        "restart; for tests) or the name of a message store plugin."),
    Setting(
        "leveldb.sync", Flag(), False,
        "When on, every LevelDB write waits until it is on disk.  Safer across "
        "power loss, much slower."),
    Setting(
        "postgresql.dsn", Text(), None,
        "The PostgreSQL database of message_store = postgresql, as a libpq "
        "connection string (host=db1 dbname=vmqtw user=vmqtw, or a "
        "postgresql:// URI).  Every node of a cluster names the same database: "
        "offline messages then survive a node that never comes back.",
        example="host=127.0.0.1 dbname=vmqtw user=vmqtw"),
    Setting(
        "postgresql.connect_timeout", Duration(unit="s", min_seconds=1), 5.0,
        "How long the postgresql message store waits for the database when it "
        "(re)connects."),
    Setting(
        "postgresql.query_timeout", Duration(unit="s", min_seconds=1), 10.0,
        "How long one transaction of the postgresql message store may take "
        "(a statement timeout on the server, and a TCP user timeout so that a "
        "database behind a cut network is noticed too).  When it is exceeded "
        "the node treats the database as unavailable: it acknowledges nothing "
        "it could not store, and reconnects for the next transaction."),
    # -- plugins ------------------------------------------------------------
    Setting(
        "plugins.vmq_passwd", Flag(), False,
        "When on, clients are authenticated against vmq_passwd.password_file."),
    Setting(
        "vmq_passwd.password_file", Path(), "./etc/vmq.passwd",
        "The password file (user:hash lines) used when plugins.vmq_passwd is on."),
    Setting(
        "plugins.vmq_acl", Flag(), False,
        "When on, publishes and subscriptions are checked against "
        "vmq_acl.acl_file."),
    Setting(
        "vmq_acl.acl_file", Path(), "./etc/vmq.acl",
        "The access control list used when plugins.vmq_acl is on."),
    Setting(
        "enhanced_auth.plugins", Names(), None,
        "MQTT 5.0 enhanced authentication: the plugins (IEnhancedAuthFactory, "
        "found in vmqtw/plugins directories as message stores are) whose "
        "authentication methods clients may name in CONNECT.  A client that "
        "names a method none of them speaks is refused (CONNACK 0x8C); one "
        "that completes a method's exchange needs no password.",
        example="my_scram"),
    # -- cluster ------------------------------------------------------------
    Setting(
        "allow_register_during_netsplit", Flag(), False,
        "When on, clients may connect while the cluster is split.  Two clients "
        "with the same identifier may then be connected on both sides.  When "
        "off they get CONNACK 'server unavailable'."),
    Setting(
        "allow_publish_during_netsplit", Flag(), False,
        "When on, publishes are accepted while the cluster is split; they may "
        "miss subscribers on the other side.  When off, QoS 1 and 2 publishes "
        "are not acknowledged (clients retry) and QoS 0 ones are dropped."),
    Setting(
        "allow_subscribe_during_netsplit", Flag(), False,
        "When on, subscriptions are accepted while the cluster is split; the "
        "other side learns of them after it heals.  When off, SUBSCRIBE is "
        "answered with failure for every filter."),
    Setting(
        "allow_unsubscribe_during_netsplit", Flag(), False,
        "When on, unsubscriptions are accepted while the cluster is split.  "
        "When off, UNSUBSCRIBE gets no answer."),
    Setting(
        "trade_consistency", Flag(), False,
        "The older single switch: when on, it turns on "
        "allow_publish_during_netsplit, allow_subscribe_during_netsplit and "
        "allow_unsubscribe_during_netsplit (whatever they are set to), but "
        "not allow_register_during_netsplit, so one client identifier still "
        "cannot connect on both sides of a split."),
    Setting(
        "coordinate_registrations", Flag(), True,
        "When on, connects for one client identifier are serialized on one "
        "node of the cluster, so simultaneous connects on different nodes "
        "cannot leave two sessions alive.  Turning it off makes connects a "
        "little faster and duplicates possible."),
    Setting(
        "outgoing_clustering_buffer_size", ByteSize(), 64 * 1024**2,
        "How many bytes of messages for one other node may wait for its "
        "acknowledgement (while it is slow or unreachable).  Beyond it a QoS "
        "1/2 publish that needs that node is not acknowledged (the client "
        "sends it again) and a QoS 0 copy is dropped; both are counted in "
        "`vmqtw-admin node status`.  Nothing acknowledged is dropped."),
    Setting(
        "metadata.lazy_tick", Duration(unit="ms", min_seconds=0.001), 1.0,
        "How often messages that were only announced (not sent in full) to a "
        "peer are announced again.  A bare number is in milliseconds."),
    Setting(
        "metadata.exchange_tick", Duration(unit="ms", min_seconds=0.001), 10.0,
        "How often the metadata of this node is compared with a random peer's "
        "to repair anything a broadcast missed.  A bare number is in "
        "milliseconds."),
    Setting(
        "metadata.gossip_interval", Duration(unit="ms", min_seconds=0.001), 15.0,
        "How often cluster membership is gossiped to a random peer.  A bare "
        "number is in milliseconds."),
    Setting(
        "cluster.heartbeat_interval", Duration(unit="ms", min_seconds=0.01), 1.0,
        "How often a node pings every other node over its cluster link.  A "
        "firewall that drops packets or a frozen host leaves a connection "
        "open and silent; the ping is what notices.  A bare number is in "
        "milliseconds."),
    Setting(
        "cluster.heartbeat_timeout", Duration(unit="ms", min_seconds=0.02), 3.0,
        "After how long without a byte from another node its link is taken "
        "as cut and the netsplit handling starts: the time a silent cut "
        "takes to be detected.  Must be longer than "
        "cluster.heartbeat_interval.  A bare number is in milliseconds."),
    # -- monitoring ---------------------------------------------------------
    Setting(
        "log.console.level", Enum(("debug", "info", "warning", "error")), "info",
        "The least severe log messages written to the console."),
    Setting(
        "systree_enabled", Flag(), False,
        "When on, every systree_interval the node publishes each of its metrics "
        "(those of GET /metrics) to $SYS/<nodename>/<metric>, the name's _ "
        "turned into / (mqtt_publish_received -> $SYS/<node>/mqtt/publish/"
        "received), QoS 0, not retained.  Subscribe to $SYS/# to see every node."),
    Setting(
        "systree_interval", Duration(unit="ms", min_seconds=0.1), 20.0,
        "How often the $SYS/ topics are published (systree_enabled).  A bare "
        "number is in milliseconds, as in VerneMQ."),
)

_BY_KEY: dict[str, Setting] = {s.key: s for s in SCHEMA}
_FIXED = tuple(s for s in SCHEMA if not s.templated)
_TEMPLATED = tuple(s for s in SCHEMA if s.templated)

# Settings with their own paragraph in the template, marking the sections.
_SECTIONS = {
    "nodename": "Node",
    "listener.tcp.<name>": "Listeners",
    "allow_anonymous": "MQTT",
    "message_store": "Storage",
    "plugins.vmq_passwd": "Plugins",
    "allow_register_during_netsplit": "Cluster",
    "log.console.level": "Monitoring",
}

_NETSPLIT_TRADED = (
    "allow_publish_during_netsplit",
    "allow_subscribe_during_netsplit",
    "allow_unsubscribe_during_netsplit",
)


def _lookup(key: str) -> tuple[Setting, str] | None:
    """The setting a concrete key belongs to; fixed keys win over ``<name>`` slots."""
    setting = _BY_KEY.get(key)
    if setting is not None and not setting.templated:
        return setting, ""
    for setting in _TEMPLATED:
        name = setting.matches(key)
        if name is not None:
            return setting, name
    return None


def _suggest(key: str) -> str | None:
    """The known key closest to a misspelt one, with a ``<name>`` slot filled from it."""
    candidates = [s.key for s in _FIXED]
    parts = key.split(".")
    for s in _TEMPLATED:
        template = s.key.split(".")
        if len(template) == len(parts):
            candidates.append(".".join(p if t == _NAME_SLOT else t for t, p in zip(template, parts)))
        else:
            candidates.append(s.key)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


# ---------------------------------------------------------------------------
# The typed result


Listeners = Mapping[str, tuple[str, int]]


@attrs.frozen(slots=True)
class Config:
    """
    A parsed, checked configuration.  Attributes follow the keys (dots become
    underscores); durations are seconds (float), sizes bytes, flags bools,
    addresses ``(host, port)``.  ``None`` means "not set" for optional paths
    and "never" for ``persistent_client_expiration``.

    ``allow_publish/subscribe/unsubscribe_during_netsplit`` hold the
    effective values: ``trade_consistency = on`` has already turned them on.
    """

    nodename: str
    distributed_cookie: str
    platform_data_dir: str
    tcp_listeners: Listeners
    ssl_listeners: Listeners
    http_listeners: Listeners
    ws_listeners: Listeners
    wss_listeners: Listeners
    listener_wss_certfile: str | None
    listener_wss_keyfile: str | None
    listener_wss_cafile: str | None
    listener_wss_require_certificate: bool
    listener_wss_use_identity_as_username: bool
    listener_ssl_certfile: str | None
    listener_ssl_keyfile: str | None
    listener_ssl_cafile: str | None
    listener_ssl_require_certificate: bool
    listener_ssl_use_identity_as_username: bool
    listener_max_connections: int
    listener_allowed_protocol_versions: tuple[int, ...]
    listener_vmq_clustering: tuple[str, int]
    listener_vmq_clustering_advertise: tuple[str, int] | None
    cluster_tls_certfile: str | None
    cluster_tls_keyfile: str | None
    cluster_tls_cafile: str | None
    allow_anonymous: bool
    max_client_id_size: int
    max_message_size: int
    max_inflight_messages: int
    max_online_messages: int
    max_offline_messages: int
    queue_type: str
    retry_interval: float
    max_keepalive: float
    topic_alias_max_client: int
    topic_alias_max_broker: int
    receive_max_broker: int
    shared_subscription_policy: str
    max_message_rate: int
    topic_max_depth: int
    max_subscriptions_per_client: int
    persistent_client_expiration: float | None
    connect_timeout: float
    message_store: str
    leveldb_sync: bool
    postgresql_dsn: str | None
    postgresql_connect_timeout: float
    postgresql_query_timeout: float
    plugins_vmq_passwd: bool
    vmq_passwd_password_file: str
    plugins_vmq_acl: bool
    vmq_acl_acl_file: str
    enhanced_auth_plugins: tuple[str, ...] | None
    allow_register_during_netsplit: bool
    allow_publish_during_netsplit: bool
    allow_subscribe_during_netsplit: bool
    allow_unsubscribe_during_netsplit: bool
    trade_consistency: bool
    coordinate_registrations: bool
    outgoing_clustering_buffer_size: int
    metadata_lazy_tick: float
    metadata_exchange_tick: float
    metadata_gossip_interval: float
    cluster_heartbeat_interval: float
    cluster_heartbeat_timeout: float
    log_console_level: str
    systree_enabled: bool
    systree_interval: float
    # Not keys: where the values came from, and platform_data_dir made absolute.
    source: str
    data_dir: str
    #: The three traded flags as the file wrote them, before
    #: ``trade_consistency`` turned them on: what they go back to when
    #: ``vmqtw-admin set trade_consistency=off`` runs.
    netsplit_flags_as_written: tuple[bool, bool, bool] = (False, False, False)

    @classmethod
    def default(cls, cwd: str | None = None) -> Config:
        """Every key at its default, as if read from an empty file."""
        return parse_config("", "<defaults>", cwd=cwd)

    @property
    def cluster_advertised_address(self) -> tuple[str, int]:
        """Where the other nodes dial this one: the advertise key, else the listener."""
        if self.listener_vmq_clustering_advertise is not None:
            return self.listener_vmq_clustering_advertise
        return self.listener_vmq_clustering

    def replace(self, **changes: Any) -> Config:
        """
        A copy with ``changes`` applied (``attrs.evolve``), keeping the derived
        values consistent: ``trade_consistency=True`` turns the three traded
        flags on, and a new ``platform_data_dir`` re-resolves ``data_dir``
        against the current working directory unless ``data_dir`` is given.
        """
        written = list(self.netsplit_flags_as_written)
        for i, attr in enumerate(_NETSPLIT_TRADED):
            if attr in changes:
                written[i] = bool(changes[attr])
        changes.setdefault("netsplit_flags_as_written", (written[0], written[1], written[2]))
        if changes.get("trade_consistency"):
            for attr in _NETSPLIT_TRADED:
                changes[attr] = True
        if "platform_data_dir" in changes and "data_dir" not in changes:
            changes["data_dir"] = os.path.abspath(changes["platform_data_dir"])
        return attrs.evolve(self, **changes)


def _check_config_matches_schema() -> None:
    """Fail at import if ``Config`` and ``SCHEMA`` disagree: drift is a bug, not a surprise."""
    expected = [s.attr for s in SCHEMA] + ["source", "data_dir", "netsplit_flags_as_written"]
    actual = [a.name for a in attrs.fields(Config)]
    if sorted(expected) != sorted(actual) or len(set(expected)) != len(expected):
        raise RuntimeError(f"Config fields {actual} do not match SCHEMA {expected}")


_check_config_matches_schema()


# ---------------------------------------------------------------------------
# Parsing


def _strip_comment(line: str) -> str:
    """Drop a ``#`` comment; ``\\#`` is a literal '#'."""
    out = []
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and line[i + 1:i + 2] == "#":
            out.append("#")
            i += 2
            continue
        if ch == "#":
            break
        out.append(ch)
        i += 1
    return "".join(out).strip()


def _split_lines(text: str) -> Iterable[tuple[int, str, str, str | None]]:
    """
    ``(line number, raw line, key, value)`` for every non-blank, non-comment
    line; ``value`` is None when the line has no '='.
    """
    # Split on newlines only (not str.splitlines' form feeds and the like)
    # so line numbers agree with the operator's editor.
    for number, raw in enumerate(text.split("\n"), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if "=" not in stripped:
            yield number, stripped, "", None
            continue
        key, _, value = stripped.partition("=")
        yield number, stripped, key.strip(), _strip_comment(value)


def parse_config(text: str, filename: str, cwd: str | None = None) -> Config:
    """
    Parse the text of a ``vernemq.conf``; ``filename`` only labels errors and
    ``Config.source``.  ``cwd`` (default: the current directory) resolves
    ``platform_data_dir``.  Raises ``ConfigError`` listing every problem.
    """
    problems: list[Problem] = []

    def problem(line: int, key: str, wrong: str, allowed: str) -> None:
        problems.append(Problem(filename, line, key, wrong, allowed))

    seen: dict[str, int] = {}
    values: dict[str, Any] = {}
    named: dict[str, dict[str, tuple[str, int]]] = {s.attr: {} for s in _TEMPLATED}
    lines: dict[str, int] = {}  # concrete key -> line, for cross-key checks

    for number, raw, key, value in _split_lines(text):
        # The key slot of a message only ever holds a well-formed key (or a
        # placeholder), so ``FILE:LINE: key:`` stays unambiguous to read.
        if value is None:
            first = raw.split()[0]
            shown = raw if len(raw) <= 40 else raw[:37] + "..."
            problem(number, first if _KEY_RE.match(first) else "(no key)",
                    f"{shown!r} has no '='", "key = value, a # comment, or a blank line")
            continue
        if not key:
            problem(number, "(no key)", "the line has nothing before '='", "key = value")
            continue
        if not _KEY_RE.match(key):
            problem(number, "(no key)", f"{key!r} is not a valid key",
                    "words of letters, digits, _ and - separated by dots")
            continue
        if key in seen:
            problem(number, key, f"set twice (first on line {seen[key]})", "each key once")
            continue
        seen[key] = number
        found = _lookup(key)
        if found is None:
            suggestion = _suggest(key)
            hint = f" (did you mean {suggestion}?)" if suggestion else ""
            problem(number, key, f"unknown key{hint}", "the keys documented in etc/vernemq.conf")
            continue
        setting, name = found
        try:
            parsed = setting.type.parse(value)
        except _Invalid as e:
            problem(number, key, str(e), setting.type.describe())
            continue
        lines[key] = number
        if setting.templated:
            # Only listeners are ``<name>`` keys, and they all parse to an
            # address (a test holds every templated setting to that).
            assert isinstance(parsed, tuple), setting.key
            named[setting.attr][name] = (str(parsed[0]), int(parsed[1]))
        else:
            values[setting.attr] = parsed

    for setting in _FIXED:
        values.setdefault(setting.attr, setting.default)
    for setting in _TEMPLATED:
        listeners = named[setting.attr]
        if not listeners and setting.default is not None:
            listeners[setting.default_name] = setting.default
        values[setting.attr] = listeners

    _cross_check(values, lines, problem)

    if problems:
        raise ConfigError(sorted(problems, key=lambda p: p.line))

    written = (values[_NETSPLIT_TRADED[0]], values[_NETSPLIT_TRADED[1]],
               values[_NETSPLIT_TRADED[2]])
    if values["trade_consistency"]:
        for attr in _NETSPLIT_TRADED:
            values[attr] = True
    base = os.getcwd() if cwd is None else cwd
    data_dir = os.path.normpath(os.path.join(base, values["platform_data_dir"]))
    return Config(source=filename, data_dir=data_dir, netsplit_flags_as_written=written,
                  **values)


def _cross_check(values: Mapping[str, Any], lines: Mapping[str, int],
                 problem: Callable[[int, str, str, str], None]) -> None:
    """Problems no single value shows: TLS without a certificate, two listeners on one port."""
    ssl = values["ssl_listeners"]
    for kind in ("ssl", "wss"):
        _cross_check_tls(kind, values, lines, problem)
    _cross_check_cluster_tls(values, lines, problem)
    if values["cluster_heartbeat_timeout"] <= values["cluster_heartbeat_interval"]:
        key = "cluster.heartbeat_timeout"
        problem(lines.get(key, lines.get("cluster.heartbeat_interval", 0)), key,
                "not longer than cluster.heartbeat_interval: every link would be taken "
                "as cut between two pings",
                "a duration longer than cluster.heartbeat_interval (e.g. 3 pings' worth)")

    addresses: list[tuple[str, tuple[str, int]]] = [
        (f"listener.tcp.{n}", a) for n, a in values["tcp_listeners"].items()]
    addresses += [(f"listener.ssl.{n}", a) for n, a in ssl.items()]
    addresses += [(f"listener.ws.{n}", a) for n, a in values["ws_listeners"].items()]
    addresses += [(f"listener.wss.{n}", a) for n, a in values["wss_listeners"].items()]
    addresses += [(f"listener.http.{n}", a) for n, a in values["http_listeners"].items()]
    addresses.append(("listener.vmq.clustering", values["listener_vmq_clustering"]))
    first: dict[tuple[str, int], str] = {}
    for key, address in addresses:
        if address[1] == 0:
            continue
        if address in first:
            # Report on the key written later in the file; the other one may
            # be a default that no line sets.
            other = first[address]
            if lines.get(other, 0) > lines.get(key, 0):
                key, other = other, key
            where = f" (line {lines[other]})" if other in lines else " (by default)"
            problem(lines[key], key,
                    f"{Address().render(address)} is already used by {other}{where}",
                    "a different IP:PORT for every listener (or port 0)")
        else:
            first[address] = key


def _cross_check_tls(kind: str, values: Mapping[str, Any], lines: Mapping[str, int],
                     problem: Callable[[int, str, str, str], None]) -> None:
    """
    The TLS keys of one kind of listener (``ssl``, or ``wss``, which has
    its own keys as in VerneMQ): a listener needs a certificate and key, a
    client certificate check needs a CA file.
    """
    prefix = f"listener.{kind}."
    attr = f"listener_{kind}_"
    for name in sorted(values[f"{kind}_listeners"]):
        key = prefix + name
        for needed in ("certfile", "keyfile"):
            if values[attr + needed] is None:
                problem(lines[key], key, f"a TLS listener needs {prefix}{needed}, which is not set",
                        f"{key} together with {prefix}{needed} = <PEM file>")
    if values[attr + "require_certificate"] and values[attr + "cafile"] is None:
        key = prefix + "require_certificate"
        problem(lines[key], key, f"client certificates cannot be checked without {prefix}cafile",
                f"on together with {prefix}cafile = <PEM file>, or off")
    if values[attr + "use_identity_as_username"] and values[attr + "cafile"] is None:
        key = prefix + "use_identity_as_username"
        problem(lines.get(key, 0), key,
                f"a certificate's name cannot be trusted without {prefix}cafile",
                f"on together with {prefix}cafile = <PEM file>, or off")


_CLUSTER_TLS_FILES = ("cluster.tls.keyfile", "cluster.tls.cafile")


def _cross_check_cluster_tls(values: Mapping[str, Any], lines: Mapping[str, int],
                             problem: Callable[[int, str, str, str], None]) -> None:
    """
    Cluster TLS is all three files or none.  A key or CA file without the
    certificate is reported too: the operator meant TLS, and the node would
    otherwise link in plain text without a word.
    """
    certfile_key = "cluster.tls.certfile"
    if values[_attr_for(certfile_key)] is not None:
        for needed in _CLUSTER_TLS_FILES:
            if values[_attr_for(needed)] is None:
                problem(lines[certfile_key], certfile_key,
                        f"TLS between nodes needs {needed}, which is not set",
                        f"{certfile_key} together with {needed} = <PEM file>")
        return
    for key in _CLUSTER_TLS_FILES:
        if values[_attr_for(key)] is not None:
            problem(lines[key], key,
                    f"set, but TLS between nodes is off because {certfile_key} is not set",
                    f"{key} together with {certfile_key} = <PEM file>, or neither")


# ---------------------------------------------------------------------------
# Keys a running node can change (``vmqtw-admin set KEY=VALUE``)

#: The keys ``vmqtw-admin set`` may change on a running node, as VerneMQ's
#: ``vmq-admin set``: those read where they are used (the netsplit gates,
#: the queues' limits, the console log's level), so a change takes effect
#: at once.  Anything captured when a part is built (listeners, stores,
#: the cluster's timers) needs a restart.
RUNTIME_KEYS: tuple[str, ...] = (
    "allow_register_during_netsplit",
    "allow_publish_during_netsplit",
    "allow_subscribe_during_netsplit",
    "allow_unsubscribe_during_netsplit",
    "trade_consistency",
    "max_inflight_messages",
    "max_online_messages",
    "max_offline_messages",
    "log.console.level",
    "shared_subscription_policy",
)


def parse_runtime_value(key: str, text: str) -> Any:
    """
    ``text`` parsed for the run-time key ``key`` by the key's own schema
    type, so ``set`` accepts exactly what the configuration file accepts.
    Otherwise :class:`ConfigError` with one sentence in the file's form
    (``key: what is wrong; allowed: what is allowed``), or saying that the
    key cannot change on a running node.
    """
    found = _lookup(key)
    if found is None:
        suggestion = _suggest(key)
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        raise ConfigError(f"{key}: unknown key{hint}; allowed: {', '.join(RUNTIME_KEYS)}")
    setting, _name = found
    if setting.key not in RUNTIME_KEYS:
        raise ConfigError(f"{key} cannot be changed on a running node: set it in the "
                          f"configuration file and restart the node (set can change "
                          f"{', '.join(RUNTIME_KEYS)})")
    try:
        return setting.type.parse(text)
    except _Invalid as e:
        raise ConfigError(f"{key}: {e}; allowed: {setting.type.describe()}") from None


def render_runtime_value(key: str, value: Any) -> str:
    """A run-time key's value as the configuration file spells it (``on``, ``20``)."""
    return str(_BY_KEY[key].type.render(value))


def describe_runtime_key(key: str) -> str:
    """What a run-time key allows (for ``set --help``)."""
    return str(_BY_KEY[key].type.describe())


def load_config(path: str, cwd: str | None = None) -> Config:
    """Read and parse a ``vernemq.conf``; an unreadable file is one sentence of ``ConfigError``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"The configuration file {path} does not exist.") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"The configuration file {path} is not UTF-8 text (byte {e.start}).") from None
    except OSError as e:
        raise ConfigError(f"The configuration file {path} cannot be read: {e.strerror}.") from None
    return parse_config(text, path, cwd=cwd)


# ---------------------------------------------------------------------------
# Rendering the documented template


_HEADER = """\
## vmqtw configuration (VerneMQ's vernemq.conf format)
##
## One setting per line: key = value.  Lines starting with # are comments;
## the ## blocks above each key say what it does, its default and which
## values it accepts.  A '#' after a value starts a comment; write \\# for
## a literal '#'.  Keys that are commented out take their default.
##
## Durations: 500ms, 20s, 5m (minutes), 1h, 1d, 1w, combinations such as
## 1h30m, or a bare number in the unit the key names.
## Byte sizes: a number of bytes, or a number followed by KB, MB or GB.
"""


#: The sentence above a ``pending`` key in the template.
PENDING_NOTE = "NOT YET IN EFFECT: accepted for VerneMQ compatibility; "


def _doc_block(setting: Setting) -> list[str]:
    lines = ["## " + line for line in textwrap.wrap(setting.doc, width=74)]
    if setting.pending is not None:
        lines.append("##")
        lines += ["## " + line for line in textwrap.wrap(PENDING_NOTE + setting.pending + ".",
                                                          width=74)]
    lines.append("##")
    if setting.default is None:
        never = isinstance(setting.type, Duration) and setting.type.never
        lines.append("## Default: never" if never else "## Default: not set")
    else:
        lines.append(f"## Default: {setting.type.render(setting.default)}")
    lines.append("##")
    lines.append("## Acceptable values:")
    lines += ["##   " + line for line in textwrap.wrap(setting.type.describe(), width=70)]
    return lines


def render_default_config(overrides: Mapping[str, str] | None = None,
                          notes: Mapping[str, str] | None = None) -> str:
    """
    The documented ``vernemq.conf`` for ``SCHEMA``: a ``##`` block per key,
    then the key at its default (or, for keys without one, commented out
    with an example).  ``overrides`` maps a concrete key to the text to write
    instead; ``notes`` adds a ``#`` comment above a key, to explain an
    override.
    """
    overrides = dict(overrides or {})
    notes = dict(notes or {})
    out = _HEADER.splitlines()
    for setting in SCHEMA:
        section = _SECTIONS.get(setting.key)
        if section:
            out += ["", "## " + "=" * 70, f"## {section}", "## " + "=" * 70]
        out.append("")
        out += _doc_block(setting)
        key = setting.concrete_key()
        if key in notes:
            out += ["# " + line for line in textwrap.wrap(notes.pop(key), width=76)]
        if key in overrides:
            out.append(f"{key} = {overrides.pop(key)}")
        elif setting.pending is not None:
            out.append(f"# {key} = {setting.type.render(setting.default)}")
        elif setting.default is None and setting.example is not None:
            out.append(f"# {key} = {setting.example}")
        elif setting.default is None and isinstance(setting.type, Duration):
            out.append(f"{key} = {setting.type.render(None)}")
        elif setting.default is None:
            raise ValueError(f"{setting.key} has neither a default nor an example to show")
        else:
            out.append(f"{key} = {setting.type.render(setting.default)}")
    if overrides or notes:
        raise ValueError(f"overrides or notes for keys not in the schema: {sorted({*overrides, *notes})}")
    return "\n".join(out) + "\n"


_QUICKSTART_OVERRIDES = {
    "allow_anonymous": "on",
    "listener.http.default": "127.0.0.1:8888",
    "listener.tcp.default": "127.0.0.1:1883",
    "nodename": "vmqtw@127.0.0.1",
    "platform_data_dir": "./data",
}
_QUICKSTART_NOTES = {
    "allow_anonymous": (
        "QUICK START ONLY: anonymous clients are let in so you can try the "
        "broker on 127.0.0.1 right away.  Turn this off (and turn on "
        "plugins.vmq_passwd) before the listener faces any network."),
}


def render_quickstart_config() -> str:
    """The shipped ``etc/vernemq.conf``: the defaults plus quick-start changes."""
    return render_default_config(_QUICKSTART_OVERRIDES, _QUICKSTART_NOTES)
