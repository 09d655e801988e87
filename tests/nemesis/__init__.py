"""
A Jepsen-style nemesis suite for a vmqtw cluster (issue 16).

Real nodes on loopback aliases, QoS 1 load from publishers on every node to
persistent subscribers on every node, faults (network cuts, kill -9,
SIGSTOP) and a checker that reports what the cluster lost, duplicated,
reordered or invented.
"""
