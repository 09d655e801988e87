"""``python -m tests.nemesis``: the long form; see the package docstring."""
from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import List, Optional

import attrs

from tests.nemesis.scenarios import LONG, NORMAL, SCENARIOS, Outcome, run, table


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.nemesis", description=__doc__)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="run only this scenario (repeatable); default: all")
    parser.add_argument("--long", action="store_true", help="more cycles, longer faults")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--rate", type=float, help="messages per second per publisher")
    parser.add_argument("--cycles", type=int, help="cut scenarios: number of cuts")
    parser.add_argument("--on", type=float, help="cut scenarios: seconds cut")
    parser.add_argument("--off", type=float, help="cut scenarios: seconds healed")
    parser.add_argument("--rounds", type=int, help="subscribe-publish: rounds")
    parser.add_argument("--moves", type=int, help="session-moves: moves of the subscriber")
    parser.add_argument("--races", type=int, help="registration-races: rounds")
    parser.add_argument("--parked", type=int, help="leave-k: offline sessions on the leaving node")
    parser.add_argument("--keep", metavar="DIR",
                        help="run in DIR and keep it (node logs, data) for a post-mortem")
    args = parser.parse_args(argv)
    timings = LONG if args.long else NORMAL
    overrides = {k: getattr(args, k) for k in ("rate", "cycles", "on", "off", "rounds",
                                                  "moves", "races", "parked")
                 if getattr(args, k) is not None}
    timings = attrs.evolve(timings, **overrides)
    # SIGTERM unwinds like Ctrl-C, so every node and nft rule is removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    start = time.monotonic()

    def log(line: str) -> None:
        print("[%6.1fs] %s" % (time.monotonic() - start, line), file=sys.stderr, flush=True)

    outcomes: List[Outcome] = []
    for name in args.scenario or list(SCENARIOS):
        outcome = run(SCENARIOS[name], timings, directory=args.keep, size=args.nodes, log=log)
        outcomes.append(outcome)
        print("\n%s: %s" % (name, SCENARIOS[name].doc))
        print(table([outcome]), flush=True)
        for kind, examples in sorted(outcome.report.examples.items()):
            print("  e.g. %s: %s" % (kind, "; ".join(examples)))
    print("\nall scenarios (%s):" % (timings,))
    print(table(outcomes))
    return 0 if all(o.report.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
