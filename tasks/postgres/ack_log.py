"""The application's acknowledgement log: every write whose COMMIT returned, outside the DB.

``lab/heartbeat_app.py`` appends one JSON line per acknowledged write when
``HEARTBEAT_ACK_LOG`` is set; drills count the application's lost writes from it.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from dr.errors import ConfigError
from tasks.postgres.heartbeat import Ack

__all__ = ["read_ack_log"]


def read_ack_log(path: str | Path) -> list[Ack]:
    """The application's acknowledgement log (``lab/heartbeat_app.py``), oldest first.

    Each line is ``{"seq": n, "ts": "<server ts>"}`` for a write whose COMMIT returned; the
    file lives outside the database, so it survives the failover it measures.

    Raises:
        ConfigError: the file cannot be read.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"application acknowledgement log {path}: {exc}") from exc
    acks: list[Ack] = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
            ts = datetime.fromisoformat(row["ts"])
            acks.append(Ack(int(row["seq"]), ts, str(row.get("server", "")), ts))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a crash mid-write, or an event line
    return acks
