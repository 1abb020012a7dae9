"""Apex's performance harness: ``apex bench`` (see benchmarks/harness.py)."""
