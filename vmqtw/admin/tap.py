"""
``twistd vmqtw-admin ...``: the admin command as a twistd subcommand.

twistd calls ``makeService`` before it daemonizes or starts a reactor, so
the command runs there, synchronously (the client uses plain sockets),
prints its result and leaves through ``SystemExit`` with its exit status.
The options are not parsed by twistd's ``usage.Options`` (which stops at
the first word and would answer with a full usage dump): the argument list
goes whole to :func:`vmqtw.admin.cli.run`, so both entry points behave
the same.
"""
from __future__ import annotations

import sys
from typing import Any, List, Optional

from twisted.python import usage

from vmqtw.admin.commands import DEFAULT_CONFIG

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    """``twistd vmqtw-admin [--config PATH] [--format=human|json] COMMAND [ARG=VALUE]``."""

    synopsis = "[--config PATH] [--format=human|json] cluster show|status|join|leave ..."
    longdesc = ("Steer the local vmqtw node (configuration %s by default): cluster show, "
                "cluster join discovery-node=NAME@HOST[:PORT], cluster leave node=NAME."
                % (DEFAULT_CONFIG,))

    def parseOptions(self, options: Optional[List[str]] = None) -> None:
        self["argv"] = list(sys.argv[1:] if options is None else options)


def makeService(options: Options) -> Any:
    """Run the command; never returns a service."""
    from vmqtw.admin.cli import run

    code = run(options["argv"], sys.stdout, sys.stderr, prog="twistd vmqtw-admin")
    sys.stdout.flush()
    raise SystemExit(code)
