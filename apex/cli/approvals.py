"""``apex approvals``: the inbox of steps waiting for a human, and the decisions.

The inbox is read from the read models. ``approve`` and ``reject`` publish
the decision as a command; when the read models show the approval decided
already (or the run over) they refuse, and when they do not have it yet they
send anyway and say so — the orchestrator is the judge.
"""

from __future__ import annotations

import getpass
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from apex.cli._apex import JsonOption, echo_json, shown_time, with_client
from apex.cli._console import console, err_console

app = typer.Typer(
    help="Approval gates: list what waits for a decision, approve or reject it.",
    no_args_is_help=True,
)

RunIdArgument = Annotated[str, typer.Argument(help="The run's id.", show_default=False)]
StepIdArgument = Annotated[str, typer.Argument(help="The gated step's id.", show_default=False)]
ApproverOption = Annotated[
    str | None, typer.Option("--as", help="Who decides (default: your user name).")
]


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="approvals")


@app.command("list")
def list_pending(
    definition: Annotated[
        str | None, typer.Option("--definition", "-d", help="A name, or name@version.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=500)] = 100,
    as_json: JsonOption = False,
) -> None:
    """Steps waiting for approval, the soonest deadline first."""

    async def action(client: Any) -> list[Any]:
        return list(await client.pending_approvals(definition=definition, limit=limit))

    pending = with_client(action, what="apex approvals list")
    if as_json:
        echo_json([p.to_dict() for p in pending])
        return
    if not pending:
        console.print("Nothing waits for approval.")
        return
    table = Table(title="Waiting for approval")
    for column in ("run id", "step", "definition", "gate", "requested", "deadline"):
        table.add_column(column, overflow="fold")
    for p in pending:
        table.add_row(
            escape(p.run_id),
            escape(p.step_id),
            escape(f"{p.definition_name}@{p.definition_version}"),
            p.when,
            shown_time(p.requested_at),
            shown_time(p.deadline_at) or "none",
        )
    console.print(table)
    console.print("decide: [bold]apex approvals approve|reject RUN_ID STEP[/]")


@app.command()
def approve(
    run_id: RunIdArgument,
    step_id: StepIdArgument,
    approver: ApproverOption = None,
    comment: Annotated[str, typer.Option(help="Recorded with the approval.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Approve a gated step: it is dispatched (gate before) or its success stands (after)."""
    who = approver or getpass.getuser()

    async def action(client: Any) -> str:
        await _check_pending(client, run_id, step_id, quiet=as_json)
        command_id: str = await client.approve(run_id, step_id, approver=who, comment=comment)
        return command_id

    command_id = with_client(action, what="apex approvals approve")
    _done("ApproveStep", "approval", run_id, step_id, command_id, as_json)


@app.command()
def reject(
    run_id: RunIdArgument,
    step_id: StepIdArgument,
    approver: ApproverOption = None,
    reason: Annotated[str, typer.Option(help="Why: the step fails with it.")] = "",
    as_json: JsonOption = False,
) -> None:
    """Reject a gated step: it fails with the reason."""
    who = approver or getpass.getuser()

    async def action(client: Any) -> str:
        await _check_pending(client, run_id, step_id, quiet=as_json)
        command_id: str = await client.reject(run_id, step_id, approver=who, reason=reason)
        return command_id

    command_id = with_client(action, what="apex approvals reject")
    _done("RejectStep", "rejection", run_id, step_id, command_id, as_json)


async def _check_pending(client: Any, run_id: str, step_id: str, *, quiet: bool) -> None:
    approval = await client.read_models.approval(run_id, step_id)
    if approval is None:
        if not quiet:
            err_console.print(
                f"[yellow]note:[/] the read models have no approval of step {escape(step_id)} "
                f"of run {escape(run_id)} (yet); sending anyway"
            )
        return
    if approval.status != "pending":
        by = f" by {approval.decided_by}" if approval.decided_by else ""
        raise ValueError(
            f"the approval of step {step_id!r} of run {run_id!r} is {approval.status}{by} already"
        )


def _done(
    command: str, what: str, run_id: str, step_id: str, command_id: str, as_json: bool
) -> None:
    if as_json:
        echo_json(
            {"run_id": run_id, "step_id": step_id, "command": command, "command_id": command_id}
        )
    else:
        console.print(f"{what} of step [bold]{escape(step_id)}[/] of run {escape(run_id)} sent")
