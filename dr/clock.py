"""Time, one way: every timestamp this project records is timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, as an aware UTC datetime (never naive: timelines compare across machines)."""
    return datetime.now(UTC)
