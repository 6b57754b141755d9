"""Before anything changes: the request checked, what the run acts on resolved."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import SecretStr

from dr.config import (
    DockerService,
    DRConfig,
    KubernetesService,
    Mode,
    PostgresNode,
    Target,
)
from dr.config_state import FileSource
from dr.errors import (
    ConfigError,
    DRError,
    PostgresError,
    UnsafeTargetError,
    register_secret,
)
from flows.breach_response.options import (
    DEFAULT_USER_ENV,
    BreachOptions,
    DatabaseCredential,
    files_to_restore,
)
from flows.breach_response.systems import Systems
from tasks.containers import inspection as containers_inspection
from tasks.postgres import admin as postgres_admin
from tasks.postgres import client as postgres_client
from tasks.postgres import hba

APPLICATION_NAME = "dr-breach-response"


def deadlines_from(target: Target, detected_at: datetime) -> list[dict[str, Any]]:
    """The regulatory deadlines of a target as absolute UTC times from the detection.

    Args:
        target: its ``regulatory_deadlines`` (default: GDPR notification, 72 h).
        detected_at: when the breach was detected.

    Returns:
        ``[{"name", "hours", "due_at"}]`` in config order, ``due_at`` ISO 8601 UTC.
    """
    start = detected_at.astimezone(UTC)
    return [
        {
            "name": d.name,
            "hours": d.hours,
            "due_at": (start + timedelta(hours=d.hours)).isoformat(timespec="seconds"),
        }
        for d in target.regulatory_deadlines
    ]


def select_services(
    target: Target, names: Sequence[str] | None
) -> list[DockerService | KubernetesService]:
    """The target's services to isolate: all of them, or those named.

    A Kubernetes service may be named ``namespace/deployment`` or by its deployment alone.

    Raises:
        ConfigError: a name is not a service of the target (the known ones are listed).
    """
    if names is None:
        return list(target.services)
    chosen: list[DockerService | KubernetesService] = []
    unknown: list[str] = []
    for name in names:
        match = [
            s
            for s in target.services
            if s.name == name or (isinstance(s, KubernetesService) and s.deployment == name)
        ]
        if not match:
            unknown.append(name)
        for s in match:
            if s not in chosen:
                chosen.append(s)
    if unknown:
        known = ", ".join(s.name for s in target.services) or "none"
        raise ConfigError(
            f"unknown service(s) {', '.join(unknown)} (the target's services: {known})",
            [
                ("options.services", f"{n}: not a service of the target (known: {known})")
                for n in unknown
            ],
        )
    return chosen


@dataclass
class Credential:
    """A database credential to rotate, as resolved before anything changes."""

    role: str
    spec: DatabaseCredential
    containers: list[str]
    old: SecretStr | None = None


@dataclass
class Preflight:
    """Everything checked and resolved before the run may change anything."""

    config: DRConfig
    target_name: str
    target: Target
    services: list[DockerService | KubernetesService]
    compromised_roles: list[str]
    credentials: list[Credential]
    block_cidrs: list[str]
    keep_cidrs: list[str]
    admin_password: str | None
    primary_reachable: bool
    notes: list[str] = field(default_factory=list)
    files: list[FileSource] = field(default_factory=list)


def admin_conninfo(pf: Preflight | Any, node: PostgresNode, dbname: str | None = None) -> str:
    pgc = pf.target.postgres
    return postgres_client.conninfo(
        node,
        user=pgc.user,
        dbname=dbname or pgc.maintenance_db,
        password=pf.admin_password,
        connect_timeout_seconds=pgc.connect_timeout_seconds,
        application_name=APPLICATION_NAME,
    )


def _container_envs(
    systems: Systems, services: Sequence[DockerService | KubernetesService]
) -> dict[str, dict[str, str]]:
    """container name -> its environment (in memory only: it holds passwords)."""
    envs: dict[str, dict[str, str]] = {}
    for svc in services:
        if isinstance(svc, DockerService):
            for state in containers_inspection.find_containers_task(systems.docker, name=svc.name):
                envs[state.name] = dict(state.env)
    return envs


def _users_of(
    envs: dict[str, dict[str, str]], spec: DatabaseCredential
) -> tuple[list[str], SecretStr | None]:
    """The containers whose user variable names the role, and the password they hold."""
    names: list[str] = []
    old: SecretStr | None = None
    for name, env in envs.items():
        if env.get(spec.user_env) != spec.role:
            continue
        names.append(name)
        password = env.get(spec.password_env)
        if password and old is None:
            register_secret(password)
            old = SecretStr(password)
    return names, old


def preflight(
    config: DRConfig, target_name: str, mode: Mode, opts: BreachOptions, systems: Systems
) -> Preflight:
    """Check the request before anything changes; resolve what the run will act on.

    Args:
        config: the loaded config.
        target_name: the target.
        mode: the run's mode (drills may derive the leaked credentials themselves).
        opts: the options.
        systems: clients (only read here).

    Returns:
        The resolved :class:`Preflight`.

    Raises:
        ConfigError: unknown target, service or role; invalid networks; no evidence
            repository; every problem is listed.
        UnsafeTargetError: a drill on a target that does not allow drills.
    """
    target = config.target(target_name)
    if mode == Mode.drill and not target.drills_allowed:
        kind = "a production target" if target.production else "this target"
        raise UnsafeTargetError(
            f"drill refused: {kind} {target_name!r} does not allow drills;"
            f" set targets.{target_name}.drills_allowed: true to rehearse on it"
        )
    problems: list[tuple[str, str]] = []
    services: list[DockerService | KubernetesService] = []
    try:
        services = select_services(target, opts.services)
    except ConfigError as exc:
        problems.extend(exc.problems)
    block, keep = _networks(mode, opts, problems)
    problems += _request_problems(target_name, target, mode, opts)
    creds, env_problem = _credentials(systems, target, services, mode, opts, problems)
    pgc = target.postgres
    if any(isinstance(s, DockerService) for s in services):
        with contextlib.suppress(DRError):
            systems.docker  # noqa: B018 - warm the client now, not on the containment clock
    admin = pgc.password.resolve() if pgc.password else None
    pf = Preflight(
        config=config,
        target_name=target_name,
        target=target,
        services=services,
        compromised_roles=list(dict.fromkeys(opts.compromised_roles)),
        credentials=creds,
        block_cidrs=block,
        keep_cidrs=keep,
        admin_password=admin,
        primary_reachable=False,
        notes=[env_problem] if env_problem else [],
        files=files_to_restore(opts, target, mode),
    )
    _check_roles(pf, problems)
    if problems:
        listed = "; ".join(f"{where}: {why}" for where, why in problems)
        raise ConfigError(f"breach response on {target_name}, nothing changed: {listed}", problems)
    return pf


def _networks(
    mode: Mode, opts: BreachOptions, problems: list[tuple[str, str]]
) -> tuple[list[str], list[str]]:
    """The networks to block (drills: the drill's) and to keep, normalized."""
    block = list(opts.block_cidrs)
    if mode == Mode.drill and not block:
        block = list(opts.drill_block_cidrs)
    try:
        block = hba.normalize_cidrs(block)
        keep = hba.normalize_cidrs(opts.keep_cidrs)
    except ConfigError as exc:
        problems.extend(exc.problems)
        keep = []
    return block, keep


def _request_problems(
    target_name: str, target: Target, mode: Mode, opts: BreachOptions
) -> list[tuple[str, str]]:
    """What the options ask that the target cannot do (evidence, restore, own role)."""
    problems: list[tuple[str, str]] = []
    if target.evidence_repository is None and opts.evidence_required:
        problems.append(
            (
                f"targets.{target_name}.evidence_repository",
                "not set: a breach response writes its evidence there (or set the option "
                "evidence_required=false)",
            )
        )
    files = files_to_restore(opts, target, mode)
    if opts.restore_to is not None and not opts.restore_tables and not files:
        problems.append(
            (
                "options.restore_tables",
                "restore_to needs the tables to restore (schema.table) or S3 files to restore",
            )
        )
    if opts.restore_to is not None and opts.restore_to.tzinfo is None:
        problems.append(("options.restore_to", "give a time zone (e.g. +00:00)"))
    if opts.restore_tables:
        if opts.restore_to is None and mode != Mode.drill:
            problems.append(("options.restore_to", "restore_tables needs a moment to restore to"))
        if target.backup.wal_archive is None:
            problems.append(
                (f"targets.{target_name}.backup.wal_archive", "not set: no point-in-time recovery")
            )
    problems += _files_problems(target_name, target, mode, opts)
    user = target.postgres.user
    if user in opts.compromised_roles:
        problems.append(("options.compromised_roles", f"{user} is the role this run acts with"))
    return problems


def _files_problems(
    target_name: str, target: Target, mode: Mode, opts: BreachOptions
) -> list[tuple[str, str]]:
    """``restore_files`` and the ``object-survives`` twin against the target's files."""
    problems: list[tuple[str, str]] = []
    if opts.restore_files and not any(f.s3 is not None for f in target.files):
        problems.append(
            (
                f"targets.{target_name}.files",
                "restore_files: no S3 files: entry (only S3 prefixes have versions to restore)",
            )
        )
    if opts.restore_files and opts.restore_to is None and mode != Mode.drill:
        problems.append(("options.restore_to", "restore_files needs a moment to restore to"))
    if opts.inject == "object-survives" and not files_to_restore(opts, target, mode):
        problems.append(
            ("options.inject", "object-survives needs S3 files to restore (restore_files)")
        )
    return problems


def _credentials(
    systems: Systems,
    target: Target,
    services: list[DockerService | KubernetesService],
    mode: Mode,
    opts: BreachOptions,
    problems: list[tuple[str, str]],
) -> tuple[list[Credential], str]:
    """The database credentials to rotate, with the containers using them and the old value.

    Returns:
        The credentials, and a note when an incident could not inspect the containers.
    """
    rotate_app = opts.rotate_app_credentials
    if rotate_app is None:
        rotate_app = mode == Mode.drill and not opts.credentials
    envs: dict[str, dict[str, str]] = {}
    env_problem = ""
    if rotate_app or opts.credentials:
        try:
            envs = _container_envs(systems, target.services)
        except DRError as exc:
            if mode == Mode.drill:
                problems.append(("services", f"cannot read the containers' environment: {exc}"))
            else:  # an incident goes on: the roles are rotated, the containers by hand
                env_problem = f"containers not inspected ({exc}): repoint them by hand"
    known = {s.name for s in target.services if isinstance(s, DockerService)}
    creds: list[Credential] = []
    for spec in opts.credentials:
        names, old = _users_of(envs, spec)
        chosen = names if spec.containers is None else list(spec.containers)
        for name in chosen:
            if name not in known:
                problems.append(
                    (f"options.credentials.{spec.role}.containers", f"{name}: not a service")
                )
        if spec.containers is not None:
            _, old = _users_of({n: envs.get(n, {}) for n in chosen}, spec)
        creds.append(Credential(spec.role, spec, chosen, old))
    if rotate_app:
        chosen_envs = {
            n: e for n, e in envs.items() if any(s.name == n for s in services or target.services)
        }
        roles = dict.fromkeys(
            e[DEFAULT_USER_ENV] for e in chosen_envs.values() if e.get(DEFAULT_USER_ENV)
        )
        for role in roles:
            if role not in {c.role for c in creds}:
                spec = DatabaseCredential(role=role)
                names, old = _users_of(chosen_envs, spec)
                creds.append(Credential(role, spec, names, old))
    return creds, env_problem


def _check_roles(pf: Preflight, problems: list[tuple[str, str]]) -> None:
    """Every role named exists on the primary (noted, not fatal, when it cannot be reached)."""
    roles = pf.compromised_roles + [c.role for c in pf.credentials]
    if not roles:
        return
    conninfo = admin_conninfo(pf, pf.target.postgres.primary)
    try:
        for role in roles:
            if not postgres_admin.role_exists_task(conninfo, role):
                problems.append((f"role {role}", "does not exist on the primary"))
        pf.primary_reachable = True
    except PostgresError as exc:
        pf.notes.append(f"roles not checked: the primary cannot be reached ({exc})")
