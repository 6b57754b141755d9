"""Compatibility facade (removed when the layout lands): the code is in cli/alerts.py."""

from cli.alerts import main, register  # noqa: F401

if __name__ == "__main__":
    main()
