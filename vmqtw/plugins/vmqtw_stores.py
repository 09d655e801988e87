"""
The message stores bundled with vmqtw, as ``IMessageStoreFactory`` plugins.

Selected by ``message_store = memory | leveldb | postgresql``; the store modules are
imported only when a store is built, so listing plugins stays cheap.
"""
from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from vmqtw.interfaces import IMessageStore, IMessageStoreFactory


@implementer(IPlugin, IMessageStoreFactory)
@attrs.define(frozen=True, slots=True)
class MemoryStoreFactory:
    """Builds the non-durable in-memory store; ignores the config."""

    name: str = "memory"

    def build(self, config: Any, reactor: Any) -> IMessageStore:
        from vmqtw.store.memory import MemoryMessageStore
        return MemoryMessageStore()


@implementer(IPlugin, IMessageStoreFactory)
@attrs.define(frozen=True, slots=True)
class LevelDBStoreFactory:
    """
    Builds the LevelDB store in ``<data_dir>/msgstore``, fsync-ing each
    batch when ``leveldb_sync`` (``leveldb.sync``) is on.
    """

    name: str = "leveldb"

    def build(self, config: Any, reactor: Any) -> IMessageStore:
        from vmqtw.store.leveldb import LevelDBMessageStore
        return LevelDBMessageStore(
            os.path.join(str(config.data_dir), "msgstore"), reactor,
            sync=bool(config.leveldb_sync))


@implementer(IPlugin, IMessageStoreFactory)
@attrs.define(frozen=True, slots=True)
class PostgresStoreFactory:
    """
    Builds the store shared by a cluster in the PostgreSQL database of
    ``postgresql.dsn`` (see :mod:`vmqtw.store.postgresql`).
    """

    name: str = "postgresql"

    def build(self, config: Any, reactor: Any) -> IMessageStore:
        from vmqtw.config import ConfigError
        from vmqtw.store.postgresql import PostgresMessageStore, ThreadedDatabase
        dsn = config.postgresql_dsn
        if not dsn:
            raise ConfigError("message_store = postgresql needs postgresql.dsn, the database "
                              "every node of the cluster shares.")
        timeout = max(1, int(config.postgresql_connect_timeout))
        query_timeout = config.postgresql_query_timeout
        return PostgresMessageStore(
            lambda: ThreadedDatabase(dsn, reactor, timeout, query_timeout), reactor,
            config.nodename)


memory = MemoryStoreFactory()
leveldb = LevelDBStoreFactory()
postgresql = PostgresStoreFactory()
