"""Simulated network parts on loopback: for tests and the demo."""
