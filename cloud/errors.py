"""The cloud's exceptions. Hierarchy::

    CloudError
    ├── DatabaseUrlError      a --db / $PLANTSYNC_CLOUD_DB we cannot use
    ├── SchemaNotCurrent      the database is not migrated to this version's head
    └── AdminError            an admin command that cannot be done as asked
        ├── GatewayExists
        └── UnknownGateway

HTTP errors are answered in cloud/app.py and never leave it as exceptions.
"""

from __future__ import annotations


class CloudError(Exception):
    """Root of the cloud's own errors; the message is meant for the user."""


class DatabaseUrlError(CloudError, ValueError):
    pass


class SchemaNotCurrent(CloudError):
    pass


class AdminError(CloudError):
    pass


class GatewayExists(AdminError):
    pass


class UnknownGateway(AdminError):
    pass
