"""Drills only: the intruder planted at a stamped moment, and the cleanup afterwards."""

from __future__ import annotations

from typing import Any

from dr.clock import utcnow
from dr.errors import DRError, PreconditionError
from flows.breach_response.files import damage_drill_objects, undo_drill_damage
from flows.breach_response.restore import prepare_drill_restore
from flows.breach_response.state import BreachRun, iso, new_secret
from tasks.aws import security_groups
from tasks.postgres import hba, intruder
from tasks.postgres import intruder as postgres_intruder


def plant_intruder(run: BreachRun) -> None:
    """Drills: a rogue login role with an open session; the app's password 'leaked'."""
    ctx = run.ctx
    primary = run.pgc.primary
    role = f"dr_intruder_{run.short}"
    password = new_secret()
    if run.opts.restore_tables and not ctx.dry_run:
        prepare_drill_restore(run)
    if run.pf.files and run.restore_to is None and not ctx.dry_run:
        run.restore_to = utcnow()  # the files go back to just before the intruder
    if not ctx.plan("create", f"rogue login role {role} with an open session (drill)"):
        run.rogue_role = role
        run.compromised.append(role)
        return
    change = postgres_intruder.create_login_role_task(
        run.ci(primary), role, password.get_secret_value()
    )
    run.record(
        change,
        lambda: postgres_intruder.drop_role_task(run.ci(primary), role, dbnames=run.pgc.databases),
    )
    run.rogue_role, run.rogue_password = role, password
    run.compromised.append(role)
    run.held[role] = intruder.HeldSession(
        run.role_ci(primary, role, password), name=f"dr-intruder-{role}"
    ).start()
    leaked: list[dict[str, Any]] = []
    for cred in run.pf.credentials:
        if cred.old is None:
            continue
        session = intruder.HeldSession(
            run.role_ci(primary, cred.role, cred.old), name=f"dr-leaked-{cred.role}"
        ).start()
        run.held[f"leaked:{cred.role}"] = session
        leaked.append({"role": cred.role, "pid": session.pid})
    run.intrusion_at = ctx.stamp_failure(run.held[role].started_at)
    if run.opts.inject == "credential-survives":
        open_backdoor(run)
    damage_drill_objects(run)
    db = run.restore_db
    for table in run.opts.restore_tables:
        deleted = postgres_intruder.delete_rows_bypassing_checks_task(
            run.ci(primary, db), table, rows=3
        )
        run.info.setdefault("drill_damage", {})[table] = f"{deleted} row(s) deleted"
    run.info["drill"] = {
        "rogue_role": role,
        "rogue_session_pid": run.held[role].pid,
        "leaked_credentials": [c.role for c in run.pf.credentials],
        "leaked_sessions": leaked,
        "planted_at": iso(run.intrusion_at),
    }
    ctx.note(
        f"drill: intruder planted at {iso(run.intrusion_at)}: rogue role {role} "
        f"(session pid {run.held[role].pid}); leaked password(s) of "
        f"{', '.join(c.role for c in run.pf.credentials) or 'none'}"
    )


def open_backdoor(run: BreachRun) -> None:
    """The red twin: a second way in that survives the rotation (a pg_hba trust line for
    each leaked role on the primary), so the old password still logs in."""
    primary = run.pgc.primary
    rules = [f'host all "{c.role}" all trust' for c in run.pf.credentials if c.old is not None]
    if not rules:
        raise PreconditionError("credential-survives: no leaked credential to keep usable")
    change = hba.inject_hba_rules_task(run.ci(primary), rules, reason="credential-survives")
    run.backdoors.append(change)
    run.record(change, lambda: hba.remove_hba_rules(run.ci(primary), change))
    run.info["drill_backdoor"] = {"node": primary.name, "rules": rules}


def drill_cleanup(run: BreachRun) -> None:
    """Drop the rogue role, lift the drill's network blocks, close the held sessions, put
    back what is left of the drill's object damage."""
    ctx = run.ctx
    for session in run.held.values():
        session.close()
    undo_drill_damage(run)
    while run.backdoors:
        change = run.backdoors.pop()
        try:
            ctx.record_change(hba.remove_hba_rules_task(run.ci(run.pgc.primary), change))
        except DRError as exc:
            ctx.record_check("drill: backdoor closed", False, detail=str(exc))
    if run.rogue_role and run.rogue_password is not None:
        try:
            change = postgres_intruder.drop_role_task(
                run.ci(run.pgc.primary), run.rogue_role, dbnames=run.pgc.databases
            )
            ctx.record_change(change)
            ctx.record_check(
                f"drill: rogue role {run.rogue_role} dropped",
                True,
                critical=False,
                detail=change.summary(),
            )
        except DRError as exc:
            ctx.record_check(f"drill: rogue role {run.rogue_role} dropped", False, detail=str(exc))
    # The drill's "attacker" is make-believe: lift its blocks, leave the target as found.
    for node_name, change in run.hba_blocks.items():
        try:
            ctx.record_change(
                hba.unblock_cidrs_in_hba_task(run.ci(run.pgc.node(node_name)), change)
            )
        except DRError as exc:
            ctx.record_check(f"drill: pg_hba of {node_name} unblocked", False, detail=str(exc))
    for change in run.sg_blocks:
        try:
            ctx.record_change(security_groups.restore_ingress_task(run.systems.aws("ec2"), change))
        except DRError as exc:
            ctx.record_check(f"drill: {change.object} unblocked", False, detail=str(exc))
