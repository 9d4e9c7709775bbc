"""Test-only servers and helpers."""
