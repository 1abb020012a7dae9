"""``/v1/runs``: start, list, get, cancel and signal runs — of the key's tenant only.

Writes answer ``202 Accepted`` once the command is on ``apex.commands``; the
orchestrator then decides it. What the gateway can tell at once it refuses at
once: an unknown definition or an input that breaks its contract (422), a run
that the read models show finished already (409), a run of another tenant
(404, as if it did not exist — a key learns nothing of other tenants' runs).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from apex.domain.rules import contract_violations
from apex.gateway.app import GatewayDep, Publisher, Reader
from apex.gateway.errors import ApiError, check_json, check_text, problem
from apex.gateway.keys import ApiKey
from apex.gateway.models import (
    COMMON_ERRORS,
    Accepted,
    CancelRequest,
    Run,
    RunList,
    SignalRequest,
    StartedRun,
    StartRunRequest,
    errors,
)
from apex.gateway.tenancy import owns, run_prefix, tenant_run_id
from apex.queries import MAX_PAGE, BadCursor, RunInfo

router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=COMMON_ERRORS)

RunId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=300,
        description="A run id; the gateway's are `<tenant>:<uuid>`.",
    ),
]

RunStatus = Literal["running", "completed", "failed", "cancelled"]

NOT_FOUND = errors(e404="No run of this key's tenant has this id.")
FINISHED = errors(e409="The read models show the run finished already.")
TOO_LARGE = errors(e413="The command would be over the record limit (APEX_MAX_RECORD_BYTES).")


@router.post(
    "",
    status_code=202,
    responses={
        **errors(e422="Unknown definition, or an input that breaks its contract."),
        **TOO_LARGE,
    },
)
async def start_run(body: StartRunRequest, gw: GatewayDep, key: Publisher) -> StartedRun:
    """Start a run of a registered definition. Same idempotency key, same run."""
    check_text(body.definition, "body.definition")
    check_text(body.idempotency_key, "body.idempotency_key")
    check_text(body.correlation_id, "body.correlation_id")
    check_json(body.input, "body.input")
    definition = await gw.client.get_definition(body.definition, body.version)
    if definition is None:
        which = body.definition if body.version is None else f"{body.definition}@{body.version}"
        raise ApiError(
            422,
            f"no workflow definition {which} is registered",
            [problem("body.definition", "register it first (POST /v1/definitions)")],
        )
    if definition.input:
        violations = contract_violations(definition.input, body.input)
        if violations:
            raise ApiError(
                422,
                f"the input does not match {definition.key}'s input contract",
                [problem("body.input", v) for v in violations],
            )
    run_id = tenant_run_id(key.tenant, body.definition, body.idempotency_key)
    await gw.client.start_run(
        body.definition,
        body.input,
        version=body.version,
        idempotency_key=body.idempotency_key,
        run_id=run_id,
        correlation_id=body.correlation_id,
    )
    return StartedRun(run_id=run_id, definition=body.definition, version=body.version)


@router.get("")
async def list_runs(
    gw: GatewayDep,
    key: Reader,
    definition: Annotated[
        str | None, Query(max_length=200, description="A name, or name@version.")
    ] = None,
    status: Annotated[RunStatus | None, Query(description="Only runs in this status.")] = None,
    since: Annotated[datetime | None, Query(description="Started at or after (ISO 8601).")] = None,
    until: Annotated[datetime | None, Query(description="Started before (ISO 8601).")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[
        str | None, Query(max_length=500, description="next_cursor of the previous page.")
    ] = None,
) -> RunList:
    """The tenant's runs, newest first, a page at a time."""
    if definition is not None:
        check_text(definition, "query.definition")
    try:
        page = await gw.models.list_runs(
            definition=definition,
            status=status,
            since=utc(since, "query.since"),
            until=utc(until, "query.until"),
            run_id_prefix=run_prefix(key.tenant),
            limit=limit,
            cursor=cursor,
        )
    except BadCursor as exc:
        raise ApiError(
            422, "the cursor is not valid", [problem("query.cursor", str(exc))]
        ) from None
    return RunList.of(page)


@router.get("/{run_id}", responses=NOT_FOUND)
async def get_run(run_id: RunId, gw: GatewayDep, key: Reader) -> Run:
    """A run with its steps and approvals, as the read models have it."""
    return Run.of(await find_run(gw, key, run_id))


@router.post("/{run_id}/cancel", status_code=202, responses={**NOT_FOUND, **FINISHED})
async def cancel_run(
    run_id: RunId, gw: GatewayDep, key: Publisher, body: CancelRequest | None = None
) -> Accepted:
    """Cancel a run: running steps are abandoned, nothing new is dispatched."""
    reason = body.reason if body is not None else ""
    check_text(reason, "body.reason")
    await refuse_if_finished(gw, key, run_id, "cancel")
    command_id = await gw.client.cancel(run_id, reason=reason or f"cancelled by {key.name}")
    return Accepted(run_id=run_id, command="CancelRun", command_id=command_id)


@router.post("/{run_id}/signals", status_code=202, responses={**NOT_FOUND, **FINISHED, **TOO_LARGE})
async def send_signal(
    run_id: RunId, body: SignalRequest, gw: GatewayDep, key: Publisher
) -> Accepted:
    """Send a named signal (with a payload) to a run; a step waiting for it goes on."""
    check_text(body.name, "body.name")
    check_json(body.payload, "body.payload")
    if body.correlation_key is not None:
        check_text(body.correlation_key, "body.correlation_key")
    await refuse_if_finished(gw, key, run_id, "signal")
    command_id = await gw.client.signal(run_id, body.name, body.payload, body.correlation_key)
    return Accepted(run_id=run_id, command="SendSignal", command_id=command_id)


# -- shared with the other routers ----------------------------------------------------------------


async def find_run(gw: GatewayDep, key: ApiKey, run_id: str) -> RunInfo:
    run = None
    if owns(key.tenant, run_id):
        run = await gw.models.get_run(run_id)
    if run is None:
        raise ApiError(404, f"no run {run_id!r} of tenant {key.tenant!r} in the read models", [
            problem("path.run_id", "unknown, of another tenant, or not projected yet "
                    "(the read models trail the log by a moment)"),
        ])  # fmt: skip
    return run


async def refuse_if_finished(gw: GatewayDep, key: ApiKey, run_id: str, what: str) -> None:
    """404 for another tenant's run; 409 when the read models show it finished.

    A run the read models do not have yet is let through: it may have been
    started a moment ago. If it does not exist, the orchestrator refuses the
    command (a CommandRejected in the log), and nothing changes.
    """
    if not owns(key.tenant, run_id):
        raise ApiError(404, f"no run {run_id!r} of tenant {key.tenant!r}", [
            problem("path.run_id", f"this key's runs have ids starting {run_prefix(key.tenant)!r}"),
        ])  # fmt: skip
    check_text(run_id, "path.run_id")
    run = await gw.models.get_run(run_id)
    if run is not None and run.finished:
        raise ApiError(
            409,
            f"cannot {what} run {run_id!r}: it is {run.status} already",
            [problem("path.run_id", f"finished at {run.finished_at}")],
        )


def utc(value: datetime | None, where: str) -> datetime | None:
    """An aware UTC time; a time without an offset is taken as UTC."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ApiError(422, "a time is out of range", [problem(where, "out of range")]) from None
