"""Find configured secrets in files before they are stored (base backups, evidence bundles).

Why before storing: a repository keeps what it is given (an ``s3://`` one uploads it, an
evidence bundle is write-once), so a password that slipped into a data directory or a log
must stop the copy here, with the file that holds it named, never the value.
"""

from __future__ import annotations

import gzip
import os
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel

from dr.config_base import SecretRef
from dr.errors import DRError, VerificationError, registered_secrets

__all__ = [
    "MIN_SECRET_CHARS",
    "SecretFoundError",
    "SecretHit",
    "configured_secrets",
    "ensure_no_secrets",
    "scan_paths",
]

#: Shorter values are not looked for: they would match by chance in binary data.
MIN_SECRET_CHARS = 6

_CHUNK = 1 << 20


class SecretFoundError(VerificationError):
    """A file about to be stored holds a configured secret (the message names the file)."""


@dataclass(frozen=True)
class SecretHit:
    """Where a secret was found: the file, the member inside an archive, the secret's name."""

    path: str
    member: str | None
    secret: str

    def describe(self) -> str:
        where = f"{self.path}:{self.member}" if self.member else self.path
        return f"{where} holds {self.secret}"


def configured_secrets(config: BaseModel) -> dict[str, str]:
    """Every secret the config refers to that resolves here, by its place in the config.

    Secrets already resolved by this process (rotated passwords included) are added too.
    A reference that does not resolve (an unset variable) cannot be on disk by our doing
    and is skipped.
    """
    found: dict[str, str] = {}
    for where, ref in _secret_refs(config, ""):
        try:
            found[where] = ref.resolve()
        except DRError:
            continue
    known = set(found.values())
    extra = sorted(v for v in registered_secrets() if v not in known and not _is_verifier(v))
    for i, value in enumerate(extra, 1):
        found[f"a secret resolved by this run (#{i})"] = value
    return found


def _is_verifier(value: str) -> bool:
    """A password verifier (SCRAM or md5), registered to keep it out of logs: PostgreSQL
    stores it in ``pg_authid`` by design, so a base backup holding it is not a leak."""
    if value.startswith("SCRAM-SHA-256$"):
        return True
    digest = value.removeprefix("md5")
    return (
        value.startswith("md5")
        and len(digest) == 32
        and all(c in "0123456789abcdef" for c in digest)
    )


def _secret_refs(value: Any, where: str) -> Iterator[tuple[str, SecretRef]]:
    if isinstance(value, SecretRef):
        yield where or "secret", value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secret_refs(getattr(value, name), f"{where}.{name}".lstrip("."))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _secret_refs(item, f"{where}.{key}".lstrip("."))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _secret_refs(item, f"{where}.{i}")


def _needles(secrets: Mapping[str, str]) -> dict[bytes, str]:
    return {
        value.encode(): name for name, value in secrets.items() if len(value) >= MIN_SECRET_CHARS
    }


def _scan_stream(stream: IO[bytes], needles: Mapping[bytes, str]) -> set[str]:
    """Names of the secrets in a byte stream, read in chunks that overlap by a secret's length."""
    keep = max((len(n) for n in needles), default=1) - 1
    found: set[str] = set()
    tail = b""
    while chunk := stream.read(_CHUNK):
        window = tail + chunk
        found.update(name for needle, name in needles.items() if needle in window)
        tail = window[-keep:] if keep else b""
    return found


def _scan_file(path: Path, needles: Mapping[bytes, str]) -> list[SecretHit]:
    if tarfile.is_tarfile(path):
        return _scan_tar(path, needles)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            names = _scan_stream(stream, needles)
    except (OSError, EOFError):  # not really gzip: scan the raw bytes
        with open(path, "rb") as stream:
            names = _scan_stream(stream, needles)
    return [SecretHit(str(path), None, name) for name in sorted(names)]


def _scan_tar(path: Path, needles: Mapping[bytes, str]) -> list[SecretHit]:
    hits: list[SecretHit] = []
    with tarfile.open(path, "r:*") as archive:
        for member in archive:
            if not member.isfile():
                continue
            stream = archive.extractfile(member)
            if stream is None:
                continue
            with stream:
                names = _scan_stream(stream, needles)
            hits.extend(SecretHit(str(path), member.name, name) for name in sorted(names))
    return hits


def _files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
        elif path.is_file():
            yield path


def scan_paths(
    paths: Iterable[str | os.PathLike[str]], secrets: Mapping[str, str]
) -> list[SecretHit]:
    """Every place a secret appears in these files and folders (tar and gzip read inside)."""
    needles = _needles(secrets)
    if not needles:
        return []
    hits: list[SecretHit] = []
    for path in _files(paths):
        try:
            hits.extend(_scan_file(path, needles))
        except FileNotFoundError:
            continue  # removed since it was listed (a live server's temp file): nothing to store
    return hits


def ensure_no_secrets(
    paths: Iterable[str | os.PathLike[str]],
    what: str,
    secrets: Mapping[str, str] | None = None,
) -> None:
    """Refuse to store ``what`` when one of its files holds a secret.

    Args:
        paths: the files and folders about to be stored.
        what: for the message ("base backup of lab").
        secrets: name → value; default: the secrets this process has resolved.

    Raises:
        SecretFoundError: naming each file (and archive member) and the secret's name.
    """
    if secrets is None:
        secrets = {
            f"a secret resolved by this run (#{i})": v
            for i, v in enumerate(sorted(registered_secrets()), 1)
        }
    hits = scan_paths(paths, secrets)
    if hits:
        listed = "; ".join(h.describe() for h in hits[:10])
        more = f" (and {len(hits) - 10} more)" if len(hits) > 10 else ""
        raise SecretFoundError(
            f"{what} not stored: a configured secret is in it in plain text: {listed}{more}."
            " Remove it from there (e.g. a password in postgresql.auto.conf: use a passfile)"
        )
