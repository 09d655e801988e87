"""
A single-node, in-memory :class:`~vmqtw.interfaces.IMetadataStore`.

It replicates nothing and forgets everything on restart.  It exists for unit
tests of the broker core and for ephemeral single nodes; the replicated,
LevelDB-backed store in :mod:`vmqtw.metadata.store` is what nodes run.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Tuple

from twisted.logger import Logger
from zope.interface import implementer

from vmqtw.interfaces import ChangeOrigin, IMetadataStore, MetadataCallback

Prefix = Tuple[str, str]


@implementer(IMetadataStore)
class LocalMetadataStore:
    """Dictionaries per prefix, with synchronous change events."""

    log = Logger()

    def __init__(self) -> None:
        self._data: Dict[Prefix, Dict[Any, Any]] = {}
        self._subscribers: Dict[Prefix, List[MetadataCallback]] = {}

    def put(self, prefix: Prefix, key: Any, value: Any) -> None:
        table = self._data.setdefault(prefix, {})
        old = table.get(key)
        table[key] = value
        self._notify(prefix, key, old, value)

    def get(self, prefix: Prefix, key: Any, default: Any = None) -> Any:
        return self._data.get(prefix, {}).get(key, default)

    def delete(self, prefix: Prefix, key: Any) -> None:
        table = self._data.get(prefix)
        if table is None or key not in table:
            return
        old = table.pop(key)
        self._notify(prefix, key, old, None)

    def items(self, prefix: Prefix) -> Iterator[Tuple[Any, Any]]:
        # A copy, so that callers may write while they iterate.
        return iter(list(self._data.get(prefix, {}).items()))

    def fold(self, prefix: Prefix, function: Callable[[Tuple[Any, Any], Any], Any],
             accumulator: Any) -> Any:
        for item in self.items(prefix):
            accumulator = function(item, accumulator)
        return accumulator

    def subscribe(self, prefix: Prefix, callback: MetadataCallback) -> Callable[[], None]:
        callbacks = self._subscribers.setdefault(prefix, [])
        callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return unsubscribe

    def _notify(self, prefix: Prefix, key: Any, old: Any, new: Any) -> None:
        for callback in list(self._subscribers.get(prefix, ())):
            try:
                # Nothing replicates into this store: every change is local.
                callback(prefix, key, old, new, ChangeOrigin.LOCAL)
            except Exception:
                # One faulty subscriber must not stop the others from seeing
                # the change, nor undo a write that is already committed.
                self.log.failure("metadata subscriber failed on {prefix} {key!r}",
                                 prefix=prefix, key=key)
