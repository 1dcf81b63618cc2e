"""Shared pytest configuration: fixtures live in tests/fixtures/, one file per topic."""

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.engine",
    "tests.fixtures.roles",
    "tests.fixtures.http_server",
]
