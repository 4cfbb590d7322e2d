"""``/health``, ``/ready``, ``/metrics``: for orchestrators and monitoring, never keyed."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mab_client.models import HealthPublic, ReadyPublic
from services.decider.errors import OrjsonResponse
from services.decider.runtime import RuntimeDep

router = APIRouter(tags=["ops"])


@router.get(
    "/health",
    response_model=HealthPublic,
    summary="Liveness",
    description="Answers without any I/O: the process is up and serving HTTP.",
)
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    response_model=ReadyPublic,
    summary="Readiness",
    description="200 only when Redis answers PING and Kafka answers a metadata request "
    "listing our topics, each within the ready timeout (1 s); else 503 naming the failure. "
    "The verdict is reused for `MAB_READY_CACHE_S` (1 s), so probes cannot amplify load. "
    "`auth` says whether admin calls need the admin key (`keys`) or not (`open`, with a "
    "`warning`).",
    responses={
        503: {
            "model": ReadyPublic,
            "description": "A dependency is down.",
            "content": {
                "application/json": {
                    "example": {
                        "status": "not_ready",
                        "redis": "ok",
                        "kafka": "no metadata within 1.0s",
                        "auth": "keys",
                    }
                }
            },
        }
    },
)
async def ready(rt: RuntimeDep) -> Response:
    body = await rt.readiness.verdict()
    code = 200 if body["status"] == "ready" else 503
    return OrjsonResponse({**body, **rt.readiness_auth()}, status_code=code)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Request latency histograms per route, decisions per strategy, rewards "
    "per outcome, decision-event delivery counters and process metrics, in the "
    "Prometheus text format. Open like /health: restrict it by network in production.",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(rt: RuntimeDep) -> Response:
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)
