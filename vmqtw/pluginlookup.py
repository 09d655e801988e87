"""
Finding plugins by name: message stores (``message_store``) and enhanced
authentication methods (``enhanced_auth.plugins``) are factories providing
an interface, found with ``twisted.plugin.getPlugins`` in the
:mod:`vmqtw.plugins` package (whose ``__path__`` spans every
``vmqtw/plugins`` directory on ``sys.path``), so a third party ships one by
installing a module there.  One place says what a clash of names does.
"""
from __future__ import annotations

from typing import Any, Dict

from twisted.logger import Logger
from twisted.plugin import getPlugins

import vmqtw.plugins

__all__ = ["factories_by_name"]

log = Logger()


def factories_by_name(interface: Any, kind: str) -> Dict[str, Any]:
    """
    Every plugin providing ``interface``, by its ``name``; on a clash the
    first found wins and the other is named in a warning (``kind`` says
    what they are, e.g. "message store").
    """
    found: Dict[str, Any] = {}
    for factory in getPlugins(interface, vmqtw.plugins):
        if factory.name in found:
            log.warn("two {kind} plugins are named {name!r}: {kept!r} is used, "
                     "{ignored!r} ignored", kind=kind, name=factory.name,
                     kept=found[factory.name], ignored=factory)
            continue
        found[factory.name] = factory
    return found
