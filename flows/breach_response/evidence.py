"""Evidence: volatile state first, then logs, events, snapshots and dumps, stored write-once."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dr.config import DockerService, KubernetesService, PostgresNode
from dr.errors import DRError, redact
from flows.breach_response.assess import APPLICATION_NAME
from flows.breach_response.files import files_evidence_step
from flows.breach_response.state import BreachRun, iso, submit_with
from tasks.aws import security_groups, snapshots
from tasks.containers import inspection as containers_inspection
from tasks.evidence import bundle as evidence_bundle
from tasks.evidence import manifest as evidence_manifest
from tasks.evidence import verify as evidence_verify
from tasks.kubernetes import events as kubernetes_events
from tasks.pitr import relation_restore
from tasks.postgres import admin as postgres_admin
from tasks.postgres import client as postgres_client
from tasks.postgres import security as postgres_security

#: One evidence step: its label, its submitted task, and what files its result in the bundle.
EvidenceStep = tuple[str, Any, Callable[[Any], Any]]


def capture_volatile(run: BreachRun) -> None:
    """Sessions, roles and privileges, container states, group rules: before containment.

    Every read is submitted at once (they are independent), then filed in a fixed order.
    """
    bundle = run.bundle
    assert bundle is not None
    primary = run.pgc.primary
    # Not retried: a retry's backoff would delay containment (an unreachable node is noted).
    snapshot = postgres_security.session_snapshot_task.with_options(retries=0)
    list_roles = postgres_admin.list_roles_and_privileges_task.with_options(retries=0)
    find = containers_inspection.find_containers_task.with_options(retries=0)
    describe = security_groups.describe_ingress_task.with_options(retries=0)
    sessions = [(n, snapshot.submit(run.ci(n))) for n in run.pgc.nodes]
    dbs = dict.fromkeys([run.pgc.maintenance_db, *run.pgc.databases])
    roles = [(db, list_roles.submit(run.ci(primary, db))) for db in dbs]
    docker = [s.name for s in run.pf.services if isinstance(s, DockerService)]
    states = [(n, submit_with(find, lambda: run.systems.docker, name=n)) for n in docker]
    groups = dict.fromkeys([*run.opts.security_groups, *run.opts.block_cidrs_in_groups])
    rules = [(g, submit_with(describe, lambda: run.systems.aws("ec2"), g)) for g in groups]
    for node, fut in sessions:
        where = f"postgres {node.name} ({node.host}:{node.port})"
        _file_json(
            bundle, fut, f"postgres/{node.name}/sessions.json", kind="sessions", source=where,
            description="client sessions open before containment (pg_stat_activity)",
            missing=f"{node.name} sessions",
        )  # fmt: skip
    for db, fut in roles:
        _file_json(
            bundle, fut, f"postgres/{primary.name}/roles-{db}.json", kind="roles",
            source=f"postgres {primary.name} database {db}",
            description="roles, attributes, memberships and table privileges",
            missing=f"roles in {db}",
        )  # fmt: skip
    for name, fut in states:
        _file_json(
            bundle, fut, f"containers/{name}/state.json", kind="container-state",
            source=f"docker {name}",
            description="container state (environment variable names only)",
            missing=f"{name} state", missing_source=name,
            dump=lambda found: [s.model_dump(mode="json") for s in found],
        )  # fmt: skip
    for group, fut in rules:
        _file_json(
            bundle, fut, f"cloud/security-groups/{group}.json", kind="security-group",
            source=f"ec2 {group}", description="inbound rules before containment",
            missing=group, missing_source="ec2",
            dump=lambda found: [r.model_dump(mode="json") for r in found],
        )  # fmt: skip


def _file_json(
    bundle: evidence_bundle.EvidenceBundle,
    fut: Any,
    path: str,
    *,
    kind: str,
    source: str,
    description: str,
    missing: str,
    missing_source: str | None = None,
    dump: Callable[[Any], Any] = lambda found: found,
) -> None:
    """One volatile read into the bundle as JSON, or recorded as missing with why."""
    try:
        data = fut.result()
    except DRError as exc:
        bundle.missing(missing, kind=kind, source=missing_source or source, reason=str(exc))
        return
    bundle.add_json(path, dump(data), kind=kind, source=source, description=description)


def submit_evidence(run: BreachRun) -> list[EvidenceStep]:
    """Submit every evidence collection (files land in the bundle's staging folder)."""
    ctx, opts = run.ctx, run.opts
    steps: list[EvidenceStep] = []
    if ctx.dry_run:
        ctx.plan("collect", "server logs, container logs, events, snapshots and dumps")
        return steps
    scratch = Path(tempfile.mkdtemp(prefix="dr-evidence-scratch-"))
    run.scratch_dirs.append(scratch)
    for node in run.pgc.nodes:
        if ctx.plan("copy", f"server logs of {node.name}"):
            steps.append((f"server logs of {node.name}", *_node_logs(run, node, scratch)))
    for svc in run.pf.services:
        if isinstance(svc, DockerService) and ctx.plan("copy", f"logs of container {svc.name}"):
            steps.append((f"logs of container {svc.name}", *_container_logs(run, svc.name)))
    namespaces = [s.namespace for s in run.pf.services if isinstance(s, KubernetesService)]
    namespaces += [p.namespace for p in opts.isolate_pods] + opts.event_namespaces
    for ns in dict.fromkeys(namespaces):
        if ctx.plan("list", f"Kubernetes events of namespace {ns}"):
            steps.append((f"events of namespace {ns}", *_k8s_events(run, ns)))
    if opts.volume_ids and ctx.plan("snapshot", f"volumes {', '.join(opts.volume_ids)}"):
        steps.append(("volume snapshots", *_snapshots(run)))
    if opts.dump_tables and ctx.plan("pg_dump", f"tables {', '.join(opts.dump_tables)}"):
        steps.append(("dump of tables", *_dump_tables(run, scratch)))
    names = ", ".join(s.name for s in run.pf.files)
    if run.pf.files and run.restore_to is not None and ctx.plan("copy", f"changed {names}"):
        steps.append(("objects changed since restore_to", *files_evidence_step(run, scratch)))
    return steps


def collect_evidence(run: BreachRun, steps: list[EvidenceStep]) -> None:
    """File each collection's result in the bundle; a failed one is listed as missing."""
    for label, fut, file_result in steps:
        try:
            file_result(fut.result())
        except Exception as exc:  # noqa: BLE001 - any failure: the bundle says what is missing
            assert run.bundle is not None
            run.bundle.missing(label, kind="evidence", source=label, reason=str(exc))


def _node_logs(run: BreachRun, node: PostgresNode, scratch: Path) -> tuple[Any, Callable]:
    local = node.log_directory or (node.data_directory / "log" if node.data_directory else None)
    fut = postgres_security.collect_server_logs_task.submit(
        run.ci(node), scratch / "logs" / node.name, local_log_dir=local, since=run.opts.log_since
    )
    where = f"postgres {node.name} ({node.host}:{node.port})"

    def file_result(entries: list[dict[str, Any]]) -> int:
        bundle = run.bundle
        assert bundle is not None
        for e in entries:
            if "path" in e:
                bundle.add_file(
                    f"postgres/{node.name}/log/{e['name']}",
                    e["path"],
                    kind="server-log",
                    source=f"{where} via {e['via']}",
                    description=f"server log file modified {e['modified_at']}",
                )
            else:
                bundle.missing(e["name"], kind="server-log", source=where, reason=e["skipped"])
        return len(entries)

    return fut, file_result


def _container_logs(run: BreachRun, name: str) -> tuple[Any, Callable]:
    fut = submit_with(
        containers_inspection.container_logs_task,
        lambda: run.systems.docker,
        name,
        tail=run.opts.container_log_tail,
    )

    def file_result(data: bytes) -> int:
        assert run.bundle is not None
        run.bundle.add_bytes(
            f"containers/{name}/logs.txt",
            data,
            kind="container-log",
            source=f"docker {name}",
            description="stdout and stderr of the container",
        )
        return len(data)

    return fut, file_result


def _k8s_events(run: BreachRun, namespace: str) -> tuple[Any, Callable]:
    fut = submit_with(kubernetes_events.list_events_task, lambda: run.systems.k8s, namespace)

    def file_result(events: list[dict[str, Any]]) -> int:
        assert run.bundle is not None
        run.bundle.add_json(
            f"kubernetes/{namespace}/events.json",
            events,
            kind="kubernetes-events",
            source=f"kubernetes namespace {namespace}",
        )
        return len(events)

    return fut, file_result


def _snapshots(run: BreachRun) -> tuple[Any, Callable]:
    opts, target = run.opts, run.pf.target_name
    fut = submit_with(
        snapshots.create_volume_snapshots_task,
        lambda: run.systems.aws("ec2"),
        opts.volume_ids,
        description=f"forensic snapshot, breach response {run.short} on {target}",
        tags={"dr:incident": f"breach-{run.short}", "dr:target": target},
    )

    def file_result(ids: list[str]) -> int:
        assert run.bundle is not None
        if opts.wait_snapshots:
            infos = snapshots.wait_snapshots_task(
                run.systems.aws("ec2"), ids, timeout_seconds=opts.snapshot_timeout_seconds
            )
            doc = [i.model_dump(mode="json") for i in infos]
        else:
            doc = [{"snapshot_id": i, "state": "pending"} for i in ids]
        run.bundle.add_json(
            "cloud/snapshots.json",
            doc,
            kind="volume-snapshots",
            source="ec2",
            description="forensic EBS snapshots (the data stays in EC2, tagged dr:incident)",
        )
        run.info["snapshots"] = ids
        return len(ids)

    return fut, file_result


def _dump_tables(run: BreachRun, scratch: Path) -> tuple[Any, Callable]:
    db = run.opts.dump_database or run.pgc.heartbeat_db
    primary = run.pgc.primary
    conninfo = postgres_client.conninfo(
        primary,
        user=run.pgc.user,
        dbname=db,
        connect_timeout_seconds=run.pgc.connect_timeout_seconds,
        application_name=APPLICATION_NAME,
    )
    out = scratch / "dumps" / f"{db}-tables.dump"
    fut = relation_restore.dump_relations_task.submit(
        conninfo, run.opts.dump_tables, out, bin_dir=primary.bin_dir, password=run.pf.admin_password
    )

    def file_result(info: dict[str, Any]) -> int:
        assert run.bundle is not None
        run.bundle.add_file(
            f"postgres/dumps/{db}-tables.dump",
            out,
            kind="dump",
            source=f"postgres {primary.name} database {db}",
            description=f"pg_dump -Fc of {', '.join(run.opts.dump_tables)}",
        )
        return int(info["bytes"])

    return fut, file_result


def _manifest(run: BreachRun, bundle: evidence_bundle.EvidenceBundle) -> Any:
    ctx = run.ctx
    return bundle.manifest(
        title=f"breach response on {run.pf.target_name} ({ctx.mode.value})",
        incident={
            "target": run.pf.target_name,
            "scenario": ctx.scenario.value,
            "mode": ctx.mode.value,
            "severity": ctx.severity,
            "declared_at": iso(ctx.declared_at),
            "detected_at": iso(run.detected_at),
            "intrusion_at": iso(run.intrusion_at),
            "alert_fingerprint": run.opts.alert_fingerprint,
        },
        collected_by=evidence_bundle.collector_identity(ctx.flow_run_id, ctx.flow_run_url),
    )


def store_evidence(run: BreachRun) -> None:
    """Write the bundle once, then read it back and verify every checksum."""
    ctx = run.ctx
    bundle = run.bundle
    assert bundle is not None
    url = run.target.evidence_repository
    manifest = _manifest(run, bundle)
    evidence: dict[str, Any] = {
        "bundle_id": bundle.bundle_id,
        "items": len(manifest.items),
        "total_bytes": manifest.total_bytes,
        "missing": [m.model_dump(mode="json") for m in manifest.missing],
        "complete": False,
        "stored": False,
        "verified": False,
    }
    run.info["evidence"] = evidence
    critical = run.opts.evidence_required
    if url is None:
        evidence["staged_at"] = str(bundle.staging_dir)
        ctx.record_check(
            "evidence bundle stored", False, critical=critical,
            detail=f"no evidence repository configured; staged copy at {bundle.staging_dir}",
        )  # fmt: skip
        return
    prefix = f"{run.pf.target_name}/breach/{bundle.bundle_id}"
    if not ctx.plan("write once", f"the evidence bundle to {url}/{prefix}"):
        return
    try:
        repo = run.systems.repository(url)
        stored = evidence_bundle.write_bundle_task.submit(
            repo, prefix, bundle, manifest, retain_days=run.opts.evidence_retain_days
        ).result()
    except Exception as exc:  # noqa: BLE001 - isolation already happened; report it
        evidence["staged_at"] = str(bundle.staging_dir)
        evidence["error"] = redact(str(exc))
        ctx.record_check(
            "evidence bundle stored",
            False,
            critical=critical,
            detail=f"evidence INCOMPLETE: {type(exc).__name__}: {exc}; the staged copy is "
            f"kept at {bundle.staging_dir}",
        )
        ctx.note(f"evidence is incomplete: the bundle could not be stored ({exc})")
        return
    _verify_stored(run, repo, prefix, stored, manifest, evidence)


def _verify_stored(
    run: BreachRun,
    repo: Any,
    prefix: str,
    stored: evidence_manifest.StoredBundle,
    manifest: Any,
    evidence: dict[str, Any],
) -> None:
    """Record the stored bundle, read it back, compare every checksum."""
    ctx, bundle, critical = run.ctx, run.bundle, run.opts.evidence_required
    assert bundle is not None
    run.stored = stored
    evidence.update(stored.model_dump(mode="json"))
    evidence["stored"] = True
    ctx.record_check(
        "evidence bundle stored",
        True,
        critical=critical,
        detail=f"{stored.items} item(s), {stored.total_bytes} bytes at {stored.url}; "
        + (f"Object Lock {stored.lock_mode} until {iso(stored.retain_until)}"
           if stored.locked else "no provider-enforced retention"),
        value=stored.url,
    )  # fmt: skip
    ctx.record_check(
        "evidence retained by the storage provider",
        stored.locked,
        critical=False,
        detail=stored.lock_mode or "the bucket has no Object Lock: write-once by convention",
    )
    report = evidence_verify.verify_bundle_task.submit(
        repo, prefix, expected_manifest_sha256=stored.manifest_sha256
    ).result()
    evidence["verified"] = report.ok
    evidence["verify"] = report.summary()
    ctx.record_check(
        "evidence bundle checksums verify",
        report.ok,
        critical=critical,
        detail=f"{report.summary()}; verify again with: {stored.verify_command}",
        value=stored.manifest_sha256,
    )
    evidence["complete"] = report.ok and manifest.complete
    if not manifest.complete:
        ctx.record_check(
            "evidence complete",
            False,
            critical=critical,
            detail="; ".join(f"{m.name}: {m.reason}" for m in manifest.missing),
        )
    if report.ok:
        bundle.cleanup()
