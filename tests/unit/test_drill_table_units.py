"""How a data-corruption drill chooses the table it damages (no I/O)."""

from __future__ import annotations

import pytest

from dr.errors import ConfigError
from flows.data_corruption.drill import choose_drill_table
from flows.data_corruption.options import CorruptionOptions, Variant
from tasks.pitr.drill import DrillCandidate, drill_statement


def table(name: str, rows: int, referenced: bool = False, *cols: str) -> DrillCandidate:
    return DrillCandidate(
        relation=name, rows=rows, referenced=referenced, numeric_columns=list(cols)
    )


SHOP = [
    table("shop.customers", 50, True),
    table("shop.orders", 400, True, "total"),
    table("shop.order_items", 900, False, "qty"),
]
SEED = [
    table("public.User", 500, True),
    table("public.Order", 4000, True, "filledQuantity"),
    table("public.Trade", 8000, False, "price", "fee"),
    table("public.audit", 9000, False),
    table("public.empty", 0, False, "n"),
    table("public.dr_heartbeat", 99_999, False, "seq"),
]


@pytest.mark.parametrize(
    ("variant", "want"),
    [
        (Variant.bad_update, ("shop.orders", "total")),
        (Variant.mass_delete, ("shop.order_items", None)),
        (Variant.damaged_page, ("shop.orders", None)),
    ],
)
def test_the_lab_keeps_its_shop_tables(variant, want):
    assert choose_drill_table(variant, SHOP + SEED, database="app") == want


@pytest.mark.parametrize(
    ("variant", "want"),
    [
        # The largest table with a free numeric column; the first such column.
        (Variant.bad_update, ("public.Trade", "price")),
        (Variant.damaged_page, ("public.Trade", None)),
        # The largest leaf: public.audit has no numeric column but nothing references it.
        (Variant.mass_delete, ("public.audit", None)),
    ],
)
def test_other_databases_get_their_largest_suitable_table(variant, want):
    got = choose_drill_table(variant, SEED, database="db", exclude={"public.dr_heartbeat"})
    assert got == want


def test_a_requested_table_is_checked_not_replaced():
    assert choose_drill_table(
        Variant.bad_update, SEED, database="db", requested="public.Order"
    ) == ("public.Order", "filledQuantity")
    with pytest.raises(ConfigError, match=r"'db'.*referenc"):
        choose_drill_table(Variant.mass_delete, SEED, database="db", requested="public.Order")
    with pytest.raises(ConfigError, match="not a table of database 'db'"):
        choose_drill_table(Variant.bad_update, SEED, database="db", requested="shop.orders")
    with pytest.raises(ConfigError, match="no rows"):
        choose_drill_table(Variant.bad_update, SEED, database="db", requested="public.empty")


def test_no_suitable_table_is_refused_naming_the_database():
    only = [table("public.parent", 10, True, "n"), table("public.child", 10, False)]
    with pytest.raises(ConfigError, match="database 'seed' has no table a bad-update"):
        choose_drill_table(Variant.bad_update, only[1:], database="seed")
    with pytest.raises(ConfigError, match="database 'seed' has no table a mass-delete"):
        choose_drill_table(Variant.mass_delete, only[:1], database="seed")


def test_drill_table_option_must_be_qualified():
    assert CorruptionOptions(drill_table="public.Trade").drill_table == "public.Trade"
    with pytest.raises(ValueError, match=r"schema\.table"):
        CorruptionOptions(drill_table="Trade")


def test_statements_quote_identifiers():
    assert drill_statement("public.Trade", "price") == 'UPDATE "public"."Trade" SET "price" = 0'
    assert drill_statement("public.trades") == 'DELETE FROM "public"."trades"'
