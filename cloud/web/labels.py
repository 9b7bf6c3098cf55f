"""Names of the plant's codes as the pages show them (msgids; translated at render time).
The zh-CN catalog uses the plant's own words (docs/GLOSSARY.md)."""

from __future__ import annotations

from typing import Final

from cloud.web.i18n import N_

ORDER_STATUS: Final = {
    "draft": N_("Draft"), "released": N_("Released"), "in_progress": N_("In progress"),
    "completed": N_("Completed"), "closed": N_("Closed"), "cancelled": N_("Cancelled"),
}
OPERATION_STATUS: Final = {
    "pending": N_("Pending"), "in_progress": N_("In progress"), "completed": N_("Completed"),
    "on_hold": N_("On hold"),
}
DUE: Final = {"on_time": N_("On time"), "at_risk": N_("At risk"), "late": N_("Late")}
MACHINE_STATE: Final = {
    "running": N_("Running"), "idle": N_("Idle"), "setup": N_("Setup"), "down": N_("Down"),
    "offline": N_("Offline"), "unknown": N_("No data"),
    # device state names of the map library (config/maps) that are not board states
    "alarm": N_("Alarm"), "off": N_("Switched off"), "mold change": N_("Mold change"),
}
MOVE_KIND: Final = {
    "receipt": N_("Receipt"), "issue": N_("Issue"), "backflush": N_("Backflush"),
    "scrap": N_("Scrap"), "adjustment": N_("Adjustment"), "count": N_("Stock count"),
}
ANOMALY_KIND: Final = {
    "alarm": N_("Device fault"), "limit": N_("Process deviation"), "offline": N_("Offline"),
    "stop": N_("Long stop"), "scrap_rate": N_("Scrap rate"), "stock_low": N_("Low stock"),
    "maintenance": N_("Maintenance due"), "material": N_("Material anomaly"),
    "operator": N_("Operator"), "quality": N_("Quality anomaly"),
}
ANOMALY_STATUS: Final = {
    "open": N_("Open"), "acknowledged": N_("Acknowledged"), "resolved": N_("Resolved"),
    "closed": N_("Closed"),
}
SEVERITY: Final = {"info": N_("Info"), "minor": N_("Minor"), "major": N_("Major"),
                   "critical": N_("Critical")}
GATEWAY_STATE: Final = {
    "live": N_("Live"), "catching_up": N_("Catching up"), "silent": N_("Not seen"),
    "never": N_("Never seen"),
}
GROUP_BY: Final = {"machine": N_("Machine"), "shift": N_("Shift"), "day": N_("Day"),
                   "order": N_("Work order"), "product": N_("Product")}
ROLE: Final = {"admin": N_("Admin"), "planner": N_("Planner"), "viewer": N_("Viewer")}
#: What the due colour does not say (cloud/production/status.py ``completion_status``).
COMPLETION: Final = {"over_produced": N_("Over-produced"), "short_closed": N_("Closed short")}
#: An OEE row's flag (cloud/oee/report.py): params measured (a percentage), ideal and
#: actual (seconds per piece).
PERFORMANCE_OVER_100: Final = N_(
    "Performance measured %(measured)s, shown as 100%%: the routing's ideal cycle or "
    "cavities are wrong (ideal %(ideal)s s per piece, measured %(actual)s s).")
ORDER_ACTION: Final = {"release": N_("Release"), "complete": N_("Complete"), "close": N_("Close"),
                       "cancel": N_("Cancel")}
