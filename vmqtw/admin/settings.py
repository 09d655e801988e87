"""
The settings ``vmqtw-admin set KEY=VALUE`` changes on a running node
(:data:`vmqtw.config.RUNTIME_KEYS`), and where each takes effect.

A value is parsed by the configuration schema's own type
(:func:`vmqtw.config.parse_runtime_value`) and applied at once to the
objects that read it at use; nothing is written back to the
configuration file, so a restart brings the file's values back (as
VerneMQ's ``vmq-admin set``):

* the ``allow_*_during_netsplit`` flags: on the listeners'
  :class:`~vmqtw.mqtt.session.SessionSettings`, which every session of
  the listener (connected or new) consults at each CONNECT, PUBLISH,
  SUBSCRIBE and UNSUBSCRIBE.  ``trade_consistency`` is kept apart and
  OR-ed into the three flags it trades (VerneMQ reads it the same way), so
  ``set trade_consistency=off`` gives back what the flags are set to;
* the queue limits: the registry's :class:`~vmqtw.broker.queue.QueueLimits`
  for new sessions, and every existing queue at once.
  ``max_online_messages`` and ``max_offline_messages`` are read at each
  enqueue (lowering one drops nothing already queued; only later arrivals
  meet the new bound); ``max_inflight_messages`` changes the window of
  connected clients at once (never above an MQTT 5.0 client's receive
  maximum; a wider window is filled at once);
* ``log.console.level``: the level of the filter in front of the node's
  log observers (:func:`vmqtw.tap` installs :attr:`RuntimeSettings.log_filter`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import attrs
from twisted.logger import LogLevel, LogLevelFilterPredicate, Logger

from vmqtw.config import RUNTIME_KEYS, Config, parse_runtime_value, render_runtime_value
from vmqtw.mqtt.session import SessionSettings

__all__ = ["RuntimeSettings", "log_level"]

log = Logger()

#: The flags ``trade_consistency`` turns on (not the register one: one
#: client id must not connect on both sides of a split).
TRADED = ("allow_publish_during_netsplit", "allow_subscribe_during_netsplit",
          "allow_unsubscribe_during_netsplit")
NETSPLIT_FLAGS = ("allow_register_during_netsplit",) + TRADED
QUEUE_LIMITS = ("max_inflight_messages", "max_online_messages", "max_offline_messages")


def log_level(name: str) -> Any:
    """``log.console.level``'s word as Twisted's level (the schema says warning, Twisted warn)."""
    return LogLevel.levelWithName({"warning": "warn"}.get(name, name))


@attrs.define(slots=True, eq=False)
class RuntimeSettings:
    """
    One node's run-time settings: ``values`` by key (the flags as set, not
    yet OR-ed with ``trade_consistency``), applied to ``sessions`` (every
    listener's settings), ``registry`` (its queues) and ``log_filter``.
    """

    values: Dict[str, Any]
    sessions: List[SessionSettings] = attrs.field(factory=list)
    registry: Any = None
    log_filter: LogLevelFilterPredicate = attrs.field(factory=LogLevelFilterPredicate)

    @classmethod
    def from_config(cls, config: Config, sessions: Sequence[SessionSettings] = (),
                    registry: Any = None) -> "RuntimeSettings":
        """
        The values of ``config``; the traded flags as the file wrote them
        (``trade_consistency`` is OR-ed in at use), so that turning it off
        at run time gives back what the file said.
        """
        values = {key: getattr(config, key.replace(".", "_")) for key in RUNTIME_KEYS}
        values.update(zip(TRADED, config.netsplit_flags_as_written))
        settings = cls(values, list(sessions), registry,
                       LogLevelFilterPredicate(defaultLogLevel=log_level(
                           config.log_console_level)))
        settings._apply_flags()
        return settings

    def get(self, key: str) -> Any:
        """The value in force (a traded flag with ``trade_consistency`` OR-ed in)."""
        value = self.values[key]
        if key in TRADED:
            return bool(value or self.values["trade_consistency"])
        return value

    def show(self, key: str) -> str:
        """The value in force, spelt as in the configuration file."""
        return render_runtime_value(key, self.get(key))

    def set(self, key: str, text: str) -> str:
        """
        Parse ``text`` for ``key`` (:class:`~vmqtw.config.ConfigError`, one
        sentence, when it is not a run-time key or not a value of its type)
        and apply it; the value now in force, as text.
        """
        value = parse_runtime_value(key, text)
        self.values[key] = value
        if key in NETSPLIT_FLAGS or key == "trade_consistency":
            self._apply_flags()
        elif key in QUEUE_LIMITS:
            self._apply_limits(key, value)
        elif key == "log.console.level":
            self.log_filter.setLogLevelForNamespace("", log_level(value))
        elif key == "shared_subscription_policy" and self.registry is not None:
            # Read at every choice: the next message of every group follows it.
            self.registry.subscription_table.shared.policy = value
        shown = self.show(key)
        log.info("{key} set to {value} (until the node restarts)", key=key, value=shown)
        return shown

    def _apply_flags(self) -> None:
        for settings in self.sessions:
            for key in NETSPLIT_FLAGS:
                setattr(settings, key, self.get(key))

    def _apply_limits(self, key: str, value: int) -> None:
        registry = self.registry
        if registry is None:
            return
        limits = attrs.evolve(registry.limits, **{key: value})
        registry.limits = limits               # new sessions
        for queue in list(registry.queues.values()):  # and every existing one
            queue.set_limits(limits)
