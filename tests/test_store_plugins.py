"""
Message stores are plugins found by name: the bundled ``memory`` and
``leveldb`` factories, the error for an unknown name, and a third-party
store (examples/sqlite_store) found just by being on ``sys.path``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import attrs
import pytest
from twisted.internet.task import Clock
from twisted.plugin import IPlugin
from zope.interface.verify import verifyObject

from vmqtw.interfaces import IMessageStore, IMessageStoreFactory
from vmqtw.store.leveldb import LevelDBMessageStore
from vmqtw.store.memory import MemoryMessageStore
from vmqtw.store.registry import (UnknownStore, available_stores,
                                  find_store_factory)
from vmqtw.testing.store import message, resolve
from vmqtw.types import SubscriberId

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO, "examples", "sqlite_store")


@attrs.define(slots=True)
class FakeConfig:
    """The two settings store factories read from ``vmqtw.config.Config``."""

    data_dir: str
    leveldb_sync: bool = False


def test_bundled_stores_listed() -> None:
    """Both bundled stores are found; the example is not on this path."""
    names = available_stores()
    assert {"memory", "leveldb"} <= set(names)
    assert "sqlite" not in names
    assert names == sorted(names)


@pytest.mark.parametrize("name", ["memory", "leveldb"])
def test_factories_are_plugins(name: str) -> None:
    """Each factory provides IPlugin and IMessageStoreFactory by name."""
    factory = find_store_factory(name)
    assert verifyObject(IMessageStoreFactory, factory)
    assert IPlugin.providedBy(factory)
    assert factory.name == name


def test_memory_factory_builds(tmp_path) -> None:
    """memory builds an unopened, non-durable MemoryMessageStore."""
    store = find_store_factory("memory").build(FakeConfig(str(tmp_path)),
                                               Clock())
    assert isinstance(store, MemoryMessageStore)
    assert verifyObject(IMessageStore, store)
    assert store.durable is False


@pytest.mark.parametrize("sync", [False, True])
def test_leveldb_factory_builds(tmp_path, sync: bool) -> None:
    """
    leveldb builds a store in <data_dir>/msgstore using the reactor it is
    given, with leveldb.sync passed on.
    """
    clock = Clock()
    config = FakeConfig(str(tmp_path / "data"), leveldb_sync=sync)
    store = find_store_factory("leveldb").build(config, clock)
    assert isinstance(store, LevelDBMessageStore)
    assert store.sync is sync
    resolve(store.open(), clock)
    try:
        sid = SubscriberId("", "a")
        m = message(1)
        d = store.write(sid, m)
        assert clock.getDelayedCalls(), "batch not scheduled on given clock"
        resolve(d, clock)
        assert resolve(store.find(sid), clock) == [m.ref]
    finally:
        resolve(store.close(), clock)
    assert (tmp_path / "data" / "msgstore" / "CURRENT").exists()


def test_unknown_store_names_the_choices() -> None:
    """An unknown name is a KeyError whose text lists what exists."""
    with pytest.raises(UnknownStore) as info:
        find_store_factory("levledb")
    assert isinstance(info.value, KeyError)
    text = str(info.value)
    assert "'levledb'" in text
    assert "leveldb" in text.replace("'levledb'", "")
    assert "memory" in text


_CHILD = textwrap.dedent("""
    import json, sys
    from twisted.internet.task import Clock
    from vmqtw.store.registry import available_stores, find_store_factory
    from vmqtw.testing.store import message, resolve
    from vmqtw.types import SubscriberId

    class Config:
        data_dir = sys.argv[1]
        leveldb_sync = False

    clock = Clock()
    store = find_store_factory("sqlite").build(Config(), clock)
    resolve(store.open(), clock)
    sid = SubscriberId("", "a/b")
    m = message(1)
    resolve(store.write(sid, m), clock)
    refs = resolve(store.find(sid), clock)
    resolve(store.close(), clock)
    import vmqtw
    print(json.dumps({"stores": available_stores(), "name": store.name,
                      "module": type(store).__module__,
                      "ok": refs == [m.ref], "vmqtw": vmqtw.__file__}))
""")


def test_third_party_store_found_on_sys_path(tmp_path) -> None:
    """
    With examples/sqlite_store on sys.path (first, even), the real vmqtw
    package is still used and ``sqlite`` is a store beside the bundled
    ones.  Runs in a subprocess to keep this process's plugin path clean.
    """
    cache = os.path.join(EXAMPLE, "vmqtw", "plugins", "dropin.cache")
    had_cache = os.path.exists(cache)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([EXAMPLE, REPO])
    try:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(tmp_path / "data")],
            env=env, cwd=str(tmp_path), capture_output=True, timeout=120)
        assert out.returncode == 0, out.stderr.decode()
        result = json.loads(out.stdout)
    finally:
        if not had_cache and os.path.exists(cache):
            os.remove(cache)
    assert {"leveldb", "memory", "sqlite"} <= set(result["stores"])
    assert result["name"] == "sqlite"
    assert result["module"] == "vmqtw.plugins.sqlite_store"
    assert result["ok"] is True
    assert result["vmqtw"] == os.path.join(REPO, "vmqtw", "__init__.py")
    assert (tmp_path / "data" / "msgstore.sqlite3").exists()
