"""
Randomised but seeded fault schedules: whatever mix of writes, deletes,
partitions, message loss and delays happens, once the network heals every
node converges to the same data (equal Merkle roots, equal visible items,
equal routing tables built from events) with nothing left outstanding.
"""
from __future__ import annotations

import random

import pytest

from vmqtw.testing.simulation import SimCluster

P = ("vmq", "subscriber")


@pytest.mark.parametrize("seed", range(int(__import__("os").environ.get("MD_SEEDS", 12))))
def test_random_faults_converge(seed):
    rng = random.Random(seed)
    names = ["A", "B", "C", "D"][:rng.choice((3, 4))]
    c = SimCluster(names, seed=seed, exchange_tick=5.0, aae_timeout=5.0,
                   gc_interval=rng.choice((None, 4.0)), gc_grace=8.0)
    tables = {}
    for name, node in c.nodes.items():
        table = tables[name] = {}

        def on_event(prefix, key, old, new, origin, table=table):
            if new is None:
                table.pop(key, None)
            else:
                table[key] = new
        node.store.subscribe(P, on_event)
    undo = []
    for step in range(300):
        r = rng.random()
        node = c[rng.choice(names)].store
        key = ("", "c%d" % rng.randrange(25))
        if r < 0.45:
            node.put(P, key, (node.node, step))
        elif r < 0.65:
            node.delete(P, key)
        elif r < 0.68:
            cut = set(rng.sample(names, rng.randrange(1, len(names))))
            c.network.partition([cut, set(names) - cut])
        elif r < 0.72:
            c.network.heal()
        elif r < 0.75:
            loss = rng.random() * 0.5
            undo.append(c.network.drop(
                lambda s, d, ch, m, loss=loss: rng.random() < loss))
        elif r < 0.78 and undo:
            undo.pop()()
        elif r < 0.80:
            a, b = rng.sample(names, 2)
            c.network.set_delay(a, b, rng.choice((0.0, 0.05, 0.5)))
        else:
            c.clock.advance(rng.choice((0.0, 0.1, 0.5, 1.0)))
    while undo:
        undo.pop()()
    c.network.heal()
    c.advance(30.0, step=0.5)
    for s in c.stores():
        for key in list(dict(s.items(P))):
            s.get(P, key)
    c.advance(10.0, step=0.5)
    assert c.agree(), seed
    items = [sorted(s.items(P)) for s in c.stores()]
    assert all(i == items[0] for i in items)
    for name in names:
        assert sorted(tables[name].items()) == items[0], name
    assert all(n.broadcast.outstanding_count() == 0
               for n in c.nodes.values())
    c.close()


@pytest.mark.parametrize("seed", range(int(__import__("os").environ.get(
    "MD_SEEDS", 12)) // 3))
def test_random_crashes_restarts_and_wipes_converge(seed, tmp_path):
    """Nodes crash and restart from LevelDB (or wiped, with a new actor)
    while writes go on; after everyone is back all agree."""
    import shutil
    rng = random.Random(1000 + seed)
    names = ["A", "B", "C"]
    c = SimCluster(names, seed=seed, exchange_tick=5.0, aae_timeout=5.0,
                   gc_interval=rng.choice((None, 4.0)), gc_grace=8.0,
                   data_root=str(tmp_path))
    try:
        for step in range(300):
            r = rng.random()
            up = [n for n in names if c[n].running]
            node = c[rng.choice(up)].store
            key = ("", "c%d" % rng.randrange(20))
            if r < 0.5:
                node.put(P, key, (node.node, step))
            elif r < 0.7:
                node.delete(P, key)
            elif r < 0.73 and len(up) > 1:
                c[rng.choice(up)].crash()
            elif r < 0.78:
                down = [n for n in names if not c[n].running]
                if down:
                    name = rng.choice(down)
                    if rng.random() < 0.3:
                        shutil.rmtree(str(tmp_path / name))
                    c[name].restart()
            else:
                c.clock.advance(rng.choice((0.0, 0.1, 0.5, 1.0)))
        for name in names:
            if not c[name].running:
                c[name].restart()
        c.advance(30.0, step=0.5)
        for s in c.stores():
            for key in list(dict(s.items(P))):
                s.get(P, key)
        c.advance(10.0, step=0.5)
        assert c.agree(), seed
        items = [sorted(s.items(P)) for s in c.stores()]
        assert all(i == items[0] for i in items)
    finally:
        c.close()


@pytest.mark.parametrize("seed", range(int(__import__("os").environ.get(
    "MD_SEEDS", 12)) // 3))
def test_random_joins_and_leaves_converge(seed):
    """Nodes join and are made to leave at random while writes go on;
    once everyone has joined again, membership and data agree."""
    rng = random.Random(2000 + seed)
    names = ["A", "B", "C", "D"]
    c = SimCluster(names, seed=seed, membership=True, exchange_tick=5.0,
                   aae_timeout=5.0, gossip_interval=3.0,
                   gc_interval=rng.choice((None, 4.0)), gc_grace=8.0)
    try:
        for step in range(200):
            r = rng.random()
            name = rng.choice(names)
            peers = c[name].peers
            if r < 0.5:
                c[name].store.put(P, ("", "c%d" % rng.randrange(20)),
                                  (name, step))
            elif r < 0.6:
                c[name].store.delete(P, ("", "c%d" % rng.randrange(20)))
            elif r < 0.68:
                seed_node = rng.choice([n for n in names if n != name])
                c.join(name, seed_node).addErrback(lambda f: None)
            elif r < 0.72:
                others = sorted(peers.members() - {name})
                if others:
                    peers.leave(rng.choice(others))
            else:
                c.clock.advance(rng.choice((0.0, 0.1, 0.5, 1.0)))
        c.advance(10.0)
        for name in names[1:]:
            c.join(name, "A").addErrback(lambda f: None)
            c.advance(1.0)
        c.advance(30.0, step=0.5)
        for s in c.stores():
            for key in list(dict(s.items(P))):
                s.get(P, key)
        c.advance(10.0, step=0.5)
        members = {frozenset(c[n].peers.members()) for n in names}
        assert members == {frozenset(names)}, seed
        assert c.agree(), seed
    finally:
        c.close()
