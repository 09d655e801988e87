"""
The ``vmqtw-admin`` command line, parsed without any I/O.

VerneMQ's syntax: words for the command (``cluster join``), ``key=value``
for its arguments, ``--config`` and ``--format`` anywhere.  twistd's
option parser stops at the first word, so both entry points (the console
script and ``twistd vmqtw-admin``) hand their whole argument list here and
get the same behaviour and the same one-sentence errors.
"""
from __future__ import annotations

import re
import textwrap
from typing import Dict, List, Optional, Sequence, Tuple

import attrs

from vmqtw.config import RUNTIME_KEYS, ConfigError, describe_runtime_key, parse_runtime_value

__all__ = ["UsageError", "Invocation", "parse_args", "parse_node_address",
           "COMMANDS", "COMMAND_FLAGS", "USAGE", "DEFAULT_CONFIG", "DEFAULT_INTERVAL",
           "DEFAULT_TIMEOUT"]

DEFAULT_CONFIG = "etc/vernemq.conf"
#: ``cluster leave -k``'s defaults, VerneMQ's: a progress line every 5 s,
#: at most 60 s.
DEFAULT_INTERVAL = 5.0
DEFAULT_TIMEOUT = 60.0

#: The options of ``cluster leave -k`` and their long names (VerneMQ's).
_KILL_OPTIONS = ("-k", "--kill_sessions", "--kill-sessions")
_SECONDS_OPTIONS = {"-i": "interval", "--summary-interval": "interval",
                    "--summary_interval": "interval", "--interval": "interval",
                    "-t": "timeout", "--timeout": "timeout"}

#: command words -> (admin call method, allowed key=value arguments, help)
COMMANDS: Dict[str, Tuple[str, Tuple[str, ...], str]] = {
    "cluster show": ("admin.cluster.show", (), "list the members and whether each runs"),
    "cluster status": ("admin.cluster.show", (), "the same as cluster show"),
    "cluster join": ("admin.cluster.join", ("discovery-node",),
                     "join the cluster of discovery-node=NAME@HOST[:PORT]"),
    "cluster leave": ("admin.cluster.leave", ("node",),
                      "remove node=NAME from the cluster; refused while it holds offline "
                      "messages unless -k moves them to the other nodes first (its clients "
                      "are disconnected to reconnect elsewhere; progress every -i seconds, "
                      "default 5, for at most -t seconds, default 60) or --yes accepts "
                      "their loss"),
    "node status": ("admin.node.status", (), "this node's view: members, readiness, netsplits"),
    "session show": ("admin.session.show", (),
                     "the sessions on every node; --COLUMN shows a column (client_id, "
                     "is_online, mountpoint, peer_host, peer_port, user, node, clean_session, "
                     "protocol, keepalive, offline_messages, online_messages, "
                     "inflight_messages; topic and qos list each subscription), "
                     "--COLUMN=VALUE keeps the rows with that value, --limit=N (default 100)"),
    "session disconnect": ("admin.session.disconnect", ("client-id", "mountpoint"),
                           "close the connection of client-id=ID (its will is published, a "
                           "persistent session stays); --cleanup ends its session too"),
    "listener show": ("admin.listener.show", (),
                      "this node's listeners: type, status, address, mountpoint, limits, "
                      "connections"),
    "listener stop": ("admin.listener.stop", ("address", "port"),
                      "stop accepting on address=IP port=N (its connections stay; -k closes "
                      "them too)"),
    "listener start": ("admin.listener.start", ("address", "port"),
                       "accept again on a stopped listener address=IP port=N"),
    "metrics show": ("admin.metrics.show", (),
                     "every counter and gauge of this node, read now (--with-descriptions "
                     "adds what each counts)"),
    "plugin show": ("admin.plugin.show", (),
                    "the plugins in force on this node: its message store, metadata store "
                    "and auth plugins, the hooks each serves, its code and settings"),
    "set": ("admin.setting.set", (),
            "change KEY=VALUE at once on every node (--local: this one), until restart"),
    "show": ("admin.setting.show", (),
             "each node's value of KEY (one or more; none: every key set can change), or "
             "with --local this node's only"),
    "retain show": ("admin.retain.show", (),
                    "the retained messages; --topic=FILTER (default #) picks them, --payload, "
                    "--topic, --qos, --mountpoint choose the columns, --limit=N (default 100)"),
}

#: The help of a command whose one line in the overview cannot say it all.
LONG_HELP: Dict[str, str] = {
    "set": ("change KEY=VALUE (one or more) at once on every node of the cluster, or with "
            "--local on this node only.  The values are checked as the configuration file "
            "checks them.  They are not kept across a restart: put them in the "
            "configuration file too.  KEY is one of: " + "; ".join(
                "%s (%s)" % (key, describe_runtime_key(key)) for key in RUNTIME_KEYS)),
}

#: Arguments a command may leave out.
OPTIONAL_ARGUMENTS: Dict[str, Tuple[str, ...]] = {"session disconnect": ("mountpoint",)}

#: ``--NAME`` / ``--NAME=VALUE`` flags of a command: name -> whether it
#: takes a value ("yes"), may take one ("maybe") or takes none ("no").
COMMAND_FLAGS: Dict[str, Dict[str, str]] = {
    "session show": {**{column: "maybe" for column in (
        "client_id", "is_online", "mountpoint", "peer_host", "peer_port", "user", "node",
        "clean_session", "protocol", "keepalive", "offline_messages", "online_messages",
        "inflight_messages", "topic", "qos")}, "limit": "yes"},
    "session disconnect": {"cleanup": "no"},
    "metrics show": {"with-descriptions": "no"},
    "set": {"local": "no"},
    "show": {"local": "no"},
    "retain show": {"topic": "maybe", "payload": "no", "qos": "no", "mountpoint": "no",
                    "limit": "yes"},
}

_ARG_SYNTAX = {"discovery-node": "discovery-node=NAME@HOST[:PORT]", "node": "node=NAME@HOST",
               "client-id": "client-id=ID", "mountpoint": "mountpoint=NAME",
               "address": "address=IP", "port": "port=N"}

USAGE = """\
Usage: {prog} [--config PATH] [--format=human|json] COMMAND [ARG=VALUE ...] [OPTIONS]

Talks to the local node over its listener.vmq.clustering address, proving
distributed_cookie from the configuration file (default {config}).

Commands:
{commands}
"""

#: The shape of ``nodename`` in the configuration, plus an optional port.
_NODE_RE = re.compile(r"(?P<name>[A-Za-z0-9_-]+)@(?P<host>[A-Za-z0-9_.-]+)(?::(?P<port>[0-9]{1,5}))?\Z")


class UsageError(Exception):
    """A mistake on the command line; the message is one sentence."""


@attrs.frozen(slots=True)
class Invocation:
    """One parsed command line."""

    command: str                     # "cluster join", ...; "help", "version"
    method: str                      # the admin call, e.g. "admin.cluster.join"
    arguments: Tuple[Tuple[str, str], ...] = ()
    config: str = DEFAULT_CONFIG
    format: str = "human"
    #: ``--yes``: accept the loss of a leaving node's offline messages.
    yes: bool = False
    #: ``-k``: drain the leaving node first (move its sessions elsewhere).
    kill_sessions: bool = False
    #: ``-i``: seconds between progress lines of ``-k``.
    interval: float = DEFAULT_INTERVAL
    #: ``-t``: seconds ``-k`` may take at most.
    timeout: float = DEFAULT_TIMEOUT
    #: The command's own ``--NAME[=VALUE]`` flags, in order (value None
    #: for a bare ``--NAME``).
    flags: Tuple[Tuple[str, Optional[str]], ...] = ()

    def flag(self, name: str) -> Optional[str]:
        for key, value in self.flags:
            if key == name:
                return value
        return None

    def has_flag(self, name: str) -> bool:
        return any(key == name for key, _value in self.flags)

    def argument(self, key: str) -> Optional[str]:
        for k, v in self.arguments:
            if k == key:
                return v
        return None


def command_help(prog: str, command: str) -> str:
    """The help of one command: its syntax and what it does."""
    _method, allowed, text = COMMANDS[command]
    text = LONG_HELP.get(command, text)
    optional = OPTIONAL_ARGUMENTS.get(command, ())
    syntax = " ".join(("[%s]" if key in optional else "%s") % (_ARG_SYNTAX[key],)
                      for key in allowed)
    flags = COMMAND_FLAGS.get(command, {})
    if command == "cluster leave":
        syntax += " [--yes | -k [-i SECONDS] [-t SECONDS]]"
    elif command in ("set", "show"):
        syntax = ("KEY=VALUE [KEY=VALUE ...]" if command == "set" else "[KEY ...]") + \
            " [--local]"
    elif flags:
        syntax += " [--OPTION[=VALUE] ...]"
    return "Usage: %s [--config PATH] [--format=human|json] %s %s\n\n%s\n" % (
        prog, command, syntax.strip(), textwrap.fill(text[0].upper() + text[1:] + ".", 78))


def usage_text(prog: str) -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["  %-*s  %s" % (width, c, h) for c, (_, _, h) in COMMANDS.items()]
    return USAGE.format(prog=prog, config=DEFAULT_CONFIG, commands="\n".join(lines))


def _allowed_commands() -> str:
    return ", ".join(COMMANDS)


def parse_args(argv: Sequence[str]) -> Invocation:
    """
    ``argv`` (without the program name) -> :class:`Invocation`, or
    :class:`UsageError` naming what is allowed.
    """
    config = DEFAULT_CONFIG
    fmt = "human"
    yes = False
    kill_sessions = False
    seconds: Dict[str, float] = {}
    flags: List[Tuple[str, Optional[str]]] = []
    words: List[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg in ("-h", "--help", "help"):
            # ``session show --help``: that command's help; else all of it.
            asked = " ".join(w for w in words if "=" not in w)
            return Invocation("help", "", (("command", asked),) if asked in COMMANDS else (),
                              config, fmt)
        if arg in ("--version", "-V"):
            return Invocation("version", "", (), config, fmt)
        if arg in ("--yes", "-y"):
            yes = True
            continue
        if arg in _KILL_OPTIONS:
            kill_sessions = True
            continue
        if arg.startswith("-"):
            name, eq, value = arg.partition("=")
            if name in _SECONDS_OPTIONS:
                if not eq:
                    if i >= len(args):
                        raise UsageError("The option %s needs a number of seconds." % (name,))
                    value = args[i]
                    i += 1
                seconds[_SECONDS_OPTIONS[name]] = _seconds(name, value)
                continue
            if name in ("--config", "-c", "--format"):
                if not eq:
                    if i >= len(args):
                        raise UsageError("The option %s needs a value." % (name,))
                    value = args[i]
                    i += 1
                if name == "--format":
                    if value not in ("human", "json"):
                        raise UsageError("The option --format takes human or json, not %r." % (value,))
                    fmt = value
                else:
                    config = value
                continue
            if name.startswith("--") and len(name) > 2:
                # The command's own flag (checked once the command is known).
                flags.append((name[2:], value if eq else None))
                continue
            raise UsageError("Unknown option %s; the options are --config PATH, "
                             "--format=human|json, and for cluster leave --yes or -k with "
                             "-i SECONDS and -t SECONDS." % (name,))
        words.append(arg)
    command_words = [w for w in words if "=" not in w]
    pairs = [w for w in words if "=" in w]
    if not command_words:
        raise UsageError("No command given; the commands are: %s." % (_allowed_commands(),))
    command = " ".join(command_words)
    if command_words[0] in ("set", "show") and (command_words[0] == "set" or pairs
                                                 or len(command_words) > 1):
        return _setting_command(command_words, pairs, flags, config, fmt, yes, kill_sessions,
                                bool(seconds))
    if command not in COMMANDS:
        raise UsageError("Unknown command %r; the commands are: %s." % (command, _allowed_commands()))
    method, allowed, _ = COMMANDS[command]
    arguments: List[Tuple[str, str]] = []
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in allowed:
            takes = (" it takes " + " ".join(_ARG_SYNTAX[k] for k in allowed)) if allowed \
                else " it takes no arguments"
            raise UsageError("%s does not take %r;%s." % (command, key, takes))
        if not value:
            raise UsageError("The argument %s= of %s needs a value." % (key, command))
        if key == "port" and not (value.isdigit() and 0 < int(value) <= 65535):
            raise UsageError("The argument port= takes a port number, not %r." % (value,))
        if any(k == key for k, _ in arguments):
            raise UsageError("The argument %s= is given twice." % (key,))
        arguments.append((key, value))
    for key in allowed:
        if key in OPTIONAL_ARGUMENTS.get(command, ()):
            continue
        if not any(k == key for k, _ in arguments):
            raise UsageError("%s needs %s." % (command, _ARG_SYNTAX[key]))
    _check_flags(command, flags)
    if yes and command != "cluster leave":
        raise UsageError("The option --yes is only for cluster leave.")
    if kill_sessions and command not in ("cluster leave", "listener stop"):
        raise UsageError("The option -k is only for cluster leave and listener stop.")
    if seconds and (not kill_sessions or command != "cluster leave"):
        raise UsageError("The options -i and -t go with cluster leave -k.")
    if yes and kill_sessions:
        raise UsageError("-k moves the offline messages to the other nodes and --yes accepts "
                         "their loss: give one of them.")
    return Invocation(command, method, tuple(arguments), config, fmt, yes, kill_sessions,
                      seconds.get("interval", DEFAULT_INTERVAL),
                      seconds.get("timeout", DEFAULT_TIMEOUT), tuple(flags))


def _setting_command(words: Sequence[str], pairs: Sequence[str],
                     flags: Sequence[Tuple[str, Optional[str]]], config: str, fmt: str,
                     yes: bool, kill_sessions: bool, seconds: bool) -> Invocation:
    """
    ``set KEY=VALUE ...`` / ``show [KEY ...]``: their keys are the
    configuration's, so they are checked here by the schema's own types
    (the configuration file's sentence) before any node is asked.
    """
    command = words[0]
    method = COMMANDS[command][0]
    _check_flags(command, flags)
    if yes or kill_sessions or seconds:
        raise UsageError("%s takes KEY%s and --local only." % (
            command, "=VALUE" if command == "set" else ""))
    arguments: List[Tuple[str, str]] = []
    if command == "set":
        if len(words) > 1:
            raise UsageError("set takes KEY=VALUE, not %r." % (words[1],))
        if not pairs:
            raise UsageError("set needs KEY=VALUE, e.g. set allow_publish_during_netsplit=on.")
        for pair in pairs:
            key, _, value = pair.partition("=")
            try:
                parse_runtime_value(key, value)
            except ConfigError as e:
                raise UsageError(str(e)) from None
            if any(k == key for k, _ in arguments):
                raise UsageError("The key %s is given twice." % (key,))
            arguments.append((key, value))
    else:
        if pairs:
            raise UsageError("show takes keys without values, not %r." % (pairs[0],))
        for key in words[1:]:
            if key not in RUNTIME_KEYS:
                try:
                    parse_runtime_value(key, "")
                except ConfigError as e:
                    if "unknown key" in str(e):
                        raise UsageError(str(e)) from None
                raise UsageError("%s is not a run-time setting; show knows %s." % (
                    key, ", ".join(RUNTIME_KEYS)))
            arguments.append(("key", key))
    return Invocation(command, method, tuple(arguments), config, fmt, flags=tuple(flags))


def _check_flags(command: str, flags: Sequence[Tuple[str, Optional[str]]]) -> None:
    """Each flag is one the command takes, with a value where it needs one."""
    known = COMMAND_FLAGS.get(command, {})
    for name, value in flags:
        kind = known.get(name)
        if kind is None:
            if not known:
                raise UsageError("Unknown option --%s; the options are --config PATH, "
                                 "--format=human|json, and for cluster leave --yes or -k with "
                                 "-i SECONDS and -t SECONDS." % (name,))
            raise UsageError("%s does not take --%s; it takes %s." % (
                command, name, ", ".join("--" + n for n in known)))
        if kind == "yes" and not value:
            raise UsageError("The option --%s of %s needs a value." % (name, command))
        if kind == "no" and value is not None:
            raise UsageError("The option --%s of %s takes no value." % (name, command))
        if name == "limit":
            if not (value or "").isdigit() or int(value or "0") < 1:
                raise UsageError("The option --limit takes a whole number of rows, not %r."
                                 % (value,))


def _seconds(name: str, text: str) -> float:
    """A positive number of seconds for option ``name``, or one sentence why not."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 86400:
        raise UsageError("The option %s takes a number of seconds between 0 and 86400, not %r."
                         % (name, text))
    return value


def parse_node_address(text: str) -> Tuple[str, str, Optional[int]]:
    """
    ``NAME@HOST[:PORT]`` -> ``(node name, host, port or None)``.  The host
    part of a node name is where the other nodes reach it (see
    ``nodename``), so it doubles as the address to dial.
    """
    m = _NODE_RE.match(text)
    if not m:
        raise UsageError("%r is not a node NAME@HOST[:PORT], e.g. vmqtw@10.0.0.2:44053." % (text,))
    host = m.group("host")
    port = m.group("port")
    if port is not None and not 0 < int(port) <= 65535:
        raise UsageError("The port of %r is not between 1 and 65535." % (text,))
    return ("%s@%s" % (m.group("name"), host), host, int(port) if port is not None else None)
