"""The Redis client: the one place this project builds cache clients and classifies their errors.

A client is built from a target's ``caches:`` entry (:class:`dr.config.CacheConfig`): its URL
(which never holds a password) and a credential reference, resolved here and only here.

Errors come out as :class:`~dr.errors.CacheError`. Transient: the connection refused, reset
or timed out, the server still loading its dataset, a cluster moving slots (TRYAGAIN,
CLUSTERDOWN). Permanent: a wrong password or user, a missing ACL permission, a read-only
replica (the URL points at the wrong server), out of memory, a malformed command: retrying
any of these only repeats the answer. Retries themselves are :func:`dr.tasking.dr_task`'s,
so the client's own are switched off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.exceptions as rex
from redis.backoff import NoBackoff
from redis.retry import Retry

from dr.config_state import CacheConfig
from dr.errors import CacheError, register_secret

#: How long to wait for the TCP connection, apart from each command's socket timeout.
CONNECT_TIMEOUT_SECONDS = 3.0

_PERMANENT = (
    rex.AuthenticationError,
    rex.AuthorizationError,
    rex.NoPermissionError,
    rex.ReadOnlyError,
    rex.OutOfMemoryError,
    rex.DataError,
)
_TRANSIENT = (
    rex.BusyLoadingError,
    rex.TryAgainError,
    rex.ClusterDownError,
    rex.ConnectionError,
    rex.TimeoutError,
    ConnectionError,
    TimeoutError,
)
# A wrong password given to a server without one, or to an ACL user, answers this way.
_AUTH_REPLIES = ("WRONGPASS", "NOAUTH", "NOPERM", "invalid password", "invalid username")


def describe_url(url: str) -> str:
    """The URL without any user information (``redis://host:port/db``), for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def cache_error(exc: BaseException, what: str, url: str) -> CacheError:
    """Translate a redis-py (or socket) error met doing ``what`` on ``url``."""
    where = describe_url(url)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    auth = isinstance(exc, rex.ResponseError) and any(r in str(exc) for r in _AUTH_REPLIES)
    if auth or isinstance(exc, _PERMANENT):
        return CacheError(f"{what} on {where} refused: {text}", transient=False)
    if isinstance(exc, _TRANSIENT):
        return CacheError(f"{what} on {where} failed: {text}", transient=True)
    return CacheError(f"{what} on {where} failed: {text}", transient=False)


@contextlib.contextmanager
def translated(what: str, url: str) -> Iterator[None]:
    """Run a block of Redis calls; their errors leave it as CacheError (``raise ... from``)."""
    try:
        yield
    except (rex.RedisError, OSError) as exc:
        raise cache_error(exc, what, url) from exc


def connect(cache: CacheConfig, *, ping: bool = True) -> redis.Redis:
    """Build the Redis client for one cache; with ``ping``, prove it answers.

    Args:
        cache: the ``caches:`` entry (URL, username, password reference, timeouts).
        ping: send PING now, so a wrong URL or password fails here and not mid-step.

    Returns:
        A ``redis.Redis`` with bytes responses (values are not assumed to be text).

    Raises:
        ConfigError: the password reference does not resolve.
        CacheError: the server did not answer or refused the credentials.
    """
    password = cache.password.resolve() if cache.password is not None else None
    register_secret(password)
    options: dict[str, Any] = {
        "socket_timeout": cache.socket_timeout_seconds,
        "socket_connect_timeout": min(CONNECT_TIMEOUT_SECONDS, cache.socket_timeout_seconds),
        "retry": Retry(NoBackoff(), 0),
        "client_name": "dr-pipelines",
    }
    if password is not None:
        options["password"] = password
    if cache.username is not None:
        options["username"] = cache.username
    client = redis.Redis.from_url(cache.url, **options)
    if ping:
        try:
            with translated("PING", cache.url):
                client.ping()
        except CacheError:
            client.close()
            raise
    return client
