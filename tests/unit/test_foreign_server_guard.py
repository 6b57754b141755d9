"""The session guard in tests/conftest.py: the machine's own servers are out of reach."""

from __future__ import annotations

import asyncio
import socket

import psycopg
import pytest

from tests.conftest import ForeignServerConnection


@pytest.mark.parametrize("port", [5432, 6379])
def test_python_sockets_to_the_machines_servers_fail_loudly(port: int) -> None:
    with pytest.raises(ForeignServerConnection, match=str(port)):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    with socket.socket() as sock, pytest.raises(ForeignServerConnection):
        sock.connect_ex(("localhost", port))


def test_asyncio_connections_fail_loudly() -> None:
    async def connect() -> None:
        await asyncio.open_connection("127.0.0.1", 6379)

    with pytest.raises(ForeignServerConnection):
        asyncio.run(connect())


@pytest.mark.parametrize(
    ("conninfo", "kwargs"),
    [
        ("host=127.0.0.1 port=5432 dbname=postgres", {}),
        ("postgresql://postgres@localhost/postgres", {}),  # libpq's default port
        ("", {"host": "127.0.0.1", "port": 5432, "autocommit": True}),
        ("host=127.0.0.1,127.0.0.1 port=1,5432", {}),
    ],
)
def test_libpq_connections_to_5432_fail_loudly(conninfo: str, kwargs: dict) -> None:
    with pytest.raises(ForeignServerConnection):
        psycopg.connect(conninfo, **kwargs)


def test_libpq_without_a_host_cannot_fall_back_to_the_machines_socket() -> None:
    with pytest.raises(psycopg.OperationalError, match="nonexistent-dr-tests"):
        psycopg.connect("dbname=postgres port=1 connect_timeout=1")


def test_other_ports_are_untouched() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
