"""The approvals inbox and the decisions: ``/v1/approvals``, ``.../steps/{step}/approve|reject``.

The inbox comes from the read models (the tenant's pending approvals, the
soonest deadline first). A decision is checked against them before it is
sent — a step that was never asked for is a 404, one decided already a 409 —
and is recorded with the key's name as the approver.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from apex.gateway.app import Approver, GatewayDep, InboxReader
from apex.gateway.errors import ApiError, check_text, problem
from apex.gateway.keys import ApiKey
from apex.gateway.models import (
    COMMON_ERRORS,
    Accepted,
    ApproveRequest,
    Inbox,
    InboxEntry,
    RejectRequest,
    errors,
)
from apex.gateway.runs import RunId
from apex.gateway.tenancy import owns, run_prefix
from apex.queries import MAX_PAGE

router = APIRouter(tags=["approvals"], responses=COMMON_ERRORS)

StepId = Annotated[str, Path(min_length=1, max_length=200)]

DECISION_ERRORS = errors(
    e404="No approval was asked for this step (of this tenant's run).",
    e409="The approval was decided already.",
)


@router.get("/v1/approvals")
async def inbox(
    gw: GatewayDep,
    key: InboxReader,
    definition: Annotated[
        str | None, Query(max_length=200, description="A name, or name@version.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> Inbox:
    """Steps of the tenant's runs waiting for a human decision, the soonest deadline first."""
    if definition is not None:
        check_text(definition, "query.definition")
    pending = await gw.models.pending_approvals(
        definition=definition, run_id_prefix=run_prefix(key.tenant), limit=limit
    )
    return Inbox(approvals=[InboxEntry.of(p) for p in pending])


@router.post(
    "/v1/runs/{run_id}/steps/{step_id}/approve", status_code=202, responses=DECISION_ERRORS
)
async def approve(
    run_id: RunId,
    step_id: StepId,
    gw: GatewayDep,
    key: Approver,
    body: ApproveRequest | None = None,
) -> Accepted:
    """Approve the step: it is dispatched (a gate before) or its success stands (a gate after)."""
    comment = body.comment if body is not None else ""
    check_text(comment, "body.comment")
    await _pending(gw, key, run_id, step_id)
    command_id = await gw.client.approve(run_id, step_id, approver=key.name, comment=comment)
    return Accepted(run_id=run_id, command="ApproveStep", command_id=command_id)


@router.post("/v1/runs/{run_id}/steps/{step_id}/reject", status_code=202, responses=DECISION_ERRORS)
async def reject(
    run_id: RunId,
    step_id: StepId,
    gw: GatewayDep,
    key: Approver,
    body: RejectRequest | None = None,
) -> Accepted:
    """Reject the step: it fails with the reason (and the run with it, unless it goes on)."""
    reason = body.reason if body is not None else ""
    check_text(reason, "body.reason")
    await _pending(gw, key, run_id, step_id)
    command_id = await gw.client.reject(
        run_id, step_id, approver=key.name, reason=reason or f"rejected by {key.name}"
    )
    return Accepted(run_id=run_id, command="RejectStep", command_id=command_id)


async def _pending(gw: GatewayDep, key: ApiKey, run_id: str, step_id: str) -> None:
    approval = await gw.models.approval(run_id, step_id) if owns(key.tenant, run_id) else None
    if approval is None:
        raise ApiError(
            404,
            f"no approval was asked for step {step_id!r} of run {run_id!r}",
            [problem("path.step_id", "see the inbox: GET /v1/approvals")],
        )
    if approval.status != "pending":
        by = f" by {approval.decided_by}" if approval.decided_by else ""
        raise ApiError(
            409,
            f"the approval of step {step_id!r} of run {run_id!r} is {approval.status}{by} already",
            [problem("path.step_id", approval.note or approval.status)],
        )
