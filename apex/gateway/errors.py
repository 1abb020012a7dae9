"""Every error the gateway returns: a 4xx with what was wrong and where.

The body is always ``{"detail": "<one sentence>", "problems": [...]}`` (a
503 too, when PostgreSQL or Kafka cannot answer);
``problems`` (possibly empty) lists each thing wrong with its place: ``where``
is a path into the request (``body.input.priority``, ``query.since``,
``path.run_id``) and, for a workflow definition, ``step`` and ``field`` name
the step and the field inside it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError

from apex.domain.errors import DefinitionError
from apex.kafka.clients import RecordTooLarge

__all__ = ["ApiError", "check_json", "install_error_handlers", "problem"]

log = logging.getLogger("apex.gateway")

MAX_DEPTH = 64
"""Deepest nesting a JSON value (input, payload, event) may have."""


class ApiError(Exception):
    """Raised by a route: becomes ``status`` with ``detail`` and ``problems``."""

    def __init__(
        self,
        status: int,
        detail: str,
        problems: Sequence[dict[str, Any]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.problems = list(problems)
        self.headers = headers


def problem(where: str, message: str) -> dict[str, Any]:
    return {"where": where, "message": message}


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(DefinitionError, _definition_error)  # type: ignore[arg-type]
    app.add_exception_handler(DBAPIError, _database_unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(KafkaError, _kafka_unavailable)
    app.add_exception_handler(RecordTooLarge, _too_large)  # type: ignore[arg-type]


async def _too_large(request: Request, exc: RecordTooLarge) -> JSONResponse:
    """A command over the record limit (a huge input or payload): a 413, nothing sent."""
    limit = problem("body", "send less, or raise APEX_MAX_RECORD_BYTES with the broker's limit")
    return JSONResponse({"detail": str(exc), "problems": [limit]}, 413)


async def _database_unavailable(request: Request, exc: DBAPIError) -> JSONResponse:
    """PostgreSQL failed: down, or the read-model schema missing. A 503, said plainly."""
    log.error("%s %s: PostgreSQL failed: %s", request.method, request.url.path, exc.orig)
    reason = str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__
    return JSONResponse(
        {
            "detail": "the read models are not available",
            "problems": [
                problem(
                    "server",
                    f"PostgreSQL: {reason}; is it up, and is the read-model schema migrated "
                    "(`apex projections migrate`)?",
                )
            ],
        },
        503,
    )


async def _kafka_unavailable(request: Request, exc: KafkaError) -> JSONResponse:
    log.error("%s %s: Kafka failed: %r", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": "Kafka is not available", "problems": [problem("server", repr(exc))]}, 503
    )


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(
        {"detail": exc.detail, "problems": exc.problems}, exc.status, headers=exc.headers
    )


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [
        problem(".".join(str(part) for part in error.get("loc", ())), error.get("msg", "invalid"))
        for error in exc.errors()
    ]
    count = len(problems)
    detail = f"the request is invalid ({count} problem{'' if count == 1 else 's'})"
    return JSONResponse({"detail": detail, "problems": problems}, 422)


async def _definition_error(request: Request, exc: DefinitionError) -> JSONResponse:
    return JSONResponse(definition_error_body(exc), 422)


def definition_error_body(exc: DefinitionError) -> dict[str, Any]:
    count = len(exc.problems)
    return {
        "detail": f"invalid workflow definition ({count} problem{'' if count == 1 else 's'})",
        "problems": [
            {
                "where": "body"
                + (f".steps[{p.step_id}]" if p.step_id is not None else "")
                + (f".{p.field}" if p.field else ""),
                "step": p.step_id,
                "field": p.field,
                "message": p.message,
            }
            for p in exc.problems
        ],
    }


def check_json(value: Any, where: str) -> None:
    """Refuse what the JSON parser lets through but Avro or PostgreSQL cannot hold.

    NUL characters (PostgreSQL text and JSONB refuse ``\\u0000``), lone UTF-16
    surrogates (not encodable as UTF-8), non-finite numbers (``1e999`` parses
    as infinity) and nesting deeper than :data:`MAX_DEPTH`. Raises a 422
    :class:`ApiError` naming the place.
    """
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(
                422,
                "a JSON value is nested too deeply",
                [problem(path, f"nested deeper than {MAX_DEPTH} levels")],
            )
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ApiError(422, "a number is out of range", [problem(path, "not a finite number")])
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_text(str(key), f"{path}.{key!s:.40}")
                stack.append((child, f"{path}.{key!s:.40}", depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


def check_text(value: str, where: str) -> None:
    """The text checks of :func:`check_json`, for a plain string field."""
    _check_text(value, where)


def _check_text(value: str, where: str) -> None:
    if "\x00" in value:
        raise ApiError(
            422,
            "text holds a NUL character",
            [problem(where, "must not contain NUL (\\u0000): PostgreSQL cannot store it")],
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            422,
            "text is not valid Unicode",
            [problem(where, "holds a lone UTF-16 surrogate, which is not valid UTF-8")],
        ) from None
