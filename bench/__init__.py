"""Benchmarks: each module prints its figures when run with python -m bench.NAME."""
