"""Ceilings measured in the same run as the decider: what the framework alone can do.

``fastapi_app``: a FastAPI route returning a constant JSON body (same server flags as the
decider). ``raw_app``: a bare ASGI callable returning the same body (uvicorn's ceiling).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI

BODY = b'{"experiment_id":"x","arm_id":"a","strategy":"thompson","metadata":{"arms":["a","b"]}}'

fastapi_app = FastAPI()


@fastapi_app.get("/decision")
async def constant() -> dict[str, Any]:
    return {
        "experiment_id": "x",
        "arm_id": "a",
        "strategy": "thompson",
        "metadata": {"arms": ["a", "b"]},
    }


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BODY})
