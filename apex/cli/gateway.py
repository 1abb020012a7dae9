"""``apex gateway``: the HTTP gateway, and its API keys.

``apex gateway`` serves the API (uvicorn) on APEX_GATEWAY_HOST:APEX_GATEWAY_PORT
(127.0.0.1:18080 by default); the OpenAPI document is at ``/openapi.json`` and
the interactive docs at ``/docs``. ``apex gateway keys create`` makes an API key
and prints it once: only its salted hash is stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from apex.cli._apex import JsonOption, echo_json, fail, shown_time
from apex.cli._console import console
from apex.config import Settings

T = TypeVar("T")

app = typer.Typer(invoke_without_command=True)
keys_app = typer.Typer(
    help="API keys: a tenant and scopes each; stored hashed, shown once.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


class ScopeName(StrEnum):
    publish = "publish"
    read = "read"
    approve = "approve"
    admin = "admin"


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="gateway")


@app.callback()
def gateway(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option(help="Listen address (default: APEX_GATEWAY_HOST, 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Listen port (default: APEX_GATEWAY_PORT, 18080).", min=1, max=65535),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """The HTTP gateway: serve it until SIGTERM or Ctrl-C (no subcommand), or manage API keys.

    Routes under /v1: definitions, runs, approvals, a run's events, the result
    stream (server-sent events) and business events for upstream topics listed
    in APEX_GATEWAY_TOPICS. Every route but /healthz needs an API key in the
    X-API-Key header. The api_keys table (schema APEX_GATEWAY_SCHEMA) is
    created on start.
    """
    if ctx.invoked_subcommand is not None:
        return
    from apex.gateway.server import serve
    from apex.gateway.settings import GatewaySettings

    try:
        options = GatewaySettings.from_env()
    except ValueError as exc:
        fail("apex gateway: bad settings", str(exc), code=2)
    if host is not None:
        options = replace(options, host=host)
    if port is not None:
        options = replace(options, port=port)
    serve(Settings.from_env(), options, log_level=log_level)


@keys_app.command("create")
def create_key(
    tenant: Annotated[
        str, typer.Option(help="The tenant whose runs the key sees.", show_default=False)
    ],
    scope: Annotated[
        list[ScopeName],
        typer.Option(
            "--scope",
            help="A scope; repeat for several: publish, read, approve, admin.",
            show_default=False,
        ),
    ],
    name: Annotated[
        str, typer.Option(help="A name for the key (recorded as the approver of decisions).")
    ] = "",
    as_json: JsonOption = False,
) -> None:
    """Create an API key and print it — the only time it is shown."""
    created = _with_keys(lambda store: store.create(tenant, [s.value for s in scope], name))
    key = created.key
    if as_json:
        echo_json(
            {
                "key": created.secret_key,
                "key_id": key.key_id,
                "tenant": key.tenant,
                "scopes": sorted(s.value for s in key.scopes),
                "name": key.name,
            }
        )
        return
    console.print(
        f"API key [bold]{key.key_id}[/] ({escape(key.name)}) for tenant [bold]"
        f"{escape(key.tenant)}[/], scopes {', '.join(sorted(s.value for s in key.scopes))}:"
    )
    typer.echo(created.secret_key)
    console.print("[yellow]Store it now: it is not shown again (only its hash is kept).[/]")


@keys_app.command("list")
def list_keys(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Every key (never the secrets), revoked ones included."""
    found = _with_keys(lambda store: store.list(tenant))
    if as_json:
        echo_json(
            [
                {
                    "key_id": k.key_id,
                    "tenant": k.tenant,
                    "scopes": sorted(s.value for s in k.scopes),
                    "name": k.name,
                    "created_at": k.created_at,
                    "revoked_at": k.revoked_at,
                }
                for k in found
            ]
        )
        return
    table = Table(title="Gateway API keys")
    for column in ("key id", "tenant", "scopes", "name", "created", "revoked"):
        table.add_column(column)
    for k in found:
        table.add_row(
            k.key_id,
            escape(k.tenant),
            ", ".join(sorted(s.value for s in k.scopes)),
            escape(k.name),
            shown_time(k.created_at),
            shown_time(k.revoked_at),
        )
    console.print(table)


@keys_app.command("revoke")
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The key's id (not the key).", show_default=False)],
    as_json: JsonOption = False,
) -> None:
    """Revoke a key: requests with it are refused from now on."""
    key = _with_keys(lambda store: store.revoke(key_id))
    if as_json:
        echo_json({"key_id": key.key_id, "revoked_at": key.revoked_at})
    else:
        console.print(f"revoked API key [bold]{key.key_id}[/] of tenant {escape(key.tenant)}")


def _with_keys(action: Callable[[Any], Awaitable[T]]) -> T:
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.ext.asyncio import create_async_engine

    from apex.gateway.keys import KeyStore, UnknownKey
    from apex.gateway.settings import GatewaySettings

    settings = Settings.from_env()
    options = GatewaySettings.from_env()

    async def main() -> T:
        engine = create_async_engine(settings.sqlalchemy_url)
        try:
            store = KeyStore(engine, options.schema)
            await store.create_tables()
            return await action(store)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except (ValueError, UnknownKey) as exc:
        fail("apex gateway keys", str(exc))
    except (SQLAlchemyError, OSError) as exc:
        fail("apex gateway keys: PostgreSQL did not answer", f"{exc}\nIs the stack up?")
