"""Shared fixtures. Integration tests get one real local stack per session (see sdtask.devcluster)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException

from sdtask.devcluster.crds import install_crds
from sdtask.devcluster.stack import DevStack

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path) or "tests/e2e" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack() -> Iterator[DevStack]:
    with DevStack() as running:
        yield running


@pytest.fixture(scope="session")
def kube_api(stack: DevStack) -> Iterator[ApiClient]:
    """An admin client of the real API server, with this repo's CRDs installed and established."""
    with stack.api_client() as client:
        install_crds(client, REPO_ROOT / "crds")
        yield client


@pytest.fixture
def namespace(kube_api: ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as error:
        if error.status != 404:
            raise
