"""Crash consistency: the fixes' tests and the kill harness (see docs/reliability.md)."""
