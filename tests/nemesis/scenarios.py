"""
Nemesis scenarios: what goes wrong, and when, while the workload runs.

A scenario is a small function over a :class:`Context` (the cluster, the
workload, the timings) registered in :data:`SCENARIOS` with the node
settings it needs and whether the steady load runs under it.  The runner
(:func:`run`) does the rest the same way for all of them: start and join
the cluster, connect and subscribe, wait until subscriptions are routed
everywhere, start the load, run the nemesis, stop the load, heal/resume/
restart whatever is still broken, drain, check.

To add one (session moves, ``cluster leave``, registration races, ...):
write ``def my_nemesis(ctx: Context) -> None`` and add a
:class:`Scenario` to :data:`SCENARIOS`.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Callable, Dict, List, Mapping, Optional

import attrs

from tests.nemesis.checker import Report, check
from tests.nemesis.harness import FIRST_IP, Cluster
from tests.nemesis.workload import Racer, Subscriber, Workload

__all__ = ["Timings", "SHORT", "NORMAL", "LONG", "Context", "Scenario",
           "Outcome", "SCENARIOS", "run"]


@attrs.frozen(slots=True)
class Timings:
    """How long and how hard: one preset per form (short test, normal, long)."""

    #: Messages per second per publisher.
    rate: float = 100.0
    #: Load before the first fault and after the last one, in seconds.
    settle: float = 3.0
    #: Cut scenario: cycles of ``on`` seconds cut, ``off`` seconds healed.
    cycles: int = 3
    on: float = 5.0
    off: float = 5.0
    #: Kill scenario: seconds the node stays dead.
    down: float = 5.0
    #: Pause scenario: seconds stopped (longer than detection, ~3 s).
    paused: float = 6.0
    #: Subscribe-then-publish scenario: rounds.
    rounds: int = 100
    subscribers_per_node: int = 1
    #: Session-moves scenario: moves of the subscriber, and seconds between.
    moves: int = 100
    dwell: float = 0.3
    #: Registration-races scenario: rounds of one CONNECT on every node.
    races: int = 20
    #: Leave-k scenario: offline persistent sessions on the leaving node.
    parked: int = 10


SHORT = Timings(rate=50.0, settle=1.5, cycles=2, on=4.0, off=2.0, down=4.0, paused=4.5,
                rounds=30, moves=12, races=5, parked=4)
NORMAL = Timings()
LONG = Timings(cycles=10, down=10.0, paused=10.0, settle=5.0, rounds=1000,
               subscribers_per_node=2)


@attrs.define
class Context:
    """What a nemesis function works with."""

    cluster: Cluster
    workload: Workload
    timings: Timings
    log: Callable[[str], None]
    #: The node the faults hit (the last one, like "node 3" in the issue).
    target: int

    def hold(self, seconds: float) -> None:
        """Let the load run (wall-clock time is the point here, not a wait for an event)."""
        time.sleep(seconds)


@attrs.frozen(slots=True)
class Scenario:
    name: str
    doc: str
    nemesis: Callable[[Context], None]
    settings: Mapping[str, str] = attrs.field(factory=dict)
    #: Run the steady load (subscribers on ``<prefix>/#``) under the nemesis.
    load: bool = True


@attrs.frozen(slots=True)
class Outcome:
    scenario: str
    report: Report
    duration: float
    drained: bool
    sessions_lost: int
    #: Dropped by queue limits on purpose (0 with the suite's unbounded queues).
    queue_drops: int = 0


# -- the nemeses --------------------------------------------------------------

def repeated_cuts(ctx: Context) -> None:
    """The target node cut off from all others, ``cycles`` times ``on``/``off``."""
    t = ctx.timings
    ctx.hold(t.settle)
    for i in range(t.cycles):
        ctx.log("cut %d/%d: node %d isolated" % (i + 1, t.cycles, ctx.target))
        ctx.cluster.isolate(ctx.target)
        ctx.hold(t.on)
        ctx.cluster.heal()
        ctx.hold(t.off)
    ctx.cluster.wait_healthy()
    ctx.hold(t.settle)


def kill_and_restart(ctx: Context) -> None:
    """kill -9 of the target node under load; restarted ``down`` seconds later."""
    t = ctx.timings
    ctx.hold(t.settle)
    ctx.log("kill -9 node %d" % (ctx.target,))
    ctx.cluster.kill9(ctx.target)
    ctx.hold(t.down)
    ctx.log("restart node %d" % (ctx.target,))
    ctx.cluster.restart(ctx.target)
    ctx.cluster.wait_healthy()
    ctx.hold(t.settle)


def pause_and_resume(ctx: Context) -> None:
    """SIGSTOP of the target node for longer than the detection time, then SIGCONT."""
    t = ctx.timings
    ctx.hold(t.settle)
    ctx.log("SIGSTOP node %d" % (ctx.target,))
    ctx.cluster.pause(ctx.target)
    ctx.hold(t.paused)
    ctx.log("SIGCONT node %d" % (ctx.target,))
    ctx.cluster.resume(ctx.target)
    ctx.cluster.wait_healthy()
    ctx.hold(t.settle)


def subscribe_then_publish(ctx: Context) -> None:
    """
    Round k: subscriber on node k subscribes to a fresh topic; right after
    its SUBACK the publisher on node k+1 publishes one QoS 1 message there.
    """
    subs, pubs = ctx.workload.subscribers, ctx.workload.publishers
    n = len(pubs)
    for k in range(ctx.timings.rounds):
        topic = "%s/sp/%d" % (ctx.workload.prefix, k)
        subs[(k % n) * ctx.timings.subscribers_per_node].subscribe(topic)
        pubs[(k + 1) % n].publish(topic)


def _kill_and_leave(ctx: Context) -> List[str]:
    """
    kill -9 of the target, its clients retired (their sessions live on
    other nodes from the leave on), ``cluster leave`` of it on node 0 once
    the others see it down.  Returns the client ids of its subscribers.
    """
    cluster, target = ctx.cluster, ctx.target
    victim = cluster.nodes[target]
    ctx.log("kill -9 node %d" % (target,))
    cluster.kill9(target)
    moved = [s.client_id for s in ctx.workload.subscribers if s.node is victim]
    ctx.workload.retire(victim)
    ctx.hold(ctx.timings.down)
    done = cluster.leave(target, 0)
    ctx.log("cluster leave node=%s on node 0: %s" % (cluster.name(victim),
                                                     (done.stdout or done.stderr).strip()))
    if done.returncode != 0 or "was down" not in done.stdout:
        raise AssertionError("leave of the dead node %d failed: %r" % (target, done))
    cluster.wait_healthy()
    return moved


def _resume_moved_sessions(ctx: Context, client_ids: List[str], survivors: List[str]) -> None:
    """The moved persistent sessions come back, each on the node the leave gave it to."""
    from vmqtw.broker.subscriptions import home_node

    by_name = {ctx.cluster.name(n): n for n in ctx.cluster.nodes}
    for client_id in client_ids:
        home = home_node(client_id, survivors)
        ctx.workload.resume(client_id, by_name[home])
        ctx.log("%s is back on %s with its session" % (client_id, home))


def leave_dead_node(ctx: Context) -> None:
    """
    kill -9 of the target under load, then ``cluster leave`` of it from node
    0: the survivors take its persistent sessions, whose clients come back
    with their subscriptions; nothing acknowledged is lost for the sessions
    on the other nodes.
    """
    ctx.hold(ctx.timings.settle)
    moved = _kill_and_leave(ctx)
    survivors = [ctx.cluster.name(n) for n in ctx.cluster.members()]
    _resume_moved_sessions(ctx, moved, survivors)
    ctx.hold(ctx.timings.settle)


def removed_node_rejoins(ctx: Context) -> None:
    """
    The target is killed and removed while down, restarted with its old
    data -- it must know at once that it was removed and serve no MQTT --
    then joined again under load.
    """
    from tests.waiting import wait_until

    cluster, target = ctx.cluster, ctx.target
    victim = cluster.nodes[target]
    ctx.hold(ctx.timings.settle)
    moved = _kill_and_leave(ctx)
    survivors = [cluster.name(n) for n in cluster.members()]
    _resume_moved_sessions(ctx, moved, survivors)
    began = time.monotonic()
    cluster.restart(target, wait=False)
    alone = [(cluster.name(victim), True)]
    wait_until(lambda: cluster.show(victim) == alone, 15, interval=0.1,
               what="the restarted node %d to know it was removed" % (target,))
    ctx.log("restarted node %d knew it was removed %.1f s after its start" % (
        target, time.monotonic() - began))
    if victim.accepting():
        raise AssertionError("the removed node %d serves MQTT" % (target,))
    done = cluster.join(target, 0)
    if done.returncode != 0:
        raise AssertionError("join of node %d failed: %r" % (target, done))
    ctx.log("node %d joined again" % (target,))
    cluster.wait_healthy()
    wait_until(victim.accepting, 15, what="the rejoined node %d to serve MQTT" % (target,))
    ctx.hold(ctx.timings.settle)


def session_moves(ctx: Context) -> None:
    """
    The first subscriber's persistent session moves node to node under the
    load, ``moves`` times (every other move abrupt: the new node takes the
    old connection over), ``dwell`` seconds on each node.
    """
    t = ctx.timings
    nodes = ctx.cluster.nodes
    mover = ctx.workload.subscribers[0]
    ctx.hold(t.settle)
    for i in range(t.moves):
        node = nodes[(i + 1) % len(nodes)]
        mover.move(node, abrupt=bool(i % 2))
        ctx.hold(t.dwell)
    ctx.log("%d moves of %s" % (t.moves, mover.name))
    ctx.hold(t.settle)


def registration_races(ctx: Context) -> None:
    """
    One persistent session (subscribed to the load like the others) that a
    CONNECT on every node claims at once, ``races`` rounds: each round must
    leave exactly one live connection, and nothing is lost (the checker).
    """
    t = ctx.timings
    workload = ctx.workload
    nodes = ctx.cluster.nodes
    racer = Racer(nodes[0], "racer")
    workload.subscribers.append(racer)
    racer.connect()
    racer.subscribe(workload.prefix + "/#")
    workload.wait_routed()
    ctx.hold(t.settle)
    for _ in range(t.races):
        racer.race(nodes)
    ctx.log("live connections after each race: %s" % (racer.survivors,))
    bad = [n for n in racer.survivors if n != 1]
    if bad:
        raise AssertionError("races left %s live connections: %s" % (bad, racer.survivors))
    ctx.hold(t.settle)


def leave_with_sessions_moved(ctx: Context) -> None:
    """
    ``cluster leave -k`` of the target under load, run on node 0: the
    target closes its listeners, its connected clients reconnect to the
    other nodes (the publisher resends what was not acknowledged), its
    offline persistent sessions move with every message they hold, then it
    leaves.  Afterwards those sessions come back on the survivors.
    """
    import threading

    from tests.waiting import wait_until

    t = ctx.timings
    cluster, workload = ctx.cluster, ctx.workload
    victim = cluster.nodes[ctx.target]
    others = [n for i, n in enumerate(cluster.nodes) if i != ctx.target]
    parked: List[Subscriber] = []
    for i in range(t.parked):
        # Subscribed (the SUBACK comes once every node routes the filter), then offline.
        sub = Subscriber(victim, "parked%d" % (i,), workload.clock)
        sub.connect()
        sub.subscribe(workload.prefix + "/#")
        sub.stop()
        workload.subscribers.append(sub)
        parked.append(sub)
    ctx.hold(t.settle)
    live = [c for c in [*workload.publishers, *workload.subscribers]
            if c.node is victim and c not in parked]
    failures: List[BaseException] = []

    def reconnect_elsewhere() -> None:
        # As clients given every node's address do: when the leaving node
        # closes its listener, they connect to another one.
        try:
            wait_until(lambda: not victim.accepting(), 30, interval=0.05,
                       what="the leaving node to close its listeners")
            for k, client in enumerate(live):
                client.move(others[k % len(others)], abrupt=True)
        except BaseException as e:   # reported by the scenario's thread below
            failures.append(e)

    mover = threading.Thread(target=reconnect_elsewhere, name="leave-k-clients", daemon=True)
    mover.start()
    ctx.log("cluster leave node=%s -k on node 0" % (cluster.name(victim),))
    done = cluster.leave(ctx.target, 0, "-k", "-i", "1", "-t", "120")
    mover.join(60)
    for line in done.stdout.splitlines():
        ctx.log("  " + line)
    if done.returncode != 0 or "no message lost" not in done.stdout:
        raise AssertionError("cluster leave -k failed: %r" % (done,))
    if failures:
        raise failures[0]
    cluster.wait_healthy()
    if victim.accepting():
        raise AssertionError("the node that left serves MQTT")
    for k, sub in enumerate(parked):
        sub.move(others[k % len(others)], abrupt=True)
        if not sub.connacks[-1]:
            raise AssertionError("%s came back without its session" % (sub.name,))
    ctx.log("%d parked sessions back on the survivors" % (len(parked),))
    ctx.hold(t.settle)


SCENARIOS: Dict[str, Scenario] = {s.name: s for s in [
    Scenario("cuts", "node 3 cut off repeatedly (defaults: no publishes during a split)",
             repeated_cuts),
    Scenario("cuts-allow-publish", "node 3 cut off repeatedly, allow_publish_during_netsplit = on",
             repeated_cuts, {"allow_publish_during_netsplit": "on"}),
    Scenario("kill9", "kill -9 of node 3 under load, then restart", kill_and_restart),
    Scenario("pause", "node 3 SIGSTOPped past detection, then SIGCONT", pause_and_resume),
    Scenario("subscribe-publish", "subscribe on one node, publish at once on another",
             subscribe_then_publish, load=False),
    Scenario("leave-dead", "kill -9 of node 3, cluster leave of it from node 1; its sessions "
             "come back on the survivors", leave_dead_node),
    Scenario("rejoin-removed", "node 3 killed, removed while down, restarted (knows it was "
             "removed, no MQTT), joined again", removed_node_rejoins),
    Scenario("leave-k", "cluster leave -k of node 3 under load: its clients reconnect "
             "elsewhere, its offline sessions move with their messages", leave_with_sessions_moved),
    Scenario("session-moves", "a persistent subscriber moves node to node under load",
             session_moves),
    Scenario("registration-races", "one client id connects on every node at once, repeatedly",
             registration_races),
]}


# -- the runner ---------------------------------------------------------------

def run(scenario: Scenario, timings: Timings = NORMAL, directory: Optional[str] = None,
        size: int = 3, log: Callable[[str], None] = lambda line: None,
        first_ip: int = FIRST_IP) -> Outcome:
    """
    Run one scenario on a fresh cluster on 127.0.0.<first_ip> and up;
    everything is removed afterwards.
    """
    owned = directory is None
    base = directory or tempfile.mkdtemp(prefix="vmqtw-nemesis-")
    cluster = Cluster(os.path.join(base, scenario.name), size=size, settings=scenario.settings,
                      first_ip=first_ip)
    workload: Optional[Workload] = None
    try:
        log("%s: starting %d nodes" % (scenario.name, size))
        cluster.start()
        workload = Workload(cluster.nodes, prefix="nemesis/" + scenario.name,
                            rate=timings.rate, subscribers_per_node=timings.subscribers_per_node)
        workload.connect()
        if scenario.load:
            workload.subscribe()
            workload.wait_routed()
        ctx = Context(cluster, workload, timings, log, target=size - 1)
        began = time.monotonic()
        if scenario.load:
            workload.start()
        try:
            scenario.nemesis(ctx)
        finally:
            workload.stop_load()
            restore(cluster)
        drained = workload.drain()
        duration = time.monotonic() - began
        publishers, subscribers = workload.histories()
        sessions_lost = sum(c.sessions_lost for c in [*workload.publishers, *workload.subscribers])
        return Outcome(scenario.name, check(publishers, subscribers), duration, drained,
                       sessions_lost, cluster.queue_drops())
    finally:
        if workload is not None:
            workload.stop()
        cluster.close()
        if owned:
            _remove(base)


def restore(cluster: Cluster) -> None:
    """Heal, resume and restart whatever a nemesis left broken (not the nodes that left); wait
    for health."""
    cluster.heal()
    for i in sorted(cluster.paused):
        cluster.resume(i)
    for i, node in enumerate(cluster.nodes):
        if node.process is None and i not in cluster.gone:
            cluster.restart(i)
    cluster.wait_healthy(60)


def _remove(path: str) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def table(outcomes: List[Outcome]) -> str:
    """One row per scenario: the counts of the issue's table."""
    head = ("scenario", "acked", "expected", "delivered", "lost", "lost msgs",
            "dup w/o DUP", "(after resend)", "out of order", "(after resend)", "unexpected", "drained",
            "sessions lost", "queue drops", "seconds")
    rows = [head] + [(o.scenario, str(o.report.acknowledged), str(o.report.expected),
                      str(o.report.delivered), str(o.report.lost), str(o.report.lost_messages),
                      str(o.report.dup_without_dup), str(o.report.dup_after_resend),
                      str(o.report.out_of_order), str(o.report.out_of_order_after_resend),
                      str(o.report.unexpected),
                      "yes" if o.drained else "NO", str(o.sessions_lost), str(o.queue_drops),
                      "%.1f" % o.duration) for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [line]
    for n, row in enumerate(rows):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if n == 0:
            out.append(line)
    out.append(line)
    return "\n".join(out)
