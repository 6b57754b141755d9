"""The data-corruption drill on the seed targets, whose databases have no ``shop`` tables.

The drill chooses its table from the damaged database itself: seed 001's Prisma tables
(mixed case, ``public."Order"``) for a bad UPDATE, seed 003's leaf table for a mass DELETE.
Each drill must recover the chosen table identical to the stamp and leave the lab healthy
(``healthy_lab``).
"""

from __future__ import annotations

from typing import Any

import pytest

from flows.data_corruption.flow import data_corruption_flow
from flows.data_corruption.options import CorruptionOptions
from tasks.pitr.drill import drill_candidates
from tasks.pitr.relations import relation_digests

from .conftest import CorruptionLab

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def seed_drill(lab: CorruptionLab, target: str, variant: str) -> dict[str, Any]:
    opts = CorruptionOptions(**lab.options(variant=variant))
    result = data_corruption_flow(
        target, mode="drill", options=opts, config_path=str(lab.config_path)
    )
    lab.last_result = result
    return result


def assert_drilled(result: dict[str, Any], relation: str) -> None:
    assert result["outcome"] == "passed", (result["reason"], result["phases"])
    assert result["objectives_met"], result
    assert result["details"]["drill_table"]["relation"] == relation
    names = {c["name"]: c["ok"] for c in result["checks"]}
    assert names.get(f"recovered {relation} identical to the stamp") is True, names
    assert names.get(f"{relation} rows identical to the recovery point") is True, names
    assert relation in result["details"]["assessment"]["damaged_relations"]


def test_bad_update_on_seed_001_zeroes_a_mixed_case_table(healthy_lab: CorruptionLab):
    db = "bun_trading"
    tables = drill_candidates(healthy_lab.conninfo(db))
    want = max((t for t in tables if t.numeric_columns), key=lambda t: t.rows)
    before = relation_digests(healthy_lab.conninfo(db), [want.relation])
    result = seed_drill(healthy_lab, "bun-trading", "bad-update")
    assert_drilled(result, want.relation)
    column = result["details"]["drill_table"]["column"]
    # Prisma's names: mixed case (and "Order" a reserved word), quoted in the statement.
    assert want.relation != want.relation.lower() and column in want.numeric_columns
    table = want.relation.split(".", 1)[1]
    inject = next(p["detail"] for p in result["phases"] if p["name"] == "inject damage")
    assert f'"{table}"' in inject and f'"{column}"' in inject, inject
    assert relation_digests(healthy_lab.conninfo(db), [want.relation]) == before


def test_mass_delete_on_seed_003_empties_a_leaf_table(healthy_lab: CorruptionLab):
    db = "cryptofunk"
    tables = drill_candidates(healthy_lab.conninfo(db))
    want = max((t for t in tables if not t.referenced), key=lambda t: t.rows)
    before = relation_digests(healthy_lab.conninfo(db), [want.relation])
    result = seed_drill(healthy_lab, "cryptofunk", "mass-delete")
    assert_drilled(result, want.relation)
    assert result["details"]["drill_table"]["column"] is None
    assert relation_digests(healthy_lab.conninfo(db), [want.relation]) == before
