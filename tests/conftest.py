"""Root test configuration: service fixtures live in tests/fixtures/, one module each."""

pytest_plugins = [
    "tests.fixtures.plc",
    "tests.fixtures.postgres",
    "tests.fixtures.mosquitto",
    "tests.fixtures.cloud",
]
