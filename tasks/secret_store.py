"""Compatibility facade (removed when the layout lands): now in :mod:`tasks.secrets`."""

from tasks.secrets.files import read_secret_file, write_secret_file, write_secret_file_task
from tasks.secrets.prefect_blocks import (
    find_prefect_secrets_holding,
    read_prefect_secret,
    write_prefect_secret,
    write_prefect_secret_task,
)

__all__ = [
    "find_prefect_secrets_holding",
    "read_prefect_secret",
    "read_secret_file",
    "write_prefect_secret",
    "write_prefect_secret_task",
    "write_secret_file",
    "write_secret_file_task",
]
