"""Compatibility facade (removed when the layout lands): the code is in cli/evidence.py."""

from cli.evidence import register, verify_url  # noqa: F401
