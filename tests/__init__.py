"""Test package. Imported by pytest and by every spawned test rank (tests/distributed.py)."""
