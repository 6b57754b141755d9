"""Prefect's Secret blocks: the one place this package talks to the Prefect API.

Prefect is imported lazily (it is slow to import and the file functions do not need it).
Errors are not translated: Prefect's own exceptions reach the task, where
:func:`dr.errors.is_transient` retries connection and timeout errors only.
"""

from __future__ import annotations

from collections.abc import Iterator

#: Block documents read per page when searching for a leaked value.
PAGE_SIZE = 200


def load_secret_block(name: str) -> str | None:
    """The value of the Prefect Secret block ``name``, or None when no such block exists."""
    from prefect.blocks.system import Secret

    try:
        return str(Secret.load(name).get())  # type: ignore[union-attr]
    except ValueError:
        return None


def save_secret_block(name: str, value: str) -> None:
    """Store ``value`` in the Prefect Secret block ``name``, creating or overwriting it."""
    from prefect.blocks.system import Secret

    Secret(value=value).save(name, overwrite=True)


def named_secret_blocks() -> Iterator[tuple[str, str]]:
    """Every named (not anonymous) Secret block as ``(name, value)``, page by page."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            docs = client.read_block_documents_by_type(
                "secret", offset=offset, limit=PAGE_SIZE, include_secrets=True
            )
            for doc in docs:
                value = (doc.data or {}).get("value")
                if hasattr(value, "get_secret_value"):
                    value = value.get_secret_value()
                if doc.name and not doc.is_anonymous:
                    yield doc.name, str(value)
            if len(docs) < PAGE_SIZE:
                break
            offset += PAGE_SIZE
