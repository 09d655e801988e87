"""
``benchmarks/store_bench.py`` runs end to end on both stores with tiny
counts (no timed assertion: the benchmark is the measurement; this keeps
it from rotting, and its own check that every message comes back out).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_store_bench_enqueues_and_drains_both_stores(pg_dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.store_bench", "--messages", "300",
         "--subscribers", "2", "--per-turn", "50", "--dsn", pg_dsn],
        cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "leveldb (sync=off): 300 messages x 2 offline subscribers" in out
    assert "postgresql (given dsn): 300 messages x 2 offline subscribers" in out
    assert out.count("drain:") == 2
    assert "postgresql / leveldb: enqueue" in out
