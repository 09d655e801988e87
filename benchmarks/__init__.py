"""Load generators and micro-benchmarks (measurements, not tests)."""
