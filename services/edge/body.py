"""The edge's one JSON body parser: the request model validates the raw body."""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from services.edge.errors import bad_request

M = TypeVar("M", bound=BaseModel)


async def parse_body(request: web.Request, model: type[M]) -> M:
    """Validates the raw body in one pass (pydantic parses the JSON itself)."""
    raw = await request.read()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid" or not raw.strip():
            raise bad_request(
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly.)",
                code="invalid_json",
            ) from None
        if first["type"] == "model_type" and not first["loc"]:
            raise bad_request(
                "The request body must be a JSON object.", code="invalid_json"
            ) from None
        raise
