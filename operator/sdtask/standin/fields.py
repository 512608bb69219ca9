"""Reading JSON request fields the way pydantic v1 (the real server's FastAPI models) coerces and rejects them."""

from __future__ import annotations

import json
from typing import Any

from sdtask.standin.errors import ApiError, validation_error


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise ApiError(422, {"detail": [{"loc": ["body"], "msg": "field required", "type": "value_error.missing"}]})
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        position = getattr(error, "pos", 0)
        raise validation_error([position], f"invalid JSON: {error}", "value_error.jsondecode") from error
    if not isinstance(value, dict):
        raise validation_error([], "value is not a valid dict", "type_error.dict")
    return value


def int_field(
    body: dict[str, Any], key: str, default: int, minimum: int | None = None, maximum: int | None = None
) -> int:
    value = body.get(key)
    if value is None:
        return default
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    if number is None:
        raise validation_error([key], "value is not a valid integer", "type_error.integer")
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise validation_error([key], f"ensure {minimum} <= value <= {maximum}", "value_error.number.not_in_range")
    return number


def float_field(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        raise validation_error([key], "value is not a valid float", "type_error.float")
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise validation_error([key], "value is not a valid float", "type_error.float") from error


def str_field(body: dict[str, Any], key: str, default: str) -> str:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise validation_error([key], "str type expected", "type_error.str")
    return value


def bool_field(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise validation_error([key], "value could not be parsed to a boolean", "type_error.bool")


def dict_field(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise validation_error([key], "value is not a valid dict", "type_error.dict")
    return value
