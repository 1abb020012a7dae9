"""``apex triggers``: turn upstream business events into runs and signals.

``apex triggers check RULES.yaml`` validates a rules file and shows it;
``apex triggers run RULES.yaml`` applies it until SIGTERM/SIGINT. The format
is documented in :mod:`apex.triggers`.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from apex.cli._console import console, print_error
from apex.config import Settings
from apex.triggers import (
    Rule,
    RulesError,
    RuleSet,
    SendSignalAction,
    load_rules,
    rule_to_dict,
)

app = typer.Typer(
    help="Trigger rules: upstream business events (JSON or Avro) start runs or send signals.",
    no_args_is_help=True,
)

RulesFile = Annotated[
    Path,
    typer.Argument(help="YAML rules file (see examples/triggers.yaml).", show_default=False),
]


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="triggers")


@app.command()
def check(
    rules_file: RulesFile,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Validate a rules file and show its rules; exit 1 with every problem when it is invalid."""
    rules = _load(rules_file)
    if as_json:
        typer.echo(json.dumps([rule_to_dict(r) for r in rules.rules], indent=2))
        return
    console.print(_rules_table(rules))


@app.command()
def run(
    rules_file: RulesFile,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    """Apply the rules to the upstream topics until SIGTERM or Ctrl-C.

    Commands go to the commands topic in Kafka transactions with the consumed
    offsets; bad records go to the DLQ with the reason. A new consumer group
    starts at APEX_TRIGGERS_START (latest by default).
    """
    from apex import service as apex_service
    from apex import telemetry

    settings = Settings.from_env()
    telemetry.configure_logging(settings.log_format, log_level.upper())
    rules = _load(rules_file)
    # Imported here: the streams package (and its Kafka clients) only when running.
    from streams.triggers import TransactionFailed, TriggerService

    try:
        service = TriggerService(settings, rules)
    except ValueError as exc:
        print_error("apex triggers run: cannot start", str(exc))
        raise typer.Exit(2) from None
    telemetry.setup(settings, "apex-triggers")
    try:
        apex_service.run(_run_until_signal(service), settings)
    except TransactionFailed as exc:
        print_error("apex triggers run failed", str(exc))
        raise typer.Exit(1) from None
    finally:
        telemetry.shutdown()


# -- helpers ---------------------------------------------------------------------------------


def _load(path: Path) -> RuleSet:
    try:
        return load_rules(path)
    except FileNotFoundError:
        print_error("apex triggers: no such file", str(path))
        raise typer.Exit(1) from None
    except RulesError as exc:
        print_error("apex triggers: invalid rules", str(exc))
        raise typer.Exit(1) from None


async def _run_until_signal(service: Any) -> None:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, service.stop)
    try:
        await service.run()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _rules_table(rules: RuleSet) -> Table:
    table = Table(title=f"Trigger rules in {escape(rules.source)}", show_lines=True)
    table.add_column("rule", no_wrap=True)
    for column in ("topic", "when", "does", "key", "with"):
        table.add_column(column, overflow="fold")
    for rule in rules.rules:
        table.add_row(*(escape(cell) for cell in _row(rule)))
    return table


def _row(rule: Rule) -> tuple[str, str, str, str, str, str]:
    data = rule_to_dict(rule)
    topic = f"{rule.topic}\n({rule.format})" if rule.format == "json" else (
        f"{rule.topic}\n(avro: {rule.schema})"
    )  # fmt: skip
    when = "\n".join(f"{f.path} {f.op} {json.dumps(f.value)}" for f in rule.when) or "always"
    action = rule.action
    if isinstance(action, SendSignalAction):
        does = f"signal {action.signal}\nto {action.definition}"
        key = f"correlation\n{action.correlation}"
        given = data["send_signal"]["payload"]
    else:
        version = "latest" if action.version is None else action.version
        does = f"start\n{action.definition}@{version}"
        key = f"idempotency\n{action.idempotency_key}"
        given = data["start_run"]["input"]
    return rule.name, topic, when, does, key, _shown(given)


def _shown(template: Any) -> str:
    """An input or payload template, one field per line."""
    if isinstance(template, dict) and template:
        return "\n".join(f"{name}: {_shown(value)}" for name, value in template.items())
    if isinstance(template, str):
        return template
    return json.dumps(template, ensure_ascii=False)
