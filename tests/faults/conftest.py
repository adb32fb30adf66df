"""Fixtures of the fault-injection tests: the production system and private services."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import (
    PrivatePostgres,
    PrivateRedis,
    production,  # noqa: F401  (the fixture)
)


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    """A Redis of this test's own, which the test may flush, kill and restart."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PrivateRedis(directory)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this test's own (owned by ``postgres``: initdb refuses root),
    with an empty ``mqi`` database, which the test may restart."""
    # not under tmp_path: pytest's folders are private to root, the cluster's user must enter
    with tempfile.TemporaryDirectory(prefix="mqi-pg-") as directory:
        Path(directory).chmod(0o755)
        cluster = PrivatePostgres(Path(directory) / "cluster")
        cluster.start()
        try:
            cluster.create_database()
            yield cluster
        finally:
            cluster.stop(mode="immediate")
