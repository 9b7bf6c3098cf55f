"""Root test configuration: service fixtures live in tests/fixtures/, one module each."""

import os

# Nothing a test starts (gateways, the cloud) may multicast beyond loopback.
os.environ.setdefault("PLANTSYNC_ZEROCONF_INTERFACES", "127.0.0.1")

pytest_plugins = [
    "tests.fixtures.plc",
    "tests.fixtures.postgres",
    "tests.fixtures.mosquitto",
    "tests.fixtures.cloud",
]
