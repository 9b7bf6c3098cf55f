"""The stock ledger and what is read from it: moves (receipts, issues, scrap,
adjustments, counts, backflush), balances always equal to the ledger's sum, safety stock,
days of cover and shortages (cloud/inventory/ledger.py says how each is computed)."""

from __future__ import annotations

from cloud.inventory.ledger import (
    USAGE_KINDS,
    InventoryError,
    UnknownMaterial,
    add_to_balances,
    balance_u,
    ledger_mismatches,
    list_moves,
    post_move,
    shortages,
    stock,
    stock_count,
)

__all__ = [
    "USAGE_KINDS",
    "InventoryError",
    "UnknownMaterial",
    "add_to_balances",
    "balance_u",
    "ledger_mismatches",
    "list_moves",
    "post_move",
    "shortages",
    "stock",
    "stock_count",
]
