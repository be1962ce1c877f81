"""Benchmarks (``mmrec bench``): catalog encoding, index choice, search overhead and HTTP load."""
