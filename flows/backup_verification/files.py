"""Files backups verified next to the databases, and the links between rows and objects.

Each ``files:`` entry's newest backup is restored into a scratch folder and every checksum
and count checked (one parallel branch each); then every ``links:`` entry is checked twice:
in the backups (the restored scratch database's rows against the restored files backup,
:mod:`flows.backup_verification.links`) and on the live primary. The red twin ``--inject
bad-object`` works on a copy, like ``bad-backup``: a fresh backup of the first entry under a
drill id (sorted before every real one), one object's bytes changed, verified (it must
fail), then deleted; ``--inject missing-object`` removes one linked object from the
restored copy only. The real backups are never written, and a drill with a files twin marks
no files backup verified.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dr.config_state import FileSource
from dr.errors import DRError
from flows.backup_verification.links import check_links_in_backups, require_links
from flows.backup_verification.models import DatabaseVerification, Injection
from flows.common.backups import open_target_repository
from flows.common.branches import Branches
from flows.common.state import check_target_links, files_repository
from flows.common.systems import node_conninfo
from flows.lifecycle import RunContext
from tasks.files.backup import backup_files_task
from tasks.files.manifest import backup_prefix
from tasks.files.verify import (
    inject_bad_object_task,
    mark_files_verified_task,
    verify_files_backup_task,
)
from tasks.storage import operations as storage_operations

__all__ = ["FILES_INJECTIONS", "FilesBranches", "drill_backup_id"]

#: The twins that work on files backups (here), not on a database backup's copy.
FILES_INJECTIONS = (Injection.bad_object, Injection.missing_object)


def drill_backup_id(short_id: str) -> str:
    """The red twin's copy: shaped like a backup id, older than any real one."""
    return f"00000000T000000Z-drill-{short_id}"


class FilesBranches:
    """The files verifications of one drill: submitted with the databases, collected after."""

    def __init__(self, ctx: RunContext, short_id: str, inject: Injection | None) -> None:
        self.ctx = ctx
        self.short_id = short_id
        self.sources = list(ctx.target.files)
        self.bad: FileSource | None = (
            self.sources[0] if inject is Injection.bad_object and self.sources else None
        )
        self.leave_out = inject is Injection.missing_object
        if self.leave_out:
            require_links(ctx.target)
        self.injected = inject in FILES_INJECTIONS
        self.scratch = Path(tempfile.mkdtemp(prefix=f"dr-verify-files-{short_id}-"))
        self.branches = Branches()

    def _prepare_bad_copy(self, source: FileSource) -> str:
        """A fresh backup copy with one object's bytes changed; returns its id."""
        repo_url, aws = files_repository(self.ctx, source), self.ctx.config.aws
        backup_id = drill_backup_id(self.short_id)
        backup_files_task(source, repo_url, backup_id=backup_id, aws=aws)
        key = inject_bad_object_task(source, repo_url, backup_id=backup_id, aws=aws)
        self.ctx.note(f"injected bad-object: {key} of files {source.name} (copy {backup_id})")
        self.ctx.details["injected_object"] = {"files": source.name, "key": key}
        return backup_id

    def submit(self) -> None:
        """One branch per ``files:`` entry (the injected one on its damaged copy)."""
        bad_id = self._prepare_bad_copy(self.bad) if self.bad is not None else None
        for source in self.sources:
            self.branches.submit(
                f"files-{source.name}",
                verify_files_backup_task,
                source,
                files_repository(self.ctx, source),
                self.scratch / source.name,
                backup_id=bad_id if source is self.bad else None,
                aws=self.ctx.config.aws,
                mark=False,
            )

    def collect(
        self, databases: list[DatabaseVerification] | None = None, *, mark: bool
    ) -> list[dict[str, Any]]:
        """Record each verification as a check; then the links; then clean up.

        ``databases``: the database branches' results, whose restored rows the links are
        checked against. ``mark``: the databases' verifications all passed, so the files
        backups that passed are marked verified too, when the links in the backups are
        consistent (a red, refused or injected drill writes nothing to the real backups).
        """
        out: list[dict[str, Any]] = []
        try:
            ran = self._record_verifications(out)
            self.ctx.details["files"] = out
            restored = {s.name: self.scratch / s.name for s in self.sources if s.name in ran}
            links_ok = check_links_in_backups(
                self.ctx, list(databases or []), restored, leave_out=self.leave_out
            )
            if mark and links_ok and not self.injected:
                for name, result in ran.items():
                    if result.passed:
                        self._mark(self._source(name), result)
            self._check_links()
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self._remove_bad_copy()
        return out

    def _record_verifications(self, out: list[dict[str, Any]]) -> dict[str, Any]:
        """One check per files entry; returns the verifications that ran, by entry name
        (their restored folders are what the links in the backups are checked against)."""
        ran: dict[str, Any] = {}
        for outcome in self.branches.collect():
            name = outcome.name.removeprefix("files-")
            if outcome.ok:
                result = outcome.value
                self.ctx.record_check(
                    f"files {name} backup restores", result.passed, detail=result.sentence()
                )
                out.append(result.model_dump(mode="json"))
                ran[name] = result
            else:
                self.ctx.record_check(f"files {name} backup restores", False, detail=outcome.detail)
                out.append({"source": name, "error": outcome.detail})
        return ran

    def _source(self, name: str) -> FileSource:
        return next(s for s in self.sources if s.name == name)

    def _mark(self, source: FileSource, result: Any) -> None:
        mark_files_verified_task(
            source,
            files_repository(self.ctx, source),
            result.backup_id,
            result.expected_count,
            aws=self.ctx.config.aws,
        )

    def _check_links(self) -> None:
        pgc = self.ctx.target.postgres
        password = pgc.password.resolve() if pgc.password else None
        check_target_links(
            self.ctx,
            lambda db: node_conninfo(pgc, pgc.primary, password, db),
            password,
            when="on the live primary",
        )

    def _remove_bad_copy(self) -> None:
        if self.bad is None:
            return
        repo = open_target_repository(self.ctx.config, files_repository(self.ctx, self.bad))
        with contextlib.suppress(DRError):
            storage_operations.delete_prefix_task(
                repo, backup_prefix(self.bad.name, drill_backup_id(self.short_id))
            )
