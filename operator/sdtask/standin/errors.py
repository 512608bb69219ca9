"""Error answers shaped as the real server's (`modules/api/api.py` `api_middleware`/`handle_exception`, FastAPI)."""

from __future__ import annotations

from typing import Any

from sdtask.standin.images import InvalidImageError

Payload = Any


class ApiError(Exception):
    """An error answer: HTTP status and JSON body."""

    def __init__(self, status: int, payload: Payload) -> None:
        super().__init__(f"{status}: {payload}")
        self.status = status
        self.payload = payload


def webui_error(status: int, error: str, errors: str, detail: str = "") -> ApiError:
    """The real server's body for exceptions raised by its handlers."""
    return ApiError(status, {"error": error, "detail": detail, "body": "", "errors": errors})


def validation_error(location: list[str | int], message: str, kind: str) -> ApiError:
    """FastAPI's 422 body for a request that does not fit the endpoint's model."""
    return ApiError(422, {"detail": [{"loc": ["body", *location], "msg": message, "type": kind}]})


def invalid_image_error(where: str, error: InvalidImageError) -> ApiError:
    return webui_error(500, "HTTPException", f"Invalid encoded image: {where}: {error}", detail="Invalid encoded image")
