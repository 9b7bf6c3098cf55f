"""The stock ledger and what is read from it: moves (receipts, issues, scrap,
adjustments, counts, backflush), balances always equal to the ledger's sum, safety stock,
days of cover and shortages (cloud/inventory/ledger.py says how each is computed). The
ledger's one query is ``moves_query`` (ordered by ``MOVES_ORDER``, rows by ``move_doc``):
``list_moves`` pages it by key, the API by offset."""

from __future__ import annotations

from cloud.inventory.ledger import (
    MOVES_ORDER,
    USAGE_KINDS,
    InventoryError,
    UnknownMaterial,
    add_to_balances,
    balance_u,
    ledger_mismatches,
    list_moves,
    move_doc,
    moves_query,
    post_move,
    shortages,
    stock,
    stock_count,
)

__all__ = [
    "MOVES_ORDER",
    "USAGE_KINDS",
    "InventoryError",
    "UnknownMaterial",
    "add_to_balances",
    "balance_u",
    "ledger_mismatches",
    "list_moves",
    "move_doc",
    "moves_query",
    "post_move",
    "shortages",
    "stock",
    "stock_count",
]
