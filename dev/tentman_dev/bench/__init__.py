"""Benchmarks (`make bench`, `make bench-ui`, `make bench-scale`): figures, not tests."""
