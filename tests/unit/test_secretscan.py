"""Base backups and evidence bundles are scanned for configured secrets (issue 14)."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from dr.config import DRConfig
from dr.errors import forget_secrets, registered_secrets
from dr.secretscan import SecretFoundError, configured_secrets, ensure_no_secrets, scan_paths

SECRET = "pw-Very-Secret-123"


def _tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_a_secret_inside_a_tar_member_is_named_by_file_and_member(tmp_path: Path) -> None:
    _tar(
        tmp_path / "base.tar",
        {
            "PG_VERSION": b"16\n",
            "postgresql.auto.conf": f"primary_conninfo = 'password={SECRET}'\n".encode(),
        },
    )
    _tar(tmp_path / "pg_wal.tar.gz", {"000000010000000000000001": b"x" * 4096}, "w:gz")
    [hit] = scan_paths([tmp_path], {"targets.lab.postgres.password": SECRET})
    assert (Path(hit.path).name, hit.member) == ("base.tar", "postgresql.auto.conf")
    with pytest.raises(SecretFoundError) as exc_info:
        ensure_no_secrets([tmp_path], "base backup 'x'", {"targets.lab.postgres.password": SECRET})
    message = str(exc_info.value)
    assert "postgresql.auto.conf holds targets.lab.postgres.password" in message
    assert SECRET not in message


def test_gzip_files_and_chunk_boundaries_are_scanned(tmp_path: Path) -> None:
    (tmp_path / "log.gz").write_bytes(gzip.compress(b"a" * ((1 << 20) - 5) + SECRET.encode()))
    (tmp_path / "clean.txt").write_text("nothing here")
    hits = scan_paths([tmp_path], {"s": SECRET})
    assert [Path(h.path).name for h in hits] == ["log.gz"]


def test_short_values_are_not_looked_for(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("abc")
    assert scan_paths([tmp_path], {"short": "abc"}) == []


def test_configured_secrets_resolves_every_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = registered_secrets()
    forget_secrets()
    try:
        monkeypatch.setenv("DR_TEST_PG_PASSWORD", SECRET)
        monkeypatch.delenv("DR_TEST_UNSET", raising=False)
        config = DRConfig.model_validate(
            {
                "targets": {
                    "t": {
                        "postgres": {
                            "primary": {"name": "pg1", "host": "127.0.0.1"},
                            "databases": ["d"],
                            "password": {"env": "DR_TEST_PG_PASSWORD"},
                        },
                        "backup": {"repository": "file:///tmp/dr-unit-backups"},
                    }
                },
                "slack": {"token": {"env": "DR_TEST_UNSET"}},
            }
        )
        assert configured_secrets(config) == {"targets.t.postgres.password": SECRET}
    finally:
        forget_secrets()
        for value in kept:
            from dr.errors import register_secret

            register_secret(value)


def test_password_verifiers_are_redacted_but_not_looked_for_on_disk() -> None:
    """pg_authid holds SCRAM/md5 verifiers by design: a base backup with them is no leak,
    while a plain password resolved by the run still is."""
    from dr.errors import register_secret

    kept = registered_secrets()
    forget_secrets()
    scram = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"
    md5 = "md5" + "0123456789abcdef" * 2
    try:
        for value in (scram, md5, "rotated-Plain-pw-1"):
            register_secret(value)
        config = DRConfig.model_validate(
            {
                "targets": {
                    "t": {
                        "postgres": {
                            "primary": {"name": "pg1", "host": "127.0.0.1"},
                            "databases": ["d"],
                        },
                        "backup": {"repository": "file:///tmp/dr-unit-backups"},
                    }
                }
            }
        )
        found = configured_secrets(config)
        assert sorted(found.values()) == ["rotated-Plain-pw-1"]
    finally:
        forget_secrets()
        for value in kept:
            register_secret(value)


def test_a_file_that_vanishes_while_scanning_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live data directory loses temp files (pg_internal.init) between listing and reading."""
    import dr.secretscan as scan

    (tmp_path / "kept").write_bytes(SECRET.encode())
    (tmp_path / "gone").write_bytes(b"x")
    real = scan._scan_file

    def vanishing(path: Path, needles: Any) -> list[Any]:
        if path.name == "gone":
            raise FileNotFoundError(path)
        return real(path, needles)

    monkeypatch.setattr(scan, "_scan_file", vanishing)
    hits = scan_paths([tmp_path], {"pw": SECRET})
    assert [(Path(h.path).name, h.secret) for h in hits] == [("kept", "pw")]
