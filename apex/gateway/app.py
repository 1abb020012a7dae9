"""The FastAPI application: state, lifespan, authentication and the routers.

``create_app(settings, options)`` builds it; the lifespan connects what every
request shares — one :class:`~apex.client.ApexClient` (Kafka producer and the
definitions reader), one SQLAlchemy engine (read models and API keys) and one
reader of ``apex.events`` — and creates the ``api_keys`` table if missing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from apex.client import ApexClient
from apex.config import Settings
from apex.gateway.errors import ApiError, install_error_handlers
from apex.gateway.keys import ApiKey, KeyStore, Scope
from apex.gateway.models import Health
from apex.gateway.settings import GatewaySettings
from apex.kafka.event_log import EventLogReader
from apex.queries import ReadModels

__all__ = ["Gateway", "create_app", "gateway", "require"]

API_KEY_HEADER = "X-API-Key"

DESCRIPTION = """\
Start and follow Apex workflow runs over HTTP: JSON in and out, Avro on the topics.

**Authentication**: every route but `/healthz` needs an API key in the
`X-API-Key` header (`apex gateway keys create --tenant T --scope read ...`).
Scopes: `publish` (start, signal, cancel, business events), `read` (definitions,
runs, events, results, inbox), `approve` (approve and reject steps), `admin`
(register definitions). A key sees only its tenant's runs: a run started
through the gateway has the id `<tenant>:<uuid>`.

**Asynchronous writes**: a `202 Accepted` means the command is on the commands
topic; the orchestrator decides it. Follow the outcome with
`GET /v1/runs/{run_id}` (read models, a little behind the log) or the result
stream `GET /v1/results` (server-sent events).

**Errors** are 4xx with `{"detail": ..., "problems": [{"where": ..., "message": ...}]}`.
"""


@dataclass
class Gateway:
    """What the routes share; one per application, made by the lifespan."""

    settings: Settings
    options: GatewaySettings
    client: ApexClient
    engine: AsyncEngine
    models: ReadModels
    keys: KeyStore
    log: EventLogReader
    log_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """``log`` is one consumer: one reader at a time."""


def create_app(
    settings: Settings | None = None,
    options: GatewaySettings | None = None,
    *,
    engine: AsyncEngine | None = None,
) -> FastAPI:
    """The gateway application (serve it with uvicorn: ``apex gateway``)."""
    settings = settings or Settings.from_env()
    options = options or GatewaySettings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_engine = engine is None
        db = engine or create_async_engine(settings.sqlalchemy_url, pool_pre_ping=True)
        client = ApexClient(settings, engine=db)
        log = EventLogReader(settings)
        keys = KeyStore(db, options.schema)
        try:
            await keys.create_tables()
            await client.start()
            await log.start()
            app.state.gateway = Gateway(
                settings=settings,
                options=options,
                client=client,
                engine=db,
                models=ReadModels(db, settings.read_model_schema),
                keys=keys,
                log=log,
            )
            yield
        finally:
            await _quietly(log.stop)
            await _quietly(client.stop)
            if own_engine:
                await db.dispose()

    app = FastAPI(
        title="Apex gateway",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    _trace_requests(app)

    from apex.gateway import approvals, definitions, runs, streams

    for module in (definitions, runs, approvals, streams):
        app.include_router(module.router)
    _embed_definition_schema(app, definitions.openapi_components())

    @app.get("/healthz", tags=["health"])
    async def healthz() -> Health:
        """Liveness: the process answers (no key needed)."""
        return Health(status="ok")

    return app


def _trace_requests(app: FastAPI) -> None:
    """A server span per request, child of the caller's ``traceparent``: with the
    client's producer spans, a run started over HTTP is one trace from the request on."""
    from apex import telemetry

    @app.middleware("http")
    async def trace_request(request: Any, call_next: Any) -> Any:
        with telemetry.http_server_span(request.method, request.url.path, request.headers) as span:
            response = await call_next(request)
            if span is not None:
                route = request.scope.get("route")
                if route is not None:
                    span.update_name(f"{request.method} {route.path}")
                span.set_attribute("http.response.status_code", response.status_code)
            return response


def _embed_definition_schema(app: FastAPI, components: dict[str, Any]) -> None:
    """Add the workflow-definition JSON Schema to the OpenAPI document's components."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _quietly(stop: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with contextlib.suppress(Exception):  # one failed close must not hide the others
        await stop()


# -- dependencies -----------------------------------------------------------------------------


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


_api_key = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="An Apex API key: `apex_<id>_<secret>` (see `apex gateway keys create`).",
)


async def _authenticated(
    request: Request, presented: Annotated[str | None, Security(_api_key)] = None
) -> ApiKey:
    if not presented:
        raise ApiError(
            401,
            f"no API key: send one in the {API_KEY_HEADER} header",
            headers={"WWW-Authenticate": API_KEY_HEADER},
        )
    key = await gateway(request).keys.verify(presented)
    if key is None:
        raise ApiError(
            401,
            "the API key is not valid: it is malformed, unknown or revoked",
            headers={"WWW-Authenticate": API_KEY_HEADER},
        )
    return key


def require(*scopes: Scope) -> Callable[..., Coroutine[Any, Any, ApiKey]]:
    """A dependency: the request's key, which must hold one of ``scopes``."""
    wanted = " or ".join(f"'{s.value}'" for s in scopes)

    async def dependency(key: Annotated[ApiKey, Depends(_authenticated)]) -> ApiKey:
        if not key.scopes.intersection(scopes):
            held = ", ".join(sorted(s.value for s in key.scopes)) or "none"
            raise ApiError(
                403,
                f"API key {key.key_id} ({key.name}) lacks the {wanted} scope for this request "
                f"(it has: {held}); create one with `apex gateway keys create --tenant "
                f"{key.tenant} --scope {scopes[0].value}`",
            )
        return key

    return dependency


GatewayDep = Annotated[Gateway, Depends(gateway)]
Reader = Annotated[ApiKey, Depends(require(Scope.READ))]
Publisher = Annotated[ApiKey, Depends(require(Scope.PUBLISH))]
Approver = Annotated[ApiKey, Depends(require(Scope.APPROVE))]
InboxReader = Annotated[ApiKey, Depends(require(Scope.READ, Scope.APPROVE))]
Admin = Annotated[ApiKey, Depends(require(Scope.ADMIN))]
