"""
What ``vmqtw-admin session show`` and ``retain show`` list, built from one
node's registry: pure functions over its state, no I/O, so the node answers
from the reactor thread without blocking and tests need no sockets.

Rows are plain dicts of msgpack-friendly values (they cross the cluster
link), one per session -- VerneMQ's columns -- or, with ``topic``/``qos``
asked for, one per subscription of a session, as ``vmq-admin session show
--topic --qos`` prints them.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from vmqtw.broker.subscriptions import local_filters

__all__ = ["SESSION_COLUMNS", "SESSION_DEFAULT_COLUMNS", "RETAIN_COLUMNS",
           "RETAIN_DEFAULT_COLUMNS", "SUBSCRIPTION_COLUMNS", "session_rows", "retain_rows",
           "matches", "select", "DEFAULT_LIMIT", "PLUGIN_COLUMNS", "plugin_rows"]

#: Every column of ``session show``; ``topic`` and ``qos`` make one row per
#: subscription.
SESSION_COLUMNS: Tuple[str, ...] = (
    "client_id", "is_online", "mountpoint", "peer_host", "peer_port", "user", "node",
    "clean_session", "protocol", "keepalive", "offline_messages", "online_messages",
    "inflight_messages", "topic", "qos")
#: What it shows when no column is asked for (VerneMQ's default).
SESSION_DEFAULT_COLUMNS: Tuple[str, ...] = (
    "client_id", "is_online", "mountpoint", "peer_host", "peer_port", "user")
SUBSCRIPTION_COLUMNS = ("topic", "qos")
RETAIN_COLUMNS: Tuple[str, ...] = ("topic", "payload", "qos", "mountpoint")
RETAIN_DEFAULT_COLUMNS: Tuple[str, ...] = ("topic", "payload")
#: Rows shown unless ``--limit`` says otherwise (VerneMQ's default).
DEFAULT_LIMIT = 100

Row = Dict[str, Any]


def _peer(session: Any) -> Tuple[str, int]:
    """The session's ``(host, port)`` (the protocol sets ``session.peer`` so)."""
    peer = getattr(session, "peer", None)
    if isinstance(peer, tuple) and len(peer) == 2:
        host, port = peer
    else:
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    return (str(host) if host is not None else "", int(port) if isinstance(port, int) else 0)


def session_rows(registry: Any, node: str, per_subscription: bool = False) -> List[Row]:
    """
    One row per session this node holds (connected, or offline with a
    queue here), every column filled; with ``per_subscription`` one row per
    subscription of each (a session without any still gets one row).
    """
    rows: List[Row] = []
    sessions: Mapping[Any, Any] = registry.sessions
    queues: Mapping[Any, Any] = registry.queues
    table = registry.subscription_table
    for subscriber_id in sorted(set(sessions) | set(queues), key=lambda s: s.as_key()):
        session = sessions.get(subscriber_id)
        queue = queues.get(subscriber_id)
        host, port = _peer(session) if session is not None else ("", 0)
        online = session is not None
        waiting = queue.size() if queue is not None else 0
        inflight = len(queue.inflight) if queue is not None else 0
        base: Row = {
            "client_id": subscriber_id.client_id,
            "is_online": online,
            "mountpoint": subscriber_id.mountpoint,
            "peer_host": host,
            "peer_port": port,
            "user": (getattr(session, "username", None) or "") if online else "",
            "node": node,
            "clean_session": bool(getattr(session, "clean_session", False)) if online
            else bool(queue is not None and queue.clean_session),
            "protocol": _protocol(session) if online else "",
            "keepalive": int(getattr(session, "keepalive", 0) or 0) if online else 0,
            "offline_messages": 0 if online else waiting,
            "online_messages": waiting if online else 0,
            "inflight_messages": inflight,
        }
        if not per_subscription:
            rows.append(base)
            continue
        filters = local_filters(table.record(subscriber_id), node)
        if not filters:
            rows.append(dict(base, topic="", qos=""))
        for flt, qos in sorted(filters.items()):
            rows.append(dict(base, topic=flt, qos=qos))
    return rows


def _protocol(session: Any) -> Any:
    level = getattr(session, "protocol_level", None)
    return level if isinstance(level, int) else ""


def retain_rows(retained: Iterable[Tuple[str, Any]], mountpoint: str = "") -> List[Row]:
    """Rows of ``(topic, stored value)`` pairs of the retained tree."""
    rows: List[Row] = []
    for topic, value in retained:
        payload = value[0]
        rows.append({"topic": topic, "payload": _printable(payload), "qos": int(value[1]),
                     "mountpoint": mountpoint})
    rows.sort(key=lambda r: r["topic"])
    return rows


def _printable(payload: bytes) -> str:
    """The payload as text when it is UTF-8, else as hex (a table cell is text)."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + payload.hex()


def _cell_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def matches(row: Mapping[str, Any], filters: Sequence[Tuple[str, str]]) -> bool:
    """Whether ``row`` has each ``(column, value)`` of ``filters`` (compared as text)."""
    return all(_cell_text(row.get(column, "")) == value for column, value in filters)


def select(rows: Iterable[Row], filters: Sequence[Tuple[str, str]],
           columns: Sequence[str], limit: Optional[int]) -> List[Row]:
    """The rows passing ``filters``, cut to ``columns``, at most ``limit`` (None: all)."""
    chosen: List[Row] = []
    for row in rows:
        if matches(row, filters):
            chosen.append({column: row.get(column, "") for column in columns})
            if limit is not None and len(chosen) >= limit:
                break
    return chosen


#: ``plugin show``'s columns: VerneMQ's (plugin, type, hooks, the code
#: behind them), and what the plugin is configured with.
PLUGIN_COLUMNS: Tuple[str, ...] = ("plugin", "type", "hooks", "module", "settings")

#: The hooks each kind of plugin serves, by VerneMQ's names.
_STORE_HOOKS = ("msg_store_write", "msg_store_read", "msg_store_delete", "msg_store_find")
_METADATA_HOOKS = ("metadata_put", "metadata_get", "metadata_delete", "metadata_fold",
                   "metadata_subscribe")


def _code(thing: Any) -> str:
    """``module:Class`` of the object serving a plugin's hooks."""
    kind = type(thing)
    return "%s:%s" % (kind.__module__, kind.__qualname__)


def plugin_rows(config: Any, store: Any, metadata: Any,
                authenticator: Any = None,
                enhanced_auth: Optional[Dict[str, Any]] = None) -> List[Row]:
    """
    The plugins in force on a node, ``plugin show``'s rows: its message
    store (``message_store``), its metadata store, and the auth plugins
    that are on (``plugins.vmq_passwd``, ``plugins.vmq_acl``,
    ``allow_anonymous``).  Built once at start: none of them changes while
    the node runs.  A PostgreSQL DSN may hold a password, so it is never
    shown, only that it is set.
    """
    store_settings = ""
    if config.message_store == "leveldb":
        store_settings = "path=%s, leveldb.sync=%s" % (
            getattr(store, "path", ""), "on" if config.leveldb_sync else "off")
    elif config.message_store == "postgresql":
        store_settings = "postgresql.dsn (not shown)"
    rows: List[Row] = [
        {"plugin": config.message_store, "type": "message_store",
         "hooks": list(_STORE_HOOKS), "module": _code(store), "settings": store_settings},
        {"plugin": "plumtree", "type": "metadata_store", "hooks": list(_METADATA_HOOKS),
         "module": _code(metadata), "settings": "path=%s" % (
             os.path.join(str(config.data_dir), "metadata"),)},
    ]
    def auth_code(part: str) -> str:
        """The class deciding for an auth plugin (the authenticator's file snapshot)."""
        if authenticator is None:
            return ""
        return _code(getattr(authenticator, part) if part else authenticator)
    if config.plugins_vmq_passwd:
        rows.append({"plugin": "vmq_passwd", "type": "auth", "hooks": ["auth_on_register"],
                     "module": auth_code("passwords"),
                     "settings": "vmq_passwd.password_file=%s" % (
                         config.vmq_passwd_password_file,)})
    if config.plugins_vmq_acl:
        rows.append({"plugin": "vmq_acl", "type": "auth",
                     "hooks": ["auth_on_publish", "auth_on_subscribe"], "module": auth_code("acl"),
                     "settings": "vmq_acl.acl_file=%s" % (config.vmq_acl_acl_file,)})
    if config.allow_anonymous:
        rows.append({"plugin": "allow_anonymous", "type": "auth",
                     "hooks": ["auth_on_register"], "module": auth_code(""),
                     "settings": "allow_anonymous=on"})
    # enhanced_auth.plugins: one row per method, by the plugin that gave it.
    methods = enhanced_auth or {}
    for name, (method, authenticator_of_method) in zip(config.enhanced_auth_plugins or (),
                                                       methods.items()):
        rows.append({"plugin": name, "type": "enhanced_auth", "hooks": ["on_auth_m5"],
                     "module": _code(authenticator_of_method),
                     "settings": "method=%s" % (method,)})
    return rows
