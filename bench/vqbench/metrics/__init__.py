"""Verification protocol, latency and memory metrics."""
