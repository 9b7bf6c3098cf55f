"""Root test configuration: fixtures live in tests/fixtures/, one module each (services,
the cloud, a plant set up through the API); helpers beside them: ingest.py (batches),
waiting.py (the one wait-for-condition loop)."""

import os

import pytest

# Nothing a test starts advertises over zeroconf unless the test asks for it (on loopback
# only): a cloud or gateway left advertising would answer another test's discovery.
os.environ["PLANTSYNC_ZEROCONF_INTERFACES"] = "off"

pytest_plugins = [
    "tests.fixtures.plc",
    "tests.fixtures.postgres",
    "tests.fixtures.mosquitto",
    "tests.fixtures.cloud",
    "tests.fixtures.plant",
]


# Tests that advertise or browse zeroconf on loopback see each other's services: under
# pytest-xdist they all run in one worker, one after another (``--dist loadgroup``).
_ZEROCONF_TESTS = (
    "tests/integration/test_discovery.py::",
    "tests/integration/test_cloud_advertises.py::",
    "tests/integration/test_daemon.py::test_gateway_advertises_its_status_port",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(_ZEROCONF_TESTS):
            item.add_marker(pytest.mark.xdist_group("zeroconf"))
