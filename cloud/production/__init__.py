"""Production: master data, work orders and their status rules, dispatch and attribution,
imports. Where to look:

- ``master``: products, materials, machines, versioned BOMs and routings;
- ``orders``: what a planner does to a work order and its operations, and the order list;
- ``status``: why an order or operation changed status (every status rule), due status;
- ``dispatch``: which operation ran on which machine when (a public module: ``start``,
  ``stop``, ``edit``, ``assign``, ...), re-attributing counts when that changes;
- ``attribution``: every count record to the operation that ran at its time, progress and
  backflush (the ingest applier ``apply_counts``);
- ``imports``: materials, BOMs, routings and work orders from CSV or XLSX.
"""

from __future__ import annotations

from cloud.production import dispatch
from cloud.production.attribution import apply_counts
from cloud.production.imports import KINDS as IMPORT_KINDS
from cloud.production.imports import (
    ImportTooLarge,
    TableImportError,
    UnreadableTable,
    import_file,
    import_table,
)
from cloud.production.master import (
    BomLineIn,
    RoutingOpIn,
    create_bom,
    create_machine,
    create_routing,
    current_bom,
    current_routing,
    get_material,
    get_product,
    update_machine,
    upsert_material,
    upsert_product,
)
from cloud.production.orders import (
    WorkOrderFilter,
    cancel_work_order,
    close_work_order,
    complete_operation,
    complete_work_order,
    create_work_order,
    get_work_order,
    list_work_orders,
    release_work_order,
    resume_operation,
    stop_operation,
    update_work_order,
)
from cloud.production.status import (
    COMPLETION_STATUSES,
    DUE_STATUSES,
    OPEN_ORDER,
    OPERATION_ACTIONS,
    WORK_ORDER_ACTIONS,
    CompletionStatus,
    DueStatus,
    completion_status,
    due_status,
    on_operation_progress,
    order_completion_status,
    order_due_status,
)

__all__ = [
    "COMPLETION_STATUSES",
    "DUE_STATUSES",
    "IMPORT_KINDS",
    "OPEN_ORDER",
    "OPERATION_ACTIONS",
    "WORK_ORDER_ACTIONS",
    "BomLineIn",
    "CompletionStatus",
    "DueStatus",
    "ImportTooLarge",
    "RoutingOpIn",
    "TableImportError",
    "UnreadableTable",
    "WorkOrderFilter",
    "apply_counts",
    "cancel_work_order",
    "close_work_order",
    "complete_operation",
    "complete_work_order",
    "completion_status",
    "create_bom",
    "create_machine",
    "create_routing",
    "create_work_order",
    "current_bom",
    "current_routing",
    "dispatch",
    "due_status",
    "get_material",
    "get_product",
    "get_work_order",
    "import_file",
    "import_table",
    "list_work_orders",
    "on_operation_progress",
    "order_completion_status",
    "order_due_status",
    "release_work_order",
    "resume_operation",
    "stop_operation",
    "update_machine",
    "update_work_order",
    "upsert_material",
    "upsert_product",
]
