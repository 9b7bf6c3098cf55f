"""Root test configuration: service fixtures live in tests/fixtures/, one module each."""

import os

# Nothing a test starts advertises over zeroconf unless the test asks for it (on loopback
# only): a cloud or gateway left advertising would answer another test's discovery.
os.environ["PLANTSYNC_ZEROCONF_INTERFACES"] = "off"

pytest_plugins = [
    "tests.fixtures.plc",
    "tests.fixtures.postgres",
    "tests.fixtures.mosquitto",
    "tests.fixtures.cloud",
]
