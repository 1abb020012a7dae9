"""The gateway's JSON shapes: request bodies (validated) and responses (documented).

They are the OpenAPI document's schemas; the bounds here (lengths, integer
ranges) are what Avro and PostgreSQL can hold, so a request that passes them
never fails further in.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from apex.queries import ApprovalInfo, PendingApproval, RunInfo, RunPage, StepInfo

INT32 = 2**31 - 1

Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]
"""A definition, signal or step name: one line of text."""
Text = Annotated[str, Field(max_length=2000)]
Version = Annotated[int, Field(ge=1, le=INT32)]

JSONValue = Any


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors -----------------------------------------------------------------------------------


class Problem(BaseModel):
    where: str = Field(description="Where in the request: body.input.x, query.since, path.run_id.")
    message: str
    step: str | None = Field(None, description="For a workflow definition: the step's id.")
    field: str | None = Field(None, description="For a workflow definition: the field in it.")


class ErrorBody(BaseModel):
    """Every 4xx: what was wrong, and each problem with its place."""

    detail: str
    problems: list[Problem] = []


def errors(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses: ``errors(e404="...", e409="...")``."""
    return {
        int(status.removeprefix("e")): {"model": ErrorBody, "description": description}
        for status, description in described.items()
    }


COMMON_ERRORS = errors(
    e401="No API key, or not a valid one.",
    e403="The key lacks the scope this route needs.",
    e422="The request is invalid: each problem with its place.",
)


# -- requests ---------------------------------------------------------------------------------


class StartRunRequest(Body):
    definition: Name = Field(description="Name of a registered workflow definition.")
    version: Version | None = Field(None, description="Version to run; default: the latest.")
    input: JSONValue = Field(
        default_factory=dict, description="The run input; must satisfy the definition's contract."
    )
    idempotency_key: Annotated[str, Field(max_length=200)] = Field(
        "", description="Asking twice with one key starts one run (per tenant)."
    )
    correlation_id: Annotated[str, Field(max_length=200)] = Field(
        "", description="Follows the business transaction through events and results."
    )


class SignalRequest(Body):
    name: Name = Field(description="The signal's name, as a step's wait_for_signal names it.")
    payload: JSONValue = Field(None, description="Any JSON value handed to the waiting step.")
    correlation_key: Annotated[str, Field(max_length=200)] | None = None


class CancelRequest(Body):
    reason: Text = ""


class ApproveRequest(Body):
    comment: Text = ""


class RejectRequest(Body):
    reason: Text = ""


# -- responses --------------------------------------------------------------------------------


class Accepted(BaseModel):
    """The command is on ``apex.commands``; the orchestrator decides it (results tell how)."""

    run_id: str
    command: str
    command_id: str


class StartedRun(BaseModel):
    run_id: str
    definition: str
    version: int | None = Field(description="As asked; null: the latest when it starts.")


class RegisteredDefinition(BaseModel):
    key: str
    name: str
    version: int
    created: bool = Field(description="False when this exact definition was registered already.")


class DefinitionSummary(BaseModel):
    key: str
    name: str
    version: int
    description: str
    steps: int
    capabilities: list[str]


class DefinitionList(BaseModel):
    definitions: list[DefinitionSummary]


class Step(BaseModel):
    step_id: str
    status: str
    attempt: int
    started_at: datetime | None
    finished_at: datetime | None
    output: JSONValue
    error: str | None

    @classmethod
    def of(cls, s: StepInfo) -> Step:
        return cls(**{f: getattr(s, f) for f in cls.model_fields})


class Approval(BaseModel):
    step_id: str
    when: str
    status: str
    requested_at: datetime
    deadline_at: datetime | None
    decided_by: str | None
    decided_at: datetime | None
    note: str | None

    @classmethod
    def of(cls, a: ApprovalInfo) -> Approval:
        return cls(**{f: getattr(a, f) for f in cls.model_fields})


class Run(BaseModel):
    run_id: str
    definition: str
    definition_name: str
    definition_version: int
    status: str
    input: JSONValue
    outputs: JSONValue
    error: str | None
    correlation_id: str
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None
    last_seq: int
    steps: list[Step] = []
    approvals: list[Approval] = []

    @classmethod
    def of(cls, r: RunInfo) -> Run:
        return cls(
            run_id=r.run_id,
            definition=r.definition,
            definition_name=r.definition_name,
            definition_version=r.definition_version,
            status=r.status,
            input=r.input,
            outputs=r.outputs,
            error=r.error,
            correlation_id=r.correlation_id,
            started_at=r.started_at,
            finished_at=r.finished_at,
            updated_at=r.updated_at,
            last_seq=r.last_seq,
            steps=[Step.of(s) for s in r.steps],
            approvals=[Approval.of(a) for a in r.approvals],
        )


class RunList(BaseModel):
    runs: list[Run]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last.")

    @classmethod
    def of(cls, page: RunPage) -> RunList:
        return cls(runs=[Run.of(r) for r in page.runs], next_cursor=page.next_cursor)


class InboxEntry(BaseModel):
    run_id: str
    step_id: str
    definition: str
    when: str
    requested_at: datetime
    deadline_at: datetime | None

    @classmethod
    def of(cls, p: PendingApproval) -> InboxEntry:
        return cls(
            run_id=p.run_id,
            step_id=p.step_id,
            definition=f"{p.definition_name}@{p.definition_version}",
            when=p.when,
            requested_at=p.requested_at,
            deadline_at=p.deadline_at,
        )


class Inbox(BaseModel):
    approvals: list[InboxEntry]


class PublishedEvent(BaseModel):
    topic: str
    partition: int
    offset: int


class LoggedEvent(BaseModel):
    seq: int
    type: str
    occurred_at: datetime
    causation_id: str
    correlation_id: str
    data: dict[str, JSONValue] = Field(description="The event's own fields.")
    partition: int
    offset: int


class RunEvents(BaseModel):
    run_id: str
    source: Literal["index", "scan"] = Field(
        description="index: located by the read models' event index; scan: the run's "
        "partition was read (the projection has not indexed the run yet)."
    )
    complete: bool = Field(description="False when a scan stopped before the partition's start.")
    events: list[LoggedEvent]


class Health(BaseModel):
    status: str
