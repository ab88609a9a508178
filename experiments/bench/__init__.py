"""Benchmarks (not tests): each script times implementations side by side and writes a
markdown table under ``benchmarks/``."""
