"""
Start-up failures in one sentence (:mod:`vmqtw.startup`, the service tree
of :mod:`vmqtw.service`, :func:`vmqtw.node.build_node`): the key and the
cause, no traceback, a node that gives up.  In process; the real twistd
runs are in tests/test_e2e_startup.py.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any, List

import plyvel
import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from vmqtw.config import Config
from vmqtw.node import Step, _explained_steps, build_node
from vmqtw.service import ListenerService, OrderedMultiService
from vmqtw.startup import (ExitStatus, StartupError, leveldb_sentence, listen_sentence,
                           listener_addresses, probe_listen, probe_listeners)


def test_listen_sentence_names_key_address_and_cause() -> None:
    error = OSError(98, "Address already in use")
    assert listen_sentence("listener.tcp.default", "127.0.0.1", 1883, error) == (
        "listener.tcp.default 127.0.0.1:1883 cannot listen: address already in use")
    assert listen_sentence("listener.ssl.x", "::1", 8883, OSError(13, "x")) == (
        "listener.ssl.x [::1]:8883 cannot listen: permission denied")


def test_a_held_leveldb_lock_is_said_to_be_another_node(tmp_path: Any) -> None:
    db = plyvel.DB(str(tmp_path), create_if_missing=True)
    try:
        with pytest.raises(plyvel.IOError) as info:
            plyvel.DB(str(tmp_path), create_if_missing=True)
    finally:
        db.close()
    assert leveldb_sentence("/d", str(tmp_path), info.value) == (
        "platform_data_dir /d is in use by another vmqtw node (LevelDB lock held)")
    # LevelDB's words when another process holds it:
    other = OSError("IO error: lock /d/metadata/LOCK: Resource temporarily unavailable")
    assert "in use by another vmqtw node" in leveldb_sentence("/d", "/d/metadata", other)
    corrupt = OSError("IO error: /d/metadata/CURRENT: Permission denied")
    assert leveldb_sentence("/d", "/d/metadata", corrupt) == (
        "platform_data_dir /d cannot be used: /d/metadata cannot be opened "
        "(/d/metadata/CURRENT: Permission denied)")


def test_probe_refuses_a_port_another_socket_listens_on() -> None:
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StartupError) as info:
            probe_listen("listener.vmq.clustering", "127.0.0.1", port)
        assert str(info.value) == ("listener.vmq.clustering 127.0.0.1:%d cannot listen: "
                                   "address already in use" % port)
    finally:
        taken.close()
    probe_listen("listener.vmq.clustering", "127.0.0.1", port)   # free again: no error
    probe_listen("listener.tcp.any", "127.0.0.1", 0)              # port 0 is never probed


def test_every_listener_of_the_configuration_is_probed() -> None:
    config = Config.default().replace(
        tcp_listeners={"default": ("127.0.0.1", 1883), "b": ("127.0.0.2", 1884)},
        listener_vmq_clustering=("127.0.0.1", 44053))
    seen: List[Any] = []
    probe_listeners(listener_addresses(config), lambda *a: seen.append(a))
    assert seen == [("listener.tcp.b", "127.0.0.2", 1884),
                    ("listener.tcp.default", "127.0.0.1", 1883),
                    ("listener.vmq.clustering", "127.0.0.1", 44053)]


class Recorder:
    """A step that records its start and stop."""

    def __init__(self, name: str, log: List[str], result: Any = None) -> None:
        self.step = Step(name, self.start, self.stop)
        self.name = name
        self.log = log
        self.result = result

    def start(self) -> Any:
        self.log.append("start " + self.name)
        return self.result

    def stop(self) -> None:
        self.log.append("stop " + self.name)


def _tree(log: List[str], failing: Any, raise_at_once: bool,
          failures: List[Failure]) -> OrderedMultiService:
    top = OrderedMultiService(on_failure=failures.append, raise_at_once=raise_at_once)
    for recorder in (Recorder("a", log), Recorder("b", log, failing), Recorder("c", log)):
        top.addService(recorder.step.service())
    return top


def _logged() -> List[dict]:
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    return events


def test_a_step_failing_at_once_raises_out_of_start_service_with_its_sentence() -> None:
    """twistd calls startService before the reactor runs: the failure must reach it."""
    log: List[str] = []
    failures: List[Failure] = []
    top = _tree(log, fail(StartupError("listener.vmq.clustering x cannot listen: y")), True,
                failures)
    events = _logged()
    try:
        with pytest.raises(StartupError, match="^listener.vmq.clustering x cannot listen: y$"):
            top.startService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert log == ["start a", "start b", "stop b", "stop a"]   # c never started
    assert failures == []
    critical = [e for e in events if e.get("log_level") is not None
                and e["log_level"].name == "critical"]
    assert [e["sentence"] for e in critical] == ["listener.vmq.clustering x cannot listen: y"]
    assert not any("log_failure" in e for e in events)   # no traceback for a StartupError


def test_an_unexpected_error_keeps_its_traceback_and_still_stops_the_start() -> None:
    log: List[str] = []
    top = _tree(log, fail(ZeroDivisionError("bug")), True, [])
    events = _logged()
    try:
        with pytest.raises(StartupError, match="^node cannot start: bug$"):
            top.startService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any("log_failure" in e for e in events)


def test_a_later_failure_goes_to_on_failure() -> None:
    """Once the reactor runs, nothing can raise to twistd: the node stops (on_failure)."""
    log: List[str] = []
    failures: List[Failure] = []
    later: Deferred = Deferred()
    top = _tree(log, later, True, failures)
    top.startService()
    assert log == ["start a", "start b"]
    later.errback(StartupError("the sentence"))
    assert [f.getErrorMessage() for f in failures] == ["the sentence"]
    assert log == ["start a", "start b"]


def test_without_raise_at_once_a_failure_goes_to_on_failure() -> None:
    failures: List[Failure] = []
    top = _tree([], fail(StartupError("s")), False, failures)
    top.startService()
    assert [f.getErrorMessage() for f in failures] == ["s"]


class FailingEndpoint:
    def listen(self, factory: Any) -> Deferred:
        return fail(CannotListenError("127.0.0.1", 1883, OSError(98, "Address already in use")))


def test_a_listener_that_cannot_bind_reports_its_key() -> None:
    failures: List[Failure] = []
    listener = ListenerService("listener.tcp.default", FailingEndpoint(), object(),
                               on_failure=failures.append)
    listener.startService()
    assert [str(f.value) for f in failures] == [
        "listener.tcp.default 127.0.0.1:1883 cannot listen: address already in use"]
    assert failures[0].check(StartupError)


def test_the_clustering_port_and_the_message_store_fail_in_their_keys_words(tmp_path: Any) -> None:
    config = Config.default().replace(platform_data_dir=str(tmp_path),
                                      listener_vmq_clustering=("127.0.0.1", 44053))

    class Store:
        path = str(tmp_path / "msgstore")

    steps = _explained_steps([
        Step("message-store", lambda: fail(OSError(
            "IO error: lock %s/msgstore/LOCK: already held by process" % tmp_path))),
        Step("cluster-transport", lambda: fail(CannotListenError(
            "127.0.0.1", 44053, OSError(98, "Address already in use")))),
        Step("registry", lambda: succeed(None)),
    ], config, Store())
    errors: List[Failure] = []
    for step in steps:
        step.start().addErrback(errors.append)
    assert [str(f.value) for f in errors] == [
        "platform_data_dir %s is in use by another vmqtw node (LevelDB lock held)"
        % config.data_dir,
        "listener.vmq.clustering 127.0.0.1:44053 cannot listen: address already in use"]


def _hold_leveldb(path: str) -> "subprocess.Popen[str]":
    """Another process holding the LevelDB at ``path`` until its stdin closes."""
    os.makedirs(path, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import plyvel, sys; db = plyvel.DB(sys.argv[1], "
         "create_if_missing=True); print('held', flush=True); sys.stdin.read()", path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def test_build_node_on_a_data_dir_in_use_says_so(tmp_path: Any) -> None:
    config = Config.default().replace(platform_data_dir=str(tmp_path / "data"),
                                      message_store="memory")
    holder = _hold_leveldb(str(tmp_path / "data" / "metadata"))
    try:
        with pytest.raises(StartupError) as info:
            build_node(config, MemoryReactorClock())
    finally:
        holder.communicate("", timeout=10)
    assert str(info.value) == ("platform_data_dir %s is in use by another vmqtw node "
                               "(LevelDB lock held)" % config.data_dir)


def test_build_node_leaves_the_metadata_leveldb_to_the_first_step(tmp_path: Any) -> None:
    """
    Nothing opens a LevelDB before twistd forks (a child inherits neither
    its lock nor its compaction thread): building the node only probes the
    lock; the node's metadata step opens it.
    """
    config = Config.default().replace(platform_data_dir=str(tmp_path / "data"),
                                      message_store="memory")
    node = build_node(config, MemoryReactorClock())
    store = node.metadata.store
    assert not store.opened
    probe = plyvel.DB(str(tmp_path / "data" / "metadata"),   # not locked by the node
                      create_if_missing=True)
    probe.close()
    node.metadata.start()
    try:
        assert store.opened and store.actor
        with pytest.raises(plyvel.IOError):
            plyvel.DB(str(tmp_path / "data" / "metadata"))
    finally:
        node.metadata.stop()


def test_build_node_on_a_data_dir_that_is_a_file_says_so(tmp_path: Any) -> None:
    (tmp_path / "file").write_text("")
    config = Config.default().replace(platform_data_dir=str(tmp_path / "file"))
    with pytest.raises(StartupError, match="^platform_data_dir .*/file cannot be used: "
                                           "it is not a directory$"):
        build_node(config, MemoryReactorClock())


def test_exit_status_ends_the_process_only_after_a_failure() -> None:
    exits: List[int] = []
    status = ExitStatus(exit=exits.append)
    status.run()
    assert exits == []
    status.fail()
    status.fail(3)       # the first reason stays
    status.run()
    assert exits == [1]


def test_a_failure_once_the_reactor_runs_stops_it_and_sets_the_exit_status(tmp_path: Any) -> None:
    reactor = MemoryReactorClock()
    reactor.running = True
    node = build_node(Config.default().replace(platform_data_dir=str(tmp_path / "data"),
                                               message_store="memory"), reactor)
    try:
        assert node.service.on_failure is not None
        node.service.on_failure(Failure(StartupError("listener.tcp.default x cannot listen: y")))
        assert node.exit_status.code == 1
        assert reactor.hasStopped
    finally:
        node.metadata.store.close()


def test_what_exists_after_startup_is_frozen_out_of_the_collector() -> None:
    """Objects alive once the node started are moved to the collector's
    permanent generation (gc.freeze): full collections under load then
    scan only what came after, not every module and configuration object."""
    import gc
    from vmqtw.tap import _freeze_startup_heap
    before = gc.get_freeze_count()
    try:
        _freeze_startup_heap()
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
