"""Compatibility facade (removed when the layout lands): the code is in cli/main.py."""

from cli.main import app, load_config, main, print_config_error  # noqa: F401
