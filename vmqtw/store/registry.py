"""
Message store plugins, looked up by the name in ``message_store``.

Stores are ``IMessageStoreFactory`` plugins in the :mod:`vmqtw.plugins`
package, whose ``__path__`` includes every ``vmqtw/plugins`` directory on
``sys.path``: a third party ships a store by installing one module there, no
change to vmqtw needed (as ``twisted.cred`` checkers are found).
"""
from __future__ import annotations

from typing import Dict, List

from vmqtw.interfaces import IMessageStoreFactory
from vmqtw.pluginlookup import factories_by_name

__all__ = ["UnknownStore", "find_store_factory", "available_stores"]

class UnknownStore(KeyError):
    """No store plugin has the requested name; the message lists those that
    exist, because the usual cause is a typo or a plugin not installed."""

    def __init__(self, name: str, available: List[str]) -> None:
        super().__init__(name)
        self.name = name
        self.available = available

    def __str__(self) -> str:
        return "unknown message store %r; available: %s" % (
            self.name, ", ".join(self.available) or "(none)")


def _factories() -> Dict[str, IMessageStoreFactory]:
    """Every store factory by name; on a name clash the first found wins."""
    return factories_by_name(IMessageStoreFactory, "message store")


def available_stores() -> List[str]:
    """Names of every installed message store, sorted."""
    return sorted(_factories())


def find_store_factory(name: str) -> IMessageStoreFactory:
    """The factory called ``name``; :class:`UnknownStore` if none is."""
    factories = _factories()
    try:
        return factories[name]
    except KeyError:
        raise UnknownStore(name, sorted(factories)) from None
