"""Cross-layer consistency: does every row's object exist, with the checksum the row records?

A restore can bring a table back without the objects its rows name (or the objects without
their rows), and no PostgreSQL check sees it: an ``uploads`` row whose object is gone is a
user's file lost. The check lists both kinds of orphans; rows without their object and
checksum mismatches fail it, objects without a row are reported (after a database restore
to an earlier point they are expected, and they are never deleted here).
"""

from __future__ import annotations

import logging
from pathlib import Path

from psycopg import sql
from pydantic import BaseModel, Field

from dr.config import AWSConfig
from dr.config_state import FileLink, FileSource
from dr.tasking import dr_task
from tasks.files.client import split_s3_url
from tasks.files.sources import DirectorySource, S3Source, Source, open_source
from tasks.postgres.client import session

logger = logging.getLogger(__name__)

LIST_LIMIT = 100


class LinkCheck(BaseModel):
    """The outcome of one ``links:`` entry's check."""

    link: str
    rows: int
    objects: int
    missing_objects: list[str] = Field(default_factory=list, description="Rows without object.")
    orphan_objects: list[str] = Field(default_factory=list, description="Objects without row.")
    mismatched: list[str] = Field(default_factory=list, description="Checksum differs.")
    missing_count: int = 0
    orphan_count: int = 0
    mismatched_count: int = 0

    @property
    def passed(self) -> bool:
        return self.missing_count == 0 and self.mismatched_count == 0

    def sentence(self) -> str:
        verdict = "consistent" if self.passed else "INCONSISTENT"
        return (
            f"link {self.link}: {verdict}; {self.rows} row(s), {self.objects} object(s), "
            f"{self.missing_count} row(s) without object, {self.mismatched_count} checksum "
            f"mismatch(es), {self.orphan_count} object(s) without row"
        )


def read_link_rows(
    link: FileLink, *, conninfo: str, password: str | None = None
) -> list[tuple[str, str | None]]:
    """``(key, sha256)`` of every row with a key (identifiers quoted by psycopg)."""
    table = sql.SQL(".").join(sql.Identifier(part) for part in link.table.split("."))
    sha = sql.Identifier(link.sha256_column) if link.sha256_column else sql.NULL
    query = sql.SQL("SELECT {key}::text, {sha}::text FROM {table} WHERE {key} IS NOT NULL").format(
        key=sql.Identifier(link.key_column), sha=sha, table=table
    )
    with session(conninfo, f"link check {link.name}", password=password) as conn:
        return [(row[0], row[1]) for row in conn.execute(query)]


def source_prefix(source: FileSource) -> str:
    """The S3 prefix of an entry (``""`` for folders and tarballs): row keys may start with it."""
    return split_s3_url(source.s3)[1] if source.s3 is not None else ""


def relative_key(key: str, prefix: str) -> str:
    """A row's key relative to the entry (keys that include the S3 prefix are accepted)."""
    return key[len(prefix) :] if prefix and key.startswith(prefix) else key


def compare(
    link_name: str,
    rows: list[tuple[str, str | None]],
    src: Source,
    *,
    checksums: bool = True,
    prefix: str | None = None,
) -> LinkCheck:
    """Compare rows with the source's objects (hashing each linked object when ``checksums``).

    ``prefix``: what to strip from the rows' keys; default the S3 source's own prefix (a
    restored copy in a folder passes the prefix of the entry it was backed up from).
    """
    if prefix is None:
        prefix = src.prefix if isinstance(src, S3Source) else ""
    objects = {obj.key for obj in src.list()}
    wanted = {relative_key(key, prefix): sha for key, sha in rows}
    missing = sorted(k for k in wanted if k not in objects)
    orphans = sorted(objects - wanted.keys())
    mismatched = sorted(
        key
        for key, sha in wanted.items()
        if checksums and sha and key in objects and src.sha256(key) != sha.strip().lower()
    )
    return LinkCheck(
        link=link_name,
        rows=len(rows),
        objects=len(objects),
        missing_objects=missing[:LIST_LIMIT],
        orphan_objects=orphans[:LIST_LIMIT],
        mismatched=mismatched[:LIST_LIMIT],
        missing_count=len(missing),
        orphan_count=len(orphans),
        mismatched_count=len(mismatched),
    )


def check_links(
    link: FileLink,
    source: FileSource,
    *,
    conninfo: str,
    password: str | None = None,
    aws: AWSConfig | None = None,
    checksums: bool = True,
) -> LinkCheck:
    """Check one ``links:`` entry against its ``files:`` entry, both ways.

    Args:
        link: the ``links:`` entry (table, key column, sha256 column).
        source: the ``files:`` entry it names (the caller looks it up by ``link.files``).
        conninfo: the database holding the table (``link.database`` or the first one).
        password: its PostgreSQL password.
        aws: the ``aws`` section for S3 sources.
        checksums: hash every linked object (reads them all); off to check presence only.

    Raises:
        PostgresError: the query failed (an unknown table or column is permanent).
        StorageError: the source failed.
    """
    rows = read_link_rows(link, conninfo=conninfo, password=password)
    result = compare(link.name, rows, open_source(source, aws), checksums=checksums)
    logger.info("%s", result.sentence())
    return result


def compare_restored(
    link: FileLink,
    source: FileSource,
    rows: list[tuple[str, str | None]],
    restored_dir: str | Path,
) -> LinkCheck:
    """Rows read from a restored database backup against a restored files backup, both ways.

    Why: the live check cannot see a backup pair that would lose files. A restore brings back
    the dump's rows and the files backup's objects; a row whose object is not in the files
    backup (taken before the row's upload, or an object lost from it) is a user's file that
    no restore can bring back. ``restored_dir`` is the folder the files backup was restored
    into (keys relative to the entry); every linked object is hashed.
    """
    restored = DirectorySource(Path(restored_dir))
    result = compare(link.name, rows, restored, prefix=source_prefix(source))
    logger.info("in the backups: %s", result.sentence())
    return result


def first_linked_object(
    rows: list[tuple[str, str | None]], source: FileSource, restored_dir: str | Path
) -> str | None:
    """The first key (sorted) that a row names and the restored folder holds, else None."""
    folder = Path(restored_dir)
    prefix = source_prefix(source)
    for key in sorted(relative_key(k, prefix) for k, _ in rows):
        if key.startswith("/") or ".." in key.split("/"):
            continue
        if (folder / key).is_file():
            return key
    return None


check_links_task = dr_task(check_links, name="files-check-links", timeout_seconds=3600)
read_link_rows_task = dr_task(read_link_rows, name="files-read-link-rows", timeout_seconds=3600)
compare_restored_task = dr_task(
    compare_restored, name="files-compare-restored-links", timeout_seconds=3600
)
