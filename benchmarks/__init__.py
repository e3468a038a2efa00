"""Benchmark scripts for quota-engine (see benchmarks/README.md)."""
