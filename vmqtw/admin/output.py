"""
How ``vmqtw-admin`` prints results: VerneMQ's boxed tables for people,
``{"type": "table", "table": [...]}`` / ``{"type": "text", ...}`` JSON for
scripts (the shape of ``vmq-admin --format=json``).  Pure functions.
"""
from __future__ import annotations

import json
from typing import Any, List, Mapping, Sequence

__all__ = ["render_table", "render_text", "cluster_rows", "status_rows", "leave_text",
           "drain_progress_text", "drained_text", "drain_timeout_text", "render_rows",
           "disconnect_text", "render_metrics", "set_text"]


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def render_table(columns: Sequence[str], rows: Sequence[Mapping[str, Any]], fmt: str = "human") -> str:
    """``rows`` as a boxed table (``fmt="human"``) or JSON (``"json"``)."""
    if fmt == "json":
        return json.dumps({"type": "table", "table": [dict(r) for r in rows]}, sort_keys=False)
    texts: List[List[str]] = [[_cell(r[c]) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(t[i]) for t in texts]) for i, c in enumerate(columns)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(" %-*s " % (w, c) for w, c in zip(widths, cells)) + "|"

    out = [rule, line(columns), rule]
    out.extend(line(t) for t in texts)
    out.append(rule)
    return "\n".join(out)


def render_text(text: str, fmt: str = "human") -> str:
    if fmt == "json":
        return json.dumps({"type": "text", "text": text})
    return text


def cluster_rows(status: Sequence[Sequence[Any]]) -> List[dict]:
    """``[(node, running)]`` from ``admin.cluster.show`` -> table rows."""
    return [{"Node": node, "Running": bool(running)} for node, running in status]


def status_rows(status: Mapping[str, Any]) -> List[dict]:
    """``admin.node.status``'s mapping -> ``Key | Value`` rows, keys sorted."""
    return [{"Key": key, "Value": status[key]} for key in sorted(status)]


def _plural(count: int, word: str) -> str:
    return "%d %s%s" % (count, word, "" if count == 1 else "s")


def leave_text(result: Any) -> str:
    """
    What ``admin.cluster.leave`` did, in words: ``Done`` alone when the
    node left and nothing was lost or moved; otherwise what became of its
    sessions and messages.
    """
    if not isinstance(result, Mapping):
        return "Done"  # a node from before the leave report: members only
    node = result["node"]
    moved = int(result.get("sessions_moved", 0))
    lives = "lives" if moved == 1 else "live"
    if result.get("down"):
        fate = ("are in the shared message store: their clients get them" if
                result.get("store_shared") else "are lost with the default message store")
        return ("Done: %s was down when it left. %s it held now %s on the other nodes (their "
                "clients reconnect to any node and find their subscriptions); the offline "
                "messages %s stored %s." % (
                    node, _plural(moved, "persistent session"), lives, node, fate))
    lost = int(result.get("messages_lost", 0))
    text = "Done"
    if lost:
        text = "Done: %s on %s of %s are lost, as --yes accepted." % (
            _plural(lost, "offline message"), _plural(int(result.get("sessions_lost", 0)),
                                                     "session"), node)
    if moved:
        text += "%s%s of %s now %s on the other nodes; their clients reconnect to any node and " \
                "find their subscriptions." % (" " if lost else ": ",
                                               _plural(moved, "persistent session"), node, lives)
    return text


_PHASES = {
    "idle": "not draining",
    "waiting": "waiting for its clients to reconnect to other nodes",
    "moving": "moving its offline sessions to the other nodes",
    "flushing": "waiting for the other nodes to acknowledge what it handed over",
    "done": "drained",
}


def drain_progress_text(node: str, progress: Mapping[str, Any]) -> str:
    """One progress line of ``cluster leave -k`` (``admin.cluster.drain_status``)."""
    return ("%s, %s s: %s; %s connected, %s holding %s; %s reconnected elsewhere, %s moved "
            "with %s; %s not yet acknowledged." % (
                node, progress.get("seconds", 0), _PHASES.get(progress.get("phase", ""),
                                                              progress.get("phase")),
                _plural(int(progress.get("online", 0)), "client"),
                _plural(int(progress.get("queues", 0)), "offline session"),
                _plural(int(progress.get("messages", 0)), "message"),
                _plural(int(progress.get("reconnected", 0)), "session"),
                _plural(int(progress.get("moved_queues", 0)), "session"),
                _plural(int(progress.get("moved_messages", 0)), "message"),
                _plural(int(progress.get("unacknowledged", 0)), "message")))


def drained_text(node: str, progress: Mapping[str, Any]) -> str:
    """What ``cluster leave -k`` did once the node left."""
    moved = int(progress.get("moved_queues", 0))
    return ("Done: %s left the cluster and serves no MQTT until it joins one again. %s "
            "reconnected to other nodes; %s moved to the other nodes with %s; no message "
            "lost." % (node, _plural(int(progress.get("reconnected", 0)), "session"),
                       "1 offline session" if moved == 1 else "%d offline sessions" % moved,
                       _plural(int(progress.get("moved_messages", 0)), "message")))


def drain_timeout_text(node: str, progress: Mapping[str, Any], seconds: float) -> str:
    """Why ``cluster leave -k`` gave up, and what the operator can do."""
    return ("%s is not drained after %g s (%s holding %s, %s not yet acknowledged by the "
            "other nodes): it has not left the cluster and its MQTT listeners stay closed; run "
            "cluster leave -k again with a larger -t, or restart the node to serve again." % (
                node, seconds, _plural(int(progress.get("queues", 0)), "offline session"),
                _plural(int(progress.get("messages", 0)), "message"),
                _plural(int(progress.get("unacknowledged", 0)), "message")))


def render_rows(columns: Sequence[str], result: Mapping[str, Any], fmt: str = "human") -> str:
    """
    ``session show`` / ``retain show``: their rows as a table; the members
    that did not answer are named (after the table, or as ``unreachable``
    in JSON), so a partial list never passes for the whole.
    """
    rows = list(result.get("rows", ()))
    unreachable = list(result.get("unreachable", ()))
    if fmt == "json":
        shape: dict = {"type": "table", "table": [dict(r) for r in rows]}
        if unreachable:
            shape["unreachable"] = unreachable
        return json.dumps(shape, sort_keys=False)
    text = render_table(columns, rows, fmt) if rows else "No rows."
    if unreachable:
        text += "\nNot listed: %s did not answer." % (", ".join(unreachable),)
    return text


def disconnect_text(result: Mapping[str, Any]) -> str:
    """What ``session disconnect`` did."""
    client, node = result["client_id"], result["node"]
    if result.get("was_online"):
        text = "Done: the connection of %s on %s is closed" % (client, node)
        return text + ("; its session ended." if result.get("ended") else
                       " (a persistent session stays).")
    if result.get("ended"):
        return "Done: %s was not connected; its session on %s ended." % (client, node)
    return "%s is not connected (its session stays on %s; --cleanup ends it)." % (client, node)


def render_metrics(samples: Sequence[Sequence[Any]], descriptions: bool = False,
                   fmt: str = "human") -> str:
    """
    ``metrics show``: ``name = value`` lines (VerneMQ's form), whole
    numbers without a fraction; ``--with-descriptions`` puts what each
    counts above it.  JSON: a table of name, value (and description).
    """
    if fmt == "json":
        rows = [dict({"name": name, "value": value},
                     **({"description": doc} if descriptions else {}))
                for name, value, doc in samples]
        return json.dumps({"type": "table", "table": rows})
    lines: List[str] = []
    for name, value, doc in samples:
        if descriptions:
            lines.append("# " + doc)
        number = float(value)
        lines.append("%s = %s" % (name, int(number) if number.is_integer() else number))
    return "\n".join(lines)


def set_text(result: Mapping[str, Any]) -> str:
    """
    What ``set`` did: the values now in force and where.  A value in
    force that differs from the one asked for (a traded flag while
    ``trade_consistency`` is on) is visible in it.
    """
    values = ", ".join("%s=%s" % (key, value) for key, value in result.get("values", ()))
    nodes = list(result.get("nodes", ()))
    return "Done: %s on %s (until %s restart%s)." % (
        values, ", ".join(nodes), "it" if len(nodes) == 1 else "they",
        "s" if len(nodes) == 1 else "")
