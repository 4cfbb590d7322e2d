"""The base of every response model: frozen, and tolerant of fields it does not know, so
an older client keeps working against a newer server that adds fields."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)
