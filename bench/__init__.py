"""Benchmarks: each prints one JSON document and writes a PNG plot next to it (see README "Results")."""
