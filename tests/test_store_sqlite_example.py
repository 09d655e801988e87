"""
The example third-party store (examples/sqlite_store) passes the same
conformance kit as the bundled stores.

Its module is loaded from its file under a private name, so this test
process's ``vmqtw.plugins`` path is left alone (discovery through sys.path
is tested in a subprocess by test_store_plugins.py).
"""
from __future__ import annotations

import importlib.util
import os

from vmqtw.testing.store import MessageStoreConformance

EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "examples", "sqlite_store", "vmqtw", "plugins", "sqlite_store.py")


def _load():
    spec = importlib.util.spec_from_file_location(
        "_vmqtw_example_sqlite_store", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sqlite_store = _load()


class TestSQLiteExampleStore(MessageStoreConformance):
    def make_store(self, path, clock):
        return sqlite_store.SQLiteMessageStore(str(path / "msgstore.sqlite3"))
