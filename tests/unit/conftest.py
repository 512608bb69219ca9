"""Unit-test fixtures: a real S3-protocol server (moto's, in-process on loopback) for the S3 client and link tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from moto.server import ThreadedMotoServer

# The stand-in Web UI's fixtures (data_dir, models_dir, start, client) for the test_standin*.py files.
from tests.standin_support import client, data_dir, models_dir, start  # noqa: F401


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
