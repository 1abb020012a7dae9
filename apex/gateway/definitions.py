"""``/v1/definitions``: register, list and show workflow definitions.

Definitions are shared by every tenant (registering needs the ``admin``
scope). The body of ``POST`` is a definition in the documented format
(``schemas/definition.schema.json``, which the OpenAPI document embeds); every
problem — of form or of meaning — comes back in one 422, each with its step.
A ``name@version`` is immutable: registering the same one again with other
content is a 409, since runs already started on it would disagree with runs
started later.
"""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response

from apex import codec
from apex.config import REPO_ROOT
from apex.domain.definition_format import definition_from_dict, definition_to_dict
from apex.domain.definitions import WorkflowDefinition
from apex.domain.errors import DefinitionError, Problem
from apex.domain.validation import ensure_valid
from apex.gateway.app import Admin, GatewayDep, Reader
from apex.gateway.errors import ApiError, check_json, problem
from apex.gateway.models import (
    COMMON_ERRORS,
    INT32,
    DefinitionList,
    DefinitionSummary,
    RegisteredDefinition,
    errors,
)

router = APIRouter(prefix="/v1/definitions", tags=["definitions"], responses=COMMON_ERRORS)

DEFINITION_SCHEMA = REPO_ROOT / "schemas" / "definition.schema.json"
SCHEMA_NAME = "WorkflowDefinition"


@router.post(
    "",
    status_code=201,
    response_model=RegisteredDefinition,
    responses={
        200: {"model": RegisteredDefinition, "description": "Registered already, identical."},
        **errors(
            e409="name@version is registered with other content.",
            e422="Every problem of the definition, each with its step and field.",
        ),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{SCHEMA_NAME}"}}
            },
        }
    },
)
async def register_definition(
    request: Request, response: Response, gw: GatewayDep, key: Admin
) -> RegisteredDefinition:
    """Register a workflow definition (JSON body, the format of `apex definitions register`)."""
    data = await _json_body(request)
    check_json(data, "body")
    if not isinstance(data, dict):
        raise ApiError(
            422,
            "a workflow definition is a JSON object",
            [problem("body", "expected an object with name, version and steps")],
        )
    definition = ensure_valid(definition_from_dict(data))  # DefinitionError: 422
    _check_encodable(definition)
    existing = await gw.client.get_definition(definition.name, definition.version)
    if existing is not None:
        if existing == definition:
            response.status_code = 200
            return _registered(definition, created=False)
        raise ApiError(
            409,
            f"definition {definition.key} is registered already, with other content",
            [
                problem(
                    "body.version",
                    f"register the changed definition as version "
                    f"{await _next_version(gw, definition.name)} (versions are immutable)",
                )
            ],
        )
    try:
        await gw.client.register(definition)
    except ValueError as exc:  # a capability that cannot name a topic
        raise ApiError(
            422, "the definition cannot be registered", [problem("body", str(exc))]
        ) from None
    return _registered(definition, created=True)


@router.get("", response_model=DefinitionList)
async def list_definitions(gw: GatewayDep, key: Reader) -> DefinitionList:
    """Every registered version of every definition, by name then version."""
    return DefinitionList(definitions=[_summary(d) for d in await gw.client.definitions()])


@router.get(
    "/{name}",
    responses=errors(e404="No such definition (or version)."),
)
async def show_definition(
    gw: GatewayDep,
    key: Reader,
    name: Annotated[str, Path(min_length=1, max_length=200)],
    version: Annotated[int | None, Query(ge=1, le=INT32, description="Default: latest.")] = None,
) -> dict[str, Any]:
    """One definition in the documented format (the latest version unless one is given)."""
    definition = await gw.client.get_definition(name, version)
    if definition is None:
        which = name if version is None else f"{name}@{version}"
        known = sorted({d.name for d in await gw.client.definitions()})
        raise ApiError(
            404,
            f"no workflow definition {which} is registered",
            [problem("path.name", f"registered: {', '.join(known[:20]) or 'none'}")],
        )
    return definition_to_dict(definition)


# -- helpers ----------------------------------------------------------------------------------


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(
            422, "the body is not JSON", [problem("body", f"cannot be parsed as JSON: {exc}")]
        ) from None


def _check_encodable(definition: WorkflowDefinition) -> None:
    """Avro ints are 32 or 64 bits; the validator checks meaning, not size."""
    try:
        codec.encode_definition(definition)
    except (codec.CodecError, ValueError, OverflowError, TypeError) as exc:
        raise DefinitionError(
            [Problem(None, "", f"cannot be encoded (a number out of range?): {exc}")]
        ) from None


async def _next_version(gw: Any, name: str) -> int:
    versions = [d.version for d in await gw.client.definitions() if d.name == name]
    return max(versions, default=0) + 1


def _registered(definition: WorkflowDefinition, *, created: bool) -> RegisteredDefinition:
    return RegisteredDefinition(
        key=definition.key, name=definition.name, version=definition.version, created=created
    )


def _summary(definition: WorkflowDefinition) -> DefinitionSummary:
    return DefinitionSummary(
        key=definition.key,
        name=definition.name,
        version=definition.version,
        description=definition.description,
        steps=len(definition.steps),
        capabilities=sorted({s.capability for s in definition.steps}),
    )


@cache
def openapi_components() -> dict[str, Any]:
    """``schemas/definition.schema.json`` as OpenAPI components (its ``$defs`` flattened)."""
    schema = json.loads(DEFINITION_SCHEMA.read_text())
    defs = schema.pop("$defs", {})
    prefix = f"{SCHEMA_NAME}_"

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: (
                    re.sub(r"^#/\$defs/", f"#/components/schemas/{prefix}", v)
                    if k == "$ref" and isinstance(v, str)
                    else rewrite(v)
                )
                for k, v in node.items()
                if k != "$schema"
            }
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    components = {f"{prefix}{name}": rewrite(body) for name, body in defs.items()}
    components[SCHEMA_NAME] = rewrite(schema)
    return components
