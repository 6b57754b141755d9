"""Compatibility facade (removed when the layout lands): the code is in cli/runs.py."""

from cli.runs import parse_options, register  # noqa: F401
