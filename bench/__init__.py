"""Benchmarks for loom (not tests): see bench/README.md."""
