"""Retained messages: stored with their author, cleared by an empty payload,
found by filter from the cache the store's events keep."""
from __future__ import annotations

from vmqtw.broker.retain import RetainStore
from vmqtw.metadata.local import LocalMetadataStore
from vmqtw.types import RETAIN_PREFIX, Message


def retained(topic: str, payload: bytes, qos: int = 1) -> Message:
    return Message(b"r" + payload, topic, payload, qos, True, False, 12.5)


def _started():
    metadata = LocalMetadataStore()
    retain = RetainStore(metadata)
    retain.start()
    return metadata, retain


def test_retain_stores_with_author_and_matching_finds_it():
    metadata, retain = _started()
    retain.retain(retained("a/b", b"one"), ("c1", "alice"))
    assert metadata.get(RETAIN_PREFIX, ("", "a/b")) == (b"one", 1, 12.5, ("c1", "alice"))
    [(message, author)] = list(retain.matching("a/+"))
    assert (message.topic, message.payload, message.qos, message.retain) == \
        ("a/b", b"one", 1, True)
    assert author == ("c1", "alice")
    assert list(retain.matching("b/#")) == []
    assert len(retain) == 1


def test_empty_payload_clears_the_topic():
    """[MQTT-3.3.1-10/11]"""
    metadata, retain = _started()
    retain.retain(retained("a/b", b"one"), None)
    retain.retain(retained("a/b", b""), None)
    assert metadata.get(RETAIN_PREFIX, ("", "a/b")) is None
    assert list(retain.matching("#")) == [] and len(retain) == 0
    retain.retain(retained("never/set", b""), None)  # nothing to clear
    assert list(metadata.items(RETAIN_PREFIX)) == []


def test_start_loads_stored_values_also_without_author():
    metadata = LocalMetadataStore()
    metadata.put(RETAIN_PREFIX, ("", "old"), (b"v", 0, 1.0))
    retain = RetainStore(metadata)
    retain.start()
    [(message, author)] = list(retain.matching("old"))
    assert message.payload == b"v" and author is None
    retain.stop()
    metadata.put(RETAIN_PREFIX, ("", "new"), (b"w", 0, 2.0, None))
    assert [m.topic for m, _ in retain.matching("#")] == ["old"], "stopped"
