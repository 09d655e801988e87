"""
``vmqtw-admin``: steer the local node of a cluster, as VerneMQ's ``vmq-admin``.

    vmqtw-admin [--config etc/vernemq.conf] cluster show
    vmqtw-admin cluster join discovery-node=vmqtw@10.0.0.2[:44053]
    vmqtw-admin cluster leave node=vmqtw@10.0.0.3 [--yes | -k [-i 5] [-t 60]]
    vmqtw-admin --format=json cluster status
    vmqtw-admin set allow_publish_during_netsplit=on [--local]
    vmqtw-admin show max_offline_messages
    vmqtw-admin plugin show

The configuration file names the node (``nodename``), where it listens
for cluster links (``listener.vmq.clustering``), the cookie to prove and,
with TLS between nodes, the certificate files (``cluster.tls.*``).
A result goes to stdout; an error is one sentence on stderr and exit
status 1 (2 for a mistake on the command line).
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, List, Optional, Sequence, TextIO, Tuple

from vmqtw.admin.client import AdminClient, AdminError, tls_context
from vmqtw.admin.commands import (Invocation, UsageError, command_help, parse_args,
                                  parse_node_address, usage_text)
from vmqtw.admin.inspect import (DEFAULT_LIMIT, PLUGIN_COLUMNS, RETAIN_COLUMNS, RETAIN_DEFAULT_COLUMNS,
                                 SESSION_COLUMNS, SESSION_DEFAULT_COLUMNS)
from vmqtw.admin.output import (cluster_rows, disconnect_text, drain_progress_text,
                                drain_timeout_text, drained_text, leave_text, render_metrics,
                                render_rows, render_table, render_text, set_text,
                                status_rows)

__all__ = ["main", "run", "execute"]

#: How long the client waits for a reply; above the node's own bounded
#: waits in a join (link up, then the seed's state), so the node's answer,
#: not ours, says what went wrong.
CALL_TIMEOUT = 20.0


def _call_args(invocation: Invocation, config: Any) -> tuple:
    if invocation.command == "cluster join":
        node, host, port = parse_node_address(invocation.argument("discovery-node") or "")
        if port is None:  # nodes of one cluster usually share the port others dial
            port = config.cluster_advertised_address[1]
        return (node, host, port)
    if invocation.command == "cluster leave":
        return (invocation.argument("node"), invocation.yes)
    if invocation.command == "session show":
        columns, filters = _columns_and_filters(invocation, SESSION_COLUMNS,
                                                SESSION_DEFAULT_COLUMNS)
        return (filters, columns, _limit(invocation))
    if invocation.command == "session disconnect":
        return (invocation.argument("client-id"), invocation.argument("mountpoint") or "",
                invocation.has_flag("cleanup"))
    if invocation.command in ("listener stop", "listener start"):
        where = (invocation.argument("address"), int(invocation.argument("port") or "0"))
        if invocation.command == "listener stop":
            return where + (invocation.kill_sessions,)
        return where
    if invocation.command == "set":
        return ([list(pair) for pair in invocation.arguments], invocation.has_flag("local"))
    if invocation.command == "show":
        return ([key for _name, key in invocation.arguments], invocation.has_flag("local"))
    if invocation.command == "retain show":
        columns, _filters = _columns_and_filters(invocation, RETAIN_COLUMNS,
                                                 RETAIN_DEFAULT_COLUMNS)
        return (invocation.flag("topic") or "#", columns, _limit(invocation))
    return ()


#: ``show KEY``'s columns.
SETTING_COLUMNS = ("node", "key", "value")

#: ``listener show``'s columns (VerneMQ's, and the listener's key).
LISTENER_COLUMNS = ("type", "status", "ip", "port", "mountpoint", "max_conns", "active_conns",
                    "name")


def _columns_and_filters(invocation: Invocation, known: Sequence[str],
                         default: Sequence[str]) -> Tuple[List[str], List[List[str]]]:
    """Bare ``--COLUMN`` flags choose the columns (in order), ``--COLUMN=VALUE`` filter."""
    columns = [name for name, value in invocation.flags if value is None and name in known]
    filters = [[name, value] for name, value in invocation.flags
               if value is not None and name != "limit"]
    return (columns or list(default)), filters


def _limit(invocation: Invocation) -> int:
    text = invocation.flag("limit")
    return int(text) if text else DEFAULT_LIMIT


def execute(invocation: Invocation, config: Any, timeout: float = CALL_TIMEOUT,
            say: Callable[[str], None] = lambda line: None) -> str:
    """
    Run one parsed command against the node ``config`` describes; the text
    to print.  ``say`` prints progress lines as they come (``leave -k``).
    """
    args = _call_args(invocation, config)
    tls = None
    if config.cluster_tls_certfile is not None:
        tls = tls_context(config.cluster_tls_certfile, config.cluster_tls_keyfile,
                          config.cluster_tls_cafile, config.listener_vmq_clustering)
    with AdminClient(config.listener_vmq_clustering, config.distributed_cookie.encode("utf-8"),
                     config.nodename, timeout=timeout, tls=tls) as client:
        if invocation.kill_sessions and invocation.command == "cluster leave":
            return render_text(_drain_then_leave(client, invocation, timeout, say),
                               invocation.format)
        value = client.call(invocation.method, args, timeout=timeout)
    fmt = invocation.format
    if invocation.method == "admin.cluster.show":
        return render_table(("Node", "Running"), cluster_rows(value), fmt)
    if invocation.method == "admin.node.status":
        return render_table(("Key", "Value"), status_rows(value), fmt)
    if invocation.method == "admin.cluster.leave":
        return render_text(leave_text(value), fmt)
    if invocation.method in ("admin.session.show", "admin.retain.show"):
        return render_rows(args[1], value, fmt)
    if invocation.method == "admin.session.disconnect":
        return render_text(disconnect_text(value), fmt)
    if invocation.method == "admin.listener.show":
        return render_table(LISTENER_COLUMNS, value, fmt)
    if invocation.method in ("admin.listener.stop", "admin.listener.start"):
        return render_text("Done: %s on %s:%s is %s." % (value["name"], value["ip"],
                                                       value["port"], value["status"]), fmt)
    if invocation.method == "admin.plugin.show":
        return render_table(PLUGIN_COLUMNS, value, fmt)
    if invocation.method == "admin.setting.set":
        return render_text(set_text(value), fmt)
    if invocation.method == "admin.setting.show":
        return render_rows(SETTING_COLUMNS, value, fmt)
    if invocation.method == "admin.metrics.show":
        return render_metrics(value, invocation.has_flag("with-descriptions"), fmt)
    return render_text("Done", fmt)


def _drain_then_leave(client: AdminClient, invocation: Invocation, timeout: float,
                      say: Callable[[str], None]) -> str:
    """
    ``cluster leave -k``: drain the node (its clients reconnect elsewhere,
    its remaining offline sessions move to the other nodes), printing its
    progress every ``-i`` seconds, then remove it -- or give up after
    ``-t`` seconds, the node still a member.  The drain waits for clients
    to reconnect elsewhere for at most half of ``-t``.
    """
    node = invocation.argument("node") or ""
    deadline = time.monotonic() + invocation.timeout
    progress = client.call("admin.cluster.drain",
                           (node, invocation.interval, invocation.timeout / 2), timeout=timeout)
    say(drain_progress_text(node, progress))
    while progress.get("phase") != "done":
        left = deadline - time.monotonic()
        if left <= 0:
            raise AdminError(drain_timeout_text(node, progress, invocation.timeout))
        client.pause(min(invocation.interval, left))
        progress = client.call("admin.cluster.drain_status", (node,), timeout=timeout)
        say(drain_progress_text(node, progress))
    client.call(invocation.method, (node, False), timeout=timeout)
    return drained_text(node, progress)


def run(argv: Sequence[str], stdout: TextIO, stderr: TextIO, prog: str = "vmqtw-admin") -> int:
    """The whole command: parse, load the configuration, call, print; the exit status."""
    from vmqtw.config import ConfigError, load_config

    try:
        invocation = parse_args(argv)
        if invocation.command == "help":
            asked = invocation.argument("command")
            stdout.write(command_help(prog, asked) if asked else usage_text(prog))
            return 0
        if invocation.command == "version":
            from vmqtw import __version__
            stdout.write("%s %s\n" % (prog, __version__))
            return 0
        if invocation.command == "cluster join":
            parse_node_address(invocation.argument("discovery-node") or "")
    except UsageError as e:
        stderr.write("%s: %s\n" % (prog, e))
        return 2
    try:
        config = load_config(invocation.config)

        def say(line: str) -> None:
            if invocation.format == "human":
                stdout.write(line + "\n")
                stdout.flush()
        stdout.write(execute(invocation, config, say=say) + "\n")
        return 0
    except (ConfigError, AdminError) as e:
        stderr.write("%s: %s\n" % (prog, e))
        return 1


def main(argv: Optional[List[str]] = None) -> int:
    """Console script entry point."""
    return run(sys.argv[1:] if argv is None else argv, sys.stdout, sys.stderr)
