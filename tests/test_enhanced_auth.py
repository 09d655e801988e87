"""
MQTT 5.0 enhanced authentication (section 4.12) through a plugin: the
AUTH exchange at CONNECT and on re-authentication, every way it can go
wrong, and how plugins are found and turned on.  In process, raw level-5
bytes (:mod:`vmqtw.testing.mqtt5bytes`), time from a ``task.Clock``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any, Dict, List, Optional

import attrs
import pytest
from twisted.internet.defer import Deferred
from zope.interface import implementer
from zope.interface.verify import verifyObject

from vmqtw.auth.enhanced import (AuthPluginError, AuthStep, UnknownAuthPlugin,
                                 available_auth_plugins, build_enhanced_authenticators)
from vmqtw.config import Config, ConfigError, parse_config
from vmqtw.interfaces import IEnhancedAuthenticator
from vmqtw.mqtt import packets as P
from vmqtw.mqtt import reasons as R
from vmqtw.mqtt.codec import Decoder
from vmqtw.mqtt.session import AnonymousGate, ConnectInfo, SessionSettings
from vmqtw.startup import StartupError
from vmqtw.testing import mqtt5bytes as B5
from vmqtw.testing.inprocess_broker import Broker, Client
from vmqtw.types import SubscriberId

METHOD = "CHALLENGE"


@implementer(IEnhancedAuthenticator)
@attrs.define
class Challenge:
    """
    A two-step method: the server sends a nonce, the client answers
    ``answer:<nonce>``.  ``later`` makes every step a Deferred the test
    fires (a plugin that asks a remote service).
    """

    method: str = METHOD
    later: bool = False
    pending: List[Deferred] = attrs.field(factory=list)
    seen: List[ConnectInfo] = attrs.field(factory=list)

    def _answer(self, step: AuthStep) -> Any:
        if not self.later:
            return step
        d: Deferred = Deferred()
        self.pending.append(d)
        d.step = step   # type: ignore[attr-defined]
        return d

    def begin(self, info: ConnectInfo, data: Optional[bytes]) -> Any:
        self.seen.append(info)
        if data == b"refuse me":
            return self._answer(AuthStep.fail(R.BANNED))
        return self._answer(AuthStep.more(b"nonce-1", {"nonce": b"nonce-1"}))

    def proceed(self, exchange: Dict[str, bytes], data: Optional[bytes]) -> Any:
        if data == b"answer:" + exchange["nonce"]:
            return self._answer(AuthStep.success(b"welcome", username="alice"))
        return self._answer(AuthStep.fail(R.BAD_USER_NAME_OR_PASSWORD))

    def fire(self) -> None:
        pending, self.pending = self.pending, []
        for d in pending:
            d.callback(d.step)   # type: ignore[attr-defined]


def method_props(data: Optional[bytes] = None, method: str = METHOD) -> bytes:
    items = [B5.p_str(0x15, method)]
    if data is not None:
        items.append(B5.p_bin(0x16, data))
    return B5.props(*items)


def broker_with(authenticator: Any, refuse_passwords: bool = True, **kwargs: Any) -> Broker:
    """A broker whose password check refuses everyone: only the method lets clients in."""
    settings = SessionSettings(enhanced_auth={authenticator.method: authenticator})
    return Broker(settings=settings, authenticator=AnonymousGate(not refuse_passwords), **kwargs)


def client5(broker: Broker) -> Client:
    client = broker.client()
    client.decoder = Decoder(protocol_level=5)
    return client


def auth_packet(packet: Any, code: int, data: Optional[bytes]) -> None:
    assert isinstance(packet, P.Auth), packet
    assert packet.reason_code == code
    assert packet.properties is not None
    assert packet.properties.authentication_method == METHOD
    assert packet.properties.authentication_data == data


def refused_at_connect(broker: Broker, properties: bytes) -> int:
    """The reason code of the CONNACK refusing a CONNECT with ``properties`` (closed)."""
    client = client5(broker)
    client.send(B5.connect("c1", properties=properties))
    [connack] = broker.answer(client)
    assert isinstance(connack, P.ConnAck) and client.closed, connack
    return int(connack.reason_code)


def authenticated(broker: Broker, challenge: Challenge, client_id: str = "c1") -> Client:
    client = client5(broker)
    client.send(B5.connect(client_id, properties=method_props(b"hello")))
    [auth] = broker.answer(client)
    auth_packet(auth, R.CONTINUE_AUTHENTICATION, b"nonce-1")
    client.send(B5.auth(R.CONTINUE_AUTHENTICATION, method_props(b"answer:nonce-1")))
    [connack] = broker.answer(client)
    assert isinstance(connack, P.ConnAck) and connack.reason_code == R.SUCCESS, connack
    assert connack.properties is not None
    assert connack.properties.authentication_method == METHOD
    assert connack.properties.authentication_data == b"welcome"
    return client


# -- at CONNECT -------------------------------------------------------------------


def test_a_challenge_and_its_answer_connect_the_client_without_a_password():
    """4.12: CONNECT -> AUTH 0x18 -> AUTH 0x18 -> CONNACK 0 with the method."""
    challenge = Challenge()
    broker = broker_with(challenge)
    client = authenticated(broker, challenge)
    session = client.protocol.session
    assert session.username == "alice"       # the method said who it is
    assert challenge.seen[0].client_id == "c1"
    # Connected as any client: it subscribes and gets what it publishes.
    client.send(B5.subscribe(1, [("t", 1)]))
    client.send(B5.publish("t", b"x", qos=1, packet_id=2))
    packets = broker.answer(client)
    assert any(isinstance(p, P.Publish) and p.payload == b"x" for p in packets + client.received())


def test_a_wrong_answer_is_refused_with_the_methods_reason_code():
    challenge = Challenge()
    broker = broker_with(challenge)
    client = client5(broker)
    client.send(B5.connect("c1", properties=method_props(b"hello")))
    broker.answer(client)
    client.send(B5.auth(R.CONTINUE_AUTHENTICATION, method_props(b"answer:guess")))
    [connack] = broker.answer(client)
    assert connack.reason_code == R.BAD_USER_NAME_OR_PASSWORD and client.closed


def test_a_method_can_refuse_at_once():
    broker = broker_with(Challenge())
    assert refused_at_connect(broker, method_props(b"refuse me")) == R.BANNED


def test_a_method_no_plugin_speaks_is_refused_with_0x8c():
    broker = broker_with(Challenge())
    assert refused_at_connect(broker, method_props(b"hello", method="SCRAM-SHA-256")) \
        == R.BAD_AUTHENTICATION_METHOD


@pytest.mark.parametrize("packet", [
    B5.publish("t", b"x"),                                     # not AUTH [MQTT-3.1.2-30]
    B5.auth(R.CONTINUE_AUTHENTICATION, method_props(b"answer:nonce-1", method="OTHER")),
    B5.auth(R.RE_AUTHENTICATE, method_props(b"answer:nonce-1")),   # not 0x18
    B5.subscribe(1, [("t", 0)]),
], ids=["publish", "other-method", "re-authenticate", "subscribe"])
def test_anything_but_the_answer_during_the_exchange_closes(packet: bytes):
    broker = broker_with(Challenge())
    client = client5(broker)
    client.send(B5.connect("c1", properties=method_props(b"hello")))
    broker.answer(client)
    client.send(packet)
    assert client.closed
    assert not any(isinstance(p, P.ConnAck) and p.reason_code == R.SUCCESS
                   for p in client.received())


def test_an_answer_before_the_server_asked_closes():
    """The method's first step is still running: no AUTH is expected yet."""
    challenge = Challenge(later=True)
    broker = broker_with(challenge)
    client = client5(broker)
    client.send(B5.connect("c1", properties=method_props(b"hello")))
    client.send(B5.auth(R.CONTINUE_AUTHENTICATION, method_props(b"answer:nonce-1")))
    assert client.closed
    challenge.fire()                      # the late step finds the connection gone
    assert client.received() == []


def test_a_slow_method_is_waited_for_and_a_client_that_goes_meanwhile_is_forgotten():
    challenge = Challenge(later=True)
    broker = broker_with(challenge)
    client = client5(broker)
    client.send(B5.connect("c1", properties=method_props(b"hello")))
    assert broker.answer(client) == []
    challenge.fire()
    [auth] = client.received()
    auth_packet(auth, R.CONTINUE_AUTHENTICATION, b"nonce-1")
    client.send(B5.auth(R.CONTINUE_AUTHENTICATION, method_props(b"answer:nonce-1")))
    client.drop()                         # gone before the method decided
    challenge.fire()
    assert SubscriberId("", "c1") not in broker.registry.queues   # never registered


def test_a_client_that_never_answers_is_closed_by_the_connect_timeout():
    broker = broker_with(Challenge(), connect_timeout=5.0)
    client = client5(broker)
    client.send(B5.connect("c1", properties=method_props(b"hello")))
    broker.answer(client)
    assert not client.closed
    broker.clock.advance(5.1)
    assert client.closed


def test_a_method_that_raises_refuses_with_server_unavailable():
    @implementer(IEnhancedAuthenticator)
    class Broken:
        method = METHOD

        def begin(self, info: Any, data: Any) -> Any:
            raise RuntimeError("the token service is down")

        def proceed(self, exchange: Any, data: Any) -> Any:
            raise AssertionError("not reached")
    broker = broker_with(Broken())
    assert refused_at_connect(broker, method_props(b"hello")) == R.SERVER_UNAVAILABLE


def test_clients_without_a_method_still_go_through_the_password_check():
    broker = broker_with(Challenge(), refuse_passwords=True)
    assert refused_at_connect(broker, B5.NO_PROPS) == R.NOT_AUTHORIZED


# -- re-authentication ------------------------------------------------------------


def test_re_authentication_runs_the_exchange_again_and_ends_with_auth_success():
    """4.12.1: AUTH 0x19 -> AUTH 0x18 -> AUTH 0x18 -> AUTH 0x00."""
    challenge = Challenge()
    broker = broker_with(challenge)
    client = authenticated(broker, challenge)
    client.send(B5.auth(R.RE_AUTHENTICATE, method_props(b"hello")))
    [auth] = broker.answer(client)
    auth_packet(auth, R.CONTINUE_AUTHENTICATION, b"nonce-1")
    client.send(B5.auth(R.CONTINUE_AUTHENTICATION, method_props(b"answer:nonce-1")))
    [done] = broker.answer(client)
    auth_packet(done, R.SUCCESS, b"welcome")
    assert not client.closed
    assert len(challenge.seen) == 2 and challenge.seen[1].username == "alice"


def test_a_failed_re_authentication_disconnects_with_the_reason_code():
    """
    [MQTT-4.12.1-2]; 0x86 (bad user name or password) is no DISCONNECT
    reason code (3.14.2.1), so the method's refusal becomes 0x87.
    """
    challenge = Challenge()
    broker = broker_with(challenge)
    client = authenticated(broker, challenge)
    client.send(B5.auth(R.RE_AUTHENTICATE, method_props(b"hello")))
    broker.answer(client)
    client.send(B5.auth(R.CONTINUE_AUTHENTICATION, method_props(b"answer:wrong")))
    packets = broker.answer(client)
    assert isinstance(packets[-1], P.Disconnect), packets
    assert packets[-1].reason_code == R.NOT_AUTHORIZED
    assert client.closed


@pytest.mark.parametrize("packet", [
    B5.auth(R.RE_AUTHENTICATE, method_props(b"hello", method="OTHER")),    # [MQTT-4.12.1-1]
    B5.auth(R.CONTINUE_AUTHENTICATION, method_props(b"answer:nonce-1")),  # nothing asked
    B5.auth(R.SUCCESS, method_props(None)),                               # a server's code
], ids=["other-method", "unasked-answer", "success-from-client"])
def test_out_of_turn_auth_after_connect_is_a_protocol_error(packet: bytes):
    challenge = Challenge()
    broker = broker_with(challenge)
    client = authenticated(broker, challenge)
    client.send(packet)
    packets = client.received()
    assert isinstance(packets[-1], P.Disconnect), packets
    assert packets[-1].reason_code == R.PROTOCOL_ERROR and client.closed


# -- plugins and configuration ----------------------------------------------------


def test_enhanced_auth_plugins_is_a_list_of_names():
    assert parse_config("enhanced_auth.plugins = scram, token\n", "t").enhanced_auth_plugins \
        == ("scram", "token")
    assert Config.default().enhanced_auth_plugins is None
    with pytest.raises(ConfigError) as info:
        parse_config("enhanced_auth.plugins = scram-256\n", "t")
    assert "enhanced_auth.plugins: 'scram-256' is not a name" in str(info.value)


def test_an_unknown_plugin_stops_the_node_with_one_sentence(tmp_path: Any):
    from twisted.internet.testing import MemoryReactorClock

    from vmqtw.node import build_node
    config = Config.default().replace(platform_data_dir=str(tmp_path / "data"),
                                      message_store="memory", enhanced_auth_plugins=("nope",))
    with pytest.raises(StartupError) as info:
        build_node(config, MemoryReactorClock())
    assert str(info.value).startswith(
        "enhanced_auth.plugins: unknown enhanced authentication plugin 'nope'; available: ")
    with pytest.raises(UnknownAuthPlugin):
        build_enhanced_authenticators(["nope"], config, None)


def test_two_plugins_speaking_one_method_stop_the_node_naming_both(monkeypatch: Any):
    import vmqtw.auth.enhanced as enhanced

    class Factory:
        def __init__(self, name: str) -> None:
            self.name = name

        def build(self, config: Any, reactor: Any) -> Challenge:
            return Challenge()
    monkeypatch.setattr(enhanced, "_factories",
                        lambda: {"one": Factory("one"), "two": Factory("two")})
    with pytest.raises(AuthPluginError) as info:
        build_enhanced_authenticators(["one", "two"], Config.default(), None)
    assert str(info.value) == ("plugins 'one' and 'two' both speak the method 'CHALLENGE': "
                               "list only one of them")
    assert list(build_enhanced_authenticators(["two"], Config.default(), None)) == [METHOD]


PLUGIN = textwrap.dedent('''
    from twisted.plugin import IPlugin
    from zope.interface import implementer
    from vmqtw.auth.enhanced import AuthStep
    from vmqtw.interfaces import IEnhancedAuthenticator, IEnhancedAuthFactory

    @implementer(IEnhancedAuthenticator)
    class Token:
        method = "TOKEN"
        def __init__(self, secret):
            self.secret = secret
        def begin(self, info, data):
            return AuthStep.success(username="t") if data == self.secret else AuthStep.fail()
        def proceed(self, exchange, data):
            return AuthStep.fail()

    @implementer(IPlugin, IEnhancedAuthFactory)
    class TokenFactory:
        name = "token_example"
        def build(self, config, reactor):
            return Token(config.nodename.encode())

    factory = TokenFactory()
''')


def test_a_third_party_plugin_is_found_on_sys_path_and_built(tmp_path: Any):
    """Dropped into a vmqtw/plugins directory on sys.path, as store plugins are."""
    plugins = tmp_path / "vmqtw" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "token_example.py").write_text(PLUGIN)
    script = textwrap.dedent('''
        import sys
        from vmqtw.auth.enhanced import available_auth_plugins, build_enhanced_authenticators
        from vmqtw.config import Config
        from zope.interface.verify import verifyObject
        from vmqtw.interfaces import IEnhancedAuthenticator
        assert "token_example" in available_auth_plugins(), available_auth_plugins()
        config = Config.default().replace(nodename="n@h")
        methods = build_enhanced_authenticators(["token_example"], config, None)
        token = methods["TOKEN"]
        verifyObject(IEnhancedAuthenticator, token)
        print(token.begin(None, b"n@h").outcome, token.begin(None, b"x").outcome)
    ''')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=60, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["success", "fail"]
    assert "token_example" not in available_auth_plugins()   # not on this process's path


def test_the_test_method_provides_the_interface():
    assert verifyObject(IEnhancedAuthenticator, Challenge())


def test_a_real_node_authenticates_with_a_plugin_from_its_directory(nodes: Any):
    """
    ``twistd vmqtw`` with ``enhanced_auth.plugins = token_example`` finds the
    plugin in a ``vmqtw/plugins`` directory on its ``PYTHONPATH``, lets
    a client with the token in, refuses a wrong one and one without, and
    ``vmqtw-admin plugin show`` lists it.
    """
    from vmqtw.testing.rawclient import RawClient
    node = nodes.node(start=False, allow_anonymous="off", enhanced_auth__plugins="token_example")
    plugins = os.path.join(node.directory, "vmqtw", "plugins")
    os.makedirs(plugins)
    with open(os.path.join(plugins, "token_example.py"), "w") as handle:
        handle.write(PLUGIN)
    node.env["PYTHONPATH"] = os.pathsep.join([node.directory, os.environ.get("PYTHONPATH", "")])
    node.start()
    nodename = Config.default().nodename.encode()

    def connect(data: Optional[bytes], method: Optional[str] = "TOKEN") -> P.ConnAck:
        with RawClient.open(node.host, node.port) as client:
            client._decoder = Decoder(protocol_level=5)
            properties = B5.NO_PROPS if method is None else method_props(data, method)
            client.send(B5.connect("tok", properties=properties))
            connack = client.next()
            assert isinstance(connack, P.ConnAck), connack
            return connack
    accepted = connect(nodename)
    assert accepted.reason_code == R.SUCCESS
    assert accepted.properties is not None
    assert accepted.properties.authentication_method == "TOKEN"
    assert connect(b"wrong").reason_code == R.NOT_AUTHORIZED
    assert connect(None, method=None).reason_code == R.NOT_AUTHORIZED   # no anonymous
    assert connect(b"x", method="SCRAM-SHA-1").reason_code == R.BAD_AUTHENTICATION_METHOD
    shown = subprocess.run([os.path.join(os.path.dirname(sys.executable), "vmqtw-admin"),
                            "--config", node.config_path, "--format=json", "plugin", "show"],
                           capture_output=True, text=True, timeout=60, cwd=node.directory)
    assert shown.returncode == 0, shown.stderr
    assert '"token_example"' in shown.stdout and "method=TOKEN" in shown.stdout
