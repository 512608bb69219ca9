"""The checked-in CRDs are what the models generate, structurally valid, and the examples fit the models."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sdtask.api import SDRuntime, SDTask
from sdtask.api.crdgen import RESOURCES, SchemaConversionError, main, render_crds, to_structural

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
EXAMPLES = REPO / "examples"

MODELS_BY_KIND: dict[str, type[SDTask] | type[SDRuntime]] = {"SDTask": SDTask, "SDRuntime": SDRuntime}
# Keywords that must not survive the conversion: Kubernetes refuses them, or they are noise in `kubectl explain`.
FORBIDDEN_KEYWORDS = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "nullable", "const", "uniqueItems"}
TYPES = {"object", "array", "string", "integer", "number", "boolean"}


def generated() -> dict[str, dict[str, Any]]:
    return {name: yaml.safe_load(text) for name, text in render_crds().items()}


def openapi_schemas() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, crd in generated().items():
        yield name, crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def schema_nodes(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below `node`, with its path."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from schema_nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}.*")


def test_checked_in_crds_match_the_models() -> None:
    for name, text in render_crds().items():
        path = CRDS / name
        assert path.exists(), f"{path} is missing: run `make crds`"
        assert path.read_text(encoding="utf-8") == text, f"{path} differs from the models: run `make crds`"


def test_check_mode_reports_drift_and_passes_when_current(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 0
    assert main(["--check", str(tmp_path)]) == 0

    stale = tmp_path / "sdtask.io_sdtasks.yaml"
    stale.write_text(stale.read_text().replace("maxLength: 262144", "maxLength: 999"))
    assert main(["--check", str(tmp_path)]) == 1

    report = capsys.readouterr().err
    assert "sdtask.io_sdtasks.yaml: differs from the models (8 lines)" in report
    assert "make crds" in report


def test_generation_is_deterministic() -> None:
    assert render_crds() == render_crds()


@pytest.mark.parametrize(("name", "schema"), list(openapi_schemas()))
def test_schema_is_structural(name: str, schema: dict[str, Any]) -> None:
    for path, node in schema_nodes(schema, name):
        assert not FORBIDDEN_KEYWORDS & node.keys(), f"{path}: {FORBIDDEN_KEYWORDS & node.keys()}"
        free = (
            node.get("x-kubernetes-preserve-unknown-fields") is True or node.get("x-kubernetes-int-or-string") is True
        )
        assert node.get("type") in TYPES or free, f"{path}: no type"
        if node.get("type") == "array":
            assert "items" in node, f"{path}: array without items"
        if "additionalProperties" in node:
            assert isinstance(node["additionalProperties"], dict), f"{path}: boolean additionalProperties"
            assert "properties" not in node, f"{path}: properties and additionalProperties"
        for required in node.get("required", []):
            assert required in node.get("properties", {}), f"{path}: required {required} is not a property"
        if "enum" in node and node.get("type") == "string":
            assert all(isinstance(value, str) for value in node["enum"]), path
        if "default" in node:
            assert "x-kubernetes-int-or-string" not in node, f"{path}: default on int-or-string"


@pytest.mark.parametrize(("name", "schema"), list(openapi_schemas()))
def test_every_field_is_explained(name: str, schema: dict[str, Any]) -> None:
    # `kubectl explain` shows these descriptions; list items and map values are explained by their parent.
    for path, node in schema_nodes(schema, name):
        if path.endswith(("[]", ".*", ".metadata")):
            continue
        assert node.get("description"), f"{path}: no description"


@pytest.mark.parametrize(("name", "schema"), list(openapi_schemas()))
def test_cel_rules_only_read_declared_bounded_fields(name: str, schema: dict[str, Any]) -> None:
    # A rule may only select declared properties; strings it reads must be bounded to keep the estimated cost low.
    rules_seen = 0
    for path, node in schema_nodes(schema, name):
        for rule in node.get("x-kubernetes-validations", []):
            rules_seen += 1
            assert rule["message"], f"{path}: rule without message"
            for selection in re.findall(r"self((?:\.\w+)+)", rule["rule"]):
                target = node
                for part in selection.strip(".").split("."):
                    if part in {"contains", "size", "matches", "startsWith", "endsWith"}:
                        break
                    assert part in target.get("properties", {}), f"{path}: rule reads undeclared {selection}"
                    target = target["properties"][part]
                if target.get("type") == "string":
                    assert "maxLength" in target, f"{path}: rule reads unbounded string {selection}"
            if rule.get("fieldPath"):
                assert rule["fieldPath"].startswith("."), path
    assert rules_seen >= 2


def test_crd_names_columns_and_subresources() -> None:
    crds = {crd["spec"]["names"]["kind"]: crd for crd in generated().values()}
    expected_columns = {
        "SDTask": ["Phase", "Runtime", "Model", "Pod", "Attempts", "Progress", "Age", "Output"],
        "SDRuntime": ["Model", "Dynamic", "Desired", "Ready", "Queued", "Running", "Age"],
    }
    short_names = {"SDTask": ["sdt"], "SDRuntime": ["sdr"]}
    assert set(crds) == set(expected_columns)
    for kind, crd in crds.items():
        spec = crd["spec"]
        assert spec["group"] == "sdtask.io" and spec["scope"] == "Namespaced"
        assert spec["names"]["shortNames"] == short_names[kind]
        assert spec["names"]["categories"] == ["sdtask"]
        (version,) = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
        assert version["subresources"] == {"status": {}}
        columns = version["additionalPrinterColumns"]
        assert [column["name"] for column in columns] == expected_columns[kind]
        assert all(column.get("priority", 0) == 0 for column in columns)
        status_properties = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        for column in columns:
            field = column["jsonPath"].split(".")
            if field[1] == "status":
                assert field[2] in status_properties, column


def test_task_status_supports_kubectl_wait_for_conditions() -> None:
    crd = generated()["sdtask.io_sdtasks.yaml"]
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    conditions = status["conditions"]
    assert conditions["items"]["required"] == ["status", "type"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "output_location" in status and "output_url" in status


def test_converter_refuses_what_kubernetes_cannot_express() -> None:
    with pytest.raises(SchemaConversionError, match="union"):
        to_structural({"type": "object", "properties": {"x": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]}}})
    with pytest.raises(SchemaConversionError, match="uniqueItems"):
        to_structural({"type": "array", "items": {"type": "string"}, "uniqueItems": True})


def test_converter_maps_int_or_string_and_any() -> None:
    schema = {
        "type": "object",
        "properties": {
            "quantity": {"anyOf": [{"type": "integer"}, {"type": "string"}], "title": "Quantity"},
            "anything": {"description": "d", "default": None},
        },
    }
    assert to_structural(schema)["properties"] == {
        "quantity": {"x-kubernetes-int-or-string": True},
        "anything": {"description": "d", "x-kubernetes-preserve-unknown-fields": True},
    }


def test_every_resource_has_a_crd_file() -> None:
    assert sorted(render_crds()) == sorted(f"sdtask.io_{resource.plural}.yaml" for resource in RESOURCES)


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda path: path.name)
def test_example_validates_against_the_models(example: Path) -> None:
    documents = [document for document in yaml.safe_load_all(example.read_text()) if document]
    assert documents
    for document in documents:
        MODELS_BY_KIND[document["kind"]].from_body(document, tolerate_unknown_fields=False)


def test_examples_cover_both_kinds_and_the_named_runtimes() -> None:
    documents = [yaml.safe_load(path.read_text()) for path in sorted(EXAMPLES.glob("*.yaml"))]
    runtimes = {document["metadata"]["name"]: document for document in documents if document["kind"] == "SDRuntime"}
    assert runtimes["sdruntime"]["spec"]["dynamicModel"] is False
    assert runtimes["sdruntime"]["spec"]["placement"]["nodeSelector"] == {"sdtask.io/pool": "pool-a"}
    assert any(runtime["spec"].get("dynamicModel") for runtime in runtimes.values())
