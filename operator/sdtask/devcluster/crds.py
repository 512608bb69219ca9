"""Install the project's CRDs into a cluster and wait until the API server serves them."""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from kubernetes.client import ApiClient, ApiextensionsV1Api
from kubernetes.client.exceptions import ApiException


def install_crds(client: ApiClient, directory: Path, timeout: float = 30) -> list[str]:
    api = ApiextensionsV1Api(client)
    names = []
    for path in sorted(directory.glob("*.yaml")):
        manifest = yaml.safe_load(path.read_text())
        name = manifest["metadata"]["name"]
        names.append(name)
        try:
            api.create_custom_resource_definition(manifest)
        except ApiException as error:
            if error.status != 409:
                raise
            existing = api.read_custom_resource_definition(name)
            manifest["metadata"]["resourceVersion"] = existing.metadata.resource_version
            api.replace_custom_resource_definition(name, manifest)
    deadline = time.monotonic() + timeout
    for name in names:
        while not _established(api, name):
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout:.0f}s")
            time.sleep(0.1)
    return names


def _established(api: ApiextensionsV1Api, name: str) -> bool:
    conditions = api.read_custom_resource_definition(name).status.conditions or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)
