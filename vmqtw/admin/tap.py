"""
``twistd vmqtw-admin ...``: the admin command as a twistd subcommand.

The command runs while twistd parses its options, in
:meth:`Options.parseOptions`, and leaves through ``SystemExit`` with its
exit status: twistd reads and checks ``twistd.pid`` (and would answer
"Another twistd server is running" in the directory of a running node)
only later, before ``makeService``, so the admin command never gets there
and works in a node's own directory.  The options are not parsed by
twistd's ``usage.Options`` (which stops at the first word and would
answer with a full usage dump): the argument list goes whole to
:func:`vmqtw.admin.cli.run`, so both entry points behave the same.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, List, Optional, Sequence, TextIO

from twisted.python import usage

from vmqtw.admin.commands import DEFAULT_CONFIG

__all__ = ["Options", "makeService", "PROG"]

#: How errors name the command, so they read as the operator typed it.
PROG = "twistd vmqtw-admin"

Runner = Callable[[Sequence[str], TextIO, TextIO, str], int]


def _run(argv: Sequence[str], stdout: TextIO, stderr: TextIO, prog: str) -> int:
    from vmqtw.admin.cli import run

    return run(argv, stdout, stderr, prog=prog)


class Options(usage.Options):
    """``twistd vmqtw-admin [--config PATH] [--format=human|json] COMMAND [ARG=VALUE]``."""

    synopsis = "[--config PATH] [--format=human|json] cluster show|status|join|leave ..."
    longdesc = ("Steer the local vmqtw node (configuration %s by default): cluster show, "
                "cluster join discovery-node=NAME@HOST[:PORT], cluster leave node=NAME."
                % (DEFAULT_CONFIG,))

    #: The command itself; tests give a fake.
    runner: Runner = staticmethod(_run)

    def parseOptions(self, options: Optional[List[str]] = None) -> None:
        """Keep the arguments whole and run the command now (see the module docstring)."""
        self["argv"] = list(sys.argv[1:] if options is None else options)
        self.postOptions()

    def postOptions(self) -> None:
        code = self.runner(self["argv"], sys.stdout, sys.stderr, PROG)
        sys.stdout.flush()
        raise SystemExit(code)


def makeService(options: Options) -> Any:
    """Never reached: :meth:`Options.parseOptions` already ran the command and exited."""
    options.postOptions()
