"""Benchmarks behind ``qflare bench``: each measures against a baseline taken in the same run."""
