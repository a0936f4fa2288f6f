"""Benchmarks and load tests of pcb-inspect (run from the repository root)."""
