"""
MQTT 5.0 enhanced authentication (section 4.12): the steps an
:class:`~vmqtw.interfaces.IEnhancedAuthenticator` answers with, and how
the plugins named in ``enhanced_auth.plugins`` are found.

The session (:mod:`vmqtw.mqtt.session`) runs the exchange: it relays
Authentication Data between the client (CONNECT, AUTH 0x18, AUTH 0x19)
and the authenticator of the method the client named, and turns each
step into CONNACK, AUTH or DISCONNECT.  Nothing here does I/O; a plugin
may (it returns a Deferred).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

import attrs
from vmqtw.interfaces import IEnhancedAuthenticator, IEnhancedAuthFactory
from vmqtw.pluginlookup import factories_by_name

__all__ = ["AuthPluginError", "AuthStep", "UnknownAuthPlugin", "build_enhanced_authenticators",
           "available_auth_plugins"]

#: The reason code of a failed step unless the authenticator says another
#: (0x87 Not authorized; 0x86 Bad user name or password and 0x8C Bad
#: authentication method are the others that fit).
NOT_AUTHORIZED = 0x87


@attrs.frozen(slots=True)
class AuthStep:
    """
    One answer of an authenticator.  Build it with :meth:`success`,
    :meth:`more` or :meth:`fail` rather than by hand.
    """

    outcome: str
    #: Authentication Data for the client (CONNACK, AUTH), or None.
    data: Optional[bytes] = None
    #: Whatever the authenticator needs to go on (``continue`` only); it is
    #: handed back to :meth:`IEnhancedAuthenticator.proceed`.
    exchange: Any = None
    #: Who the client is, once ``success`` (ACLs use it; None keeps the
    #: user name of CONNECT).
    username: Optional[str] = None
    #: ``fail`` only: the CONNACK / DISCONNECT reason code.
    reason_code: int = NOT_AUTHORIZED

    @classmethod
    def success(cls, data: Optional[bytes] = None,
                username: Optional[str] = None) -> "AuthStep":
        return cls("success", data, None, username)

    @classmethod
    def more(cls, data: Optional[bytes], exchange: Any) -> "AuthStep":
        return cls("continue", data, exchange)

    @classmethod
    def fail(cls, reason_code: int = NOT_AUTHORIZED) -> "AuthStep":
        return cls("fail", reason_code=reason_code)


class AuthPluginError(Exception):
    """``enhanced_auth.plugins`` cannot be served; ``str()`` says what to change."""


class UnknownAuthPlugin(AuthPluginError):
    """``enhanced_auth.plugins`` names a plugin that is not installed."""

    def __init__(self, name: str, available: Iterable[str]) -> None:
        self.name = name
        self.available = sorted(available)
        super().__init__("unknown enhanced authentication plugin %r; available: %s" % (
            name, ", ".join(self.available) or "(none installed)"))


def _factories() -> Dict[str, IEnhancedAuthFactory]:
    return factories_by_name(IEnhancedAuthFactory, "enhanced authentication")


def available_auth_plugins() -> list:
    """Names of every installed enhanced authentication plugin, sorted."""
    return sorted(_factories())


def build_enhanced_authenticators(names: Iterable[str], config: Any,
                                  reactor: Any) -> Dict[str, IEnhancedAuthenticator]:
    """
    The authenticators of the plugins ``names``, by the method each speaks;
    :class:`UnknownAuthPlugin` for a name no plugin has, :class:`AuthPluginError`
    for two that speak the same method (a client could not say which).
    """
    factories = _factories()
    methods: Dict[str, IEnhancedAuthenticator] = {}
    names_by_method: Dict[str, str] = {}
    for name in names:
        factory = factories.get(name)
        if factory is None:
            raise UnknownAuthPlugin(name, factories)
        authenticator = factory.build(config, reactor)
        if authenticator.method in methods:
            raise AuthPluginError(
                "plugins %r and %r both speak the method %r: list only one of them" % (
                    names_by_method[authenticator.method], name, authenticator.method))
        names_by_method[authenticator.method] = name
        methods[authenticator.method] = authenticator
    return methods
