"""The base of every response model: frozen, and tolerant of fields it does not know, so
an older client keeps working against a newer server that adds fields."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


def examples(*bodies: Any) -> ConfigDict:
    """The ``model_config`` of a model documented by ``bodies``: the OpenAPI document
    shows them as the schema's examples."""
    return ConfigDict(json_schema_extra={"examples": list(bodies)})
