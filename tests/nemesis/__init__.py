"""
A Jepsen-style nemesis suite for a vmqtw cluster (issue 16).

Real nodes on loopback aliases (127.0.0.100 and up), QoS 1 load from
publishers on every node to persistent subscribers on every node, faults
(network cuts with nft, kill -9 and restart, SIGSTOP/SIGCONT) and a checker
that reports what the cluster lost, duplicated without DUP, reordered or
invented.  The long form, one table per scenario (needs nft, as root)::

    .venv/bin/python -m tests.nemesis [--scenario NAME] [--long]

``--scenario`` (repeatable) is one of ``cuts``, ``cuts-allow-publish``,
``kill9``, ``pause``, ``subscribe-publish``, ``session-moves``,
``registration-races`` (issue 17); ``--rate``, ``--cycles``, ``--on``,
``--off``, ``--rounds``, ``--moves``, ``--races`` and ``--nodes`` override
the timings.
It exits 1 when any scenario broke the promise.  The short form is
``tests/test_nemesis.py``.

Modules: :mod:`.checker` (pure verdict), :mod:`.workload` (paho clients),
:mod:`.harness` (the cluster and its faults), :mod:`.network` (the one
adapter to the partition back end), :mod:`.scenarios` (the table of
scenarios and the runner).
"""
