"""Building blocks shared by the SDTask and SDRuntime models: API coordinates, base classes, patterns, CEL helpers.

The pydantic models are the single source of the CRD schemas (see `crdgen`). Three kinds of model exist:

- `SpecModel`: Kubernetes-style spec objects (camelCase aliases). Strict types and unknown fields refused, so a manifest
  validated here is one `kubectl apply --validate=strict` accepts. Objects read back from the API server are parsed with
  `tolerant_context()`, which drops unknown fields instead: a CRD newer than this code (upgrade or rollback skew) then
  does not make every stored object unreadable. The API server prunes unknown spec fields anyway, so nothing is lost.
- `RequestModel`: the SD Web UI request kept under its own (snake_case) names; free-form parts use `extra="allow"`.
- `StatusModel`: written by the operator and the agent, read by both; lax types and unknown fields ignored, because a
  newer writer must never make an older reader fail on a whole object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

GROUP: Final = "sdtask.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "sdtask.io/v1alpha1"  # GROUP/VERSION, spelled out so type checkers see the literal
CATEGORY: Final = "sdtask"

# Kubernetes object names. A runtime name also names its Deployment and Service, and Service names are DNS-1123 labels.
DNS1123_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_LABEL_MAX_LENGTH = 63
DNS1123_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS1123_SUBDOMAIN_MAX_LENGTH = 253
HTTP_URL_PATTERN = r"^https?://\S+$"
URL_MAX_LENGTH = 2048

# Key of the validation context that makes spec models drop unknown fields instead of refusing them.
TOLERATE_UNKNOWN_FIELDS = "tolerate_unknown_fields"


def tolerant_context() -> dict[str, Any]:
    """Validation context for objects read back from the API server (see the module docstring)."""
    return {TOLERATE_UNKNOWN_FIELDS: True}


def cel_rule(rule: str, message: str, field_path: str | None = None) -> JsonDict:
    """One `x-kubernetes-validations` entry. `message` names the field, since it is all a refused user sees."""
    entry: JsonDict = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


def cel_rules(*rules: JsonDict) -> JsonDict:
    """`json_schema_extra` carrying CEL rules; `crdgen` copies them into the CRD next to the node they belong to."""
    return {"x-kubernetes-validations": list(rules)}


def plain_json(value: Any) -> Any:
    """Copy mappings (kopf's Body/Spec views, ruamel maps) into plain dicts and lists, which strict models require."""
    if isinstance(value, Mapping):
        return {str(key): plain_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(item) for item in value]
    return value


class ApiModel(BaseModel):
    """Base of every model: dumps give API-ready dicts."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    def to_api(self) -> dict[str, Any]:
        """The JSON-ready dict to send to the API server: API names, no unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class _RefusesUnknownFields(ApiModel):
    """Refuses unknown fields unless validated with `tolerant_context()`, which drops them."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_unknown_fields_when_tolerated(cls, data: Any, info: ValidationInfo) -> Any:
        context = info.context
        if not isinstance(data, dict) or not isinstance(context, dict) or not context.get(TOLERATE_UNKNOWN_FIELDS):
            return data
        known: set[str] = set()
        for name, model_field in cls.model_fields.items():
            known.add(name)
            known.update(alias for alias in (model_field.alias, model_field.validation_alias) if isinstance(alias, str))
        return {key: value for key, value in data.items() if key in known}


class SpecModel(_RefusesUnknownFields):
    """A Kubernetes-style spec object: camelCase names, strict types mirroring the CRD's."""

    model_config = ConfigDict(alias_generator=to_camel)


class CustomResource(SpecModel):
    """Base of a whole custom resource object: apiVersion, kind, metadata, spec, status."""

    @classmethod
    def from_body(cls, body: Mapping[str, Any], *, tolerate_unknown_fields: bool = True) -> Self:
        """Parse an object: a kopf body, an API response, a manifest.

        Objects read from the API server tolerate unknown fields (see the module docstring); pass
        `tolerate_unknown_fields=False` to check a manifest before applying it, as `kubectl --validate=strict` would.
        """
        context = tolerant_context() if tolerate_unknown_fields else None
        return cls.model_validate(plain_json(body), context=context)


class RequestModel(_RefusesUnknownFields):
    """A declared part of the SD Web UI request: keeps the request's own field names."""


class FreeFormModel(ApiModel):
    """An object whose undeclared fields are kept as given (`x-kubernetes-preserve-unknown-fields` in the CRD)."""

    model_config = ConfigDict(extra="allow", strict=True)


class StatusModel(ApiModel):
    """Status written by the operator and the agent: camelCase names, lax parsing, unknown fields ignored."""

    model_config = ConfigDict(alias_generator=to_camel, extra="ignore")

    def to_patch(self) -> dict[str, Any]:
        """Only the fields set on this object: a JSON merge patch that leaves the other status fields alone."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(StatusModel):
    """One observation of the object's state, as in Kubernetes' metav1.Condition."""

    type: str = Field(description="Type of the condition, e.g. Succeeded.", min_length=1, max_length=316)
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    reason: str | None = Field(
        default=None, description="CamelCase machine-readable reason of the last transition.", max_length=1024
    )
    message: str | None = Field(
        default=None, description="Human-readable details of the last transition.", max_length=32768
    )
    last_transition_time: datetime | None = Field(default=None, description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, description="metadata.generation the condition was set for.", ge=0
    )


# The CRD marks condition lists as maps keyed by type: one entry per type, merged per entry by server-side apply.
CONDITIONS_LIST_MAP: JsonDict = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


@dataclass(frozen=True)
class PrinterColumn:
    """One `additionalPrinterColumns` entry: a column of `kubectl get`."""

    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    description: str
    priority: int = 0

    def to_crd(self) -> dict[str, Any]:
        column: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "jsonPath": self.json_path,
            "description": self.description,
        }
        if self.priority:
            column["priority"] = self.priority
        return column


@dataclass(frozen=True)
class ResourceDefinition:
    """What `crdgen` needs to write one CRD, next to the models it is generated from."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    description: str
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    printer_columns: tuple[PrinterColumn, ...] = field(default=())
    # `selectableFields`: JSON paths of string fields that `--field-selector` (and a watch) can filter on.
    selectable_fields: tuple[str, ...] = field(default=())

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"
