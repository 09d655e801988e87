"""
A minimal third-party message store plugin for vmqtw, on SQLite.

Put the directory holding this ``vmqtw/plugins/`` tree on ``sys.path`` (or
install this one file into any ``vmqtw/plugins`` directory there) and
``message_store = sqlite`` selects it: ``vmqtw.plugins`` extends its
``__path__`` with every such directory, so ``twisted.plugin.getPlugins``
finds the ``sqlite`` factory below.  There is deliberately no
``vmqtw/__init__.py`` or ``vmqtw/plugins/__init__.py`` next to it, which
would shadow the real package.

It shows the smallest honest store: one payload row per message, one index
row per subscriber whose AUTOINCREMENT key gives insertion order, every
call committed before its (already fired) Deferred is returned.  It passes
``vmqtw.testing.store.MessageStoreConformance``.
"""
from __future__ import annotations

import os
import sqlite3
from typing import Any, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.plugin import IPlugin
from zope.interface import implementer

from vmqtw.interfaces import IMessageStore, IMessageStoreFactory
from vmqtw.types import Message, SubscriberId

_SCHEMA = """
CREATE TABLE IF NOT EXISTS msg (
    ref BLOB PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL, retain INTEGER NOT NULL, dup INTEGER NOT NULL,
    ts REAL NOT NULL, mountpoint TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS idx (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, mountpoint TEXT NOT NULL,
    client_id TEXT NOT NULL, ref BLOB NOT NULL,
    UNIQUE (mountpoint, client_id, ref));
CREATE INDEX IF NOT EXISTS idx_ref ON idx (ref);
"""


@implementer(IMessageStore)
class SQLiteMessageStore:
    """Offline messages in one SQLite file; synchronous and durable."""

    name = "sqlite"
    durable = True

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: Optional[sqlite3.Connection] = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("sqlite store %s is not open" % (self.path,))
        return self._db

    def open(self) -> Deferred:
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self._db = sqlite3.connect(self.path)
            # WAL + NORMAL: a committed call survives a crash of the broker
            # (not a power loss) without an fsync per call.
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_SCHEMA)
        except Exception:
            return fail()
        return succeed(None)

    def close(self) -> Deferred:
        if self._db is not None:
            self._db.close()
            self._db = None
        return succeed(None)

    def write(self, subscriber_id: SubscriberId, message: Message) -> Deferred:
        try:
            with self._conn() as db:
                db.execute(
                    "INSERT OR IGNORE INTO msg VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (message.ref, message.topic, message.payload, message.qos,
                     message.retain, message.dup, message.timestamp,
                     message.mountpoint))
                db.execute("INSERT OR IGNORE INTO idx (mountpoint, client_id,"
                           " ref) VALUES (?, ?, ?)",
                           (*subscriber_id.as_key(), message.ref))
        except Exception:
            return fail()
        return succeed(None)

    def read(self, subscriber_id: SubscriberId, ref: bytes) -> Deferred:
        try:
            row = self._conn().execute(
                "SELECT m.topic, m.payload, m.qos, m.retain, m.dup, m.ts,"
                " m.mountpoint FROM idx i JOIN msg m ON m.ref = i.ref"
                " WHERE i.mountpoint = ? AND i.client_id = ? AND i.ref = ?",
                (*subscriber_id.as_key(), ref)).fetchone()
        except Exception:
            return fail()
        if row is None:
            return succeed(None)
        topic, payload, qos, retain, dup, ts, mountpoint = row
        return succeed(Message(ref=ref, topic=topic, payload=bytes(payload),
                               qos=qos, retain=bool(retain), dup=bool(dup),
                               timestamp=ts, mountpoint=mountpoint))

    def delete(self, subscriber_id: SubscriberId, ref: bytes) -> Deferred:
        try:
            with self._conn() as db:
                db.execute("DELETE FROM idx WHERE mountpoint = ? AND"
                           " client_id = ? AND ref = ?",
                           (*subscriber_id.as_key(), ref))
                db.execute("DELETE FROM msg WHERE ref = ? AND NOT EXISTS"
                           " (SELECT 1 FROM idx WHERE ref = ?)", (ref, ref))
        except Exception:
            return fail()
        return succeed(None)

    def find(self, subscriber_id: SubscriberId) -> Deferred:
        try:
            rows = self._conn().execute(
                "SELECT ref FROM idx WHERE mountpoint = ? AND client_id = ?"
                " ORDER BY seq", subscriber_id.as_key()).fetchall()
        except Exception:
            return fail()
        return succeed([bytes(r) for (r,) in rows])

    def subscribers(self) -> Deferred:
        try:
            rows = self._conn().execute(
                "SELECT DISTINCT mountpoint, client_id FROM idx").fetchall()
        except Exception:
            return fail()
        return succeed([SubscriberId(mp, cid) for mp, cid in rows])

    def stored_payloads(self) -> int:
        """Testing hook of the vmqtw conformance kit."""
        return self._conn().execute("SELECT COUNT(*) FROM msg").fetchone()[0]


@implementer(IPlugin, IMessageStoreFactory)
class SQLiteStoreFactory:
    """``message_store = sqlite``: ``<data_dir>/msgstore.sqlite3``."""

    name = "sqlite"

    def build(self, config: Any, reactor: Any) -> IMessageStore:
        return SQLiteMessageStore(
            os.path.join(str(config.data_dir), "msgstore.sqlite3"))


sqlite = SQLiteStoreFactory()
