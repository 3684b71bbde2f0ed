"""Benchmarks that are not part of the test suite (run them by hand; see docs/RELIABILITY.md)."""
